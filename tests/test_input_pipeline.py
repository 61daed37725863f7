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


def test_the_input_wait_share_is_reported_and_sees_a_slow_reader(synth_data, tmp_path, monkeypatch):
    """A normal run: a share in [0, 1) in the summary and in TensorBoard. The same run with a reader that sleeps
    0.3 s per batch: most of its step time is waiting (the share above 0.6)."""
    data = synth_data()
    summary = _student_run(tmp_path, data, "uniform", "fast", steps=8).train(progress=False)
    assert 0.0 <= summary["input_wait_share"] < 0.6, summary
    assert len(_input_wait_scalars(str(tmp_path / "fast"))) == 1

    made = trainer._train_dataset

    def sleeping_dataset(config, bad_records=None):
        def wait(batch):
            slept = tf.py_function(lambda: time.sleep(0.3) or 0, [], tf.int32)
            return {**batch, "num_frames": batch["num_frames"] + slept}

        return made(config, bad_records).map(wait)

    monkeypatch.setattr(trainer, "_train_dataset", sleeping_dataset)
    summary = _student_run(tmp_path, data, "uniform", "slow", steps=8).train(progress=False)
    assert summary["input_wait_share"] > 0.6, summary
    (share,) = _input_wait_scalars(str(tmp_path / "slow"))
    assert share > 0.6
