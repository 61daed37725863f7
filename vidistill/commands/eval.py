"""Evaluate a run (its student, or --which teacher) or a converted student on labeled frame-level records:
Hit@1, PERR, GAP@20, mAP; with --segments the Kaggle 2019 segment MAP on segment-rated records (--shift: shift
test-time augmentation)."""

from __future__ import annotations

import json

from vidistill.commands.options import (
    add_frames,
    add_shift,
    add_skip_bad_records,
    bad_records_for,
    frames_of,
    number,
    report_bad_records,
    shifts_for,
)

HELP = "evaluate a run or a converted student: Hit@1, PERR, GAP, mAP"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="run directory or converted student directory")
    parser.add_argument("--data", required=True, help="labeled frame-level records (glob)")
    parser.add_argument("--segments", action="store_true", help="segment MAP on 2019-style segment-rated records")
    add_shift(parser)
    parser.add_argument("--which", choices=["auto", "student", "teacher"], default="auto")
    add_frames(parser, several=True)
    parser.add_argument("--batch-size", type=number(">= 1"), default=64)
    parser.add_argument("--json", action="store_true")
    add_skip_bad_records(parser)


def run(args) -> int:
    from tabulate import tabulate

    from vidistill.distill.evaluate import evaluate_model, evaluate_segments
    from vidistill.distill.runs import load_model

    shifts = shifts_for(args)
    frames = frames_of(args)
    loaded = load_model(args.model, args.which)
    bad_records = bad_records_for(args)
    evaluate = evaluate_segments if args.segments else evaluate_model
    at = [loaded.at_k(k) for k in frames] if frames else [loaded]
    results = {}
    for model in at:
        results[model.description] = evaluate(
            model.model,
            args.data,
            num_classes=model.num_classes,
            max_frames=model.max_frames,
            batch_size=args.batch_size,
            bad_records=bad_records,
            **({"shifts": shifts} if args.segments else {"select": model.select}),
        )
    if len(frames) > 1:  # one column per k
        by_k = {f"k={k}": result for k, result in zip(frames, results.values())}
        if args.json:
            print(json.dumps(by_k, indent=2))
        else:
            print(loaded.description)
            names = list(next(iter(by_k.values())))
            rows = [[name, *(result[name] for result in by_k.values())] for name in names]
            print(tabulate(rows, headers=["metric", *by_k], floatfmt=".4f"))
    else:
        ((description, result),) = results.items()
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(description)
            print(tabulate(result.items(), headers=["metric", "value"], floatfmt=".4f"))
    report_bad_records(bad_records)
    return 0
