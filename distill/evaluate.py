"""Evaluation and prediction of any model that maps {"frames", "num_frames"} to {"predictions", ...}: a teacher,
a student, or a converted student loaded back (students.convert.load_student)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from yt8m.metrics import VideoMetrics
from yt8m.readers import data_errors, read_frame_dataset


def _predictor(model):
    @tf.function(reduce_retracing=True)
    def predict(frames, num_frames):
        return model({"frames": frames, "num_frames": num_frames}, training=False)["predictions"]

    return lambda batch: predict(batch["frames"], batch["num_frames"])


def predictions(
    model, pattern: str, *, num_classes: int, max_frames: int, batch_size: int = 64, max_videos: int = 0
) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """(ids, predictions [B, C], labels [B, C]) batch by batch, in file order."""
    predict = _predictor(model)
    ds = read_frame_dataset(pattern, num_classes=num_classes, max_frames=max_frames, batch_size=batch_size,
                            deterministic=True)  # fmt: skip
    if max_videos:
        ds = ds.unbatch().take(max_videos).batch(batch_size)
    with data_errors():
        for batch in ds:
            scores = predict(batch).numpy()
            yield [v.decode() for v in batch["id"].numpy()], scores, batch["labels"].numpy()


def evaluate_model(
    model, pattern: str, *, num_classes: int, max_frames: int, batch_size: int = 64, max_videos: int = 0
) -> dict:
    """Hit@1, PERR, GAP@20, mAP and the mean L_CE of a model over labeled frame-level records."""
    metrics = VideoMetrics(num_classes)
    losses = []
    for _, scores, labels in predictions(
        model, pattern, num_classes=num_classes, max_frames=max_frames, batch_size=batch_size, max_videos=max_videos
    ):
        metrics.accumulate(scores, labels)
        p = np.clip(scores, 0.0, 1.0)
        losses.append(-(labels * np.log(p + 1e-5) + (1 - labels) * np.log(1 - p + 1e-5)).sum(1))
    result = metrics.result()
    result["loss"] = float(np.concatenate(losses).mean()) if losses else 0.0
    return result
