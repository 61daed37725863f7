"""Model zoo at a glance: build a preset or config and print its parameter count and FLOPs per video, or put a
teacher and a few-frame student side by side (parameters, FLOPs, and the ratios)."""

from __future__ import annotations

import dataclasses
import json

from vidistill.commands.options import flags_named
from vidistill.yt8m.errors import ConfigError

HELP = "parameter counts and FLOPs of presets, configs, and teacher-vs-student pairs"


def add_arguments(parser) -> None:
    parser.add_argument("--preset", help="one preset or config file to describe (default: every preset)")
    parser.add_argument("--teacher", help="teacher preset or config file (with --student)")
    parser.add_argument("--student", help="student preset or config file (default: the teacher's family)")
    parser.add_argument("--frames", default="300,30", help="teacher,student frames (default 300,30)")
    parser.add_argument("--width", type=float, default=1.0, help="student width factor (default 1.0)")
    parser.add_argument("--num-classes", type=int, default=None, help="override the number of classes")
    parser.add_argument("--json", action="store_true", help="print JSON")


def describe(config) -> dict:
    """The config's family, frames, parameters and FLOPs. The model is built in a graph of its own, where its
    variables are declared but never allocated: the paper-size presets (over 300 M parameters) cost no memory."""
    import tensorflow as tf

    from vidistill.teachers.config import config_to_dict
    from vidistill.teachers.registry import build_model, model_flops

    with tf.Graph().as_default():
        parameters = build_model(config).count_params()
    return {
        "family": config.family,
        "frames": config.frames,
        "parameters": parameters,
        "flops_per_video": model_flops(config),
        "config": config_to_dict(config),
    }


def _with_classes(config, num_classes):
    return config if num_classes is None else dataclasses.replace(config, num_classes=num_classes)


def run(args) -> int:
    from vidistill.teachers.config import check_width

    with flags_named(args, {"width": "width", "num_classes": "num_classes"}):  # said with the flags
        check_width(args.width)  # narrow's rule, also when no student is built
        return _pair(args) if args.teacher else _presets(args)


def _presets(args) -> int:
    from tabulate import tabulate

    from vidistill.teachers.presets import PRESETS, resolve

    names = [args.preset] if args.preset else list(PRESETS)
    rows = {name: describe(_with_classes(resolve(name), args.num_classes)) for name in names}
    if args.json:
        print(json.dumps(rows if not args.preset else rows[args.preset], indent=2))
        return 0
    table = [
        [name, r["family"], r["frames"], f"{r['parameters'] / 1e6:.2f} M", f"{r['flops_per_video'] / 1e9:.3f} G"]
        for name, r in rows.items()
    ]
    print(tabulate(table, headers=["model", "family", "frames", "parameters", "FLOPs / video"], tablefmt="github"))
    return 0


def _pair(args) -> int:
    from tabulate import tabulate

    from vidistill.students.student import student_config
    from vidistill.teachers.presets import resolve

    try:
        teacher_frames, student_frames = (int(v) for v in args.frames.split(","))
    except ValueError:
        raise ConfigError(f"--frames takes two integers, teacher,student (e.g. 300,30), got {args.frames!r}") from None
    teacher = dataclasses.replace(_with_classes(resolve(args.teacher), args.num_classes), frames=teacher_frames)
    base = _with_classes(resolve(args.student), args.num_classes) if args.student else teacher
    student = student_config(base, k=student_frames, width=args.width, num_classes=teacher.num_classes)
    t, s = describe(teacher), describe(student.model)
    result = {
        "teacher": t,
        "student": s,
        "parameter_ratio": t["parameters"] / s["parameters"],
        "flops_ratio": t["flops_per_video"] / s["flops_per_video"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = [
        ["teacher", t["family"], t["frames"], f"{t['parameters'] / 1e6:.2f} M", f"{t['flops_per_video'] / 1e9:.3f} G"],
        ["student", s["family"], s["frames"], f"{s['parameters'] / 1e6:.2f} M", f"{s['flops_per_video'] / 1e9:.3f} G"],
        [
            "teacher / student",
            "",
            f"{t['frames'] / s['frames']:.1f}x",
            f"{result['parameter_ratio']:.2f}x",
            f"{result['flops_ratio']:.2f}x",
        ],
    ]
    print(tabulate(rows, headers=["", "family", "frames", "parameters", "FLOPs / video"], tablefmt="github"))
    return 0
