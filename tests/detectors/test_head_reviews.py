"""``gridpatrol train-head --from-reviews`` against a real intake API: which candidates are
training data, and how a site with few camera zones or odd detections is handled."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from gridpatrol.api.client import ApiClient
from gridpatrol.detectors.head_training import review_samples

from .test_train_head import (
    CLEAN,
    GARBAGE,
    candidate_body,
    dataset,
    jpeg_size,
    model_env,
    post_candidate,
    train_head,
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

    proc = train_head(
        "--from-reviews", "--name", "garbage", "--api-url", api_server.url,
        "--token", api_server.tokens["reviewer"], "--cv-only",
        env=model_env(shared_dir),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "train-head: 1 reviewed garbage_overflow candidates, 0 skipped, 1 confirmed by the "
        "site policy without review (not used)",
        "train-head: need at least 2 images of each class, got 1 positive / 0 negative",
    ]
