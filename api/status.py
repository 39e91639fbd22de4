"""The candidate status machine, as tables.

Review: ``incomplete`` → ``new`` (elements complete) → ``confirmed`` | ``rejected`` |
``returned`` | ``merged``. Hand-over: ``confirmed`` → ``pulled`` (the platform acknowledged it
in the feed) → ``registered`` → ``dispatched`` → ``arrived`` → ``resolved`` → ``verified`` →
``closed``.
"""

from __future__ import annotations

from typing import Literal, get_args

Decision = Literal["confirm", "reject", "return", "merge"]
Stage = Literal["registered", "dispatched", "arrived", "resolved", "verified", "closed"]

STAGES: tuple[Stage, ...] = get_args(Stage)
STATUSES = ("incomplete", "new", "returned", "rejected", "merged", "confirmed", "pulled", *STAGES)
RejectReason = Literal[
    "false_positive",
    "duplicate",
    "licensed_activity",
    "out_of_jurisdiction",
    "insufficient_evidence",
    "other",
]
REJECT_REASONS: tuple[str, ...] = get_args(RejectReason)
# Statuses the platform sees in the feed (confirmed and everything after it).
VISIBLE = frozenset({"confirmed", "pulled", *STAGES})
# Statuses a producer may still supplement or update with PATCH.
PATCHABLE = frozenset({"incomplete", "new", "returned", *VISIBLE} - {"closed"})
FINAL = frozenset({"rejected", "merged", "closed"})

REVIEW: dict[tuple[str, Decision], str] = {
    ("new", "confirm"): "confirmed",
    ("new", "reject"): "rejected",
    ("new", "return"): "returned",
    ("new", "merge"): "merged",
    ("incomplete", "reject"): "rejected",
    ("incomplete", "return"): "returned",
    ("incomplete", "merge"): "merged",
    ("returned", "reject"): "rejected",
    ("returned", "merge"): "merged",
}


class IllegalTransition(Exception):
    def __init__(self, status: str, action: str) -> None:
        self.status = status
        self.action = action
        super().__init__(f"cannot {action} a candidate that is {status}")


def review(status: str, decision: Decision) -> str:
    """The status after a reviewer's decision; raise :class:`IllegalTransition`."""
    try:
        return REVIEW[(status, decision)]
    except KeyError:
        raise IllegalTransition(status, decision) from None


def advance(status: str, stage: Stage) -> str | None:
    """The status after the platform reports ``stage``; None when it is already there.

    Stages come in order, one at a time; ``registered`` may follow ``confirmed`` directly
    (the platform may register before it acknowledges the feed).
    """
    if status == stage:
        return None
    index = STAGES.index(stage)
    previous = ("confirmed", "pulled") if index == 0 else (STAGES[index - 1],)
    if status not in previous:
        raise IllegalTransition(status, f"report {stage} for")
    return stage


def after_supplement(status: str, complete: bool) -> str:
    """The status after a producer's PATCH: complete ones enter review, others wait."""
    if status in ("incomplete", "returned", "new"):
        return "new" if complete else "incomplete"
    return status
