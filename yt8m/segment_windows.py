"""Shifted 5-frame windows of a video, for segment prediction with shift test-time augmentation.

The window of the segment starting at frame `start`, shifted by `s`, covers frames [start + s, start + s + 5),
CLIPPED to the video's real frames [0, num_frames): it keeps only the frames inside, first and in order, and its
count says how many they are; the rows after them are padding (zero), which the models mask. So near the video's
start or end a shifted window holds fewer real frames (the 2019 seed solution used np.roll instead, which wraps
frames of the other end of the video around into the window). Shift 0 is the segment itself, bit for bit the
reader's segment mode. |s| < 5: a larger shift would leave the segment entirely. A window may hold no real frame
(a segment in the last frames shifted past the video's end): it is left out of the segment's average
(`average_windows`; shifts <= 0 always hold one, so only a list of positive shifts alone can leave a segment
with none, which then scores 0).
"""

from __future__ import annotations

import numpy as np

from vidistill.yt8m.constants import SEGMENT_FRAMES
from vidistill.yt8m.errors import ConfigError


def check_shifts(shifts, option: str = "--shift") -> tuple[int, ...]:
    """`shifts` as a tuple of distinct ints with |s| < 5; ConfigError naming `option` otherwise."""
    shifts = tuple(shifts)
    if not shifts:
        raise ConfigError(f"{option}: give at least one shift (0 is the segment itself)")
    for s in shifts:
        if isinstance(s, bool) or not isinstance(s, int | np.integer):
            raise ConfigError(f"{option}: shifts are whole numbers of frames, got {s!r}")
        if abs(s) >= SEGMENT_FRAMES:
            raise ConfigError(
                f"{option}: shift {s} moves the window off its {SEGMENT_FRAMES}-frame segment entirely; "
                f"use shifts between -{SEGMENT_FRAMES - 1} and {SEGMENT_FRAMES - 1}"
            )
    repeated = sorted({s for s in shifts if shifts.count(s) > 1})
    if repeated:
        raise ConfigError(f"{option}: shift {repeated[0]} is given twice; list each shift once")
    return tuple(int(s) for s in shifts)


def parse_shifts(text: str, option: str = "--shift") -> tuple[int, ...]:
    """ "-1,0,1" -> (-1, 0, 1), checked by `check_shifts`."""
    values = []
    for part in text.split(","):
        try:
            values.append(int(part.strip()))
        except ValueError:
            raise ConfigError(
                f"{option}: {part.strip()!r} is not a whole number of frames (write e.g. {option} -1,0,1)"
            ) from None
    return check_shifts(values, option)


def window_rows(starts, num_frames, shifts: tuple[int, ...], length):
    """(rows [N, S, 5], counts [N, S]) of the windows of segments starting at `starts` [N] in videos of
    `num_frames` [N] (or a scalar) real frames, stored in `length` rows: window (n, i) takes the rows
    rows[n, i, :counts[n, i]] (clipped to the real frames; rows past the count are kept inside [0, length))."""
    import tensorflow as tf

    first = tf.cast(starts, tf.int32)[:, None] + tf.constant(shifts, tf.int32)[None, :]  # [N, S], may be < 0
    begin = tf.maximum(first, 0)
    real = tf.cast(num_frames, tf.int32)
    real = real[:, None] if real.shape.rank == 1 else real
    counts = tf.clip_by_value(tf.minimum(real, first + SEGMENT_FRAMES) - begin, 0, SEGMENT_FRAMES)
    rows = tf.minimum(begin[..., None] + tf.range(SEGMENT_FRAMES), tf.cast(length, tf.int32) - 1)
    return rows, counts


def cut_windows(frames, rows, counts):
    """frames [T, D] (uint8 codes or floats) -> windows [N, S, 5, D]: the rows `window_rows` chose, zero past each
    window's count."""
    import tensorflow as tf

    real = tf.range(SEGMENT_FRAMES) < counts[..., None]
    return tf.where(real[..., None], tf.gather(frames, rows), tf.zeros([], frames.dtype))


def average_windows(scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """scores [N, S, C] of each segment's windows, counts [N, S] -> [N, C]: the mean over the windows that hold a
    real frame, summed in shift order, in float32 (one window: its scores unchanged)."""
    held = counts > 0
    total = np.zeros(scores.shape[::2], np.float32)
    for i in range(scores.shape[1]):
        total = total + np.where(held[:, i, None], scores[:, i], np.float32(0))
    windows = np.maximum(held.sum(axis=1, keepdims=True), 1).astype(np.float32)
    return (total / windows).astype(np.float32)
