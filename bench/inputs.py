"""Benchmark inputs: a few pre-made random input sets per batch size, real-shaped and real-valued.

frames:     [B, T, F] float32 like dequantized YouTube-8M features: uniform random uint8 codes through the official
            dequantization, so values lie on the 256 quantization levels in [-2, 2] (never zeros).
num_frames: [B] int32, all equal to T: every video is full length (T = card.frames: k for a student, whose frame
            selection happens before the ONNX file; the teacher's max frames for a teacher).

Several sets are made (rotated between runs, so no run sees the buffer the previous run saw); their number shrinks
(to 2 at least) when they would take more than `max_bytes` together.
"""

from __future__ import annotations

import numpy as np

from vidistill.yt8m.constants import FEATURE_SIZE
from vidistill.yt8m.quantize import dequantize
from vidistill.yt8m.errors import ConfigError

DEFAULT_SETS = 4
MAX_BYTES = 2 << 30  # all sets of one batch size together


def input_names(card) -> tuple[str, str]:
    """(frames input, num_frames input) from the card: the float rank-3 tensor and the int rank-1 tensor."""
    frames = [t.name for t in card.inputs if t.dtype.startswith("float") and len(t.shape) == 3]
    counts = [t.name for t in card.inputs if t.dtype.startswith("int") and len(t.shape) == 1]
    if len(frames) != 1 or len(counts) != 1 or len(card.inputs) != 2:
        names = [f"{t.name} {t.dtype} {t.shape}" for t in card.inputs]
        raise ConfigError(f"model card inputs {names}: expected frames [B, T, F] float and num_frames [B] int")
    return frames[0], counts[0]


def feature_size(card) -> int:
    return int(sum(card.feature_sizes.values())) if card.feature_sizes else FEATURE_SIZE


def set_count(batch: int, frames: int, features: int, wanted: int = DEFAULT_SETS, max_bytes: int = MAX_BYTES) -> int:
    per_set = batch * frames * features * 4
    return max(2, min(wanted, max_bytes // max(per_set, 1)))


def make_input_sets(
    batch: int,
    frames: int,
    *,
    names: tuple[str, str] = ("frames", "num_frames"),
    features: int = FEATURE_SIZE,
    sets: int = DEFAULT_SETS,
    seed: int = 0,
    max_bytes: int = MAX_BYTES,
) -> list[dict[str, np.ndarray]]:
    """`sets` distinct input dicts (fewer if they would exceed max_bytes); deterministic in (seed, batch, frames)."""
    if batch < 1 or frames < 1:
        raise ConfigError(f"batch ({batch}) and frames ({frames}) must be positive")
    rng = np.random.default_rng([seed, batch, frames])
    out = []
    for _ in range(set_count(batch, frames, features, sets, max_bytes)):
        codes = rng.integers(0, 256, size=(batch, frames, features), dtype=np.uint8)
        out.append({names[0]: dequantize(codes), names[1]: np.full([batch], frames, dtype=np.int32)})
    return out


def inputs_for_card(card, batch: int, *, frames: int | None = None, sets: int = DEFAULT_SETS, seed: int = 0):
    """The input sets of a model card at one batch size (T = card.frames unless `frames` is given)."""
    return make_input_sets(
        batch, frames or card.frames, names=input_names(card), features=feature_size(card), sets=sets, seed=seed
    )
