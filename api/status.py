"""The candidate status machine, as tables.

Review: ``incomplete`` → ``new`` (elements complete) → ``confirmed`` | ``rejected`` |
``returned`` | ``merged``. Hand-over: ``confirmed`` → ``pulled`` (the platform acknowledged it
in the feed) → ``registered`` → ``dispatched`` → ``arrived`` → ``resolved`` → ``verified`` →
``closed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

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


def answers_return(
    before: Mapping[str, Any], after: Mapping[str, Any], required: Iterable[str]
) -> bool:
    """Whether a PATCH (``before`` → ``after``) changes a ``required`` element, the things a
    reviewer may return a case for; of evidence, only a kind other than ``latest`` counts.

    A detector updates an open episode routinely (dwell time, a fresh ``latest`` frame); such an
    update must not undo the reviewer's return, or the case is back in the queue unchanged.
    """
    if any(before.get(n) != after.get(n) for n in required if n != "evidence"):
        return True
    earlier = before.get("evidence") or []
    added = [item for item in after.get("evidence") or [] if item not in earlier]
    return any(not isinstance(item, dict) or item.get("kind") != "latest" for item in added)


def after_supplement(status: str, complete: bool, answered: bool = True) -> str:
    """The status after a producer's PATCH or an upload: complete ones enter review, others
    wait.

    A returned case stays returned until it is ``answered``: by a PATCH changing a required
    element (:func:`answers_return`), or by a PATCH or an upload giving it every element its
    return asked for (``CandidateService._completes_return``).
    """
    if status == "returned" and not answered:
        return status
    if status in ("incomplete", "returned", "new"):
        return "new" if complete else "incomplete"
    return status
