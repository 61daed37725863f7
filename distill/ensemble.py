"""Ensembles: several trained models as one, the YouTube-8M winners' way to their best scores.

An ensemble directory (`vidistill ensemble RUN... --out DIR`) holds `ensemble.yaml` (EnsembleConfig: the members and
their weights). It works wherever a run directory does as a model: eval, predict, teacher-outputs, export (one
ONNX graph, export/ensemble_graph.py), and as a serial run's frozen teacher (`--teacher-run DIR`, or
`--teacher-run RUN1,RUN2`: an ensemble of those runs with equal weights).

The ensemble model takes the whole video ({"frames" [B, T, 1152], "num_frames"}, T the longest member's input) and
gives each member its own first frames; it returns
- "predictions": sum_i w_i p_i, the members' probabilities weighted (weights normalized to sum 1);
- "representation": L_REP's target when the ensemble teaches: one member's representation (`representation: i`),
  or "all" of them concatenated, member i's scaled by sqrt(r_i) (`rep_weights`, normalized to sum 1). A student
  projects its representation to the concatenated width with one linear map, which is one projection per member
  side by side, and L_REP's squared distance over the concatenation is then sum_i r_i ||P_i s - e_i||^2: every
  teacher reached through its own projection, weighted.

A member is a run's teacher (its student when the run has none) or a converted student. A member whose prediction
weight is 0 is not built (`EnsembleConfig.pruned`), unless L_REP reads its representation.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import tensorflow as tf
import tf_keras as keras
import yaml

from vidistill.teachers.config import from_fields, read_mapping
from vidistill.teachers.registry import model_inputs
from vidistill.yt8m.errors import ConfigError
from vidistill.yt8m.files import atomic_write

ENSEMBLE_FILE = "ensemble.yaml"
GRID_STEPS = 10  # --fit-weights: weights on the simplex in steps of 1/10
MAX_GRID_POINTS = 5005  # (6 members at steps of 1/10: 3,003 points)


@dataclass
class EnsembleConfig:
    members: list[str] = field(default_factory=list)  # run directories (or converted students)
    weights: list[float] = field(default_factory=list)  # prediction weights (normalized); empty: equal
    representation: int | str = 0  # L_REP's target: a member's index, or "all" (see the module docstring)
    rep_weights: list[float] = field(default_factory=list)  # "all": each member's L_REP share; empty: equal
    fitted: dict = field(default_factory=dict)  # how the weights were fitted (--fit-weights), else empty

    def __post_init__(self) -> None:
        n = len(self.members)
        if n < 1:
            raise ConfigError("an ensemble needs at least one member run")
        for name in ("weights", "rep_weights"):
            values = getattr(self, name)
            if values and len(values) != n:
                raise ConfigError(f"ensemble {name}: {len(values)} values for {n} members")
            if values and (min(values) < 0 or sum(values) <= 0):
                raise ConfigError(f"ensemble {name} must be >= 0 with a positive sum, got {values}")
        if self.representation != "all" and not (isinstance(self.representation, int) and 0 <= self.representation < n):
            raise ConfigError(
                f"ensemble representation must be a member's index (0..{n - 1}) or 'all', got {self.representation!r}"
            )

    def pruned(self) -> EnsembleConfig:
        """The members that count, as an ensemble: a member of prediction weight 0 is dropped (it would run for
        nothing: the fitted weights often zero a few) unless L_REP reads its representation."""
        weights, rep_weights = self.normalized_weights, self.normalized_rep_weights
        if self.representation == "all":
            keep = [i for i in range(len(self.members)) if weights[i] > 0 or rep_weights[i] > 0]
        else:
            keep = [i for i in range(len(self.members)) if weights[i] > 0 or i == self.representation]
        if len(keep) == len(self.members):
            return self
        return EnsembleConfig(
            members=[self.members[i] for i in keep],
            weights=[weights[i] for i in keep],
            representation="all" if self.representation == "all" else keep.index(self.representation),
            rep_weights=[rep_weights[i] for i in keep] if self.representation == "all" else [],
            fitted=self.fitted,
        )

    @property
    def normalized_weights(self) -> list[float]:
        return _normalized(self.weights, len(self.members))

    @property
    def normalized_rep_weights(self) -> list[float]:
        return _normalized(self.rep_weights, len(self.members))


def _normalized(values: list[float], n: int) -> list[float]:
    values = values or [1.0] * n
    total = float(sum(values))
    return [float(v) / total for v in values]


def is_ensemble(path: str) -> bool:
    """A directory holding ensemble.yaml, or several runs separated by commas."""
    return "," in path or os.path.exists(os.path.join(path, ENSEMBLE_FILE))


def ensemble_config(path: str) -> EnsembleConfig:
    """The ensemble of an ensemble directory, or of comma-separated runs (equal weights)."""
    if "," in path:
        return EnsembleConfig(members=[p.strip() for p in path.split(",") if p.strip()])
    file = os.path.join(path, ENSEMBLE_FILE)
    data = read_mapping(file)
    try:
        config = from_fields(EnsembleConfig, data.get("ensemble", data), "ensemble")
    except ValueError as e:
        raise ConfigError(f"{file}: {e}") from None
    # members are stored relative to the ensemble directory where they lie below it... or as given
    config.members = [m if os.path.isabs(m) else os.path.normpath(os.path.join(path, m)) for m in config.members]
    return config


def save_ensemble(config: EnsembleConfig, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    data = asdict(config)
    data["members"] = [os.path.relpath(os.path.abspath(m), os.path.abspath(out_dir)) for m in config.members]
    path = os.path.join(out_dir, ENSEMBLE_FILE)
    with atomic_write(path) as f:
        yaml.safe_dump({"ensemble": data}, f, sort_keys=False)
    return path


class WeightedSum(keras.layers.Layer):
    """sum_i w_i x_i of same-shaped inputs (fixed weights, not trained)."""

    def __init__(self, weights: list[float], **kwargs):
        super().__init__(**kwargs)
        self.member_weights = [float(w) for w in weights]

    def call(self, inputs):
        return tf.add_n([w * x for w, x in zip(self.member_weights, inputs)])

    def get_config(self):
        return {**super().get_config(), "weights": self.member_weights}


class ScaledConcat(keras.layers.Layer):
    """[sqrt(r_1) x_1, ..., sqrt(r_n) x_n] along the last axis."""

    def __init__(self, weights: list[float], **kwargs):
        super().__init__(**kwargs)
        self.member_weights = [float(w) for w in weights]

    def call(self, inputs):
        return tf.concat([math.sqrt(w) * x for w, x in zip(self.member_weights, inputs)], axis=-1)

    def get_config(self):
        return {**super().get_config(), "weights": self.member_weights}


class FirstFrames(keras.layers.Layer):
    """(frames [B, T, D], num_frames) -> the first `frames` frames and min(num_frames, frames): a member's input."""

    def __init__(self, frames: int, **kwargs):
        super().__init__(**kwargs)
        self.frames = frames

    def call(self, frames, num_frames):
        return frames[:, : self.frames], tf.minimum(num_frames, self.frames)

    def get_config(self):
        return {**super().get_config(), "frames": self.frames}


@dataclass
class Member:
    path: str
    model: keras.Model
    which: str  # "teacher" or "student" (of its run), or "student" for a converted student
    frames: int  # its input length
    description: str


def member_shapes(config: EnsembleConfig) -> list[tuple[int, int]]:
    """(input frames, classes) of each member, from the configs alone (nothing built)."""
    from vidistill.distill.config import load_train_config
    from vidistill.students.convert import is_student_dir, load_student_config
    from vidistill.yt8m.constants import MAX_FRAMES

    shapes = []
    for path in config.members:
        if is_student_dir(path):
            shapes.append((MAX_FRAMES, load_student_config(path).model.num_classes))
            continue
        if not os.path.exists(os.path.join(path, "config.yaml")):
            raise FileNotFoundError(f"ensemble member {path} is neither a run directory nor a converted student")
        run = load_train_config(path)
        model = run.teacher if run.teacher is not None and run.mode.has_teacher else run.student.model
        frames = model.frames if model is run.teacher else run.data.max_frames  # a student takes whole videos
        shapes.append((frames, model.num_classes))
    return shapes


def load_members(config: EnsembleConfig) -> list[Member]:
    """Each member's model, restored, under a unique name; ConfigError when the class counts differ."""
    from vidistill.distill.config import load_train_config
    from vidistill.distill.runs import load_model
    from vidistill.students.convert import is_student_dir

    members = []
    for i, path in enumerate(config.members):
        if is_ensemble(path):
            raise ConfigError(f"ensemble member {path} is itself an ensemble: list its members instead")
        which = "auto"
        if not is_student_dir(path) and os.path.exists(os.path.join(path, "config.yaml")):
            run = load_train_config(path)
            which = "teacher" if run.teacher is not None and run.mode.has_teacher else "student"
        loaded = load_model(path, which)
        loaded.model._name = f"member_{i}"  # unique layer names inside the ensemble's functional model
        frames = int(loaded.model.input["frames"].shape[1] or loaded.max_frames)
        members.append(Member(path, loaded.model, loaded.which, frames, loaded.description))
        classes = int(loaded.model.output["predictions"].shape[-1])
        first = int(members[0].model.output["predictions"].shape[-1])
        if classes != first:
            raise ConfigError(
                f"ensemble members disagree on the classes: {config.members[0]} has {first}, {path} has {classes}"
            )
    return members


def build_ensemble(config: EnsembleConfig, members: list[Member] | None = None) -> keras.Model:
    """The ensemble as one Keras model (see the module docstring)."""
    members = members if members is not None else load_members(config)
    frames = max(m.frames for m in members)
    inputs = model_inputs(frames)
    predictions, representations = [], []
    for i, member in enumerate(members):
        x, n = inputs["frames"], inputs["num_frames"]
        if member.frames < frames:
            x, n = FirstFrames(member.frames, name=f"member_{i}_frames")(x, n)
        out = member.model({"frames": x, "num_frames": n})
        predictions.append(out["predictions"])
        representations.append(out["representation"])
    outputs = {"predictions": WeightedSum(config.normalized_weights, name="weighted_predictions")(predictions)}
    if config.representation == "all":
        outputs["representation"] = ScaledConcat(config.normalized_rep_weights, name="representations")(representations)
    else:
        outputs["representation"] = representations[config.representation]
    return keras.Model(inputs, outputs, name="ensemble")


def fit_weights(
    member_predictions: list[np.ndarray], labels: np.ndarray, *, steps: int = GRID_STEPS
) -> tuple[list[float], float]:
    """The weights on the simplex (in steps of 1/`steps`) whose weighted predictions have the highest GAP on
    `labels`; ties go to the point nearest equal weights. Returns (weights, GAP). An exhaustive grid: simple,
    deterministic, and at 1/10 steps within 0.05 of any optimum per weight."""
    from vidistill.yt8m.metrics import gap

    n = len(member_predictions)
    points = math.comb(steps + n - 1, n - 1)
    if points > MAX_GRID_POINTS:
        raise ConfigError(
            f"--fit-weights searches {points} weight combinations for {n} members (at most {MAX_GRID_POINTS}): "
            "give --weights instead, or fewer members"
        )
    equal = np.full(n, 1.0 / n)
    best, best_key = None, None
    for counts in _compositions(steps, n):
        w = np.asarray(counts, np.float64) / steps
        mixed = sum(wi * p for wi, p in zip(w, member_predictions))
        score = gap(mixed, labels)
        key = (round(score, 12), -float(np.abs(w - equal).sum()))
        if best_key is None or key > best_key:
            best, best_key = w, key
    return [float(w) for w in best], float(best_key[0])


def _compositions(total: int, parts: int):
    """Every tuple of `parts` non-negative integers summing to `total`."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total, -1, -1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)
