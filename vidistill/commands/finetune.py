"""Fine-tune a converted student alone: L_CE on its k frames, or still distilling from a saved teacher run
(--teacher-run). Writes a run directory (OUT/run) and the fine-tuned student directory (OUT)."""

from __future__ import annotations

import os

HELP = "fine-tune a converted student (optionally still distilling from a teacher run)"


def add_arguments(parser) -> None:
    parser.add_argument("student_dir", help="a converted student directory (vidistill convert)")
    parser.add_argument("--data", required=True, help="training records (glob)")
    parser.add_argument("--eval-data", default="", help="held-out records (glob)")
    parser.add_argument("--out", required=True, help="directory for the fine-tuned student")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--teacher-run", default="", help="keep distilling from this trained teacher (serial)")


def run(args) -> int:
    from vidistill.distill.config import DataConfig, OptimizerConfig, TrainConfig, load_train_config
    from vidistill.distill.runs import convert_run
    from vidistill.students.convert import load_student_config

    student = load_student_config(args.student_dir)
    teacher = load_train_config(args.teacher_run).teacher if args.teacher_run else None
    config = TrainConfig(
        mode="serial" if teacher else "student",
        teacher=teacher,
        student=student,
        teacher_run=args.teacher_run,
        init_student=args.student_dir,
        data=DataConfig(train=args.data, eval=args.eval_data, batch_size=args.batch_size,
                        max_frames=teacher.frames if teacher else 300),
        optimizer=OptimizerConfig(learning_rate=args.learning_rate),
        steps=args.steps,
        checkpoint_every=min(100, args.steps),
        eval_every=0,
    )  # fmt: skip
    from vidistill.distill.trainer import Run

    run_dir = os.path.join(args.out, "run")
    if os.path.exists(args.out) and os.listdir(args.out):
        raise FileExistsError(f"{args.out} exists and is not empty: choose another --out")
    Run(config, run_dir).train()
    staged = args.out.rstrip("/") + ".student"
    convert_run(run_dir, staged)
    for name in os.listdir(staged):
        os.replace(os.path.join(staged, name), os.path.join(args.out, name))
    os.rmdir(staged)
    print(f"fine-tuned student written to {args.out} (run: {run_dir})")
    return 0
