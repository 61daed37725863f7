"""The student's classifier head in L_rep-only distillation (loss.head): "teacher" (a frozen copy of the teacher's
head, kept in sync every step) and "probe" (the head alone trained with L_CE on a stop-gradient of the student's
representation), the "auto" default, and the refusals.

Tiny H-LSTMs (8 cells, 4 classes, 30 frames) on 24 synthetic videos, so that the file runs in well under a minute.
"""

from __future__ import annotations


import numpy as np
import pytest
import yaml

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from vidistill.distill.config import DataConfig, OptimizerConfig, TrainConfig, load_train_config
from vidistill.distill.distiller import Distiller, classifier_head
from vidistill.distill.losses import LossWeights
from vidistill.distill.trainer import Run, build_models
from vidistill.students.student import student_config
from vidistill.teachers.config import HLSTMConfig

pytestmark = pytest.mark.slow  # parallel and serial training runs per head policy

CLASSES = 4
FRAMES = 30
TEACHER = HLSTMConfig(
    num_classes=CLASSES, frames=FRAMES, chunks=3, lower_cells=8, upper_cells=8, lower_layers=1, upper_layers=1
)
REP_ONLY = dict(ce=0.0, rep=0.01, pred=0.0)


@pytest.fixture(scope="module")
def data(synth_data):
    return synth_data(videos=24, heldout=8, classes=CLASSES, max_frames=FRAMES).train


def _config(data: str, loss: LossWeights, *, mode: str = "parallel", width: float = 1.0, steps: int = 4) -> TrainConfig:
    return TrainConfig(
        mode=mode,
        teacher=TEACHER,
        student=student_config(TEACHER, k=6, width=width),
        loss=loss,
        data=DataConfig(train=data, max_frames=FRAMES, batch_size=4, shuffle_buffer=16),
        optimizer=OptimizerConfig(learning_rate=0.01),
        steps=steps,
        checkpoint_every=steps,
        eval_every=0,
    )


def _batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "frames": tf.constant(rng.normal(size=(4, FRAMES, 1152)).astype(np.float32)),
        "num_frames": tf.constant([30, 24, 20, 27], tf.int32),
        "labels": tf.constant(rng.integers(0, 2, size=(4, CLASSES)).astype(np.float32)),
    }


def _values(variables) -> list[np.ndarray]:
    return [v.numpy().copy() for v in variables]


def _head_values(model) -> list[np.ndarray]:
    return _values(classifier_head(model).weights)


def _adam():
    import tf_keras as keras

    return keras.optimizers.Adam(0.01)


# ------------------------------------------------------------------------------------------------ the option
def test_head_option_defaults_and_refusals():
    assert LossWeights().head == "auto" and LossWeights().resolved_head() == "own"
    assert LossWeights(**REP_ONLY).resolved_head() == "teacher"  # nothing else would train the head
    assert LossWeights(ce=0.0, rep=0.01, pred=1.0).resolved_head() == "own"  # L_PRED trains it
    assert LossWeights(**REP_ONLY, head="probe").resolved_head() == "probe"
    with pytest.raises(ValueError, match="LossWeights.head must be one of auto, own, teacher, probe"):
        LossWeights(head="frozen")
    with pytest.raises(ValueError, match=r"'probe'.*needs ce = 0"):
        LossWeights(ce=1.0, head="probe")
    # a run records the resolved head; modes without distillation leave it alone
    assert TrainConfig(mode="serial", loss=LossWeights(**REP_ONLY)).resolve().loss.head == "teacher"
    assert TrainConfig(mode="parallel").resolve().loss.head == "own"
    assert TrainConfig(mode="student", loss=LossWeights(**REP_ONLY)).resolve().loss.head == "auto"


def test_teacher_head_needs_the_teachers_width(data, tmp_path):
    """ "auto" with ce = pred = 0 means the teacher's head; a narrower student cannot use it: a clear error, before
    the run directory exists (the probe test below trains that student with head "probe")."""
    run_dir = tmp_path / "narrow"
    with pytest.raises(
        ValueError,
        match=r"'teacher' needs the student's representation to have the teacher's "
        r"width, but it is 8 wide and the teacher's 16.*'probe'",
    ):
        Run(_config(data, LossWeights(**REP_ONLY), width=0.5), str(run_dir))
    assert not run_dir.exists()


# ------------------------------------------------------------------------------------------------ teacher
def test_teacher_head_parallel_run_reads_with_the_trained_teachers_head(data, tmp_path):
    """L_rep only, parallel: the teacher's head trains (its own L_CE), the student's head is not trained but is a
    copy of the teacher's head after every step, in memory and in the checkpoint; the student's encoder learns
    from L_REP; and the student's predictions are the teacher's head applied to the student's representation."""
    from vidistill.distill.runs import load_model

    run_dir = tmp_path / "run"
    run = Run(_config(data, LossWeights(**REP_ONLY)), str(run_dir))
    teacher, student = run.models.teacher, run.models.student
    s_head = classifier_head(student)
    assert not s_head.trainable
    assert not {id(v) for v in s_head.weights} & {id(v) for v in run.distiller.trainable_variables}
    encoder = [v for v in student.trainable_variables if not any(v is w for w in s_head.weights)]
    assert encoder
    teacher_head_before, encoder_before = _head_values(teacher), _values(encoder)
    run.train(progress=False)

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["loss"]
    assert saved["head"] == "teacher"  # "auto", resolved and recorded
    teacher_head_after = _head_values(teacher)
    assert any(not np.array_equal(a, b) for a, b in zip(teacher_head_before, teacher_head_after))  # it trained
    for s, t in zip(_head_values(student), teacher_head_after):
        np.testing.assert_array_equal(s, t)  # the student's head is the teacher's of the last step
    assert any(not np.array_equal(a, b) for a, b in zip(encoder_before, _values(encoder)))  # L_REP trained it

    # the checkpoint holds the same: the converted / loaded student classifies with the teacher's head
    loaded_student = load_model(str(run_dir), "student").model
    loaded_teacher = load_model(str(run_dir), "teacher").model
    for s, t in zip(_head_values(loaded_student), _head_values(loaded_teacher)):
        np.testing.assert_array_equal(s, t)
    batch = _batch()
    out = loaded_student({"frames": batch["frames"], "num_frames": batch["num_frames"]})
    through_teacher = classifier_head(loaded_teacher)(out["representation"])
    np.testing.assert_allclose(out["predictions"].numpy(), through_teacher.numpy(), atol=1e-6)

    # a config.yaml written before loss.head existed (no head: "auto") resumes, and the copy goes on
    path = run_dir / "config.yaml"
    old = yaml.safe_load(path.read_text())
    del old["train"]["loss"]["head"]
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    config = load_train_config(str(run_dir))
    assert config.loss.head == "auto"
    config.steps += 2
    resumed = Run(config, str(run_dir), resume=True)
    assert resumed.step == 4 and resumed.train(progress=False)["step"] == 6
    for s, t in zip(_head_values(resumed.models.student), _head_values(resumed.models.teacher)):
        np.testing.assert_array_equal(s, t)


def test_teacher_head_serial_is_the_frozen_teachers(data):
    """Serial mode: the student's head is the (frozen) teacher's head from the first step on, and stays so."""
    config = _config(data, LossWeights(**REP_ONLY), mode="serial")
    models = build_models(config)
    distiller = Distiller("serial", models.teacher, models.student, config.loss, models.projection)
    distiller.compile(optimizer=_adam())
    for s, t in zip(_head_values(models.student), _head_values(models.teacher)):
        np.testing.assert_array_equal(s, t)  # copied when the Distiller is made
    teacher_before = _values(models.teacher.variables)
    for seed in range(3):
        distiller.train_step(_batch(seed))
    for a, b in zip(teacher_before, _values(models.teacher.variables)):
        np.testing.assert_array_equal(a, b)  # frozen
    for s, t in zip(_head_values(models.student), _head_values(models.teacher)):
        np.testing.assert_array_equal(s, t)


# ------------------------------------------------------------------------------------------------ probe
def test_probe_head_learns_while_the_representation_gets_no_ce_gradient():
    """head "probe" with a narrower student (the projection carries L_REP): L_CE (head_ce) reaches the head and
    nothing else; L_REP reaches the encoder and the projection, never the head; training moves the head and
    lowers head_ce on a fixed batch."""
    config = TrainConfig(
        mode="parallel",
        teacher=TEACHER,
        student=student_config(TEACHER, k=6, width=0.5),
        loss=LossWeights(**REP_ONLY, head="probe"),
        data=DataConfig(max_frames=FRAMES),
    )
    models = build_models(config)
    assert models.projection is not None
    distiller = Distiller("parallel", models.teacher, models.student, config.loss, models.projection)
    distiller.compile(optimizer=_adam())
    head = classifier_head(models.student)
    head_vars = head.trainable_variables
    encoder_vars = [v for v in models.student.trainable_variables if not any(v is w for w in head_vars)]
    assert head_vars and encoder_vars and head.trainable
    batch = _batch()
    with tf.GradientTape(persistent=True) as tape:
        logs = distiller.compute_losses(batch, training=True)
    assert float(logs["head_ce"]) > 0 and float(logs["rep"]) > 0 and float(logs["ce"]) == 0
    assert all(g is None for g in tape.gradient(logs["head_ce"], encoder_vars + models.projection.trainable_variables))
    head_grads = tape.gradient(logs["head_ce"], head_vars)
    assert all(g is not None for g in head_grads) and any(float(tf.reduce_max(tf.abs(g))) > 0 for g in head_grads)
    assert all(g is None for g in tape.gradient(logs["rep"], head_vars))
    assert any(g is not None for g in tape.gradient(logs["rep"], encoder_vars))
    assert all(g is None for g in tape.gradient(logs["student_total"], models.teacher.trainable_variables))

    head_before = _values(head_vars)
    first = float(distiller.train_step(batch)["head_ce"])
    for _ in range(9):
        last = float(distiller.train_step(batch)["head_ce"])
    assert any(not np.array_equal(a, b) for a, b in zip(head_before, _values(head_vars)))
    assert last < first, (first, last)
