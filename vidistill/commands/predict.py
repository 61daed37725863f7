"""Predict with a run or a converted student and write the official video-level CSV
(VideoId,LabelConfidencePairs, top 20), or with --segments the Kaggle 2019 segment CSV (Class,Segments: every
5-frame chunk of every video, ranked per class; --shift: shift test-time augmentation); `vidistill score` of that
CSV agrees with `vidistill eval` (given the same --shift)."""

from __future__ import annotations

from vidistill.commands.options import (
    add_frames,
    add_shift,
    add_skip_bad_records,
    bad_records_for,
    number,
    one_k,
    report_bad_records,
    shifts_for,
)

HELP = "write the official video-level predictions CSV"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="run directory or converted student directory")
    parser.add_argument("--data", required=True, help="frame-level records (glob)")
    parser.add_argument("--out", required=True, help="CSV to write")
    parser.add_argument("--segments", action="store_true", help="write the Class,Segments CSV")
    add_shift(parser)
    parser.add_argument("--which", choices=["auto", "student", "teacher"], default="auto")
    add_frames(parser, several=False)
    parser.add_argument("--batch-size", type=number(">= 1"), default=64)
    add_skip_bad_records(parser)


def run(args) -> int:
    import numpy as np

    from vidistill.distill.evaluate import predictions
    from vidistill.distill.runs import load_model
    from vidistill.yt8m.submission import write_video_predictions

    shifts = shifts_for(args)
    loaded = load_model(args.model, args.which, k=one_k(args))
    bad_records = bad_records_for(args)
    if args.segments:
        from vidistill.distill.evaluate import all_segment_predictions
        from vidistill.yt8m.submission import write_segment_predictions

        ids, scores = all_segment_predictions(
            loaded.model,
            args.data,
            num_classes=loaded.num_classes,
            max_frames=loaded.max_frames,
            batch_size=args.batch_size,
            bad_records=bad_records,
            shifts=shifts,
        )
        write_segment_predictions(args.out, ids, scores)
        print(f"wrote segment predictions for {len(ids)} segments to {args.out}")
        report_bad_records(bad_records)
        return 0
    ids, scores = [], []
    for batch_ids, batch_scores, _ in predictions(
        loaded.model,
        args.data,
        num_classes=loaded.num_classes,
        max_frames=loaded.max_frames,
        batch_size=args.batch_size,
        bad_records=bad_records,
        select=loaded.select,
    ):
        ids.extend(batch_ids)
        scores.append(batch_scores)
    write_video_predictions(args.out, ids, np.concatenate(scores))
    print(f"wrote predictions for {len(ids)} videos to {args.out}")
    report_bad_records(bad_records)
    return 0
