"""The SQLite database keeps what the API answered: every commit is synced to disk."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_candidate_answered_201_was_committed_with_synchronous_full(api: Any) -> None:
    # In WAL mode, synchronous=NORMAL does not sync the log at each commit: a power cut can
    # roll back commits already answered, whose producers have deleted their copy by then.
    engine = api.http.app.state.db.engine
    seen: list[tuple[int, str]] = []

    def on_commit(conn: Any) -> None:
        sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        seen.append((sync, mode))

    event.listen(engine, "commit", on_commit)
    try:
        sha = api.put_jpeg(3)
        response = api.as_("producer").post(
            "/api/v1/candidates", json=api.body("d1", sha), headers={"Idempotency-Key": "k"}
        )
    finally:
        event.remove(engine, "commit", on_commit)
    assert response.status_code == 201
    assert seen
    assert set(seen) == {(FULL, "wal")}
