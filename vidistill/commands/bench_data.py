"""Benchmark the data layer on this machine: synthetic generation speed (videos/s) and frame-level reader
throughput stage by stage (bytes, parsing, decoding, the model-ready pipeline, its uint8 codes, a student's k
frames), so the slow stage is visible; then the goals met or missed. Run it again with TF_CPU_ALLOCATOR_USE_BFC=true
in the environment to see the float batches without fresh page faults."""

from __future__ import annotations

import os

from vidistill.commands.options import number

HELP = "benchmark synthetic generation and the frame-level reader"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="directory for the generated data")
    parser.add_argument("--videos", type=int, default=2000, help="full-length (300-frame) videos to generate")
    parser.add_argument("--batch-size", type=number(">= 1"), default=64)
    parser.add_argument(
        "--frames", type=number(">= 1"), default=30, help="k of the stage that decodes only a student's frames"
    )
    parser.add_argument(
        "--workers", type=number(">= 1"), default=None, help="synthetic-data processes (default: cores)"
    )


def run(args) -> int:
    from tabulate import tabulate

    from vidistill.bench.data_throughput import machine, reader_stages, verdict
    from vidistill.yt8m.synthetic import SynthConfig, write_dataset

    config = SynthConfig(videos=args.videos, heldout=0, classes=100, min_frames=300, max_frames=300, shards=8)
    os.makedirs(args.out, exist_ok=True)
    summary = write_dataset(config, args.out, workers=args.workers)
    rate = summary["videos_per_second"]
    rows = [["synthetic generation (write)", summary["videos"], f"{rate:.0f}", "1 run", "", ""]]
    stages = reader_stages(summary["train"], batch_size=args.batch_size, k=args.frames)
    for stage in stages:
        rows.append(
            [
                f"reader: {stage.stage}",
                stage.videos,
                f"{stage.videos_per_second:.0f}",
                stage.spread,
                f"{stage.cpu_ms_per_video:.2f}",
                f"{stage.faults_per_video:.0f}",
            ]
        )
    print(f"machine: {machine()}; {args.videos} videos x 300 frames; batch {args.batch_size}")
    headers = ["stage", "videos", "videos/s (median)", "range over 3 passes", "CPU ms/video", "page faults/video"]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    for line in verdict(stages):
        print(line)
    return 0
