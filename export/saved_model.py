"""TF SavedModels of the exported network, with the same inputs as its ONNX files: the baseline a user would
otherwise deploy (`tf-fp32`), and `tf-bf16`, the same graph with its weights stored in bfloat16 (half the size; the
2018 4th-place trick): the variables are frozen into constants, each large float constant is stored as bf16 and
cast back to float32 inside the graph, so serving still computes in float32.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import tensorflow as tf

from vidistill.export.errors import ExportError
from vidistill.export.tf2onnx_lean import frozen_graph_def
from vidistill.yt8m.constants import FEATURE_SIZE

from vidistill.export.config import TF_PRECISIONS
from vidistill.yt8m.errors import ConfigError

_MIN_BF16_ELEMENTS = 64  # small constants (shapes, scalars, biases of tiny layers) stay float32


def _signature(frames: int):
    return (
        tf.TensorSpec([None, frames, FEATURE_SIZE], tf.float32, name="frames"),
        tf.TensorSpec([None], tf.int32, name="num_frames"),
    )


def _serve_function(network, frames: int):
    @tf.function(input_signature=_signature(frames))
    def serve(frames, num_frames):
        outputs = network({"frames": frames, "num_frames": num_frames}, training=False)
        return {"predictions": outputs["predictions"], "representation": outputs["representation"]}

    return serve


def _bf16_graph(serve) -> tuple[tf.compat.v1.GraphDef, list[str], list[str]]:
    """(the frozen graph with its large float constants stored as bf16, input names, output names in sorted key
    order). The graph is rebuilt node by node (not edited in place), so the float32 weights are freed with it."""
    concrete = serve.get_concrete_function()
    frozen = frozen_graph_def(concrete)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.versions.CopyFrom(frozen.versions)
    graph_def.library.CopyFrom(frozen.library)
    stored = 0
    for node in frozen.node:
        if node.op != "Const" or node.attr["dtype"].type != tf.float32.as_datatype_enum:
            graph_def.node.add().CopyFrom(node)
            continue
        values = tf.make_ndarray(node.attr["value"].tensor)
        if values.size < _MIN_BF16_ELEMENTS:
            graph_def.node.add().CopyFrom(node)
            continue
        const = graph_def.node.add()
        const.name, const.op, const.device = f"{node.name}/bf16", "Const", node.device
        const.attr["dtype"].type = tf.bfloat16.as_datatype_enum
        const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(tf.constant(values, tf.bfloat16)))
        cast = graph_def.node.add()
        cast.name, cast.op, cast.device = node.name, "Cast", node.device
        cast.input.append(const.name)
        cast.attr["SrcT"].type = tf.bfloat16.as_datatype_enum
        cast.attr["DstT"].type = tf.float32.as_datatype_enum
        cast.attr["Truncate"].b = False
        stored += 1
    if not stored:
        raise ExportError("tf-bf16: the frozen graph holds no float weights to store in bfloat16")
    inputs = [t.name for t in concrete.inputs if t.dtype != tf.resource]
    return graph_def, inputs, [t.name for t in concrete.outputs]


def save_saved_model(network, frames: int, path: str, precision: str) -> str:
    """Writes `path` (a directory; built beside it, then renamed)."""
    if precision not in TF_PRECISIONS:
        raise ConfigError(f"unknown TF precision {precision!r}; choose one of {', '.join(TF_PRECISIONS)}")
    serve = _serve_function(network, frames)
    module = tf.Module()
    if precision == "tf-fp32":
        module.variables_ = list(network.variables)
        module.serve = serve
    else:
        graph_def, inputs, output_names = _bf16_graph(serve)
        # the function returns its outputs flattened in sorted key order
        outputs = dict(zip(sorted(["predictions", "representation"]), output_names))
        wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
        module.serve = wrapped.prune(feeds=inputs, fetches=outputs)
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
