"""Loss terms as parts (distill/terms.py), the mode's properties (distill/modes.py) and the head policies
(distill/heads.py): a new term is one class and a config name, and it trains."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from vidistill.distill.config import DataConfig, TrainConfig, load_train_config
from vidistill.distill.distiller import Distiller
from vidistill.distill.losses import LossWeights, cross_entropy
from vidistill.distill.modes import Mode
from vidistill.distill.terms import LOSS_TERMS, LossTerm, register_loss_term, terms_for
from vidistill.distill.trainer import Run, build_models
from vidistill.students.student import student_config


class CosineRepresentation(LossTerm):
    """1 - cos(E_T, E_S), batch mean: a term the project does not ship, added the way a user would."""

    name = "rep_cosine"
    needs = frozenset({"teacher.representation", "student.representation"})

    def compute(self, inputs):
        t = tf.math.l2_normalize(tf.cast(inputs.teacher["representation"], tf.float32), axis=-1)
        s = tf.math.l2_normalize(tf.cast(inputs.student["representation"], tf.float32), axis=-1)
        return tf.reduce_mean(1.0 - tf.reduce_sum(t * s, axis=-1))


@pytest.fixture
def cosine_term():
    register_loss_term(CosineRepresentation)
    yield CosineRepresentation
    del LOSS_TERMS["rep_cosine"]


def test_mode_properties_and_parsing():
    table = {  # has_teacher, has_student, trains_teacher, distills, restores_teacher
        "parallel": (True, True, True, True, False),
        "serial": (True, True, False, True, True),
        "teacher": (True, False, True, False, False),
        "student": (False, True, False, False, False),
    }
    for name, expected in table.items():
        mode = Mode.parse(name)
        assert mode == name and f"{mode}" == name and str(mode) == name
        assert (
            mode.has_teacher,
            mode.has_student,
            mode.trains_teacher,
            mode.distills,
            mode.restores_teacher,
        ) == expected
    with pytest.raises(ValueError, match="--mode must be one of parallel, serial, teacher, student, got 'jointly'"):
        Mode.parse("jointly", "--mode")
    config = TrainConfig(mode="serial")
    assert config.mode is Mode.SERIAL and config.to_dict()["mode"] == "serial"
    assert yaml.safe_load(yaml.safe_dump(config.to_dict()))["mode"] == "serial"  # a plain string in config.yaml


def test_mode_from_a_config_file_is_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mode: jointly\n")
    with pytest.raises(
        ValueError, match=r"c\.yaml: train\.mode must be one of parallel, serial, teacher, student, got 'jointly'"
    ):
        load_train_config(str(path))


def test_terms_of_each_mode():
    weights = LossWeights(ce=0.5, rep=0.1, pred=2.0, pred_kind="binary", temperature=3.0)
    names = {mode: [(t.name, t.weight) for t in terms_for(mode, weights)] for mode in Mode}
    assert names[Mode.TEACHER] == [("teacher_ce", 1.0)]
    assert names[Mode.STUDENT] == [("ce", 1.0)]
    assert names[Mode.SERIAL] == [("ce", 0.5), ("rep", 0.1), ("pred", 2.0)]
    assert names[Mode.PARALLEL] == [("teacher_ce", 1.0), ("ce", 0.5), ("rep", 0.1), ("pred", 2.0)]
    pred = terms_for("serial", weights)[2]
    assert (pred.kind, pred.temperature) == ("binary", 3.0)
    assert [t.trains for t in terms_for("parallel", weights)] == ["teacher", "student", "student", "student"]


def test_a_registered_term_joins_the_student_loss(cosine_term, random_outputs):
    labels, teacher, student = random_outputs(b=5, c=6, e=4)
    out = LossWeights(ce=1.0, rep=0.0, pred=0.0, extra={"rep_cosine": 0.5}).student_loss(labels, teacher, student)
    assert set(out) == {"ce", "rep", "pred", "rep_cosine", "total"}
    t = teacher["representation"] / np.linalg.norm(teacher["representation"], axis=1, keepdims=True)
    s = student["representation"] / np.linalg.norm(student["representation"], axis=1, keepdims=True)
    expected = float(np.mean(1.0 - np.sum(t * s, axis=1)))
    assert float(out["rep_cosine"]) == pytest.approx(expected, rel=1e-5)
    ce = float(cross_entropy(labels, student["predictions"]))
    assert float(out["total"]) == pytest.approx(ce + 0.5 * expected, rel=1e-6)
    # weight 0: logged as 0.0 and never computed (it may lack its inputs)
    out = LossWeights(rep=0.0, extra={"rep_cosine": 0.0}).student_loss(
        labels, {"predictions": teacher["predictions"]}, {"predictions": student["predictions"]}
    )
    assert float(out["rep_cosine"]) == 0.0


def test_a_term_missing_its_inputs_or_unregistered_is_named(cosine_term, random_outputs):
    labels, teacher, student = random_outputs(b=5, c=6, e=4)
    with pytest.raises(ValueError, match="loss term 'rep_cosine' needs student.representation"):
        LossWeights(ce=0.0, rep=0.0, extra={"rep_cosine": 1.0}).student_loss(
            labels, teacher, {"predictions": student["predictions"]}
        )
    with pytest.raises(ValueError, match=r"no loss term named 'rep_kosine'; registered: \[.*'rep_cosine'"):
        LossWeights(extra={"rep_kosine": 1.0}).student_loss(labels, teacher, student)
    with pytest.raises(ValueError, match=r"LossWeights.extra.rep_cosine must be a finite number >= 0, got -1"):
        LossWeights(extra={"rep_cosine": -1})
    config = TrainConfig(mode="serial", loss=LossWeights(extra={"rep_kosine": 1.0}))
    with pytest.raises(ValueError, match=r"loss.extra: no loss term named 'rep_kosine'; registered: \[.*'rep_cosine'"):
        config.validate()
    with pytest.raises(ValueError, match="already registered"):

        class Another(CosineRepresentation):
            pass

        register_loss_term(Another)


def test_a_new_term_trains_from_a_config_file_and_never_reaches_the_teacher(
    cosine_term, synth_data, tiny_teacher, tmp_path
):
    """The term named in a config file: the run saves it, logs it, and its gradient reaches the student only."""
    data = synth_data()
    config = TrainConfig(
        mode="parallel",
        teacher=tiny_teacher,
        student=student_config(tiny_teacher, k=6),
        loss=LossWeights(ce=1.0, rep=0.0, pred=0.0, extra={"rep_cosine": 2.0}),
        data=DataConfig(train=data.train, max_frames=30, batch_size=4, shuffle_buffer=8),
        steps=3,
        checkpoint_every=3,
        eval_every=0,
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"train": config.to_dict()}))
    loaded = load_train_config(str(path))
    assert loaded.loss.extra == {"rep_cosine": 2.0}

    models = build_models(loaded)
    distiller = Distiller(loaded.mode, models.teacher, models.student, loaded.loss, models.projection)
    rng = np.random.default_rng(0)
    batch = {
        "frames": tf.constant(rng.normal(size=(4, 30, 1152)).astype(np.float32)),
        "num_frames": tf.constant([30, 24, 20, 27], tf.int32),
        "labels": tf.constant(rng.integers(0, 2, size=(4, 4)).astype(np.float32)),
    }
    with tf.GradientTape(persistent=True) as tape:
        logs = distiller.compute_losses(batch, training=True)
    assert float(logs["rep_cosine"]) > 0
    assert float(logs["student_total"]) == pytest.approx(float(logs["ce"]) + 2.0 * float(logs["rep_cosine"]), rel=1e-6)
    assert float(logs["loss"]) == pytest.approx(float(logs["student_total"]) + float(logs["teacher_ce"]), rel=1e-6)
    assert all(g is None for g in tape.gradient(logs["rep_cosine"], models.teacher.trainable_variables))
    assert any(g is not None for g in tape.gradient(logs["rep_cosine"], models.student.trainable_variables))

    run = Run(loaded, str(tmp_path / "run"))
    run.train(progress=False)
    assert run.step == 3
    assert load_train_config(str(tmp_path / "run")).loss.extra == {"rep_cosine": 2.0}
