"""The whole job on built-in synthetic data, end to end. Today: synth -> linear-probe baseline -> predictions
CSV -> score; the teacher-student stages join as they land."""

from __future__ import annotations

import os
from argparse import Namespace

HELP = "run the pipeline end to end on built-in synthetic data"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--overwrite", action="store_true", help="reuse a run directory that exists")


def run(args) -> int:
    from vidistill.commands import baseline, score, synth

    if os.path.exists(args.out) and os.listdir(args.out) and not args.overwrite:
        raise FileExistsError(f"{args.out} exists and is not empty: pass --overwrite or another --out")
    data = os.path.join(args.out, "data")
    synth.run(
        Namespace(
            out=data, videos=args.videos, heldout=None, classes=args.classes, seed=0, segments=False,
            shards=4, min_frames=60, max_frames=300, workers=None, overwrite=True,
        )
    )
    predictions = os.path.join(args.out, "baseline-predictions.csv")
    baseline.run(
        Namespace(
            train=os.path.join(data, "train-*.tfrecord"), data=os.path.join(data, "validate-*.tfrecord"),
            out=predictions, num_classes=args.classes, l2=0.5, skip_bad_records=False,
        )
    )
    print("\nheld-out scores of the linear-probe baseline:")
    return score.run(
        Namespace(
            predictions=predictions, data=os.path.join(data, "validate-*.tfrecord"), segments=False,
            num_classes=args.classes, json=False,
        )
    )
