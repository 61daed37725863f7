"""Fine-tuning a converted student alone: L_CE on its k frames, or still distilling from a trained teacher run
(serial). The result is a run directory (OUT/run) and the fine-tuned student directory (OUT itself)."""

from __future__ import annotations

import os

from vidistill.distill.config import DataConfig, OptimizerConfig, TrainConfig, load_train_config
from vidistill.distill.runs import convert_run
from vidistill.distill.trainer import train
from vidistill.students.convert import load_student_config


def finetune(
    student_dir: str,
    data: str,
    out: str,
    *,
    eval_data: str = "",
    steps: int = 200,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    teacher_run: str = "",
    skip_bad_records: bool = False,
    progress: bool = True,
) -> str:
    """Fine-tunes the student in `student_dir` on the records `data` and writes the result to `out` (which must be
    absent or empty); returns `out`. With `teacher_run` the student keeps learning from that run's teacher."""
    student = load_student_config(student_dir)
    teacher = load_train_config(teacher_run).teacher if teacher_run else None
    config = TrainConfig(
        mode="serial" if teacher else "student",
        teacher=teacher,
        student=student,
        teacher_run=teacher_run,
        init_student=student_dir,
        data=DataConfig(
            train=data,
            eval=eval_data,
            batch_size=batch_size,
            max_frames=teacher.frames if teacher else 300,
            skip_bad_records=skip_bad_records,
        ),
        optimizer=OptimizerConfig(learning_rate=learning_rate),
        steps=steps,
        checkpoint_every=min(100, steps),
        eval_every=0,
    )
    if os.path.exists(out) and os.listdir(out):
        raise FileExistsError(f"{out} exists and is not empty: choose another --out")
    run_dir = os.path.join(out, "run")
    train(config, run_dir, progress=progress)
    staged = out.rstrip("/") + ".student"
    convert_run(run_dir, staged)
    for name in os.listdir(staged):
        os.replace(os.path.join(staged, name), os.path.join(out, name))
    os.rmdir(staged)
    return out
