"""Background models saved in the outbox file: what comes back, and what is left out."""

from __future__ import annotations

import io
import sqlite3
from dataclasses import replace
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
        # The newer one wins.
        bg_store.save(txn.conn, "cam-1", {("lane", 7200.0): model(85), ("shop", 3600.0): model(90)})
    broken = sqlite3.connect(tmp_path / "outbox.db")
    broken.execute("UPDATE detector_backgrounds SET state = x'00' WHERE zone_id = 'shop'")
    broken.commit()
    broken.close()
    with outbox.transaction() as txn:
        found = bg_store.load(txn.conn, "cam-1")
    assert list(found) == [("lane", 7200.0)]
    assert float(found[("lane", 7200.0)].background.mean()) == 85.0
    assert "camera cam-1 zone shop: saved background unusable" in caplog.text


def test_the_typical_gap_comes_back_and_a_model_saved_without_one_still_loads(
    tmp_path: Path,
) -> None:
    slow, _ = bg.step(model(80), np.full((9, 16), 80, np.uint8), 30.0, ZONE, ~ZONE, PARAMS)
    assert slow.gap == 10.0  # the first gap counts as at most max_step_s
    # What a worker from before the typical gap was kept wrote: no "gap" in the npz.
    older = io.BytesIO()
    with np.load(io.BytesIO(bg.encode(slow))) as npz:
        np.savez_compressed(older, **{k: npz[k] for k in npz.files if k != "gap"})
    outbox = Outbox(tmp_path / "outbox.db", None, component="t")
    with outbox.transaction() as txn:
        bg_store.ensure_schema(txn.conn)
        bg_store.save(txn.conn, "cam-1", {("lane", 600.0): slow})
        txn.conn.execute(
            "INSERT INTO detector_backgrounds VALUES ('cam-1', 'shop', 600.0, ?)",
            (older.getvalue(),),
        )
    with outbox.transaction() as txn:
        found = bg_store.load(txn.conn, "cam-1")
    assert found[("lane", 600.0)].gap == 10.0
    assert found[("shop", 600.0)].gap == 0.0  # not known: learned anew from the next frames
    assert found[("shop", 600.0)].t == 30.0
    assert np.array_equal(found[("shop", 600.0)].background, slow.background)


def test_a_cameras_models_are_replaced_with_their_zone_polygons(tmp_path: Path) -> None:
    """Saving a camera's models deletes those of zones it no longer has (another camera's
    stay), and each model comes back with the polygon of the zone it was learned for."""
    square = ((0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5))
    outbox = Outbox(tmp_path / "outbox.db", None, component="t")
    with outbox.transaction() as txn:
        bg_store.ensure_schema(txn.conn)
        bg_store.save(txn.conn, "cam-1", {("lane", 600.0): model(80), ("gone", 600.0): model(90)})
        bg_store.save(txn.conn, "cam-2", {("gone", 600.0): model(100)})
        bg_store.save(txn.conn, "cam-1", {("lane", 600.0): replace(model(85), polygon=square)})
    with outbox.transaction() as txn:
        found = {cam: bg_store.load(txn.conn, cam) for cam in ("cam-1", "cam-2")}
    assert {cam: list(models) for cam, models in found.items()} == {
        "cam-1": [("lane", 600.0)],
        "cam-2": [("gone", 600.0)],
    }
    assert found["cam-1"][("lane", 600.0)].polygon == square
    assert found["cam-2"][("gone", 600.0)].polygon is None
