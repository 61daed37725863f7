"""The transformer family: BERT-style frame encoders (models.md, "Transformer encoder").

`TransformerEncoder(config)(frames [B, T, 1152], num_frames [B]) -> E`:

- "concat" streams: the 1152-d frames projected to H, plus learned positions 0..T-1 (a student at k frames uses
  positions 0..k-1 of its own sequence, not those of the frames it selected), LayerNorm, dropout; `pooling="cls"`
  prepends a learned token. Then `layers` encoder layers (post-LayerNorm, as BERT): x = LN(x + MHA(x)),
  x = LN(x + FFN(x)), FFN = Dense(4H, GELU) -> Dense(H). E = the pooled vector [B, H].
- "cross" streams: rgb (1024) and audio (128) projected separately, each with its own positions; every layer of a
  stream attends to itself, then to the other stream (both updated from the previous layer's outputs), then its
  feed-forward. E = the two pooled vectors concatenated [B, 2H].

Padding: rows >= num_frames are zeroed first, their keys get -10000 added to the attention scores (exactly zero
weight after the softmax in float32, and representable in float16, unlike -inf or -1e9), and pooling ignores them
(`mean` divides by the real count, `max` takes real rows only, 0 for an empty video). So padding never changes E.

Attention is written as matrix products on [B, A, T, d] heads (Dense projections, reshape, transpose, scaled
Q K^T + mask bias, softmax, times V): the graph ONNX Runtime's transformer optimizer recognizes and fuses.

FLOPs are analytic (2 x multiply-accumulates; softmax, LayerNorm and GELU not counted), as for the other families.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from vidistill.teachers.config import TransformerConfig
from vidistill.teachers.heads import head_flops, head_weights
from vidistill.teachers.registry import register
from vidistill.teachers.vlad import FrameMask
from vidistill.yt8m.constants import AUDIO_SIZE, FEATURE_SIZE, RGB_SIZE

MASKED = -10000.0  # added to the attention scores of padded keys
LAYER_NORM_EPSILON = 1e-6


def gelu(x):
    """The exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), written with Erf: TensorFlow's own uses Erfc,
    which ONNX lacks, and this is the form ONNX Runtime fuses into one Gelu node."""
    return 0.5 * x * (1.0 + tf.math.erf(x * (1.0 / math.sqrt(2.0))))


def _layer_norm(name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name)


class MultiHeadAttention(keras.layers.Layer):
    """Scaled dot-product attention of `heads` x `head_size`: queries from `x`, keys and values from `context`;
    `bias` [B, 1, 1, T_context] is added to the scores (0 for real keys, MASKED for padding)."""

    def __init__(self, heads: int, head_size: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.head_size, self.dropout_rate = heads, head_size, dropout
        width = heads * head_size
        self.query = keras.layers.Dense(width, name="query")
        self.key = keras.layers.Dense(width, name="key")
        self.value = keras.layers.Dense(width, name="value")
        self.output_dense = keras.layers.Dense(width, name="output")
        self.dropout = keras.layers.Dropout(dropout)

    def _split(self, x, batch):
        """[B, T, A * d] -> [B, A, T, d]."""
        return tf.transpose(tf.reshape(x, [batch, -1, self.heads, self.head_size]), [0, 2, 1, 3])

    def call(self, x, context, bias, training=None):
        batch = tf.shape(x)[0]
        q = self._split(self.query(x), batch)
        k = self._split(self.key(context), batch)
        v = self._split(self.value(context), batch)
        scores = tf.matmul(q, k, transpose_b=True) * (1.0 / math.sqrt(self.head_size))
        weights = tf.nn.softmax(scores + tf.cast(bias, scores.dtype), axis=-1)
        weights = self.dropout(weights, training=training)
        attended = tf.transpose(tf.matmul(weights, v), [0, 2, 1, 3])
        return self.output_dense(tf.reshape(attended, [batch, -1, self.heads * self.head_size]))

    def get_config(self):
        return {
            **super().get_config(),
            "heads": self.heads,
            "head_size": self.head_size,
            "dropout": self.dropout_rate,
        }


class EncoderLayer(keras.layers.Layer):
    """x = LN(x + MHA(x)) [, x = LN(x + MHA(x, other stream))], x = LN(x + FFN(x)), dropout on each sublayer."""

    def __init__(self, heads: int, head_size: int, feed_forward: int, dropout: float, cross: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.settings = {"heads": heads, "head_size": head_size, "feed_forward": feed_forward, "dropout": dropout}
        self.cross = cross
        width = heads * head_size
        self.attention = MultiHeadAttention(heads, head_size, dropout, name="self_attention")
        self.attention_norm = _layer_norm("attention_norm")
        if cross:
            self.cross_attention = MultiHeadAttention(heads, head_size, dropout, name="cross_attention")
            self.cross_norm = _layer_norm("cross_norm")
        self.intermediate = keras.layers.Dense(feed_forward * width, name="intermediate")
        self.feed_forward_output = keras.layers.Dense(width, name="feed_forward_output")
        self.feed_forward_norm = _layer_norm("feed_forward_norm")
        self.dropout = keras.layers.Dropout(dropout)

    def call(self, x, bias, other=None, other_bias=None, training=None):
        x = self.attention_norm(x + self.dropout(self.attention(x, x, bias, training=training), training=training))
        if self.cross:
            attended = self.cross_attention(x, other, other_bias, training=training)
            x = self.cross_norm(x + self.dropout(attended, training=training))
        hidden = gelu(self.intermediate(x))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward_output(hidden), training=training))

    def get_config(self):
        return {**super().get_config(), **self.settings, "cross": self.cross}


class Embedding(keras.layers.Layer):
    """Frames [B, T, D] -> Dense(H) + positions 0..T-1 [+ a learned token in front], LayerNorm, dropout."""

    def __init__(self, hidden: int, max_positions: int, with_token: bool, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.max_positions, self.with_token, self.dropout_rate = hidden, max_positions, with_token, dropout
        self.projection = keras.layers.Dense(hidden, name="projection")
        self.norm = _layer_norm("norm")
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        def init():  # BERT's; one instance per weight (a shared unseeded one repeats its values)
            return keras.initializers.TruncatedNormal(stddev=0.02)

        self.positions = self.add_weight("positions", shape=(self.max_positions, self.hidden), initializer=init())
        if self.with_token:
            self.token = self.add_weight("token", shape=(1, 1, self.hidden), initializer=init())
        super().build(input_shape)

    def call(self, frames, training=None):
        x = self.projection(frames)
        x = x + tf.cast(self.positions[: tf.shape(frames)[1]], x.dtype)[None]
        if self.with_token:
            x = tf.concat([tf.tile(tf.cast(self.token, x.dtype), [tf.shape(x)[0], 1, 1]), x], axis=1)
        return self.dropout(self.norm(x), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden": self.hidden,
            "max_positions": self.max_positions,
            "with_token": self.with_token,
            "dropout": self.dropout_rate,
        }


def _pool(x, mask, pooling: str):
    """x [B, T', H] (T' = T + 1 with a token in front), mask [B, T] (real frames) -> [B, H]."""
    if pooling in ("cls", "first"):
        return x[:, 0]
    real = tf.cast(mask, x.dtype)[..., None]
    if pooling == "mean":
        count = tf.maximum(tf.reduce_sum(real, axis=1), 1.0)
        return tf.reduce_sum(x * real, axis=1) / count
    lowest = tf.fill(tf.shape(x), tf.constant(x.dtype.min, x.dtype))
    peak = tf.reduce_max(tf.where(mask[..., None], x, lowest), axis=1)
    return tf.where(tf.reduce_any(mask, axis=1)[:, None], peak, tf.zeros_like(peak))


class TransformerEncoder(keras.layers.Layer):
    """The transformer family's encoder (see the module docstring)."""

    def __init__(self, config: TransformerConfig | dict, **kwargs):
        super().__init__(**kwargs)
        c = self.config = config if isinstance(config, TransformerConfig) else TransformerConfig(**config)
        cross = c.streams == "cross"
        streams = ("rgb", "audio") if cross else ("frames",)
        self.embeddings = [
            Embedding(c.hidden, c.max_positions, c.pooling == "cls", c.dropout, name=f"{s}_embedding") for s in streams
        ]
        self.stacks = [
            [
                EncoderLayer(c.heads, c.head_size, c.feed_forward, c.dropout, cross=cross, name=f"{s}_layer_{i}")
                for i in range(c.layers)
            ]
            for s in streams
        ]
        self.frame_mask = FrameMask(name="frame_mask")

    def call(self, frames, num_frames, training=None):
        c = self.config
        frames, real = self.frame_mask(frames, num_frames)  # padding zeroed; real: 1.0 for real frames
        mask = real > 0
        keys = tf.concat([tf.ones_like(real[:, :1]), real], axis=1) if c.pooling == "cls" else real
        bias = (1.0 - tf.cast(keys, tf.float32))[:, None, None, :] * MASKED
        inputs = [frames[..., :RGB_SIZE], frames[..., RGB_SIZE:]] if c.streams == "cross" else [frames]
        states = [embed(x, training=training) for embed, x in zip(self.embeddings, inputs)]
        for depth in range(c.layers):
            if c.streams == "cross":
                rgb, audio = states
                states = [
                    self.stacks[0][depth](rgb, bias, audio, bias, training=training),
                    self.stacks[1][depth](audio, bias, rgb, bias, training=training),
                ]
            else:
                states = [self.stacks[0][depth](states[0], bias, training=training)]
        pooled = [_pool(x, mask, c.pooling) for x in states]
        return pooled[0] if len(pooled) == 1 else tf.concat(pooled, axis=-1)

    def get_config(self):
        import dataclasses

        return {**super().get_config(), "config": dataclasses.asdict(self.config)}


def _stream_inputs(config: TransformerConfig) -> tuple[int, ...]:
    return (RGB_SIZE, AUDIO_SIZE) if config.streams == "cross" else (FEATURE_SIZE,)


def _attentions(config: TransformerConfig) -> int:
    """Attention blocks per encoder layer: self-attention, and in "cross" streams attention to the other stream."""
    return 2 if config.streams == "cross" else 1


def _sequence(config: TransformerConfig) -> int:
    return config.frames + (1 if config.pooling == "cls" else 0)


def _layer_macs(config: TransformerConfig, length: int) -> int:
    """One stream's encoder layer over `length` positions: projections, Q K^T and weights x V, the feed-forward."""
    h = config.hidden
    per_attention = 4 * length * h * h + 2 * length * length * h
    return _attentions(config) * per_attention + 2 * config.feed_forward * length * h * h


def representation_width(config: TransformerConfig) -> int:
    return config.hidden * len(_stream_inputs(config))


def transformer_flops(config: TransformerConfig) -> int:
    length = _sequence(config)
    macs = sum(
        config.frames * size * config.hidden + config.layers * _layer_macs(config, length)
        for size in _stream_inputs(config)
    )
    return 2 * macs + head_flops(representation_width(config), config.num_classes, config.head)


def transformer_weight_reads(config: TransformerConfig, fused: bool) -> int:
    """Every matrix once per video (no recurrence): of the position table only the rows of the frames used
    (frames x H), and the [CLS] token (H) with `cls` pooling."""
    h = config.hidden
    layer = _attentions(config) * 4 * h * h + 2 * config.feed_forward * h * h
    token = h if config.pooling == "cls" else 0
    per_stream = [size * h + config.frames * h + token + config.layers * layer for size in _stream_inputs(config)]
    return sum(per_stream) + head_weights(representation_width(config), config.num_classes, config.head)


@register("transformer", flops=transformer_flops, weight_reads=transformer_weight_reads)
def transformer_encoder(config: TransformerConfig) -> keras.layers.Layer:
    return TransformerEncoder(config, name="transformer")
