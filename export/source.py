"""What is exported, described apart from how it is converted: the network, its inputs and outputs, and how a
whole video becomes those inputs.

The ONNX file of a student holds its BACKBONE, and takes the k selected frames ([batch, k, 1152]) rather than the
whole video. Why: a few-frame student's saving is that only k frames need to be decoded and have features
extracted at all; feeding all 300 would put that cost back into every deployment. The selection is a few
integer operations (students/selection_numpy.py, bit for bit the training-time op) that the `Predictor` runs on
the host. A teacher's file takes the whole video, padded to its `frames`. An any-k student's file takes
[batch, k, 1152] for any k (the Predictor's `k=` chooses one of those it was trained at).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import tf_keras as keras

from vidistill.export.card import TensorSpec
from vidistill.students.student import StudentConfig, backbone_of, student_config
from vidistill.teachers.config import ModelConfig, config_to_dict
from vidistill.teachers.registry import model_flops, model_weight_reads
from vidistill.yt8m.constants import AUDIO_SIZE, FEATURE_SIZE, RGB_SIZE


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
    # an ensemble (distill/ensemble.py): its members' sources, each converted alone and joined into one graph
    # (export/ensemble_graph.py), and how: {"weights", "representation", "rep_weights"}; `network` is then the
    # Keras ensemble (the reference) and `config` holds only its classes and frames
    members: tuple[ExportSource, ...] = ()
    ensemble: dict | None = None
    # an any-k student's config (its k's: `frame_counts`); `network` then takes any number of frames
    student: StudentConfig | None = None

    @property
    def frame_counts(self) -> tuple[int, ...]:
        """An any-k student's k's (the file takes [batch, k, 1152] for each); () otherwise."""
        return self.student.ks if self.student is not None and self.student.any_k else ()

    @property
    def input_frames(self) -> int | None:
        """The frames input's length T: None (dynamic) for an any-k student, else `frames`."""
        return None if self.frame_counts else self.frames

    def at_k(self, k: int) -> ExportSource:
        """An any-k student's source at one of its k's: the same network, its selection and reference at k, and
        its FLOPs and weight reads there."""
        from vidistill.students.student import student_at

        return dataclasses.replace(
            self,
            full_model=student_at(self.full_model, self.student, k),
            config=student_config(self.config, k=self.student.check_k(k)).model,  # a k-student's (its chunking)
            selection={**self.selection, "k": k},
            student=None,
        )

    @property
    def family(self) -> str:
        return "ensemble" if self.members else self.config.family

    def flops(self) -> int:
        """FLOPs per video (teachers.registry.model_flops; an ensemble's, its members' sum)."""
        if self.members:
            return sum(member.flops() for member in self.members)
        return int(model_flops(self.config))

    def weight_reads(self, *, fused: bool) -> int:
        """Weights read per video at batch 1 (teachers.registry.model_weight_reads; an ensemble's, its members')."""
        if self.members:
            return sum(member.weight_reads(fused=fused) for member in self.members)
        return int(model_weight_reads(self.config, fused=fused))

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
        counts = self.frame_counts
        chosen = f"k (one of {', '.join(map(str, counts))})" if counts else str(self.frames)
        what = (
            f"the {chosen} frames chosen by the '{self.selection['policy']}' policy (Predictor does it), "
            "rows past num_frames zero"
            if self.selection
            else f"the whole video, padded with zero rows (or cut) to {self.frames} frames"
        )
        return [
            TensorSpec(
                "frames",
                ["batch", "k" if counts else self.frames, FEATURE_SIZE],
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
        if self.members:
            return {"family": "ensemble", **self.ensemble, "members": [m.model_config() for m in self.members]}
        return config_to_dict(self.config)


def student_source(student: keras.Model, config: StudentConfig, origin: str) -> ExportSource:
    selection = {"k": config.k, "policy": config.policy, "seed": config.seed}
    return ExportSource(backbone_of(student), student, config.model, "student", selection, origin, student=config)


def teacher_source(teacher: keras.Model, config: ModelConfig, origin: str) -> ExportSource:
    return ExportSource(teacher, teacher, config, "teacher", None, origin)


def ensemble_source(ensemble: keras.Model, members: list[ExportSource], how: dict, origin: str) -> ExportSource:
    """An ensemble of whole-video members (`teacher_source`s): `ensemble` the Keras model joining them, `how`
    its {"weights", "representation", "rep_weights"} (normalized)."""
    frames = int(ensemble.input["frames"].shape[1])
    classes = int(ensemble.output["predictions"].shape[-1])
    config = ModelConfig(num_classes=classes, frames=frames)
    return ExportSource(ensemble, ensemble, config, "ensemble", None, origin, tuple(members), dict(how))
