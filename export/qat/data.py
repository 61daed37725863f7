"""The batches int8-qat fine-tuning trains on: the exported file's own inputs, made the way they are made at
inference, so that the QAT model is trained on exactly the frames the exported student is later fed."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from vidistill.export.predictor import prepare_inputs, record_batches
from vidistill.yt8m.constants import FEATURE_SIZE


def finetune_dataset(pattern: str, source, batch_size: int, *, bad_records=None) -> tf.data.Dataset:
    """Labeled frame-level records -> batches of ({"frames" [B, frames, 1152], "num_frames" [B]}, labels [B, C]
    float32), one pass in file order (`qat_finetune` repeats it). `source`: the ExportSource being exported.

    Each batch of whole videos (`record_batches`, as the export's parity checks read them) becomes the file's
    inputs through `prepare_inputs`, the function the Predictor feeds the exported file with: a student's k
    frames chosen by its policy and seed (inference mode), a teacher's frames padded or cut to its length."""

    def generator():
        for frames, num_frames, labels in record_batches(pattern, source, batch_size, bad_records=bad_records):
            inputs = prepare_inputs(source, frames, num_frames)
            yield {"frames": inputs["frames"], "num_frames": inputs["num_frames"]}, labels.astype(np.float32)

    spec = (
        {
            "frames": tf.TensorSpec([None, source.frames, FEATURE_SIZE], tf.float32),
            "num_frames": tf.TensorSpec([None], tf.int32),
        },
        tf.TensorSpec([None, source.classes], tf.float32),
    )
    return tf.data.Dataset.from_generator(generator, output_signature=spec)
