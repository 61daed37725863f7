"""Every stage at a reference model size, each in its own process: synthetic data, one parallel training step,
convert, one fine-tuning step, the student's export in every precision, the teacher's TF SavedModel and ONNX
file, and the benchmark of the teacher against the student's variants at batch 1 and 64. Records wall time and
peak resident memory per stage against the budget 2 GB + 8 x the teacher's float32 weights, and writes
OUT/scale.md (the table for docs/BENCHMARKS.md). Exits 1 when a stage failed or went over the budget."""

from __future__ import annotations

HELP = "wall time and peak memory of every stage at a reference model size (one process per stage)"


def add_arguments(parser) -> None:
    from vidistill.bench.scale import STUDENT_PRECISIONS, ScaleConfig

    defaults = ScaleConfig(preset="", out="")
    parser.add_argument("--preset", required=True, help="teacher preset or config file, e.g. hlstm-paper")
    parser.add_argument("--out", default=None, help="working directory (default runs/scale/<preset>)")
    parser.add_argument("--k", type=int, default=defaults.k, help=f"the student's frames (default {defaults.k})")
    parser.add_argument("--width", type=float, default=defaults.width, help="the student's width factor (default 1)")
    parser.add_argument("--videos", type=int, default=defaults.videos, help="synthetic training videos")
    parser.add_argument("--heldout", type=int, default=defaults.heldout, help="synthetic held-out videos")
    parser.add_argument(
        "--precision",
        default=",".join(STUDENT_PRECISIONS),
        help="the student's export precisions, comma-separated (default: all)",
    )
    parser.add_argument("--bench-batch", default="1,64", help="batch sizes of the benchmark (default 1,64)")
    parser.add_argument("--bench-duration", type=float, default=defaults.bench_duration)
    parser.add_argument("--overwrite", action="store_true", help="run every stage again, even those done before")


def run(args) -> int:
    import os

    from vidistill.bench.scale import ScaleConfig, run_scale
    from vidistill.commands.bench import _ints

    config = ScaleConfig(
        preset=args.preset,
        out=args.out or os.path.join("runs", "scale", os.path.basename(args.preset)),
        k=args.k,
        width=args.width,
        videos=args.videos,
        heldout=args.heldout,
        precisions=tuple(p.strip() for p in args.precision.split(",") if p.strip()),
        bench_batches=tuple(_ints(args.bench_batch)),
        bench_duration=args.bench_duration,
        overwrite=args.overwrite,
    )
    result = run_scale(config)
    print(f"\nwrote {os.path.join(config.out, 'scale.md')}")
    bad = [r.stage for r in result.results if not r.ok or not r.within_budget]
    return 1 if bad else 0
