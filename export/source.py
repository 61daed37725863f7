"""What is exported, described apart from how it is converted: the network, its inputs and outputs, and how a
whole video becomes those inputs.

The ONNX file of a student holds its BACKBONE, and takes the k selected frames ([batch, k, 1152]) rather than the
whole video. Why: a few-frame student's saving is that only k frames need to be decoded and have features
extracted at all; feeding all 300 would put that cost back into every deployment. The selection is a few
integer operations (students/selection_numpy.py, bit for bit the training-time op) that the `Predictor` runs on
the host. A teacher's file takes the whole video, padded to its `frames`.
"""

from __future__ import annotations

from dataclasses import dataclass

import tf_keras as keras

from vidistill.export.card import TensorSpec
from vidistill.students.student import StudentConfig
from vidistill.teachers.config import ModelConfig, config_to_dict
from vidistill.yt8m.constants import AUDIO_SIZE, FEATURE_SIZE, RGB_SIZE
from vidistill.yt8m.errors import ConfigError


@dataclass
class ExportSource:
    """A model ready to convert: `network` maps {"frames": [B, frames, 1152], "num_frames": [B]} to
    {"predictions", "representation"}; `full_model` is what the user trained and evaluates (for a student, the
    whole-video model with its frame selection inside; the reference for parity)."""

    network: keras.Model
    full_model: keras.Model
    config: ModelConfig  # the network's config
    role: str  # "student" or "teacher"
    selection: dict | None  # {"k", "policy", "seed"} for a student
    origin: str  # the run or student directory it came from

    @property
    def frames(self) -> int:
        return self.config.frames

    @property
    def classes(self) -> int:
        return self.config.num_classes

    @property
    def representation_width(self) -> int:
        return int(self.network.output["representation"].shape[-1])

    def inputs(self) -> list[TensorSpec]:
        what = (
            f"the {self.frames} frames chosen by the '{self.selection['policy']}' policy (Predictor does it), "
            "rows past num_frames zero"
            if self.selection
            else f"the whole video, padded with zero rows (or cut) to {self.frames} frames"
        )
        return [
            TensorSpec(
                "frames",
                ["batch", self.frames, FEATURE_SIZE],
                "float32",
                f"dequantized rgb ({RGB_SIZE}) then audio ({AUDIO_SIZE}) features: {what}",
            ),
            TensorSpec("num_frames", ["batch"], "int32", "real frames in each row of `frames` (0..frames)"),
        ]

    def outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec("predictions", ["batch", self.classes], "float32", "per-class probabilities"),
            TensorSpec("representation", ["batch", self.representation_width], "float32", "the representation E"),
        ]

    def model_config(self) -> dict:
        return config_to_dict(self.config)


def backbone_of(student: keras.Model) -> keras.Model:
    """The backbone inside a student model (students.student.build_student)."""
    inner = [layer for layer in student.layers if isinstance(layer, keras.Model)]
    if len(inner) != 1:
        raise ConfigError(f"{student.name} is not a student model (expected one backbone inside, found {len(inner)})")
    return inner[0]


def student_source(student: keras.Model, config: StudentConfig, origin: str) -> ExportSource:
    selection = {"k": config.k, "policy": config.policy, "seed": config.seed}
    return ExportSource(backbone_of(student), student, config.model, "student", selection, origin)


def teacher_source(teacher: keras.Model, config: ModelConfig, origin: str) -> ExportSource:
    return ExportSource(teacher, teacher, config, "teacher", None, origin)
