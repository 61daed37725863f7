"""What the distilled student's classifier head learns from (loss.head, resolved): one policy object per choice.

own      the head trains with the student, by whichever terms are on (nothing to do)
teacher  the head is a frozen copy of the teacher's, copied before and after every step and after a restore
         (so checkpoints and evaluations always hold the teacher's current head)
probe    the head alone trains, with L_CE on a stop-gradient of the student's representation (its own term,
         "head_ce")

The Distiller calls `student_outputs` on the student's outputs, `before_step` / `after_step` around each
training step and `after_restore` when weights change outside a step (a resumed run, averaged checkpoints), and
adds the policy's `terms` to the run's loss.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from vidistill.distill.terms import LossTerm, ProbeCrossEntropy
from vidistill.yt8m.errors import ConfigError

__all__ = ["HEAD_POLICIES", "HeadPolicy", "OwnHead", "ProbeHead", "TeacherHead", "classifier_head", "head_policy"]


def classifier_head(model: keras.Model) -> keras.layers.Layer:
    """The classifier head (the layer named "head") of a model from build_model, or of a student from
    build_student (inside its backbone)."""
    for layer in model.layers:
        if layer.name == "head":
            return layer
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            try:
                return classifier_head(layer)
            except ValueError:
                pass
    raise ConfigError(f"model {model.name!r} has no classifier head (a layer named 'head')")


class HeadPolicy:
    """The "own" policy, and the hooks every policy has (all no-ops here)."""

    name = "own"

    def __init__(self, teacher: keras.Model | None, student: keras.Model | None):
        pass

    @classmethod
    def terms(cls) -> list[LossTerm]:
        """Loss terms the policy adds to the run's."""
        return []

    def student_outputs(self, outputs: dict, training: bool) -> dict:
        """The student's outputs as the loss terms see them."""
        return outputs

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_restore(self) -> None:
        pass


OwnHead = HeadPolicy


class TeacherHead(HeadPolicy):
    """The student's head is a frozen copy of the teacher's; needs a student whose representation has the
    teacher's width and whose head has the teacher's shape (a ValueError naming the alternatives otherwise)."""

    name = "teacher"

    def __init__(self, teacher: keras.Model, student: keras.Model):
        t_width = teacher.output["representation"].shape[-1]
        s_width = student.output["representation"].shape[-1]
        hint = "; use loss.head 'probe' (a head trained on the student's own representation) or 'own'"
        if t_width != s_width:
            raise ConfigError(
                f"loss.head 'teacher' needs the student's representation to have the teacher's width, but it is "
                f"{s_width} wide and the teacher's {t_width}{hint}"
            )
        t_vars, s_vars = classifier_head(teacher).weights, classifier_head(student).weights
        t_shapes = [tuple(v.shape) for v in t_vars]
        s_shapes = [tuple(v.shape) for v in s_vars]
        if t_shapes != s_shapes:
            raise ConfigError(
                f"loss.head 'teacher' needs a student head of the teacher's shape (the same head config and "
                f"classes), but the teacher's variables are {t_shapes} and the student's {s_shapes}{hint}"
            )
        classifier_head(student).trainable = False
        self.pairs = tuple(zip(s_vars, t_vars))  # (student variable, teacher variable)
        self.copy()

    def copy(self) -> None:
        """Copies the teacher's head into the student's. Works in a replica context (inside the train step,
        under any tf.distribute strategy) and outside one."""

        def assign(*_):
            for student_variable, teacher_variable in self.pairs:
                student_variable.assign(teacher_variable.read_value())

        context = tf.distribute.get_replica_context()
        if context is None:  # cross-replica context: plain assignments update every replica
            assign()
        else:
            context.merge_call(assign)

    before_step = after_step = after_restore = copy


class ProbeHead(HeadPolicy):
    """The student's head reads a stop-gradient of the student's representation ("probe_predictions") and is
    trained by its own L_CE ("head_ce", weight 1)."""

    name = "probe"

    def __init__(self, teacher: keras.Model | None, student: keras.Model):
        self.head = classifier_head(student)

    @classmethod
    def terms(cls) -> list[LossTerm]:
        return [ProbeCrossEntropy(1.0)]

    def student_outputs(self, outputs: dict, training: bool) -> dict:
        probe = self.head(tf.stop_gradient(outputs["representation"]), training=training)
        return {**outputs, "probe_predictions": probe}


HEAD_POLICIES: dict[str, type[HeadPolicy]] = {"own": OwnHead, "teacher": TeacherHead, "probe": ProbeHead}


def head_policy(name: str, teacher: keras.Model | None, student: keras.Model | None) -> HeadPolicy:
    """The policy named `name` ("own", "teacher" or "probe": LossWeights.resolved_head)."""
    if name not in HEAD_POLICIES:
        raise ConfigError(f"loss.head must be one of {', '.join(HEAD_POLICIES)}, got {name!r}")
    return HEAD_POLICIES[name](teacher, student)
