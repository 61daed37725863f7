"""The method on one screen: a Keras model whose train step trains a teacher, a student, or both.

mode      teacher                              student
parallel  trained with its own L_CE            L_CE + L_REP + L_PRED against the teacher of the same step
serial    frozen (a trained run), inference    L_CE + L_REP + L_PRED against the frozen teacher
teacher   trained with L_CE                    -
student   -                                    L_CE alone on its k frames (the paper's Uniform-k ... baselines)

The loss is a list of terms (distill/terms.py: name, weight, function, what it reads), summed; "student" terms
read the teacher's outputs through tf.stop_gradient, so student losses never update the teacher. A model that
trains and is a MixNeXtVLAD adds its own terms (its branches' L_CE and their on-the-fly KL to the mixture). What the
distilled student's classifier head learns from is a head policy (distill/heads.py: own / teacher / probe) with
hooks around every step.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from vidistill.distill.heads import HeadPolicy, classifier_head, head_policy
from vidistill.distill.losses import LossWeights
from vidistill.distill.modes import Mode
from vidistill.distill.terms import LossInputs, LossTerm, Prediction, terms_for, weighted_sum
from vidistill.yt8m.errors import ConfigError
from vidistill.yt8m.quantize import dequantize_frames

__all__ = ["Distiller", "classifier_head"]


def _inputs(batch):
    """The models' inputs; uint8 codes (a reader with dequantize=False) become the float frames here, on the
    step's device (bit for bit the reader's dequantization)."""
    frames = batch["frames"]
    if frames.dtype == tf.uint8:
        frames = dequantize_frames(frames, batch["num_frames"])
    return {"frames": frames, "num_frames": batch["num_frames"]}


class Distiller(keras.Model):
    def __init__(
        self,
        mode: Mode | str,
        teacher: keras.Model | None,
        student: keras.Model | None,
        loss_weights: LossWeights,
        projection: keras.layers.Layer | None = None,
        student_views: dict[int, keras.Model] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.mode, self.teacher, self.student = Mode.parse(mode), teacher, student
        self.loss_weights, self.projection = loss_weights, projection
        if self.mode.restores_teacher and teacher is not None:  # (None: stored teacher outputs)
            teacher.trainable = False
        policy = head_policy(loss_weights.resolved_head() if self.mode.distills else "own", teacher, student)
        # the models' own terms too (a MixNeXtVLAD that trains: its branches' L_CE and on-the-fly KL); the policy's:
        # "own" (every mode but distilling) adds none
        terms = terms_for(self.mode, loss_weights, teacher=teacher, student=student) + policy.terms()
        # set past Keras' attribute tracking: the policy's variables would become the Distiller's own weights
        object.__setattr__(self, "head_policy", policy)
        object.__setattr__(self, "terms", tuple(terms))
        # an any-k student: {k: the student at k} (students/student.py: student_views; their weights are the
        # student's, tracked through it), each trained every step; None: one k
        views = dict(sorted(student_views.items())) if student_views and len(student_views) > 1 else None
        object.__setattr__(self, "student_views", views)
        # seconds the train steps spent computing, from their inputs' arrival to their updates (the trainer's
        # input-wait share); a counter, not a weight (set past Keras' tracking too)
        compute_seconds = tf.Variable(
            0.0, dtype=tf.float64, trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA
        )
        object.__setattr__(self, "compute_seconds", compute_seconds)

    head_policy: HeadPolicy
    terms: tuple[LossTerm, ...]
    student_views: dict[int, keras.Model] | None
    compute_seconds: tf.Variable

    def call(self, batch, training=False):
        model = self.student if self.student is not None else self.teacher
        return model(_inputs(batch), training=training)

    def compute_losses(self, batch, training: bool) -> dict:
        """{term name: value} for every term of the run, "student_total" (distilling modes) and "loss" (the sum
        to minimize, regularization included)."""
        x = _inputs(batch)
        teacher_out = student_out = None
        if "teacher_predictions" in batch:  # stored teacher outputs (TrainConfig.teacher_outputs): no teacher runs
            teacher_out = {
                "predictions": batch["teacher_predictions"],
                "representation": batch["teacher_representation"],
            }
        elif self.teacher is not None:
            teacher_out = self.teacher(x, training=training and self.mode.trains_teacher)
        if self.student_views is not None:
            logs, totals = self._any_k_losses(batch, x, teacher_out, training)
        else:
            if self.student is not None:
                student_out = self._student_outputs(self.student, x, training)
            inputs = LossInputs(batch["labels"], teacher_out, student_out, batch.get("label_weights"))
            logs, totals = weighted_sum(self.terms, inputs)
        if self.mode.distills:
            logs["student_total"] = totals["student"]
        total = totals["student"] + totals["teacher"]
        regularization = [
            loss for m in (self.teacher, self.student) if m is not None and m.trainable for loss in m.losses
        ]
        return {"loss": total + tf.add_n(regularization) if regularization else total, **logs}

    def _student_outputs(self, student, x, training: bool) -> dict:
        # the head policy reads the student's own representation ("own", in every mode but distilling: as it is)
        outputs = self.head_policy.student_outputs(dict(student(x, training=training)), training)
        if self.projection is not None:  # L_REP compares at the teacher's width
            outputs["representation"] = self.projection(outputs["representation"])
        return outputs

    def _any_k_losses(self, batch, x, teacher_out, training: bool) -> tuple[dict, dict]:
        """An any-k student's terms at every k of its set, each logged as NAME_kK and averaged over the k's under
        NAME (the student's total is that average: a loss on the scale of one k's); the teacher's terms once;
        with loss.self_pred, "self_pred": the mean over the smaller k's of L_PRED from the largest k's pass."""
        labels, label_weights = batch["labels"], batch.get("label_weights")
        teacher_terms = [term for term in self.terms if term.trains == "teacher"]
        student_terms = [term for term in self.terms if term.trains != "teacher"]
        logs, totals = weighted_sum(teacher_terms, LossInputs(labels, teacher_out, None, label_weights))
        outputs = {k: self._student_outputs(view, x, training) for k, view in self.student_views.items()}
        share = 1.0 / len(outputs)
        student_total = tf.constant(0.0, tf.float32)
        for k, student_out in outputs.items():
            values, parts = weighted_sum(student_terms, LossInputs(labels, teacher_out, student_out, label_weights))
            for name, value in values.items():
                logs[f"{name}_k{k}"] = value
                logs[name] = logs.get(name, 0.0) + share * value
            student_total += share * parts["student"]
        weight = self.loss_weights.self_pred
        if weight > 0:
            *smaller_ks, largest = outputs  # ascending (student_views sorted)
            self_pred = Prediction(1.0, self.loss_weights.pred_kind, self.loss_weights.temperature)
            smaller = [
                self_pred.compute(LossInputs(labels, outputs[largest], outputs[k]).with_frozen_teacher())
                for k in smaller_ks
            ]
            logs["self_pred"] = tf.add_n(smaller) / len(smaller)
            student_total += weight * logs["self_pred"]
        return logs, {"teacher": totals["teacher"], "student": student_total}

    def train_step(self, batch):
        with tf.control_dependencies(tf.nest.flatten(batch)):
            started = tf.timestamp()  # the inputs are here
        self.head_policy.before_step()
        # each replica's loss is the mean over its share of the batch and the optimizer sums the replicas'
        # gradients: dividing by their number makes that the gradient of the global batch's mean, as on one device
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logs = self.compute_losses(batch, training=True)
            scaled = logs["loss"] / replicas
        variables = self.trainable_variables
        gradients = _large_after_all(tape.gradient(scaled, variables), variables)
        if all(g is None for g in gradients):  # at trace time: a step that would silently train nothing
            raise ConfigError(
                f"no trainable variable gets a gradient in mode '{self.mode}' with loss terms "
                f"{list(self.terms)}: nothing would train; turn on a loss term that reaches the model"
            )
        applied = self.optimizer.apply_gradients((g, v) for g, v in zip(gradients, variables) if g is not None)
        self.head_policy.after_step()  # e.g. the student holds the teacher's updated head (checkpoints, evaluation)
        done = [g for g in gradients if g is not None] + [logs["loss"]] + ([applied] if applied is not None else [])
        with tf.control_dependencies(tf.nest.flatten(done, expand_composites=True)):
            self.compute_seconds.assign_add(tf.timestamp() - started)
        return _replica_share(logs, replicas)

    def test_step(self, batch):
        return _replica_share(
            self.compute_losses(batch, training=False), tf.distribute.get_strategy().num_replicas_in_sync
        )


LARGE_SHARE = 1 / 4  # of all the trainable bytes (see _large_after_all)


def _replica_share(logs: dict, replicas: int) -> dict:
    """Each replica's logs divided by the number of replicas: Keras sums what a step returns over the replicas
    (tf_keras `reduce_per_replica`, "auto" = "sum" but on TPUs), so the logged losses are the means of the global
    batch, as on one device (they were `replicas` times that: two workers logged twice the loss)."""
    return logs if replicas == 1 else {name: value / replicas for name, value in logs.items()}


def _large_after_all(gradients: list, variables: list) -> list:
    """The gradients of the large variables (each at least LARGE_SHARE of all the trainable bytes), released once
    every gradient is computed; the others as soon as each is ready.

    A variable's update needs only its own gradient, so TensorFlow may run it while the backward pass still reads
    the variable, and then copies the variable first (copy on write): 2.2 GB more in NetVLAD-WILLOW's parallel
    training step, whose 1.2 GB hidden layers are 47% of the weights. Holding every gradient back instead costs
    memory where the backward pass peaks late: hlstm-paper's step peaked at 5.76 GB holding none, 6.12 holding its
    MoE heads (20% of the weights each), 6.46 holding all; so only variables of a quarter of the weights or more
    wait (NetVLAD-WILLOW: 12.31 GB holding none, 10.99 holding its hidden layers)."""
    sizes = [v.shape.num_elements() or 0 for v in variables]
    total = sum(sizes)
    computed = [g for g in gradients if g is not None]
    held = []
    with tf.control_dependencies(computed):
        for g, size in zip(gradients, sizes):
            if g is None or size < LARGE_SHARE * total:
                held.append(g)
            elif isinstance(g, tf.IndexedSlices):
                held.append(tf.IndexedSlices(tf.identity(g.values), g.indices, g.dense_shape))
            else:
                held.append(tf.identity(g))  # no copy: the same buffer, released after the others
    return held
