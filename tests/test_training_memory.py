"""A training step needs its floor and little more: the weights, Adam's two slots and the gradients.

Two causes put NetVLAD-WILLOW's parallel training step 2.5 GB above that floor (13.3 GB against a budget of 12.3):
Keras' Adam updates and `clipnorm` made transient copies of each variable, and an update could run while the
backward pass still read its variable, so that TensorFlow copied the variable first. The child process below trains
a parallel pair whose hidden layers dominate the weights (2 x 75 M parameters) for one step and reports how far the
step's peak rose above the resident size before it (read before the checkpoint is saved, whose serialized buffers
are no part of the step): the gradients (one copy of the weights) and a margin. Before the fixes it rose by about
twice the weights.
"""

from __future__ import annotations

import os

import pytest
from conftest import child_result

CHILD = r"""
import json, sys
import vidistill
from vidistill.distill.config import DataConfig, TrainConfig
from vidistill.distill.trainer import Run
from vidistill.students.student import student_config
from vidistill.teachers.config import HeadConfig, NetVLADConfig
from vidistill.yt8m.memory import trim_heap

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

teacher = NetVLADConfig(num_classes=4, frames=30, clusters=64, hidden=1024, head=HeadConfig(kind="logistic"))
config = TrainConfig(mode="parallel", teacher=teacher, student=student_config(teacher, k=10),
                     data=DataConfig(train=sys.argv[1], max_frames=30, batch_size=2), steps=1, checkpoint_every=1,
                     eval_every=0)
run = Run(config, sys.argv[2])
variables = run.distiller.trainable_variables
run.optimizer.build(variables)
trim_heap()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak resident size (VmHWM) to the current one
before = status("VmRSS")
step_peak = []
save = run.manager.save

def save_after_reading_the_peak(*args, **kwargs):  # the checkpoint's own buffers are not the step's
    step_peak.append(status("VmHWM"))
    return save(*args, **kwargs)

run.manager.save = save_after_reading_the_peak
run.train(progress=False)
print("RESULT " + json.dumps({
    "rise": step_peak[0] - before,
    "weights": sum(v.shape.num_elements() * 4 for v in variables),
    "largest": max(v.shape.num_elements() * 4 for v in variables),
}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="resetting the peak needs Linux's /proc")
def test_a_parallel_training_step_rises_by_the_gradients_only(tmp_path, synth_data):
    result = child_result(CHILD, synth_data().train, str(tmp_path / "run"))
    assert result["largest"] > 0.4 * result["weights"] / 2  # the hidden layer dominates each network
    print(f"step peak rise {result['rise'] / 1e6:.0f} MB, weights {result['weights'] / 1e6:.0f} MB")
    assert result["rise"] < result["weights"] + result["largest"], result


def test_fused_adam_trains_like_keras_adam():
    """The same 20 clipped steps (clipnorm engaged: the gradients are large) with Keras' Adam and with FusedAdam:
    the same weights and optimizer state, up to float rounding, in the same variables (the checkpoints' layout)."""
    import numpy as np

    import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
    import tensorflow as tf
    import tf_keras as keras

    from vidistill.distill.optimizer import FusedAdam

    def train(optimizer_class):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.layers.Dense(64, activation="relu", input_shape=(32,)), keras.layers.Dense(8)])
        optimizer = optimizer_class(keras.optimizers.schedules.ExponentialDecay(1e-2, 10, 0.9), clipnorm=0.5)
        rng = np.random.default_rng(0)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(x) - y) ** 2)
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

        for _ in range(20):
            step(rng.normal(size=(16, 32)).astype("float32"), 10 * rng.normal(size=(16, 8)).astype("float32"))
        return model, optimizer

    (keras_model, keras_adam), (fused_model, fused_adam) = train(keras.optimizers.Adam), train(FusedAdam)
    slots = lambda optimizer: [v.name.split("/")[:2] for v in optimizer.variables]  # noqa: E731  (e.g. Adam/m)
    assert slots(fused_adam) == slots(keras_adam)
    for a, b in zip(
        keras_model.trainable_variables + keras_adam.variables, fused_model.trainable_variables + fused_adam.variables
    ):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5, rtol=1e-4, err_msg=a.name)
    moved = max(float(np.abs(v.numpy()).max()) for v in keras_adam.variables[1:])
    assert moved > 1e-3  # the slots hold real state
