"""Benchmark exported models: ONNX files (any precision, model card beside each) on ONNX Runtime providers and TF
SavedModels (card <dir>.json beside the directory) on TensorFlow. Each variant is first checked against its fp32
reference (a variant beyond its card's tolerance is reported failed, not timed), then timed per batch size:
p50/p90/p99, mean±std, videos/s, first-run and session-creation times, peak memory, the roofline (GFLOP/s against a
MatMul peak, bytes moved against the memory bandwidth, both measured in the same run, and which one bounds the
row), speed-up over a baseline next to the roofline's, and the card's GAP/mAP. Writes DIR/report.md, report.csv,
report.json, pareto.png and rows.jsonl (rows as they are measured). TensorFlow is imported only for SavedModels."""

from __future__ import annotations

import shlex
import sys

from vidistill.commands.options import frame_counts
from vidistill.yt8m.errors import ConfigError

HELP = "latency, throughput and roofline of ONNX files and SavedModels, with a report next to their GAP"


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--batch {text!r}: give comma-separated integers, e.g. 1,8,64,256") from None


def add_arguments(parser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="ONNX file (card beside it) or SavedModel directory")
    parser.add_argument(
        "--providers",
        default="auto",
        help="comma-separated: cpu, cuda, tensorrt; auto (default): every one that loads here",
    )
    parser.add_argument("--batch", default="1,8,64,256", help="batch sizes (default 1,8,64,256)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    timing = parser.add_mutually_exclusive_group()
    timing.add_argument(
        "--duration",
        type=float,
        default=5.0,
        help="seconds of timed runs per cell, at least 100 runs, at most 60 s (default 5)",
    )
    timing.add_argument("--runs", type=int, default=None, help="exactly N timed runs per cell instead of --duration")
    parser.add_argument(
        "--min-runs",
        type=int,
        default=100,
        help="with --duration: at least this many timed runs per cell (default 100: p99 needs them)",
    )
    parser.add_argument(
        "--time-cap",
        type=float,
        default=60.0,
        help="with --duration: stop a cell after this many seconds even below --min-runs (default 60)",
    )
    parser.add_argument("--warmup", type=int, default=5, help="discarded warm-up runs per cell (default 5)")
    parser.add_argument("--input-sets", type=int, default=4, help="random input sets rotated between runs (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default="bench-report", help="report directory (default bench-report)")
    parser.add_argument("--baseline", default=None, help="model the speed-ups are relative to (default: the first)")
    parser.add_argument("--pareto-batch", type=int, default=1, help="batch size of the GAP/latency plot (default 1)")
    parser.add_argument(
        "--peak-size", type=int, default=None, help="n of the n x n MatMul peak (default 2048 on CPU, 8192 on GPU)"
    )
    parser.add_argument(
        "--frames",
        type=frame_counts,
        default=None,
        help="K or K1,K2,...: time an any-k student's file at each of these k's (default: every k it was trained "
        "at); files of one k run at their k",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the per-node provider profiling")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def command_line(args) -> str:
    """The command with every option spelled out (defaults included), so the report says exactly what ran."""
    parts = ["vidistill", "bench", *args.models]
    timing = ["--runs", args.runs] if args.runs is not None else ["--duration", args.duration]
    options = [
        ("--providers", args.providers),
        ("--batch", args.batch),
        ("--threads", args.threads),
        tuple(timing),
        ("--min-runs", args.min_runs),
        ("--time-cap", args.time_cap),
        ("--warmup", args.warmup),
        ("--input-sets", args.input_sets),
        ("--seed", args.seed),
        ("--report", args.report),
        ("--baseline", args.baseline),
        ("--pareto-batch", args.pareto_batch),
        ("--peak-size", args.peak_size),
        ("--frames", ",".join(map(str, args.frames)) if args.frames else None),
    ]
    for flag, value in options:
        if value is not None:
            parts += [flag, str(value)]
    if args.no_profile:
        parts.append("--no-profile")
    return shlex.join(parts)


def run(args) -> int:
    from vidistill.bench.benchmark import BenchConfig, run_benchmark
    from vidistill.bench.report import COMPACT, is_ok, summary_table
    from vidistill.bench.runners import parse_providers

    config = BenchConfig(
        models=args.models,
        providers=parse_providers(args.providers),
        batches=_ints(args.batch),
        threads=args.threads,
        runs=args.runs,
        duration=args.duration,
        min_runs=args.min_runs,
        time_cap=args.time_cap,
        warmup=args.warmup,
        input_sets=args.input_sets,
        seed=args.seed,
        report=args.report,
        baseline=args.baseline,
        pareto_batch=args.pareto_batch,
        peak_size=args.peak_size,
        profile=not args.no_profile,
        command=command_line(args),
        frames=list(args.frames) if args.frames else None,
    )
    rows, bench = run_benchmark(config, progress=not args.quiet)
    for note in bench.notes:
        print(f"note: {note}")
    print(summary_table(rows, COMPACT))
    print(f"report: {config.report}/report.md")
    failed = [r for r in rows if str(r.get("status", "")).startswith("failed")]
    if failed or not any(is_ok(r) for r in rows):
        print(
            f"vidistill bench: {len(failed)} of {len(rows)} rows failed (see their status in the report)",
            file=sys.stderr,
        )
        return 1
    return 0
