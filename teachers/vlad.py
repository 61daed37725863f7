"""Cluster-pooling families: WILLOW's NetVLAD family (NetVLAD, NetRVLAD, NetFV, Soft-DBoF, Non-local NetVLAD),
WILLOW's gated DBoF, and NeXtVLAD.

Each family is an encoder Layer called as `encoder(frames [B, T, 1152], num_frames [B])` that returns the
video-level representation E [B, E] the classifier head consumes:

- "netvlad" (NetVLADConfig): per stream (rgb with K clusters, audio with K // 2) a NetVLADPooling, the two
  concatenated, a hidden FC with bias (no BN, no ReLU), then Context Gating if enabled. E = the gated hidden vector.
  Poolings: netvlad, netrvlad, netfv (Fisher vectors: first and second order, 2 D K per stream), softdbof; with
  `non_local` (netvlad / netrvlad) a NonLocalBlock attends over each stream's K cluster residuals before their
  intra-normalization.
- "dbof" (DBoFConfig): WILLOW's gated deep bag of frames over the 1152-d frames: input BN, projection to
  `clusters` + BN + ReLU6 per frame, max or average pooling over the real frames, hidden FC + BN + ReLU6,
  Context Gating if enabled. E = the (gated) hidden vector.
- "nextvlad" (NeXtVLADConfig): per stream (rgb with G groups and K clusters, audio with G // 2 and K // 2) a
  NeXtVLADPooling, the two concatenated, dropout (training only), FC without bias, BN, SE context gating.
  E = the SE-gated hidden vector.

Padding: rows >= num_frames are zeroed first (so even inf / NaN padding cannot leak), their soft assignments
(NetVLAD) or group attentions (NeXtVLAD) are multiplied by the frame mask, DBoF's pooling takes the real frames
only, and the frame-level batch norms compute their batch statistics over the real frames only (a masked BN), so
padding changes neither the output nor, in training, the batch statistics.

Frame sampling (NetVLADConfig.sample_frames > 0, as in WILLOW's original): that many frame indices are drawn with
replacement, floor(U * num_frames), at training AND at inference. Predictions are then STOCHASTIC (a fresh draw on
every call); averaging the predictions of several calls reduces the variance. All sampled frames are real frames.

Every piece is a Layer (FrameMask, NetVLADPooling, NonLocalBlock, NeXtVLADPooling and the encoders, built from
Dense and BatchNormalization sublayers) so that quantization-aware training can wrap them later.

FLOPs are analytic: 2 x multiply-accumulates per video, elementwise work (BN, softmax, normalizations, sigmoid)
not counted, the same convention as teachers.recurrent.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf
import tf_keras as keras

from vidistill.teachers.config import DBoFConfig, NetVLADConfig, NeXtVLADConfig
from vidistill.teachers.heads import BN, ContextGating, head_flops, head_weights
from vidistill.teachers.registry import register
from vidistill.yt8m.constants import AUDIO_SIZE, FEATURE_SIZE, RGB_SIZE
from vidistill.yt8m.errors import ConfigError


def _frame_bn(name: str) -> keras.layers.BatchNormalization:
    """Batch norm over frame-level features; called with a frame mask, so not the fused kernel (it ignores masks)."""
    return keras.layers.BatchNormalization(**BN, fused=False, name=name)


def _normal(fan_in: int) -> keras.initializers.Initializer:
    """The originals' initializer for cluster weights and centres: N(0, 1 / fan_in)."""
    return keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(fan_in))


class FrameMask(keras.layers.Layer):
    """(frames [B, T, D], num_frames [B]) -> (frames [B, T', D] with padding rows zeroed, mask [B, T'] float).

    sample_frames = 0: T' = T, mask = frame index < num_frames.
    sample_frames > 0: T' = sample_frames indices drawn with replacement, floor(U * num_frames) with U ~ U[0, 1),
    at training and inference alike (so the output is stochastic); every sampled frame is real, the mask is all
    ones (zero only for an empty video, num_frames = 0).
    """

    def __init__(self, sample_frames: int = 0, **kwargs):
        super().__init__(**kwargs)
        if sample_frames < 0:
            raise ConfigError(f"sample_frames must be >= 0, got {sample_frames}")
        self.sample_frames = sample_frames

    def call(self, frames, num_frames):
        total = tf.shape(frames)[1]
        count = tf.minimum(tf.cast(num_frames, tf.int32), total)
        if self.sample_frames > 0:
            uniform = tf.random.uniform([tf.shape(frames)[0], self.sample_frames], dtype=tf.float32)
            index = tf.cast(tf.floor(uniform * tf.cast(count, tf.float32)[:, None]), tf.int32)
            index = tf.minimum(index, tf.maximum(count - 1, 0)[:, None])  # float rounding of U * n up to n
            frames = tf.gather(frames, index, axis=1, batch_dims=1)
            mask = tf.broadcast_to((count > 0)[:, None], tf.shape(index))
        else:
            mask = tf.sequence_mask(count, total)
        frames = tf.where(mask[..., None], frames, tf.zeros_like(frames))
        return frames, tf.cast(mask, frames.dtype)

    def get_config(self):
        return {**super().get_config(), "sample_frames": self.sample_frames}


class NonLocalBlock(keras.layers.Layer):
    """Non-local NetVLAD's self-attention over one stream's cluster residuals: V [B, K, D] -> V' [B, K, D].

    The K clusters are the tokens (D dims each), h = D // 2:
    theta = V W_theta, phi = V W_phi, g = V W_g (each D x h, no bias);
    A = softmax over the K keys of theta phi^T / sqrt(h) (scaled, as dot-product attention);
    V' = V + (A g) W_out, W_out is h x D without bias.
    W_out starts at zero, so the block starts as the identity (the non-local networks' zero-initialized last
    layer) and the attention is learned from there. Weights: 4 D h = 2 D^2 for an even D.
    """

    def build(self, input_shape):
        size = int(input_shape[-1])
        if size < 2:
            raise ConfigError(f"non_local needs feature vectors of >= 2 dims, got {size}")
        self.inner = size // 2
        self.theta = keras.layers.Dense(self.inner, use_bias=False, name="theta")
        self.phi = keras.layers.Dense(self.inner, use_bias=False, name="phi")
        self.g = keras.layers.Dense(self.inner, use_bias=False, name="g")
        self.out = keras.layers.Dense(size, use_bias=False, kernel_initializer="zeros", name="out")
        super().build(input_shape)

    def call(self, v):
        logits = tf.matmul(self.theta(v), self.phi(v), transpose_b=True) / math.sqrt(self.inner)  # [B, K, K]
        attention = tf.nn.softmax(logits, axis=-1)
        return v + self.out(tf.matmul(attention, self.g(v)))


class NetVLADPooling(keras.layers.Layer):
    """One stream of WILLOW's pooling: (x [B, T, D], mask [B, T]) -> [B, D * K] (netvlad, netrvlad),
    [B, 2 D K] (netfv) or [B, K] (softdbof).

    Optional input BN; a_t = softmax_K(BN(x_t W)) * mask_t, W is D x K without bias. With S0_k = sum_t a_tk,
    S1_dk = sum_t a_tk x_td and S2_dk = sum_t a_tk x_td^2:
    netvlad: V[d, k] = S1_dk - c_dk S0_k (centres c, D x K, separate from W);
    netrvlad: V = S1 (no centre term);
    both then (with `non_local`, V as K tokens of D dims through a NonLocalBlock first) intra-normalized (L2 over d
    per cluster), flattened (d-major, index d K + k) and globally L2-normalized.
    netfv (WILLOW's NetFV): learned centres c and covariances s (both D x K), sigma = s^2 + 1e-6;
      first order  F1[d, k] = (S1_dk - c_dk S0_k) / sigma_dk,
      second order F2[d, k] = (S2_dk - 2 c_dk S1_dk + c_dk^2 S0_k) / sigma_dk^2 - S0_k
      (= sum_t a_tk ((x_td - c_dk)^2 / sigma_dk^2 - 1): the standard Fisher vector's second-order form with sigma
      as the standard deviation, less its per-cluster constants 1 / sqrt(pi_k) and 1 / sqrt(2), which the
      intra-normalization removes anyway); F1 and F2 each intra-normalized (L2 over d per cluster), each
      flattened d-major, concatenated [F1, F2] (2 D K) and globally L2-normalized.
    softdbof: S0, L2-normalized.
    """

    POOLINGS = ("netvlad", "netrvlad", "netfv", "softdbof")
    NON_LOCAL_POOLINGS = ("netvlad", "netrvlad")

    def __init__(
        self, clusters: int, pooling: str = "netvlad", input_batch_norm: bool = True, non_local: bool = False, **kwargs
    ):
        super().__init__(**kwargs)
        if pooling not in self.POOLINGS:
            raise ConfigError(f"pooling must be one of {self.POOLINGS}, got {pooling!r}")
        if non_local and pooling not in self.NON_LOCAL_POOLINGS:
            raise ConfigError(f"non_local needs pooling netvlad or netrvlad, got pooling {pooling!r}")
        self.clusters, self.pooling, self.input_batch_norm = clusters, pooling, input_batch_norm
        self.non_local = non_local

    def build(self, input_shape):
        size = int(input_shape[-1])
        self.feature_size = size
        self.input_norm = _frame_bn("input_bn") if self.input_batch_norm else None
        self.assign = keras.layers.Dense(
            self.clusters, use_bias=False, kernel_initializer=_normal(size), name="assignment"
        )
        self.assign_norm = _frame_bn("assignment_bn")
        if self.pooling in ("netvlad", "netfv"):
            self.centres = self.add_weight(
                name="centres", shape=(size, self.clusters), initializer=_normal(size), trainable=True
            )
        if self.pooling == "netfv":  # sigma = covariances^2 + 1e-6 starts near 1
            self.covariances = self.add_weight(
                name="covariances",
                shape=(size, self.clusters),
                initializer=keras.initializers.RandomNormal(mean=1.0, stddev=1.0 / math.sqrt(size)),
                trainable=True,
            )
        self.attention = NonLocalBlock(name="non_local") if self.non_local else None
        super().build(input_shape)

    @property
    def output_size(self) -> int:
        return pooled_width(self.feature_size, self.clusters, self.pooling)

    def call(self, x, mask, training=None):
        if self.input_norm is not None:
            x = self.input_norm(x, training=training, mask=mask)
        logits = self.assign_norm(self.assign(x), training=training, mask=mask)  # [B, T, K]
        a = tf.nn.softmax(logits, axis=-1) * mask[..., None]
        s0 = tf.reduce_sum(a, axis=1)  # [B, K]: sum_t a_tk
        if self.pooling == "softdbof":
            return tf.math.l2_normalize(s0, axis=-1)
        v = tf.matmul(x, a, transpose_a=True)  # [B, D, K]: sum_t x_td a_tk
        if self.pooling == "netfv":
            return self._fisher_vector(x, a, s0[:, None, :], v)
        if self.pooling == "netvlad":
            v -= self.centres * s0[:, None, :]
        if self.attention is not None:  # the K clusters as tokens of D dims
            v = tf.transpose(self.attention(tf.transpose(v, [0, 2, 1])), [0, 2, 1])
        v = tf.math.l2_normalize(v, axis=1)  # intra-normalization
        v = tf.reshape(v, [-1, self.feature_size * self.clusters])
        return tf.math.l2_normalize(v, axis=-1)

    def _fisher_vector(self, x, a, s0, s1):
        """[F1, F2] of the class docstring, from S0 [B, 1, K], S1 [B, D, K] and the masked assignments a."""
        s2 = tf.matmul(tf.square(x), a, transpose_a=True)  # [B, D, K]: sum_t x_td^2 a_tk
        sigma = tf.square(self.covariances) + 1e-6
        first = (s1 - self.centres * s0) / sigma
        second = (s2 - 2.0 * self.centres * s1 + tf.square(self.centres) * s0) / tf.square(sigma) - s0
        width = self.feature_size * self.clusters
        parts = [tf.reshape(tf.math.l2_normalize(f, axis=1), [-1, width]) for f in (first, second)]
        return tf.math.l2_normalize(tf.concat(parts, axis=-1), axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "clusters": self.clusters,
            "pooling": self.pooling,
            "input_batch_norm": self.input_batch_norm,
            "non_local": self.non_local,
        }


class NetVLADEncoder(keras.layers.Layer):
    """WILLOW's model up to the classifier: [frame sampling], rgb (K) and audio (K // 2) pooling (each with its
    non-local block if enabled), concat, hidden FC with bias, Context Gating (reduction 1) if enabled."""

    def __init__(self, config: NetVLADConfig | dict, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, NetVLADConfig) else NetVLADConfig(**config)
        c = self.config
        self.frame_mask = FrameMask(c.sample_frames, name="frame_mask")
        self.rgb = NetVLADPooling(c.clusters, c.pooling, c.input_batch_norm, c.non_local, name="rgb_pooling")
        self.audio = NetVLADPooling(
            audio_clusters(c.clusters), c.pooling, c.input_batch_norm, c.non_local, name="audio_pooling"
        )
        self.hidden = keras.layers.Dense(c.hidden, name="hidden")
        self.gating = ContextGating(reduction=1, name="context_gating") if c.context_gating else None

    def call(self, frames, num_frames, training=None):
        frames, mask = self.frame_mask(frames, num_frames)
        rgb = self.rgb(frames[..., :RGB_SIZE], mask, training=training)
        audio = self.audio(frames[..., RGB_SIZE:], mask, training=training)
        hidden = self.hidden(tf.concat([rgb, audio], axis=-1))
        return self.gating(hidden, training=training) if self.gating is not None else hidden

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.config)}


class DBoFEncoder(keras.layers.Layer):
    """WILLOW's gated deep bag of frames up to the classifier, over the 1152-d frames (one stream):

    x = BN(frames) (masked); h_t = ReLU6(BN(x_t W_p)) (masked BN), W_p is 1152 x clusters without bias (BN
    instead); pooled = max_t h_t or mean_t h_t over the real frames; hidden = ReLU6(BN(pooled W_h)), W_h is
    clusters x hidden without bias; Context Gating (reduction 1) if enabled. E = the (gated) hidden vector.

    Padding rows of h are set to 0 before the pooling: since ReLU6 >= 0, the max over the real frames and zeros is
    the max over the real frames alone, and an empty video (num_frames = 0) pools to zeros (finite). The average
    divides the sum over the real frames by max(num_frames, 1).
    """

    def __init__(self, config: DBoFConfig | dict, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, DBoFConfig) else DBoFConfig(**config)
        c = self.config
        self.frame_mask = FrameMask(0, name="frame_mask")
        self.input_norm = _frame_bn("input_bn")
        self.projection = keras.layers.Dense(
            c.clusters, use_bias=False, kernel_initializer=_normal(FEATURE_SIZE), name="projection"
        )
        self.projection_norm = _frame_bn("projection_bn")
        self.hidden = keras.layers.Dense(
            c.hidden, use_bias=False, kernel_initializer=_normal(c.clusters), name="hidden"
        )
        self.hidden_norm = keras.layers.BatchNormalization(**BN, name="hidden_bn")
        self.gating = ContextGating(reduction=1, name="context_gating") if c.context_gating else None

    def call(self, frames, num_frames, training=None):
        frames, mask = self.frame_mask(frames, num_frames)
        x = self.input_norm(frames, training=training, mask=mask)
        h = tf.nn.relu6(self.projection_norm(self.projection(x), training=training, mask=mask))  # [B, T, clusters]
        h = tf.where(mask[..., None] > 0, h, tf.zeros_like(h))
        if self.config.pooling == "max":
            pooled = tf.reduce_max(h, axis=1)
        else:
            count = tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
            pooled = tf.reduce_sum(h, axis=1) / count
        hidden = tf.nn.relu6(self.hidden_norm(self.hidden(pooled), training=training))
        return self.gating(hidden, training=training) if self.gating is not None else hidden

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.config)}


class NeXtVLADPooling(keras.layers.Layer):
    """One stream of NeXtVLAD: (x [B, T, N], mask [B, T]) -> [B, K * lambda N / G].

    x' = x W_e + b (N -> lambda N); alpha = sigmoid(x' W_a + b_a) * mask (G groups);
    a = softmax_K(reshape(BN(x' W_c), [B, T G, K])) * alpha, W_c is lambda N x G K without bias;
    x~ = reshape(x', [B, T G, lambda N / G]); V[j, k] = sum_{t, g} a (x~_j - c_kj), c is lambda N / G x K;
    intra L2 over j, flatten, batch norm (no global L2).
    """

    def __init__(self, expansion: int, groups: int, clusters: int, **kwargs):
        super().__init__(**kwargs)
        self.expansion, self.groups, self.clusters = expansion, groups, clusters

    def build(self, input_shape):
        size = int(input_shape[-1])
        self.expanded = self.expansion * size
        if self.expanded % self.groups:
            raise ConfigError(f"expansion * {size} = {self.expanded} must divide into {self.groups} groups")
        self.group_size = self.expanded // self.groups
        self.expand = keras.layers.Dense(self.expanded, name="expand")
        self.attention = keras.layers.Dense(self.groups, name="group_attention")
        self.assign = keras.layers.Dense(
            self.groups * self.clusters, use_bias=False, kernel_initializer=_normal(self.expanded), name="assignment"
        )
        self.assign_norm = _frame_bn("assignment_bn")
        self.centres = self.add_weight(
            name="centres", shape=(self.group_size, self.clusters), initializer=_normal(self.clusters), trainable=True
        )
        self.output_norm = keras.layers.BatchNormalization(**BN, name="vlad_bn")
        super().build(input_shape)

    @property
    def output_size(self) -> int:
        return self.group_size * self.clusters

    def call(self, x, mask, training=None):
        steps = tf.shape(x)[1] * self.groups
        x = self.expand(x)  # [B, T, lambda N]
        alpha = tf.sigmoid(self.attention(x)) * mask[..., None]  # [B, T, G]
        logits = self.assign_norm(self.assign(x), training=training, mask=mask)  # [B, T, G K]
        a = tf.nn.softmax(tf.reshape(logits, [-1, steps, self.clusters]), axis=-1)
        a *= tf.reshape(alpha, [-1, steps, 1])  # [B, T G, K]
        grouped = tf.reshape(x, [-1, steps, self.group_size])  # [B, T G, lambda N / G]
        v = tf.matmul(grouped, a, transpose_a=True)  # [B, lambda N / G, K]
        v -= self.centres * tf.reduce_sum(a, axis=1)[:, None, :]
        v = tf.math.l2_normalize(v, axis=1)  # intra-normalization over j
        v = tf.reshape(v, [-1, self.group_size * self.clusters])
        return self.output_norm(v, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "expansion": self.expansion,
            "groups": self.groups,
            "clusters": self.clusters,
        }


class NeXtVLADEncoder(keras.layers.Layer):
    """NeXtVLAD up to the classifier: rgb (G, K) and audio (G // 2, K // 2) pooling over the masked frames, concat,
    dropout (training only), FC without bias, BN, SE context gating (reduction config.se_reduction)."""

    def __init__(self, config: NeXtVLADConfig | dict, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, NeXtVLADConfig) else NeXtVLADConfig(**config)
        c = self.config
        self.frame_mask = FrameMask(0, name="frame_mask")
        self.rgb = NeXtVLADPooling(c.expansion, c.groups, c.clusters, name="rgb_pooling")
        self.audio = NeXtVLADPooling(
            c.expansion, audio_groups(c.groups), audio_clusters(c.clusters), name="audio_pooling"
        )
        self.dropout = keras.layers.Dropout(c.dropout, name="dropout")
        self.hidden = keras.layers.Dense(c.hidden, use_bias=False, name="hidden")
        self.hidden_norm = keras.layers.BatchNormalization(**BN, name="hidden_bn")
        self.gating = ContextGating(reduction=c.se_reduction, name="se_gating")

    def call(self, frames, num_frames, training=None):
        frames, mask = self.frame_mask(frames, num_frames)
        rgb = self.rgb(frames[..., :RGB_SIZE], mask, training=training)
        audio = self.audio(frames[..., RGB_SIZE:], mask, training=training)
        vlad = self.dropout(tf.concat([rgb, audio], axis=-1), training=training)
        hidden = self.hidden_norm(self.hidden(vlad), training=training)
        return self.gating(hidden, training=training)

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.config)}


def audio_clusters(clusters: int) -> int:
    """The audio stream's clusters: half the rgb stream's (at least 1)."""
    return max(1, clusters // 2)


def audio_groups(groups: int) -> int:
    """NeXtVLAD's audio groups: half the rgb stream's (at least 1, as NeXtVLADConfig validates)."""
    return max(1, groups // 2)


def pooled_width(size: int, clusters: int, pooling: str) -> int:
    """One stream's pooled vector: K (softdbof), 2 D K (netfv) or D K."""
    if pooling == "softdbof":
        return clusters
    return (2 if pooling == "netfv" else 1) * size * clusters


def non_local_macs(size: int, clusters: int) -> int:
    """A NonLocalBlock on K tokens of D dims (h = D // 2): theta, phi, g (3 K D h), theta phi^T (K K h), A g
    (K K h), the output projection (K h D)."""
    inner = size // 2
    return 4 * clusters * size * inner + 2 * clusters * clusters * inner


def netvlad_pooling_macs(frames: int, size: int, clusters: int, pooling: str, non_local: bool = False) -> int:
    """One stream: per-frame assignment x W, the aggregations (a^T x; netfv also a^T x^2; none for softdbof), the
    centre terms (netvlad c S0; netfv c S0, c S1 and c^2 S0), the non-local block."""
    macs = frames * size * clusters  # assignment
    if pooling != "softdbof":
        macs += (2 if pooling == "netfv" else 1) * frames * size * clusters  # S1 (and S2)
    macs += {"netvlad": 1, "netfv": 3}.get(pooling, 0) * size * clusters  # the centre terms
    if non_local:
        macs += non_local_macs(size, clusters)
    return macs


def _streams(clusters: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return (RGB_SIZE, clusters), (AUDIO_SIZE, audio_clusters(clusters))


def netvlad_flops(config: NetVLADConfig) -> int:
    """Both streams' pooling over the (sampled) frames, the hidden FC, context gating, then the head."""
    frames = config.sample_frames if config.sample_frames > 0 else config.frames
    streams = _streams(config.clusters)
    pooling = sum(netvlad_pooling_macs(frames, size, k, config.pooling, config.non_local) for size, k in streams)
    width = sum(pooled_width(size, k, config.pooling) for size, k in streams)
    macs = pooling + width * config.hidden
    if config.context_gating:
        macs += config.hidden * config.hidden
    return 2 * macs + head_flops(config.hidden, config.num_classes, config.head)


def dbof_flops(config: DBoFConfig) -> int:
    """The per-frame projection over all frames, the hidden FC, context gating, then the head (the pooling is
    elementwise)."""
    macs = config.frames * FEATURE_SIZE * config.clusters + config.clusters * config.hidden
    if config.context_gating:
        macs += config.hidden * config.hidden
    return 2 * macs + head_flops(config.hidden, config.num_classes, config.head)


def nextvlad_pooling_macs(frames: int, size: int, expansion: int, groups: int, clusters: int) -> int:
    """One stream: expansion, group attention, assignment (per frame), aggregation and the centre term."""
    expanded = expansion * size
    per_frame = size * expanded + expanded * groups + expanded * groups * clusters
    per_frame += groups * clusters * (expanded // groups)  # aggregation: G groups x K clusters x lambda N / G
    return frames * per_frame + (expanded // groups) * clusters


def nextvlad_flops(config: NeXtVLADConfig) -> int:
    """Both streams' pooling over all frames, the hidden FC, SE gating (two matmuls), then the head."""
    streams = (
        (RGB_SIZE, config.groups, config.clusters),
        (AUDIO_SIZE, audio_groups(config.groups), audio_clusters(config.clusters)),
    )
    pooling = sum(nextvlad_pooling_macs(config.frames, n, config.expansion, g, k) for n, g, k in streams)
    width = sum(config.expansion * n // g * k for n, g, k in streams)
    squeeze = config.hidden // config.se_reduction
    macs = pooling + width * config.hidden + 2 * config.hidden * squeeze
    return 2 * macs + head_flops(config.hidden, config.num_classes, config.head)


def netvlad_weight_reads(config: NetVLADConfig, fused: bool) -> int:
    """Every matrix once (the frames go through each as one product): assignment, centres (netvlad, netfv),
    covariances (netfv) and the non-local block's four matrices of both streams, the hidden FC, context gating, the
    head."""
    del fused  # no recurrence
    matrices = {"netvlad": 2, "netfv": 3}.get(config.pooling, 1)  # assignment, centres, covariances
    pooling = 0
    for size, k in _streams(config.clusters):
        pooling += matrices * size * k + (4 * size * (size // 2) if config.non_local else 0)
    width = sum(pooled_width(size, k, config.pooling) for size, k in _streams(config.clusters))
    weights = pooling + width * config.hidden + (config.hidden**2 if config.context_gating else 0)
    return weights + head_weights(config.hidden, config.num_classes, config.head)


def dbof_weight_reads(config: DBoFConfig, fused: bool) -> int:
    """Every matrix once: the projection, the hidden FC, context gating, the head."""
    del fused  # no recurrence
    weights = FEATURE_SIZE * config.clusters + config.clusters * config.hidden
    weights += config.hidden**2 if config.context_gating else 0
    return weights + head_weights(config.hidden, config.num_classes, config.head)


def nextvlad_weight_reads(config: NeXtVLADConfig, fused: bool) -> int:
    """Every matrix once: expansion, group attention, assignment and centres of both streams, the hidden FC, the
    SE gating, the head."""
    del fused  # no recurrence
    streams = (
        (RGB_SIZE, config.groups, config.clusters),
        (AUDIO_SIZE, audio_groups(config.groups), audio_clusters(config.clusters)),
    )
    pooling = 0
    for size, groups, clusters in streams:
        expanded = config.expansion * size
        pooling += size * expanded + expanded * groups + expanded * groups * clusters + expanded // groups * clusters
    width = sum(config.expansion * n // g * k for n, g, k in streams)
    squeeze = config.hidden // config.se_reduction
    weights = pooling + width * config.hidden + 2 * config.hidden * squeeze
    return weights + head_weights(config.hidden, config.num_classes, config.head)


@register("netvlad", flops=netvlad_flops, weight_reads=netvlad_weight_reads)
def netvlad_encoder(config: NetVLADConfig) -> keras.layers.Layer:
    return NetVLADEncoder(config, name=config.pooling)


@register("dbof", flops=dbof_flops, weight_reads=dbof_weight_reads)
def dbof_encoder(config: DBoFConfig) -> keras.layers.Layer:
    return DBoFEncoder(config, name="dbof")


@register("nextvlad", flops=nextvlad_flops, weight_reads=nextvlad_weight_reads)
def nextvlad_encoder(config: NeXtVLADConfig) -> keras.layers.Layer:
    return NeXtVLADEncoder(config, name="nextvlad")
