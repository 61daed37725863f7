"""ONNX Runtime sessions, made one way for the exporter, the Predictor and the benchmark.

Provider names: cpu, cuda, tensorrt. What really loaded is read back from the session (`get_providers()`):
onnxruntime-gpu lists CUDA among the available providers on a machine without a GPU, then creates the session
on CPU alone. A session whose first provider is not the one asked for raises ProviderUnavailable rather than
running (or timing) the wrong thing.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

import onnxruntime as ort
from vidistill.yt8m.errors import ConfigError, UserError

EXECUTION_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# float32 on CUDA means float32: no TF32 tensor-core rounding, so an fp32 file passes parity against CPU and the
# fp32 MatMul peak is a true fp32 peak (fp16 files and the fp16 peak are there for the tensor cores).
PROVIDER_OPTIONS = {"CUDAExecutionProvider": {"use_tf32": "0"}}
PROVIDER_NAMES = tuple(EXECUTION_PROVIDERS)
GPU_PROVIDERS = ("cuda", "tensorrt")
LOG_ERRORS_ONLY = 3


class ProviderUnavailable(UserError, RuntimeError):
    """The provider asked for did not load (no GPU, missing CUDA / TensorRT libraries)."""


def gpus() -> list[dict]:
    """One dict per NVIDIA GPU (name, driver, memory) from nvidia-smi; [] when there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            found.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return found


# x86 flags of an int8 dot product that accumulates in 32 bits (VPDPBUSD, AMX): without one, ONNX Runtime's CPU
# kernels multiply uint8 by int8 with VPMADDUBSW, whose pairs of products saturate in 16-bit lanes when both
# operands are large, unless the weights have a reduced range (export's default: 7-bit weights)
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def _cpuinfo(key: str) -> str | None:
    """The value of /proc/cpuinfo's first line starting with `key` (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo's first "flags" line; empty where there is none)."""
    return set((_cpuinfo("flags") or "").split())


def int8_saturates(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """True on an x86 CPU without VNNI or AMX (`flags`: this CPU's), where full-range int8 weights can saturate
    ONNX Runtime's integer products; False elsewhere (other architectures widen their products)."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return False
    flags = cpu_flags() if flags is None else flags
    return not any(flag in flags for flag in INT8_DOT_PRODUCT_FLAGS)


def gpu_present() -> bool:
    nvidia = "/proc/driver/nvidia/gpus"
    return bool(gpus()) or (os.path.isdir(nvidia) and bool(os.listdir(nvidia)))


def available_providers() -> list[str]:
    """ONNX Runtime's available providers, CPU alone where there is no GPU (see the module's docstring)."""
    return ort.get_available_providers() if gpu_present() else ["CPUExecutionProvider"]


def check_provider(provider: str) -> str:
    """The provider name, or ValueError naming the valid ones."""
    if provider not in EXECUTION_PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r}: choose from {', '.join(PROVIDER_NAMES)}")
    return provider


_gpu_prepared = False


def prepare_gpu() -> None:
    """onnxruntime.preload_dlls() once, before the first CUDA session, where there is a GPU (it loads CUDA and cuDNN
    from the nvidia-* pip packages); harmless when it finds nothing."""
    global _gpu_prepared
    if _gpu_prepared:
        return
    _gpu_prepared = True
    if gpu_present() and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - missing pip packages: the session creation says what is missing
            pass


def session_options(threads: int | None, *, profile_prefix: str | None = None) -> ort.SessionOptions:
    """Sequential execution, all graph optimizations, errors only in the log; `threads` intra-op threads (None or
    0: ONNX Runtime's default, one per physical core)."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = LOG_ERRORS_ONLY
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def create_session(
    model, provider: str = "cpu", threads: int | None = None, *, profile_prefix: str | None = None
) -> ort.InferenceSession:
    """A session on `provider` (cpu / cuda / tensorrt, each with its fallbacks for unsupported nodes) for `model`
    (a path or serialized bytes); ProviderUnavailable if that provider did not load."""
    check_provider(provider)
    if provider in GPU_PROVIDERS:
        prepare_gpu()
    wanted = EXECUTION_PROVIDERS[provider]
    providers = [(name, PROVIDER_OPTIONS[name]) if name in PROVIDER_OPTIONS else name for name in wanted]
    session = ort.InferenceSession(model, session_options(threads, profile_prefix=profile_prefix), providers=providers)
    loaded = session.get_providers()
    if not loaded or loaded[0] != wanted[0]:
        where = f" for {model}" if isinstance(model, str) else ""
        raise ProviderUnavailable(
            f"{wanted[0]} did not load{where} (the session runs on {', '.join(loaded)}): no GPU, or no CUDA / cuDNN "
            "libraries? Use provider 'cpu' there"
        )
    return session
