"""Background models saved in the outbox file: what comes back, and what is left out."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from gridpatrol.api.client import Outbox
from gridpatrol.detectors import background as bg
from gridpatrol.detectors import bg_store

ZONE = np.ones((9, 16), dtype=bool)
PARAMS = bg.BackgroundParams(learn_s=600.0)


def model(level: int) -> bg.BackgroundState:
    state, _ = bg.step(None, np.full((9, 16), level, np.uint8), 0.0, ZONE, ~ZONE, PARAMS)
    return state


def test_saved_models_come_back_per_camera_and_a_broken_one_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", None, component="t")
    with outbox.transaction() as txn:
        bg_store.ensure_schema(txn.conn)
        bg_store.save(txn.conn, "cam-1", {("lane", 7200.0): model(80), ("shop", 3600.0): model(90)})
        bg_store.save(txn.conn, "cam-2", {("lane", 7200.0): model(100)})
        bg_store.save(txn.conn, "cam-1", {("lane", 7200.0): model(85)})  # the newer one wins
    broken = sqlite3.connect(tmp_path / "outbox.db")
    broken.execute("UPDATE detector_backgrounds SET state = x'00' WHERE zone_id = 'shop'")
    broken.commit()
    broken.close()
    with outbox.transaction() as txn:
        found = bg_store.load(txn.conn, "cam-1")
    assert list(found) == [("lane", 7200.0)]
    assert float(found[("lane", 7200.0)].background.mean()) == 85.0
    assert "camera cam-1 zone shop: saved background unusable" in caplog.text
