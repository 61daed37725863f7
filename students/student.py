"""Few-frame students: any family looking at k frames chosen by a selection policy, optionally narrower than
its teacher.

A student model takes the whole video ({"frames": [B, T, 1152], "num_frames": [B]}, any T), selects k of its
real frames (students/selection.py), and runs its backbone - a model of any family built for `frames = k` - on
them. It returns the backbone's {"predictions", "representation"}. The teacher and the student need not be of
the same family; when their representation widths differ, a `RepresentationProjection` maps E_S to E_T's width
so that L_REP can compare them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import tf_keras as keras

from vidistill.students.selection import POLICIES, FrameSelector
from vidistill.teachers.config import HLSTMConfig, ModelConfig, config_from_dict, config_to_dict, narrow
from vidistill.teachers.registry import build_model
from vidistill.yt8m.errors import ConfigError


@dataclass
class StudentConfig:
    """A backbone config built for k = model.frames frames, and how those frames are chosen."""

    model: ModelConfig
    policy: str = "uniform"
    seed: int = 0  # for the random policy

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = config_from_dict(self.model)
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown frame-selection policy {self.policy!r}; choose one of {', '.join(POLICIES)}")

    @property
    def k(self) -> int:
        return self.model.frames

    def to_dict(self) -> dict:
        return {"model": config_to_dict(self.model), "policy": self.policy, "seed": self.seed}

    def frames_to_decode(self, *, training: bool = False):
        """The reader's `select` for this student: its k frames, picked before decoding, bit for bit the frames
        its FrameSelector takes (which then passes them through unchanged). None where training draws `random`
        frames afresh each step: the selector must see the whole video."""
        if training and self.policy == "random":
            return None
        from vidistill.students.selection import frames_to_decode

        return frames_to_decode(self.k, self.policy, self.seed)

    @classmethod
    def from_dict(cls, data: dict) -> StudentConfig:
        from vidistill.teachers.config import from_fields

        return from_fields(cls, data, "student")


def default_chunks(k: int) -> int:
    """H-LSTM students: about sqrt(k) chunks of about sqrt(k) frames (k = 30 gives the paper's 5 chunks of 6)."""
    return max(1, min(k, round(math.sqrt(k))))


def student_config(
    base: ModelConfig,
    *,
    k: int,
    policy: str = "uniform",
    width: float = 1.0,
    num_classes: int | None = None,
    seed: int = 0,
) -> StudentConfig:
    """The student of `base` (usually the teacher's config): the same family at k frames, widths times `width`."""
    if k < 1:
        raise ConfigError(f"a student needs k >= 1 frames, got {k}")
    model = narrow(base, width) if width != 1.0 else base
    changes: dict = {"frames": k}
    if num_classes is not None:
        changes["num_classes"] = num_classes
    if isinstance(model, HLSTMConfig):
        changes["chunks"] = default_chunks(k)
    return StudentConfig(dataclasses.replace(model, **changes), policy=policy, seed=seed)


def width_for_parameters(base: ModelConfig, *, k: int, fraction: float, num_classes: int | None = None) -> float:
    """The width factor whose student (at k frames) has about `fraction` of the parameters of `base` at its own
    size (bisection on the built models' parameter counts)."""
    target = fraction * build_model(base).count_params()
    low, high = 0.01, 1.0
    for _ in range(12):
        middle = (low + high) / 2
        count = build_model(student_config(base, k=k, width=middle, num_classes=num_classes).model).count_params()
        low, high = (middle, high) if count < target else (low, middle)
    return round((low + high) / 2, 3)


def build_student(config: StudentConfig, name: str = "student") -> keras.Model:
    """Whole video in, k selected frames through the backbone, {"predictions", "representation"} out."""
    from vidistill.yt8m.constants import FEATURE_SIZE

    backbone = build_model(config.model, name=f"{name}_backbone")
    frames = keras.Input((None, FEATURE_SIZE), name="frames")
    num_frames = keras.Input((), dtype="int32", name="num_frames")
    selected, counts = FrameSelector(config.k, config.policy, seed=config.seed, name="select")(frames, num_frames)
    outputs = backbone({"frames": selected, "num_frames": counts})
    return keras.Model({"frames": frames, "num_frames": num_frames}, outputs, name=name)


class RepresentationProjection(keras.layers.Dense):
    """A learned linear map from the student's representation width to the teacher's (for L_REP)."""

    def __init__(self, teacher_width: int, **kwargs):
        super().__init__(teacher_width, use_bias=True, **kwargs)
