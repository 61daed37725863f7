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
from vidistill.yt8m.constants import SEGMENT_FRAMES
from vidistill.yt8m.readers import BadRecords, data_errors, read_frame_dataset
from vidistill.yt8m.segment_windows import average_windows, check_shifts, cut_windows, window_rows


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


def model_frames(model) -> int | None:
    """The input length T of `model`'s "frames" [B, T, 1152], or None for a model that takes any length (a
    student, which selects its k frames from whatever it is given)."""
    inputs = model.input
    return (inputs["frames"] if isinstance(inputs, dict) else inputs[0]).shape[1]


def fit_frames(frames, num_frames, length: int | None):
    """Pads (or cuts) a batch of frame sequences to the model's input length (None: as they are); num_frames
    keeps the real count."""
    if length is None:
        return frames, num_frames
    pad = tf.maximum(length - tf.shape(frames)[1], 0)
    frames = tf.pad(frames, [[0, 0], [0, pad], [0, 0]])[:, :length]
    return frames, tf.minimum(num_frames, length)


def window_scores(model, windows, counts) -> np.ndarray:
    """Each segment's score [N, C]: the model's predictions of its windows [N, S, 5, 1152] (real frames
    `counts` [N, S]), fed at the model's own input length, averaged over the windows that hold a real frame
    (yt8m/segment_windows.py)."""
    n, shifts = windows.shape[0], windows.shape[1]
    frames = tf.reshape(windows, [-1, *windows.shape[2:]])
    frames, real = fit_frames(frames, tf.reshape(counts, [-1]), model_frames(model))
    scores = predictions_of(model, frames, real).numpy()
    return average_windows(scores.reshape(n, shifts, -1), np.asarray(counts).reshape(n, shifts))


def rated_segment_predictions(
    model,
    pattern: str,
    *,
    num_classes: int,
    max_frames: int,
    batch_size: int = 64,
    bad_records=None,
    shifts: tuple[int, ...] = (0,),
):
    """(segment ids "vid:start", predictions [S, C], labels [S, C], label_weights [S, C]) of the rated segments of
    2019-style records (videos read at `max_frames`): each segment's 5 frames go through the model as a short
    video; with `shifts` (test-time augmentation) its score is the mean over its windows shifted by each shift,
    clipped to the video's frames (yt8m/segment_windows.py)."""
    shifts = check_shifts(shifts)
    ds = _records(pattern, num_classes, max_frames, batch_size, bad_records, segment_labels=True, segment_shifts=shifts)
    ids, scores, labels, weights = [], [], [], []
    with data_errors():
        for batch in ds:
            scores.append(window_scores(model, batch["frames"], batch["num_frames"]))
            ids += [f"{v.decode()}:{s}" for v, s in zip(batch["id"].numpy(), batch["segment_start"].numpy())]
            labels.append(batch["labels"].numpy())
            weights.append(batch["label_weights"].numpy())
    if not ids:
        raise ConfigError(f"no rated segment in {pattern!r}: segment evaluation needs 2019-style segment-rated data")
    return ids, np.concatenate(scores), np.concatenate(labels), np.concatenate(weights)


def evaluate_segments(
    model,
    pattern: str,
    *,
    num_classes: int,
    max_frames: int,
    batch_size: int = 64,
    bad_records=None,
    shifts: tuple[int, ...] = (0,),
) -> dict:
    """The Kaggle 2019 segment MAP@100000 over the rated segments (only rated classes are ranked); `shifts`: as
    in `rated_segment_predictions`."""
    from vidistill.yt8m.segment_metrics import segment_map

    ids, scores, labels, weights = rated_segment_predictions(
        model,
        pattern,
        num_classes=num_classes,
        max_frames=max_frames,
        batch_size=batch_size,
        bad_records=bad_records,
        shifts=shifts,
    )
    truth: dict[int, dict[str, float]] = {}
    for row, col in zip(*np.nonzero(weights)):
        truth.setdefault(int(col), {})[ids[row]] = float(labels[row, col])
    order = {c: [ids[i] for i in np.argsort(-scores[:, c], kind="stable")] for c in truth}
    return segment_map(truth, order)


def all_segment_predictions(
    model,
    pattern: str,
    *,
    num_classes: int,
    max_frames: int,
    batch_size: int = 64,
    bad_records=None,
    shifts: tuple[int, ...] = (0,),
):
    """(segment ids, predictions [S, C]) for every 5-frame chunk (starts 0, 5, 10, ...) of every video, as the
    official segment inference cuts them (the last partial chunk zero-padded); `shifts`: each chunk's windows as
    in `rated_segment_predictions`, so that a rated segment gets the same score in both."""
    shifts = check_shifts(shifts)
    ds = _records(pattern, num_classes, max_frames, batch_size, bad_records)
    starts = np.arange(0, max_frames, SEGMENT_FRAMES)
    ids, scores = [], []
    with data_errors():
        for batch in ds:
            frames, num_frames = batch["frames"], batch["num_frames"].numpy()
            video, chunk = np.nonzero(starts[None, :] < num_frames[:, None])  # chunks with a real frame
            length = frames.shape[1]
            rows, counts = window_rows(starts[chunk], num_frames[video], shifts, length)
            rows += tf.constant(video[:, None, None] * length, tf.int32)  # into the batch's frames, flattened
            windows = cut_windows(tf.reshape(frames, [-1, frames.shape[-1]]), rows, counts)
            for first in range(0, len(video), batch_size):
                part = slice(first, first + batch_size)
                scores.append(window_scores(model, windows[part], counts[part]))
            names = [v.decode() for v in batch["id"].numpy()]
            ids += [f"{names[v]}:{starts[c]}" for v, c in zip(video, chunk)]
    return ids, np.concatenate(scores)
