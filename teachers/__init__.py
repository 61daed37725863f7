"""Teacher model families (tf_keras): layers, families, registry."""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tfmot needs Keras 2; must be set before TensorFlow is imported
