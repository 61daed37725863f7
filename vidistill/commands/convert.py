"""Strip the teacher: write a run's student alone (config, weights, and a SavedModel that takes whole videos)."""

from __future__ import annotations

HELP = "write a run's student alone (SavedModel + config + weights)"


def add_arguments(parser) -> None:
    parser.add_argument("run", help="training run directory")
    parser.add_argument("--out", required=True, help="student directory to write")


def run(args) -> int:
    from vidistill.distill.runs import convert_run

    print(f"wrote the student of {args.run} to {convert_run(args.run, args.out)}")
    return 0
