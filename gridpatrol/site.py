"""The site file: one strict schema for the whole deployment.

Every component loads the file through :func:`load_site`; unknown keys are rejected and
every error names the file, the line and the field, so an operator can fix a typo at 3 a.m.

Times are ``HH:MM``, quoted or not (YAML 1.1 would read an unquoted ``22:00`` as the number
1320: it is taken as written). Where text is expected, an unquoted value YAML reads as a number
or a boolean (a code ``0102`` is octal 66, ``no`` is false) is refused with a hint to quote it.

Anchors, aliases and merge keys share fields between entries, e.g. one set of thresholds for
thousands of sensors: ``thresholds: &tilt {raise: 15, clear: 5, unit: deg}`` on the first,
``thresholds: *tilt`` or ``thresholds: {<<: *tilt, raise: 20}`` on the others (the keys an entry
sets itself win; in ``<<: [*a, *b]`` the earlier anchor wins). An error in a merged field names
its line in the anchor.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gridpatrol.proxies import masked

# The patterns go to pydantic, whose regex ends "$" at the end of the text; Python's re also
# matches "$" before a final newline, so the Python-side ID_RE ends with \Z.
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
ID_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")
PREFIX_PATTERN = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
Id = Annotated[str, Field(pattern=ID_PATTERN)]

VIOLATION_TYPES = (
    "street_vending",
    "shop_front_occupation",
    "garbage_overflow",
    "illegal_parking",
    "non_motor_parking",
    "piled_materials",
    "crowd_gathering",
)
SENSOR_TYPES = ("manhole_cover", "waterlogging", "smoke", "bin_full", "noise", "device_offline")
CANDIDATE_TYPES = VIOLATION_TYPES + SENSOR_TYPES

# Chinese and English names of every candidate type, shown by the console and in descriptions.
TYPE_NAMES: dict[str, tuple[str, str]] = {
    "street_vending": ("占道经营", "Street vending"),
    "shop_front_occupation": ("店外经营", "Shop-front occupation"),
    "garbage_overflow": ("暴露垃圾", "Garbage overflow"),
    "illegal_parking": ("机动车乱停放", "Illegal parking"),
    "non_motor_parking": ("非机动车乱停放", "Non-motor vehicle parking"),
    "piled_materials": ("乱堆物料", "Piled materials"),
    "crowd_gathering": ("人群聚集", "Crowd gathering"),
    "manhole_cover": ("井盖异常", "Manhole cover"),
    "waterlogging": ("道路积水", "Waterlogging"),
    "smoke": ("烟雾报警", "Smoke"),
    "bin_full": ("垃圾箱满溢", "Bin full"),
    "noise": ("噪声扰民", "Noise"),
    "device_offline": ("设备离线", "Device offline"),
}

SensorKind = Literal["manhole_cover", "waterlogging", "smoke", "bin_fill", "noise"]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ALL_DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_hhmm(value: str) -> time:
    """Parse a 24-hour ``HH:MM`` clock time (``24:00`` is not accepted; use ``00:00``)."""
    match = _HHMM.fullmatch(value)  # not match: its "$" also matches before a final newline
    if match is None:
        raise ValueError(f"expected a 24-hour time HH:MM, got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


class Strict(BaseModel):
    # Fields are set by their names as written in the file only: ``raise_`` and ``from_`` are
    # unknown keys there. No infinity or NaN: ``raise: .nan`` would never alarm and an
    # ``interval_s: .inf`` would take no share of the patrol budget.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=False, allow_inf_nan=False
    )


class _Sexagesimal(int):
    """An unquoted ``22:00``: YAML 1.1 reads it as the base-60 number 1320; ``text`` keeps it."""

    text: str

    def __new__(cls, value: int, text: str) -> _Sexagesimal:
        number = super().__new__(cls, value)
        number.text = text
        return number


def _clock_text(value: Any) -> Any:
    # An unquoted 22:00 is taken as written (06:00 stays a string anyway: no base-60 number
    # starts with 0); any other number is not a time.
    if isinstance(value, _Sexagesimal):
        return value.text
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f'{value} is not a time: write HH:MM in quotes, e.g. "06:00"')
    return value


HHMM = Annotated[str, BeforeValidator(_clock_text), Field(pattern=_HHMM.pattern)]


class SiteInfo(Strict):
    name: str = Field(min_length=1)
    timezone: str = "Asia/Shanghai"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if _HOST_ZONE.match(value):
            raise ValueError(
                f"{value!r} is not a place's time zone: its meaning depends on the host"
                f"{_host_zone_hint(value)}"
            )
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}{_zone_hint(value)}") from exc
        return value


# What people write for China's time, which has one IANA zone: Asia/Shanghai.
_CHINA = re.compile(r"beijing|peking|北京|^(utc|gmt)?\s*\+\s*0?8(:?00)?$|^cst$", re.IGNORECASE)
_OFFSET = re.compile(r"^(utc|gmt)?\s*[+-]\s*\d{1,2}(:?\d\d)?$", re.IGNORECASE)
# Etc/GMT-8 is UTC+08:00: POSIX inverts the sign of these zones.
_ETC_GMT = re.compile(r"^Etc/GMT[+-]\d+$")


# Files of the host's tz database that are no place's zone: the host's own setting
# (localtime, posixrules), a placeholder (Factory), or copies that some builds have and others
# not, right/ counting leap seconds (so an hour of it is not the hour of the place).
_HOST_ZONE = re.compile(r"^(localtime|factory|posixrules|(posix|right)/.*)$", re.IGNORECASE)


def _host_zone_hint(value: str) -> str:
    place = value.partition("/")[2]
    if "/" in value and place in available_timezones() and not _HOST_ZONE.match(place):
        return f" (did you mean {place!r}?)"
    return ": write the zone of a city, e.g. Asia/Shanghai"


def _zone_hint(value: str) -> str:
    if _CHINA.search(value.strip()):
        return ": China's zone is Asia/Shanghai"
    if _OFFSET.match(value.strip()):
        return ": an offset is not a time zone, write the zone of a city, e.g. Asia/Shanghai"
    zones = {z.lower(): z for z in available_timezones() if not _HOST_ZONE.match(z)}
    close = difflib.get_close_matches(value.lower(), zones, n=1, cutoff=0.8)
    return f" (did you mean {zones[close[0]]!r}?)" if close else ""


def utc_offset(zone: str, at: datetime | None = None) -> str:
    """The zone's offset from UTC now (or ``at``), e.g. ``UTC+08:00``."""
    offset = (at or datetime.now(UTC)).astimezone(ZoneInfo(zone)).utcoffset() or timedelta()
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


class MqttSection(Strict):
    prefix: str = Field(default="gridpatrol", pattern=PREFIX_PATTERN)


class TimeWindow(Strict):
    """A daily window in the site time zone; ``start > end`` crosses midnight."""

    start: HHMM
    end: HHMM


class Category(Strict):
    scheme: str
    code: str
    name_zh: str
    name_en: str | None = None


DEFAULT_ROUTING: dict[str, str] = {
    "street_vending": "城管中队",
    "shop_front_occupation": "城管中队",
    "garbage_overflow": "绿化市容所",
    "bin_full": "绿化市容所",
    "illegal_parking": "交警中队",
    "non_motor_parking": "城管中队",
    "piled_materials": "城管中队",
    "crowd_gathering": "派出所",
    "manhole_cover": "区级平台",
    "waterlogging": "区级平台",
    "smoke": "派出所",
    "noise": "城管中队",
    "device_offline": "区级平台",
}


def _repeated(ids: Iterable[str]) -> list[str]:
    """The ids that occur more than once, sorted."""
    return sorted(i for i, n in Counter(ids).items() if n > 1)


def _check_types(values: Iterable[str], what: str) -> None:
    unknown = sorted(set(values) - set(CANDIDATE_TYPES))
    if unknown:
        raise ValueError(f"unknown {what} type(s) {unknown}; known: {list(CANDIDATE_TYPES)}")


class Policy(Strict):
    night: TimeWindow = TimeWindow(start="22:00", end="08:00")
    urgent_types: list[str] = ["manhole_cover", "smoke", "waterlogging", "crowd_gathering"]
    auto_confirm: list[str] = ["manhole_cover", "smoke", "waterlogging"]
    sla_minutes: int = Field(default=15, gt=0, le=24 * 60)
    routing: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ROUTING))
    categories: dict[str, Category] = Field(default_factory=dict)

    @field_validator("urgent_types", "auto_confirm")
    @classmethod
    def _known_list(cls, value: list[str]) -> list[str]:
        _check_types(value, "candidate")
        return value

    @field_validator("routing", "categories")
    @classmethod
    def _known_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_types(value.keys(), "candidate")
        return value


class Patrol(Strict):
    max_fps: float = Field(default=8.0, gt=0, le=1000)


class Location(Strict):
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    crs: str = "WGS84"
    address: str | None = None
    grid_code: str | None = None

    @model_validator(mode="after")
    def _enough(self) -> Location:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon go together")
        if self.lat is None and not self.address and not self.grid_code:
            raise ValueError("a location needs lat+lon, an address or a grid_code")
        return self


DAY_S = 86400.0
# The longest time a rule or sensor parameter may span: a dwell, gap or silence of more than a
# week is a typo, and a huge one (1e308) overflows what is derived from it (learn_s, the
# silences judged) to infinity.
MAX_SPAN_S = 7 * DAY_S


class Schedule(Strict):
    """When a zone's rules are active, in the site time zone; ``from > to`` crosses midnight."""

    days: list[Day] = Field(default_factory=lambda: list(ALL_DAYS), min_length=1)
    from_: HHMM = Field(default="00:00", alias="from")
    to: HHMM = "23:59"

    @property
    def minutes(self) -> tuple[int, int]:
        """``from`` and ``to`` as minutes of the day."""
        start, end = (parse_hhmm(v) for v in (self.from_, self.to))
        return start.hour * 60 + start.minute, end.hour * 60 + end.minute

    @property
    def window_s(self) -> float:
        """Length of one day's window in seconds (``to`` inclusive to the minute)."""
        start, end = self.minutes
        return DAY_S if start == end else 60.0 * ((end - start) % 1440 + 1)

    @property
    def stretch_s(self) -> float:
        """The longest time the schedule stays active without a break, ``math.inf`` if never.

        A window shorter than a day ends before the next one starts. A whole-day window
        (``from == to``, or ``to`` the minute before ``from``) ends as the next day's begins: the
        windows of scheduled days in a row (round the week, Sunday into Monday) join into one.
        Measured on the local clock: a daylight-saving change may stretch it by an hour.
        """
        if self.window_s < DAY_S:
            return self.window_s
        scheduled = {ALL_DAYS.index(d) for d in self.days}
        if len(scheduled) == len(ALL_DAYS):
            return math.inf
        longest = 0
        for first in scheduled - {(d + 1) % 7 for d in scheduled}:  # where each run begins
            run = 1
            while (first + run) % 7 in scheduled:
                run += 1
            longest = max(longest, run)
        return longest * DAY_S

    def describe_stretch(self) -> str:
        """``stretch_s`` in words for a message: minutes a day, or whole days in a row."""
        if self.window_s < DAY_S:
            return f"{self.window_s / 60:g} min a day"
        days = round(self.stretch_s / DAY_S)
        return f"{days} whole day{'s' if days > 1 else ''} at a stretch ({days * 24} h)"


# ---------------------------------------------------------------------------------------------
# Rule parameters. Every rule shares the episode timing below; each adds its own thresholds.


def _known_classes(value: list[str], info: ValidationInfo) -> list[str]:
    # The class names live in the model, not in this file: they are checked only when the
    # loader is given them (detect, scan, check-config and the zone editor pass the model's).
    # A misspelt class would otherwise match nothing and the rule would never fire.
    names: Sequence[str] | None = (info.context or {}).get("class_names")
    if not names:
        return value
    unknown = [n for n in value if n not in names]
    if unknown:
        raise ValueError("; ".join(_not_a_class(n, names) for n in unknown))
    return value


def _not_a_class(name: str, names: Sequence[str]) -> str:
    # A word of a longer name first ("table" → "dining table"), then the closest spelling.
    wanted = name.strip().lower()
    close = [n for n in names if wanted in n.split()] or difflib.get_close_matches(
        wanted, names, n=1, cutoff=0.6
    )
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{name!r} is not a class of the detection model{hint}"


ClassNames = Annotated[list[str], AfterValidator(_known_classes)]


class RuleParams(Strict):
    """Timing shared by every rule.

    dwell_s: how long the condition must hold before a candidate is raised.
    gap_s: absences shorter than this (occlusion, a missed detection, an id switch) do not
        break the episode.
    clear_s: how long the condition must be absent before the episode clears.
    update_s: at most one update (better snapshot, longer dwell) per this many seconds.
    min_confidence: detections below this confidence are ignored.
    """

    dwell_s: float = Field(default=300.0, ge=0, le=MAX_SPAN_S)
    gap_s: float = Field(default=20.0, ge=0, le=MAX_SPAN_S)
    clear_s: float = Field(default=60.0, ge=0, le=MAX_SPAN_S)
    update_s: float = Field(default=120.0, ge=0, le=MAX_SPAN_S)
    min_confidence: float = Field(default=0.35, ge=0, le=1)

    @model_validator(mode="after")
    def _default_classes_of_the_model(self, info: ValidationInfo) -> RuleParams:
        # pydantic does not validate defaults: with a model of other classes, a rule left at
        # its default classes (COCO's) could never fire, while check-config said it was fine.
        names: Sequence[str] | None = (info.context or {}).get("class_names")
        if not names:
            return self
        problems = []
        for key, field in type(self).model_fields.items():
            checked = any(getattr(m, "func", None) is _known_classes for m in field.metadata)
            if not checked or key in self.model_fields_set:
                continue
            value: list[str] = getattr(self, key)
            unknown = [n for n in value if n not in names]
            if unknown:
                listed = ", ".join(repr(n) for n in unknown)
                are = "is not a class" if len(unknown) == 1 else "are not classes"
                problems.append(
                    f"{key} is by default {value}, and {listed} {are} of the detection model: "
                    f"set `{key}:` to classes of the model"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self


# Classes that never make a stall: street furniture (benches) and what every passer-by carries.
# In props they would raise a stall for anyone sitting on a bench or holding a cup.
NEVER_PROPS = ("bench", "handbag", "backpack", "bottle", "cup")


def _none_of(value: list[str], refused: Sequence[str], what: str, why: str) -> list[str]:
    named = [n for n in value if n in refused]
    if named:
        listed = ", ".join(repr(n) for n in named)
        are = "is never" if len(named) == 1 else "are never"
        raise ValueError(f"{listed} {are} {what} ({why}): remove {listed}")
    return value


class StreetVendingParams(RuleParams):
    """Stationary person(s) with stationary stall props that nobody carries.

    min_persons: stationary persons with a prop near them. min_props: stall props near them.
    props: COCO classes that count as stall props (benches, handbags, backpacks, bottles and
    cups never do: they are street furniture or what every passer-by carries, and are refused
    here and in supporting_props).
    supporting_props: props that count only together with another prop not in this list (a
    person on a chair, beside a parked bicycle or with a suitcase is not a stall by itself).
    max_displacement: a track is stationary while its centre stays within this fraction of
    its box size over the last 10 s. prop_distance: a prop counts when its centre is within
    this many person heights of the person's box.
    """

    min_persons: int = Field(default=1, ge=1)
    min_props: int = Field(default=1, ge=1)
    max_displacement: float = Field(default=0.5, gt=0)
    prop_distance: float = Field(default=1.5, gt=0)
    props: ClassNames = Field(
        default=[
            "umbrella", "dining table", "chair", "suitcase", "bicycle", "motorcycle", "truck",
            "banana", "apple", "orange", "broccoli", "carrot", "sandwich", "hot dog", "pizza",
            "donut", "cake",
        ],
        min_length=1,
    )  # fmt: skip
    supporting_props: ClassNames = Field(
        default=["chair", "suitcase", "bicycle", "motorcycle", "truck"]
    )

    @field_validator("props", "supporting_props")
    @classmethod
    def _never_a_prop(cls, value: list[str]) -> list[str]:
        why = "benches are street furniture; handbags, backpacks, bottles and cups are what "
        return _none_of(value, NEVER_PROPS, "a stall prop", why + "every passer-by carries")

    @model_validator(mode="after")
    def _a_prop_that_stands_alone(self) -> StreetVendingParams:
        # A stall needs one prop outside supporting_props: without one the rule never fires.
        if set(self.props) <= set(self.supporting_props):
            raise ValueError(
                "every prop is also a supporting prop, so no stall can ever be found: "
                "keep at least one of props out of supporting_props"
            )
        return self


class CrowdGatheringParams(RuleParams):
    """At least ``min_persons`` persons in the zone for ``dwell_s``."""

    dwell_s: float = Field(default=120.0, ge=0, le=MAX_SPAN_S)
    min_persons: int = Field(default=8, ge=1)


class IllegalParkingParams(RuleParams):
    """A car, truck or bus stationary in the zone for ``dwell_s``."""

    dwell_s: float = Field(default=180.0, ge=0, le=MAX_SPAN_S)
    max_displacement: float = Field(default=0.3, gt=0)
    classes: ClassNames = Field(default=["car", "truck", "bus"], min_length=1)


class NonMotorParkingParams(RuleParams):
    """At least ``min_count`` bicycles / motorcycles stationary in the zone for ``dwell_s``."""

    dwell_s: float = Field(default=600.0, ge=0, le=MAX_SPAN_S)
    min_count: int = Field(default=5, ge=1)
    max_displacement: float = Field(default=0.3, gt=0)
    classes: ClassNames = Field(default=["bicycle", "motorcycle"], min_length=1)


class GarbageOverflowParams(RuleParams):
    """The scene head ``head`` scores the zone crop at or above its threshold for ``dwell_s``.

    threshold: overrides the decision threshold stored in the head file.
    occluders / max_occluded: a frame in which detections of these classes (at
    ``min_confidence``) cover more than this fraction of the zone's box is not judged.
    """

    dwell_s: float = Field(default=60.0, ge=0, le=MAX_SPAN_S)
    head: str = "garbage"
    threshold: float | None = Field(default=None, ge=0, le=1)
    occluders: ClassNames = Field(default=["person", "bicycle", "motorcycle"])
    max_occluded: float = Field(default=0.1, ge=0, le=1)


# The background model absorbs a static object of contrast C (grey levels) after about
# learn_s * ln(C / 25): it must stay foreground for the whole dwell. At 4 x dwell_s a contrast
# of 33 suffices, at 2 x dwell_s it takes 41, at 1 x dwell_s 68.
LEARN_PER_DWELL = 4.0
MIN_LEARN_PER_DWELL = 2.0
LEARN_S_DOC = "default: 4 x dwell_s, at least 3600"
MAX_LEARN_S = LEARN_PER_DWELL * MAX_SPAN_S  # what the longest dwell derives


def default_learn_s(dwell_s: float) -> float:
    return max(3600.0, LEARN_PER_DWELL * dwell_s)


class StaticForegroundParams(RuleParams):
    """Static foreground unexplained by a COCO class covers at least ``min_area`` of the zone.

    learn_s: time constant of the zone's long-term background model; by default 4 x dwell_s
    and at least an hour, and never below 2 x dwell_s, so that what appeared is not learned
    into the background before its dwell is over.
    """

    dwell_s: float = Field(default=600.0, ge=0, le=MAX_SPAN_S)
    min_area: float = Field(default=0.05, gt=0, le=1)
    learn_s: float = Field(
        default=default_learn_s(600.0), gt=0, le=MAX_LEARN_S, description=LEARN_S_DOC
    )

    @model_validator(mode="wrap")
    @classmethod
    def _learn_from_the_dwell(
        cls, data: Any, handler: ModelWrapValidatorHandler[StaticForegroundParams]
    ) -> StaticForegroundParams:
        derived = False
        if isinstance(data, dict) and "learn_s" not in data:
            dwell = data.get("dwell_s", cls.model_fields["dwell_s"].default)
            # A dwell out of range derives nothing: its own error names the key the user wrote,
            # not a learn_s they never did.
            number = isinstance(dwell, int | float) and not isinstance(dwell, bool)
            if number and 0 <= dwell <= MAX_SPAN_S:
                data, derived = {**data, "learn_s": default_learn_s(dwell)}, True
        params = handler(data)
        if derived:
            # Derived, not written: the zones shown back (exclude_unset) leave it out, so a
            # zone saved again keeps deriving it from its dwell as the file meant.
            params.__pydantic_fields_set__.discard("learn_s")
        return params

    @model_validator(mode="after")
    def _learn_slower_than_the_dwell(self) -> StaticForegroundParams:
        if self.learn_s < MIN_LEARN_PER_DWELL * self.dwell_s:
            raise ValueError(
                f"learn_s {self.learn_s:g} is shorter than twice dwell_s {self.dwell_s:g}: the "
                f"background would absorb what appeared before its dwell is over (leave learn_s "
                f"out for {default_learn_s(self.dwell_s):g})"
            )
        return self


class ShopFrontParams(StaticForegroundParams):
    """New static objects (tables, racks, goods) in a shop-front zone.

    classes: COCO classes counted when stationary and absent from the learned background
    (benches are street furniture: refused here). max_displacement: as for vending.
    """

    classes: ClassNames = Field(default=["dining table", "chair", "potted plant", "suitcase"])
    max_displacement: float = Field(default=0.3, gt=0)

    @field_validator("classes")
    @classmethod
    def _never_a_bench(cls, value: list[str]) -> list[str]:
        return _none_of(value, ("bench",), "a shop's goods", "benches are street furniture")


class PiledMaterialsParams(StaticForegroundParams):
    """Static foreground accumulating against the zone's learned background."""

    dwell_s: float = Field(default=1800.0, ge=0, le=MAX_SPAN_S)
    # 4 x the default dwell, as derived when learn_s is left out: the zone editor shows it.
    learn_s: float = Field(
        default=default_learn_s(1800.0), gt=0, le=MAX_LEARN_S, description=LEARN_S_DOC
    )


# Rules judged on the zone's long-term background model, which learns whatever the schedule.
BACKGROUND_RULES = ("shop_front_occupation", "piled_materials")

RULE_PARAMS: dict[str, type[RuleParams]] = {
    "street_vending": StreetVendingParams,
    "shop_front_occupation": ShopFrontParams,
    "garbage_overflow": GarbageOverflowParams,
    "illegal_parking": IllegalParkingParams,
    "non_motor_parking": NonMotorParkingParams,
    "piled_materials": PiledMaterialsParams,
    "crowd_gathering": CrowdGatheringParams,
}


class ZoneRules(Strict):
    street_vending: StreetVendingParams | None = None
    shop_front_occupation: ShopFrontParams | None = None
    garbage_overflow: GarbageOverflowParams | None = None
    illegal_parking: IllegalParkingParams | None = None
    non_motor_parking: NonMotorParkingParams | None = None
    piled_materials: PiledMaterialsParams | None = None
    crowd_gathering: CrowdGatheringParams | None = None

    @field_validator(*RULE_PARAMS, mode="before")
    @classmethod
    def _written_with_a_value(cls, value: object, info: ValidationInfo) -> object:
        # A rule's name alone (``street_vending:``) reads as null. Taken as "off", a zone meant
        # to raise would stay silent with no word of it: the key must say what it means.
        if value is None:
            raise ValueError(
                f"{info.field_name} has no value: write `{info.field_name}: {{}}` to turn it "
                "on with its defaults, or remove the key to leave it off"
            )
        return value

    @field_validator(*RULE_PARAMS)
    @classmethod
    def _clears_no_sooner_than_a_gap(cls, value: RuleParams | None) -> RuleParams | None:
        # After a raise, a miss longer than clear_s but shorter than gap_s would end the
        # episode, and the next sighting would raise it again: one case, many candidates.
        if value is not None and value.clear_s < value.gap_s:
            raise ValueError(
                f"clear_s {value.clear_s:g} is shorter than gap_s {value.gap_s:g}: a miss "
                "shorter than gap_s would end a raised episode and the next sighting raise a "
                "new candidate; make clear_s at least gap_s"
            )
        return value

    def enabled(self) -> dict[str, RuleParams]:
        """The configured rules by type, in a stable order."""
        return {name: p for name in RULE_PARAMS if (p := getattr(self, name)) is not None}


Point = tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]]


# A zone smaller than this share of the frame (about 2×2 pixels at 720p) holds no object.
MIN_ZONE_AREA = 5e-6
# Points of one polygon: a zone traced by hand has tens; every pair of edges is checked for a
# crossing, which takes well under a second at this many and grows with its square.
MAX_POLYGON_POINTS = 1000


def few_enough_points(value: object) -> object:
    # Before the points are read: a polygon of 40,000 points tied up the API for minutes.
    if isinstance(value, list | tuple) and len(value) > MAX_POLYGON_POINTS:
        raise ValueError(
            f"the polygon has {len(value)} points, more than the {MAX_POLYGON_POINTS} a zone "
            "may have: trace it with fewer points"
        )
    return value


def polygon_area(points: Sequence[Sequence[float]]) -> float:
    """The area of the closed polygon ``points`` (shoelace; a repeated first point adds none)."""
    n = len(points)
    twice = sum(
        points[k][0] * points[(k + 1) % n][1] - points[(k + 1) % n][0] * points[k][1]
        for k in range(n)
    )
    return 0.5 * abs(twice) if n >= 3 else 0.0


def fills_its_box(points: Sequence[Sequence[float]]) -> bool:
    """Whether the polygon is its own upright bounding box, however many points draw it (a
    repeated first point, a point along an edge): only then is its area the box's."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    box = (max(xs) - min(xs)) * (max(ys) - min(ys))
    return polygon_area(points) >= box * (1 - 1e-9)


def _crossing_edges(points: Sequence[Point]) -> tuple[int, int, int, int] | None:
    """The first two edges of the closed polygon that cross, by their points' indices.

    Only a proper crossing counts: edges that touch at a point (a ring that repeats its first
    point at the end) do not. Every pair of edges is compared at once, in arrays: a loop over
    the pairs took 1.7 s at 1000 points.
    """
    import numpy as np  # here, not at the top: the CLI's modules stay light until they run

    n = len(points)
    xy = np.asarray(points, dtype=np.float64).reshape(n, 2)
    x, y = xy[:, 0], xy[:, 1]
    dx, dy = np.roll(x, -1) - x, np.roll(y, -1) - y  # edge i runs from point i to point i + 1
    # side[i, k]: which side of edge i point k lies on (> 0 left, < 0 right, 0 on its line).
    side = dx[:, None] * (y[None, :] - y[:, None]) - dy[:, None] * (x[None, :] - x[:, None])
    # apart[i, j] < 0: the ends of edge j lie on either side of edge i's line.
    apart = side * np.roll(side, -1, axis=1)
    cross = (apart < 0) & (apart.T < 0)
    pairs = np.triu(np.ones((n, n), dtype=bool), k=2)  # not the edge itself nor its neighbours
    pairs[0, n - 1] = False  # the last edge is the first one's neighbour too
    found = np.flatnonzero(cross & pairs)
    if not found.size:
        return None
    i, j = divmod(int(found[0]), n)  # the first in the order of i, then j
    return i, (i + 1) % n, j, (j + 1) % n


class Zone(Strict):
    id: Id
    polygon: Annotated[list[Point], BeforeValidator(few_enough_points)] = Field(min_length=3)
    schedule: Schedule | None = None
    rules: ZoneRules = ZoneRules()

    @field_validator("polygon")
    @classmethod
    def _encloses_an_area(cls, value: list[Point]) -> list[Point]:
        # Edges that cross (two points swapped) make a bow-tie whose halves rasterise apart,
        # or cancel out to no area at all: not the zone that was meant.
        crossing = _crossing_edges(value)
        if crossing is not None:
            a, b, c, d = crossing
            raise ValueError(f"edges {a}\u2013{b} and {c}\u2013{d} cross: points out of order?")
        # Points on one line (a misplaced click, a pasted list) rasterise to an empty mask:
        # the zone would never contain anything and its rules would never fire.
        area = 0.5 * abs(
            sum(
                x0 * y1 - x1 * y0
                for (x0, y0), (x1, y1) in zip(value, value[1:] + value[:1], strict=True)
            )
        )
        if area < MIN_ZONE_AREA:
            raise ValueError(f"the polygon encloses no area ({area:.2g} of the frame)")
        return value

    @model_validator(mode="after")
    def _dwell_fits_the_schedule(self) -> Zone:
        # An episode cannot outlast the stretch it is seen in: a rule whose dwell is as long
        # as the daily window, or as the whole days scheduled in a row, could never raise (the
        # window ends before its last minute does). The background rules judge every frame
        # and raise a dwell completed off the window when it opens, so any window serves them.
        if self.schedule is None:
            return self
        stretch = self.schedule.stretch_s
        too_long = [f"{n} (dwell_s {p.dwell_s:g})" for n, p in self.rules.enabled().items()
                    if p.dwell_s >= stretch and n not in BACKGROUND_RULES]  # fmt: skip
        if too_long:
            raise ValueError(
                f"the schedule is active {self.schedule.describe_stretch()}, no longer than "
                f"the dwell of {', '.join(too_long)}: it could never raise"
            )
        return self


# How many frame intervals (patrol visits) a track, a dwell gap or a clear may span.
PATROL_VISITS = 2.5
# A patrol camera's weight: from a hundredth to a hundred times an ordinary camera's share.
MIN_WEIGHT = 0.01
MAX_WEIGHT = 100.0

# The URL schemes ingest reads a camera source with (gridpatrol.ingest.sources.source_kind):
# FFmpeg streams and snapshot URLs. Anything else with :// would be opened as a file path.
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtp", "udp", "srt")
SNAPSHOT_SCHEMES = ("http", "https")
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _camera_source(value: str) -> str:
    """The source as ingest reads it: without spaces around it, ``mqtt`` and a URL's scheme in
    lower case. A ``MQTT`` or ``mqtt `` read as a file path would report a camera that
    publishes its own frames offline; a URL of another scheme would never open."""
    source = value.strip()
    if not source:
        raise ValueError("the source is empty: a file path, a stream or snapshot URL, or mqtt")
    if source.lower() == "mqtt":
        return "mqtt"
    match = _URL_SCHEME.match(source)
    if match is None:
        return source  # a file path
    scheme = match.group(1).lower()
    if scheme == "mqtt":
        raise ValueError(
            f"{masked(source)!r}: a camera that publishes its own frames to the site's broker "
            "has the source mqtt, without a URL"
        )
    if scheme not in STREAM_SCHEMES + SNAPSHOT_SCHEMES:
        raise ValueError(
            f"{masked(source)!r} has the unknown scheme {scheme!r}: streams are "
            f"{', '.join(STREAM_SCHEMES)}, snapshot URLs http and https"
        )
    return scheme + source[len(scheme) :]


class Camera(Strict):
    id: Id
    name: str = ""
    source: Annotated[str, AfterValidator(_camera_source)]
    fps: float | None = Field(default=None, gt=0, le=60)
    # At most a day: gap_s and clear_s grow to 2.5 intervals (zone_rules), within MAX_SPAN_S.
    interval_s: float | None = Field(default=None, gt=0, le=DAY_S)
    loop: bool = False
    resize: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] | None = None
    jpeg_quality: int = Field(default=85, ge=1, le=100)
    # Bounded so that the patrol's shares (weight / sum of weights) and virtual times
    # (1 / weight, boosted up to 16 x) stay well within floating point.
    weight: float = Field(default=1.0, ge=MIN_WEIGHT, le=MAX_WEIGHT)
    location: Location
    zones: list[Zone] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sampling(self, info: ValidationInfo) -> Camera:
        if self.fps is not None and self.interval_s is not None:
            raise ValueError("give either fps (continuous) or interval_s (patrol), not both")
        if not (info.context or {}).get("ids_checked"):
            dup = _repeated(z.id for z in self.zones)
            if dup:
                raise ValueError(f"duplicate zone id(s) {dup}")
        return self

    @property
    def is_patrol(self) -> bool:
        return self.interval_s is not None

    @property
    def frame_interval_s(self) -> float:
        """Seconds between two frames of this camera: the patrol interval or 1 / fps."""
        return self.interval_s if self.interval_s is not None else 1.0 / self.sample_fps

    def zone_rules(self, zone: Zone) -> dict[str, RuleParams]:
        """The zone's rules with the timing this camera can honour.

        A camera sees the zone only every ``frame_interval_s`` (a patrol camera even less often
        under load), so ``gap_s`` and ``clear_s`` are at least ``PATROL_VISITS`` intervals:
        with the defaults (20 s, 60 s) and a 30 s patrol, every dwell would restart on the next
        visit and one missed visit would split an episode into two candidates.
        """
        rules = zone.rules.enabled()
        floor = PATROL_VISITS * self.frame_interval_s
        return {
            name: p.model_copy(
                update={"gap_s": max(p.gap_s, floor), "clear_s": max(p.clear_s, floor)}
            )
            for name, p in rules.items()
        }

    @property
    def sample_fps(self) -> float:
        """Continuous sampling rate; 2 fps when the file gives neither fps nor interval_s."""
        return self.fps if self.fps is not None else 2.0


class Thresholds(Strict):
    """Hysteresis for threshold readings: raise at ``raise``, clear at ``clear``.

    A value must stay beyond ``raise`` for ``debounce_s`` before the alarm is active and back
    beyond ``clear`` for ``clear_hold_s`` before it clears. ``raise < clear`` means a falling
    alarm (for example a low battery).
    """

    raise_: float = Field(alias="raise")
    clear: float
    unit: str = ""
    debounce_s: float = Field(default=0.0, ge=0, le=MAX_SPAN_S)
    clear_hold_s: float = Field(default=0.0, ge=0, le=MAX_SPAN_S)

    @model_validator(mode="after")
    def _hysteresis(self) -> Thresholds:
        if self.raise_ == self.clear:
            raise ValueError("raise and clear must differ (hysteresis)")
        return self

    @property
    def rising(self) -> bool:
        return self.raise_ > self.clear


class Sensor(Strict):
    id: Id
    kind: SensorKind
    name: str = ""
    location: Location
    camera: Id | None = None
    expected_interval_s: float | None = Field(default=None, gt=0, le=MAX_SPAN_S)
    thresholds: Thresholds | None = None

    @field_validator("camera")
    @classmethod
    def _known_camera(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Checked here, not only on the site, so that the error names the sensor's line.
        known = (info.context or {}).get("camera_ids")
        if value is not None and known is not None and value not in known:
            raise ValueError(f"links unknown camera {value!r}")
        return value


class Site(Strict):
    site: SiteInfo
    mqtt: MqttSection = MqttSection()
    policy: Policy = Policy()
    patrol: Patrol = Patrol()
    cameras: list[Camera] = Field(default_factory=list)
    sensors: list[Sensor] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> Site:
        # parse_site reports duplicates itself, each at its own line.
        if not (info.context or {}).get("ids_checked"):
            for what, ids in (
                ("camera", (c.id for c in self.cameras)),
                ("sensor", (s.id for s in self.sensors)),
            ):
                dup = _repeated(ids)
                if dup:
                    raise ValueError(f"duplicate {what} id(s) {dup}")
        known = {c.id for c in self.cameras}
        for sensor in self.sensors:
            if sensor.camera is not None and sensor.camera not in known:
                raise ValueError(f"sensor {sensor.id!r} links unknown camera {sensor.camera!r}")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.site.timezone)

    def camera(self, camera_id: str) -> Camera:
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam
        raise KeyError(camera_id)

    def sensor(self, sensor_id: str) -> Sensor:
        for sensor in self.sensors:
            if sensor.id == sensor_id:
                return sensor
        raise KeyError(sensor_id)


# ---------------------------------------------------------------------------------------------
# Loading with line numbers.


class SiteConfigError(ValueError):
    """The site file is invalid; ``problems`` holds one ``file:line: field: message`` each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid site file:\n  " + "\n  ".join(problems))


Path_ = tuple[str | int, ...]

# libyaml's parser when PyYAML was built with it (its nodes keep their marks, so lines are
# kept): the pure-Python one takes tens of seconds on a site of thousands of sensors.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MERGE_TAG = "tag:yaml.org,2002:merge"


class _Builder:
    """Plain Python from a composed YAML node, recording the line of every path.

    ``texts`` receives the source text of every unquoted scalar YAML reads as a number or a
    boolean, so that where a string is expected the error can show what was written. One
    constructor serves the whole file: scalars are built by its constructor for their tag.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: dict[Path_, int] = {}
        self.texts: dict[Path_, str] = {}
        self.constructor = yaml.constructor.SafeConstructor()
        self.by_tag = yaml.constructor.SafeConstructor.yaml_constructors
        self.open: set[yaml.Node] = set()  # the mappings and lists being built

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            if node in self.open:  # an alias inside the anchor it names
                line = node.start_mark.line + 1
                raise SiteConfigError(
                    [f"{self.name}:{line}: {_dotted(path)}: an alias refers to what contains it"]
                )
            self.open.add(node)
            try:
                if isinstance(node, yaml.MappingNode):
                    return self.mapping(node, path)
                return [self.build(v, (*path, i)) for i, v in enumerate(node.value)]
            finally:
                self.open.discard(node)
        value = self.scalar(node)
        # A plain (unquoted) scalar: style None from the Python parser, '' from libyaml.
        plain = isinstance(node, yaml.ScalarNode) and not node.style
        if plain and isinstance(value, bool | int | float):
            self.texts[path] = node.value
            if isinstance(value, int) and not isinstance(value, bool) and ":" in node.value:
                return _Sexagesimal(value, node.value)
        return value

    def mapping(self, node: yaml.MappingNode, path: Path_) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        merges = []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                merges.append(value_node)
                continue
            key = self.key(key_node, path)
            if key in result:
                line = key_node.start_mark.line + 1
                raise SiteConfigError(
                    [f"{self.name}:{line}: {_dotted((*path, key))}: duplicate key"]
                )
            result[key] = self.build(value_node, (*path, key))
            self.lines[(*path, key)] = key_node.start_mark.line + 1
        for value_node in merges:
            self.merge(result, value_node, path)
        return result

    def key(self, node: yaml.Node, path: Path_) -> str:
        """A mapping's key, which must be text: the schema names every key. A list or a mapping
        as a key (``? [a, b]``) is no name; an unquoted ``on``, ``12`` or ``~`` is read by YAML
        as true, a number or null, which no key of the schema is."""
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.ScalarNode):
            what = "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
            raise SiteConfigError(
                [f"{self.name}:{line}: {_dotted(path)}: a key must be a name, not {what}"]
            )
        key = self.scalar(node)
        if isinstance(key, str):
            return key
        written = node.value
        known = _keys_at(path)
        # YAML 1.1's on/off in a schedule are its from/to: the hint names the key meant.
        meant = {"on": "from", "off": "to"}.get(written.lower(), "")
        hint = (
            f", or did you mean {meant!r}?"
            if meant in known
            else _did_you_mean(written, known).replace(" (", ", or ").rstrip(")")
        )
        if not written:
            said = "YAML reads an empty key as null: write the key's name"
        elif key is None:
            said = f"YAML reads the key {written} as null: write the key's name{hint}"
        else:
            said = f"YAML reads the key {written} as {_what(key)}: write it in quotes{hint}"
        shown = _dotted((*path, written or "''"))
        raise SiteConfigError([f"{self.name}:{line}: {shown}: {said}"])

    def merge(self, result: dict[Any, Any], node: yaml.Node, path: Path_) -> None:
        """``<<: *anchor`` or ``<<: [*a, *b]``: the keys the mapping does not set itself, an
        earlier anchor before a later one; a merged field keeps its line in the anchor."""
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                line = source.start_mark.line + 1
                raise SiteConfigError(
                    [
                        f"{self.name}:{line}: {_dotted((*path, '<<'))}: a merge key takes a "
                        "mapping or a list of mappings, e.g. <<: *defaults"
                    ]
                )
            saved = self.lines, self.texts
            self.lines, self.texts = {}, {}
            try:
                merged = self.build(source, path)
                lines, texts = self.lines, self.texts
            finally:
                self.lines, self.texts = saved
            added = {k for k in merged if k not in result}
            result.update((k, merged[k]) for k in merged if k in added)
            depth = len(path)
            ours = [p for p in lines if len(p) > depth and p[depth] in added]
            self.lines.update((p, lines[p]) for p in ours)
            self.texts.update((p, texts[p]) for p in ours if p in texts)

    def scalar(self, node: yaml.Node) -> Any:
        # Constructed in place: an empty value (``name:``) serialises to a document of its own
        # that does not load back. An unknown tag goes through construct_object for its error.
        construct = self.by_tag.get(node.tag) if isinstance(node, yaml.ScalarNode) else None
        if construct is None:
            return self.constructor.construct_object(node, deep=True)
        return construct(self.constructor, node)


def _what(value: Any) -> str:
    """What YAML made of a plain scalar that is not text, in words (``true``, ``null``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return f"the number {value}"
    return f"a {type(value).__name__} ({value})"  # a date, a timestamp


def _read_as(text: str, value: Any) -> str:
    """Why an unquoted ``text`` is not the string it looks like, with the fix."""
    what = str(value).lower() if isinstance(value, bool) else f"the number {value}"
    why = ""
    if isinstance(value, int) and not isinstance(value, bool):
        digits = text.lstrip("+-")
        if ":" in text:
            why = " (YAML reads digits joined by ':' as base 60)"
        elif len(digits) > 1 and digits[0] == "0" and digits.isdigit():
            why = " (YAML reads a leading 0 as octal)"
    return f'{text} is read as {what}{why}: write it in quotes, e.g. "{text}"'


def _dotted(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line_for(loc: Path_, lines: Mapping[Path_, int]) -> int:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _clean_loc(loc: tuple[str | int, ...]) -> Path_:
    """Drop pydantic's union-member and function-validator tags from an error location."""
    # Fields are named by their alias (``raise``, ``from``) already; ``raise_`` in a location is
    # a key written in the file, refused as unknown.
    return tuple(p for p in loc if not (isinstance(p, str) and "[" in p))


# ---------------------------------------------------------------------------------------------
# YAML syntax errors, named at the line to fix.

# Punctuation a Chinese input method types in its full-width form: YAML knows only the ASCII one.
FULL_WIDTH = {"：": ":", "，": ",", "［": "[", "］": "]", "｛": "{", "｝": "}", "\u3000": " "}
_QUOTED = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^']|'')*'")
_UNCLOSED = {
    "while scanning a quoted scalar": "a quote opened at column {col} is not closed",
    "while parsing a flow mapping": "a '{{' at column {col} is not closed",
    "while parsing a flow sequence": "a '[' at column {col} is not closed",
    "while scanning a simple key": "this line has no ':' after its key",
}


def _full_width(char: str, column: int | None = None) -> str:
    where = f" at column {column}" if column is not None else ""
    if char == "\u3000":
        return f"an ideographic space (U+3000){where}: YAML needs ASCII spaces"
    return (
        f"full-width {char!r} (U+{ord(char):04X}){where}: YAML needs the ASCII {FULL_WIDTH[char]!r}"
    )


def _misplaced_full_width(line: str) -> tuple[str, int] | None:
    """A full-width character standing in YAML's syntax rather than in text on ``line``: a
    colon after an ASCII key, a bracket, a comma in a flow collection, an ideographic space
    that indents or follows a colon or a dash. Returns (char, 1-based column)."""
    if line.lstrip().startswith("#"):
        return None
    # Quoted text keeps its characters; the columns stay as written.
    code = _QUOTED.sub(lambda m: "x" * len(m.group()), line).split(" #")[0]
    in_flow = False
    for i, char in enumerate(code):
        before = code[:i].rstrip(" ")
        if char in "[{［｛":
            in_flow = True
        if (
            char in "［］｛｝"
            or (char == "：" and before[-1:].isascii() and before[-1:].strip() != "")
            or (char == "，" and in_flow)
            or (char == "\u3000" and (not code[:i].strip(" \u3000-") or before[-1:] in (":", "-")))
        ):
            return char, i + 1
    return None


def _full_width_in(value: object) -> str:
    """A note naming the first full-width character of a refused key or value, else ''."""
    if isinstance(value, str):
        for char in value:
            if char in FULL_WIDTH:
                return f" ({_full_width(char)})"
    return ""


def _syntax_problem(exc: yaml.YAMLError, text: str, name: str) -> str:
    """``file:line: YAML syntax: …`` at the line to fix, which is not always where the parser
    stopped: a full-width colon or a key without ':' shows only on the next line, an unclosed
    quote or bracket at the end of what it swallowed."""
    problem = str(getattr(exc, "problem", None) or exc)
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return f"{name}:1: YAML syntax: {problem}"
    line, what = _culprit(text.splitlines() or [""], mark, problem, exc)
    return f"{name}:{line}: YAML syntax: {what}"


def _culprit(lines: list[str], mark: Any, problem: str, exc: yaml.YAMLError) -> tuple[int, str]:
    at = min(mark.line, len(lines) - 1)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    stopped = f"(the parser stopped at line {mark.line + 1}, column {mark.column + 1}: {problem})"
    before = _line_before(lines, at)
    first = context_mark.line if context_mark is not None else before
    for n in range(min(first, at), at + 1):
        found = _misplaced_full_width(lines[n])
        if found is not None:
            return n + 1, f"{_full_width(*found)} {stopped}"
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip(" \t"))]
    if "\t" in indent or lines[at][mark.column : mark.column + 1] == "\t":
        column = indent.index("\t") + 1 if "\t" in indent else mark.column + 1
        return at + 1, (
            f"a tab at column {column}: YAML indents with spaces only, replace tabs with spaces"
        )
    if context_mark is not None and context in _UNCLOSED and context_mark.line != mark.line:
        # A bracket closed after the stop was open on purpose: the mistake is where it stopped.
        rest = lines[at][mark.column :]
        pair = {"flow mapping": "{}", "flow sequence": "[]"}.get(context.split(" a ")[-1])
        if pair is None or rest.count(pair[1]) <= rest.count(pair[0]):
            what = _UNCLOSED[context].format(col=context_mark.column + 1)
            return context_mark.line + 1, f"{what} {stopped}"
    if problem.startswith("mapping values are not allowed") and before < at:
        previous = lines[before].strip().removeprefix("- ")
        if ":" not in previous:
            return before + 1, f"this line has no ':' after its key {stopped}"
        if _indent(lines[at]) > _indent(lines[before]) and not previous.endswith(":"):
            return at + 1, (
                f"{problem} at column {mark.column + 1}: is this line indented deeper than "
                f"line {before + 1}?"
            )
    alias = re.match(r"\*([^\s,\[\]{}]+)", lines[at][mark.column :])
    if problem.startswith("found undefined alias") and alias is not None:
        return at + 1, (
            f"found undefined alias {alias.group(1)!r} at column {mark.column + 1}: an alias "
            f"*{alias.group(1)} needs an anchor &{alias.group(1)} earlier in the file"
        )
    where = f"{problem} at column {mark.column + 1}"
    if context and context_mark is not None:
        where += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return mark.line + 1, where


def _line_before(lines: list[str], at: int) -> int:
    """The last line before ``at`` that holds more than blanks or a comment (else ``at``)."""
    for n in range(at - 1, -1, -1):
        stripped = lines[n].strip()
        if stripped and not stripped.startswith("#"):
            return n
    return at


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


# ---------------------------------------------------------------------------------------------
# Schema messages an operator can act on.


def _id_message(value: Any, key: str | int) -> str:
    text = (
        f"{value!r} is not an id: ids are MQTT topic levels, 1-64 of the letters A-Z a-z, the "
        "digits 0-9 and _ . -"
    )
    return text + ("; put Chinese text in name" if key == "id" else "")


def _clock_message(value: Any, _key: str | int) -> str:
    end = ' (a day ends at "23:59")' if str(value).startswith("24:") else ""
    return f'{value!r} is not a time: write HH:MM, e.g. "06:00"{end}'


def _prefix_message(value: Any, _key: str | int) -> str:
    return (
        f"{value!r} is not a topic prefix: MQTT topic levels of the letters A-Z a-z, the digits "
        "0-9 and _ . -, joined by /, e.g. gridpatrol"
    )


_PATTERN_MESSAGES: dict[str, Callable[[Any, str | int], str]] = {
    ID_PATTERN: _id_message,
    _HHMM.pattern: _clock_message,
    PREFIX_PATTERN: _prefix_message,
}


def _did_you_mean(key: str | int, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _keys_at(loc: Path_) -> list[str]:
    """The keys the schema allows in the mapping at ``loc``, as written ([] when unknown)."""
    node: Any = Site
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel) and isinstance(part, str):
            field = next((f for n, f in node.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return []
            node = field.annotation
        elif get_origin(node) is list and isinstance(part, int):
            node = get_args(node)[0]
        elif get_origin(node) is dict and isinstance(part, str):
            node = get_args(node)[1]
        else:
            return []
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return [f.alias or n for n, f in node.model_fields.items()]
    return []


def _unwrap(node: Any) -> Any:
    """``X | None`` → ``X``; a type from an ``Annotated`` one."""
    while True:
        origin = get_origin(node)
        if origin is Annotated:
            node = get_args(node)[0]
        elif origin in (Union, UnionType):
            node = next(a for a in get_args(node) if a is not type(None))
        else:
            return node


def _duplicate_ids(
    data: dict[str, Any], lines: dict[Path_, int], name: str
) -> list[tuple[int, str]]:
    """A problem for every camera, sensor or zone (within its camera) whose id came before."""
    lists: list[tuple[str, Path_, Any]] = [
        ("camera", ("cameras",), data.get("cameras")),
        ("sensor", ("sensors",), data.get("sensors")),
    ]
    cameras = data.get("cameras")
    for i, cam in enumerate(cameras if isinstance(cameras, list) else []):
        if isinstance(cam, dict):
            lists.append(("zone", ("cameras", i, "zones"), cam.get("zones")))
    problems = []
    for what, path, items in lists:
        first: dict[str, int] = {}
        for i, item in enumerate(items if isinstance(items, list) else []):
            ident = item.get("id") if isinstance(item, dict) else None
            if not isinstance(ident, str):
                continue
            loc = (*path, i, "id")
            line = _line_for(loc, lines)
            if ident in first:
                problems.append(
                    (
                        line,
                        f"{name}:{line}: {_dotted(loc)}: duplicate {what} id {ident!r} "
                        f"(first at line {first[ident]})",
                    )
                )
            else:
                first[ident] = line
    return problems


def _too_thin(site: Site, lines: Mapping[Path_, int], name: str) -> list[tuple[int, str]]:
    """A problem for every background rule on a zone too thin for the background model.

    The model works on the zone's crop of a small grey frame and cleans its static foreground
    with an opening: a zone whose mask there holds no block of the opening's size loses every
    pixel to it, so its rule could never raise (a strip 2 % of the frame tall, 21 px at 1080p,
    is 2 px tall at 90). Judged as the model sees it: the zone's mask in its crop, eroded.
    """
    wanted = [
        (i, j, camera, zone, rule)
        for i, camera in enumerate(site.cameras)
        for j, zone in enumerate(camera.zones)
        for rule in BACKGROUND_RULES
        if getattr(zone.rules, rule) is not None
    ]
    if not wanted:
        return []
    # Here, not at the top: the CLI's modules stay light until they run.
    from gridpatrol.detectors.background import OPEN_PX, crop_of, eroded
    from gridpatrol.detectors.motion import SMALL_SIZE
    from gridpatrol.detectors.zones import ZoneGeometry

    width, height = SMALL_SIZE
    problems = []
    for i, j, camera, zone, rule in wanted:
        geometry = ZoneGeometry.of(zone.polygon)
        c1, r1, c2, r2 = crop_of(geometry.bbox, SMALL_SIZE)
        mask = geometry.mask(SMALL_SIZE)[r1:r2, c1:c2]
        if eroded(mask).any():
            continue
        loc = ("cameras", i, "zones", j, "rules", rule)
        line = _line_for(loc, lines)
        # A rectangle as tall and wide as the block holds one wherever it lies (its rounded
        # edges lose at most half a pixel each); another shape can be far larger and still
        # nowhere that wide (a slanted band), so only its width across can be asked for.
        upright = fills_its_box(zone.polygon)
        across = (
            f"it is {int(mask.any(axis=1).sum())} px tall and {int(mask.any(axis=0).sum())} "
            "px wide and "
            if upright
            else f"no part of it is {OPEN_PX} px across, so it "
        )
        advice = (
            f"draw it at least {OPEN_PX / height:.1%} of the frame's height and "
            f"{OPEN_PX / width:.1%} of its width"
            if upright
            else f"draw it at least {OPEN_PX} px across in the {width}\u00d7{height} frame "
            f"({OPEN_PX / height:.1%} of the frame's height, {OPEN_PX / width:.1%} of its "
            "width, measured across the zone)"
        )
        problems.append(
            (
                line,
                f"{name}:{line}: {_dotted(loc)}: camera {camera.id!r} zone {zone.id!r} is too "
                f"thin for {rule}, which could never raise: the background model sees it in its "
                f"{width}\u00d7{height} grey frame, where {across}holds no block of "
                f"{OPEN_PX}\u00d7{OPEN_PX} px, the least the model keeps; {advice}",
            )
        )
    return problems


def parse_site(text: str, name: str = "<site>", class_names: Sequence[str] | None = None) -> Site:
    """Validate site-file text; raise :class:`SiteConfigError` naming file, line and field.

    ``class_names``: the detection model's classes; when given, every class a rule names must
    be one of them.
    """
    return _parse(text, name, class_names).site


@dataclass(frozen=True)
class SiteFile:
    """A valid site with the line of every field, for what is said about it afterwards."""

    site: Site
    name: str
    lines: Mapping[Path_, int]

    def at(self, *path: str | int) -> str:
        """``file:line: field`` of a field of the site."""
        return f"{self.name}:{_line_for(path, self.lines)}: {_dotted(path)}"


def _parse(text: str, name: str, class_names: Sequence[str] | None) -> SiteFile:
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise SiteConfigError([_syntax_problem(exc, text, name)]) from exc
    if root is None:
        raise SiteConfigError([f"{name}:1: (top level): the file is empty"])
    builder = _Builder(name)
    lines, texts = builder.lines, builder.texts
    try:
        data = builder.build(root, ())
    except yaml.YAMLError as exc:  # a tag the safe loader does not construct
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise SiteConfigError([f"{name}:{line}: YAML: {getattr(exc, 'problem', exc)}"]) from exc
    if not isinstance(data, dict):
        raise SiteConfigError([f"{name}:1: (top level): expected a mapping"])
    duplicates = _duplicate_ids(data, lines, name)
    cameras = data.get("cameras")
    ids = (
        {c.get("id") for c in cameras if isinstance(c, dict)}
        if isinstance(cameras, list)
        else set()
    )
    context = {"camera_ids": ids, "class_names": class_names, "ids_checked": True}
    try:
        site = Site.model_validate(data, context=context)
    except ValidationError as exc:
        problems = list(duplicates)
        for err in exc.errors():
            loc = _clean_loc(err["loc"])
            msg = err["msg"]
            if err["type"] == "string_type" and loc in texts:
                msg = _read_as(texts[loc], err["input"])
            explain = _PATTERN_MESSAGES.get((err.get("ctx") or {}).get("pattern", ""))
            if err["type"] == "string_pattern_mismatch" and explain is not None:
                msg = explain(err["input"], loc[-1] if loc else "")
            if err["type"] == "extra_forbidden" and loc:
                msg += _did_you_mean(loc[-1], _keys_at(loc[:-1]))
            refused = loc[-1] if err["type"] == "extra_forbidden" and loc else err["input"]
            msg += _full_width_in(refused)
            line = _line_for(loc, lines)
            problems.append((line, f"{name}:{line}: {_dotted(loc)}: {msg}"))
        raise SiteConfigError([p for _, p in sorted(problems, key=lambda p: p[0])]) from exc
    problems = duplicates + _too_thin(site, lines, name)
    if problems:
        raise SiteConfigError([p for _, p in sorted(problems, key=lambda p: p[0])])
    return SiteFile(site, name, lines)


def load_site(path: str | Path, class_names: Sequence[str] | None = None) -> Site:
    """Load and validate a site file; the one entry point every component uses."""
    return read_site(path, class_names).site


def read_site(path: str | Path, class_names: Sequence[str] | None = None) -> SiteFile:
    """:func:`load_site` with the line of every field (``check-config`` names them)."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise SiteConfigError([f"{file}:0: cannot read the site file: {exc.strerror}"]) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SiteConfigError([_not_utf8(file, data, exc)]) from exc
    return _parse(text, str(file), class_names)


def _not_utf8(file: Path, data: bytes, exc: UnicodeDecodeError) -> str:
    # Windows editors often save Chinese text as GBK (code page 936): say so when it decodes.
    line = data.count(b"\n", 0, exc.start) + 1
    try:
        data.decode("gb18030")
        guess = ", it looks like GBK/GB18030"
    except UnicodeDecodeError:
        guess = ""
    return (
        f"{file}:{line}: the site file is not UTF-8 text (byte 0x{data[exc.start]:02X} "
        f"cannot be decoded{guess}): save it as UTF-8, e.g. in Notepad with "
        f"Save As, Encoding: UTF-8"
    )


# Sensor kinds that report a level (water, bin fill, noise): their readings are judged against
# thresholds. Manhole covers and smoke detectors usually send alarm envelopes of their own.
LEVEL_KINDS = ("waterlogging", "bin_fill", "noise")
# Rules whose min_confidence selects the detections they judge (piled_materials has none;
# garbage_overflow uses it for its occluders only).
DETECTING_RULES = (
    "street_vending",
    "shop_front_occupation",
    "illegal_parking",
    "non_motor_parking",
    "crowd_gathering",
)


def site_warnings(checked: SiteFile) -> list[str]:
    """What is valid but will not work as meant: ``file:line: field: warning: …`` each."""
    site, out = checked.site, []
    tz = site.site.timezone
    if _ETC_GMT.fullmatch(tz) and utc_offset(tz) != "UTC+00:00":
        out.append(
            f"{checked.at('site', 'timezone')}: warning: {tz} is {utc_offset(tz)}: Etc/GMT "
            "zones have the sign inverted (Etc/GMT-8 is UTC+08:00); write the zone of a city, "
            "e.g. Asia/Shanghai"
        )
    for c, cam in enumerate(site.cameras):
        for z, zone in enumerate(cam.zones):
            for rule, p in zone.rules.enabled().items():
                at = checked.at("cameras", c, "zones", z, "rules", rule)
                out += [f"{at}: warning: {w}" for w in _rule_warnings(cam, zone, rule, p)]
    for i, sensor in enumerate(site.sensors):
        if sensor.kind in LEVEL_KINDS and sensor.thresholds is None:
            out.append(
                f"{checked.at('sensors', i)}: warning: a {sensor.kind} sensor without thresholds: "
                "its readings are dead-lettered (no_thresholds), only the alarms it raises "
                "itself count"
            )
    return out


def _rule_warnings(cam: Camera, zone: Zone, rule: str, p: RuleParams) -> list[str]:
    out = []
    schedule = zone.schedule
    if cam.interval_s is not None and schedule is not None and p.dwell_s > 0:
        # The dwell holds from the first visit that sees it to a visit dwell_s later or more,
        # inside the window, which ends before its last minute does.
        visits = math.ceil(p.dwell_s / cam.interval_s)
        if visits * cam.interval_s >= schedule.stretch_s and rule not in BACKGROUND_RULES:
            out.append(
                f"dwell_s {p.dwell_s:g} takes {visits + 1} patrol visits {cam.interval_s:g} s "
                f"apart ({visits * cam.interval_s / 60:g} min), longer than the schedule's "
                f"{schedule.describe_stretch()}: it can never raise"
            )
    if rule in DETECTING_RULES and p.min_confidence >= 1:
        out.append(
            "min_confidence 1 keeps no detection (a detector's confidence stays below 1): it "
            "can never raise"
        )
    if isinstance(p, GarbageOverflowParams) and p.min_confidence >= 1 and p.occluders:
        out.append("min_confidence 1 sees no occluder: people in front of the zone are judged")
    if isinstance(p, GarbageOverflowParams) and p.threshold is not None and p.threshold >= 1:
        out.append(
            "threshold 1: only a saturated score of the scene head reaches it, so it will "
            "almost never raise"
        )
    return out


def summarise(site: Site, source_kind: Callable[[str], str] | None = None) -> list[str]:
    """Human summary lines for ``gridpatrol check-config``; ``source_kind`` names how ingest
    reads a camera's source (``gridpatrol.ingest.sources.source_kind``)."""
    zone = site.site.timezone
    out = [f"site: {site.site.name} ({zone}, {utc_offset(zone)}), MQTT prefix {site.mqtt.prefix}/"]
    night = site.policy.night
    # The API holds nothing when start == end, unlike a zone schedule's from == to (all day).
    hold = (
        f"night hold: off (start = end {night.start})"
        if night.start == night.end
        else f"night {night.start}-{night.end}"
    )
    out.append(
        f"policy: {hold}, SLA {site.policy.sla_minutes} min, "
        f"urgent {', '.join(site.policy.urgent_types) or '-'}, "
        f"auto-confirm {', '.join(site.policy.auto_confirm) or '-'}"
    )
    unrouted = [t for t in CANDIDATE_TYPES if t not in site.policy.routing]
    if unrouted:
        # A routing table replaces the default one: a partial table leaves types unrouted.
        out.append(f"routing: no unit for {', '.join(unrouted)} (no suggested unit on them)")
    # A camera on MQTT sends its own frames, whatever its interval_s: ingest does not patrol it.
    patrol = [
        c
        for c in site.cameras
        if c.is_patrol and (source_kind is None or source_kind(c.source) != "mqtt")
    ]
    out.append(
        f"cameras: {len(site.cameras)} ({len(patrol)} on patrol sharing "
        f"{site.patrol.max_fps:g} fps)"
    )
    for cam in site.cameras:
        rate = f"every {cam.interval_s:g} s" if cam.is_patrol else f"{cam.sample_fps:g} fps"
        if source_kind is not None:
            rate += f" from {source_kind(cam.source)}"
        zones = ", ".join(f"{z.id}[{'/'.join(z.rules.enabled())}]" for z in cam.zones) or "-"
        out.append(f"  {cam.id} {cam.name} {rate}; zones: {zones}")
    out.append(f"sensors: {len(site.sensors)}")
    for sensor in site.sensors:
        link = f" -> camera {sensor.camera}" if sensor.camera else ""
        # Without an interval only the device's last will can report it offline.
        silence = (
            "" if sensor.expected_interval_s else " (silence not watched: no expected_interval_s)"
        )
        out.append(f"  {sensor.id} {sensor.kind}{link}{silence}")
    return out
