"""The cluster-pooling families (teachers.vlad): reference sizes and FLOPs, hand-counted tiny models, padding
invariance, shapes, a few training steps, stochastic frame sampling, and config / layer round trips."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf
import tf_keras as keras

from vidistill.teachers.config import HeadConfig, NetVLADConfig, NeXtVLADConfig, config_from_dict, config_to_dict
from vidistill.teachers.presets import PRESETS
from vidistill.teachers.registry import build_model, model_flops
from vidistill.teachers.vlad import (
    FrameMask,
    NetVLADEncoder,
    NetVLADPooling,
    NeXtVLADEncoder,
    NeXtVLADPooling,
)
from vidistill.yt8m.constants import FEATURE_SIZE

# the published sizes are the presets users build: a changed preset must break the reference-size tests
WILLOW = PRESETS["netvlad-willow"]
NEXTVLAD_PAPER = PRESETS["nextvlad-paper"]

FRAMES = 6
TINY_NETVLAD = NetVLADConfig(
    num_classes=3, frames=FRAMES, clusters=4, hidden=8, head=HeadConfig(kind="moe", mixtures=2, probability_gating=True)
)
TINY_NEXTVLAD = NeXtVLADConfig(
    num_classes=3,
    frames=FRAMES,
    expansion=1,
    groups=4,
    clusters=4,
    hidden=16,
    se_reduction=4,
    dropout=0.0,
    head=HeadConfig(kind="logistic"),
)
POOLINGS = ("netvlad", "netrvlad", "softdbof")


def _tiny(family: str, **changes):
    if family == "nextvlad":
        return dataclasses.replace(TINY_NEXTVLAD, **changes)
    return dataclasses.replace(TINY_NETVLAD, pooling=family, **changes)


def _batch(num_frames, frames=FRAMES, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(num_frames), frames, FEATURE_SIZE)).astype(np.float32)
    return x, np.asarray(num_frames, np.int32)


def _with_padding(x, num_frames, fill):
    x = x.copy()
    for i, n in enumerate(num_frames):
        x[i, n:] = fill(x[i, n:].shape)
    return x


# --- reference sizes: each big model built once, never called on data ---------------------------------------------


@pytest.fixture(scope="module")
def willow_model():
    model = build_model(WILLOW)
    yield model
    del model
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def nextvlad_model():
    model = build_model(NEXTVLAD_PAPER)
    yield model
    del model
    keras.backend.clear_session()


def test_willow_reference_size_and_flops(willow_model):
    params = willow_model.count_params()
    assert abs(params - 321.5e6) / 321.5e6 < 0.005, params
    hidden = willow_model.get_layer("netvlad").hidden.count_params()
    assert abs(hidden - 285e6) / 285e6 < 0.005, hidden  # "hidden FC 285 M"
    flops = model_flops(WILLOW)
    assert abs(flops - 1.0e9) / 1.0e9 < 0.10, flops


def test_nextvlad_reference_size_and_flops(nextvlad_model):
    params = nextvlad_model.count_params()
    assert abs(params - 88.9e6) / 88.9e6 < 0.005, params
    flops = model_flops(NEXTVLAD_PAPER)
    assert abs(flops - 2.9e9) / 2.9e9 < 0.10, flops


# --- hand counts ---------------------------------------------------------------------------------------------------


def test_tiny_netvlad_hand_count():
    bn = 4  # gamma, beta, moving mean, moving variance per channel
    rgb = bn * 1024 + 1024 * 4 + bn * 4 + 1024 * 4  # input BN, W, assignment BN, centres
    audio = bn * 128 + 128 * 2 + bn * 2 + 128 * 2  # audio: K // 2 = 2 clusters
    hidden = (1024 * 4 + 128 * 2) * 8 + 8  # FC with bias
    gating = 8 * 8 + bn * 8  # context gating: W (no bias) + BN
    head = 8 * 3 * 3 + (8 * 3 * 2 + 3 * 2) + (3 * 3 + bn * 3)  # MoE gates, experts, probability gating
    assert rgb + audio + hidden + gating + head == 48_403
    assert build_model(TINY_NETVLAD).count_params() == 48_403
    # netrvlad drops the centres; softdbof has a K-dim output and no centres
    assert build_model(_tiny("netrvlad")).count_params() == 48_403 - 1024 * 4 - 128 * 2
    softdbof = 48_403 - 1024 * 4 - 128 * 2 - hidden + (4 + 2) * 8 + 8
    assert build_model(_tiny("softdbof")).count_params() == softdbof
    assert build_model(_tiny("netvlad", input_batch_norm=False, context_gating=False)).count_params() == (
        48_403 - bn * (1024 + 128) - gating
    )


def test_tiny_nextvlad_hand_count():
    bn = 4
    # rgb: N = 1024, lambda N = 1024, G = 4, K = 4, lambda N / G = 256
    rgb = (1024 * 1024 + 1024) + (1024 * 4 + 4) + 1024 * 16 + bn * 16 + 256 * 4 + bn * 256 * 4
    # audio: N = 128, lambda N = 128, G = 2, K = 2, lambda N / G = 64
    audio = (128 * 128 + 128) + (128 * 2 + 2) + 128 * 4 + bn * 4 + 64 * 2 + bn * 64 * 2
    hidden = (256 * 4 + 64 * 2) * 16 + bn * 16  # FC without bias, BN
    se = 16 * 4 + bn * 4 + 4 * 16  # squeeze, BN, excite
    head = 16 * 3 + 3
    assert rgb + audio + hidden + se + head == 1_111_897
    assert build_model(TINY_NEXTVLAD).count_params() == 1_111_897


def test_flops_hand_count_and_sampling():
    t, k = FRAMES, 4
    pooling = t * 1024 * k * 2 + 1024 * k + t * 128 * 2 * 2 + 128 * 2  # assignment + aggregation + centres
    macs = pooling + (1024 * k + 128 * 2) * 8 + 8 * 8
    head = 2 * (8 * 3 * 5 + 3 * 3)
    assert model_flops(TINY_NETVLAD) == 2 * macs + head
    # frame sampling counts the sampled frames, not T
    sampled = dataclasses.replace(WILLOW, sample_frames=100)
    assert model_flops(sampled) == model_flops(dataclasses.replace(WILLOW, frames=100))
    assert model_flops(sampled) < model_flops(WILLOW)
    # NeXtVLAD rgb per frame: expansion + attention + assignment + aggregation
    per_frame = 1024 * 1024 + 1024 * 4 + 1024 * 16 + 1024 * 4
    per_frame_audio = 128 * 128 + 128 * 2 + 128 * 4 + 128 * 2
    macs = t * (per_frame + per_frame_audio) + 256 * 4 + 64 * 2 + (1024 + 128) * 16 + 2 * 16 * 4
    assert model_flops(TINY_NEXTVLAD) == 2 * macs + 2 * 16 * 3


# --- behaviour on data ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", POOLINGS + ("nextvlad",))
def test_padding_does_not_change_the_output(family):
    model = build_model(_tiny(family))
    num_frames = [6, 3, 1, 4, 2]
    x, n = _batch(num_frames)
    rng = np.random.default_rng(1)
    large = _with_padding(x, num_frames, lambda shape: 1e4 * rng.normal(size=shape))
    nan = _with_padding(x, num_frames, lambda shape: np.where(rng.random(shape) < 0.5, np.nan, np.inf))
    for training in (False, True):  # in training the frame-level BNs use masked batch statistics
        ref = model({"frames": x, "num_frames": n}, training=training)
        for padded in (large, nan):
            out = model({"frames": padded, "num_frames": n}, training=training)
            for key in ("predictions", "representation"):
                np.testing.assert_allclose(out[key].numpy(), ref[key].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", POOLINGS + ("nextvlad",))
def test_the_amount_of_padding_does_not_change_the_output(family):
    """The same videos padded to T = 6 and T = 10 (same weights): equal outputs, also in training, where the
    frame-level batch norms must take their statistics over the real frames only."""
    short, long = build_model(_tiny(family)), build_model(_tiny(family, frames=10))
    long.set_weights(short.get_weights())
    x, n = _batch([6, 3, 1, 4, 2])
    x_long = np.concatenate([x, np.zeros((5, 4, FEATURE_SIZE), np.float32)], axis=1)
    for training in (False, True):
        ref = short({"frames": x, "num_frames": n}, training=training)
        out = long({"frames": x_long, "num_frames": n}, training=training)
        for key in ("predictions", "representation"):
            np.testing.assert_allclose(out[key].numpy(), ref[key].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", POOLINGS + ("nextvlad",))
def test_shapes_and_probabilities(family):
    config = _tiny(family)
    model = build_model(config)
    x, n = _batch([6, 2, 5])
    out = model({"frames": x, "num_frames": n}, training=False)
    assert out["predictions"].shape == (3, config.num_classes)
    assert out["representation"].shape == (3, config.hidden)
    p = out["predictions"].numpy()
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()


def _prototype_problem(videos=64, frames=FRAMES, seed=0):
    """Label = which of two prototype vectors was added to some of the real frames (two classes, one-hot)."""
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
    return x, n, np.eye(2, dtype=np.float32)[label]


@pytest.mark.parametrize("family", POOLINGS + ("nextvlad",))
def test_a_few_training_steps_reduce_the_loss(family):
    tf.random.set_seed(0)
    changes = {"dropout": 0.5} if family == "nextvlad" else {}
    model = build_model(_tiny(family, num_classes=2, **changes))
    x, n, y = _prototype_problem()
    optimizer = keras.optimizers.Adam(1e-2)
    bce = keras.losses.BinaryCrossentropy()

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = bce(y, model({"frames": x, "num_frames": n}, training=True)["predictions"])
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    losses = [float(step()) for _ in range(25)]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_frame_sampling_is_stochastic_at_inference_and_uses_real_frames_only():
    config = _tiny("netvlad", sample_frames=5)
    model = build_model(config)
    num_frames = [6, 3, 1, 4]
    x, n = _batch(num_frames)
    first = model({"frames": x, "num_frames": n}, training=False)["predictions"].numpy()
    second = model({"frames": x, "num_frames": n}, training=False)["predictions"].numpy()
    for p in (first, second):
        assert p.shape == (4, 3) and np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    assert not np.allclose(first, second)
    # only real frames are drawn: with the same draws, NaN padding changes nothing
    padded = _with_padding(x, num_frames, lambda shape: np.full(shape, np.nan))
    tf.random.set_seed(7)
    ref = model({"frames": x, "num_frames": n}, training=False)["predictions"].numpy()
    tf.random.set_seed(7)
    out = model({"frames": padded, "num_frames": n}, training=False)["predictions"].numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    # a one-frame video sees its only frame every time: its output does not depend on the draw
    np.testing.assert_allclose(first[2], second[2], rtol=1e-5, atol=1e-6)


def test_frame_mask_sampling_indices():
    frames = tf.reshape(tf.range(2 * 10, dtype=tf.float32), [2, 10, 1])
    sampled, mask = FrameMask(sample_frames=1000)(frames, tf.constant([3, 10]))
    values = sampled.numpy()[..., 0]
    assert set(values[0].astype(int)) == {0, 1, 2}
    assert set(values[1].astype(int)) == set(range(10, 20))
    assert (mask.numpy() == 1).all()
    full, mask = FrameMask()(frames, tf.constant([3, 10]))
    np.testing.assert_array_equal(mask.numpy()[0], [1, 1, 1] + [0] * 7)
    assert (full.numpy()[0, 3:] == 0).all()


# --- round trips ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", POOLINGS + ("nextvlad",))
def test_model_rebuilt_from_config_dict(family):
    config = _tiny(family, sample_frames=4) if family != "nextvlad" else _tiny(family)
    again = config_from_dict(config_to_dict(config))
    assert again == config
    assert build_model(again).count_params() == build_model(config).count_params()


def _randomized(layer, seed=3):
    """`layer` with random weights (positive moving variances), so that a weight or an option lost in a round trip
    shows in the outputs."""
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [
            rng.uniform(0.5, 2.0, w.shape) if "moving_variance" in v.name else w + 0.1 * rng.normal(size=w.shape)
            for v, w in zip(layer.weights, layer.get_weights())
        ]
    )
    return layer


def test_layer_get_config_round_trips():
    """Each layer, built with options other than its defaults, comes back from its config with those options and,
    given the original's weights, computes the same outputs (FrameMask's sampling: the same random draws)."""
    x, n = _batch([6, 2])
    mask = tf.sequence_mask(n, FRAMES, dtype=tf.float32)

    def seeded(call):  # a layer that samples frames draws the same ones on every call
        def with_seed(layer):
            tf.random.set_seed(5)
            return call(layer)

        return with_seed

    netvlad = dataclasses.replace(
        TINY_NETVLAD, pooling="netrvlad", non_local=True, context_gating=False, input_batch_norm=False, sample_frames=4
    )
    layers = [
        (NetVLADEncoder(netvlad, name="enc"), seeded(lambda layer: layer(x, n)), {"config": netvlad}),
        (NeXtVLADEncoder(TINY_NEXTVLAD, name="enc"), lambda layer: layer(x, n), {"config": TINY_NEXTVLAD}),
        (
            NetVLADPooling(4, "netfv", False, name="pool"),
            lambda layer: layer(x[..., 1024:], mask),
            {"clusters": 4, "pooling": "netfv", "input_batch_norm": False, "non_local": False},
        ),
        (
            NetVLADPooling(3, "netrvlad", non_local=True, name="pool"),
            lambda layer: layer(x[..., 1024:], mask),
            {"clusters": 3, "pooling": "netrvlad", "input_batch_norm": True, "non_local": True},
        ),
        (
            NeXtVLADPooling(2, 4, 3, name="pool"),
            lambda layer: layer(x[..., 1024:], mask),
            {"expansion": 2, "groups": 4, "clusters": 3},
        ),
        (FrameMask(3, name="mask"), seeded(lambda layer: layer(x, n)[0]), {"sample_frames": 3}),
    ]
    for layer, call, options in layers:
        call(layer)
        _randomized(layer)
        again = type(layer).from_config(layer.get_config())
        assert {name: getattr(again, name) for name in options} == options, type(layer).__name__
        call(again)  # built
        again.set_weights(layer.get_weights())
        out, out_again = call(layer), call(again)
        np.testing.assert_allclose(out_again.numpy(), out.numpy(), rtol=1e-5, atol=1e-6, err_msg=type(layer).__name__)
