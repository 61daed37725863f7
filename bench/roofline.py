"""The roofline: what each row could reach on this machine, measured in the same run with the same provider and
threads as the models. A row's time is bounded below by max(FLOPs / compute peak, bytes moved / bandwidth); the
report shows the row against that bound and says which term sets it.

- Compute peak: a graph of one MatMul of two random n x n matrices (both inputs), best of a few timed runs after a
  warm-up; on a GPU with IO binding (matrices on the device, the product left there), in float32 and float16; on
  the CPU also int8 (MatMulInteger, uint8 x int8, what ONNX Runtime's quantized models run). TensorFlow (for
  SavedModel rows): tf.linalg.matmul on the same device.
- Bandwidth: the same session type multiplying one vector by a float32 matrix far larger than the caches
  (GEMV): the rate at which a batch-1 model can stream its weights, in bytes per second.
- Bytes moved per run: the weights read for one video (card.weight_reads_per_video: a recurrent matrix is read
  again at every sequential step) times the bytes per weight of the file's precision on that provider
  (`BYTES_PER_WEIGHT`), plus the batch's input frames. Activations are not counted: a lower bound on the traffic.
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


BANDWIDTH_SHAPE = (4096, 16384)  # 256 MB of float32 weights: beyond any CPU cache
# Bytes read per weight: int8 files 1; fp16 / bf16 files 2 on a GPU, but 4 on the CPU, whose kernels compute in
# float32 (the stored weights are widened once, at load); tf-bf16 casts its bfloat16 variables to float32 at every
# run (2 read, 4 written, 4 read again); float32 otherwise.
BYTES_PER_WEIGHT = {"int8-dynamic": 1, "int8-static": 1, "int8-qat": 1, "tf-bf16": 10}
GPU_BYTES_PER_WEIGHT = {**BYTES_PER_WEIGHT, "fp16": 2, "bf16": 2}


@dataclass
class Bandwidth:
    provider: str
    bytes: int  # of the matrix streamed
    gbs: float | None  # GB/s (1e9 bytes), best of the timed runs
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def matmul_model(size: int, dtype: str = "float32", rows: int | None = None, columns: int | None = None) -> bytes:
    """One MatMul (MatMulInteger for int8: uint8 x int8 -> int32) of an [rows, size] by a [size, columns] input,
    square by default."""
    from onnx import TensorProto, helper

    rows, columns = rows or size, columns or size
    if dtype == "int8":
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [rows, size])
        b = helper.make_tensor_value_info("b", TensorProto.INT8, [size, columns])
        c = helper.make_tensor_value_info("c", TensorProto.INT32, [rows, columns])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
    else:
        kind = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]
        a = helper.make_tensor_value_info("a", kind, [rows, size])
        b = helper.make_tensor_value_info("b", kind, [size, columns])
        c = helper.make_tensor_value_info("c", kind, [rows, columns])
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
    graph = helper.make_graph([node], "matmul_peak", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def _matrices(size: int, dtype: str, rows: int | None = None, columns: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(size)
    shapes = {"a": (rows or size, size), "b": (size, columns or size)}
    if dtype == "int8":
        return {
            "a": rng.integers(0, 256, shapes["a"], dtype=np.uint8),
            "b": rng.integers(-128, 128, shapes["b"], dtype=np.int8),
        }
    return {name: rng.uniform(-1, 1, size=shape).astype(dtype) for name, shape in shapes.items()}


def _best_seconds(run, repeats: int) -> float:
    run()  # warm-up (kernel selection, TensorRT engine build)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _best_gflops(run, size: int, repeats: int) -> float:
    return 2.0 * size**3 / _best_seconds(run, repeats) / 1e9


def default_size(provider: str) -> int:
    return GPU_SIZE if provider in GPU_PROVIDERS or provider == "tf-cuda" else CPU_SIZE


def _runner(model: bytes, inputs: dict[str, np.ndarray], provider: str, threads: int):
    """A function running `model` once on `inputs` (on a GPU: inputs on the device, the output left there)."""
    session = create_session(model, provider, threads)
    if provider not in GPU_PROVIDERS:
        return lambda: session.run(None, inputs)
    import onnxruntime as ort

    binding = session.io_binding()
    on_device = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in inputs.items()}
    for name, value in on_device.items():
        binding.bind_ortvalue_input(name, value)
    binding.bind_output("c", "cuda", 0)

    def run():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    run.keep = on_device  # the device copies live as long as the runner
    return run


def onnx_matmul_peak(
    provider: str, threads: int, size: int | None = None, dtype: str = "float32", repeats: int = REPEATS
) -> Peak:
    size = size or default_size(provider)
    try:
        run = _runner(matmul_model(size, dtype), _matrices(size, dtype), provider, threads)
        return Peak(provider, dtype, size, _best_gflops(run, size, repeats))
    except Exception as e:  # noqa: BLE001 - the rows then show no % of peak, and the report says why
        return Peak(provider, dtype, size, None, first_line(e))


def onnx_bandwidth(provider: str, threads: int, repeats: int = REPEATS) -> Bandwidth:
    """Bytes per second a vector-matrix product streams a float32 matrix of BANDWIDTH_SHAPE (see the docstring)."""
    size, columns = BANDWIDTH_SHAPE
    nbytes = 4 * size * columns
    try:
        model = matmul_model(size, "float32", rows=1, columns=columns)
        run = _runner(model, _matrices(size, "float32", rows=1, columns=columns), provider, threads)
        return Bandwidth(provider, nbytes, nbytes / _best_seconds(run, repeats) / 1e9)
    except Exception as e:  # noqa: BLE001
        return Bandwidth(provider, nbytes, None, first_line(e))


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


def peak_dtype(precision: str, provider: str) -> str:
    """The peak a model is compared with: on a GPU float16 for half-precision files (fp16, bf16); on the CPU int8
    for int8 files (there is no half-precision arithmetic there: those files compute in float32); float32
    otherwise."""
    if provider in GPU_PROVIDERS:
        return "float16" if precision in ("fp16", "bf16") else "float32"
    return "int8" if precision.startswith("int8") else "float32"


def bytes_moved(weight_reads: int, precision: str, provider: str, batch: int, frames: int, feature_size: int) -> int:
    """Bytes one run moves at least: the weights (see the module docstring) and the batch's float32 frames."""
    per_weight = (GPU_BYTES_PER_WEIGHT if provider in GPU_PROVIDERS else BYTES_PER_WEIGHT).get(precision, 4)
    return weight_reads * per_weight + batch * frames * feature_size * 4


def roof_seconds(flops: float, nbytes: float, peak_gflops: float | None, bandwidth_gbs: float | None):
    """(the roofline's time in seconds, "compute" or "memory": the term that sets it); None terms are left out."""
    terms = {}
    if peak_gflops:
        terms["compute"] = flops / (peak_gflops * 1e9)
    if bandwidth_gbs:
        terms["memory"] = nbytes / (bandwidth_gbs * 1e9)
    if not terms:
        return None, None
    bound = max(terms, key=terms.get)
    return terms[bound], bound


def achieved_gflops(flops_per_video: int, batch: int, seconds: float) -> float:
    return flops_per_video * batch / seconds / 1e9
