"""Prepares the GPU bundle (needs TensorFlow; run it here, not on the GPU machine):

    python -m vidistill.bench.gpu.prepare --demo runs/demo --out .gpu-bundle

- `demo-student/`, `demo-teacher/`: the demo's k=30 student and its H-LSTM teacher (trained), exported with
  `--target cuda` in fp32, fp16, bf16, int8-dynamic and int8-static, weights inside (they are small); held-out
  accuracy on the demo's validation split in the fp32 / int8 cards.
- `paper-student/`, `paper-teacher/`: `hlstm-paper` at 300 frames and its k=30 student, built with random weights
  (latency does not depend on their values), exported the same way (fp32, fp16, bf16, int8-dynamic), then stored
  as GRAPH ONLY: the weights (hundreds of MB) stay behind and `python -m vidistill.bench.gpu.fill` writes seeded
  random ones there (export/external_data.py). Their int8 cards name the file itself as the parity reference: its
  quantized weights are filled independently of the fp32 file's, so bench compares CUDA with CPU on the same file.

Each model is exported in a child process (its memory is returned when it ends); `--skip-demo` / `--skip-paper`.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import shutil
import sys

from vidistill.yt8m.files import atomic_write

DEMO_PRECISIONS = ["fp32", "fp16", "bf16", "int8-dynamic", "int8-static"]
PAPER_PRECISIONS = ["fp32", "fp16", "bf16", "int8-dynamic"]
PAPER_PRESET = "hlstm-paper"
K = 30


def _export_demo(demo: str, which: str, out: str) -> None:
    from vidistill.export.config import ExportConfig
    from vidistill.export.exporter import export
    from vidistill.sources import export_source

    source_dir = (
        os.path.join(demo, "students", f"k{K}-finetuned")
        if which == "student"
        else os.path.join(demo, "runs", f"parallel-k{K}")
    )
    data = os.path.join(demo, "data")
    config = ExportConfig(
        precisions=DEMO_PRECISIONS,
        target="cuda",
        eval_data=os.path.join(data, "validate-*.tfrecord"),
        calibration_data=os.path.join(data, "train-*.tfrecord"),
        calibration_batches=4,
    )
    export(export_source(source_dir, "teacher" if which == "teacher" else "auto"), out, config)


def _export_paper(role: str, work: str) -> None:
    from vidistill.export.config import ExportConfig
    from vidistill.export.exporter import export
    from vidistill.export.source import student_source, teacher_source
    from vidistill.students.student import build_student, student_config
    from vidistill.teachers.presets import PRESETS
    from vidistill.teachers.registry import build_model

    config = PRESETS[PAPER_PRESET]
    origin = f"{PAPER_PRESET} with random weights (bench/gpu/prepare.py)"
    if role == "teacher":
        source = teacher_source(build_model(config), config, origin)
    else:
        student = student_config(config, k=K)
        source = student_source(build_student(student), student, origin)
    export(source, work, ExportConfig(precisions=PAPER_PRECISIONS, target="cuda", random_videos=4, batch_size=4))


def _graph_only(work: str, out: str) -> None:
    """Each ONNX file of `work` as a graph without its weights in `out`, with its card."""
    from vidistill.export.card import card_path, read_card, write_card
    from vidistill.export.external_data import split_weights

    os.makedirs(out, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(work, "*.onnx"))):
        name = os.path.basename(path)
        _, data = split_weights(path, os.path.join(out, name))
        os.remove(data)  # filled on the GPU machine
        card = read_card(card_path(path))
        card.notes.append("graph only: the weights are seeded random values written by vidistill.bench.gpu.fill")
        if card.precision.startswith("int8"):
            card.reference = name
            card.notes.append("parity reference: this file on the CPU (its int8 weights are filled apart from fp32's)")
        write_card(card, card_path(os.path.join(out, name)))


def _in_child(target, *args) -> None:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"{target.__name__}{args} failed (exit code {process.exitcode})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vidistill.bench.gpu.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default="runs/demo", help="a finished `vidistill demo` output (default runs/demo)")
    parser.add_argument("--out", default=".gpu-bundle", help="the bundle folder (default .gpu-bundle)")
    parser.add_argument("--work", default="runs/gpu-paper", help="where the paper-size files are exported first")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if not args.skip_demo:
        if not os.path.isdir(os.path.join(args.demo, "students")):
            raise SystemExit(f"{args.demo} holds no finished demo: run `vidistill demo --out {args.demo}` first")
        for which in ("student", "teacher"):
            out = os.path.join(args.out, f"demo-{which}")
            shutil.rmtree(out, ignore_errors=True)
            _in_child(_export_demo, args.demo, which, out)
    if not args.skip_paper:
        for role in ("student", "teacher"):
            work = os.path.join(args.work, role)
            shutil.rmtree(work, ignore_errors=True)
            _in_child(_export_paper, role, work)
            out = os.path.join(args.out, f"paper-{role}")
            shutil.rmtree(out, ignore_errors=True)
            _graph_only(work, out)
    sizes = {
        os.path.relpath(p, args.out): os.path.getsize(p)
        for p in glob.glob(os.path.join(args.out, "*", "*"))
        if os.path.isfile(p)
    }
    with atomic_write(os.path.join(args.out, "manifest.json")) as f:
        json.dump(
            {"files": sizes, "command": " ".join(["python -m vidistill.bench.gpu.prepare", *(argv or sys.argv[1:])])},
            f,
            indent=1,
        )
    print(f"{args.out}: {len(sizes)} files, {sum(sizes.values()) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
