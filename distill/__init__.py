"""The teacher-student method: losses, trainer, checkpoints, eval and predict."""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tfmot needs Keras 2; must be set before TensorFlow is imported
