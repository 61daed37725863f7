"""ONNX Runtime on an x86 CPU without VNNI (AVX2 only), for the tests whose result depends on it.

There ONNX Runtime multiplies uint8 activations by int8 weights with VPMADDUBSW, which sums pairs of products in
16-bit lanes: full-range int8 weights can saturate, 7-bit ones cannot (export/sessions.py: `int8_saturates`). CI
runs on CPUs with and without VNNI, so such a test runs its check on a CPU without it wherever one is at hand:
this CPU itself when it has no VNNI, else an emulated Haswell under qemu-user (Debian: qemu-user-static; or
VIDISTILL_QEMU=path), and is skipped, saying so, where neither is.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vidistill.export.sessions import int8_saturates

QEMU = os.environ.get("VIDISTILL_QEMU") or shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
EMULATED_CPU = "Haswell"  # AVX2, FMA, no AVX-512, no VNNI


def launcher() -> list[str] | None:
    """The command prefix that runs a program on an x86 CPU without VNNI: [] on this CPU when it has none, qemu's
    emulated Haswell where qemu-user is present, None where neither is (or this is no x86-64 machine)."""
    if platform.machine() != "x86_64":
        return None
    if int8_saturates():
        return []
    return [QEMU, "-cpu", EMULATED_CPU] if QEMU else None


def where() -> str:
    """Where `max_errors` runs, for messages: "this CPU" or "an emulated Haswell"."""
    return "this CPU" if launcher() == [] else f"an emulated {EMULATED_CPU}"


needed = pytest.mark.skipif(
    launcher() is None,
    reason="needs an x86 CPU without VNNI: this CPU has VNNI and qemu-user is absent to emulate one (Debian: "
    "qemu-user-static; or set VIDISTILL_QEMU to its path)",
)

MAX_ERRORS = r"""
import sys
import numpy as np
import onnxruntime as ort

data = np.load(sys.argv[1])
for i, path in enumerate(sys.argv[2:]):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(["predictions"], {"frames": data["frames"], "num_frames": data["num_frames"]})[0]
    print(float(np.abs(got - data[f"predictions{i}"]).max()))
"""


def max_errors(files: list, references: list, frames, num_frames, workdir: str) -> list[float]:
    """Each ONNX file's max |p_file - its reference's probabilities| on (frames, num_frames), computed by ONNX
    Runtime on a CPU without VNNI (`launcher`), in one child process."""
    data = os.path.join(workdir, "without-vnni-inputs.npz")
    np.savez(data, frames=frames, num_frames=num_frames, **{f"predictions{i}": p for i, p in enumerate(references)})
    done = subprocess.run(
        [*launcher(), sys.executable, "-c", MAX_ERRORS, data, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [float(line) for line in done.stdout.split()[-len(files) :]]
