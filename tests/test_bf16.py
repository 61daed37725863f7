"""bfloat16 mixed-precision training (`mixed_precision: true`): a tiny parallel run trains a few steps with bf16
compute and float32 variables, its losses are finite, and its checkpoint restores into float32 models."""

from __future__ import annotations

from pathlib import Path

import pytest

import math
import os

import numpy as np

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf
import tf_keras as keras

from vidistill.distill.config import DataConfig, TrainConfig, load_train_config
from vidistill.distill.trainer import Run, build_models, restore_models
from vidistill.students.student import student_config
from vidistill.teachers.config import HLSTMConfig
from vidistill.teachers.heads import ClassifierHead

pytestmark = pytest.mark.slow  # a mixed-precision training run

CLASSES = 4
FRAMES = 30
STEPS = 4
TEACHER = HLSTMConfig(
    num_classes=CLASSES, frames=FRAMES, chunks=3, lower_cells=8, upper_cells=8, lower_layers=1, upper_layers=1
)


def _float_variables(model) -> list[tf.Variable]:
    return [v for v in model.variables if v.dtype.is_floating]


def _loss_events(run_dir) -> list[tuple[int, float]]:
    """(step, batch_loss) from the run's TensorBoard training logs."""
    folder = os.path.join(run_dir, "logs", "train")
    values = []
    for name in sorted(os.listdir(folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for value in event.summary.value:
                if value.tag == "batch_loss":
                    values.append((event.step, float(tf.make_ndarray(value.tensor))))
    return sorted(values)


def test_bf16_run_trains_with_float32_variables_and_restores_into_float32(tmp_path, monkeypatch, synth_data):
    data = Path(synth_data(videos=16, heldout=4, classes=CLASSES, max_frames=FRAMES).root)

    # what the classifier heads compute in while training: their policy and the dtype of what they read
    seen: list[tuple[str, str, tf.DType]] = []
    call = ClassifierHead.call

    def spy(self, x, training=None):
        seen.append((self.dtype_policy.name, self.compute_dtype, x.dtype))
        return call(self, x, training=training)

    monkeypatch.setattr(ClassifierHead, "call", spy)

    config = TrainConfig(
        mode="parallel",
        teacher=TEACHER,
        student=student_config(TEACHER, k=6),
        data=DataConfig(train=str(data / "train-*.tfrecord"), max_frames=FRAMES, batch_size=4, shuffle_buffer=16),
        steps=STEPS,
        checkpoint_every=STEPS,
        eval_every=0,
        mixed_precision=True,
    )
    run_dir = tmp_path / "run"
    run = Run(config, str(run_dir))
    assert keras.mixed_precision.global_policy().name == "float32"  # the policy applied only while building
    models = [run.models.teacher, run.models.student]
    for model in models:
        layers = [layer for layer in model.submodules if isinstance(layer, keras.layers.Layer) and layer.weights]
        assert layers and all(layer.dtype_policy.name == "mixed_bfloat16" for layer in layers), model.name
    seen.clear()  # the calls of the model building
    summary = run.train(progress=False)

    assert summary["step"] == STEPS == int(run.optimizer.iterations.numpy())
    assert load_train_config(str(run_dir)).mixed_precision is True
    # during training both heads (teacher, student) computed in bfloat16 on a bfloat16 representation
    assert len(seen) >= 2 and set(seen) == {("mixed_bfloat16", "bfloat16", tf.bfloat16)}, seen
    # ... while every variable (models and Adam's slots) stayed float32
    for model in models:
        variables = _float_variables(model)
        assert variables and all(v.dtype == tf.float32 for v in variables), model.name
    slots = [v for v in run.optimizer.variables if v.dtype.is_floating]
    assert slots and all(v.dtype == tf.float32 for v in slots)
    # the loss of every step was finite (logged each step: checkpoint_every // 10 rounds up to 1)
    losses = _loss_events(run_dir)
    assert [step for step, _ in losses] == list(range(1, STEPS + 1)), losses
    assert all(math.isfinite(loss) and loss > 0 for _, loss in losses), losses
    # mixed-precision outputs: bfloat16 representation, float32-castable probabilities in [0, 1]
    batch = {
        "frames": tf.random.stateless_normal((3, FRAMES, 1152), seed=(1, 2)),
        "num_frames": tf.constant([30, 25, 30]),
    }
    mixed = run.models.student(batch, training=False)
    assert mixed["representation"].dtype == tf.bfloat16

    # the checkpoint restores into float32 models (built without the mixed policy): same values, float32 outputs
    f32_config = load_train_config(str(run_dir))
    f32_config.mixed_precision = False
    restored = build_models(f32_config)
    restore_models(restored, str(run_dir), prefer_best=False)
    for trained, loaded in ((run.models.teacher, restored.teacher), (run.models.student, restored.student)):
        layers = [layer for layer in loaded.submodules if isinstance(layer, keras.layers.Layer) and layer.weights]
        assert layers and all(layer.dtype_policy.name == "float32" for layer in layers), loaded.name
        a, b = _float_variables(trained), _float_variables(loaded)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert y.dtype == tf.float32
            np.testing.assert_array_equal(x.numpy(), y.numpy())
    full = restored.student(batch, training=False)
    assert full["representation"].dtype == tf.float32 and full["predictions"].dtype == tf.float32
    # bf16 keeps 8 bits of mantissa: the two computations agree to about 1e-2
    np.testing.assert_allclose(
        tf.cast(mixed["predictions"], tf.float32).numpy(), full["predictions"].numpy(), atol=0.05, rtol=0
    )
    assert np.all((full["predictions"].numpy() >= 0) & (full["predictions"].numpy() <= 1))
