"""Fine-tune a converted student alone: L_CE on its k frames, or still distilling from a saved teacher run
(--teacher-run). Writes a run directory (OUT/run) and the fine-tuned student directory (OUT)."""

from __future__ import annotations

import os

from vidistill.commands.options import add_skip_bad_records, flags_named

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
    add_skip_bad_records(parser)


# TrainConfig's option -> the flag's argparse destination
FLAGS = {"steps": "steps", "data.batch_size": "batch_size", "optimizer.learning_rate": "learning_rate"}


def run(args) -> int:
    from vidistill.distill.finetune import finetune

    # the fine-tuning run's TrainConfig checks the numbers before anything is written; said with the flags
    with flags_named(args, FLAGS):
        out = finetune(
            args.student_dir,
            args.data,
            args.out,
            eval_data=args.eval_data,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            teacher_run=args.teacher_run,
            skip_bad_records=args.skip_bad_records,
        )
    print(f"fine-tuned student written to {out} (run: {os.path.join(out, 'run')})")
    return 0
