"""The frame-selection policies at inference, in numpy: what an exported student's Predictor runs before ONNX Runtime.

Bit for bit the indices of `students.selection.selection_indices(..., training=False)` (tested against it for
every policy over many lengths), so that a deployment needs neither TensorFlow nor the whole video: only the k
selected frames have to be decoded and fed to the model.
"""

from __future__ import annotations

import numpy as np

from vidistill.students.policies import POLICIES, fml_block_sizes
from vidistill.yt8m.errors import ConfigError

_M32 = np.uint64(0xFFFFFFFF)


def _mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32, the same bijective 32-bit hash as the TF version (uint64 holding 32-bit values)."""
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & _M32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & _M32
    return x ^ (x >> np.uint64(16))


def _hash(step: np.ndarray, n: np.ndarray, w0: int, w1: int) -> np.ndarray:
    h = _mix32(step ^ np.uint64(0x9E3779B9))
    h = _mix32(h ^ ((n + np.uint64(0x85EBCA6B)) & _M32))
    h = _mix32(h ^ np.uint64(w0))
    return _mix32(h ^ (np.uint64(w1) ^ np.uint64(0xC2B2AE35)))


def _random_indices(n: np.ndarray, k: int, seed: int | None) -> np.ndarray:
    s = 0 if seed is None else int(seed) & 0xFFFFFFFFFFFFFFFF
    w0, w1 = s & 0xFFFFFFFF, s >> 32
    n64 = n.astype(np.uint64)[:, None]
    steps = np.arange(k, dtype=np.uint64)[None, :]
    h = _hash(steps, n64, w0, w1).astype(np.int64)  # [B, k]
    j = np.maximum(n.astype(np.int64), k)[:, None] - k + steps.astype(np.int64)
    t = h % (j + 1)
    chosen = np.full((len(n), k), -1, np.int64)
    for s_ in range(k):  # Floyd's algorithm, vectorized over the batch
        dup = (chosen == t[:, s_ : s_ + 1]).any(axis=1)
        chosen[:, s_] = np.where(dup, j[:, s_], t[:, s_])
    return np.sort(chosen, axis=1).astype(np.int32)


def selection_indices(num_frames, k: int, policy: str, *, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(indices [B, k] int32, counts [B] int32)` exactly as the TF op at inference (see students/selection.py)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be an int >= 1 (the number of frames to select), got k={k!r}")
    if policy not in POLICIES:
        raise ConfigError(f"unknown frame-selection policy {policy!r}; choose one of {', '.join(POLICIES)}")
    k = int(k)
    n = np.maximum(np.asarray(num_frames, np.int64).reshape(-1), 0)
    counts = np.minimum(n, k)
    i = np.arange(k, dtype=np.int64)[None, :]
    nc = n[:, None]
    if policy == "uniform":
        idx = (i * nc) // k
    elif policy == "first":
        idx = i + np.zeros_like(nc)
    elif policy == "last":
        idx = nc - k + i
    elif policy == "middle":
        idx = (nc - k) // 2 + i
    elif policy == "fml":
        s0, s1, s2 = fml_block_sizes(k)
        mid = np.clip((nc - s1) // 2, s0, np.maximum(nc - s2 - s1, s0))
        start = np.where(i < s0, 0, np.where(i < s0 + s1, mid, nc - s2))
        offset = np.where(i < s0, i, np.where(i < s0 + s1, i - s0, i - s0 - s1))
        idx = start + offset
    else:
        idx = _random_indices(n, k, seed).astype(np.int64)
    idx = np.where(nc < k, i + np.zeros_like(nc), idx)
    idx = np.where(i < counts[:, None], idx, 0)
    return idx.astype(np.int32), counts.astype(np.int32)


def select_frames(frames: np.ndarray, num_frames, k: int, policy: str, *, seed: int | None = None):
    """frames [B, T, D] -> (selected [B, k, D], counts [B]); num_frames clipped to [0, T]; rows past the count 0."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ConfigError(f"frames must be [batch, time, features], got shape {frames.shape}")
    n = np.clip(np.asarray(num_frames).reshape(-1), 0, frames.shape[1])
    idx, counts = selection_indices(n, k, policy, seed=seed)
    if frames.shape[1] == 0:
        return np.zeros((frames.shape[0], k, frames.shape[2]), frames.dtype), counts
    selected = np.take_along_axis(frames, idx[:, :, None], axis=1)
    selected[np.arange(k)[None, :] >= counts[:, None]] = 0
    return selected, counts
