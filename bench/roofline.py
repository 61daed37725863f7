"""The roofline reference: a matrix-multiply peak measured on this machine, in this run, with the same provider and
thread count as the models, so each row can say what fraction of the reachable GFLOP/s it achieves.

ONNX Runtime: a graph of one MatMul of two random n x n matrices (both inputs), best of a few timed runs after a
warm-up; on a GPU with IO binding (matrices on the device, the product left there), in float32 and float16.
TensorFlow (for SavedModel rows): tf.linalg.matmul on the same device.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from vidistill.bench.runners import first_line
from vidistill.export.sessions import GPU_PROVIDERS, create_session

CPU_SIZE = 2048
GPU_SIZE = 8192
REPEATS = 5


@dataclass
class Peak:
    provider: str  # cpu, cuda, tensorrt, tf-cpu, tf-cuda
    dtype: str
    size: int
    gflops: float | None  # best of the timed runs; None when the measurement failed
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def matmul_model(size: int, dtype: str = "float32") -> bytes:
    from onnx import TensorProto, helper

    kind = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]
    a, b = (helper.make_tensor_value_info(name, kind, [size, size]) for name in ("a", "b"))
    c = helper.make_tensor_value_info("c", kind, [size, size])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul_peak", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def _matrices(size: int, dtype: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(size)
    return {name: rng.uniform(-1, 1, size=(size, size)).astype(dtype) for name in ("a", "b")}


def _best_gflops(run, size: int, repeats: int) -> float:
    run()  # warm-up (kernel selection, TensorRT engine build)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best / 1e9


def default_size(provider: str) -> int:
    return GPU_SIZE if provider in GPU_PROVIDERS or provider == "tf-cuda" else CPU_SIZE


def onnx_matmul_peak(
    provider: str, threads: int, size: int | None = None, dtype: str = "float32", repeats: int = REPEATS
) -> Peak:
    size = size or default_size(provider)
    try:
        session = create_session(matmul_model(size, dtype), provider, threads)
        inputs = _matrices(size, dtype)
        if provider in GPU_PROVIDERS:
            import onnxruntime as ort

            binding = session.io_binding()
            on_device = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in inputs.items()}
            for name, value in on_device.items():
                binding.bind_ortvalue_input(name, value)
            binding.bind_output("c", "cuda", 0)

            def run():
                session.run_with_iobinding(binding)
                binding.synchronize_outputs()

        else:

            def run():
                session.run(None, inputs)

        return Peak(provider, dtype, size, _best_gflops(run, size, repeats))
    except Exception as e:  # noqa: BLE001 - the rows then show no % of peak, and the report says why
        return Peak(provider, dtype, size, None, first_line(e))


def tf_matmul_peak(provider: str, size: int | None = None, repeats: int = REPEATS) -> Peak:
    """TensorFlow's matmul on the SavedModel runner's device (threads as SavedModelRunner configured them)."""
    name = f"tf-{provider}"
    size = size or default_size(name)
    try:
        import tensorflow as tf

        with tf.device("/GPU:0" if provider == "cuda" else "/CPU:0"):
            a, b = (tf.constant(v) for v in _matrices(size, "float32").values())

            def run():
                tf.linalg.matmul(a, b)[0, 0].numpy()  # .numpy() waits for the product

            return Peak(name, "float32", size, _best_gflops(run, size, repeats))
    except Exception as e:  # noqa: BLE001
        return Peak(name, "float32", size, None, first_line(e))


def peak_dtype(precision: str) -> str:
    """The peak a model is compared with: float16 for half-precision files (fp16, bf16) where a float16 peak was
    measured, float32 otherwise (int8 files too: there is no int8 MatMul peak)."""
    return "float16" if any(tag in precision for tag in ("fp16", "bf16")) else "float32"


def achieved_gflops(flops_per_video: int, batch: int, seconds: float) -> float:
    return flops_per_video * batch / seconds / 1e9
