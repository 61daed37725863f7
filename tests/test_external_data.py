"""Graph-only ONNX files: weights split off beside the graph, and filled with seeded random values where only the
graph travelled (export/external_data.py, used for the paper-size files of the GPU run). Needs no TensorFlow."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from vidistill.export.external_data import fill_weights, random_values, split_weights
from vidistill.export.precision import bf16_values, lower_precision


C = 512


def _model(seed: int = 0) -> onnx.ModelProto:
    """x [B, 512] -> BatchNormalization -> MatMul [512, 32] -> Reshape -> Sigmoid; the Reshape's shape is small."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(np.ones(C, np.float32), "scale"),
        numpy_helper.from_array(np.zeros(C, np.float32), "bias"),
        numpy_helper.from_array(np.zeros(C, np.float32) + 0.1, "mean"),
        numpy_helper.from_array(rng.uniform(1, 2, C).astype(np.float32), "var"),
        numpy_helper.from_array(rng.normal(size=(C, 32)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([-1, 32], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["n"]),
        helper.make_node("MatMul", ["n", "w"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["r"]),
        helper.make_node("Sigmoid", ["r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 32])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _run(path: str, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


X = np.random.default_rng(1).uniform(-2, 2, (3, C)).astype(np.float32)


def test_split_weights_round_trip(tmp_path):
    model = _model()
    original = str(tmp_path / "whole.onnx")
    onnx.save(model, original)
    graph, data = split_weights(model, str(tmp_path / "m.onnx"))
    assert os.path.basename(data) == "m.onnx.data"
    assert os.path.getsize(graph) < 1024 < os.path.getsize(data)  # the graph alone is small
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data", "whole.onnx"]  # no temporary file left
    np.testing.assert_array_equal(_run(graph, X), _run(original, X))
    # small tensors (the Reshape's shape) stay inside the graph with their real values
    inline = {t.name for t in onnx.load(graph, load_external_data=False).graph.initializer if not t.external_data}
    assert inline == {"shape"}


def test_fill_weights_gives_a_runnable_model_with_finite_outputs(tmp_path):
    graph, data = split_weights(_model(), str(tmp_path / "m.onnx"))
    size = os.path.getsize(data)
    os.remove(data)  # only the graph travelled
    filled = fill_weights(graph, seed=3)
    assert filled["files"] == ["m.onnx.data"] and filled["tensors"] == 5 and filled["bytes"] == size
    assert os.path.getsize(data) == size
    y = _run(graph, X)
    assert y.shape == (3, 32) and np.isfinite(y).all()
    # seeded: filling again gives the same file; another seed another one
    first = open(data, "rb").read()
    fill_weights(graph, seed=3)
    assert open(data, "rb").read() == first
    fill_weights(graph, seed=4)
    assert open(data, "rb").read() != first


def test_batchnorm_variances_are_filled_positive():
    values = np.frombuffer(random_values("v", [1000], TensorProto.FLOAT, positive=True), np.float32)
    assert values.min() >= 0.5 and values.max() <= 1.5
    values = np.frombuffer(random_values("w", [1000], TensorProto.FLOAT), np.float32)
    assert values.min() < 0 < values.max() and np.abs(values).max() <= 0.05


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_same_name_same_values_across_precisions(precision):
    """The fp32, fp16 and bf16 files of one model get the same weights up to rounding: their initializers keep
    their names, and the values are seeded by the name."""
    fp32 = np.frombuffer(random_values("lstm/W", [4, 300], TensorProto.FLOAT, seed=7), np.float32)
    if precision == "fp16":
        low = np.frombuffer(random_values("lstm/W", [4, 300], TensorProto.FLOAT16, seed=7), np.float16)
        np.testing.assert_array_equal(low, fp32.astype(np.float16))
    else:
        low = bf16_values(np.frombuffer(random_values("lstm/W", [4, 300], TensorProto.BFLOAT16, seed=7), np.uint16))
        np.testing.assert_allclose(low, fp32, rtol=2**-8)
    other = np.frombuffer(random_values("lstm/R", [4, 300], TensorProto.FLOAT, seed=7), np.float32)
    assert not np.array_equal(other, fp32)


def test_filled_fp32_and_fp16_files_agree(tmp_path):
    model = _model()
    fp16 = lower_precision(model, "fp16", {"BatchNormalization"})
    outputs = {}
    for name, proto in (("fp32", model), ("fp16", fp16)):
        graph, data = split_weights(proto, str(tmp_path / f"{name}.onnx"))
        os.remove(data)
        fill_weights(graph)
        outputs[name] = _run(graph, X)
    assert np.abs(outputs["fp32"] - outputs["fp16"]).max() < 1e-2


def test_fill_refuses_a_file_with_its_weights_inside(tmp_path):
    path = str(tmp_path / "whole.onnx")
    onnx.save(_model(), path)
    with pytest.raises(ValueError, match="whole.onnx has no external tensors"):
        fill_weights(path)


def test_fill_cli(tmp_path, capsys):
    from vidistill.bench.gpu.fill import main

    graph, data = split_weights(_model(), str(tmp_path / "m.onnx"))
    os.remove(data)
    whole = str(tmp_path / "whole.onnx")
    onnx.save(_model(), whole)
    assert main([graph, whole]) == 0
    out = capsys.readouterr().out
    assert "m.onnx: 5 tensors" in out and "whole.onnx has no external tensors" in out
    assert os.path.exists(data)
