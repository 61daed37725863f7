"""A closed-form linear probe on mean features: a GAP floor that shows a dataset is learnable.

Ridge regression of the multi-hot labels on the video's mean frame features (exactly what a video-level record
holds), standardized with the training statistics; scores are squashed into (0, 1) by a monotone logistic so
that the official CSV and PERR (which counts only scores > 0) behave. No training loop, no randomness: one
solve of a (1152 + 1)-square system.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidistill.yt8m.constants import FEATURE_SIZE, NUM_CLASSES


def mean_features(pattern: str, *, num_classes: int = NUM_CLASSES, batch_size: int = 64, bad_records=None):
    """(ids, mean features [N, 1152], labels [N, C]) of frame-level or video-level records.

    `bad_records` (a readers.BadRecords) skips and counts bad records instead of raising."""
    import tensorflow as tf

    from vidistill.yt8m.readers import data_errors, detect_format, read_frame_dataset, read_video_level_dataset

    if detect_format(pattern) == "video":
        reader = read_video_level_dataset
    else:
        reader = read_frame_dataset
    ds = reader(pattern, num_classes=num_classes, batch_size=batch_size, deterministic=True, bad_records=bad_records)

    def summarize(batch):
        if "features" in batch:
            return batch["id"], batch["features"], batch["labels"]
        count = tf.cast(batch["num_frames"], tf.float32)[:, None]
        return batch["id"], tf.reduce_sum(batch["frames"], axis=1) / count, batch["labels"]

    with data_errors():
        batches = [[t.numpy() for t in batch] for batch in ds.map(summarize)]
    ids = [v.decode() for batch in batches for v in batch[0]]
    features = [batch[1] for batch in batches]
    labels = [batch[2] for batch in batches]
    return ids, np.concatenate(features), np.concatenate(labels)


@dataclass
class LinearProbe:
    mean: np.ndarray  # [1152]
    scale: np.ndarray  # [1152]
    weights: np.ndarray  # [1153, C]

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, l2: float = 0.5) -> LinearProbe:
        """`l2`: ridge penalty per training video (on standardized features)."""
        mean = features.mean(0)
        scale = features.std(0) + 1e-6
        x = np.hstack([(features - mean) / scale, np.ones((len(features), 1), features.dtype)]).astype(np.float64)
        penalty = l2 * len(features)
        gram = x.T @ x + penalty * np.eye(FEATURE_SIZE + 1)
        gram[-1, -1] -= penalty  # the bias is not penalized
        return cls(mean, scale, np.linalg.solve(gram, x.T @ labels.astype(np.float64)))

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = (features - self.mean) / self.scale
        raw = x @ self.weights[:-1] + self.weights[-1]
        return (1.0 / (1.0 + np.exp(-8.0 * (raw - 0.5)))).astype(np.float32)
