"""Fit the linear-probe baseline (ridge regression on mean frame features) on labeled records and write the
official video-level CSV for another set of records. A floor for GAP, and a check that data is learnable."""

from __future__ import annotations

from vidistill.commands.options import add_skip_bad_records, bad_records_for, number, report_bad_records

HELP = "linear-probe baseline: fit on --train, write predictions CSV for --data"


def add_arguments(parser) -> None:
    parser.add_argument("--train", required=True, help="labeled records to fit on (glob; frame or video level)")
    parser.add_argument("--data", required=True, help="records to predict (glob)")
    parser.add_argument("--out", required=True, help="predictions CSV (VideoId,LabelConfidencePairs)")
    parser.add_argument("--num-classes", type=number(">= 1"), default=3862)
    add_skip_bad_records(parser)
    parser.add_argument(
        "--l2", type=number("> 0", float), default=0.5, help="ridge penalty per training video (default 0.5)"
    )


def run(args) -> int:
    from vidistill.yt8m.baseline import LinearProbe, mean_features
    from vidistill.yt8m.submission import write_video_predictions

    bad_records = bad_records_for(args)
    _, features, labels = mean_features(args.train, num_classes=args.num_classes, bad_records=bad_records)
    probe = LinearProbe.fit(features, labels, l2=args.l2)
    ids, features, _ = mean_features(args.data, num_classes=args.num_classes, bad_records=bad_records)
    write_video_predictions(args.out, ids, probe.predict(features))
    print(f"fit on {len(labels)} videos; wrote predictions for {len(ids)} videos to {args.out}")
    report_bad_records(bad_records)
    return 0
