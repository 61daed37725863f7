"""Scoring prediction CSVs against labeled records: how a user checks any model's output, ours or not."""

from __future__ import annotations

import numpy as np

from vidistill.yt8m.constants import NUM_CLASSES, SEGMENT_TOP_K, TOP_K
from vidistill.yt8m.errors import DataError
from vidistill.yt8m.metrics import VideoMetrics
from vidistill.yt8m.readers import read_ground_truth
from vidistill.yt8m.segment_metrics import segment_map
from vidistill.yt8m.submission import read_segment_predictions, read_video_predictions


def score_video_predictions(
    predictions_csv: str, data_pattern: str, *, num_classes: int = NUM_CLASSES, top_k: int = TOP_K
) -> dict:
    """Hit@1, PERR, GAP@top_k and mAP of a `VideoId,LabelConfidencePairs` CSV over every labeled video.

    A labeled video without a prediction line counts as predicting nothing (all scores 0); a prediction for a
    video that is not in the data is an error.
    """
    ids, scores = read_video_predictions(predictions_csv, num_classes=num_classes)
    truth = read_ground_truth(data_pattern, num_classes=num_classes)
    unknown = [video for video in ids if video not in truth.labels]
    if unknown:
        raise DataError(
            f"{predictions_csv}: {len(unknown)} prediction(s) for videos not in {data_pattern!r}, "
            f"first {unknown[0]!r}: score against the records the predictions were made for"
        )
    row = {video: i for i, video in enumerate(ids)}
    order = list(truth.labels)
    predicted = [i for i, video in enumerate(order) if video in row]
    dense = np.zeros((len(order), num_classes), np.float32)
    dense[predicted] = scores[[row[order[i]] for i in predicted]]
    metrics = VideoMetrics(num_classes, top_k=top_k)
    metrics.accumulate(dense, truth.label_matrix(order, num_classes))
    missing = len(order) - len(predicted)
    return {**metrics.result(), "videos_without_prediction": missing}


def score_segment_predictions(
    predictions_csv: str, data_pattern: str, *, num_classes: int = NUM_CLASSES, k: int = SEGMENT_TOP_K
) -> dict:
    """The Kaggle 2019 segment MAP@k of a `Class,Segments` CSV against segment-rated records."""
    truth = read_ground_truth(data_pattern, num_classes=num_classes)
    if not truth.segments:
        raise DataError(
            f"no record in {data_pattern!r} has segment ratings (segment_start_times / segment_labels / "
            "segment_scores): segment scoring needs 2019-style segment-rated data"
        )
    return segment_map(truth.segments, read_segment_predictions(predictions_csv), k=k)
