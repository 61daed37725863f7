"""Write synthetic YouTube-8M frame-level data: training shards plus a held-out split, learnable and temporal
(the generative model is described in the README and in yt8m/synthetic.py)."""

from __future__ import annotations

import os

from vidistill.commands.options import number

HELP = "write synthetic frame-level data (train + held-out split)"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--videos", type=int, default=2000, help="training videos (default 2000)")
    parser.add_argument("--heldout", type=int, default=None, help="held-out videos (default videos/5)")
    parser.add_argument("--classes", type=int, default=100, help="number of classes (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--segments", action="store_true", help="add 2019-style rated 5-frame segments")
    parser.add_argument("--shards", type=int, default=4, help="training shards (held-out: shards/4, at least 1)")
    parser.add_argument("--min-frames", type=int, default=60)
    parser.add_argument("--max-frames", type=int, default=300)
    parser.add_argument("--workers", type=number(">= 1"), default=None, help="processes (default: one per core)")
    parser.add_argument("--overwrite", action="store_true", help="replace data already in --out")


def existing_records(out: str) -> list[str]:
    return sorted(f for f in os.listdir(out) if f.endswith(".tfrecord")) if os.path.isdir(out) else []


def run(args) -> int:
    from vidistill.yt8m.synthetic import SynthConfig, write_dataset

    config = SynthConfig(
        videos=args.videos,
        heldout=args.heldout,
        classes=args.classes,
        seed=args.seed,
        segments=args.segments,
        shards=args.shards,
        min_frames=args.min_frames,
        max_frames=args.max_frames,
    )
    old = existing_records(args.out)
    if old and not args.overwrite:
        raise FileExistsError(
            f"{args.out} already holds {len(old)} .tfrecord file(s): pass --overwrite or another --out"
        )
    for name in old:
        os.remove(os.path.join(args.out, name))
    summary = write_dataset(config, args.out, workers=args.workers)
    print(
        f"wrote {summary['videos']} videos in {summary['seconds']:.1f} s ({summary['videos_per_second']:.0f} videos/s, "
        f"{summary['workers']} workers)\n  train:    {summary['train']}\n  held out: {summary['validate']}"
    )
    return 0
