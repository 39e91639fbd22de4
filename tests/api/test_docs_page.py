"""The interactive API reference works on a network without internet access: its page loads
its script, style and icon from the API itself, as anyone may read it (no token)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest

PAGE = "/api/v1/docs"
BASE = "http://testserver"  # the TestClient's origin


class _Refs(HTMLParser):
    """The URLs the page's tags load: script src, link href."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and found.get("src"):
            self.refs.append(("script", str(found["src"])))
        if tag == "link" and found.get("href"):
            self.refs.append((str(found.get("rel")), str(found["href"])))


def _page(api: Any) -> str:
    response = api.http.get(PAGE)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    text: str = response.text
    return text


def test_the_docs_page_names_no_url_outside_the_api(api: Any) -> None:
    # Every absolute URL in the page, in a tag or in its inline script (SwaggerUIBundle's url).
    absolute = re.findall(r"""(?:https?:)?//[^\s"'<>)]+""", _page(api))
    assert [u for u in absolute if urlsplit(u).netloc != "testserver"] == []


def test_each_asset_of_the_docs_page_is_served_by_the_api(api: Any) -> None:
    parser = _Refs()
    parser.feed(_page(api))
    assets = {kind: urljoin(BASE + PAGE, url) for kind, url in parser.refs}
    assert sorted(assets) == ["script", "shortcut icon", "stylesheet"]
    expected = {
        "script": "text/javascript; charset=utf-8",
        "stylesheet": "text/css; charset=utf-8",
        "shortcut icon": "image/png",
    }
    for kind, url in assets.items():
        assert urlsplit(url).netloc == "testserver", url
        # Without a token, as the page itself is read.
        response = api.http.get(url)
        assert (response.status_code, response.headers["content-type"]) == (
            200,
            expected[kind],
        ), url
        assert len(response.content) > 1000, url
    # The page's script is Swagger UI 5, the first to render the OpenAPI 3.1 the API serves.
    script = api.http.get(assets["script"]).text
    assert re.search(r'PACKAGE_VERSION:"5\.\d+\.\d+"', script), "not Swagger UI 5"
    assert api.http.get("/api/v1/openapi.json").json()["openapi"].startswith("3.1.")


@pytest.mark.parametrize("name", ["nowhere.js", "..%2fapp.py", ""])
def test_a_name_the_docs_assets_lack_is_a_404(api: Any, name: str) -> None:
    parser = _Refs()
    parser.feed(_page(api))
    script = next(url for kind, url in parser.refs if kind == "script")
    folder = urljoin(BASE + PAGE, script).rsplit("/", 1)[0]
    assert api.http.get(f"{folder}/{name}").status_code == 404
