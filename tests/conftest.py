"""Shared test fixtures: tiny synthetic data made once per session, and the tiny teacher most tests train.

The fast tier (a developer's loop) is `python -m pytest -m "not slow"`; CI runs everything (setup.cfg declares
the `slow` marker).
"""

from __future__ import annotations

import dataclasses
import os

import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)

TINY_CLASSES = 4
TINY_FRAMES = 30


@dataclasses.dataclass(frozen=True)
class SynthData:
    """A folder written by `vidistill synth`: `train` / `heldout` are glob patterns of its records (train-*,
    validate-*)."""

    root: str

    @property
    def train(self) -> str:
        return os.path.join(self.root, "train-*.tfrecord")

    @property
    def heldout(self) -> str:
        return os.path.join(self.root, "validate-*.tfrecord")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """`synth_data(videos=24, heldout=8, classes=4, min_frames=30, max_frames=30, shards=1, seed=0,
    segments=False)` -> SynthData: written once per distinct argument set in the session (read-only for tests:
    a test that changes the files must make its own)."""
    from vidistill.cli import main

    made: dict[tuple, SynthData] = {}

    def make(
        *,
        videos: int = 24,
        heldout: int = 8,
        classes: int = TINY_CLASSES,
        min_frames: int = TINY_FRAMES,
        max_frames: int = TINY_FRAMES,
        shards: int = 1,
        seed: int = 0,
        segments: bool = False,
    ) -> SynthData:
        key = (videos, heldout, classes, min_frames, max_frames, shards, seed, segments)
        if key not in made:
            out = tmp_path_factory.mktemp("synth")
            argv = [
                "synth",
                "--out",
                str(out),
                "--videos",
                str(videos),
                "--heldout",
                str(heldout),
                "--classes",
                str(classes),
                "--min-frames",
                str(min_frames),
                "--max-frames",
                str(max_frames),
                "--shards",
                str(shards),
                "--seed",
                str(seed),
                "--workers",
                "1",
            ]
            if segments:
                argv.append("--segments")
            assert main(argv) == 0
            made[key] = SynthData(str(out))
        return made[key]

    return make


@pytest.fixture(scope="session")
def random_outputs():
    """`random_outputs(seed=0, b=4, c=5, e=3)` -> (labels [b, c], teacher, student): labels with ~30% positives and
    model outputs {"predictions" [b, c] in [0.05, 0.95], "representation" [b, e]}, float32, for the loss tests."""
    import numpy as np

    def make(seed: int = 0, b: int = 4, c: int = 5, e: int = 3):
        rng = np.random.default_rng(seed)
        labels = (rng.random((b, c)) < 0.3).astype(np.float32)
        teacher, student = (
            {
                "predictions": rng.uniform(0.05, 0.95, (b, c)).astype(np.float32),
                "representation": rng.normal(size=(b, e)).astype(np.float32),
            }
            for _ in range(2)
        )
        return labels, teacher, student

    return make


@pytest.fixture(scope="session")
def tiny_teacher():
    """An H-LSTM of 8 cells, 4 classes, 30 frames: seconds to train a few steps."""
    from vidistill.teachers.config import HLSTMConfig

    return HLSTMConfig(
        num_classes=TINY_CLASSES,
        frames=TINY_FRAMES,
        chunks=3,
        lower_cells=8,
        upper_cells=8,
        lower_layers=1,
        upper_layers=1,
    )


def child_result(code: str, *args: str, timeout: int = 600) -> dict:
    """Runs `code` in a fresh Python process (no GPU), with `args` as its sys.argv[1:], and returns the JSON it
    printed on its last line starting with "RESULT " (failing with the process's output when there is none)."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.stdout + done.stderr)[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])
