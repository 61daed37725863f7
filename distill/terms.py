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
from vidistill.yt8m.errors import ConfigError

__all__ = [
    "LOSS_TERMS",
    "CrossEntropy",
    "LossInputs",
    "LossTerm",
    "Prediction",
    "ProbeCrossEntropy",
    "Representation",
    "TeacherCrossEntropy",
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


def terms_for(mode: Mode | str, weights: LossWeights) -> list[LossTerm]:
    """Every term of a run in `mode`: the teacher's L_CE when it trains, the student's L_CE alone in student mode,
    and :func:`student_terms` when the student is distilled."""
    mode = Mode.parse(mode)
    terms: list[LossTerm] = [TeacherCrossEntropy(1.0)] if mode.trains_teacher else []
    if mode is Mode.STUDENT:
        terms.append(CrossEntropy(1.0))
    elif mode.distills:
        terms.extend(student_terms(weights))
    return terms


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
