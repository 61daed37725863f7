"""Loss terms as parts: each term is a small object (a name, a weight, a function, what it reads from the teacher
and the student) and the Distiller sums the terms of its run.

A term reads a :class:`LossInputs`: the labels, and the teacher's and the student's outputs ("predictions",
"representation", plus "probe_predictions" with the probe head policy). ``trains`` says whose loss it is:
"student" terms see the teacher's outputs through ``tf.stop_gradient`` (a student loss never updates the
teacher), "teacher" terms see them live. A term with weight 0 is logged as 0.0 and never computed, so the
outputs it needs may be absent.

Adding a term: subclass :class:`LossTerm` (``name``, ``needs``, ``compute``), register it with
:func:`register_loss_term`, and give it a weight in the run's config (``loss.extra: {name: weight}``). The
built-in terms (L_CE, L_REP, L_PRED) take their weights from ``loss.ce / rep / pred`` (:class:`LossWeights`).

A model can call for terms of its own: for every model of the run that trains and is a MixNeXtVLAD (teachers/
mixture.py: its outputs "branch_logits" and "mixture_logits"), :func:`terms_for` adds its on-the-fly distillation,
"branch_ce" (sum of the branches' L_CE) and "branch_kl" (T^2 sum_m KL(mixture || branch m)), "teacher_branch_ce" /
"teacher_branch_kl" for the teacher, with the weights and temperature of its model config (not in ``loss.extra``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import ClassVar

import tensorflow as tf

from vidistill.distill.losses import (
    PREDICTION_LOSSES,
    LossWeights,
    cross_entropy,
    prediction_binary,
    representation_loss,
)
from vidistill.distill.modes import Mode
from vidistill.teachers.mixture import mixture_of
from vidistill.yt8m.errors import ConfigError

__all__ = [
    "LOSS_TERMS",
    "BranchCrossEntropy",
    "BranchDistillation",
    "CrossEntropy",
    "LossInputs",
    "LossTerm",
    "Prediction",
    "ProbeCrossEntropy",
    "Representation",
    "TeacherBranchCrossEntropy",
    "TeacherBranchDistillation",
    "TeacherCrossEntropy",
    "mixture_terms",
    "register_loss_term",
    "student_terms",
    "terms_for",
    "weighted_sum",
]


@dataclasses.dataclass(frozen=True)
class LossInputs:
    """What a term reads. `teacher` / `student`: output mappings (None where the run has no such model)."""

    labels: tf.Tensor
    teacher: Mapping[str, tf.Tensor] | None = None
    student: Mapping[str, tf.Tensor] | None = None
    label_weights: tf.Tensor | None = None  # [B, C] (segment training), passed to L_CE

    def with_frozen_teacher(self) -> LossInputs:
        """The same inputs with every teacher output wrapped in tf.stop_gradient."""
        if self.teacher is None:
            return self
        return dataclasses.replace(self, teacher={k: tf.stop_gradient(v) for k, v in self.teacher.items()})

    def get(self, need: str):
        """An input by its `needs` name: "labels", or "teacher.KEY" / "student.KEY" (None when absent)."""
        if need == "labels":
            return self.labels
        side, _, key = need.partition(".")
        outputs = getattr(self, side)
        return None if outputs is None else outputs.get(key)


class LossTerm:
    """One weighted term of a run's loss. Subclasses set `name` (the log key), `needs` (the inputs it reads:
    "labels", "teacher.predictions", "student.representation", ...) and `compute` (a float32 scalar, the batch
    mean); `trains` is "student" (default) or "teacher"."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    trains: ClassVar[str] = "student"
    hint: ClassVar[str] = ""  # said when a needed input is missing

    def __init__(self, weight: float = 1.0):
        self.weight = float(weight)

    def compute(self, inputs: LossInputs) -> tf.Tensor:
        raise NotImplementedError

    def check(self, inputs: LossInputs) -> None:
        """ValueError naming the term and the inputs it needs that `inputs` lacks."""
        missing = sorted(need for need in self.needs if inputs.get(need) is None)
        if missing:
            raise ConfigError(
                f"loss term {self.name!r} needs {', '.join(missing)}, which this run does not give it{self.hint}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight:g})"


LOSS_TERMS: dict[str, type[LossTerm]] = {}


def register_loss_term(cls: type[LossTerm]) -> type[LossTerm]:
    """Class decorator: makes a term available by its `name` in `loss.extra`."""
    if not cls.name:
        raise ConfigError(f"{cls.__name__} has no name")
    if cls.name in LOSS_TERMS and LOSS_TERMS[cls.name] is not cls:
        raise ConfigError(f"a loss term named {cls.name!r} is already registered ({LOSS_TERMS[cls.name].__name__})")
    LOSS_TERMS[cls.name] = cls
    return cls


# ------------------------------------------------------------------------------------------------ built-in terms
class CrossEntropy(LossTerm):
    """L_CE: the official YouTube-8M loss of the student's predictions."""

    name = "ce"
    needs = frozenset({"labels", "student.predictions"})

    def compute(self, inputs: LossInputs) -> tf.Tensor:
        return cross_entropy(inputs.labels, inputs.student["predictions"], label_weights=inputs.label_weights)


class TeacherCrossEntropy(LossTerm):
    """The teacher's own L_CE (parallel and teacher modes); the only term that trains the teacher."""

    name = "teacher_ce"
    needs = frozenset({"labels", "teacher.predictions"})
    trains = "teacher"

    def compute(self, inputs: LossInputs) -> tf.Tensor:
        return cross_entropy(inputs.labels, inputs.teacher["predictions"], label_weights=inputs.label_weights)


class Representation(LossTerm):
    """L_REP: squared L2 distance between the teacher's and the (projected) student's representations."""

    name = "rep"
    needs = frozenset({"teacher.representation", "student.representation"})

    def compute(self, inputs: LossInputs) -> tf.Tensor:
        return representation_loss(inputs.teacher["representation"], inputs.student["representation"])


class Prediction(LossTerm):
    """L_PRED: the student's predictions against the teacher's ("kl", the paper's, or "binary")."""

    name = "pred"
    needs = frozenset({"teacher.predictions", "student.predictions"})

    def __init__(self, weight: float = 1.0, kind: str = "kl", temperature: float = 1.0):
        super().__init__(weight)
        self.kind, self.temperature = kind, temperature

    def compute(self, inputs: LossInputs) -> tf.Tensor:
        teacher, student = inputs.teacher["predictions"], inputs.student["predictions"]
        if self.kind == "binary":
            return prediction_binary(teacher, student, self.temperature)
        return PREDICTION_LOSSES[self.kind](teacher, student)


class ProbeCrossEntropy(LossTerm):
    """L_CE of the student's head applied to a stop-gradient of its representation (head policy "probe"): it
    trains the head and nothing else."""

    name = "head_ce"
    needs = frozenset({"labels", "student.probe_predictions"})
    hint = ' (head "probe": student outputs need "probe_predictions", the head on a stop-gradient of E_S)'

    def compute(self, inputs: LossInputs) -> tf.Tensor:
        return cross_entropy(inputs.labels, inputs.student["probe_predictions"], label_weights=inputs.label_weights)


# ------------------------------------------------------------------------------------------------ mixture terms
def _f32(x) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


class BranchCrossEntropy(LossTerm):
    """A MixNeXtVLAD student's branches on the labels: sum_m L_CE(labels, sigmoid(z_m)), the official loss of each
    branch's probabilities (label weights as L_CE's); the mixture's own L_CE is "ce" (teachers/mixture.py)."""

    name = "branch_ce"
    side: ClassVar[str] = "student"  # whose "branch_logits" [B, M, C]
    needs = frozenset({"labels", "student.branch_logits"})

    def compute(self, inputs: LossInputs) -> tf.Tensor:
        logits = _f32(inputs.get(f"{self.side}.branch_logits"))
        branches = [tf.sigmoid(z) for z in tf.unstack(logits, axis=1)]
        return tf.add_n([cross_entropy(inputs.labels, p, label_weights=inputs.label_weights) for p in branches])


class BranchDistillation(LossTerm):
    """A MixNeXtVLAD student's on-the-fly distillation: T^2 mean_b sum_m KL(softmax(z_mix / T) || softmax(z_m / T))
    over the classes, z_mix through a stop-gradient (the mixture teaches its branches; the gate learns from the
    mixture's L_CE alone); 0 when every branch has the mixture's logits."""

    name = "branch_kl"
    side: ClassVar[str] = "student"
    needs = frozenset({"student.branch_logits", "student.mixture_logits"})

    def __init__(self, weight: float = 1.0, temperature: float = 3.0):
        super().__init__(weight)
        if not 0 < temperature < float("inf"):
            raise ConfigError(f"loss term {self.name!r}: temperature must be a finite number > 0, got {temperature}")
        self.temperature = float(temperature)

    def compute(self, inputs: LossInputs) -> tf.Tensor:
        t = self.temperature
        branches = _f32(inputs.get(f"{self.side}.branch_logits")) / t  # [B, M, C]
        mixture = tf.stop_gradient(_f32(inputs.get(f"{self.side}.mixture_logits"))) / t  # [B, C]
        log_q = tf.nn.log_softmax(mixture, axis=-1)[:, None, :]
        per_branch = tf.reduce_sum(tf.exp(log_q) * (log_q - tf.nn.log_softmax(branches, axis=-1)), axis=-1)
        return t**2 * tf.reduce_mean(tf.reduce_sum(per_branch, axis=1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight:g}, temperature={self.temperature:g})"


class TeacherBranchCrossEntropy(BranchCrossEntropy):
    """The "branch_ce" of a MixNeXtVLAD teacher that trains (teacher and parallel modes)."""

    name = "teacher_branch_ce"
    side = "teacher"
    needs = frozenset({"labels", "teacher.branch_logits"})
    trains = "teacher"


class TeacherBranchDistillation(BranchDistillation):
    """The "branch_kl" of a MixNeXtVLAD teacher that trains (teacher and parallel modes)."""

    name = "teacher_branch_kl"
    side = "teacher"
    needs = frozenset({"teacher.branch_logits", "teacher.mixture_logits"})
    trains = "teacher"


def mixture_terms(mode: Mode | str, teacher=None, student=None) -> list[LossTerm]:
    """The on-the-fly distillation terms of each model of the run that trains and is a MixNeXtVLAD (the teacher in
    teacher and parallel modes, the student in every mode that has one), weighted as its config says."""
    mode = Mode.parse(mode)
    terms: list[LossTerm] = []
    sides = (
        (teacher, mode.trains_teacher, TeacherBranchCrossEntropy, TeacherBranchDistillation),
        (student, mode.has_student, BranchCrossEntropy, BranchDistillation),
    )
    for model, trains, branch_ce, branch_kl in sides:
        config = mixture_of(model) if model is not None and trains else None
        if config is not None:
            terms += [branch_ce(config.branch_weight), branch_kl(config.kl_weight, config.temperature)]
    return terms


# ------------------------------------------------------------------------------------------------ a run's terms
def student_terms(weights: LossWeights) -> list[LossTerm]:
    """The distilled student's terms: L_CE, L_REP, L_PRED (weights from `weights`, zero-weight ones included so
    that they are logged) and the registered terms of `weights.extra`. (The head policy adds its own: see
    distill/heads.py.)"""
    terms: list[LossTerm] = [
        CrossEntropy(weights.ce),
        Representation(weights.rep),
        Prediction(weights.pred, weights.pred_kind, weights.temperature),
    ]
    for name, weight in weights.extra.items():
        if name not in LOSS_TERMS:
            raise ConfigError(f"loss.extra: no loss term named {name!r}; registered: {sorted(LOSS_TERMS)}")
        terms.append(LOSS_TERMS[name](weight))
    return terms


def terms_for(mode: Mode | str, weights: LossWeights, *, teacher=None, student=None) -> list[LossTerm]:
    """Every term of a run in `mode`: the teacher's L_CE when it trains, the student's L_CE alone in student mode,
    :func:`student_terms` when the student is distilled, and, given the run's models (Keras models), the terms they
    call for (:func:`mixture_terms`)."""
    mode = Mode.parse(mode)
    terms: list[LossTerm] = [TeacherCrossEntropy(1.0)] if mode.trains_teacher else []
    if mode is Mode.STUDENT:
        terms.append(CrossEntropy(1.0))
    elif mode.distills:
        terms.extend(student_terms(weights))
    return terms + mixture_terms(mode, teacher, student)


def weighted_sum(terms: Iterable[LossTerm], inputs: LossInputs) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """({term name: value}, {"student": sum of weight * value of the student terms, "teacher": the same of the
    teacher terms}). "student" terms read the teacher through stop_gradient; a zero-weight term is 0.0 and not
    computed."""
    zero = tf.constant(0.0, tf.float32)
    frozen = inputs.with_frozen_teacher()
    values, totals = {}, {"student": zero, "teacher": zero}
    for term in terms:
        if term.weight == 0:
            values[term.name] = zero
            continue
        term_inputs = inputs if term.trains == "teacher" else frozen
        term.check(term_inputs)
        values[term.name] = value = term.compute(term_inputs)
        totals[term.trains] = totals[term.trains] + term.weight * value
    return values, totals
