"""Starting a run from another run's weights (`TrainConfig.init`, `vidistill train --init RUN`).

The new run restores, from RUN's best checkpoint (else its last, as `vidistill eval RUN` reads it), every model
it trains: its teacher (unless serial mode restores it from `teacher_run`), its student, and the L_REP projection
when RUN has one. The optimizer starts afresh. Each model must be of the same family and class count as RUN's
(checked before anything is built) and take every weight of RUN's (checked at the restore): a model built for
another frame count fits where the family's weights do not depend on it (distill/segments.py).
"""

from __future__ import annotations

import os

from vidistill.distill.config import TrainConfig, load_train_config
from vidistill.distill.modes import Mode
from vidistill.yt8m.errors import ConfigError

ROLES = ("teacher", "student")


def init_run_config(path: str) -> TrainConfig:
    """The TrainConfig of the run `path`; ConfigError naming --init when `path` is not a run with a checkpoint."""
    from vidistill.students.convert import is_student_dir

    if not os.path.exists(path):
        raise ConfigError(f"--init {path}: no such run directory; pass a run written by `vidistill train`")
    if not os.path.isdir(path):
        raise ConfigError(f"--init {path} is a file, not a run directory; pass a run written by `vidistill train`")
    if is_student_dir(path):
        raise ConfigError(
            f"--init {path} is a converted student, not a run: fine-tune it with `vidistill finetune`, or pass "
            "the run it was converted from"
        )
    if not os.path.exists(os.path.join(path, "config.yaml")):
        raise ConfigError(
            f"--init {path} is not a training run (it holds no config.yaml); pass a run written by `vidistill train`"
        )
    config = load_train_config(path)
    import tensorflow as tf

    if not any(tf.train.latest_checkpoint(os.path.join(path, d)) for d in ("checkpoints/best", "checkpoints")):
        raise ConfigError(f"--init {path} holds no checkpoint yet: train it first (or pass a run that saved one)")
    return config


def default_mode(init: TrainConfig) -> Mode:
    """The mode of a run started from `init` when none is given: a teacher-only run fine-tunes its teacher; any
    run with a student (student, parallel, serial) its student alone."""
    return Mode.TEACHER if init.mode is Mode.TEACHER else Mode.STUDENT


def model_of(config: TrainConfig, role: str):
    """The run's model config in `role` ("teacher" or "student": the student's backbone), or None."""
    if role == "teacher":
        return config.teacher if config.teacher is not None and config.mode.has_teacher else None
    return config.student.model if config.student is not None and config.mode.has_student else None


def restored_roles(config: TrainConfig) -> list[str]:
    """The models a run takes from its init run: those it trains (serial mode's teacher is teacher_run's)."""
    roles = ["teacher"] if config.mode.has_teacher and not config.mode.restores_teacher else []
    return roles + (["student"] if config.mode.has_student else [])


def check_init(config: TrainConfig) -> TrainConfig:
    """The init run's config, after checking it (`init_run_config`, `check_models`)."""
    init = init_run_config(config.init)
    check_models(config, init)
    return init


def check_models(config: TrainConfig, init: TrainConfig) -> None:
    """That the init run holds each model the run takes from it, of the same family and class count; every
    message names --init and what to do."""
    path = config.init
    for role in restored_roles(config):
        ours, theirs = model_of(config, role), model_of(init, role)
        if theirs is None:
            have = [r for r in ROLES if model_of(init, r) is not None]
            raise ConfigError(
                f"--init {path} is a '{init.mode}' run: it has no {role} to start this run's {role} from "
                f"(mode '{config.mode}'); start its {' or '.join(have)} instead (--mode {' or --mode '.join(have)})"
            )
        if ours.family != theirs.family:
            raise ConfigError(
                f"--init {path}: its {role} is a {theirs.family} model but this run's {role} is a {ours.family} "
                f"model: start from a run of the same family"
            )
        if ours.num_classes != theirs.num_classes:
            raise ConfigError(
                f"--init {path}: its {role} has {theirs.num_classes} classes but this run's {role} has "
                f"{ours.num_classes}: pass --num-classes {theirs.num_classes}, or start from a run with "
                f"{ours.num_classes} classes"
            )


def restore_init(models, config: TrainConfig) -> str:
    """Restores `models` (trainer.Models) from the init run's checkpoint, each model checked to have taken every
    weight; returns the checkpoint's path."""
    import tensorflow as tf

    from vidistill.distill.trainer import latest_checkpoint

    path = latest_checkpoint(config.init)
    saved = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
    parts = {role: getattr(models, role) for role in restored_roles(config)}
    if models.projection is not None and "projection" in saved:
        parts["projection"] = models.projection
    for role, model in parts.items():
        try:
            tf.train.Checkpoint(**{role: model}).restore(path).expect_partial().assert_existing_objects_matched()
        except (AssertionError, ValueError) as e:
            reason = " ".join(str(e).split())[:160]
            raise ConfigError(
                f"--init {config.init}: its {role}'s weights do not fit this run's {role} ({reason}...): start from "
                "a run of the same model configuration"
            ) from None
    return path
