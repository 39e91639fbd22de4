"""Answered idempotency keys are kept ``GRIDPATROL_IDEMPOTENCY_RETENTION_S`` and then deleted
by the API's periodic loop: within the window a replay gets its original answer, after it a
create is answered as a new request (200 with the candidate it finds again). Keys in flight
are never deleted by age."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from gridpatrol.api.db import IdempotencyRow
from gridpatrol.api.retention import KeyRetention
from gridpatrol.api.settings import Settings

from .test_cli_settings import run_api
from .test_evidence import migrate

URL = "/api/v1/candidates"
DAY_S = 24 * 3600
WINDOW_S = 2 * DAY_S
OTHER_BODY = "this Idempotency-Key was used with another request body"


def post(api: Any, body: dict[str, Any], key: str) -> Any:
    return api.as_("producer").post(URL, json=body, headers={"Idempotency-Key": key})


def keys(api: Any) -> list[tuple[str, str]]:
    """The stored keys: (key, state), by key."""
    with api.http.app.state.db.read() as session:
        rows = session.execute(
            sa.select(IdempotencyRow.key, IdempotencyRow.state).order_by(IdempotencyRow.key)
        )
        return [(key, state) for key, state in rows]


def purge(api: Any) -> int:
    purged: int = api.http.app.state.key_retention.run_if_due()
    return purged


@pytest.fixture
def api(make_api: Any) -> Any:
    # The loop stays idle: each test runs the purge itself.
    return make_api(idempotency_retention_s=WINDOW_S, release_interval_s=3600)


def test_a_key_replays_its_answer_within_the_window_and_is_purged_after_it(
    api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sha = api.put_jpeg()
    first = post(api, api.body("e-old", sha), "k-old")
    assert first.status_code == 201
    assert purge(api) == 0  # the first pass runs at once; nothing is old yet
    api.clock.advance(seconds=WINDOW_S - 60)
    recent = post(api, api.body("e-recent", sha), "k-recent")
    assert recent.status_code == 201
    api.clock.advance(seconds=59)
    # Just within the window: the original answer, byte for byte.
    replay = post(api, api.body("e-old", sha), "k-old")
    assert (replay.status_code, replay.text) == (201, first.text)

    api.clock.advance(hours=1)  # past the window, and the next pass is due
    with caplog.at_level(logging.INFO, logger="gridpatrol.api.retention"):
        assert purge(api) == 1
    before = (api.clock.now - timedelta(seconds=WINDOW_S)).isoformat()
    assert [r.getMessage() for r in caplog.records] == [
        f"purged 1 answered idempotency keys claimed before {before}"
    ]
    assert keys(api) == [("k-recent", "done")]
    replay = post(api, api.body("e-recent", sha), "k-recent")
    assert (replay.status_code, replay.text) == (201, recent.text)

    # The key is new again: the create finds its candidate by (source.system,
    # source_event_id) and answers 200 with it, as a known event under a new key.
    again = post(api, api.body("e-old", sha), "k-old")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json() == api.as_("reviewer").get(f"{URL}/{first.json()['id']}").json()
    assert len(api.as_("reviewer").get(URL).json()["items"]) == 2


def test_a_purge_is_due_hourly(api: Any) -> None:
    post(api, api.body("e1"), "k1")
    api.clock.advance(seconds=WINDOW_S, minutes=-30)
    assert purge(api) == 0  # the first pass runs at once; k1 is not old yet
    api.clock.advance(minutes=31)
    # k1 is past the window, but the last pass ran 31 minutes ago.
    assert purge(api) == 0
    assert keys(api) == [("k1", "done")]
    api.clock.advance(minutes=29)
    assert purge(api) == 1
    assert keys(api) == []


def test_a_key_in_flight_is_never_purged(api: Any) -> None:
    # A claim a batch left behind when its process died between claiming and answering.
    with api.http.app.state.db.write() as session:
        session.add(
            IdempotencyRow(
                key="k-claimed",
                principal="test-producer",
                request_hash="0" * 64,
                state="in_flight",
                created_at=api.clock.now,
            )
        )
    post(api, api.body("e1"), "k-done")
    api.clock.advance(seconds=WINDOW_S * 10)
    assert purge(api) == 1
    assert keys(api) == [("k-claimed", "in_flight")]
    # The claim still holds its request's body: another one is refused, as before.
    refused = post(api, api.body("e2"), "k-claimed")
    assert (refused.status_code, refused.json()["detail"]) == (422, OTHER_BODY)


def test_a_batch_item_key_is_purged_too(api: Any) -> None:
    sha = api.put_jpeg()
    items = [{"idempotency_key": "b1", "body": api.body("e-b1", sha)}]
    first = api.as_("producer").post(f"{URL}/batch", json={"items": items})
    assert first.status_code == 207
    (item,) = first.json()["items"]
    assert item["status"] == 201
    api.clock.advance(seconds=WINDOW_S + 3600)
    assert purge(api) == 1
    again = api.as_("producer").post(f"{URL}/batch", json={"items": items})
    (replayed,) = again.json()["items"]
    assert (replayed["status"], replayed["body"]["id"]) == (200, item["body"]["id"])


def test_a_pass_deletes_in_bounded_steps_and_goes_on_at_the_next_turn(api: Any) -> None:
    for n in range(5):
        assert post(api, api.body(f"e{n}"), f"k{n}").status_code == 201
        api.clock.advance(seconds=1)
    db = api.http.app.state.db
    retention = KeyRetention(db, api.clock, timedelta(seconds=WINDOW_S), batch=2, batches=2)
    api.clock.advance(seconds=WINDOW_S)
    assert retention.run_if_due() == 4  # two transactions of two, the oldest first
    assert keys(api) == [("k4", "done")]
    assert retention.run_if_due() == 1  # due again at once: the last pass left keys behind
    assert retention.run_if_due() == 0  # not due: the last pass finished
    assert keys(api) == []


def test_the_api_loop_purges_old_keys(make_api: Any) -> None:
    api = make_api(idempotency_retention_s=WINDOW_S, release_interval_s=0.05)
    first = post(api, api.body("e1"), "k1")
    assert first.status_code == 201
    api.clock.advance(seconds=WINDOW_S + 3600)
    # Bounded only so that a loop that never purges fails instead of hanging the test.
    deadline = time.monotonic() + 30
    while keys(api) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keys(api) == []
    again = post(api, api.body("e1"), "k1")
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])


def test_the_index_the_purge_reads_is_migrated(api: Any) -> None:
    db = api.http.app.state.db

    def indexes() -> list[str]:
        with db.engine.connect() as conn:
            return sorted(str(i["name"]) for i in sa.inspect(conn).get_indexes("idempotency"))

    assert indexes() == ["ix_idempotency_created"]
    migrate(db, "0003", down=True)
    assert indexes() == []
    migrate(db, "head")
    assert indexes() == ["ix_idempotency_created"]


@pytest.mark.parametrize("value", ["0", "-3600", "315360001"])
def test_a_retention_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("GRIDPATROL_IDEMPOTENCY_RETENTION_S", value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    (error,) = refused.value.errors()
    assert error["loc"] == ("idempotency_retention_s",)
    assert error["msg"] == (
        "Value error, GRIDPATROL_IDEMPOTENCY_RETENTION_S must be a number of seconds from 1 "
        f"to 315360000 (10 years), got {value}"
    )


def test_the_default_retention_is_a_week() -> None:
    assert Settings().idempotency_retention_s == 7 * DAY_S


def test_the_api_does_not_start_with_a_retention_of_zero(tmp_path: Any) -> None:
    done = run_api(tmp_path, {"GRIDPATROL_IDEMPOTENCY_RETENTION_S": "0"}, [])
    assert done.returncode == 2, done.stderr[-3000:]
    assert (
        "the intake API cannot start: GRIDPATROL_IDEMPOTENCY_RETENTION_S must be a number of "
        "seconds from 1 to 315360000 (10 years), got 0\n"
    ) in done.stderr
    assert "Traceback" not in done.stderr
