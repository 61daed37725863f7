"""export.sessions: the one way sessions are made (exporter, Predictor, bench). Tiny ONNX graphs; no TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from vidistill.export.sessions import (
    EXECUTION_PROVIDERS,
    ProviderUnavailable,
    available_providers,
    create_session,
    gpu_present,
    session_options,
)

NO_GPU = pytest.mark.skipif(gpu_present(), reason="checks the behaviour on a machine without an NVIDIA GPU")


def _add_model(path=None) -> bytes | str:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "add", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if path is None:
        return model.SerializeToString()
    path.write_bytes(model.SerializeToString())
    return str(path)


def test_cpu_session_from_bytes_and_from_a_path(tmp_path):
    for model in (_add_model(), _add_model(tmp_path / "add.onnx")):
        session = create_session(model, "cpu", 1)
        assert session.get_providers() == ["CPUExecutionProvider"]
        (y,) = session.run(None, {"x": np.array([[1, 2, 3]], np.float32)})
        np.testing.assert_array_equal(y, [[2, 4, 6]])


def test_unknown_provider_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown provider 'rocm': choose from cpu, cuda, tensorrt"):
        create_session(_add_model(), "rocm")


@NO_GPU
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_a_gpu_provider_that_did_not_load_is_an_error_not_a_silent_cpu_session(tmp_path, provider):
    path = _add_model(tmp_path / "add.onnx")
    wanted = EXECUTION_PROVIDERS[provider][0]
    with pytest.raises(ProviderUnavailable, match=rf"{wanted} did not load for {path} \(the session runs on CPU"):
        create_session(path, provider)


@NO_GPU
def test_available_providers_without_a_gpu_is_cpu_alone():
    # onnxruntime-gpu lists CUDA as available on any machine; a session there would run on CPU
    assert available_providers() == ["CPUExecutionProvider"]


def test_session_options():
    options = session_options(3)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert session_options(None).intra_op_num_threads == 0  # ONNX Runtime's default
    assert session_options(1, profile_prefix="/tmp/p").enable_profiling


def test_int8_saturates_on_x86_without_vnni_or_amx():
    from vidistill.export.sessions import int8_saturates

    avx2 = {"sse4_2", "avx", "avx2", "fma"}
    assert int8_saturates(avx2, "x86_64")  # VPMADDUBSW: pairs of products in 16-bit lanes
    assert not int8_saturates(avx2 | {"avx512f", "avx512_vnni"}, "x86_64")
    assert not int8_saturates(avx2 | {"avx_vnni"}, "x86_64")  # VNNI without AVX-512 (Alder Lake and later)
    assert not int8_saturates(avx2 | {"amx_int8"}, "x86_64")
    assert not int8_saturates(set(), "aarch64")  # ARM widens its int8 products
