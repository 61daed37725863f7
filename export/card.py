"""The model card: a JSON file beside every exported ONNX file (DIR/<precision>.json) saying what the file is.

It is the contract between export/ and bench/ (and any user's serving code): plain JSON, readable without
TensorFlow. bench/ reads the inputs, frames, FLOPs, tolerance and accuracy from it, and finds the fp32 reference
of a variant through `reference`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from vidistill.yt8m.files import atomic_write
from vidistill.yt8m.errors import ConfigError

CARD_VERSION = 1


@dataclass
class TensorSpec:
    name: str
    shape: list  # ints, or names of dynamic axes ("batch")
    dtype: str  # numpy dtype name: "float32", "int32"
    description: str = ""


@dataclass
class Tolerance:
    """How far a variant may be from the TF model (probabilities) and from fp32 (held-out GAP)."""

    max_abs: float  # largest |p_onnx - p_tf| over all videos and classes
    gap_drop: float  # largest allowed GAP(fp32 TF model) - GAP(this file), absolute (0.005 = half a GAP point)
    vs_reference: float | None = None  # against the fp32 file (bench); None: max_abs. QAT is retrained: looser

    def against_reference(self) -> float:
        return self.max_abs if self.vs_reference is None else self.vs_reference


@dataclass
class Parity:
    videos: int
    max_abs: float
    max_rel: float  # max |a - b| / max(|b|, 1e-3) over probabilities
    mean_abs: float
    passed: bool


@dataclass
class Accuracy:
    data: str  # the held-out file pattern
    videos: int
    hit_at_1: float
    perr: float
    gap: float
    map: float
    reference_gap: float | None = None  # the TF model's GAP on the same videos


@dataclass
class AtK:
    """An any-k file at one of its k's (ModelCard.at_k): its cost and its checks there."""

    flops_per_video: int
    weight_reads_per_video: int = 0
    parity: Parity | None = None
    accuracy: Accuracy | None = None

    @classmethod
    def from_dict(cls, data: dict) -> AtK:
        data = dict(data)
        for key, kind in (("parity", Parity), ("accuracy", Accuracy)):
            if data.get(key) is not None:
                data[key] = kind(**data[key])
        return cls(**data)


@dataclass
class ModelCard:
    precision: str  # fp32, fp16, bf16, int8-dynamic, int8-static, int8-qat
    file: str  # the ONNX file's name, relative to the card
    role: str  # "student", "teacher" or "ensemble"
    family: str
    frames: int  # T of the frames input: k for a student, the teacher's max frames for a teacher
    selection: dict | None  # {"policy", "seed", "k"} for a student (applied by the Predictor), None: all frames
    classes: int
    feature_sizes: dict  # {"rgb": 1024, "audio": 128}
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: int
    flops_per_video: int
    file_bytes: int
    opset: int
    tolerance: Tolerance
    reference: str | None = None  # the fp32 file this variant is compared with (None for fp32 itself)
    # weights read from memory per video at batch 1 (teachers.registry.model_weight_reads); 0: not recorded
    weight_reads_per_video: int = 0
    # an int8 file's largest weight integer: 127 (full range), 64 or 63 (7-bit, exact on x86 CPUs without VNNI);
    # 0: not an int8 file, or a card from before it was recorded
    int8_weight_levels: int = 0
    # the machine its parity and accuracy were measured on: {"cpu": model name, "provider", "int8_saturates": bool}
    checked_on: dict = field(default_factory=dict)
    parity: Parity | None = None
    accuracy: Accuracy | None = None
    model_config: dict = field(default_factory=dict)  # the backbone's ModelConfig as a dict
    source: str = ""  # where the model came from (run or student directory)
    notes: list[str] = field(default_factory=list)  # e.g. which ops were kept in float32
    versions: dict = field(default_factory=dict)
    created: str = ""
    card_version: int = CARD_VERSION
    # an any-k student's file: the k's it was trained and checked at ([]: one k, `frames`); its frames input takes
    # [batch, k, 1152] for each of them, and `at_k` holds its cost and checks at each ("10": at k=10). Then
    # `frames`, `selection`, the FLOPs and `accuracy` are the largest k's, and `parity` the worst over the k's
    frame_counts: list[int] = field(default_factory=list)
    at_k: dict[str, AtK] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def ks(self) -> tuple[int, ...]:
        """The k's this file runs at (a teacher's: its frames)."""
        return tuple(self.frame_counts) or (self.frames,)

    def for_k(self, k: int | None) -> ModelCard:
        """This card as the card of the file at k (None: as it is): frames, selection, FLOPs, weight reads, parity
        and accuracy at k. A ConfigError where the file was not trained at k."""
        if k is None or (not self.frame_counts and k == self.frames):
            return self
        if k not in self.frame_counts:
            trained = ", ".join(map(str, self.ks))
            what = "an any-k student trained at k =" if self.frame_counts else f"a {self.role} of k ="
            raise ConfigError(
                f"{self.file} is {what} {trained}; k={k} is not one of them: choose one of those"
                + ("" if self.frame_counts else " (or export an any-k student, trained with --frames K1,K2,...)")
            )
        at = self.at_k[str(k)]
        return dataclasses.replace(
            self,
            frames=k,
            selection={**self.selection, "k": k} if self.selection else None,
            flops_per_video=at.flops_per_video,
            weight_reads_per_video=at.weight_reads_per_video,
            parity=at.parity,
            accuracy=at.accuracy,
            frame_counts=[],
            at_k={},
        )

    @classmethod
    def from_dict(cls, data: dict) -> ModelCard:
        data = dict(data)
        if data.get("card_version") != CARD_VERSION:
            raise ConfigError(
                f"model card version {data.get('card_version')!r} is not {CARD_VERSION}: re-export the model"
            )
        data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
        data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
        data["tolerance"] = Tolerance(**data["tolerance"])
        for key, kind in (("parity", Parity), ("accuracy", Accuracy)):
            if data.get(key) is not None:
                data[key] = kind(**data[key])
        data["at_k"] = {str(k): AtK.from_dict(at) for k, at in data.get("at_k", {}).items()}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"model card has unknown fields {sorted(unknown)}")
        return cls(**data)


def card_path(onnx_path: str) -> str:
    """DIR/int8-dynamic.onnx -> DIR/int8-dynamic.json."""
    return os.path.splitext(onnx_path)[0] + ".json"


def write_card(card: ModelCard, path: str) -> str:
    with atomic_write(path) as f:
        json.dump(card.to_dict(), f, indent=2)
        f.write("\n")
    return path


def read_card(path: str) -> ModelCard:
    """The card of an ONNX file or SavedModel directory (pass the .onnx, the directory, or the .json path)."""
    path = card_path(path.rstrip("/")) if path.endswith(".onnx") or os.path.isdir(path) else path
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no model card {path}: export the model with `vidistill export` (it writes one per file)"
        )
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"model card {path} is not valid JSON ({e})") from None
    try:
        return ModelCard.from_dict(data)
    except (TypeError, KeyError, ValueError) as e:
        raise ConfigError(f"model card {path}: {e}") from None
