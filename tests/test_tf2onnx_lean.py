"""The lean conversion (export/tf2onnx_lean.py) against tf2onnx's own `from_function`: the same ONNX graph, op for
op, and the same outputs, on models whose kernels are large enough to be kept out of TensorFlow's graphs; and
which weights stay constants for grappler."""

from __future__ import annotations

import collections

import numpy as np
import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import onnxruntime as ort
import tensorflow as tf

from vidistill.export import onnx_export, serving, tf2onnx_lean
from vidistill.export.serving import serving_function
from vidistill.export.source import backbone_of
from vidistill.students.student import build_student, student_config
from vidistill.teachers.config import HeadConfig, HLSTMConfig, NetVLADConfig, NeXtVLADConfig, RNNConfig
from vidistill.teachers.registry import build_model
from vidistill.yt8m.constants import FEATURE_SIZE

CONFIGS = {
    "hlstm": HLSTMConfig(
        num_classes=40, frames=12, chunks=3, lower_cells=16, upper_cells=16, lower_layers=1, upper_layers=1
    ),
    "gru": RNNConfig(num_classes=40, frames=12, cell="gru", cells=16, layers=1),
    "netvlad": NetVLADConfig(num_classes=40, frames=12, clusters=8, hidden=32, head=HeadConfig(mixtures=2)),
    "nextvlad": NeXtVLADConfig(
        num_classes=40, frames=12, expansion=2, groups=4, clusters=8, hidden=32, se_reduction=4, dropout=0.0
    ),
}


def _run(proto, frames, num_frames):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"frames": frames, "num_frames": num_frames})


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_lean_conversion_matches_tf2onnx(family):
    import tf2onnx

    tf.random.set_seed(0)
    config = CONFIGS[family]
    network = build_model(config)
    function, signature = serving_function(network, config.frames), serving.signature(config.frames)
    with onnx_export.unmasked_recurrence(network):
        concrete = function.get_concrete_function(*signature)
        _, stripped = tf2onnx_lean.strip_weights(tf2onnx_lean.frozen_graph_def(concrete))
        lean = tf2onnx_lean.function_to_onnx(function, signature, opset=onnx_export.OPSET)
        with tf2onnx_lean.lean_optimizers():
            plain, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=onnx_export.OPSET)
    assert stripped, "no weight was kept out of TensorFlow's graphs: the test would not exercise the lean path"
    ops = lambda proto: collections.Counter(n.op_type for n in proto.graph.node)  # noqa: E731
    assert ops(lean) == ops(plain)
    shapes = lambda proto: sorted((i.data_type, tuple(i.dims)) for i in proto.graph.initializer)  # noqa: E731
    assert shapes(lean) == shapes(plain)
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(3, config.frames, FEATURE_SIZE)).astype(np.float32)
    num_frames = np.array([config.frames, 5, 1], np.int32)
    for a, b in zip(_run(lean, frames, num_frames), _run(plain, frames, num_frames)):
        np.testing.assert_array_equal(a, b)


def test_a_student_converts_with_its_weights_outside_tensorflow():
    """The exporter's own path (convert: fused nodes, sequence lengths) on a k=4 student, against Keras."""
    config = student_config(CONFIGS["hlstm"], k=4, policy="uniform")
    backbone = backbone_of(build_student(config))
    proto = onnx_export.convert(backbone, config.model)
    assert {n.op_type for n in proto.graph.node} >= {"LSTM", "MatMul"}
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(2, 4, FEATURE_SIZE)).astype(np.float32)
    num_frames = np.array([4, 2], np.int32)
    expected = backbone({"frames": frames, "num_frames": num_frames}, training=False)
    predictions = _run(proto, frames, num_frames)[[o.name for o in proto.graph.output].index("predictions")]
    np.testing.assert_allclose(predictions, expected["predictions"].numpy(), atol=1e-6)


def test_weights_read_by_constant_folding_stay_constants():
    """A kernel read by a MatMul is stripped; a bias that is unstacked (as a GRU's is) and a vector that gets an
    epsilon added (a batch-norm's variance) stay, as do small constants; a kernel under fake quantization is
    stripped (grappler does not fold it)."""
    rng = np.random.default_rng(0)  # random values: TensorFlow stores a constant of one repeated value compactly
    big = rng.normal(size=(128, 256)).astype(np.float32)  # 128 KB: above STRIP_BYTES

    @tf.function(input_signature=[tf.TensorSpec([None, 128], tf.float32)])
    def f(x):
        kernel = tf.constant(big, name="kernel")
        bias = tf.constant(rng.normal(size=(2, 128 * 64)).astype(np.float32), name="bias")
        variance = tf.constant(rng.uniform(1, 2, 128 * 128).astype(np.float32), name="variance")
        quantized = tf.quantization.quantize_and_dequantize_v2(
            tf.constant(-big, name="quantized"), -1.0, 1.0, range_given=True
        )
        small = tf.constant(rng.normal(size=128).astype(np.float32), name="small")
        first, _ = tf.unstack(tf.identity(bias))
        scale = tf.math.rsqrt(variance[:128] + 1e-3)
        return tf.matmul(x * scale * small, kernel) + tf.matmul(x, quantized) + first[:256]

    graph_def = tf2onnx_lean.frozen_graph_def(f.get_concrete_function())
    _, stripped = tf2onnx_lean.strip_weights(graph_def)
    assert sorted(stripped) == ["kernel", "quantized"]
    assert tf2onnx_lean.weights_folded_by_grappler(graph_def) >= {"bias", "variance"}
