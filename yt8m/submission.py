"""CSV files of the official inference: video-level predictions and segment-level (Kaggle 2019) submissions.

Video level:   ``VideoId,LabelConfidencePairs`` then ``id,label score label score ...`` (top_k by score, ``%d %g``).
Segment level: ``Class,Segments`` then ``class,vid:start vid:start ...`` (descending score, at most top_k ids).
A class with no segment to list is written as ``class,`` (an empty list) so that every requested class has a line.
Ranking is stable: among equal scores the lower class index (video file) or earlier segment (segment file) comes
first. Writes are atomic: ``path + ".tmp"`` in the same directory, then ``os.replace``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from vidistill.yt8m.constants import NUM_CLASSES, SEGMENT_TOP_K, TOP_K
from vidistill.yt8m.errors import ConfigError, DataError
from vidistill.yt8m.files import atomic_write
from vidistill.yt8m.metrics import top_indices

VIDEO_HEADER = "VideoId,LabelConfidencePairs"
SEGMENT_HEADER = "Class,Segments"


def _atomic_write(path: str | os.PathLike, lines: Iterable[str]) -> None:
    with atomic_write(path, encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def _clean_id(raw: str | bytes, what: str) -> str:
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    if not text or "," in text or any(ch.isspace() for ch in text):
        raise ConfigError(f"{what} {text!r} must be non-empty without commas or whitespace")
    return text


def _data_lines(path: str | os.PathLike, header: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) of the non-blank lines after a checked header."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # tolerates a BOM
            lines = f.read().split("\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); write the file as UTF-8") from None
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: line 1: empty file, expected the header {header!r}")
    if lines[0].strip() != header:
        raise DataError(f"{path}: line 1: expected the header {header!r}, got {lines[0].strip()[:80]!r}")
    for number, line in enumerate(lines[1:], start=2):
        if line.strip():
            yield number, line.strip()


def write_video_predictions(
    path: str | os.PathLike, ids: Sequence[str | bytes], predictions: np.ndarray, top_k: int = TOP_K
) -> None:
    """Write each video's top_k (label, score) pairs, descending score, as the official inference does."""
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.shape[0] != len(ids):
        raise ConfigError(f"predictions must be [len(ids)={len(ids)}, classes], got shape {predictions.shape}")
    top = top_indices(predictions, top_k)
    scores = np.take_along_axis(predictions, top, axis=1).astype(np.float64)

    def lines() -> Iterator[str]:
        yield VIDEO_HEADER
        for raw, labels, values in zip(ids, top.tolist(), scores.tolist()):
            pairs = " ".join(f"{label:d} {value:g}" for label, value in zip(labels, values))
            yield f"{_clean_id(raw, 'video id')},{pairs}"

    _atomic_write(path, lines())


def read_video_predictions(path: str | os.PathLike, num_classes: int = NUM_CLASSES) -> tuple[list[str], np.ndarray]:
    """(ids in file order, float32 [N, num_classes] with the listed scores and 0 elsewhere)."""
    ids: list[str] = []
    rows: list[tuple[list[int], list[float]]] = []
    first_line: dict[str, int] = {}
    for number, line in _data_lines(path, VIDEO_HEADER):
        where = f"{path}: line {number}"
        video_id, comma, rest = line.partition(",")
        video_id = video_id.strip()
        if not comma or not video_id:
            raise DataError(f"{where}: expected 'id,label score label score ...', got {line[:80]!r}")
        if video_id in first_line:
            raise DataError(f"{where}: duplicate video id {video_id!r} (first on line {first_line[video_id]})")
        tokens = rest.split()
        if len(tokens) % 2:
            raise DataError(f"{where}: odd number of label/score tokens ({len(tokens)}); each label needs a score")
        labels: list[int] = []
        scores: list[float] = []
        for label_text, score_text in zip(tokens[::2], tokens[1::2]):
            try:
                label = int(label_text)
            except ValueError:
                raise DataError(f"{where}: label {label_text!r} is not an integer") from None
            try:
                score = float(score_text)
            except ValueError:
                raise DataError(f"{where}: score {score_text!r} for label {label} is not a number") from None
            if not 0 <= label < num_classes:
                raise DataError(f"{where}: label {label} out of range [0, {num_classes}); check num_classes")
            if label in labels:
                raise DataError(f"{where}: label {label} listed twice")
            labels.append(label)
            scores.append(score)
        first_line[video_id] = number
        ids.append(video_id)
        rows.append((labels, scores))
    matrix = np.zeros((len(ids), num_classes), dtype=np.float32)
    for row, (labels, scores) in enumerate(rows):
        matrix[row, labels] = scores
    return ids, matrix


def write_segment_predictions(
    path: str | os.PathLike,
    segment_ids: Sequence[str],
    predictions: np.ndarray,
    classes: Iterable[int] | None = None,
    top_k: int = SEGMENT_TOP_K,
) -> None:
    """Write one line per class (all 0..C-1, or `classes`): its top_k segment ids by descending score."""
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.shape[0] != len(segment_ids):
        raise ConfigError(
            f"predictions must be [len(segment_ids)={len(segment_ids)}, classes], got shape {predictions.shape}"
        )
    names = [_clean_id(s, "segment id") for s in segment_ids]
    if len(set(names)) != len(names):
        raise ConfigError("segment_ids contain duplicates")
    num_classes = predictions.shape[1]
    chosen = list(range(num_classes)) if classes is None else [int(c) for c in classes]
    for cls in chosen:
        if not 0 <= cls < num_classes:
            raise ConfigError(f"class {cls} out of range [0, {num_classes})")

    def lines() -> Iterator[str]:
        yield SEGMENT_HEADER
        for cls in chosen:
            order = top_indices(predictions[None, :, cls], top_k)[0]
            yield f"{cls}," + " ".join(names[i] for i in order)

    _atomic_write(path, lines())


def read_segment_predictions(path: str | os.PathLike) -> dict[int, list[str]]:
    """class id -> segment ids in file order; an empty list for a ``class,`` line."""
    out: dict[int, list[str]] = {}
    first_line: dict[int, int] = {}
    for number, line in _data_lines(path, SEGMENT_HEADER):
        where = f"{path}: line {number}"
        class_text, comma, rest = line.partition(",")
        if not comma:
            raise DataError(f"{where}: expected 'class,vid:start vid:start ...', got {line[:80]!r}")
        try:
            cls = int(class_text)
        except ValueError:
            raise DataError(f"{where}: class id {class_text.strip()!r} is not an integer") from None
        if cls < 0:
            raise DataError(f"{where}: class id {cls} is negative")
        if cls in out:
            raise DataError(f"{where}: duplicate line for class {cls} (first on line {first_line[cls]})")
        ids = rest.split()
        if any("," in s for s in ids):
            raise DataError(f"{where}: segment ids are separated by spaces, found a comma in {rest.strip()[:80]!r}")
        out[cls] = ids
        first_line[cls] = number
    return out
