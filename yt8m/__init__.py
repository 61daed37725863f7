"""YouTube-8M data: the record format both ways, synthetic data, official metrics and output files."""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tfmot needs Keras 2; must be set before TensorFlow is imported

from vidistill.yt8m.constants import (  # noqa: E402
    AUDIO_SIZE,
    FEATURE_SIZE,
    MAX_FRAMES,
    NUM_CLASSES,
    RGB_SIZE,
    SEGMENT_FRAMES,
    TOP_K,
)
from vidistill.yt8m.errors import DataError  # noqa: E402
from vidistill.yt8m.quantize import dequantize, quantize  # noqa: E402

__all__ = [
    "AUDIO_SIZE",
    "FEATURE_SIZE",
    "MAX_FRAMES",
    "NUM_CLASSES",
    "RGB_SIZE",
    "SEGMENT_FRAMES",
    "TOP_K",
    "DataError",
    "dequantize",
    "quantize",
]
