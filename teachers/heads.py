"""Video-level heads and gates shared by the families (proper Layer classes, so QAT can wrap them later).

Batch norm follows the TF1 originals: momentum 0.999, epsilon 1e-3.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from vidistill.teachers.config import HeadConfig

BN = {"momentum": 0.999, "epsilon": 1e-3}


class MixtureOfExperts(keras.layers.Layer):
    """Per class: softmax over M+1 gates (the last a dummy expert that always predicts 0) times M sigmoid experts.

    gates = x W_g (no bias), experts = sigmoid(x W_e + b); p_c = sum_j gate_cj * expert_cj.
    """

    def __init__(self, num_classes: int, mixtures: int = 2, l2: float = 1e-8, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.mixtures, self.l2 = num_classes, mixtures, l2
        regularizer = keras.regularizers.l2(l2)
        self.gates = keras.layers.Dense(
            num_classes * (mixtures + 1), use_bias=False, kernel_regularizer=regularizer, name="gates"
        )
        self.experts = keras.layers.Dense(num_classes * mixtures, kernel_regularizer=regularizer, name="experts")

    def call(self, x):
        gates = tf.nn.softmax(tf.reshape(self.gates(x), [-1, self.num_classes, self.mixtures + 1]), axis=-1)
        experts = tf.sigmoid(tf.reshape(self.experts(x), [-1, self.num_classes, self.mixtures]))
        return tf.reduce_sum(gates[:, :, : self.mixtures] * experts, axis=-1)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "mixtures": self.mixtures, "l2": self.l2}


class LogisticHead(keras.layers.Layer):
    """sigmoid(x W + b); with `logits=True` the logits x W + b themselves (MixNeXtVLAD mixes its branches' logits)."""

    def __init__(self, num_classes: int, l2: float = 1e-8, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.l2 = num_classes, l2
        self.dense = keras.layers.Dense(num_classes, kernel_regularizer=keras.regularizers.l2(l2), name="logits")

    def call(self, x, logits=False):
        z = self.dense(x)
        return z if logits else tf.sigmoid(z)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "l2": self.l2}


class ContextGating(keras.layers.Layer):
    """y = x * sigmoid(BN(x W)), W square without bias (BN instead). With `reduction` > 1 it is the SE form of
    NeXtVLAD: gates = sigmoid(W_2 ReLU(BN(W_1 x))), W_1 is H x H/r."""

    def __init__(self, reduction: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.reduction = reduction

    def build(self, input_shape):
        width = int(input_shape[-1])
        if self.reduction > 1:
            self.squeeze = keras.layers.Dense(width // self.reduction, use_bias=False, name="squeeze")
            self.excite = keras.layers.Dense(width, use_bias=False, name="excite")
        else:
            self.squeeze = keras.layers.Dense(width, use_bias=False, name="gate")
        self.norm = keras.layers.BatchNormalization(**BN, name="gate_bn")
        super().build(input_shape)

    def call(self, x, training=None):
        gates = self.norm(self.squeeze(x), training=training)
        if self.reduction > 1:
            gates = self.excite(tf.nn.relu(gates))
        return x * tf.sigmoid(gates)

    def get_config(self):
        return {**super().get_config(), "reduction": self.reduction}


class ProbabilityGating(keras.layers.Layer):
    """WILLOW's gated MoE output: p * sigmoid(BN(p W)), W is C x C without bias."""

    def build(self, input_shape):
        width = int(input_shape[-1])
        self.gate = keras.layers.Dense(width, use_bias=False, name="gate")
        self.norm = keras.layers.BatchNormalization(**BN, name="gate_bn")
        super().build(input_shape)

    def call(self, p, training=None):
        return p * tf.sigmoid(self.norm(self.gate(p), training=training))


class ClassifierHead(keras.layers.Layer):
    """The head a HeadConfig describes: MoE or logistic, optionally probability-gated. Returns probabilities."""

    def __init__(self, num_classes: int, head: HeadConfig | dict, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.head = head if isinstance(head, HeadConfig) else HeadConfig(**head)
        if self.head.kind == "moe":
            self.classifier = MixtureOfExperts(num_classes, self.head.mixtures, self.head.l2, name="moe")
        else:
            self.classifier = LogisticHead(num_classes, self.head.l2, name="logistic")
        self.gating = ProbabilityGating(name="probability_gating") if self.head.probability_gating else None

    def call(self, x, training=None):
        p = self.classifier(x)
        return self.gating(p, training=training) if self.gating is not None else p

    def get_config(self):
        import dataclasses

        return {**super().get_config(), "num_classes": self.num_classes, "head": dataclasses.asdict(self.head)}


def head_weights(width: int, num_classes: int, head: HeadConfig) -> int:
    """Weight elements of the head's matrices (each is used once per video: its multiply-accumulates)."""
    return head_flops(width, num_classes, head) // 2


def head_flops(width: int, num_classes: int, head: HeadConfig) -> int:
    """FLOPs (2 x multiply-accumulates) of the head on one video's representation of `width`."""
    if head.kind == "moe":
        macs = width * num_classes * (2 * head.mixtures + 1)
    else:
        macs = width * num_classes
    if head.probability_gating:
        macs += num_classes * num_classes
    return 2 * macs
