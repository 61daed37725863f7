"""Evaluation and prediction of any model that maps {"frames", "num_frames"} to {"predictions", ...}: a teacher,
a student, or a converted student loaded back (students.convert.load_student)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from vidistill.distill.losses import cross_entropy
from vidistill.teachers.inference import predictions_of
from vidistill.yt8m.metrics import VideoMetrics
from vidistill.yt8m.errors import ConfigError
from vidistill.yt8m.readers import BadRecords, data_errors, read_frame_dataset


def _records(pattern: str, num_classes: int, max_frames: int, batch_size: int, bad_records, **options):
    """The labeled frame-level records in file order (`bad_records`: skip and count bad records)."""
    return read_frame_dataset(
        pattern,
        num_classes=num_classes,
        max_frames=max_frames,
        batch_size=batch_size,
        deterministic=True,
        bad_records=bad_records,
        **options,
    )


def predictions(
    model,
    pattern: str,
    *,
    num_classes: int,
    max_frames: int,
    batch_size: int = 64,
    max_videos: int = 0,
    bad_records: BadRecords | None = None,
    select=None,
) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """(ids, predictions [B, C], labels [B, C]) batch by batch, in file order (`bad_records`: skip and count
    bad records instead of stopping at the first; `select`: a student's frames, decoded alone, as
    `StudentConfig.frames_to_decode`)."""
    ds = _records(pattern, num_classes, max_frames, batch_size, bad_records, select=select)
    if max_videos:
        ds = ds.unbatch().take(max_videos).batch(batch_size)
    with data_errors():
        for batch in ds:
            scores = predictions_of(model, batch["frames"], batch["num_frames"]).numpy()
            yield [v.decode() for v in batch["id"].numpy()], scores, batch["labels"].numpy()


def evaluate_model(
    model,
    pattern: str,
    *,
    num_classes: int,
    max_frames: int,
    batch_size: int = 64,
    max_videos: int = 0,
    bad_records: BadRecords | None = None,
    select=None,
) -> dict:
    """Hit@1, PERR, GAP@20, mAP and the mean L_CE of a model over labeled frame-level records (`select`: as in
    `predictions`)."""
    metrics = VideoMetrics(num_classes)
    losses = []
    for _, scores, labels in predictions(
        model,
        pattern,
        num_classes=num_classes,
        max_frames=max_frames,
        batch_size=batch_size,
        max_videos=max_videos,
        bad_records=bad_records,
        select=select,
    ):
        metrics.accumulate(scores, labels)
        losses.append((float(cross_entropy(labels, scores)), len(labels)))  # the training loss, batch mean
    result = metrics.result()
    videos = sum(n for _, n in losses)
    result["loss"] = sum(loss * n for loss, n in losses) / videos if videos else 0.0
    return result


def _fit_frames(frames, num_frames, length: int):
    """Pads (or cuts) a batch of frame sequences to the model's input length; num_frames keeps the real count."""
    pad = tf.maximum(length - tf.shape(frames)[1], 0)
    frames = tf.pad(frames, [[0, 0], [0, pad], [0, 0]])[:, :length]
    return frames, tf.minimum(num_frames, length)


def rated_segment_predictions(
    model, pattern: str, *, num_classes: int, max_frames: int, batch_size: int = 64, bad_records=None
):
    """(segment ids "vid:start", predictions [S, C], labels [S, C], label_weights [S, C]) of the rated segments of
    2019-style records: each segment's 5 frames go through the model as a short video."""
    ds = _records(pattern, num_classes, max_frames, batch_size, bad_records, segment_labels=True)
    ids, scores, labels, weights = [], [], [], []
    with data_errors():
        for batch in ds:
            frames, counts = _fit_frames(batch["frames"], batch["num_frames"], max_frames)
            scores.append(predictions_of(model, frames, counts).numpy())
            ids += [f"{v.decode()}:{s}" for v, s in zip(batch["id"].numpy(), batch["segment_start"].numpy())]
            labels.append(batch["labels"].numpy())
            weights.append(batch["label_weights"].numpy())
    if not ids:
        raise ConfigError(f"no rated segment in {pattern!r}: segment evaluation needs 2019-style segment-rated data")
    return ids, np.concatenate(scores), np.concatenate(labels), np.concatenate(weights)


def evaluate_segments(
    model, pattern: str, *, num_classes: int, max_frames: int, batch_size: int = 64, bad_records=None
) -> dict:
    """The Kaggle 2019 segment MAP@100000 over the rated segments (only rated classes are ranked)."""
    from vidistill.yt8m.segment_metrics import segment_map

    ids, scores, labels, weights = rated_segment_predictions(
        model, pattern, num_classes=num_classes, max_frames=max_frames, batch_size=batch_size, bad_records=bad_records
    )
    truth: dict[int, dict[str, float]] = {}
    for row, col in zip(*np.nonzero(weights)):
        truth.setdefault(int(col), {})[ids[row]] = float(labels[row, col])
    order = {c: [ids[i] for i in np.argsort(-scores[:, c], kind="stable")] for c in truth}
    return segment_map(truth, order)


def all_segment_predictions(
    model, pattern: str, *, num_classes: int, max_frames: int, batch_size: int = 64, bad_records=None
):
    """(segment ids, predictions [S, C]) for every 5-frame chunk (starts 0, 5, 10, ...) of every video, as the
    official segment inference cuts them (the last partial chunk zero-padded)."""
    from vidistill.yt8m.constants import SEGMENT_FRAMES

    ds = _records(pattern, num_classes, max_frames, batch_size, bad_records)
    chunks = -(-max_frames // SEGMENT_FRAMES)
    ids, scores = [], []
    with data_errors():
        for batch in ds:
            frames = tf.pad(batch["frames"], [[0, 0], [0, chunks * SEGMENT_FRAMES - max_frames], [0, 0]])
            frames = tf.reshape(frames, [-1, SEGMENT_FRAMES, frames.shape[-1]])
            starts = np.arange(chunks) * SEGMENT_FRAMES
            real = np.clip(batch["num_frames"].numpy()[:, None] - starts[None, :], 0, SEGMENT_FRAMES).reshape(-1)
            keep = np.flatnonzero(real > 0)
            segment_frames, counts = _fit_frames(tf.gather(frames, keep), tf.constant(real[keep], tf.int32), max_frames)
            scores.append(predictions_of(model, segment_frames, counts).numpy())
            videos = [v.decode() for v in batch["id"].numpy()]
            ids += [f"{videos[i // chunks]}:{starts[i % chunks]}" for i in keep]
    return ids, np.concatenate(scores)
