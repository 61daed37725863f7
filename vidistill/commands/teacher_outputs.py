"""Run a teacher once: write its predictions and representation for every video of a data set, which serial
students then read instead of running it (`vidistill train --teacher-outputs DIR`)."""

from __future__ import annotations

from vidistill.commands.options import number

HELP = "write a teacher's (or an ensemble's) outputs for every video, for serial training without the teacher"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="run directory (its teacher), ensemble directory, or converted student")
    parser.add_argument("--data", required=True, help="the frame-level records to write outputs for (glob)")
    parser.add_argument("--out", required=True, help="directory of outputs (one file per records file)")
    parser.add_argument(
        "--dtype",
        choices=["float16", "float32"],
        default="float16",
        help="stored value type: float16 (default; half the size, 2^-11 relative rounding) or float32 (exact)",
    )
    parser.add_argument("--which", choices=["teacher", "student", "auto"], default="teacher")
    parser.add_argument("--batch-size", type=number(">= 1"), default=64)
    parser.add_argument("--overwrite", action="store_true", help="replace outputs of another teacher in --out")


def run(args) -> int:
    from vidistill.distill.teacher_outputs import write_teacher_outputs

    outputs = write_teacher_outputs(
        args.model,
        args.data,
        args.out,
        dtype=args.dtype,
        batch_size=args.batch_size,
        which=args.which,
        overwrite=args.overwrite,
    )
    videos = sum(entry.records for entry in outputs.files.values())
    print(
        f"wrote the outputs of the {outputs.teacher} for {videos} videos in {len(outputs.files)} file(s) to "
        f"{args.out} ({outputs.num_classes} classes, representation {outputs.representation_width}, {outputs.dtype})"
    )
    return 0
