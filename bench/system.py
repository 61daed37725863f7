"""What the benchmark ran on: versions, CPU and GPU models, cores, memory. Never imports TensorFlow (its version
comes from the installed package's metadata)."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import psutil

from vidistill.export.sessions import cpu_model, gpus


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def system_info() -> dict:
    import numpy
    import onnxruntime

    memory = psutil.virtual_memory().total
    return {
        "cpu": cpu_model(),
        "physical_cores": physical_cores(),
        "logical_cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "gpus": gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_package": "onnxruntime-gpu" if _version("onnxruntime-gpu") else "onnxruntime",
        "onnxruntime_cuda_build": getattr(onnxruntime, "cuda_version", None) or None,
        "onnx": _version("onnx"),
        "numpy": numpy.__version__,
        "tensorflow": _version("tensorflow"),
    }


def describe(info: dict) -> list[tuple[str, str]]:
    """(field, value) lines for the report."""
    gpu = "; ".join(f"{g['name']} (driver {g['driver']}, {g['memory']})" for g in info["gpus"]) or "none found"
    return [
        ("CPU", f"{info['cpu']}, {info['physical_cores']} physical / {info['logical_cores']} logical cores"),
        ("memory", f"{info['memory_gib']} GiB"),
        ("GPU", gpu),
        ("OS", info["os"]),
        ("Python", info["python"]),
        (
            "ONNX Runtime",
            f"{info['onnxruntime']} ({info['onnxruntime_package']}, built for CUDA "
            f"{info['onnxruntime_cuda_build'] or '-'})",
        ),
        ("onnx / numpy", f"{info['onnx']} / {info['numpy']}"),
        ("TensorFlow", f"{info['tensorflow'] or 'not installed'}"),
    ]
