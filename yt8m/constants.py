"""Sizes fixed by the YouTube-8M format."""

RGB_SIZE = 1024
AUDIO_SIZE = 128
FEATURE_SIZE = RGB_SIZE + AUDIO_SIZE  # one frame as the models see it: rgb then audio
MAX_FRAMES = 300  # one frame per second, at most 300 seconds
NUM_CLASSES = 3862  # 2018 and 2019 vocabularies
SEGMENT_FRAMES = 5  # 2019 segment-rated data: 5-second segments
TOP_K = 20  # predictions per video in GAP@20 and the official CSV
SEGMENT_TOP_K = 100_000  # ids per class in the Kaggle 2019 segment metric

QUANT_MIN = -2.0
QUANT_MAX = 2.0
