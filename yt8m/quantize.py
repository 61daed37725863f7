"""Feature quantization exactly as the official extractor and starter code do it.

quantize:   clip(x, -2, 2), then round((x + 2) * 255 / 4) to uint8 (round half to even, like Python's round).
dequantize: q * 4/255 + (4/512 - 2). Not the exact inverse: it adds half a bin, so a round trip is within
            one quantization step (4/255).
"""

from __future__ import annotations

import functools

import numpy as np

from vidistill.yt8m.constants import QUANT_MAX, QUANT_MIN

_RANGE = QUANT_MAX - QUANT_MIN
SCALE = _RANGE / 255.0
BIAS = _RANGE / 512.0 + QUANT_MIN
STEP = SCALE  # one quantization step


def quantize(features: np.ndarray) -> np.ndarray:
    """Float features -> uint8 codes (the official extractor's quantization).

    In float64, in place in one buffer (a fresh array per step cost a page fault per 4 KiB: a third of the synthetic
    generator's time); the same float64 steps as the extractor's, so the same codes."""
    scaled = np.array(features, dtype=np.float64)  # a copy, never the caller's array
    np.clip(scaled, QUANT_MIN, QUANT_MAX, out=scaled)
    scaled -= QUANT_MIN
    scaled *= 255.0 / _RANGE
    return np.rint(scaled, out=scaled).astype(np.uint8)


def dequantize(codes):
    """uint8 codes -> float32 features (numpy arrays or tf tensors)."""
    if isinstance(codes, np.ndarray):
        return (codes.astype(np.float32) * np.float32(SCALE) + np.float32(BIAS)).astype(np.float32)
    import tensorflow as tf

    return tf.cast(codes, tf.float32) * SCALE + BIAS


def dequantize_frames(codes, num_frames):
    """Batched uint8 codes [B, T, D] -> float32 features, rows at or past num_frames[b] exactly 0.0 (tf tensors).

    Bit for bit `dequantize`, in one pass over the batch where TensorFlow's Dequantize op agrees with it on all 256
    codes on this machine (checked once per process), else with the arithmetic of `dequantize`.
    """
    import tensorflow as tf

    values = _dequantize_op(codes) if _dequantize_op_is_exact() else dequantize(codes)
    real = tf.range(tf.shape(codes)[1])[None, :, None] < tf.cast(num_frames, tf.int32)[:, None, None]
    return tf.where(real, values, tf.zeros([], tf.float32))


def _dequantize_op(codes):
    import tensorflow as tf

    quint8 = tf.bitcast(codes, tf.quint8)  # MIN_COMBINED on quint8: min + q * (max - min) / 255
    return tf.raw_ops.Dequantize(input=quint8, min_range=BIAS, max_range=BIAS + _RANGE, mode="MIN_COMBINED")


@functools.cache
def _dequantize_op_is_exact() -> bool:
    import tensorflow as tf

    codes = np.arange(256, dtype=np.uint8)
    with tf.init_scope():
        fast = _dequantize_op(tf.constant(codes)).numpy()
    return bool(np.array_equal(fast.view(np.uint32), dequantize(codes).view(np.uint32)))
