"""MixNeXtVLAD (3rd place 2018): on-the-fly distillation, so that one model learns what an ensemble knows in one
training run (the "mixnextvlad" family, MixNeXtVLADConfig).

M branches, each a whole NeXtVLAD model: its own NeXtVLADEncoder (teachers/vlad.py, the branch's configuration
`MixNeXtVLADConfig.branch`) and its own logistic classifier (LogisticHead, teachers/heads.py), which gives the
branch's logits z_m [B, C]. A gate mixes them:

    mean frame  x_bar = sum_t mask_t x_t / max(num_frames, 1)      (the REAL frames only; 0 for an empty video)
    gate        g = softmax(x_bar W_g + b_g)                          [B, M], sums to 1
    mixture     z_mix = sum_m g_m z_m,  predictions p = sigmoid(z_mix)

The mixture is taken in logit space (z_mix), not as p_mix = sum_m g_m sigmoid(z_m), on purpose: the on-the-fly KL
compares softmax(z_mix / T) with each softmax(z_m / T), so the mixture must have logits; with z_mix the
"predictions" that L_CE trains, that evaluation scores and that a student distils from are sigmoid of the very
logits the KL uses (the mixture of probabilities would have no logits but log(p / (1 - p)), a different mixture
from the one the branches are distilled towards).

Outputs: {"predictions" [B, C], "representation" [B, M * H], "branch_logits" [B, M, C], "mixture_logits" [B, C]}.
The representation E is the concatenation of the gate-scaled branch hidden vectors [g_1 h_1, ..., g_M h_M]
(each h_m the branch's SE-gated hidden vector, H = `hidden`): then z_mix = E [W_1; ...; W_M] + sum_m g_m b_m, so E
is what the mixture's classifier reads, as in every other family (an affine read-out up to the gate-weighted
biases); a plain gate-weighted sum of the h_m would add up coordinates of unrelated spaces, and a concatenation
without the gate would not determine the mixture.

Why the model itself returns the two extra outputs (and not a training-only wrapper): every place that serves or
stores a model keeps "predictions" and "representation" by name (the ONNX / SavedModel serving function,
export/serving.py; the prediction function of evaluation and stored teacher outputs, teachers/inference.py; a
converted student's signature, students/convert.py), so the extra outputs cost nothing there, while the training
step, the checkpoints, warm starts and students (build_student wraps any backbone) all see one and the same model:
no second model to build, restore or keep in step. The exported ONNX graph and the converted student have exactly
the two outputs (tests/test_mixture.py).

The loss: distill/terms.py adds, for every model of the run that trains and is a mixture (`mixture_of(model)`: the
teacher in teacher / parallel mode, the student in student / parallel / serial mode), "branch_ce" = sum_m
L_CE(labels, sigmoid(z_m)) (weight `branch_weight`) and "branch_kl" = T^2 sum_m KL(softmax(z_mix / T) ||
softmax(z_m / T)) (weight `kl_weight`, T = `temperature`), "teacher_branch_ce" / "teacher_branch_kl" for the
teacher; the mixture's own L_CE is the run's "ce" / "teacher_ce" on "predictions". The mixture is the branches'
teacher: the KL reads z_mix through a stop-gradient, so it trains the branches towards the mixture and never the
gate or the mixture towards a branch (the gate learns from the mixture's L_CE only).

Padding: every branch and the gate read the frames after FrameMask (rows >= num_frames zeroed, so even inf / NaN
padding cannot leak), the branches' frame-level batch norms use the mask, and the mean frame sums real rows only:
padding never changes any output, bit for bit, including num_frames = 0 (mean frame 0, gate softmax(b_g)).

Not supported for a mixture: the distilled student's head policies "teacher" and "probe" (distill/heads.py), which
need one classifier head (a layer named "head") reading E: a mixture has M heads and a gate. They fail with a
ConfigError naming the model; use head "own".

FLOPs: the M branches' NeXtVLAD FLOPs, the gate (1152 x M) and the mixture sum_m g_m z_m (M x C); the mean over
frames is a reduction like the others not counted (teachers/vlad.py's convention).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tf_keras as keras

from vidistill.teachers.config import MixNeXtVLADConfig
from vidistill.teachers.heads import LogisticHead
from vidistill.teachers.registry import register
from vidistill.teachers.vlad import FrameMask, NeXtVLADEncoder, nextvlad_flops, nextvlad_weight_reads
from vidistill.yt8m.constants import FEATURE_SIZE

OUTPUTS = ("predictions", "representation", "branch_logits", "mixture_logits")


class MixNeXtVLAD(keras.layers.Layer):
    """The whole mixture: (frames [B, T, 1152], num_frames [B]) -> {"predictions", "representation",
    "branch_logits", "mixture_logits"} (see the module docstring)."""

    def __init__(self, config: MixNeXtVLADConfig | dict, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, MixNeXtVLADConfig) else MixNeXtVLADConfig(**config)
        c = self.config
        branch = c.branch
        self.encoders = [NeXtVLADEncoder(branch, name=f"branch_{m}") for m in range(c.branches)]
        self.heads = [LogisticHead(c.num_classes, c.head.l2, name=f"branch_{m}_head") for m in range(c.branches)]
        self.frame_mask = FrameMask(0, name="frame_mask")
        self.gate = keras.layers.Dense(c.branches, name="gate")

    def mixture_gate(self, frames, num_frames):
        """g [B, M]: softmax over the branches of the mean REAL frame times W_g plus b_g."""
        frames, mask = self.frame_mask(frames, num_frames)
        count = tf.reduce_sum(mask, axis=1, keepdims=True)  # [B, 1]
        mean = tf.reduce_sum(frames, axis=1) / tf.maximum(count, tf.ones_like(count))
        return tf.nn.softmax(self.gate(mean), axis=-1)

    def call(self, frames, num_frames, training=None):
        hidden = [encoder(frames, num_frames, training=training) for encoder in self.encoders]
        branch_logits = tf.stack([head(h, logits=True) for head, h in zip(self.heads, hidden)], axis=1)  # [B, M, C]
        gate = self.mixture_gate(frames, num_frames)  # [B, M]
        gate = tf.cast(gate, branch_logits.dtype)
        mixture_logits = tf.reduce_sum(gate[:, :, None] * branch_logits, axis=1)  # [B, C]
        scaled = tf.stack(hidden, axis=1) * tf.cast(gate, hidden[0].dtype)[:, :, None]  # [B, M, H]
        return {
            "predictions": tf.sigmoid(mixture_logits),
            "representation": tf.reshape(scaled, [-1, self.config.branches * self.config.hidden]),
            "branch_logits": branch_logits,
            "mixture_logits": mixture_logits,
        }

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.config)}


def mixture_of(model: keras.layers.Layer) -> MixNeXtVLADConfig | None:
    """The MixNeXtVLAD configuration inside `model` (a model from build_model, or a student whose backbone is
    one), or None when it holds no mixture."""
    for layer in model.submodules:
        if isinstance(layer, MixNeXtVLAD):
            return layer.config
    return None


def mixnextvlad_flops(config: MixNeXtVLADConfig) -> int:
    """M NeXtVLAD branches (each with its logistic head), the gate on the mean frame, the mixture of the logits."""
    gate = FEATURE_SIZE * config.branches
    mixture = config.branches * config.num_classes
    return config.branches * nextvlad_flops(config.branch) + 2 * (gate + mixture)


def mixnextvlad_weight_reads(config: MixNeXtVLADConfig, fused: bool) -> int:
    """Every matrix once: each branch's NeXtVLAD matrices and head, and the gate's 1152 x M."""
    return config.branches * nextvlad_weight_reads(config.branch, fused) + FEATURE_SIZE * config.branches


@register("mixnextvlad", flops=mixnextvlad_flops, weight_reads=mixnextvlad_weight_reads, classifies=True)
def mixnextvlad_model(config: MixNeXtVLADConfig) -> keras.layers.Layer:
    return MixNeXtVLAD(config, name="mixnextvlad")
