"""Benchmark the data layer on this machine: synthetic generation speed (videos/s) and frame-level reader
throughput stage by stage (bytes, parsing, the full model-ready pipeline), so the slow stage is visible."""

from __future__ import annotations

import os

HELP = "benchmark synthetic generation and the frame-level reader"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="directory for the generated data")
    parser.add_argument("--videos", type=int, default=2000, help="full-length (300-frame) videos to generate")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="synthetic-data processes (default: cores)")


def run(args) -> int:
    from tabulate import tabulate

    from vidistill.bench.data_throughput import machine, reader_stages
    from vidistill.yt8m.synthetic import SynthConfig, write_dataset

    config = SynthConfig(videos=args.videos, heldout=0, classes=100, min_frames=300, max_frames=300, shards=8)
    os.makedirs(args.out, exist_ok=True)
    summary = write_dataset(config, args.out, workers=args.workers)
    rate = summary["videos_per_second"]
    rows = [["synthetic generation (write)", summary["videos"], f"{rate:.0f}", "1 run", f"{rate * 300:,.0f}"]]
    for stage in reader_stages(summary["train"], batch_size=args.batch_size):
        rows.append(
            [
                f"reader: {stage.stage}",
                stage.videos,
                f"{stage.videos_per_second:.0f}",
                stage.spread,
                f"{stage.videos_per_second * 300:,.0f}",
            ]
        )
    print(f"machine: {machine()}; {args.videos} videos x 300 frames; batch {args.batch_size}")
    headers = ["stage", "videos", "videos/s (median)", "range over 3 passes", "frames/s"]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    return 0
