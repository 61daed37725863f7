"""Score a predictions CSV against labeled records (frame or video level): Hit@1, PERR, GAP@20 and mAP of the
official video-level CSV, or with --segments the Kaggle 2019 segment MAP@100000 of a Class,Segments CSV."""

from __future__ import annotations

import json

from vidistill.commands.options import number

HELP = "score a predictions CSV against labeled records"


def add_arguments(parser) -> None:
    parser.add_argument("--predictions", required=True, help="predictions CSV")
    parser.add_argument("--data", required=True, help="labeled records (glob)")
    parser.add_argument("--segments", action="store_true", help="segment CSV against segment-rated records")
    parser.add_argument("--num-classes", type=number(">= 1"), default=3862)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    from tabulate import tabulate

    from vidistill.yt8m.scoring import score_segment_predictions, score_video_predictions

    if args.segments:
        result = score_segment_predictions(args.predictions, args.data, num_classes=args.num_classes)
    else:
        result = score_video_predictions(args.predictions, args.data, num_classes=args.num_classes)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(tabulate(result.items(), headers=["metric", "value"], floatfmt=".4f"))
    return 0
