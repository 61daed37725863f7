"""MixNeXtVLAD (teachers/mixture.py): sizes and FLOPs by hand, the gate, padding bit for bit, the on-the-fly loss
terms against numpy, training with the Distiller (as a teacher, into students, as a student), config round trips,
and the two outputs of an ONNX export and a converted student."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf
import tf_keras as keras

from vidistill.distill.distiller import Distiller
from vidistill.distill.losses import LossWeights
from vidistill.distill.terms import (
    BranchCrossEntropy,
    BranchDistillation,
    LossInputs,
    TeacherBranchCrossEntropy,
    TeacherBranchDistillation,
    mixture_terms,
    terms_for,
)
from vidistill.teachers.config import (
    HeadConfig,
    MixNeXtVLADConfig,
    NeXtVLADConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from vidistill.teachers.mixture import MixNeXtVLAD, mixture_of
from vidistill.teachers.presets import PRESETS
from vidistill.teachers.registry import build_model, model_flops, model_weight_reads
from vidistill.teachers.vlad import audio_clusters, audio_groups
from vidistill.yt8m.constants import AUDIO_SIZE, FEATURE_SIZE, RGB_SIZE

FRAMES = 6
TINY = MixNeXtVLADConfig(
    num_classes=3,
    frames=FRAMES,
    branches=3,
    expansion=1,
    groups=4,
    clusters=4,
    hidden=16,
    se_reduction=4,
    dropout=0.0,
)
OUTPUTS = ("predictions", "representation", "branch_logits", "mixture_logits")


def _batch(num_frames, frames=FRAMES, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(num_frames), frames, FEATURE_SIZE)).astype(np.float32)
    n = np.asarray(num_frames, np.int32)
    x[np.arange(frames)[None, :] >= n[:, None]] = 0.0
    return x, n


def _with_padding(x, num_frames, fill):
    x = x.copy()
    for i, n in enumerate(num_frames):
        x[i, n:] = fill(x[i, n:].shape)
    return x


def _nextvlad_parameters(c: NeXtVLADConfig) -> int:
    """NeXtVLAD's parameters by hand (tests/test_vlad.py's tiny count, for any configuration)."""
    bn = 4  # gamma, beta, moving mean, moving variance
    total = 0
    for size, groups, clusters in (
        (RGB_SIZE, c.groups, c.clusters),
        (AUDIO_SIZE, audio_groups(c.groups), audio_clusters(c.clusters)),
    ):
        expanded = c.expansion * size
        group_size = expanded // groups
        total += expanded * size + expanded  # expansion FC with bias
        total += expanded * groups + groups  # group attention with bias
        total += expanded * groups * clusters + bn * groups * clusters  # assignment (no bias) + its BN
        total += group_size * clusters + bn * group_size * clusters  # centres + the VLAD's BN
    width = sum(
        c.expansion * size // g * k
        for size, g, k in (
            (RGB_SIZE, c.groups, c.clusters),
            (AUDIO_SIZE, audio_groups(c.groups), audio_clusters(c.clusters)),
        )
    )
    total += width * c.hidden + bn * c.hidden  # hidden FC without bias + BN
    squeeze = c.hidden // c.se_reduction
    total += c.hidden * squeeze + bn * squeeze + squeeze * c.hidden  # SE gating
    return total + c.hidden * c.num_classes + c.num_classes  # logistic head


def _gate_parameters(c: MixNeXtVLADConfig) -> int:
    return FEATURE_SIZE * c.branches + c.branches


# ------------------------------------------------------------------------------------------------ sizes and FLOPs
def test_the_branch_count_by_hand_is_nextvlads():
    """The hand count, checked on built models: tiny NeXtVLAD (test_vlad's 1,111,897) and the tiny mixture."""
    assert _nextvlad_parameters(TINY.branch) == 1_111_897
    assert build_model(TINY.branch).count_params() == 1_111_897
    assert build_model(TINY).count_params() == 3 * 1_111_897 + 1152 * 3 + 3 == 3_339_150


def test_preset_parameter_counts_by_hand():
    paper, small = PRESETS["mixnextvlad-2018"], PRESETS["mixnextvlad-small"]
    # each branch is exactly the NeXtVLAD preset (3862 and 100 classes)
    assert paper.branch == PRESETS["nextvlad-paper"] and paper.branches == 3 and paper.num_classes == 3862
    assert small.branch == PRESETS["nextvlad-small"] and small.branches == 3 and small.num_classes == 100
    # nextvlad-paper by hand (test_vlad builds it: about 88.9 M); the mixture is not built (267 M parameters)
    assert _nextvlad_parameters(PRESETS["nextvlad-paper"]) == 88_970_274
    assert 3 * 88_970_274 + _gate_parameters(paper) == 266_914_281
    # the small one is built
    assert _nextvlad_parameters(PRESETS["nextvlad-small"]) == 2_400_810
    model = build_model(small)
    assert model.count_params() == 3 * 2_400_810 + _gate_parameters(small) == 7_205_889
    assert model.output["representation"].shape[-1] == 3 * 256
    assert model.output["branch_logits"].shape[1:] == (3, 100)


def test_flops_by_hand():
    t = FRAMES
    per_frame = 1024 * 1024 + 1024 * 4 + 1024 * 16 + 1024 * 4  # rgb: expansion, attention, assignment, aggregation
    per_frame_audio = 128 * 128 + 128 * 2 + 128 * 4 + 128 * 2
    macs = t * (per_frame + per_frame_audio) + 256 * 4 + 64 * 2 + (1024 + 128) * 16 + 2 * 16 * 4
    branch = 2 * macs + 2 * 16 * 3  # + the logistic head
    assert model_flops(TINY.branch) == branch
    assert model_flops(TINY) == 3 * branch + 2 * (1152 * 3 + 3 * 3)  # + the gate, the mixture of the logits
    paper, small = PRESETS["mixnextvlad-2018"], PRESETS["mixnextvlad-small"]
    assert model_flops(paper) == 3 * model_flops(PRESETS["nextvlad-paper"]) + 2 * (1152 * 3 + 3 * 3862)
    assert model_flops(paper) == 8_766_363_012  # about 8.77 GFLOPs (3 x nextvlad-paper's 2.92)
    assert model_flops(small) == 3 * model_flops(PRESETS["nextvlad-small"]) + 2 * (1152 * 3 + 3 * 100)
    assert model_flops(small) == 2_085_210_456
    weights = model_weight_reads(TINY)
    assert weights == 3 * model_weight_reads(TINY.branch) + 1152 * 3


# ------------------------------------------------------------------------------------------------ the gate, padding
def test_the_gate_sums_to_one_and_reads_the_mean_real_frame():
    keras.utils.set_random_seed(0)
    model = build_model(TINY)
    layer = model.get_layer("mixnextvlad")
    assert mixture_of(model) == TINY
    kernel, bias = layer.gate.weights
    bias.assign([0.3, -0.2, 0.5])  # a non-uniform prior, so that an empty video's gate is softmax(b)
    num_frames = [6, 3, 1, 0]
    x, n = _batch(num_frames)
    g = layer.mixture_gate(x, n).numpy()
    np.testing.assert_allclose(g.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    assert (g > 0).all()
    mean = np.stack([x[i, :k].mean(axis=0) if k else np.zeros(FEATURE_SIZE) for i, k in enumerate(num_frames)])
    z = mean @ kernel.numpy() + bias.numpy()
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(g, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    # padding (large, NaN, inf) changes no bit of it; a real frame does
    rng = np.random.default_rng(1)
    for fill in (lambda s: 1e4 * rng.normal(size=s), lambda s: np.where(rng.random(s) < 0.5, np.nan, np.inf)):
        np.testing.assert_array_equal(layer.mixture_gate(_with_padding(x, num_frames, fill), n).numpy(), g)
    changed = x.copy()
    changed[:3, 0] += 1.0
    assert not np.any(np.all(layer.mixture_gate(changed, n).numpy()[:3] == g[:3], axis=1))


def test_padding_never_changes_any_output_bit_for_bit():
    keras.utils.set_random_seed(0)
    model = build_model(dataclasses.replace(TINY, dropout=0.5))
    num_frames = [6, 3, 1, 4, 0]
    x, n = _batch(num_frames)
    rng = np.random.default_rng(1)
    large = _with_padding(x, num_frames, lambda s: 1e4 * rng.normal(size=s))
    nan = _with_padding(x, num_frames, lambda s: np.where(rng.random(s) < 0.5, np.nan, np.inf))
    ref = model({"frames": x, "num_frames": n}, training=False)
    assert set(ref) == set(OUTPUTS)
    for padded in (large, nan):
        out = model({"frames": padded, "num_frames": n}, training=False)
        for key in OUTPUTS:
            np.testing.assert_array_equal(out[key].numpy(), ref[key].numpy(), err_msg=key)
    # in training too (masked batch statistics; the same dropout draws)
    tf.random.set_seed(3)
    ref = model({"frames": x, "num_frames": n}, training=True)
    tf.random.set_seed(3)
    out = model({"frames": nan, "num_frames": n}, training=True)
    for key in OUTPUTS:
        np.testing.assert_array_equal(out[key].numpy(), ref[key].numpy(), err_msg=key)
    # the outputs fit together: p = sigmoid(z_mix), z_mix = sum_m g_m z_m, E = [g_1 h_1, ..., g_M h_M]
    out = model({"frames": x, "num_frames": n}, training=False)
    g = model.get_layer("mixnextvlad").mixture_gate(x, n).numpy()
    z = out["branch_logits"].numpy()
    np.testing.assert_allclose(out["mixture_logits"].numpy(), np.einsum("bm,bmc->bc", g, z), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["predictions"].numpy(), 1 / (1 + np.exp(-out["mixture_logits"].numpy())), rtol=1e-6)
    assert np.isfinite(out["representation"].numpy()).all() and out["representation"].shape == (5, 3 * 16)


def test_the_amount_of_padding_does_not_change_the_output():
    short, long = build_model(TINY), build_model(dataclasses.replace(TINY, frames=10))
    long.set_weights(short.get_weights())
    x, n = _batch([6, 3, 1, 4, 0])
    x_long = np.concatenate([x, np.zeros((5, 4, FEATURE_SIZE), np.float32)], axis=1)
    for training in (False, True):
        ref = short({"frames": x, "num_frames": n}, training=training)
        out = long({"frames": x_long, "num_frames": n}, training=training)
        for key in OUTPUTS:
            np.testing.assert_allclose(out[key].numpy(), ref[key].numpy(), rtol=1e-4, atol=1e-5, err_msg=key)


# ------------------------------------------------------------------------------------------------ the loss terms
def _numpy_terms(labels, z, z_mix, t):
    """(sum_m official L_CE of sigmoid(z_m), T^2 mean_b sum_m KL(softmax(z_mix / T) || softmax(z_m / T)))."""
    eps = 1e-5
    p = 1 / (1 + np.exp(-z.astype(np.float64)))  # [B, M, C]
    bce = -(labels[:, None] * np.log(p + eps) + (1 - labels[:, None]) * np.log(1 - p + eps))
    ce = bce.sum(axis=2).mean(axis=0).sum()

    def log_softmax(a):
        a = a - a.max(axis=-1, keepdims=True)
        return a - np.log(np.exp(a).sum(axis=-1, keepdims=True))

    log_q = log_softmax(z_mix.astype(np.float64) / t)[:, None]
    kl = (np.exp(log_q) * (log_q - log_softmax(z.astype(np.float64) / t))).sum(axis=2)  # [B, M]
    return ce, t**2 * kl.sum(axis=1).mean()


def test_the_terms_on_a_hand_made_case():
    labels = np.array([[1, 0, 0], [0, 1, 1]], np.float32)
    z = np.array(
        [[[2.0, -1.0, 0.5], [1.0, 0.0, -2.0]], [[-0.5, 3.0, 1.0], [0.0, 1.5, 2.5]]], np.float32
    )  # [B=2, M=2, C=3]
    g = np.array([[0.25, 0.75], [0.6, 0.4]], np.float32)
    z_mix = np.einsum("bm,bmc->bc", g, z)
    ce, kl = _numpy_terms(labels, z, z_mix, 3.0)
    assert kl > 0 and ce > 0  # the numpy reference: float64, its own log-softmax
    inputs = LossInputs(labels, student={"branch_logits": z, "mixture_logits": z_mix})
    assert float(BranchCrossEntropy().compute(inputs)) == pytest.approx(ce, rel=1e-6)
    assert float(BranchDistillation(temperature=3.0).compute(inputs)) == pytest.approx(kl, rel=1e-5)
    assert float(BranchDistillation(temperature=1.0).compute(inputs)) == pytest.approx(
        _numpy_terms(labels, z, z_mix, 1.0)[1], rel=1e-5
    )
    teacher = LossInputs(labels, teacher={"branch_logits": z, "mixture_logits": z_mix})
    assert float(TeacherBranchCrossEntropy().compute(teacher)) == pytest.approx(ce, rel=1e-6)
    assert float(TeacherBranchDistillation(temperature=3.0).compute(teacher)) == pytest.approx(kl, rel=1e-5)
    # the mixture is the branches' teacher: no gradient of the KL reaches z_mix
    z_t, z_mix_t = tf.constant(z), tf.constant(z_mix)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([z_t, z_mix_t])
        value = BranchDistillation().compute(
            LossInputs(labels, student={"branch_logits": z_t, "mixture_logits": z_mix_t})
        )
    assert tape.gradient(value, z_mix_t) is None
    assert np.abs(tape.gradient(value, z_t).numpy()).sum() > 0
    # label weights reach the branches' L_CE as they reach L_CE
    weights = np.array([[1, 0, 1], [0, 0, 1]], np.float32)
    weighted = BranchCrossEntropy().compute(LossInputs(labels, student={"branch_logits": z}, label_weights=weights))
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    bce = -(labels[:, None] * np.log(p + 1e-5) + (1 - labels[:, None]) * np.log(1 - p + 1e-5))
    assert float(weighted) == pytest.approx((bce * weights[:, None]).sum(axis=2).mean(axis=0).sum(), rel=1e-6)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        BranchDistillation(temperature=0.0)


def test_the_kl_is_zero_when_all_branches_are_identical():
    labels = np.array([[1, 0, 0]], np.float32)
    z = np.tile(np.array([[[2.0, -1.0, 0.5]]], np.float32), (1, 3, 1))
    inputs = LossInputs(labels, student={"branch_logits": z, "mixture_logits": z[:, 0]})
    assert float(BranchDistillation().compute(inputs)) == 0.0
    # a model whose branches hold the same weights: the mixture of equal logits is those logits
    model = build_model(TINY)
    layer = model.get_layer("mixnextvlad")
    for encoder, head in zip(layer.encoders[1:], layer.heads[1:]):
        encoder.set_weights(layer.encoders[0].get_weights())
        head.set_weights(layer.heads[0].get_weights())
    x, n = _batch([6, 3, 0])
    out = model({"frames": x, "num_frames": n}, training=False)
    z = out["branch_logits"].numpy()
    np.testing.assert_array_equal(z[:, 1], z[:, 0])
    np.testing.assert_array_equal(z[:, 2], z[:, 0])
    assert abs(float(BranchDistillation().compute(LossInputs(labels, student=out)))) < 1e-6


def test_which_models_get_the_terms():
    mixture, plain = build_model(TINY), build_model(TINY.branch)
    weights = LossWeights()

    def names(mode, teacher=None, student=None):
        return [t.name for t in terms_for(mode, weights, teacher=teacher, student=student)]

    assert names("teacher", mixture) == ["teacher_ce", "teacher_branch_ce", "teacher_branch_kl"]
    assert names("parallel", mixture, plain) == [
        "teacher_ce",
        "ce",
        "rep",
        "pred",
        "teacher_branch_ce",
        "teacher_branch_kl",
    ]
    assert names("serial", mixture, plain) == ["ce", "rep", "pred"]  # a frozen teacher trains no branch
    assert names("serial", plain, mixture) == ["ce", "rep", "pred", "branch_ce", "branch_kl"]
    assert names("student", None, mixture) == ["ce", "branch_ce", "branch_kl"]
    assert names("teacher", plain) == ["teacher_ce"]
    config = dataclasses.replace(TINY, temperature=2.0, branch_weight=0.5, kl_weight=0.25)
    ce, kl = mixture_terms("student", student=build_model(config))
    assert (ce.weight, kl.weight, kl.temperature, kl.trains) == (0.5, 0.25, 2.0, "student")


# ------------------------------------------------------------------------------------------------ training
def _prototype_problem(videos=48, frames=FRAMES, seed=0):
    """Label = which of two prototypes was added to some of the real frames (two classes, one-hot)."""
    rng = np.random.default_rng(seed)
    prototypes = 2.0 * rng.normal(size=(2, FEATURE_SIZE)).astype(np.float32)
    x = rng.normal(size=(videos, frames, FEATURE_SIZE)).astype(np.float32)
    n = rng.integers(2, frames + 1, size=videos).astype(np.int32)
    label = rng.integers(0, 2, size=videos)
    for i in range(videos):
        hits = rng.random(n[i]) < 0.6
        hits[rng.integers(n[i])] = True
        x[i, : n[i]][hits] += prototypes[label[i]]
        x[i, n[i] :] = 0.0
    return {"frames": x, "num_frames": n, "labels": np.eye(2, dtype=np.float32)[label]}


def test_a_mixture_teacher_trains_with_its_branch_terms():
    keras.utils.set_random_seed(0)
    teacher = build_model(dataclasses.replace(TINY, num_classes=2, dropout=0.5))
    distiller = Distiller("teacher", teacher, None, LossWeights())
    assert [t.name for t in distiller.terms] == ["teacher_ce", "teacher_branch_ce", "teacher_branch_kl"]
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    batch = {k: tf.constant(v) for k, v in _prototype_problem(32).items()}
    step = tf.function(distiller.train_step)
    logs = [{k: float(v) for k, v in step(batch).items()} for _ in range(15)]
    assert {"loss", "teacher_ce", "teacher_branch_ce", "teacher_branch_kl"} <= set(logs[0])
    for entry in logs:
        assert np.isfinite(list(entry.values())).all()
        total = entry["teacher_ce"] + entry["teacher_branch_ce"] + entry["teacher_branch_kl"]
        assert entry["loss"] == pytest.approx(total, rel=1e-4, abs=1e-4)  # + the heads' tiny L2
    losses = [entry["loss"] for entry in logs]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    assert np.mean([e["teacher_branch_ce"] for e in logs[-3:]]) < 0.7 * logs[0]["teacher_branch_ce"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["hlstm", "nextvlad"])
def test_a_mixture_teacher_distils_into_a_student(family, synth_data, tiny_teacher, tmp_path):
    """Parallel: the mixture teacher trains with its branch terms, the student (another family, narrower E: a
    projection for L_REP) learns from it; every term is logged and the student's terms never reach the teacher."""
    from vidistill.distill.config import DataConfig, TrainConfig
    from vidistill.distill.trainer import Run, build_models
    from vidistill.students.student import student_config

    data = synth_data()
    teacher_config = dataclasses.replace(TINY, num_classes=4, frames=30)
    base = tiny_teacher if family == "hlstm" else dataclasses.replace(TINY.branch, num_classes=4, frames=30)
    config = TrainConfig(
        mode="parallel",
        teacher=teacher_config,
        student=student_config(base, k=6),
        loss=LossWeights(ce=1.0, rep=0.01, pred=1.0),
        data=DataConfig(train=data.train, max_frames=30, batch_size=4, shuffle_buffer=8),
        steps=3,
        checkpoint_every=3,
        eval_every=0,
    )
    models = build_models(config)
    assert models.projection is not None  # E_T = 3 x 16 wide
    distiller = Distiller(config.mode, models.teacher, models.student, config.loss, models.projection)
    rng = np.random.default_rng(0)
    batch = {
        "frames": tf.constant(rng.normal(size=(4, 30, 1152)).astype(np.float32)),
        "num_frames": tf.constant([30, 24, 0, 27], tf.int32),
        "labels": tf.constant(rng.integers(0, 2, size=(4, 4)).astype(np.float32)),
    }
    with tf.GradientTape(persistent=True) as tape:
        logs = distiller.compute_losses(batch, training=True)
    assert {"teacher_ce", "teacher_branch_ce", "teacher_branch_kl", "ce", "rep", "pred", "student_total"} <= set(logs)
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert all(g is None for g in tape.gradient(logs["student_total"], models.teacher.trainable_variables))
    assert all(g is None for g in tape.gradient(logs["teacher_branch_kl"], models.student.trainable_variables))
    run = Run(config, str(tmp_path / "run"))
    run.train(progress=False)
    assert run.step == 3


def test_a_mixture_student_trains_alone_with_its_branch_terms():
    """Student mode: loss = ce + branch_weight branch_ce + kl_weight branch_kl (+ the heads' L2), the branch terms
    numpy's on the student's own outputs at the config's temperature; branch_kl trains the branches (each head's
    bias gets T mean_b (softmax(z_m / T) - softmax(z_mix / T)), the mixture a constant) and never the gate; a
    training step lowers the loss and moves the branches and the gate."""
    from vidistill.students.student import backbone_of, build_student, student_config

    keras.utils.set_random_seed(0)
    t = 2.0
    config = dataclasses.replace(TINY, num_classes=2, temperature=t, branch_weight=0.5, kl_weight=0.25)
    student = build_student(student_config(config, k=4))
    assert mixture_of(student) == dataclasses.replace(config, frames=4)  # found inside the student's backbone
    layer = backbone_of(student).get_layer("mixnextvlad")
    distiller = Distiller("student", None, student, LossWeights())
    assert [term.name for term in distiller.terms] == ["ce", "branch_ce", "branch_kl"]
    batch = {k: tf.constant(v) for k, v in _prototype_problem(16).items()}
    labels = batch["labels"].numpy()
    with tf.GradientTape() as tape:
        logs = distiller.compute_losses(batch, training=True)
    # the same forward pass again (uniform selection, no dropout, batch statistics: deterministic)
    out = student({"frames": batch["frames"], "num_frames": batch["num_frames"]}, training=True)
    z, z_mix = out["branch_logits"].numpy(), out["mixture_logits"].numpy()
    branch_ce, branch_kl = _numpy_terms(labels, z, z_mix, t)
    p = 1 / (1 + np.exp(-z_mix.astype(np.float64)))
    ce = -(labels * np.log(p + 1e-5) + (1 - labels) * np.log(1 - p + 1e-5)).sum(axis=1).mean()
    assert float(logs["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(logs["branch_ce"]) == pytest.approx(branch_ce, rel=1e-5)
    assert float(logs["branch_kl"]) == pytest.approx(branch_kl, rel=1e-4)
    l2 = sum(float(loss) for loss in student.losses)
    assert float(logs["loss"]) == pytest.approx(ce + 0.5 * branch_ce + 0.25 * branch_kl + l2, rel=1e-5)

    # branch_kl's gradient: none reaches the gate (z_mix is a stop-gradient); each head's bias gets exactly
    # d/db_m of T^2 mean_b KL(q || softmax(z_m / T)) with q = softmax(z_mix / T) held constant
    def softmax(a):
        e = np.exp(a - a.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    gate = layer.gate.trainable_variables
    biases = [head.dense.bias for head in layer.heads]
    encoders = [e.trainable_variables for e in layer.encoders]
    gate_grads, bias_grads, encoder_grads = tape.gradient(logs["branch_kl"], [gate, biases, encoders])
    assert len(gate_grads) == 2 and all(g is None for g in gate_grads)
    q = softmax(z_mix.astype(np.float64) / t)
    for m, (grad, grads) in enumerate(zip(bias_grads, encoder_grads)):
        expected = t * (softmax(z[:, m].astype(np.float64) / t) - q).mean(axis=0)
        np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-3, atol=1e-7, err_msg=f"branch {m}")
        assert all(g is not None for g in grads) and all(np.abs(g.numpy()).sum() > 0 for g in grads), m

    # one training step (eager: tracing a step of three branches costs a minute) on the loss above: it falls, and
    # every branch and the gate move
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    watched = [layer.gate.kernel] + [h.dense.kernel for h in layer.heads] + [e.hidden.kernel for e in layer.encoders]
    before = [v.numpy().copy() for v in watched]
    assert float(distiller.train_step(batch)["loss"]) == pytest.approx(float(logs["loss"]), rel=1e-5)
    after = float(distiller.compute_losses(batch, training=True)["loss"])
    assert after < 0.8 * float(logs["loss"]), (after, float(logs["loss"]))
    for variable, old in zip(watched, before):
        assert not np.allclose(variable.numpy(), old), variable.name


# ------------------------------------------------------------------------------------------------ configuration
def test_config_round_trips_and_errors(tmp_path):
    for config in (TINY, PRESETS["mixnextvlad-2018"], PRESETS["mixnextvlad-small"]):
        assert config_from_dict(config_to_dict(config)) == config
        for suffix in ("yaml", "json"):
            path = str(tmp_path / f"mix.{suffix}")
            save_config(config, path)
            assert load_config(path) == config
    again = config_from_dict(config_to_dict(TINY))
    assert build_model(again).count_params() == build_model(TINY).count_params()
    assert MixNeXtVLADConfig().head == HeadConfig(kind="logistic")
    with pytest.raises(ValueError, match="head must be logistic"):
        MixNeXtVLADConfig(head=HeadConfig(kind="moe"))
    with pytest.raises(ValueError, match="with probability gating"):
        MixNeXtVLADConfig(head=HeadConfig(kind="logistic", probability_gating=True))
    with pytest.raises(ValueError, match="branches must be >= 2"):
        MixNeXtVLADConfig(branches=1)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        MixNeXtVLADConfig(temperature=0.0)
    with pytest.raises(ValueError, match="kl_weight must be a finite number >= 0"):
        MixNeXtVLADConfig(kl_weight=-1.0)
    with pytest.raises(ValueError, match="mixnextvlad branch: nextvlad: expansion"):
        MixNeXtVLADConfig(expansion=1, groups=3)
    with pytest.raises(ValueError, match=r"mixnextvlad.temperature must be a number"):
        config_from_dict({"family": "mixnextvlad", "temperature": "hot"})


def test_layer_get_config_round_trips():
    """Every option survives get_config / from_config (the loss options too, which change no weight), and the
    rebuilt layer with the original's weights (random ones, moving statistics included) computes its outputs."""
    config = dataclasses.replace(
        TINY,
        branches=2,
        dropout=0.25,
        temperature=2.0,
        branch_weight=0.5,
        kl_weight=0.25,
        head=HeadConfig("logistic", l2=1e-3),
    )
    x, n = _batch([6, 2])
    layer = MixNeXtVLAD(config, name="mix")
    layer(x, n)
    rng = np.random.default_rng(3)
    layer.set_weights(
        [
            rng.uniform(0.5, 2.0, w.shape) if "moving_variance" in v.name else w + 0.1 * rng.normal(size=w.shape)
            for v, w in zip(layer.weights, layer.get_weights())
        ]
    )
    again = MixNeXtVLAD.from_config(layer.get_config())
    assert again.config == config and again.name == "mix"
    again(x, n)
    again.set_weights(layer.get_weights())
    out, out_again = layer(x, n, training=False), again(x, n, training=False)
    assert set(out_again) == set(OUTPUTS)
    for key in OUTPUTS:
        np.testing.assert_allclose(out_again[key].numpy(), out[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    penalties = [float(loss) for loss in layer.losses]  # the heads' L2 (its weight an option too)
    assert len(penalties) == 2 and min(penalties) > 0
    np.testing.assert_allclose([float(loss) for loss in again.losses], penalties, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ export
def test_onnx_export_and_a_converted_student_keep_exactly_the_two_outputs(tmp_path):
    import onnxruntime as ort

    from vidistill.export.onnx_export import convert
    from vidistill.students.convert import save_student
    from vidistill.students.student import build_student, student_config

    keras.utils.set_random_seed(0)
    config = dataclasses.replace(TINY, num_classes=5, frames=8)
    model = build_model(config)
    proto = convert(model, config)
    assert [o.name for o in proto.graph.output] == ["predictions", "representation"]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x, n = _batch([8, 5, 1, 0, 3], frames=8, seed=2)
    expected = model({"frames": x, "num_frames": n}, training=False)
    got = dict(zip(["predictions", "representation"], session.run(None, {"frames": x, "num_frames": n})))
    for name in got:
        np.testing.assert_allclose(got[name], expected[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    padded = _with_padding(x, [8, 5, 1, 0, 3], lambda s: np.full(s, 3.0, np.float32))
    np.testing.assert_array_equal(
        session.run(["predictions"], {"frames": padded, "num_frames": n})[0], got["predictions"]
    )
    # a converted mixture student serves the same two outputs
    student_cfg = student_config(config, k=4)
    student = build_student(student_cfg)
    out_dir = save_student(student, student_cfg, str(tmp_path / "student"))
    served = tf.saved_model.load(f"{out_dir}/saved_model").signatures["serving_default"]
    assert set(served.structured_outputs) == {"predictions", "representation"}
    result = served(frames=tf.constant(x), num_frames=tf.constant(n))
    reference = student({"frames": x, "num_frames": n}, training=False)
    np.testing.assert_allclose(result["predictions"].numpy(), reference["predictions"].numpy(), rtol=1e-5, atol=1e-6)
