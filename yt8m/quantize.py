"""Feature quantization exactly as the official extractor and starter code do it.

quantize:   clip(x, -2, 2), then round((x + 2) * 255 / 4) to uint8 (round half to even, like Python's round).
dequantize: q * 4/255 + (4/512 - 2). Not the exact inverse: it adds half a bin, so a round trip is within
            one quantization step (4/255).
"""

from __future__ import annotations

import numpy as np

from vidistill.yt8m.constants import QUANT_MAX, QUANT_MIN

_RANGE = QUANT_MAX - QUANT_MIN
SCALE = _RANGE / 255.0
BIAS = _RANGE / 512.0 + QUANT_MIN
STEP = SCALE  # one quantization step


def quantize(features: np.ndarray) -> np.ndarray:
    """Float features -> uint8 codes (the official extractor's quantization)."""
    clipped = np.clip(np.asarray(features, dtype=np.float64), QUANT_MIN, QUANT_MAX)
    return np.round((clipped - QUANT_MIN) * (255.0 / _RANGE)).astype(np.uint8)


def dequantize(codes):
    """uint8 codes -> float32 features (numpy arrays or tf tensors)."""
    if isinstance(codes, np.ndarray):
        return (codes.astype(np.float32) * np.float32(SCALE) + np.float32(BIAS)).astype(np.float32)
    import tensorflow as tf

    return tf.cast(codes, tf.float32) * SCALE + BIAS
