"""Video-level metrics with the official YouTube-8M ``eval_util`` semantics (numpy only).

Hit@1, PERR, GAP@k and mAP@k, computed by one streaming accumulator (:class:`VideoMetrics`); the single-pass
functions are thin wrappers over it. A label counts as positive when it is > 0.

Determinism (the official code uses ``argpartition`` and so is not): within a video the top-k classes are taken in
descending score with the lower class index first among equal scores. The pooled GAP list is ordered by
(class, video) and then stable-sorted by descending score, i.e. entries are ranked by (-score, class, video); mAP
ranks each class's entries by (-score, video). Every entry keeps its global video index, so any split into batches
gives bit-for-bit the single-pass result. Memory is O(N * top_k) entries plus O(N + C) counters.
"""

from __future__ import annotations

import numpy as np

from vidistill.yt8m.constants import TOP_K
from vidistill.yt8m.errors import ConfigError


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """[B, min(k, C)] class indices of each row's k highest scores, descending; lower index first among ties."""
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)  # negating unsigned ints would wrap around
    n, c = scores.shape
    if np.isnan(scores).any():
        raise ConfigError("scores contain NaN; they cannot be ranked")
    k = min(k, c)
    if k <= 0 or n == 0:
        return np.zeros((n, max(k, 0)), dtype=np.int64)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]  # k-th largest score per row
    above = scores > kth[:, None]
    tied = scores == kth[:, None]
    room = k - above.sum(axis=1)  # how many of the tied scores still fit, lowest class indices first
    take = above | (tied & (np.cumsum(tied, axis=1) <= room[:, None]))
    cols = np.nonzero(take)[1].reshape(n, k)  # ascending class index within each row
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def _average_precision(hits: np.ndarray, num_positives: int | float) -> float:
    """sum over hits of (hits so far / rank), divided by num_positives; 0 if there are no positives."""
    if num_positives <= 0 or hits.size == 0:
        return 0.0
    ranks = np.arange(1, hits.size + 1, dtype=np.float64)
    return float(np.sum(np.cumsum(hits)[hits] / ranks[hits]) / num_positives)


class VideoMetrics:
    """Streaming Hit@1, PERR, GAP@top_k and mAP@top_k over batches of (predictions, labels)."""

    def __init__(self, num_classes: int, top_k: int = TOP_K) -> None:
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        self.num_classes = int(num_classes)
        self.top_k = min(int(top_k), self.num_classes)
        self.num_videos = 0
        self._hits = 0  # Hit@1 count (an exact integer)
        self._perr: list[np.ndarray] = []  # per-video precision at equal recall, in video order
        self._positives = np.zeros(self.num_classes, dtype=np.int64)  # all positives per class
        self._video: list[np.ndarray] = []  # top-k entries: global video index, class, score, label
        self._class: list[np.ndarray] = []
        self._score: list[np.ndarray] = []
        self._label: list[np.ndarray] = []

    def accumulate(self, predictions: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch: predictions [B, C] scores, labels [B, C] 0/1."""
        predictions = np.asarray(predictions)
        labels = np.asarray(labels)
        if predictions.ndim != 2 or labels.ndim != 2:
            raise ConfigError(
                f"predictions and labels must be 2-D [videos, classes], got shapes {predictions.shape} "
                f"and {labels.shape}"
            )
        if predictions.shape != labels.shape:
            raise ConfigError(f"predictions shape {predictions.shape} != labels shape {labels.shape}")
        if predictions.shape[1] != self.num_classes:
            raise ConfigError(f"expected {self.num_classes} classes (second dimension), got shape {predictions.shape}")
        scores = predictions.astype(np.float64)  # exact for float16/32; entries are stored in float64
        batch = scores.shape[0]
        if batch == 0:
            return
        positive = labels > 0
        per_video = positive.sum(axis=1)
        top = top_indices(scores, max(self.top_k, int(per_video.max())))
        rows = np.arange(batch)[:, None]

        self._hits += int(positive[rows[:, 0], top[:, 0]].sum())
        # PERR: positives with score > 0 among the first k_i classes, divided by k_i (0 for a label-free video).
        good = np.cumsum(positive[rows, top] & (scores[rows, top] > 0), axis=1)
        k_i = np.maximum(per_video, 1)
        self._perr.append(np.where(per_video > 0, good[rows[:, 0], k_i - 1] / k_i, 0.0))

        self._positives += positive.sum(axis=0)
        cols = top[:, : self.top_k]
        self._video.append(np.repeat(np.arange(self.num_videos, self.num_videos + batch), cols.shape[1]))
        self._class.append(cols.ravel())
        self._score.append(scores[rows, cols].ravel())
        self._label.append(positive[rows, cols].ravel())
        self.num_videos += batch

    def result(self) -> dict:
        """{"hit_at_one", "perr", "gap", "map", "num_videos"}; all metrics 0.0 before any video."""
        if self.num_videos == 0:
            return {"hit_at_one": 0.0, "perr": 0.0, "gap": 0.0, "map": 0.0, "num_videos": 0}
        video = np.concatenate(self._video)
        cls = np.concatenate(self._class)
        neg_score = -np.concatenate(self._score)
        label = np.concatenate(self._label)

        gap = _average_precision(label[np.lexsort((video, cls, neg_score))], int(self._positives.sum()))

        order = np.lexsort((video, neg_score, cls))  # by class, then score descending, then video
        cls, label = cls[order], label[order]
        first = np.searchsorted(cls, cls, side="left")  # start of each entry's class block
        rank = np.arange(1, cls.size + 1) - first
        cum = np.cumsum(label)
        hits_so_far = cum - (cum[first] - label[first])
        sums = np.bincount(cls[label], weights=hits_so_far[label] / rank[label], minlength=self.num_classes)
        scored = self._positives > 0
        mean_ap = float(np.mean(sums[scored] / self._positives[scored])) if scored.any() else 0.0

        return {
            "hit_at_one": self._hits / self.num_videos,
            "perr": float(np.mean(np.concatenate(self._perr))),
            "gap": gap,
            "map": mean_ap,
            "num_videos": self.num_videos,
        }


def _one_pass(predictions: np.ndarray, labels: np.ndarray, top_k: int = TOP_K) -> dict:
    predictions = np.asarray(predictions)
    if predictions.ndim != 2:
        raise ConfigError(f"predictions must be 2-D [videos, classes], got shape {predictions.shape}")
    metrics = VideoMetrics(predictions.shape[1], top_k)
    metrics.accumulate(predictions, labels)
    return metrics.result()


def hit_at_one(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean over videos of label[argmax(prediction)]."""
    return _one_pass(predictions, labels)["hit_at_one"]


def perr(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Precision at equal recall rate, averaged over all videos (label-free videos count 0)."""
    return _one_pass(predictions, labels)["perr"]


def gap(predictions: np.ndarray, labels: np.ndarray, top_k: int = TOP_K) -> float:
    """Global average precision over every video's top_k predictions, divided by all positives."""
    return _one_pass(predictions, labels, top_k)["gap"]


def mean_average_precision(predictions: np.ndarray, labels: np.ndarray, top_k: int = TOP_K) -> float:
    """Mean over classes with positives of the per-class AP of the top_k-per-video entries."""
    return _one_pass(predictions, labels, top_k)["map"]
