"""The site's time zone for the review console: GET /api/v1/site."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from gridpatrol.api.app import create_app
from gridpatrol.api.settings import DEFAULT_TIMEZONE, Settings

REPO = Path(__file__).resolve().parents[2]
TOKEN = "site-reviewer-token"


def _settings(db_url: str, tmp_path: Path, config: Path | None) -> Settings:
    return Settings(
        database_url=db_url,
        evidence_dir=tmp_path / "ev",
        api_tokens={TOKEN: {"role": "reviewer", "name": "alice"}},  # type: ignore[dict-item]
        config=config,
    )


def test_the_site_files_time_zone(db_url: str, tmp_path: Path) -> None:
    sample = (REPO / "samples" / "site.yaml").read_text(encoding="utf-8")
    assert "timezone: Asia/Shanghai" in sample
    site_file = tmp_path / "site.yaml"
    site_file.write_text(sample.replace("timezone: Asia/Shanghai", "timezone: Europe/Berlin"))
    with TestClient(create_app(_settings(db_url, tmp_path, site_file))) as http:
        assert http.get("/api/v1/site").status_code == 401
        response = http.get("/api/v1/site", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        assert response.json() == {"timezone": "Europe/Berlin"}


def test_the_default_time_zone_without_a_site_file(db_url: str, tmp_path: Path) -> None:
    with TestClient(create_app(_settings(db_url, tmp_path, None))) as http:
        response = http.get("/api/v1/site", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.json() == {"timezone": DEFAULT_TIMEZONE} == {"timezone": "Asia/Shanghai"}
