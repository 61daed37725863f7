"""Predict with a run or a converted student and write the official video-level CSV
(VideoId,LabelConfidencePairs, top 20); `vidistill score` of that CSV agrees with `vidistill eval`."""

from __future__ import annotations

HELP = "write the official video-level predictions CSV"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="run directory or converted student directory")
    parser.add_argument("--data", required=True, help="frame-level records (glob)")
    parser.add_argument("--out", required=True, help="CSV to write")
    parser.add_argument("--which", choices=["auto", "student", "teacher"], default="auto")
    parser.add_argument("--batch-size", type=int, default=64)


def run(args) -> int:
    import numpy as np

    from distill.evaluate import predictions
    from distill.runs import load_model
    from yt8m.submission import write_video_predictions

    loaded = load_model(args.model, args.which)
    ids, scores = [], []
    for batch_ids, batch_scores, _ in predictions(
        loaded.model, args.data, num_classes=loaded.num_classes, max_frames=loaded.max_frames,
        batch_size=args.batch_size,
    ):  # fmt: skip
        ids.extend(batch_ids)
        scores.append(batch_scores)
    write_video_predictions(args.out, ids, np.concatenate(scores))
    print(f"wrote predictions for {len(ids)} videos to {args.out}")
    return 0
