"""distill.losses: exact hand-computed values, masking, batch means, gradients, weights, mixed precision."""

from __future__ import annotations

import math

import numpy as np
import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from vidistill.distill.losses import (
    LOSSES,
    PREDICTION_LOSSES,
    LossWeights,
    cross_entropy,
    prediction_binary,
    prediction_kl,
    representation_loss,
)

LABELS = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
PRED = np.array([[0.9, 0.2, 0.6], [0.1, 0.7, 0.0]], np.float32)  # includes p = 0 (eps keeps it finite)


def _official_ce(y, p, eps=1e-5):
    y = y.astype(np.float64)
    p = p.astype(np.float64)
    per = -(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
    return per.sum(axis=1).mean()


def _bernoulli_kl(a, b):
    return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))


# ---------------------------------------------------------------- cross_entropy


def test_cross_entropy_by_hand_2x3():
    eps = 1e-5
    row0 = -(math.log(0.9 + eps) + math.log(1 - 0.2 + eps) + math.log(0.6 + eps))
    row1 = -(math.log(1 - 0.1 + eps) + math.log(0.7 + eps) + math.log(1 - 0.0 + eps))
    hand = (row0 + row1) / 2
    got = float(cross_entropy(LABELS, PRED))
    assert got == pytest.approx(hand, rel=1e-6)
    assert got == pytest.approx(_official_ce(LABELS, PRED), rel=1e-6)


def test_cross_entropy_epsilon_is_official_1e5_and_keeps_confident_mistakes_finite():
    y = np.array([[1.0, 0.0]], np.float32)
    p = np.array([[0.0, 1.0]], np.float32)
    got = float(cross_entropy(y, p))
    assert got == pytest.approx(-2 * math.log(1e-5), rel=1e-5)
    assert float(cross_entropy(y, p, epsilon=1e-3)) == pytest.approx(-2 * math.log(1e-3), rel=1e-5)


def test_cross_entropy_label_weights_mask_classes():
    w = np.array([[1, 0, 0], [0, 1, 1]], np.float32)
    eps = 1e-5
    hand = (-math.log(0.9 + eps) + -(math.log(0.7 + eps) + math.log(1 - 0.0 + eps))) / 2
    assert float(cross_entropy(LABELS, PRED, label_weights=w)) == pytest.approx(hand, rel=1e-6)
    assert float(cross_entropy(LABELS, PRED, label_weights=np.ones_like(w))) == pytest.approx(
        float(cross_entropy(LABELS, PRED)), rel=1e-7
    )
    assert float(cross_entropy(LABELS, PRED, label_weights=np.zeros_like(w))) == 0.0


def test_cross_entropy_accepts_int_labels_and_runs_in_graph_mode():
    f = tf.function(cross_entropy)
    got = float(f(tf.constant(LABELS.astype(np.int64)), tf.constant(PRED)))
    assert got == pytest.approx(_official_ce(LABELS, PRED), rel=1e-6)


# ---------------------------------------------------------------- representation_loss


def test_representation_loss_by_hand():
    t = np.array([[1, 2], [0, 0]], np.float32)
    s = np.array([[0, 0], [3, 4]], np.float32)
    assert float(representation_loss(t, s)) == pytest.approx(15.0)  # (5 + 25) / 2, counted once
    assert float(representation_loss(t, t)) == 0.0


def test_representation_loss_width_mismatch_is_a_trace_time_error():
    with pytest.raises(ValueError, match="projection"):
        representation_loss(np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None, 3])])
    def f(a, b):
        return representation_loss(a, b)

    with pytest.raises(ValueError, match="projection"):
        f.get_concrete_function()


# ---------------------------------------------------------------- prediction_kl


def test_prediction_kl_zero_for_identical():
    p = np.array([[0.9, 0.1, 0.3], [0.2, 0.2, 0.8]], np.float32)
    assert float(prediction_kl(p, p)) == pytest.approx(0.0, abs=1e-7)


def test_prediction_kl_by_hand_1x2():
    t = np.array([[0.2, 0.6]], np.float32)  # renormalized: [0.25, 0.75]
    s = np.array([[0.5, 0.5]], np.float32)  # renormalized: [0.5, 0.5]
    hand = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(prediction_kl(t, s)) == pytest.approx(hand, rel=1e-5)
    reverse = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(prediction_kl(s, t)) == pytest.approx(reverse, rel=1e-5)  # KL(teacher || student), not symmetric


def test_prediction_kl_invariant_to_scaling():
    t = np.array([[0.2, 0.6, 0.1]], np.float32)
    s = np.array([[0.5, 0.4, 0.3]], np.float32)
    base = float(prediction_kl(t, s))
    assert base > 0
    assert float(prediction_kl(0.3 * t, s)) == pytest.approx(base, rel=1e-5)
    assert float(prediction_kl(t, 0.1 * s)) == pytest.approx(base, rel=1e-5)
    assert float(prediction_kl(0.5 * s, s)) == pytest.approx(0.0, abs=1e-6)


def test_prediction_kl_is_a_batch_mean_not_a_sum():
    t = np.array([[0.2, 0.6]], np.float32)
    s = np.array([[0.5, 0.5]], np.float32)
    one = float(prediction_kl(t, s))
    two = float(prediction_kl(np.repeat(t, 2, 0), np.repeat(s, 2, 0)))
    assert two == pytest.approx(one, rel=1e-6)
    mixed = float(prediction_kl(np.concatenate([t, s]), np.concatenate([s, s])))
    assert mixed == pytest.approx(one / 2, rel=1e-5)


def test_prediction_kl_all_zero_vectors_are_finite():
    z = np.zeros((1, 3), np.float32)
    assert np.isfinite(float(prediction_kl(z, np.array([[0.1, 0.2, 0.3]], np.float32))))
    assert np.isfinite(float(prediction_kl(np.array([[0.1, 0.2, 0.3]], np.float32), z)))


# ---------------------------------------------------------------- prediction_binary


def test_prediction_binary_zero_when_equal_positive_otherwise():
    p = np.array([[0.9, 0.1, 0.5], [0.01, 0.99, 0.3]], np.float32)
    q = np.array([[0.8, 0.2, 0.5], [0.3, 0.5, 0.3]], np.float32)
    for t in (1.0, 2.0, 5.0):
        assert float(prediction_binary(p, p, temperature=t)) == pytest.approx(0.0, abs=1e-6)
        assert float(prediction_binary(p, q, temperature=t)) > 0


def test_prediction_binary_t1_is_sum_of_bernoulli_kls():
    t = np.array([[0.9, 0.2], [0.5, 0.7]], np.float32)
    s = np.array([[0.6, 0.4], [0.5, 0.1]], np.float32)
    hand = (
        (_bernoulli_kl(0.9, 0.6) + _bernoulli_kl(0.2, 0.4)) + (_bernoulli_kl(0.5, 0.5) + _bernoulli_kl(0.7, 0.1))
    ) / 2
    assert float(prediction_binary(t, s)) == pytest.approx(hand, rel=1e-5)


def test_prediction_binary_temperature_by_hand():
    # T = 2: logit(0.9) / 2 = ln(9) / 2 -> sigmoid = 3 / 4; logit(0.5) / 2 = 0 -> 1 / 2.
    got = float(prediction_binary(np.array([[0.9]], np.float32), np.array([[0.5]], np.float32), temperature=2.0))
    assert got == pytest.approx(4.0 * _bernoulli_kl(0.75, 0.5), rel=1e-5)


def test_prediction_binary_softening_reduces_confident_disagreements():
    t = np.array([[0.99, 0.01]], np.float32)
    s = np.array([[0.01, 0.99]], np.float32)
    values = [float(prediction_binary(t, s, temperature=T)) / T**2 for T in (1.0, 2.0, 4.0, 8.0)]
    assert all(a > b for a, b in zip(values, values[1:])), values


def test_prediction_binary_extreme_probabilities_are_finite_and_bad_temperature_rejected():
    t = np.array([[1.0, 0.0]], np.float32)
    s = np.array([[0.0, 1.0]], np.float32)
    v = float(prediction_binary(t, s))
    assert np.isfinite(v) and v > 0
    with pytest.raises(ValueError, match="temperature"):
        prediction_binary(t, s, temperature=0.0)


# ---------------------------------------------------------------- registries


def test_registries_name_the_losses():
    assert PREDICTION_LOSSES == {"kl": prediction_kl, "binary": prediction_binary}
    assert set(LOSSES.values()) == {cross_entropy, representation_loss, prediction_kl, prediction_binary}


# ---------------------------------------------------------------- LossWeights


def test_student_loss_total_is_the_weighted_sum(random_outputs):
    labels, teacher, student = random_outputs()
    w = LossWeights(ce=1.0, rep=0.5, pred=2.0)
    out = w.student_loss(labels, teacher, student)
    assert set(out) == {"ce", "rep", "pred", "total"}
    ce = float(cross_entropy(labels, student["predictions"]))
    rep = float(representation_loss(teacher["representation"], student["representation"]))
    pred = float(prediction_kl(teacher["predictions"], student["predictions"]))
    assert float(out["ce"]) == pytest.approx(ce, rel=1e-6)
    assert float(out["rep"]) == pytest.approx(rep, rel=1e-6)
    assert float(out["pred"]) == pytest.approx(pred, rel=1e-6)
    assert float(out["total"]) == pytest.approx(ce + 0.5 * rep + 2.0 * pred, rel=1e-6)
    for v in out.values():
        assert v.dtype == tf.float32 and v.shape == ()


def test_student_loss_binary_kind_uses_temperature_and_label_weights(random_outputs):
    labels, teacher, student = random_outputs(1)
    mask = np.zeros_like(labels)
    mask[:, :2] = 1
    w = LossWeights(ce=1.0, rep=0.0, pred=1.0, pred_kind="binary", temperature=3.0)
    out = w.student_loss(labels, teacher, student, label_weights=mask)
    assert float(out["pred"]) == pytest.approx(
        float(prediction_binary(teacher["predictions"], student["predictions"], temperature=3.0)), rel=1e-6
    )
    assert float(out["ce"]) == pytest.approx(
        float(cross_entropy(labels, student["predictions"], label_weights=mask)), rel=1e-6
    )


def test_zero_weight_terms_are_exactly_zero_and_not_computed(random_outputs):
    labels, teacher, student = random_outputs()
    # no "representation" anywhere: a weight-0 L_REP must not even look for it
    t = {"predictions": teacher["predictions"]}
    s = {"predictions": student["predictions"]}
    out = LossWeights(ce=1.0, rep=0.0, pred=0.0).student_loss(labels, t, s)
    assert float(out["rep"]) == 0.0 and float(out["pred"]) == 0.0
    assert float(out["total"]) == float(out["ce"])
    out = LossWeights(ce=0.0, rep=1.0, pred=0.0).student_loss(labels, teacher, student)
    assert float(out["ce"]) == 0.0 and float(out["pred"]) == 0.0
    assert float(out["total"]) == float(out["rep"])
    # even a NaN in a skipped term's input cannot leak into the total
    bad = dict(student, predictions=np.full_like(student["predictions"], np.nan))
    out = LossWeights(ce=0.0, rep=1.0, pred=0.0).student_loss(labels, teacher, bad)
    assert np.isfinite(float(out["total"]))


def test_no_gradient_reaches_the_teacher_and_the_student_gets_one(random_outputs):
    labels, teacher, student = random_outputs()
    tv_p = tf.Variable(teacher["predictions"])
    tv_e = tf.Variable(teacher["representation"])
    sv_logit = tf.Variable(np.log(student["predictions"] / (1 - student["predictions"])))
    sv_e = tf.Variable(student["representation"])
    for kind in ("kl", "binary"):
        w = LossWeights(ce=1.0, rep=0.1, pred=1.0, pred_kind=kind, temperature=2.0)
        with tf.GradientTape(persistent=True) as tape:
            t_out = {"predictions": tv_p * 1.0, "representation": tv_e * 1.0}
            s_out = {"predictions": tf.sigmoid(sv_logit), "representation": sv_e * 1.0}
            out = w.student_loss(labels, t_out, s_out)
            t_only = w.pred * out["pred"] + w.rep * out["rep"]  # the distillation terms alone
        for loss in (out["total"], t_only):
            g_t = tape.gradient(loss, [tv_p, tv_e])
            assert g_t == [None, None], kind
            g_s = tape.gradient(loss, [sv_logit, sv_e])
            assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in g_s), kind
        del tape


def test_student_loss_in_tf_function(random_outputs):
    labels, teacher, student = random_outputs()
    w = LossWeights()
    eager = w.student_loss(labels, teacher, student)
    graph = tf.function(lambda y, t, s: w.student_loss(y, t, s))(labels, teacher, student)
    for k in eager:
        assert float(graph[k]) == pytest.approx(float(eager[k]), rel=1e-6)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_inputs_work(dtype, random_outputs):
    labels, teacher, student = random_outputs()
    cast = lambda d: {k: tf.cast(v, dtype) for k, v in d.items()}  # noqa: E731
    out = LossWeights(pred_kind="kl").student_loss(tf.cast(labels, dtype), cast(teacher), cast(student))
    ref = LossWeights(pred_kind="kl").student_loss(labels, teacher, student)
    for k in out:
        assert out[k].dtype == tf.float32
        assert np.isfinite(float(out[k]))
        assert float(out[k]) == pytest.approx(float(ref[k]), rel=0.05, abs=1e-2)
    p16 = tf.cast(teacher["predictions"], dtype)
    assert float(prediction_binary(p16, p16)) == pytest.approx(0.0, abs=1e-6)
    assert float(prediction_kl(p16, p16)) == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(float(cross_entropy(tf.cast(labels, dtype), p16)))


def test_defaults_and_presets():
    w = LossWeights()
    assert (w.ce, w.pred, w.pred_kind, w.temperature) == (1.0, 1.0, "kl", 1.0)
    assert 0 < w.rep < 1
    assert LossWeights.preset("nextvlad") == LossWeights(ce=1.0, rep=0.001, pred=0.01)
    assert LossWeights.preset("paper") == LossWeights(ce=1.0, rep=1.0, pred=1.0)
    assert LossWeights.preset("default") == LossWeights()
    with pytest.raises(ValueError, match="preset"):
        LossWeights.preset("nope")
    assert LossWeights.from_dict({"rep": 0.5, "pred_kind": "binary"}) == LossWeights(rep=0.5, pred_kind="binary")
    with pytest.raises(ValueError, match="bogus"):
        LossWeights.from_dict({"bogus": 1})


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"ce": -1.0}, "ce"),
        ({"rep": -0.1}, "rep"),
        ({"pred": float("nan")}, "pred"),
        ({"pred": float("inf")}, "pred"),
        ({"rep": "0.1"}, "rep"),
        ({"ce": True}, "ce"),
        ({"pred_kind": "mse"}, "pred_kind"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -2.0}, "temperature"),
    ],
)
def test_loss_weights_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"LossWeights\.{field}"):
        LossWeights(**kwargs)


def test_integer_weights_become_floats():
    w = LossWeights(ce=1, rep=0, pred=2)
    assert isinstance(w.ce, float) and isinstance(w.rep, float) and isinstance(w.pred, float)
