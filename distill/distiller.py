"""The method on one screen: a Keras model whose train step trains a teacher, a student, or both.

mode      teacher                              student
parallel  trained with its own L_CE            L_CE + L_REP + L_PRED against the teacher of the same step
serial    frozen (a trained run), inference    L_CE + L_REP + L_PRED against the frozen teacher
teacher   trained with L_CE                    -
student   -                                    L_CE alone on its k frames (the paper's Uniform-k ... baselines)

The teacher's outputs enter the student's losses through tf.stop_gradient (inside LossWeights.student_loss):
student losses never update the teacher.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from distill.losses import LossWeights, cross_entropy


def _inputs(batch):
    return {"frames": batch["frames"], "num_frames": batch["num_frames"]}


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
        with tf.GradientTape() as tape:
            logs = self._loss_terms(batch, training=True)
            total = self._total(logs)
        variables = self.trainable_variables
        gradients = tape.gradient(total, variables)
        self.optimizer.apply_gradients((g, v) for g, v in zip(gradients, variables) if g is not None)
        return {"loss": total, **logs}

    def test_step(self, batch):
        logs = self._loss_terms(batch, training=False)
        return {"loss": self._total(logs), **logs}
