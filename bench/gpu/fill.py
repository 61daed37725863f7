"""Writes the weights of graph-only ONNX files (made by `vidistill.bench.gpu.prepare`) as seeded random values:

    python -m vidistill.bench.gpu.fill .gpu-bundle/paper-*/*.onnx

A file whose weights are inside it (no external tensors) is left as it is. Needs onnx and numpy only.
"""

from __future__ import annotations

import argparse
import sys
import time

from vidistill.export.external_data import fill_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vidistill.bench.gpu.fill", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="graph-only ONNX files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in args.files:
        started = time.perf_counter()
        try:
            filled = fill_weights(path, args.seed)
        except ValueError as e:
            print(f"{path}: {e}")
            continue
        print(
            f"{path}: {filled['tensors']} tensors, {filled['bytes'] / 2**20:.1f} MiB in "
            f"{time.perf_counter() - started:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
