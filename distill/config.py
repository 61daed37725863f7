"""The full, typed configuration of a training run; saved as RUN/config.yaml, from which a run can always
rebuild its models."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import yaml

from vidistill.distill.losses import LossWeights
from vidistill.distill.modes import Mode
from vidistill.students.student import StudentConfig
from vidistill.teachers.config import (
    ModelConfig,
    check_range,
    config_from_dict,
    config_to_dict,
    from_fields,
    read_mapping,
)
from vidistill.yt8m.constants import SEGMENT_FRAMES
from vidistill.yt8m.files import atomic_write
from vidistill.yt8m.errors import ConfigError

MODES = tuple(mode.value for mode in Mode)


@dataclass
class DataConfig:
    train: str = ""  # glob(s) of frame-level training records
    eval: str = ""  # glob(s) of held-out records ("" = no periodic evaluation)
    max_frames: int = 300  # frames read per video (the models' input length, except in a segments run)
    batch_size: int = 32
    eval_batch_size: int = 64
    shuffle_buffer: int = 256  # videos (a full-length video is 1.4 MB of float32 frames)
    eval_videos: int = 0  # held-out videos per periodic evaluation (0 = all; a segments run: every rated segment)
    skip_bad_records: bool = False  # skip (print and count) bad records instead of stopping at the first
    deterministic: bool = False  # the same batches in the same order on every run (reproducible; a slower reader)
    # train on the rated 5-frame segments of 2019-style records, only the rated classes in the loss (their label
    # weights); evaluate segment MAP. The models take one segment (distill/segments.py)
    segments: bool = False


@dataclass
class OptimizerConfig:
    """Adam with per-variable gradient clipping and exponential learning-rate decay (the official defaults)."""

    learning_rate: float = 1e-3
    decay_rate: float = 0.95
    decay_steps: int = 1000
    clip_norm: float = 1.0


@dataclass
class TrainConfig:
    mode: Mode = Mode.PARALLEL
    teacher: ModelConfig | None = None
    student: StudentConfig | None = None
    teacher_run: str = ""  # serial mode (and optional for finetune): a trained teacher's run directory
    # serial mode: the teacher's outputs stored for every training video (`vidistill teacher-outputs`), read
    # instead of running the teacher (built only where loss.head "teacher" needs its head)
    teacher_outputs: str = ""
    init_student: str = ""  # finetune: a converted student directory to start from
    init: str = ""  # a run directory whose weights (best checkpoint, else last) start this run's models
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossWeights = field(default_factory=LossWeights)  # the student's loss weights (distill/losses.py)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    steps: int = 1000
    checkpoint_every: int = 100  # steps; a killed run loses at most this many
    keep_checkpoints: int = 3
    eval_every: int = 500  # steps (rounded to checkpoint intervals); 0 = only at the end
    average_last: int = 0  # > 0: also save the average of the last N checkpoints (SWA)
    mixed_precision: bool = False  # bfloat16 compute, float32 variables
    seed: int = 0

    def __post_init__(self) -> None:
        self.mode = Mode.parse(self.mode)
        if isinstance(self.teacher, dict):
            self.teacher = config_from_dict(self.teacher)
        if isinstance(self.student, dict):
            self.student = StudentConfig.from_dict(self.student)
        for name, cls in (("data", DataConfig), ("loss", LossWeights), ("optimizer", OptimizerConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, from_fields(cls, getattr(self, name), f"train.{name}"))

    def resolve(self) -> TrainConfig:
        """Resolves loss.head "auto" (LossWeights.resolved_head) in parallel and serial mode, so that
        config.yaml records the head a run used; returns self."""
        if Mode.parse(self.mode).distills:
            self.loss.head = self.loss.resolved_head()
        return self

    def validate(self) -> None:
        """Checks that the run can start (and resolves loss.head "auto"); every message names the option to fix."""
        self.mode = Mode.parse(self.mode)  # also when set after construction
        self.resolve()
        if self.mode.distills:
            from vidistill.distill.terms import student_terms

            student_terms(self.loss)  # every name under loss.extra is a registered term
        ensemble = bool(self.teacher_run) and self.mode.restores_teacher and _is_ensemble(self.teacher_run)
        if ensemble and self.loss.resolved_head() == "teacher":
            raise ConfigError(
                "loss.head 'teacher' copies the teacher's classifier head, and an ensemble has several: use "
                "loss.head 'own' or 'probe' (or turn on loss.ce / loss.pred)"
            )
        if ensemble and self.data.segments:
            raise ConfigError("a segments run takes one teacher: an ensemble teacher is for whole videos")
        if self.mode.has_teacher and self.teacher is None and not ensemble:
            raise ConfigError(f"mode '{self.mode}' needs a teacher (--teacher PRESET|CONFIG, or --teacher-run RUN)")
        if self.mode.has_student and self.student is None:
            raise ConfigError(f"mode '{self.mode}' needs a student (--student PRESET|CONFIG or --frames K)")
        if self.teacher_outputs and not self.mode.restores_teacher:
            raise ConfigError(
                f"teacher_outputs replace the frozen teacher of a serial run; mode '{self.mode}' "
                f"{'trains' if self.mode.trains_teacher else 'has no'} teacher: use --mode serial, or drop them"
            )
        if self.teacher_outputs and self.data.segments:
            raise ConfigError("teacher outputs are per video: a segments run (data.segments) needs the live teacher")
        if self.mode.restores_teacher and not self.teacher_run:
            raise ConfigError("mode 'serial' trains against a frozen, trained teacher: pass --teacher-run RUN")
        if not self.data.train:
            raise ConfigError("no training data: pass --data PATTERN (or data.train in the config file)")
        if self.teacher and self.student and self.teacher.num_classes != self.student.model.num_classes:
            raise ConfigError(
                f"teacher has {self.teacher.num_classes} classes but the student {self.student.model.num_classes}"
            )
        counts = {
            "steps": self.steps,
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints,
            "data.batch_size": self.data.batch_size,
            "data.eval_batch_size": self.data.eval_batch_size,
            "data.shuffle_buffer": self.data.shuffle_buffer,
            "data.max_frames": self.data.max_frames,
            "optimizer.decay_steps": self.optimizer.decay_steps,
        }
        for name, value in counts.items():
            check_range(name, value, ">= 1")
        for name, value in {
            "eval_every": self.eval_every,
            "average_last": self.average_last,
            "data.eval_videos": self.data.eval_videos,
            "seed": self.seed,
        }.items():
            check_range(name, value, ">= 0")
        for name, value in {
            "optimizer.learning_rate": self.optimizer.learning_rate,
            "optimizer.decay_rate": self.optimizer.decay_rate,
            "optimizer.clip_norm": self.optimizer.clip_norm,
        }.items():
            check_range(name, value, "> 0")
        if self.init and self.init_student:
            raise ConfigError("init (a run) and init_student (a converted student) both start the models: pass one")
        if self.data.segments and self.student is not None and self.student.any_k:
            raise ConfigError(
                "data.segments: an any-k student is for whole videos (a segment has 5 frames); train one k"
            )
        if self.data.segments:
            # videos are read at data.max_frames; the models take one 5-frame segment, padded to their length
            if self.teacher and self.teacher.frames < SEGMENT_FRAMES:
                raise ConfigError(
                    f"data.segments: the teacher takes {self.teacher.frames} frames, fewer than a segment's "
                    f"{SEGMENT_FRAMES}: build it for {SEGMENT_FRAMES} (distill/segments.py: segment_model_config)"
                )
        elif self.teacher and self.teacher.frames != self.data.max_frames:
            raise ConfigError(
                f"the teacher takes {self.teacher.frames} frames but data.max_frames is {self.data.max_frames}: "
                "set them equal"
            )

    @property
    def num_classes(self) -> int:
        model = self.teacher or self.student.model
        return model.num_classes

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["mode"] = Mode.parse(self.mode).value
        data["teacher"] = config_to_dict(self.teacher) if self.teacher else None
        data["student"] = self.student.to_dict() if self.student else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return from_fields(cls, data, "train")


def _is_ensemble(path: str) -> bool:
    from vidistill.distill.ensemble import is_ensemble

    return is_ensemble(path)


def save_train_config(config: TrainConfig, run_dir: str) -> str:
    path = os.path.join(run_dir, "config.yaml")
    with atomic_write(path) as f:
        yaml.safe_dump({"train": config.to_dict()}, f, sort_keys=False)
    return path


def load_train_config(path_or_run: str) -> TrainConfig:
    """A config file, or a run directory's config.yaml."""
    path = os.path.join(path_or_run, "config.yaml") if os.path.isdir(path_or_run) else path_or_run
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {path_or_run!r} a run directory or a config file?")
    data = read_mapping(path)
    try:
        return TrainConfig.from_dict(data.get("train", data))
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
