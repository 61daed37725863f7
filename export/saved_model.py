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


def _bf16_graph(serve) -> tf.compat.v1.GraphDef:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    graph_def = frozen.graph.as_graph_def()
    stored = []
    for node in list(graph_def.node):
        if node.op != "Const" or node.attr["dtype"].type != tf.float32.as_datatype_enum:
            continue
        values = tf.make_ndarray(node.attr["value"].tensor)
        if values.size < _MIN_BF16_ELEMENTS:
            continue
        const = graph_def.node.add()
        const.name, const.op = f"{node.name}/bf16", "Const"
        const.attr["dtype"].type = tf.bfloat16.as_datatype_enum
        const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(tf.constant(values, tf.bfloat16)))
        node.op = "Cast"
        node.input.append(const.name)
        for key in list(node.attr):
            del node.attr[key]
        node.attr["SrcT"].type = tf.bfloat16.as_datatype_enum
        node.attr["DstT"].type = tf.float32.as_datatype_enum
        node.attr["Truncate"].b = False
        stored.append(node.name)
    if not stored:
        raise ExportError("tf-bf16: the frozen graph holds no float weights to store in bfloat16")
    return graph_def, frozen


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
        graph_def, frozen = _bf16_graph(serve)
        inputs = [t.name for t in frozen.inputs]
        # the frozen function returns its outputs flattened in sorted key order
        outputs = {name: t.name for name, t in zip(sorted(["predictions", "representation"]), frozen.outputs)}
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
