"""Recurrent families: the Hierarchical LSTM (the paper's teacher) and plain stacked LSTM / GRU baselines.

Variable lengths are handled by masking: steps past num_frames carry the state over unchanged, so padding never
changes the output. The representation E is the final state of every layer (c and h for an LSTM, h for a GRU).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from vidistill.teachers.config import HLSTMConfig, RNNConfig
from vidistill.teachers.heads import head_flops, head_weights
from vidistill.teachers.registry import register
from vidistill.yt8m.constants import FEATURE_SIZE


def _l2_normalize_frames(frames):
    return tf.math.l2_normalize(frames, axis=-1)


class StackedRNN(keras.layers.Layer):
    """Stacked LSTM/GRU layers over a masked sequence; returns the final states of every layer, concatenated."""

    def __init__(self, cells: int, layers: int, cell: str = "lstm", **kwargs):
        super().__init__(**kwargs)
        self.cells, self.num_layers, self.cell = cells, layers, cell
        # Export only: trace without the mask, so that tf2onnx emits fused LSTM/GRU nodes (a masked Keras RNN
        # becomes a Loop); export/ then sets those nodes' sequence_lens from num_frames, which is equivalent.
        self.ignore_mask = False
        rnn = keras.layers.LSTM if cell == "lstm" else keras.layers.GRU
        self.rnns = [
            rnn(cells, return_sequences=i < layers - 1, return_state=True, name=f"{cell}_{i}") for i in range(layers)
        ]

    @property
    def state_size(self) -> int:
        return self.cells * self.num_layers * (2 if self.cell == "lstm" else 1)

    def call(self, sequence, mask=None):
        states = []
        if self.ignore_mask:
            mask = None
        for rnn in self.rnns:
            output, *final = rnn(sequence, mask=mask)
            if self.cell == "lstm":
                h, c = final
                states += [c, h]
            else:
                states += final
            sequence = output
        return tf.concat(states, axis=-1)

    def get_config(self):
        return {**super().get_config(), "cells": self.cells, "layers": self.num_layers, "cell": self.cell}


def sqrt_chunking(length: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(chunks, frames per chunk) for an input of `length` frames (an int32 scalar tensor, >= 1) under chunk rule
    "sqrt": default_chunks(length) = clip(round(sqrt(length)), 1, length) chunks of ceil(length / chunks) frames
    (sqrt(T) is never exactly half-way between two integers, so float32 rounding gives Python's round)."""
    length = tf.maximum(length, 1)
    root = tf.round(tf.sqrt(tf.cast(length, tf.float32)))
    chunks = tf.clip_by_value(tf.cast(root, tf.int32), 1, length)
    return chunks, (length + chunks - 1) // chunks


class HierarchicalLSTMEncoder(keras.layers.Layer):
    """Frames cut into `chunks` contiguous chunks of ceil(T / chunks) frames (chunk rule "sqrt": about sqrt(T)
    chunks of the input's length T at run time); a shared lower stacked LSTM encodes
    each chunk (its final states, c and h of every layer, are the chunk's vector); an upper stacked LSTM runs over
    the chunk vectors; E = the upper final states. Masked by num_frames at both levels."""

    def __init__(self, config: HLSTMConfig | dict, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, HLSTMConfig) else HLSTMConfig(**config)
        c = self.config
        self.lower = StackedRNN(c.lower_cells, c.lower_layers, "lstm", name="lower")
        self.upper = StackedRNN(c.upper_cells, c.upper_layers, "lstm", name="upper")

    def call(self, frames, num_frames):
        c = self.config
        if c.l2_normalize:
            frames = _l2_normalize_frames(frames)
        if c.chunk_rule == "sqrt":
            length = tf.shape(frames)[1]
            chunks, size = sqrt_chunking(length)
        else:
            length, chunks, size = c.frames, c.chunks, c.chunk_frames
        padded = size * chunks
        frames = tf.pad(frames, [[0, 0], [0, padded - length], [0, 0]])
        mask = tf.sequence_mask(num_frames, padded)
        chunk_frames = tf.reshape(frames, [-1, size, FEATURE_SIZE])
        chunk_mask = tf.reshape(mask, [-1, size])
        chunk_vectors = self.lower(chunk_frames, mask=chunk_mask)
        chunk_vectors = tf.reshape(chunk_vectors, [-1, chunks, self.lower.state_size])
        return self.upper(chunk_vectors, mask=tf.reduce_any(tf.reshape(mask, [-1, chunks, size]), axis=-1))

    def get_config(self):
        import dataclasses

        return {**super().get_config(), "config": dataclasses.asdict(self.config)}


class RNNEncoder(keras.layers.Layer):
    """A plain stacked LSTM / GRU over the (masked) frames."""

    def __init__(self, config: RNNConfig | dict, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, RNNConfig) else RNNConfig(**config)
        self.rnn = StackedRNN(self.config.cells, self.config.layers, self.config.cell, name="rnn")

    def call(self, frames, num_frames):
        if self.config.l2_normalize:
            frames = _l2_normalize_frames(frames)
        return self.rnn(frames, mask=tf.sequence_mask(num_frames, tf.shape(frames)[1]))

    def get_config(self):
        import dataclasses

        return {**super().get_config(), "config": dataclasses.asdict(self.config)}


def rnn_layer_macs(cell: str, inputs: int, cells: int) -> int:
    """Multiply-accumulates of one recurrent layer for one step: gates x (input + recurrent) weights."""
    gates = 4 if cell == "lstm" else 3
    return gates * cells * (inputs + cells)


def stacked_rnn_macs(cell: str, inputs: int, cells: int, layers: int) -> int:
    return sum(rnn_layer_macs(cell, inputs if i == 0 else cells, cells) for i in range(layers))


def hlstm_flops(config: HLSTMConfig) -> int:
    """Lower LSTM over every frame slot of every chunk, upper LSTM over the chunks, then the head."""
    lower_state = 2 * config.lower_layers * config.lower_cells
    lower = (
        config.chunk_frames
        * config.chunks
        * stacked_rnn_macs("lstm", FEATURE_SIZE, config.lower_cells, config.lower_layers)
    )
    upper = config.chunks * stacked_rnn_macs("lstm", lower_state, config.upper_cells, config.upper_layers)
    width = 2 * config.upper_layers * config.upper_cells
    return 2 * (lower + upper) + head_flops(width, config.num_classes, config.head)


def rnn_flops(config: RNNConfig) -> int:
    steps = config.frames * stacked_rnn_macs(config.cell, FEATURE_SIZE, config.cells, config.layers)
    width = config.cells * config.layers * (2 if config.cell == "lstm" else 1)
    return 2 * steps + head_flops(width, config.num_classes, config.head)


def stacked_rnn_weight_reads(cell: str, inputs: int, cells: int, layers: int, steps: int, fused: bool) -> int:
    """Weights one stacked RNN reads over `steps` sequential steps (model_weight_reads explains `fused`)."""
    gates = 4 if cell == "lstm" else 3
    total = 0
    for i in range(layers):
        w, r = gates * cells * (inputs if i == 0 else cells), gates * cells * cells
        total += (w + r * steps) if fused else (w + r) * steps
    return total


def hlstm_weight_reads(config: HLSTMConfig, fused: bool) -> int:
    """The lower LSTM steps through a chunk's frames (all chunks at once), the upper one through the chunks."""
    lower_state = 2 * config.lower_layers * config.lower_cells
    lower = stacked_rnn_weight_reads(
        "lstm", FEATURE_SIZE, config.lower_cells, config.lower_layers, config.chunk_frames, fused
    )
    upper = stacked_rnn_weight_reads("lstm", lower_state, config.upper_cells, config.upper_layers, config.chunks, fused)
    width = 2 * config.upper_layers * config.upper_cells
    return lower + upper + head_weights(width, config.num_classes, config.head)


def rnn_weight_reads(config: RNNConfig, fused: bool) -> int:
    steps = stacked_rnn_weight_reads(config.cell, FEATURE_SIZE, config.cells, config.layers, config.frames, fused)
    width = config.cells * config.layers * (2 if config.cell == "lstm" else 1)
    return steps + head_weights(width, config.num_classes, config.head)


@register("hlstm", flops=hlstm_flops, weight_reads=hlstm_weight_reads)
def hlstm_encoder(config: HLSTMConfig) -> keras.layers.Layer:
    return HierarchicalLSTMEncoder(config, name="hlstm")


@register("rnn", flops=rnn_flops, weight_reads=rnn_weight_reads)
def rnn_encoder(config: RNNConfig) -> keras.layers.Layer:
    return RNNEncoder(config, name=config.cell)
