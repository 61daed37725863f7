"""The method on one screen: a Keras model whose train step trains a teacher, a student, or both.

mode      teacher                              student
parallel  trained with its own L_CE            L_CE + L_REP + L_PRED against the teacher of the same step
serial    frozen (a trained run), inference    L_CE + L_REP + L_PRED against the frozen teacher
teacher   trained with L_CE                    -
student   -                                    L_CE alone on its k frames (the paper's Uniform-k ... baselines)

The teacher's outputs enter the student's losses through tf.stop_gradient (inside LossWeights.student_loss):
student losses never update the teacher.

The student's classifier head in parallel / serial mode (LossWeights.head, resolved): "own" trains it with the
student; "teacher" makes it a frozen copy of the teacher's head, copied before and after every step (so that
checkpoints and evaluations always hold the copy of the teacher's current head); "probe" trains it alone with
L_CE on a stop-gradient of the student's representation.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from vidistill.distill.losses import LossWeights, cross_entropy


def _inputs(batch):
    return {"frames": batch["frames"], "num_frames": batch["num_frames"]}


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
    raise ValueError(f"model {model.name!r} has no classifier head (a layer named 'head')")


def _teacher_head_pairs(teacher: keras.Model, student: keras.Model) -> list[tuple[tf.Variable, tf.Variable]]:
    """(student head variable, teacher head variable) pairs, after checking that the teacher's head can read the
    student's representation."""
    t_width = teacher.output["representation"].shape[-1]
    s_width = student.output["representation"].shape[-1]
    hint = "; use loss.head 'probe' (a head trained on the student's own representation) or 'own'"
    if t_width != s_width:
        raise ValueError(
            f"loss.head 'teacher' needs the student's representation to have the teacher's width, but it is "
            f"{s_width} wide and the teacher's {t_width}{hint}"
        )
    t_vars, s_vars = classifier_head(teacher).weights, classifier_head(student).weights
    t_shapes = [tuple(v.shape) for v in t_vars]
    s_shapes = [tuple(v.shape) for v in s_vars]
    if t_shapes != s_shapes:
        raise ValueError(
            f"loss.head 'teacher' needs a student head of the teacher's shape (the same head config and classes), "
            f"but the teacher's variables are {t_shapes} and the student's {s_shapes}{hint}"
        )
    return list(zip(s_vars, t_vars))


class Distiller(keras.Model):
    def __init__(
        self,
        mode: str,
        teacher: keras.Model | None,
        student: keras.Model | None,
        loss_weights: LossWeights,
        projection: keras.layers.Layer | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.mode, self.teacher, self.student = mode, teacher, student
        self.loss_weights, self.projection = loss_weights, projection
        if mode == "serial":
            teacher.trainable = False
        self.head = loss_weights.resolved_head() if mode in ("parallel", "serial") else "own"
        pairs, probe = [], None
        if self.head == "teacher":
            pairs = _teacher_head_pairs(teacher, student)
            classifier_head(student).trainable = False
        elif self.head == "probe":
            probe = classifier_head(student)
        # set past Keras' attribute tracking: variables in a tracked list would become the Distiller's own
        # (trainable) weights
        object.__setattr__(self, "_head_pairs", tuple(pairs))  # (student variable, teacher variable)
        object.__setattr__(self, "_probe_head", probe)
        self.sync_head()

    def sync_head(self) -> None:
        """With loss.head "teacher": copies the teacher's head into the student's (a no-op otherwise). Works in
        a replica context (inside the train step, under any tf.distribute strategy) and outside one."""
        if not self._head_pairs:
            return

        def copy(*_):
            for student_variable, teacher_variable in self._head_pairs:
                student_variable.assign(teacher_variable.read_value())

        context = tf.distribute.get_replica_context()
        if context is None:  # cross-replica context: plain assignments update every replica
            copy()
        else:
            context.merge_call(copy)

    def call(self, batch, training=False):
        model = self.student if self.student is not None else self.teacher
        return model(_inputs(batch), training=training)

    def _loss_terms(self, batch, training: bool) -> dict:
        x, labels, weights = _inputs(batch), batch["labels"], batch.get("label_weights")
        logs = {}
        teacher_out = None
        if self.teacher is not None:
            teacher_out = self.teacher(x, training=training and self.mode in ("parallel", "teacher"))
            if self.mode in ("parallel", "teacher"):
                logs["teacher_ce"] = cross_entropy(labels, teacher_out["predictions"], weights)
        if self.student is not None:
            student_out = self.student(x, training=training)
            if self.mode == "student":
                logs["ce"] = cross_entropy(labels, student_out["predictions"], weights)
            else:
                representation = student_out["representation"]
                if self.projection is not None:
                    representation = self.projection(representation)
                projected = {"predictions": student_out["predictions"], "representation": representation}
                if self._probe_head is not None:  # the head learns from L_CE on a representation it cannot move
                    projected["probe_predictions"] = self._probe_head(
                        tf.stop_gradient(student_out["representation"]), training=training
                    )
                terms = self.loss_weights.student_loss(labels, teacher_out, projected, weights)
                logs.update({name: value for name, value in terms.items() if name != "total"})
                logs["student_total"] = terms["total"]
        return logs

    def _total(self, logs: dict) -> tf.Tensor:
        if self.mode == "student":
            total = logs["ce"]
        elif self.mode == "teacher":
            total = logs["teacher_ce"]
        else:
            total = logs["student_total"] + logs.get("teacher_ce", 0.0)
        regularization = [loss for m in (self.teacher, self.student) if m is not None and m.trainable for loss in m.losses]
        return total + tf.add_n(regularization) if regularization else total

    def train_step(self, batch):
        self.sync_head()  # loss.head "teacher": the student reads with the teacher's current head
        # each replica's loss is the mean over its share of the batch and the optimizer sums the replicas'
        # gradients: dividing by their number makes that the gradient of the global batch's mean, as on one device
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logs = self._loss_terms(batch, training=True)
            total = self._total(logs)
            scaled = total / replicas
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        if all(g is None for g in gradients):  # at trace time: a step that would silently train nothing
            raise ValueError(f"no trainable variable gets a gradient in mode {self.mode!r} with loss weights "
                             f"{self.loss_weights}: nothing would train; turn on a loss term that reaches the model")
        self.optimizer.apply_gradients((g, v) for g, v in zip(gradients, variables) if g is not None)
        self.sync_head()  # ... and holds the teacher's updated head when the step ends (checkpoints, evaluation)
        return {"loss": total, **logs}

    def test_step(self, batch):
        logs = self._loss_terms(batch, training=False)
        return {"loss": self._total(logs), **logs}
