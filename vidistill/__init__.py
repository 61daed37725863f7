"""vidistill: teacher-student distillation, quantization, export and benchmarks for few-frame video classifiers."""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tfmot needs Keras 2; must be set before TensorFlow is imported

__version__ = "0.1.0"
