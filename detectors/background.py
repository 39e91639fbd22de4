"""Long-term background model for static foreground (shop fronts, piled materials).

Works on a small grayscale frame (e.g. 160×90) cropped to a zone's bounding box. Two running
averages with time constants in seconds (frames arrive irregularly):

* the long-term background ``B`` (time constant ``learn_s``, typically an hour) is what the
  zone normally looks like;
* the short-term average ``S`` (``short_s``, seconds) is what it looks like now, without noise.

A pixel is *static foreground* when ``S`` differs from ``B`` (something is there that is not
usually there) while the current frame agrees with ``S`` (it is not moving). Pixels covered by
detected objects (persons, vehicles) are excluded from both the result and the long-term
learning, so passers-by neither count nor smear into the background; a global light change
(clouds, dusk, street lights, the camera's auto-exposure) is removed before comparing. Light
scales brightness, so bright pixels move more than dark ones: the change is fitted as a gain
and an offset (``S ≈ gain·B + offset``), robustly, on the current frame's pixels that are not
foreground still, so an object on a minority of the zone is not taken for one, also while
``B`` learns it. A fit under which the zone no longer follows its background's grey levels (a
gain near 0), or, on a zone of one grey level, one that would leave foreground most of what
the last frame's light explained, is an object over most of the zone, not a light change: the
last frame's light is kept, moved along as ``B`` learns.

An object that stays is absorbed into ``B`` in the end; when it is taken away, the uncovered
ground differs from ``B`` and would look like a new object (a *ghost*). So each pixel also keeps
its *clean* look, what it looked like the last time it matched the background before anything
stood on it (following slow lighting drift meanwhile). A pixel that turns foreground while
looking clean again is a ghost: the background takes it back at once.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

Gray = NDArray[np.uint8]
FloatImage = NDArray[np.float32]
Mask = NDArray[np.bool_]
Polygon = tuple[tuple[float, float], ...]
Light = tuple[float, float]  # gain, offset: S ≈ gain·B + offset
CropBox = tuple[int, int, int, int]  # c1, r1, c2, r2 in the small frame's pixels

# The static mask is cleaned by an opening of this many pixels square (of the small frame).
OPEN_PX = 3


@dataclass(frozen=True)
class BackgroundParams:
    learn_s: float = 3600.0
    short_s: float = 10.0
    bootstrap_s: float = 30.0  # the background is the plain running mean for this long
    fg_threshold: float = 25.0  # gray levels between S and B
    stable_threshold: float = 20.0  # gray levels between the frame and S
    # The most time one frame may teach B, unless the camera's frames are normally further
    # apart (see gap_factor). After a silence (camera or worker down, clock stepped ahead) the
    # first frame would otherwise count for the whole silence and be blended in almost
    # entirely, so a pile dumped meanwhile would be normal at once.
    max_step_s: float = 10.0
    # A frame may also teach this many typical gaps: a camera whose frames are slower than
    # configured (an overloaded worker or patrol, an mqtt camera publishing every 30 s) still
    # learns at its real rate instead of learn_s stretched by gap / max_step_s.
    gap_factor: float = 2.5


# The typical gap follows each new gap by this share, and one gap counts as at most
# GAP_OUTLIER typical ones: a steady slower rate is reached within a few frames, while one
# long silence moves the estimate only a little.
GAP_WEIGHT = 0.1
GAP_OUTLIER = 4.0
# The gain of a light change is fitted on the zone's pixels binned by their background grey
# level, LIGHT_BIN levels a bin: the median of frame − B in each bin against the mean of B, so
# an object on a minority of a bin's pixels does not move its point. The gain is a repeated
# median of the slopes between bins at least LIGHT_MIN_DX levels apart: each bin's median slope
# to the others (weighted by their pixels), then the median of those (weighted by the bin's
# pixels). An object on a minority of the zone so moves the gain by no more than the noise,
# however far its grey levels lie from the rest: the weighted median of all slopes, weighted by
# distance too, let pixels at levels the rest of the zone has not set the gain. A bin of fewer
# than LIGHT_BIN_SHARE of the pixels (or LIGHT_BIN_PX) has no say, its median being noise. The
# darkest and the brightest bin of B, and pixels in those of the frame, are left out: a pixel
# clipped at black or white does not show how the light changed (a lamp, a sign lit from
# inside, a sky out of range, a scene over-exposed).
LIGHT_BIN = 8
LIGHT_BIN_SHARE = 0.01
LIGHT_BIN_PX = 4
LIGHT_SAMPLE_PX = 4096  # a larger crop's gain is fitted on a share of its pixels
LIGHT_MIN_DX = 4.0
# A gain measured below GAIN_MIN is no light change: the zone's pixels no longer follow their
# background's grey levels (an object of its own look covers them), so the last light is kept.
# One above GAIN_MAX is clamped (street lights coming on over a dark zone).
GAIN_MIN = 0.2
GAIN_MAX = 3.0
# The light is fitted on the pixels not changed (foreground since they last looked clean) and
# on changed ones B has learned: within LIGHT_SETTLED grey levels of the frame in the last
# frame's light. While B learns a pile, its pixels in B pass through grey levels the rest of
# the zone may not have, where they alone set the bins' points (a pile on 17 % of plain asphalt
# was taken for a light twice as bright within the hour). Nor do they count again as soon as
# they are no longer foreground, still some 25 levels off: of a pile over most of the zone, the
# part of lower contrast is learned first and would draw the light after it. Learned, they
# count again, so an object that stays for good (a hoarding over the whole zone) does not keep
# the zone from the light for good. When fewer than LIGHT_MIN_SHARE of the usable pixels (or
# LIGHT_MIN_PX) are left, an object covers nearly all of the zone, and the pixels left are as
# likely its last ones not yet stable: the last light is kept.
LIGHT_SETTLED = 8.0
LIGHT_MIN_SHARE = 0.1
LIGHT_MIN_PX = 16
# Changed pixels B has not learned count too when they moved as a light moves them: a light
# (a building's shadow sweeping over the zone, a street lamp over part of it, rain) keeps B's
# structure, the frame there being g·B + o with g at least GAIN_FLOOR, within LIGHT_SETTLED on
# LIGHT_ALIKE_SHARE of them; a pile replaces it (a gain near 0). Kept out, a shadow covering
# the zone bit by bit left the light of the last clean tenth held, and the whole zone
# foreground for hours. A light under GAIN_MIN is taken on the same terms (shop lights off,
# an exposure step to 0.15 ×): its gain is measured and it keeps B's structure. They count
# when they are under LIGHT_MIN_SHARE of the usable pixels, or when the pixels not changed or
# learned are: a light over part of the zone keeps B's structure too, and counted as the
# larger part it set the light of the whole. A shadow over 55 % of a street that B had
# learned, once gone, left the part never shadowed a fifth too dark, foreground 20–50 min.
GAIN_FLOOR = 0.08
LIGHT_ALIKE_SHARE = 0.8
LIGHT_CORR_MIN = 0.3
# When all but LIGHT_SHOWN_MIN of the pixels are clipped in the frame (over- or under-exposed),
# the light is one that clips every pixel as the frame does.
LIGHT_SHOWN_MIN = 0.1
# A zone of one grey level shows no gain: its light is taken as a gain alone (light scales
# brightness), and an object on most of it moves the median as a light would. So there, a
# fitted light is not taken when it would leave foreground more than LIGHT_LOST_MAX of the
# fitted pixels the last frame's light explained, and at least LIGHT_LOST_MIN of all of them:
# a light change moves every pixel alike, so the pixels that looked right before still do,
# while the light fitted to an object on most of the zone cancels the object and puts the
# clean rest of the zone in its place. The floor keeps a few pixels near the threshold from
# vetoing a light that explains the rest.
LIGHT_LOST_MAX = 0.5
LIGHT_LOST_MIN = 0.05
_LEVELS = np.arange(256, dtype=np.float64).reshape(256 // LIGHT_BIN, LIGHT_BIN)
# A frame this much before the model's last one is on a clock stepped back (the worker's
# CLOCK_RESET_S): a camera resynchronised, or one whose clock went back while the worker was
# down, so that a restored model meets it first.
CLOCK_STEP_S = 5.0


@dataclass(frozen=True)
class BackgroundState:
    background: FloatImage
    short: FloatImage
    t: float
    start_t: float
    known: Mask  # pixels seen at least once without a detection on them
    clean: FloatImage  # each pixel's look when it last matched the background
    changed: Mask  # pixels foreground since they last looked clean (their clean look is kept)
    gap: float = 0.0  # typical seconds between frames; 0 = not known yet
    # The zone (normalized polygon) the model was learned for, given to a model handed out
    # for saving: a model is only taken back by the same zone. None = not known (saved by an
    # earlier version: taken back once on the old rule, see CameraPipeline.restore_backgrounds).
    polygon: Polygon | None = None
    # The light (gain, offset) S was in over B in the last frame, carried to the B it learned:
    # what a fitted light is checked against. None = not known (a model saved by an earlier
    # version): it is taken as (1, 0), the light a model is seeded in.
    light: Light | None = None


@dataclass(frozen=True)
class StaticForeground:
    """Static foreground of one zone: fraction of the zone's pixels, and where."""

    fraction: float
    bbox: tuple[float, float, float, float] | None  # normalized to the whole frame
    mask: Mask  # in the crop's pixels; True = static foreground not explained by a detection
    foreground: Mask  # static foreground including pixels under detections ("new objects")


def _alpha(dt: float, tau: float) -> float:
    return 1.0 - math.exp(-max(dt, 0.0) / tau)


def crop_of(bbox: tuple[float, float, float, float], small: tuple[int, int]) -> CropBox:
    """The pixels (c1, r1, c2, r2) of the small frame of ``small`` (width, height) a zone of the
    normalized ``bbox`` is modelled on: at least one pixel each way."""
    x1, y1, x2, y2 = bbox
    c1, r1 = int(x1 * small[0]), int(y1 * small[1])
    c2, r2 = max(math.ceil(x2 * small[0]), c1 + 1), max(math.ceil(y2 * small[1]), r1 + 1)
    return c1, r1, c2, r2


def eroded(mask: Mask) -> Mask:
    """The pixels whose OPEN_PX × OPEN_PX block lies within ``mask`` (outside it is False)."""
    reach = OPEN_PX // 2
    padded = np.pad(mask, reach, constant_values=False)
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(OPEN_PX):
        for dx in range(OPEN_PX):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


def _open(mask: Mask) -> Mask:
    """OPEN_PX × OPEN_PX morphological opening: drops isolated pixels (noise, compression
    artefacts). Nothing survives it where the zone's own mask (within its crop) holds no such
    block: the site file refuses a background rule on a zone that thin."""
    reach = OPEN_PX // 2
    padded = np.pad(eroded(mask), reach, constant_values=False)
    h, w = mask.shape
    dilated = np.zeros_like(mask)
    for dy in range(OPEN_PX):
        for dx in range(OPEN_PX):
            dilated |= padded[dy : dy + h, dx : dx + w]
    return dilated


def step(
    state: BackgroundState | None,
    gray: Gray,
    t: float,
    zone_mask: Mask,
    objects: Mask,
    params: BackgroundParams,
) -> tuple[BackgroundState, Mask]:
    """Advance the model with one frame crop; returns the new state and the static mask.

    ``zone_mask`` and ``objects`` (pixels under detections) have the crop's shape. The
    background is seeded from the first frame, except under detections: those pixels are
    seeded when first seen uncovered, so a person standing in the first frame leaves no ghost.
    Whatever else is there when monitoring starts is normal.
    """
    frame = gray.astype(np.float32)
    if state is None or state.background.shape != frame.shape:
        nothing = np.zeros(frame.shape, dtype=bool)
        seeded = BackgroundState(
            frame, frame.copy(), t, t, ~objects, frame.copy(), nothing, light=(1.0, 0.0)
        )
        return seeded, nothing
    state = _on_clock(state, t)
    dt = t - state.t
    newly = ~state.known & ~objects
    known = state.known | newly
    base = np.where(newly, frame, state.background)
    short = state.short + _alpha(dt, params.short_s) * (frame - state.short)
    inside = zone_mask & ~objects & known
    # The global light change, S ≈ gain·B + offset, fitted on the frame rather than on S: while
    # S moves to a new look it is the blend (1 − a)·B + a·new, which is just what B in a light
    # 1 − a as bright looks like, so a pile filling the zone passed for a dimming light on its
    # way in. A pixel the frame's light explains is never static foreground either: it would
    # have to agree with the frame (stable) and still be far from the light's B.
    gain, offset = _light(frame, base, inside, state.changed, state.light, params.fg_threshold)
    stable = np.abs(frame - short) < params.stable_threshold
    differs = np.abs(short - _in_light(base, gain, offset)) > params.fg_threshold
    candidate = differs & stable & zone_mask & known
    looks_clean = np.abs(short - _in_light(state.clean, gain, offset)) <= params.fg_threshold
    ghost = candidate & state.changed & looks_clean
    static = _open(candidate & ~ghost)
    # The uncovered ground is background again, taken back into B's light.
    base = np.where(ghost, (short - offset) / gain, base)
    # During the first bootstrap_s the background is the running mean of what was seen, which
    # washes out anything undetected that moved through the first frames.
    learn = _alpha(min(dt, _max_step(state.gap, params)), _tau(t - state.start_t, params))
    background = np.where(objects, base, base + learn * (frame - base))
    # Changed until both the pixel and its background look clean again (or it was a ghost):
    # on the way back the pixel passes between the two, near both, before it is stable.
    back = looks_clean & (np.abs(base - state.clean) <= params.fg_threshold)
    changed = ((state.changed & ~back) | candidate) & ~ghost
    clean = _follow_clean(state, background, changed, inside)
    new_state = BackgroundState(
        background.astype(np.float32),
        short.astype(np.float32),
        t,
        state.start_t,
        known,
        clean,
        changed,
        _typical_gap(state.gap, dt, params),
        light=_carried(gain, offset, learn),
    )
    return new_state, static


def _light(
    frame: FloatImage,
    base: FloatImage,
    inside: Mask,
    changed: Mask,
    held: Light | None,
    threshold: float,
) -> Light:
    """The zone's light change from ``base`` to ``frame`` as (gain, offset), fitted on the
    ``inside`` pixels not foreground still (see LIGHT_MIN_PX): the gain from :func:`_gain`,
    the offset the median of what is left. The ``held`` light (the last frame's) is kept instead
    when the fit is no light change (see GAIN_MIN, LIGHT_LOST_MAX)."""
    # Without a last light (a model saved by an earlier version), the light it was seeded in:
    # a fit taken as it is kept a pile over most of the zone (found inverted by that version)
    # as the light from then on.
    held = held or (1.0, 0.0)
    # A pixel at its B as it is (gain 1) is learned in any light: one the held light (a light
    # of part of the zone) made foreground, kept out, left the rest to fit that light.
    learned = np.abs(frame - _in_light(base, *held)) <= LIGHT_SETTLED
    learned |= np.abs(frame - base) <= LIGHT_SETTLED
    pending = inside & changed & ~learned
    fit = inside & (~changed | learned)
    alike = _alike(frame, base, pending)
    few = LIGHT_MIN_SHARE * np.count_nonzero(inside)
    if np.count_nonzero(fit) < few or np.count_nonzero(alike) < few:
        fit |= alike
    left = np.count_nonzero(fit)
    if left < max(LIGHT_MIN_SHARE * np.count_nonzero(inside), LIGHT_MIN_PX):
        return held
    x = base[fit]
    y = frame[fit]
    shows = (y >= LIGHT_BIN) & (y < 256 - LIGHT_BIN)
    if np.count_nonzero(shows) < LIGHT_SHOWN_MIN * y.size:
        white = 2 * np.count_nonzero(y >= 256 - LIGHT_BIN) > y.size
        return (1.0, 255.0) if white else (1.0, -255.0)
    xs = x[shows]
    ys = y[shows]
    every = -(-xs.size // LIGHT_SAMPLE_PX)  # the gain from a share of the pixels is as good
    gain, measured = _gain(xs[::every], ys[::every])
    offset = float(np.median(ys - gain * xs))
    if measured and gain < GAIN_MIN and not _keeps_structure(xs, ys, gain, offset):
        return held
    if measured:
        return gain, offset
    before = np.abs(y - _in_light(x, *held)) <= threshold
    lost = int(np.count_nonzero(before & (np.abs(y - _in_light(x, gain, offset)) > threshold)))
    if lost > LIGHT_LOST_MAX * int(np.count_nonzero(before)) and lost > LIGHT_LOST_MIN * y.size:
        return held
    return gain, offset


def _keeps_structure(x: FloatImage, y: FloatImage, gain: float, offset: float) -> bool:
    """Whether ``y`` is ``gain``·``x`` + ``offset`` (within LIGHT_SETTLED) on LIGHT_ALIKE_SHARE
    of the pixels, with a gain of at least GAIN_FLOOR and ``y`` correlated with ``x`` by at
    least LIGHT_CORR_MIN: a light, not an object over them."""
    if gain < GAIN_FLOOR or x.size < LIGHT_MIN_PX:
        return False
    # The gain of a pile's pixels is noise about 0, a tenth at times where B spans few levels;
    # their frame does not go with B's grey levels, a light's does, however dim.
    dx = x.astype(np.float64) - float(np.mean(x))
    dy = y.astype(np.float64) - float(np.mean(y))
    spread = math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy)))
    if spread == 0.0 or float(np.dot(dx, dy)) < LIGHT_CORR_MIN * spread:
        return False
    near = np.abs(y - (gain * x + offset)) <= LIGHT_SETTLED
    return bool(np.count_nonzero(near) >= LIGHT_ALIKE_SHARE * x.size)


def _alike(frame: FloatImage, base: FloatImage, pending: Mask) -> Mask:
    """The ``pending`` pixels (changed, not learned) that moved as a light of their own moves
    them (see GAIN_FLOOR): their gain measured over B's grey levels and their structure kept.
    None when their gain is not shown (one grey level: a pile and a light look alike there)."""
    none = np.zeros(pending.shape, dtype=bool)
    if np.count_nonzero(pending) < LIGHT_MIN_PX:
        return none
    x = base[pending]
    y = frame[pending]
    gain, measured = _gain(x, y)
    offset = float(np.median(y - gain * x))
    if not measured or not _keeps_structure(x, y, gain, offset):
        return none
    alike = none.copy()
    alike[pending] = np.abs(y - (gain * x + offset)) <= LIGHT_SETTLED
    return alike


def _carried(gain: float, offset: float, learn: float) -> Light:
    """The light ``(gain, offset)`` of S over B, over B after it learned ``learn`` of S: B
    learns the light as it learns anything, so a light held while the zone is covered fades
    as B takes in the new look."""
    scale = 1.0 + learn * (gain - 1.0)
    return gain / scale, offset * (1.0 - learn) / scale


def _gain(x: FloatImage, y: FloatImage) -> tuple[float, bool]:
    """The gain of ``y`` over ``x`` (the pixels' frame over their B), see LIGHT_BIN, and
    whether the pixels' grey levels showed it; when not (one grey level), the gain alone that
    moves their median. A measured one is not clamped below: under GAIN_MIN it says the pixels
    do not follow their grey levels."""
    bins = 256 // LIGHT_BIN
    x_levels = np.clip(x.astype(np.intp), 0, 255)
    k = x_levels // LIGHT_BIN
    # S − B rather than S in each bin: B's spread within the bin is taken out of it, so the
    # pixels an object covers move the bin's median by no more than the noise.
    d_levels = np.clip((y - x + 255.5).astype(np.intp), 0, 510)
    hist = np.bincount(k * 511 + d_levels, minlength=bins * 511).reshape(bins, 511)
    hist[[0, -1]] = 0  # B clipped at black or white
    count = hist.sum(axis=1)
    # The mean of B in each bin, from its whole levels (+ 0.5 for the fractions cut off).
    x_hist = np.bincount(x_levels, minlength=256).reshape(bins, LIGHT_BIN)
    sum_x = (x_hist * _LEVELS).sum(axis=1)
    total = int(count.sum())
    if total == 0:
        return 1.0, False
    present = np.flatnonzero(count >= max(LIGHT_BIN_SHARE * total, LIGHT_BIN_PX))
    n = count[present]
    mean_x = sum_x[present] / n + 0.5
    median_d = np.argmax(2 * hist[present].cumsum(axis=1) >= n[:, None], axis=1) - 255
    dx = mean_x[:, None] - mean_x[None, :]
    pairs = np.abs(dx) >= LIGHT_MIN_DX
    voters = pairs.any(axis=1)
    if not voters.any():  # one grey level: the gain alone that moves its median
        d = float(np.argmax(2 * hist.sum(axis=0).cumsum() >= total)) - 255.0
        mean = float(sum_x[count > 0].sum()) / total + 0.5
        return float(np.clip(1.0 + d / mean, GAIN_MIN, GAIN_MAX)), False
    slopes = 1.0 + (median_d[:, None] - median_d[None, :]) / np.where(pairs, dx, 1.0)
    weights = np.where(pairs, n[None, :], 0)
    votes = _weighted_medians(slopes[voters], weights[voters])
    median = _weighted_medians(votes[None, :], n[voters][None, :])[0]
    return float(min(median, GAIN_MAX)), True


def _weighted_medians(values: NDArray[np.float64], weights: NDArray[Any]) -> NDArray[np.float64]:
    """The weighted median of each row of ``values``: the lowest value at which the weights of
    the values up to it reach half the row's."""
    order = np.argsort(values, axis=1)
    cumulative = np.take_along_axis(weights, order, axis=1).cumsum(axis=1)
    at = np.argmax(2 * cumulative >= cumulative[:, -1:], axis=1)
    medians: NDArray[np.float64] = np.take_along_axis(values, order, axis=1)[np.arange(len(at)), at]
    return medians


def _in_light(image: FloatImage, gain: float, offset: float) -> FloatImage:
    """``image`` (in B's light) as it looks in the light of S, clipped as a camera would."""
    lit = image * np.float32(gain) + np.float32(offset)
    return np.clip(lit, 0.0, 255.0, out=lit)


def _on_clock(state: BackgroundState, t: float) -> BackgroundState:
    """The state moved to the clock of a frame at ``t``: one more than CLOCK_STEP_S before the
    last frame is taken as if it came right after it (as the worker carries a model across a
    clock reset), the model keeping its age. On the old clock the frame would precede the
    model's start, and the model would learn as in its first second."""
    back = state.t - t
    if back <= CLOCK_STEP_S:
        return state
    return replace(state, t=t, start_t=state.start_t - back)


def _tau(elapsed: float, params: BackgroundParams) -> float:
    """B's time constant ``elapsed`` seconds after the model began: the running mean's for
    the first bootstrap_s, then learn_s. A frame before the model's start (a clock gone back
    by small steps) does not make it a new model."""
    if 0.0 <= elapsed < params.bootstrap_s:
        return max(min(elapsed, params.learn_s), 1.0)
    return max(params.learn_s, 1.0)


def _max_step(gap: float, params: BackgroundParams) -> float:
    """The most time one frame may teach B, from the typical gap seen before this frame."""
    return max(params.max_step_s, params.gap_factor * gap)


def _typical_gap(gap: float, dt: float, params: BackgroundParams) -> float:
    """The typical gap after one of ``dt``: a clipped running mean, so it is robust to one
    silence. The first gap (often the one across a restart) counts as at most max_step_s."""
    if dt <= 0.0:
        return gap  # a repeated or earlier timestamp says nothing about the rate
    if gap <= 0.0:
        return min(dt, params.max_step_s)
    return gap + GAP_WEIGHT * (min(dt, GAP_OUTLIER * gap) - gap)


def _follow_clean(
    state: BackgroundState, background: FloatImage, changed: Mask, inside: Mask
) -> FloatImage:
    """Unchanged pixels look like the background; changed ones keep their clean look,
    moved by the lighting drift the unchanged ones saw in the meantime."""
    steady = inside & ~changed & ~state.changed
    drift = float(np.median((background - state.background)[steady])) if steady.any() else 0.0
    return np.where(changed, state.clean + drift, background).astype(np.float32)


def encode(state: BackgroundState) -> bytes:
    """The state as bytes (NumPy's npz), to survive a restart of the worker."""
    arrays: dict[str, Any] = {
        "background": state.background,
        "short": state.short,
        "times": np.asarray([state.t, state.start_t], dtype=np.float64),
        "known": state.known,
        "clean": state.clean,
        "changed": state.changed,
        "gap": np.float64(state.gap),  # keys of their own, which an older worker ignores
    }
    if state.polygon is not None:
        arrays["polygon"] = np.asarray(state.polygon, dtype=np.float64)
    if state.light is not None:
        arrays["light"] = np.asarray(state.light, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def decode(data: bytes) -> BackgroundState:
    """The state :func:`encode` wrote; ValueError when the bytes are not one."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            t, start_t = (float(v) for v in npz["times"])
            # Models saved before the typical gap was kept have none: it is learned anew.
            gap = float(npz["gap"]) if "gap" in npz.files else 0.0
            # Models saved before the zone was kept with them have none: taken back once, on
            # the old rule (the same crop shape).
            polygon = _polygon(npz["polygon"]) if "polygon" in npz.files else None
            # Models saved before the light was kept have none: (1, 0) is checked against.
            light = _light_of(npz["light"]) if "light" in npz.files else None
            state = BackgroundState(
                npz["background"].astype(np.float32),
                npz["short"].astype(np.float32),
                t,
                start_t,
                npz["known"].astype(bool),
                npz["clean"].astype(np.float32),
                npz["changed"].astype(bool),
                gap,
                polygon,
                light,
            )
    except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        raise ValueError(f"not a stored background model: {exc}") from exc
    shapes = {a.shape for a in (state.short, state.known, state.clean, state.changed)}
    if shapes != {state.background.shape}:
        raise ValueError("not a stored background model: its images differ in size")
    return state


def _light_of(values: NDArray[np.float64]) -> Light:
    if values.shape != (2,) or not np.isfinite(values).all():
        raise ValueError(f"a light of {values.tolist()}")
    gain, offset = values.tolist()
    return float(gain), float(offset)


def _polygon(points: NDArray[np.float64]) -> Polygon:
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"a zone polygon of shape {points.shape}")
    return tuple((float(x), float(y)) for x, y in points.tolist())


def measure(
    static: Mask,
    zone_mask: Mask,
    objects: Mask,
    origin: tuple[int, int],
    small_size: tuple[int, int],
) -> StaticForeground:
    """Fraction and normalized bbox of the static foreground not explained by detections.

    ``origin`` is the crop's top-left in the small frame, ``small_size`` its (width, height).
    """
    unexplained = static & ~objects
    zone_px = int(zone_mask.sum())
    fraction = float(unexplained.sum()) / zone_px if zone_px else 0.0
    bbox = None
    if unexplained.any():
        rows = np.flatnonzero(unexplained.any(axis=1))
        cols = np.flatnonzero(unexplained.any(axis=0))
        w, h = small_size
        ox, oy = origin
        bbox = (
            (ox + cols[0]) / w,
            (oy + rows[0]) / h,
            (ox + cols[-1] + 1) / w,
            (oy + rows[-1] + 1) / h,
        )
    return StaticForeground(fraction, bbox, unexplained, static)


def boxes_mask(
    xyxy_norm: NDArray[np.float32],
    origin: tuple[int, int],
    shape: tuple[int, int],
    small_size: tuple[int, int],
    grow: float = 0.1,
) -> Mask:
    """Pixels of a crop covered by normalized boxes, each grown by ``grow`` of its size.

    Growing covers shadows and the loose fit of detector boxes.
    """
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    sw, sh = small_size
    ox, oy = origin
    for x1, y1, x2, y2 in xyxy_norm.tolist():
        gx, gy = (x2 - x1) * grow, (y2 - y1) * grow
        c1 = max(math.floor((x1 - gx) * sw) - ox, 0)
        r1 = max(math.floor((y1 - gy) * sh) - oy, 0)
        c2 = min(math.ceil((x2 + gx) * sw) - ox, w)
        r2 = min(math.ceil((y2 + gy) * sh) - oy, h)
        if c2 > c1 and r2 > r1:
            out[r1:r2, c1:c2] = True
    return out
