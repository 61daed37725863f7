"""What a user points commands at: a run directory (config.yaml + checkpoints) or a converted student."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import tf_keras as keras

from vidistill.distill.config import load_train_config
from vidistill.distill.trainer import build_models, restore_models
from vidistill.students.convert import is_student_dir, load_student, load_student_config, save_student
from vidistill.students.student import StudentConfig, student_at
from vidistill.yt8m.constants import MAX_FRAMES
from vidistill.yt8m.errors import ConfigError


@dataclass
class LoadedModel:
    model: keras.Model
    num_classes: int
    max_frames: int
    description: str
    which: str  # "student" or "teacher"
    select: Callable | None = None  # a student's frames, picked before decoding (readers' `select`)
    student: StudentConfig | None = None  # a student's config

    def at_k(self, k: int) -> LoadedModel:
        """The student at k frames (the same weights); a ConfigError where it was not trained at k."""
        if self.student is None:
            raise ConfigError(f"--frames chooses a student's k, and {self.description} is not a student: drop it")
        model = student_at(self.model, self.student, k)
        description = f"{self.description}, at k={k}" if self.student.any_k else self.description
        return dataclasses.replace(
            self, model=model, description=description, select=self.student.frames_to_decode(k=k)
        )


def load_model(path: str, which: str = "auto", *, k: int | None = None) -> LoadedModel:
    """`which`: "student", "teacher", or "auto" (the student when the run has one). An ensemble (a directory
    of ensemble.yaml, or comma-separated runs: distill/ensemble.py) is one model, its "teacher". `k`: the student
    at k frames (an any-k student's k's; None: its default k)."""
    loaded = _load_model(path, which)
    return loaded if k is None else loaded.at_k(k)


def _load_model(path: str, which: str) -> LoadedModel:
    from vidistill.distill.ensemble import build_ensemble, ensemble_config, is_ensemble, load_members

    if is_ensemble(path):
        if which == "student":
            raise ConfigError(f"{path} is an ensemble: it is one model (use --which auto or teacher)")
        every = ensemble_config(path)
        config = every.pruned()  # members of weight 0 are not built
        members = load_members(config)
        model = build_ensemble(config, members)
        weights = ", ".join(f"{w:.2f}" for w in config.normalized_weights)
        dropped = len(every.members) - len(members)
        description = f"ensemble {path} of {len(members)} ({weights}" + (
            f"; {dropped} of weight 0 left out" if dropped else ""
        )
        description += "): " + "; ".join(m.description for m in members)
        num_classes = int(model.output["predictions"].shape[-1])
        return LoadedModel(model, num_classes, int(model.input["frames"].shape[1]), description, "teacher")
    if is_student_dir(path):
        if which == "teacher":
            raise ConfigError(f"{path} is a converted student: it holds no teacher")
        student = load_student(path)
        num_classes = student.output["predictions"].shape[-1]
        student_config = load_student_config(path)
        select = student_config.frames_to_decode()
        return LoadedModel(
            student, num_classes, MAX_FRAMES, f"converted student {path}", "student", select, student_config
        )
    if not os.path.exists(os.path.join(path, "config.yaml")):
        raise FileNotFoundError(f"{path} is neither a run directory (config.yaml) nor a converted student")
    config = load_train_config(path)
    if which == "auto":
        which = "student" if config.student is not None and config.mode.has_student else "teacher"
    if which == "teacher" and config.teacher_outputs:
        raise ConfigError(
            f"{path} trained against stored teacher outputs ({config.teacher_outputs}): it holds no teacher; its "
            f"teacher is {config.teacher_run}"
        )
    models = build_models(config, only=which)
    model = getattr(models, which)
    if model is None:
        raise ConfigError(f"{path} ({config.mode} run) has no {which}")
    checkpoint = restore_models(models, path)
    description = f"{which} of {path} ({checkpoint})"
    select = config.student.frames_to_decode() if which == "student" else None
    student_config = config.student if which == "student" else None
    return LoadedModel(model, config.num_classes, config.data.max_frames, description, which, select, student_config)


def convert_run(run_dir: str, out_dir: str) -> str:
    """Strips the teacher: the run's student (best checkpoint, else last) alone, as a student directory."""
    config = load_train_config(run_dir)
    if config.student is None or not config.mode.has_student:
        raise ConfigError(f"{run_dir} is a '{config.mode}' run without a student: nothing to convert")
    loaded = load_model(run_dir, "student")
    return save_student(loaded.model, config.student, out_dir)
