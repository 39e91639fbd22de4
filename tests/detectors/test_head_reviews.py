"""``gridpatrol train-head --from-reviews`` against a real intake API: which candidates are
training data, and how a site with few camera zones or odd detections is handled."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gridpatrol.api.client import ApiClient
from gridpatrol.detectors.head_training import review_samples

from .test_train_head import (
    CLEAN,
    GARBAGE,
    candidate_body,
    count_line,
    dataset,
    jpeg_size,
    post_candidate,
    train_from_reviews,
)


def test_candidates_the_site_policy_confirmed_are_not_positives(
    shared_dir: Path, tmp_path: Path, api_server: Any
) -> None:
    """A site that confirms garbage_overflow by itself (``policy.auto_confirm``) sends the
    head's own false alarms to the platform unreviewed: they are no positives. A candidate
    queued before the type was added to auto_confirm, and confirmed by a reviewer, is."""
    producer = ApiClient(api_server.url, api_server.tokens["producer"])
    data = (dataset(shared_dir) / "garbage" / GARBAGE[0]).read_bytes()
    queued = post_candidate(producer, data, "crop", camera="cam-0")
    producer.close()

    api_server.stop()
    site = tmp_path / "site.yaml"
    site.write_text(
        "site: {name: test, timezone: UTC}\npolicy:\n  auto_confirm: [garbage_overflow]\n"
    )
    api_server.env["GRIDPATROL_CONFIG"] = str(site)
    api_server.start()
    producer = ApiClient(api_server.url, api_server.tokens["producer"])
    reviewer = ApiClient(api_server.url, api_server.tokens["reviewer"])
    clean = (dataset(shared_dir) / "clean" / CLEAN[0]).read_bytes()
    sha = producer.put_evidence(clean, "image/jpeg")
    auto = producer.create_candidate(
        candidate_body(sha, jpeg_size(clean), "crop", "cam-1"), uuid.uuid4().hex
    )
    assert auto["status"] == "confirmed"
    assert ("policy", "auto_confirmed") in [(h["who"], h["action"]) for h in auto["history"]]
    reviewer.review(queued, "confirm")

    reviews = review_samples(reviewer, "garbage_overflow", None)
    producer.close()
    reviewer.close()
    assert [(s.key, s.label) for s in reviews.samples] == [(f"candidate:{queued}", 1)]
    assert (reviews.skipped, reviews.auto_confirmed) == (0, 1)

    proc = train_from_reviews(api_server, shared_dir, "--cv-only")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        count_line(1, 0, auto=1),
        "train-head: need at least 2 images of each class, got 1 positive / 0 negative",
    ]


def post_reviewed(api_server: Any, shared_dir: Path, camera: Callable[[int], str]) -> None:
    """The six garbage photos confirmed, the six clean ones rejected as false positives; the
    i-th of the twelve from camera ``camera(i)`` (zone ``bins``), as a clean frame."""
    producer = ApiClient(api_server.url, api_server.tokens["producer"])
    reviewer = ApiClient(api_server.url, api_server.tokens["reviewer"])
    photos = [("garbage", n) for n in GARBAGE] + [("clean", n) for n in CLEAN]
    for i, (label, name) in enumerate(photos):
        data = (dataset(shared_dir) / label / name).read_bytes()
        cid = post_candidate(producer, data, "clean", camera=camera(i))
        if label == "garbage":
            reviewer.review(cid, "confirm")
        else:
            reviewer.review(cid, "reject", reason_code="false_positive")
    producer.close()
    reviewer.close()


BAD_BOXES = [
    [[10.0, 20.0, 30.0, 40.0, 0.9]],  # a score after the corners
    [[0.0, 0.0, 10.0, 10.0, 20.0, 20.0, 30.0, 30.0]],  # two boxes in one list
    [[30.0, 20.0, 10.0, 40.0]],  # x2 < x1
    [[10.0, 20.0, 30.0, 40.0], [5.0, 5.0]],  # one good box, one short
]


def test_candidates_with_malformed_boxes_are_skipped(shared_dir: Path, api_server: Any) -> None:
    """The API takes any lists of numbers as ``detection.boxes``: a clean frame whose boxes
    are not [x1, y1, x2, y2] has no region to train on, and its candidate is skipped with a
    line naming it; a crop needs no boxes and is trained on."""
    producer = ApiClient(api_server.url, api_server.tokens["producer"])
    reviewer = ApiClient(api_server.url, api_server.tokens["reviewer"])
    data = (dataset(shared_dir) / "garbage" / GARBAGE[0]).read_bytes()
    bad = [post_candidate(producer, data, "clean", "cam-0", boxes) for boxes in BAD_BOXES]
    crop = post_candidate(producer, data, "crop", "cam-0", BAD_BOXES[0])
    good = post_candidate(producer, data, "clean", "cam-0", [[0.0, 0.0, 10.0, 10.0]])
    for cid in [*bad, crop, good]:
        reviewer.review(cid, "confirm")
    reviews = review_samples(reviewer, "garbage_overflow", None)
    producer.close()
    reviewer.close()
    assert sorted(s.key for s in reviews.samples) == sorted(f"candidate:{c}" for c in (crop, good))
    assert reviews.skipped == len(BAD_BOXES)


def test_train_head_skips_a_candidate_with_malformed_boxes(
    shared_dir: Path, api_server: Any
) -> None:
    post_reviewed(api_server, shared_dir, lambda i: f"cam-{i % 4}")
    producer = ApiClient(api_server.url, api_server.tokens["producer"])
    reviewer = ApiClient(api_server.url, api_server.tokens["reviewer"])
    data = (dataset(shared_dir) / "garbage" / GARBAGE[1]).read_bytes()
    odd = post_candidate(producer, data, "clean", "cam-0", [[10, 20, 30, 40, 0.9]])
    reviewer.review(odd, "confirm")
    producer.close()
    reviewer.close()

    proc = train_from_reviews(api_server, shared_dir, "--cv-only", "--folds", "2", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert (
        f"train-head: candidate {odd}: detection.boxes [[10.0, 20.0, 30.0, 40.0, 0.9]] are not "
        "[x1, y1, x2, y2] boxes, skipped"
    ) in lines
    assert count_line(12, 1) in lines
    assert proc.stdout.startswith("grouped nested CV: 12 images (6 positive / 6 negative), ")


def test_too_few_camera_zones_stop_the_run_before_any_image_is_read(
    shared_dir: Path, api_server: Any
) -> None:
    """Twelve reviewed candidates from three camera zones: the candidates of one zone are one
    group, so nested cross-validation cannot split them. Said at once, in the words of
    reviews, before the model loads or any feature is extracted."""
    post_reviewed(api_server, shared_dir, lambda i: f"cam-{i % 3}")
    proc = train_from_reviews(api_server, shared_dir, "--cv-only")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        count_line(12, 0),
        "train-head: nested cross-validation needs reviewed candidates from at least 4 camera "
        "zones for each class (the candidates of one camera's zone count once), got 12 "
        "candidates: confirmed ones from 3 camera zones, false positives from 3",
    ]
    assert proc.stdout == ""


def test_the_report_gives_the_folds_used(shared_dir: Path, tmp_path: Path, api_server: Any) -> None:
    """Four camera zones, each with both classes, and ``--folds 5``: each outer test part needs
    a group of each class, so four folds are used, and the table and the head's metadata say
    so."""
    post_reviewed(api_server, shared_dir, lambda i: f"cam-{i % 4}")
    out = tmp_path / "heads" / "garbage"
    proc = train_from_reviews(
        api_server, shared_dir, "--folds", "5", "--repeats", "1", "--out", str(out), "--force"
    )  # --force: 12 candidates are too few for a head that finds any
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == (
        "grouped nested CV: 12 images (6 positive / 6 negative), 4 groups, 4 folds x 1 repeats "
        "(--folds 5 capped by the groups of the rarer class)"
    )
    assert [line for line in proc.stderr.splitlines() if " fold " in line][-1].startswith(
        "train-head: repeat 1/1 fold 4/4: "
    )
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["cv"]["protocol"] == "grouped nested CV, 4 folds x 1 repeats"


def test_one_crop_confirmed_for_two_zones_is_one_group(shared_dir: Path, api_server: Any) -> None:
    """The same crop confirmed on cam-Z for zones bins-left and bins-right: one image, so one
    group, not one per camera zone. Counted so before any image is read."""
    post_reviewed(api_server, shared_dir, lambda i: f"cam-{i % 3}")
    producer = ApiClient(api_server.url, api_server.tokens["producer"])
    reviewer = ApiClient(api_server.url, api_server.tokens["reviewer"])
    other = sorted(p for p in (dataset(shared_dir) / "garbage").glob("*.jpg"))
    data = next(p for p in other if p.name not in GARBAGE).read_bytes()
    for zone in ("bins-left", "bins-right"):
        cid = post_candidate(producer, data, "crop", "cam-Z", zone_id=zone)
        reviewer.review(cid, "confirm")
    producer.close()
    reviewer.close()
    proc = train_from_reviews(api_server, shared_dir, "--cv-only")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        count_line(14, 0),
        "train-head: 1 image byte-identical to others: each kept in one CV group with its "
        "copies (5 -> 4 groups)",
        "train-head: nested cross-validation needs reviewed candidates from at least 4 camera "
        "zones for each class (the candidates of one camera's zone count once), got 14 "
        "candidates: confirmed ones from 4 camera zones, false positives from 3",
    ]
    assert proc.stdout == ""
