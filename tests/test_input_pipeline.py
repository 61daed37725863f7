"""The trainer's input: a student alone decodes only its k frames (and trains exactly as on whole videos), and every
run reports the share of its step time spent waiting for input."""

from __future__ import annotations

import glob
import time

import numpy as np
import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from vidistill.distill import trainer
from vidistill.distill.config import DataConfig, TrainConfig
from vidistill.distill.trainer import Run
from vidistill.students.student import StudentConfig, student_config
from vidistill.teachers.config import HLSTMConfig

from conftest import TINY_CLASSES, TINY_FRAMES

pytestmark = pytest.mark.slow  # trains four tiny runs


def _student_run(tmp_path, data, policy: str, name: str, steps: int = 4) -> Run:
    backbone = HLSTMConfig(
        num_classes=TINY_CLASSES, frames=TINY_FRAMES, chunks=3, lower_cells=8, upper_cells=8, lower_layers=1
    )
    config = TrainConfig(
        mode="student",
        student=student_config(backbone, k=7, policy=policy),
        data=DataConfig(train=data.train, max_frames=TINY_FRAMES, batch_size=8, deterministic=True),
        steps=steps,
        checkpoint_every=steps,
        eval_every=0,
    )
    return Run(config, str(tmp_path / name))


@pytest.mark.parametrize("policy", ["uniform", "fml"])
def test_a_student_alone_trains_on_its_decoded_frames_exactly_as_on_whole_videos(
    synth_data, tmp_path, monkeypatch, policy
):
    data = synth_data()
    chosen = _student_run(tmp_path, data, policy, "chosen")
    assert chosen.config.student.frames_to_decode(training=True) is not None
    batch = next(iter(trainer._train_dataset(chosen.config)))
    assert batch["frames"].shape[1] == 7  # only the student's frames were decoded
    chosen.train(progress=False)

    monkeypatch.setattr(StudentConfig, "frames_to_decode", lambda self, training=False: None)
    whole = _student_run(tmp_path, data, policy, "whole")
    assert next(iter(trainer._train_dataset(whole.config)))["frames"].shape[1] == TINY_FRAMES
    whole.train(progress=False)
    for a, b in zip(chosen.models.student.weights, whole.models.student.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)


def test_batches_of_uint8_codes_train_exactly_like_float_batches(synth_data, tmp_path, monkeypatch):
    """With a GPU the trainer hands the step uint8 codes, which it dequantizes itself: same losses, same weights."""
    data = synth_data()
    floats = _student_run(tmp_path, data, "uniform", "floats")
    batch = next(iter(trainer._train_dataset(floats.config)))
    floats.train(progress=False)
    monkeypatch.setattr(trainer, "_step_dequantizes", lambda: True)
    codes = _student_run(tmp_path, data, "uniform", "codes")
    coded = next(iter(trainer._train_dataset(codes.config)))
    assert coded["frames"].dtype == tf.uint8 and batch["frames"].dtype == tf.float32
    same = codes.distiller.compute_losses(coded, training=False)["loss"]
    assert float(same) == float(codes.distiller.compute_losses(batch, training=False)["loss"])
    codes.train(progress=False)
    for a, b in zip(floats.models.student.weights, codes.models.student.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)


def _input_wait_scalars(run_dir: str) -> list[float]:
    values = []
    for path in glob.glob(f"{run_dir}/logs/input/*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "input_wait_share":
                    values.append(float(tf.make_ndarray(value.tensor)))
    return values


SLEEP = 0.5  # seconds a slow reader sleeps per batch: many times a tiny step's computation, even on a loaded machine


def test_the_input_wait_share_is_reported_and_sees_a_slow_reader(synth_data, tmp_path, monkeypatch):
    """A normal run: its share (1 - computing time / wall time of the timed steps) in the summary and in
    TensorBoard. The same run with a reader that sleeps SLEEP seconds per batch waits for it: its waiting time grows
    by at least half of what it slept (the reader may run ahead of the steps by a batch or two). Judged against the
    normal run on the same machine at the same time, not against a fixed share: a loaded machine waits more."""
    data = synth_data()
    steps = 8
    fast = _student_run(tmp_path, data, "uniform", "fast", steps=steps)
    summary = fast.train(progress=False)
    assert summary["input_wait_share"] == pytest.approx(1 - fast.input_wait.compute / fast.input_wait.wall)
    assert 0.0 <= summary["input_wait_share"] < 1.0, summary
    (logged,) = _input_wait_scalars(str(tmp_path / "fast"))
    assert logged == pytest.approx(summary["input_wait_share"], rel=1e-6)  # one interval: the run's share

    made = trainer._train_dataset

    def sleeping_dataset(config, bad_records=None):
        def wait(batch):
            slept = tf.py_function(lambda: time.sleep(SLEEP) or 0, [], tf.int32)
            return {**batch, "num_frames": batch["num_frames"] + slept}

        return made(config, bad_records).map(wait)

    monkeypatch.setattr(trainer, "_train_dataset", sleeping_dataset)
    slow = _student_run(tmp_path, data, "uniform", "slow", steps=steps)
    slow_summary = slow.train(progress=False)
    waited = {run: run.input_wait.wall - run.input_wait.compute for run in (fast, slow)}
    timed = steps - 1  # the first step (tracing) is not timed
    print(f"waited {waited[fast]:.2f} s, with the slow reader {waited[slow]:.2f} s ({timed} timed steps)")
    assert waited[slow] - waited[fast] > 0.5 * SLEEP * timed, waited
    assert slow_summary["input_wait_share"] > summary["input_wait_share"]
    (share,) = _input_wait_scalars(str(tmp_path / "slow"))
    assert share == pytest.approx(slow_summary["input_wait_share"], rel=1e-6)
