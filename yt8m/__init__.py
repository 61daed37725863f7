"""YouTube-8M data: the record format both ways, synthetic data, official metrics and output files."""

from vidistill.yt8m.constants import (
    AUDIO_SIZE,
    FEATURE_SIZE,
    MAX_FRAMES,
    NUM_CLASSES,
    RGB_SIZE,
    SEGMENT_FRAMES,
    TOP_K,
)
from vidistill.yt8m.errors import ConfigError, DataError, UserError
from vidistill.yt8m.quantize import dequantize, quantize

__all__ = [
    "AUDIO_SIZE",
    "FEATURE_SIZE",
    "MAX_FRAMES",
    "NUM_CLASSES",
    "RGB_SIZE",
    "SEGMENT_FRAMES",
    "TOP_K",
    "ConfigError",
    "DataError",
    "UserError",
    "dequantize",
    "quantize",
]
