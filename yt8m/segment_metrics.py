"""Segment-level metric of the Kaggle 2019 YouTube-8M challenge: MAP@K (K = 100,000), pure Python.

Per class of the submission: cut its list to the first k ids, drop repeated ids (the first occurrence counts) and
ids not rated for that class, then AP = sum over positives (score > 0) of (positives so far / rank among the kept
ids), divided by the class's total number of rated positives. The result is the mean AP over the submitted classes
that have at least one rated positive; the others are skipped and counted.

Bugs of the official evaluation script that are avoided here:

1. It read segment ids as bytes, which never equal the str ids of the ground truth under Python 3, so every AP
   was 0. Here ids are str everywhere; a non-str id raises TypeError.
2. It parsed the ``Class,Segments`` header line as data and crashed. The file readers in :mod:`yt8m.submission`
   check and skip the header; this function takes already-parsed dicts.
3. A submitted class with no positives in the ground truth raised KeyError. Here it is skipped and counted in
   ``num_classes_skipped``.
4. The last id of every line kept its trailing newline, never matched and was silently dropped. The readers split
   on whitespace, so the last id counts like the others.
"""

from __future__ import annotations

import math

from collections.abc import Iterable, Mapping

from vidistill.yt8m.constants import SEGMENT_TOP_K
from vidistill.yt8m.errors import ConfigError


def _check_id(segment_id: object, where: str) -> None:
    if not isinstance(segment_id, str):
        raise TypeError(f"segment ids must be str like 'vid:start', got {segment_id!r} ({where})")


def segment_average_precision(ids: Iterable[str], rated: Mapping[str, float], k: int = SEGMENT_TOP_K) -> float:
    """AP of one class's ranked ids against its rated {segment id: score}; 0.0 if it has no positives."""
    num_positives = sum(1 for score in rated.values() if score > 0)
    if num_positives == 0:
        return 0.0
    seen: set[str] = set()
    rank = positives = 0
    total = 0.0
    for position, segment_id in enumerate(ids):
        if position >= k:
            break
        _check_id(segment_id, "submission")
        if segment_id in seen or segment_id not in rated:
            continue
        seen.add(segment_id)
        rank += 1
        if rated[segment_id] > 0:
            positives += 1
            total += positives / rank
    return total / num_positives


def segment_map(
    ground_truth: Mapping[int, Mapping[str, float]],
    submission: Mapping[int, Iterable[str]],
    k: int = SEGMENT_TOP_K,
) -> dict:
    """MAP@k: {"map", "num_classes_scored", "num_classes_skipped"} (map 0.0 when no class is scored).

    ground_truth: class id -> {"vid:start": score}; submission: class id -> ids in descending confidence.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    aps: list[float] = []
    skipped = 0
    for cls, ids in submission.items():
        rated = ground_truth.get(cls, {})
        for segment_id in rated:
            _check_id(segment_id, f"ground truth of class {cls}")
        if not any(score > 0 for score in rated.values()):
            skipped += 1
            continue
        aps.append(segment_average_precision(ids, rated, k))
    return {
        # fsum: exactly rounded, so the classes' order (eval's, or a CSV's) cannot change the last bit
        "map": math.fsum(aps) / len(aps) if aps else 0.0,
        "num_classes_scored": len(aps),
        "num_classes_skipped": skipped,
    }
