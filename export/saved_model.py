"""TF SavedModels of the exported network, with the same inputs as its ONNX files: the baseline a user would
otherwise deploy (`tf-fp32`), and `tf-bf16`, the same graph with its weights stored in bfloat16 (half the size; the
2018 4th-place trick): the network is frozen, each float weight becomes a bfloat16 variable cast back to float32
where the graph reads it, so serving still computes in float32.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import tensorflow as tf

from vidistill.export.errors import ExportError
from vidistill.export.serving import serving_function
from vidistill.export.tf2onnx_lean import frozen_graph_def, strip_weights

from vidistill.export.config import TF_PRECISIONS
from vidistill.yt8m.errors import ConfigError


_MIN_BF16_BYTES = 256  # smaller constants (shapes, scalars, biases of tiny layers) stay float32 constants


def _bf16_module(serve) -> tf.Module:
    """A module serving the frozen graph of `serve` with each large weight a bfloat16 variable, cast to float32
    where the graph reads it. Variables, not constants: TensorFlow's constant folding would turn cast constants back
    into float32 ones when the model loads (3 copies of the weights in memory, measured), which it never does to a
    variable read."""
    concrete = serve.get_concrete_function()
    graph_def, weights = strip_weights(frozen_graph_def(concrete), min_bytes=_MIN_BF16_BYTES, keep_folded=False)
    placeholders = {n.name: n for n in graph_def.node if n.name in weights}
    module = tf.Module()
    module.weights = []
    casts = {}
    for name, content in weights.items():
        node = placeholders[name]
        dtype = tf.dtypes.as_dtype(node.attr["dtype"].type)
        shape = [d.size for d in node.attr["shape"].shape.dim]
        values = np.frombuffer(content, dtype.as_numpy_dtype).reshape(shape)
        stored = tf.Variable(tf.constant(values, tf.bfloat16) if dtype == tf.float32 else values, trainable=False)
        module.weights.append(stored)
        casts[name] = (stored, dtype)
    del weights
    if not any(dtype == tf.float32 for _, dtype in casts.values()):
        raise ExportError("tf-bf16: the frozen graph holds no float weights to store in bfloat16")

    def imported():
        input_map = {f"{name}:0": tf.cast(stored, dtype) for name, (stored, dtype) in casts.items()}
        tf.compat.v1.import_graph_def(graph_def, input_map=input_map, name="")

    inputs = [t.name for t in concrete.inputs if t.dtype != tf.resource]
    # the function returns its outputs flattened in sorted key order
    outputs = dict(zip(sorted(["predictions", "representation"]), [t.name for t in concrete.outputs]))
    module.serve = tf.compat.v1.wrap_function(imported, []).prune(feeds=inputs, fetches=outputs)
    return module


def save_saved_model(network, frames: int | None, path: str, precision: str) -> str:
    """Writes `path` (a directory; built beside it, then renamed); `frames` None: any number of frames."""
    if precision not in TF_PRECISIONS:
        raise ConfigError(f"unknown TF precision {precision!r}; choose one of {', '.join(TF_PRECISIONS)}")
    serve = serving_function(network, frames)
    if precision == "tf-fp32":
        module = tf.Module()
        module.variables_ = list(network.variables)
        module.serve = serve
    else:
        module = _bf16_module(serve)
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


class SavedModelRunner:
    """Loads a SavedModel written here and runs its serving signature on numpy inputs."""

    def __init__(self, path: str):
        self.function = tf.saved_model.load(path).signatures["serving_default"]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.function(frames=tf.constant(inputs["frames"]), num_frames=tf.constant(inputs["num_frames"]))
        return {name: value.numpy() for name, value in outputs.items()}
