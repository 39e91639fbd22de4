"""Pooled scene features: the letterbox-to-cell mapping, pyramid pooling, the real YOLO maps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from gridpatrol.detectors.features import (
    YOLO11_NODES,
    FeatureError,
    PoolingRecipe,
    cell_box,
    pool_map,
    pooled_features,
)
from gridpatrol.detectors.models import load_backend, resolve_model
from gridpatrol.detectors.types import Backend, InferenceResult, Letterbox

# A 1280x720 frame letterboxed into 640: scale 0.5, 140 px of padding above and below.
WIDE = Letterbox(scale=0.5, pad_x=0.0, pad_y=140.0)
# A 600x800 portrait frame: scale 0.8, 80 px of padding left and right.
TALL = Letterbox(scale=0.8, pad_x=80.0, pad_y=0.0)


@pytest.mark.parametrize(
    ("letterbox", "shape", "region", "cells"),
    [
        # whole frame: the padding rows/columns (140 px = 4.4 cells of 32 px) are left out
        (WIDE, (20, 20), None, (4, 16, 0, 20)),
        (WIDE, (80, 80), None, (17, 63, 0, 80)),
        (TALL, (20, 20), None, (0, 20, 2, 18)),
        # the right half of the wide frame, top half of its content
        (WIDE, (20, 20), (0.5, 0.0, 1.0, 0.5), (4, 10, 10, 20)),
        # a sliver narrower than one cell still gets one cell
        (WIDE, (20, 20), (0.5, 0.5, 0.501, 0.501), (10, 11, 10, 11)),
        # out-of-range and reversed coordinates are clipped and sorted
        (WIDE, (20, 20), (1.2, 1.5, -0.3, -1.0), (4, 16, 0, 20)),
    ],
)
def test_region_maps_through_the_letterbox_to_cells(
    letterbox: Letterbox,
    shape: tuple[int, int],
    region: tuple[float, float, float, float] | None,
    cells: tuple[int, int, int, int],
) -> None:
    assert cell_box(letterbox, 640, shape, region) == cells


def test_pyramid_pooling_is_mean_and_max_per_cell_block() -> None:
    fmap = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    out = pool_map(fmap, (0, 4, 0, 4), levels=(1, 2), stats=("mean", "max"))
    assert out.shape == (2 * 5 * 2,)
    # level 1: mean then max of each channel over everything
    np.testing.assert_allclose(out[:4], [7.5, 23.5, 15.0, 31.0])
    # level 2, top-left 2x2 block of channel 0: cells 0, 1, 4, 5
    np.testing.assert_allclose(out[4:6], [2.5, 18.5])
    np.testing.assert_allclose(out[6:8], [5.0, 21.0])


def test_pyramid_on_a_single_cell_repeats_it() -> None:
    fmap = np.arange(3 * 5 * 5, dtype=np.float32).reshape(3, 5, 5)
    out = pool_map(fmap, (2, 3, 2, 3), levels=(1, 2), stats=("mean",))
    np.testing.assert_allclose(out.reshape(5, 3), np.tile(fmap[:, 2, 2], (5, 1)))


def test_missing_or_malformed_map_is_a_feature_error() -> None:
    recipe = PoolingRecipe(nodes=("a", "b"), levels=(1,), stats=("mean",))
    maps = {"a": np.zeros((4, 20, 20), dtype=np.float32)}
    with pytest.raises(FeatureError, match="'b' missing"):
        pooled_features(maps, WIDE, recipe)
    maps["b"] = np.zeros((20, 20), dtype=np.float32)
    with pytest.raises(FeatureError, match="must be"):
        pooled_features(maps, WIDE, recipe)


def test_recipe_round_trips_through_its_dict() -> None:
    recipe = PoolingRecipe()
    assert PoolingRecipe.from_dict(recipe.as_dict()) == recipe
    assert recipe.nodes == tuple(YOLO11_NODES.values())


@pytest.fixture(scope="module")
def backend(shared_dir: Path) -> Iterator[Backend]:
    spec = resolve_model(str(shared_dir / "models" / "yolo11n_int8_openvino_model"))
    b = load_backend(spec, feature_nodes=tuple(YOLO11_NODES.values()), mode="latency")
    yield b
    b.close()


@pytest.fixture(scope="module")
def street(shared_dir: Path, backend: Backend) -> InferenceResult:
    cap = cv2.VideoCapture(str(shared_dir / "footage" / "pedestrian_street_1080p.mp4"))
    ok, frame = cap.read()
    cap.release()
    assert ok
    return backend.infer([frame])[0]


def test_yolo11_nodes_are_the_backbone_and_neck_maps(street: InferenceResult) -> None:
    shapes = {key: street.features[node].shape for key, node in YOLO11_NODES.items()}
    assert shapes == {
        "c2psa": (256, 20, 20),
        "p3": (64, 80, 80),
        "p4": (128, 40, 40),
        "p5": (256, 20, 20),
    }
    assert len(street.detections) > 0  # the extra outputs leave detection intact


def test_whole_frame_pooling_ignores_the_letterbox_padding(street: InferenceResult) -> None:
    # 1920x1080 -> 640x360, 140 px of padding above and below: rows 4..15 of a 20x20 map
    node = YOLO11_NODES["c2psa"]
    recipe = PoolingRecipe(nodes=(node,), levels=(1,), stats=("mean", "max"))
    fmap = street.features[node]
    content = fmap[:, 4:16, :].reshape(fmap.shape[0], -1)
    expected = np.concatenate([content.mean(axis=1), content.max(axis=1)])
    out = pooled_features(street.features, street.letterbox, recipe)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    full = PoolingRecipe()
    assert pooled_features(street.features, street.letterbox, full).shape == (
        (256 + 64 + 128 + 256) * 5 * 2,
    )


def test_region_pooling_differs_between_halves(street: InferenceResult) -> None:
    recipe = PoolingRecipe()
    left = pooled_features(street.features, street.letterbox, recipe, (0.0, 0.0, 0.5, 1.0))
    right = pooled_features(street.features, street.letterbox, recipe, (0.5, 0.0, 1.0, 1.0))
    assert left.shape == right.shape
    assert not np.allclose(left, right)
