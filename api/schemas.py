"""Request and response models of the intake API.

Candidate bodies are typed but every element is optional here: a body with wrong types is
refused (422), while one with missing required elements is stored as ``incomplete``.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from gridpatrol.api.status import STATUSES, Decision, RejectReason, Stage

NO_NUL = r"^[^\x00]*$"
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
TYPE_PATTERN = r"^[a-z0-9_]{1,64}$"
CANDIDATE_ID_PATTERN = r"^[A-Za-z0-9-]{1,64}$"
# A candidate id in a path: the stored form, or any other spelling of a UUID that a body's
# ``id`` accepts (upper case, without hyphens, in braces, as a URN).
CANDIDATE_PATH_PATTERN = r"^[A-Za-z0-9:{}-]{1,64}$"
Text = Annotated[str, Field(max_length=10_000)]
Short = Annotated[str, Field(min_length=1, max_length=256, pattern=NO_NUL)]
Id = Annotated[str, Field(pattern=ID_PATTERN)]


def plausible_instant(value: datetime) -> datetime:
    """An aware instant the API takes, in UTC: one outside the years 1900-9000 (after moving
    it to UTC) is refused with a ValueError saying so. Every time in a request body or query is
    checked by it (``Instant``), so arithmetic on stored times cannot overflow; a client that
    checks a time before sending it (``gridpatrol train-head --since``) calls it too, instead
    of copying its bounds."""
    value = value.astimezone(UTC) if 1 < value.year < 9999 else value
    if not 1900 <= value.year <= 9000:
        raise ValueError("the time must lie between the years 1900 and 9000")
    return value


Instant = Annotated[AwareDatetime, AfterValidator(plausible_instant)]


def _known_status(value: str) -> str:
    if value not in STATUSES:
        raise ValueError(f"unknown status {value!r}; one of {', '.join(STATUSES)}")
    return value


# A list filter: a misspelt status would otherwise list nothing, as if none had it.
StatusName = Annotated[
    str, AfterValidator(_known_status), WithJsonSchema({"type": "string", "enum": [*STATUSES]})
]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Severity = Literal["CRITICAL", "MAJOR", "MINOR", "WARNING"]
SourceType = Literal["camera", "sensor", "patrol", "hotline_12345", "police_110", "public"]
EvidenceKind = Literal[
    "clean", "annotated", "first_seen", "latest", "crop", "sensor_trace", "snapshot"
]
REQUIRED = (
    "source",
    "type",
    "description",
    "occurred_at",
    "location",
    "severity",
    "urgency",
    "evidence",
)


# How deeply an untyped value (an unknown field, a measurement, a zone) may nest arrays and
# objects: far more than any producer or editor sends, and far below what serialising the
# value again (as stored JSON, as YAML) can take.
MAX_DEPTH = 32


def check_depth(value: object, what: str, limit: int = MAX_DEPTH) -> None:
    """ValueError when ``value`` nests arrays and objects more than ``limit`` levels deep
    (a scalar is level 0, ``[]`` level 1); looked at level by level, without recursion, and
    keeping only the arrays and objects of the next level (a wide array of scalars costs one
    pass over it)."""
    level: list[Any] = [value] if isinstance(value, dict | list | tuple) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise ValueError(f"{what} is nested more than {limit} levels deep")
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list | tuple)
        ]


def shallow(what: str) -> AfterValidator:
    """A validator refusing values nested deeper than :data:`MAX_DEPTH` (``what`` names the
    value in the message)."""

    def check(value: Any) -> Any:
        check_depth(value, what)
        return value

    return AfterValidator(check)


Measurement = Annotated[dict[str, Any], shallow("a measurement")]
Added = Annotated[Any, shallow("an added field")]


class Open(BaseModel):
    """Known fields are typed; unknown ones are kept (producers may add context), each
    nested at most :data:`MAX_DEPTH` levels deep."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    __pydantic_extra__: dict[str, Added] = Field(init=False)


class Source(Open):
    type: SourceType | None = None
    system: Annotated[str, Field(min_length=1, max_length=128, pattern=NO_NUL)] | None = None
    camera_id: Id | None = None
    sensor_id: Id | None = None
    source_event_id: Short | None = None


class Location(Open):
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    crs: Short | None = None
    address: Text | None = None
    grid_code: Short | None = None


class EvidenceRef(Open):
    sha256: Sha256 | None = None
    kind: EvidenceKind | None = None
    captured_at: Instant | None = None
    width: int | None = Field(default=None, ge=0)
    height: int | None = Field(default=None, ge=0)


class Detection(Open):
    model: Short | None = None
    model_version: Short | None = None
    score: float | None = None
    boxes: list[list[float]] | None = None
    track_ids: list[int] | None = None
    zone_id: Short | None = None
    dwell_s: float | None = None


class Alarm(Open):
    alarm_id: Short | None = None
    alarm_type: Short | None = None
    count: int | None = Field(default=None, ge=0)
    first_seen: Instant | None = None
    last_seen: Instant | None = None
    previous_alarm_id: Short | None = None


# The evidence items one create or PATCH may carry (a producer's outbox merges a candidate's
# queued patches into PATCHes within it).
MAX_EVIDENCE_ITEMS = 100


class CandidatePatch(Open):
    """Elements a producer may send; in a PATCH every one is optional."""

    type: Annotated[str, Field(pattern=TYPE_PATTERN)] | None = None
    description: Text | None = None
    occurred_at: Instant | None = None
    location: Location | None = None
    severity: Severity | None = None
    urgency: Literal["immediate", "normal"] | None = None
    evidence: list[EvidenceRef] | None = Field(default=None, max_length=MAX_EVIDENCE_ITEMS)
    detection: Detection | None = None
    measurements: list[Measurement] | None = None
    alarm: Alarm | None = None
    references: list[Short] | None = None
    source: Source | None = None

    @field_validator("severity", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class CandidateIn(CandidatePatch):
    id: uuid.UUID | None = None


_UUID = TypeAdapter(uuid.UUID)


def canonical_candidate_id(value: str) -> str:
    """A path's candidate id as stored: a UUID in lowercase hyphenated form.

    A client-supplied id is stored so whichever way the body spelled it; its path finds it in
    the same spelling. Anything else is kept as it is (and names no candidate), except what
    no body could have spelled.
    """
    try:
        return str(_UUID.validate_python(value))
    except ValidationError:
        if re.fullmatch(CANDIDATE_ID_PATTERN, value):
            return value
        raise ValueError("a candidate id is a UUID") from None


def missing_elements(doc: dict[str, Any], held: set[str], any_evidence: bool = False) -> list[str]:
    """The required elements a candidate document lacks.

    ``held`` are the evidence hashes the server holds; evidence referring to anything else
    counts as missing, unless ``any_evidence``: then one held file is enough (for a candidate
    that had its evidence, a supplement whose upload failed does not take it away).
    """
    missing = []
    for name in REQUIRED:
        value = doc.get(name)
        if name == "source":
            if not isinstance(value, dict) or not value.get("source_event_id"):
                missing.append("source.source_event_id" if isinstance(value, dict) else name)
            continue
        if name == "location":
            if not _located(value):
                missing.append(name)
            continue
        if name == "evidence":
            hashes = [e.get("sha256") for e in value or [] if isinstance(e, dict)]
            unheld = [h for h in hashes if h not in held]
            if not hashes or (unheld and (not any_evidence or len(unheld) == len(hashes))):
                missing.append(name)
            continue
        if value in (None, "", [], {}):
            missing.append(name)
    return missing


def _located(value: object) -> bool:
    if not isinstance(value, dict):
        return False
    has_point = value.get("lat") is not None and value.get("lon") is not None
    return has_point or bool(value.get("address")) or bool(value.get("grid_code"))


class BatchItem(BaseModel):
    """One create of a batch. Judged per item, as a POST would judge it: without a usable
    key (1-200 printable ASCII characters) the item is refused with 400, without a body 422."""

    idempotency_key: Annotated[
        Any, Field(json_schema_extra={"type": "string", "minLength": 1, "maxLength": 200})
    ] = None
    body: Any = None


class BatchIn(BaseModel):
    items: list[BatchItem] = Field(max_length=500)


class ReviewIn(BaseModel):
    """A reviewer's decision. ``expected_status``, the status the reviewer saw the case in,
    makes it conditional: a case whose status is another by now (another reviewer returned it,
    say) is refused with 409, not decided on a view that is out of date. Without it the
    decision applies to the case as it is (as for clients written before it).
    ``expected_updated_at``, the ``updated_at`` of the case as the reviewer read it, makes it
    conditional on what the reviewer judged as well: a case changed since other than by routine
    updates (``_changed_since_read`` in api/service.py) is refused with 409 too."""

    decision: Decision
    reason_code: RejectReason | None = None
    reason: Text | None = None
    merge_into: uuid.UUID | None = None
    expected_status: StatusName | None = None
    expected_updated_at: Instant | None = None


class StatusIn(BaseModel):
    stage: Stage
    at: Instant | None = None


FEED_CURSOR = r"^[0-9]{1,18}$"


def _int_as_text(value: object) -> object:
    # GET /feed answers the cursor as a string, but a platform may well send it back parsed.
    return str(value) if type(value) is int else value


class AckIn(BaseModel):
    cursor: Annotated[
        str,
        BeforeValidator(_int_as_text),
        Field(pattern=FEED_CURSOR),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "pattern": FEED_CURSOR},
                    {"type": "integer", "minimum": 0, "maximum": 10**18 - 1},
                ]
            }
        ),
    ]


class SessionIn(BaseModel):
    token: Annotated[str, Field(min_length=1, max_length=500)]


class SessionOut(BaseModel):
    name: str
    role: str
    csrf_token: str


class Page(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


class TypeInfo(BaseModel):
    type: str
    name_zh: str
    name_en: str
    unit: str | None
    urgent: bool
