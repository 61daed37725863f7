"""The 2017 winners' other families (teachers.vlad): NetFV and Non-local NetVLAD (NetVLADConfig's `pooling="netfv"`
and `non_local`), and the gated DBoF (DBoFConfig). Reference sizes and FLOPs by hand, hand-counted tiny models,
the formulas against numpy, padding invariance bit for bit, shapes, config and layer round trips, narrow(), the
errors, and ONNX parity."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf
import tf_keras as keras

from vidistill.teachers.config import (
    DBoFConfig,
    HeadConfig,
    NetVLADConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    narrow,
    save_config,
)
from vidistill.teachers.presets import PRESETS
from vidistill.teachers.registry import build_model, model_flops, model_weight_reads
from vidistill.teachers.vlad import DBoFEncoder, NetVLADEncoder, NetVLADPooling, NonLocalBlock
from vidistill.yt8m.constants import FEATURE_SIZE
from vidistill.yt8m.errors import ConfigError

NETFV_WILLOW = PRESETS["netfv-willow"]
DBOF_WILLOW = PRESETS["dbof-willow"]
NONLOCAL = PRESETS["netvlad-nonlocal"]

FRAMES = 6
BN = 4  # gamma, beta, moving mean, moving variance per channel
GATED_MOE = HeadConfig(kind="moe", mixtures=2, probability_gating=True)
TINY_NETFV = NetVLADConfig(num_classes=3, frames=FRAMES, pooling="netfv", clusters=4, hidden=8, head=GATED_MOE)
TINY_NONLOCAL = NetVLADConfig(num_classes=3, frames=FRAMES, clusters=4, hidden=8, non_local=True, head=GATED_MOE)
TINY_DBOF = DBoFConfig(num_classes=3, frames=FRAMES, clusters=16, hidden=8, head=GATED_MOE)
TINY_HEAD = 8 * 3 * 3 + (8 * 3 * 2 + 3 * 2) + (3 * 3 + BN * 3)  # MoE gates, experts, probability gating (E = 8)
TINY = {
    "netfv": TINY_NETFV,
    "nonlocal": TINY_NONLOCAL,
    "nonlocal-netrvlad": dataclasses.replace(TINY_NONLOCAL, pooling="netrvlad"),
    "dbof-max": TINY_DBOF,
    "dbof-average": dataclasses.replace(TINY_DBOF, pooling="average"),
}


def _batch(num_frames, frames=FRAMES, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(num_frames), frames, FEATURE_SIZE)).astype(np.float32)
    return x, np.asarray(num_frames, np.int32)


def _with_padding(x, num_frames, fill):
    x = x.copy()
    for i, n in enumerate(num_frames):
        x[i, n:] = fill(x[i, n:].shape)
    return x


def _perturbed(model, seed=1):
    """Every weight moved off its initial value (the non-local output projection starts at zero, BN at 0 / 1)."""
    rng = np.random.default_rng(seed)
    weights = model.get_weights()
    model.set_weights([w + np.abs(rng.normal(0, 0.1, w.shape)).astype(w.dtype) for w in weights])
    return model


def _declared(config) -> int:
    """Parameters of a model built in a graph of its own: its variables are declared, never allocated (the
    paper-size models cost neither memory nor time)."""
    with tf.Graph().as_default():
        return build_model(config).count_params()


# --- reference sizes ------------------------------------------------------------------------------------------------


def _head(width, classes):
    """Gated MoE with 2 mixtures: gates (3 per class, no bias), experts (2 per class, bias), probability gating."""
    return width * classes * 3 + (width * classes * 2 + classes * 2) + (classes * classes + BN * classes)


def test_netfv_willow_reference_size_and_flops():
    """WILLOW's Gated NetFV 128, counted by hand from the layers built here: rgb input BN, assignment W (D x K),
    assignment BN, centres and covariances (D x K each); audio the same at D = 128, K = 64; the hidden FC on
    2 D K (rgb) + 2 D K (audio) = 278,528 inputs with bias; context gating; the gated MoE.

    The research notes' 333.1 M is this model with the 2017 vocabulary, 4716 classes (WILLOW's challenge): the same
    count with C = 4716 is 333,104,408; the preset has the 2018 vocabulary's 3862 classes, 321,401,192. The hidden
    FC (285.2 M) equals Gated NetVLAD 256's: NetFV's 2 D K at K = 128 is NetVLAD's D K at K = 256."""
    rgb = BN * 1024 + 3 * 1024 * 128 + BN * 128
    audio = BN * 128 + 3 * 128 * 64 + BN * 64
    hidden = 2 * (1024 * 128 + 128 * 64) * 1024 + 1024
    gating = 1024 * 1024 + BN * 1024
    assert hidden == 285_213_696
    assert rgb + audio + hidden + gating + _head(1024, 3862) == 321_401_192
    assert rgb + audio + hidden + gating + _head(1024, 4716) == 333_104_408  # the notes' 333.1 M
    assert _declared(NETFV_WILLOW) == 321_401_192
    assert _declared(dataclasses.replace(NETFV_WILLOW, num_classes=4716)) == 333_104_408
    # FLOPs: assignment, S1 and S2 per frame (3 T D K), the centre terms (3 D K), hidden FC, gating, head
    pooling = 3 * 300 * 1024 * 128 + 3 * 1024 * 128 + 3 * 300 * 128 * 64 + 3 * 128 * 64
    macs = pooling + 278_528 * 1024 + 1024 * 1024 + 1024 * 3862 * 5 + 3862 * 3862
    assert model_flops(NETFV_WILLOW) == 2 * macs == 893_410_248


def test_dbof_willow_reference_size_and_flops():
    """WILLOW's gated DBoF at its released run's sizes (4096 clusters, hidden 1024) with the gated MoE of
    netvlad-willow: input BN (1152), projection 1152 x 4096 and hidden 4096 x 1024 without biases (BN instead),
    their BNs, context gating, head."""
    params = BN * 1152 + 1152 * 4096 + BN * 4096 + 4096 * 1024 + BN * 1024 + (1024 * 1024 + BN * 1024)
    assert params + _head(1024, 3862) == _declared(DBOF_WILLOW) == 44_702_312
    macs = 300 * 1152 * 4096 + 4096 * 1024 + 1024 * 1024 + 1024 * 3862 * 5 + 3862 * 3862
    assert model_flops(DBOF_WILLOW) == 2 * macs == 2_911_017_928  # the per-frame projection is 97 %


def test_nonlocal_netvlad_reference_size_and_flops():
    """netvlad-willow (321,541,224, as test_vlad counts) plus one non-local block per stream: theta, phi, g
    (D x D/2 each) and the output projection (D/2 x D), no biases: 2 D^2 = 2,097,152 (rgb) + 32,768 (audio)."""
    willow = PRESETS["netvlad-willow"]
    assert dataclasses.replace(NONLOCAL, non_local=False) == willow
    blocks = 4 * 1024 * 512 + 4 * 128 * 64
    assert _declared(NONLOCAL) == 321_541_224 + blocks == 323_671_144
    # per stream 3 K D h + K^2 h + K^2 h + K h D (h = D / 2): rgb K = 256, D = 1024; audio K = 128, D = 128
    attention = 4 * 256 * 1024 * 512 + 2 * 256 * 256 * 512 + 4 * 128 * 128 * 64 + 2 * 128 * 128 * 64
    assert model_flops(NONLOCAL) == model_flops(willow) + 2 * attention == 2_197_232_584
    assert model_weight_reads(NONLOCAL) == model_weight_reads(willow) + blocks


def test_small_presets_are_about_netvlad_small():
    counts = {name: _declared(PRESETS[name]) for name in ("netfv-small", "dbof-small", "netvlad-nonlocal-small")}
    assert counts == {"netfv-small": 4_682_232, "dbof-small": 3_805_896, "netvlad-nonlocal-small": 4_575_224}
    reference = _declared(PRESETS["netvlad-small"])
    assert all(0.75 < n / reference < 1.05 for n in counts.values()), (counts, reference)
    for name in counts:
        assert PRESETS[name].num_classes == 100


# --- hand counts ----------------------------------------------------------------------------------------------------


def test_tiny_netfv_hand_count():
    rgb = BN * 1024 + 3 * 1024 * 4 + BN * 4  # input BN; assignment W, centres, covariances; assignment BN
    audio = BN * 128 + 3 * 128 * 2 + BN * 2  # K // 2 = 2
    hidden = 2 * (1024 * 4 + 128 * 2) * 8 + 8  # first- and second-order vectors of both streams, FC with bias
    gating = 8 * 8 + BN * 8
    assert rgb + audio + hidden + gating + TINY_HEAD == 87_571
    assert build_model(TINY_NETFV).count_params() == 87_571


def test_tiny_nonlocal_hand_count():
    """test_vlad's tiny NetVLAD (48,403) plus theta, phi, g and out of each stream's block."""
    blocks = 4 * 1024 * 512 + 4 * 128 * 64
    assert build_model(TINY_NONLOCAL).count_params() == 48_403 + blocks == 2_178_323
    assert build_model(TINY["nonlocal-netrvlad"]).count_params() == 2_178_323 - 1024 * 4 - 128 * 2  # no centres


def test_tiny_dbof_hand_count():
    params = BN * 1152 + 1152 * 16 + BN * 16 + 16 * 8 + BN * 8 + (8 * 8 + BN * 8)
    assert params + TINY_HEAD == 23_507
    assert build_model(TINY_DBOF).count_params() == build_model(TINY["dbof-average"]).count_params() == 23_507
    no_gate = dataclasses.replace(TINY_DBOF, context_gating=False)
    assert build_model(no_gate).count_params() == 23_507 - (8 * 8 + BN * 8)


def test_tiny_flops_and_weight_reads_by_hand():
    t = FRAMES
    head = 8 * 3 * 5 + 3 * 3  # gated MoE MACs on E = 8
    # NetFV: per stream 3 T D K (assignment, S1, S2) + 3 D K (c S0, c S1, c^2 S0)
    pooling = 3 * t * 1024 * 4 + 3 * 1024 * 4 + 3 * t * 128 * 2 + 3 * 128 * 2
    assert model_flops(TINY_NETFV) == 2 * (pooling + 2 * (1024 * 4 + 128 * 2) * 8 + 8 * 8 + head)
    assert model_weight_reads(TINY_NETFV) == 3 * (1024 * 4 + 128 * 2) + 2 * 4352 * 8 + 8 * 8 + head
    # non-local: the tiny NetVLAD's FLOPs plus 4 K D h + 2 K^2 h per stream
    netvlad = 2 * (t * 1024 * 4 * 2 + 1024 * 4 + t * 128 * 2 * 2 + 128 * 2 + 4352 * 8 + 8 * 8 + head)
    attention = 4 * 4 * 1024 * 512 + 2 * 16 * 512 + 4 * 2 * 128 * 64 + 2 * 4 * 64
    assert model_flops(TINY_NONLOCAL) == netvlad + 2 * attention
    assert model_weight_reads(TINY_NONLOCAL) == 2 * 4352 + 4352 * 8 + 8 * 8 + head + 4 * 1024 * 512 + 4 * 128 * 64
    # DBoF: the projection of every frame, hidden FC, gating, head (max / average pooling is not counted)
    dbof = 2 * (t * 1152 * 16 + 16 * 8 + 8 * 8 + head)
    assert model_flops(TINY_DBOF) == model_flops(TINY["dbof-average"]) == dbof
    assert model_weight_reads(TINY_DBOF) == 1152 * 16 + 16 * 8 + 8 * 8 + head


# --- the formulas against numpy -------------------------------------------------------------------------------------


def _bn_inference(layer, x):
    gamma, beta, mean, variance = (w.numpy() for w in layer.weights)
    return (x - mean) / np.sqrt(variance + layer.epsilon) * gamma + beta


def _l2(v, axis):
    return v / np.sqrt(np.maximum((v * v).sum(axis=axis, keepdims=True), 1e-12))


def _softmax(z):
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _pooling_reference(layer, x, mask):
    """NetVLADPooling in numpy (float64), inference mode, from the docstring's formulas."""
    x = x.astype(np.float64)
    if layer.input_norm is not None:
        x = _bn_inference(layer.input_norm, x)
    a = _softmax(_bn_inference(layer.assign_norm, x @ layer.assign.kernel.numpy())) * mask[..., None]
    s0 = a.sum(axis=1)[:, None, :]  # [B, 1, K]
    s1 = np.einsum("btd,btk->bdk", x, a)
    batch = x.shape[0]
    if layer.pooling == "netfv":
        c = layer.centres.numpy()
        sigma = layer.covariances.numpy() ** 2 + 1e-6
        s2 = np.einsum("btd,btk->bdk", x * x, a)
        first = (s1 - c * s0) / sigma
        second = (s2 - 2 * c * s1 + c * c * s0) / sigma**2 - s0
        parts = [_l2(f, axis=1).reshape(batch, -1) for f in (first, second)]
        return _l2(np.concatenate(parts, axis=-1), axis=-1)
    v = s1 - layer.centres.numpy() * s0 if layer.pooling == "netvlad" else s1
    if layer.non_local:
        block = layer.attention
        tokens = v.transpose(0, 2, 1)  # [B, K, D]
        theta, phi, g = (tokens @ dense.kernel.numpy() for dense in (block.theta, block.phi, block.g))
        attention = _softmax(theta @ phi.transpose(0, 2, 1) / np.sqrt(block.inner))
        v = (tokens + (attention @ g) @ block.out.kernel.numpy()).transpose(0, 2, 1)
    return _l2(_l2(v, axis=1).reshape(batch, -1), axis=-1)


@pytest.mark.parametrize(
    "pooling, non_local, input_bn",
    [("netfv", False, True), ("netfv", False, False), ("netvlad", True, True), ("netrvlad", True, False)],
)
def test_pooling_computes_the_documented_formula(pooling, non_local, input_bn):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 5, 6)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32)
    layer = NetVLADPooling(3, pooling, input_bn, non_local, name="pool")
    layer(x, mask)
    for w in layer.weights:  # off the initial values: BN statistics, zero output projection, unit covariances
        w.assign(w + np.abs(rng.normal(0, 0.3, w.shape)).astype(np.float32))
    expected = _pooling_reference(layer, x, mask)
    out = layer(x, mask, training=False).numpy()
    assert out.shape == (3, (2 if pooling == "netfv" else 1) * 6 * 3) == (3, layer.output_size)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert (out[2] == 0).all()  # no frame: every sum is 0, and so is its normalization


def test_nonlocal_block_starts_as_the_identity():
    v = tf.constant(np.random.default_rng(0).normal(size=(2, 4, 6)), tf.float32)
    block = NonLocalBlock(name="block")
    np.testing.assert_array_equal(block(v).numpy(), v.numpy())
    assert [w.shape.as_list() for w in block.weights] == [[6, 3], [6, 3], [6, 3], [3, 6]]


def test_dbof_computes_the_documented_formula():
    config = dataclasses.replace(TINY_DBOF, frames=5, context_gating=False)
    for pooling in ("max", "average"):
        encoder = DBoFEncoder(dataclasses.replace(config, pooling=pooling), name="dbof")
        x, n = _batch([5, 2, 0], frames=5)
        encoder(x, n)
        rng = np.random.default_rng(3)
        for w in encoder.weights:
            w.assign(w + np.abs(rng.normal(0, 0.3, w.shape)).astype(np.float32))
        mask = np.arange(5)[None, :] < n[:, None]
        frames = np.where(mask[..., None], x, 0.0).astype(np.float64)
        h = _bn_inference(
            encoder.projection_norm, _bn_inference(encoder.input_norm, frames) @ encoder.projection.kernel
        )
        h = np.where(mask[..., None], np.clip(h, 0, 6), 0.0)
        pooled = h.max(axis=1) if pooling == "max" else h.sum(axis=1) / np.maximum(n, 1)[:, None]
        expected = np.clip(_bn_inference(encoder.hidden_norm, pooled @ encoder.hidden.kernel.numpy()), 0, 6)
        np.testing.assert_allclose(encoder(x, n, training=False).numpy(), expected, rtol=1e-4, atol=1e-5)


# --- behaviour on data ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY))
def test_padding_never_changes_the_output_bit_for_bit(name):
    """Garbage (large values, NaN, inf) in the padding, an empty video (num_frames = 0) among them: the very same
    bits, at inference and in training (the masked frame-level batch norms)."""
    model = _perturbed(build_model(TINY[name]))
    num_frames = [6, 3, 1, 0, 4, 2]
    x, n = _batch(num_frames)
    x = _with_padding(x, num_frames, np.zeros)
    rng = np.random.default_rng(1)
    large = _with_padding(x, num_frames, lambda shape: 1e4 * rng.normal(size=shape))
    nan = _with_padding(x, num_frames, lambda shape: np.where(rng.random(shape) < 0.5, np.nan, np.inf))
    for training in (False, True):
        ref = model({"frames": x, "num_frames": n}, training=training)
        assert all(np.isfinite(ref[key].numpy()).all() for key in ref)
        for padded in (large, nan):
            out = model({"frames": padded, "num_frames": n}, training=training)
            for key in ("predictions", "representation"):
                np.testing.assert_array_equal(out[key].numpy(), ref[key].numpy())


@pytest.mark.parametrize("name", list(TINY))
def test_the_amount_of_padding_does_not_change_the_output(name):
    short = _perturbed(build_model(TINY[name]))
    long = build_model(dataclasses.replace(TINY[name], frames=10))
    long.set_weights(short.get_weights())
    x, n = _batch([6, 3, 1, 0, 2])
    x_long = np.concatenate([x, np.full((5, 4, FEATURE_SIZE), 7.0, np.float32)], axis=1)
    for training in (False, True):
        ref = short({"frames": x, "num_frames": n}, training=training)
        out = long({"frames": x_long, "num_frames": n}, training=training)
        for key in ("predictions", "representation"):
            np.testing.assert_allclose(out[key].numpy(), ref[key].numpy(), rtol=1e-4, atol=1e-5)


def test_dbof_empty_video_pools_to_zeros_and_real_frames_matter():
    x, n = _batch([0, 6])
    for name in ("dbof-max", "dbof-average"):
        encoder = _perturbed(build_model(TINY[name])).get_layer("dbof")
        out = encoder(x, n, training=False).numpy()
        # E of an empty video: the pooled zeros through ReLU6(BN(0 W_h)) and the gating
        zero = encoder.gating(tf.nn.relu6(encoder.hidden_norm(encoder.hidden(tf.zeros([1, 16])))))
        np.testing.assert_allclose(out[0], zero.numpy()[0], rtol=1e-6)
        changed = x.copy()
        changed[1, 0] += 1.0
        assert not np.allclose(encoder(changed, n, training=False).numpy()[1], out[1])


@pytest.mark.parametrize("name", list(TINY))
def test_shapes_and_probabilities(name):
    config = TINY[name]
    model = build_model(config)
    x, n = _batch([6, 2, 5, 0])
    out = model({"frames": x, "num_frames": n}, training=False)
    assert out["predictions"].shape == (4, config.num_classes)
    assert out["representation"].shape == (4, config.hidden)
    p = out["predictions"].numpy()
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()


@pytest.mark.parametrize("name", list(TINY))
def test_every_weight_gets_a_gradient(name):
    """The covariances, the centres, every matrix of the non-local blocks: each trainable weight moves the loss
    (the non-local output projection starts at zero, where theta, phi and g get none yet: perturbed first)."""
    model = _perturbed(build_model(TINY[name]))
    x, n = _batch([6, 3, 1, 0])
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    with tf.GradientTape() as tape:
        p = model({"frames": x, "num_frames": n}, training=True)["predictions"]
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(y, p))
    gradients = tape.gradient(loss, model.trainable_variables)
    silent = [v.name for v, g in zip(model.trainable_variables, gradients) if g is None or not np.any(g.numpy())]
    assert not silent
    names = " ".join(v.name for v in model.trainable_variables)
    expected = {"netfv": ["covariances", "centres"], "nonlocal": ["non_local/theta", "non_local/out"]}
    assert all(part in names for part in expected.get(name, []))


def test_netfv_takes_frame_sampling():
    config = dataclasses.replace(TINY_NETFV, sample_frames=5)
    model = build_model(config)
    x, n = _batch([6, 3, 1])
    padded = _with_padding(x, [6, 3, 1], lambda shape: np.full(shape, np.nan))
    tf.random.set_seed(7)
    ref = model({"frames": x, "num_frames": n}, training=False)["predictions"].numpy()
    tf.random.set_seed(7)
    out = model({"frames": padded, "num_frames": n}, training=False)["predictions"].numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert model_flops(config) == model_flops(dataclasses.replace(TINY_NETFV, frames=5))


# --- configuration --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["netfv-willow", "dbof-willow", "netvlad-nonlocal", "netfv-small", "dbof-small"])
def test_config_round_trips(tmp_path, name):
    config = PRESETS[name]
    assert config_from_dict(config_to_dict(config)) == config
    for suffix in ("yaml", "json"):
        path = str(tmp_path / f"{name}.{suffix}")
        save_config(config, path)
        assert load_config(path) == config
    if name.endswith("small"):
        assert build_model(load_config(path)).count_params() == build_model(config).count_params()


def test_tiny_models_rebuilt_from_config_dict():
    for config in TINY.values():
        again = config_from_dict(json.loads(json.dumps(config_to_dict(config))))
        assert again == config
        assert build_model(again).count_params() == build_model(config).count_params()


def test_bad_configs_name_the_option():
    with pytest.raises(ConfigError, match="non_local needs pooling netvlad or netrvlad, got pooling 'netfv'"):
        NetVLADConfig(pooling="netfv", non_local=True)
    with pytest.raises(ConfigError, match="non_local needs pooling .* 'softdbof'"):
        config_from_dict({"family": "netvlad", "pooling": "softdbof", "non_local": True})
    with pytest.raises(ConfigError, match="netvlad.non_local must be true or false"):
        config_from_dict({"family": "netvlad", "non_local": "yes"})
    with pytest.raises(ConfigError, match="pooling must be netvlad, netrvlad, netfv or softdbof"):
        NetVLADConfig(pooling="fisher")
    with pytest.raises(ConfigError, match="dbof: pooling must be 'max' or 'average', got 'sum'"):
        config_from_dict({"family": "dbof", "pooling": "sum"})
    with pytest.raises(ConfigError, match="dbof: clusters must be >= 1"):
        DBoFConfig(clusters=0)
    with pytest.raises(ConfigError, match="dbof.hidden must be an integer"):
        config_from_dict({"family": "dbof", "hidden": 1.5})
    with pytest.raises(ConfigError, match=r"dbof: unknown option\(s\) \['sample_frames'\]"):
        config_from_dict({"family": "dbof", "sample_frames": 30})
    with pytest.raises(ConfigError, match="non_local needs pooling"):
        NetVLADPooling(4, "netfv", non_local=True)


def test_narrow_scales_the_widths_and_keeps_the_variant():
    half = narrow(DBOF_WILLOW, 0.5)
    assert (half.clusters, half.hidden, half.pooling, half.context_gating) == (2048, 512, "max", True)
    fv = narrow(NETFV_WILLOW, 0.5)
    assert (fv.clusters, fv.hidden, fv.pooling) == (64, 512, "netfv")
    nonlocal_half = narrow(NONLOCAL, 0.25)
    assert (nonlocal_half.clusters, nonlocal_half.hidden, nonlocal_half.non_local) == (64, 256, True)
    # half the clusters and half the hidden width: the hidden FC a quarter, the head's probability gating unchanged
    pooling = BN * 1024 + 3 * 1024 * 64 + BN * 64 + BN * 128 + 3 * 128 * 32 + BN * 32
    hidden = 2 * (1024 * 64 + 128 * 32) * 512 + 512
    assert _declared(fv) == pooling + hidden + (512 * 512 + BN * 512) + _head(512, 3862) == 96_606_696


def test_narrow_students_of_the_new_families():
    from vidistill.students.student import build_student, student_config

    for name in ("netfv-small", "dbof-small", "netvlad-nonlocal-small"):
        config = student_config(PRESETS[name], k=4, width=0.5)
        student = build_student(config)
        x, _ = _batch([1, 1], frames=40)
        out = student({"frames": x, "num_frames": np.array([40, 3], np.int32)}, training=False)
        assert out["predictions"].shape == (2, 100)
        assert out["representation"].shape == (2, PRESETS[name].hidden // 2)


def test_models_command_describes_the_new_presets(capsys):
    from vidistill.cli import main

    for name, params in (("netfv-small", 4_682_232), ("dbof-willow", 44_702_312)):
        assert main(["models", "--preset", name, "--json"]) == 0
        described = json.loads(capsys.readouterr().out)
        assert (described["family"], described["parameters"]) == (PRESETS[name].family, params)
        assert described["flops_per_video"] == model_flops(PRESETS[name])


# --- layer round trips ----------------------------------------------------------------------------------------------


def test_layer_get_config_round_trips():
    x, n = _batch([6, 2])
    mask = tf.sequence_mask(n, FRAMES, dtype=tf.float32)
    v = tf.constant(np.random.default_rng(0).normal(size=(2, 3, 8)), tf.float32)
    layers = [
        (NetVLADEncoder(TINY_NETFV, name="enc"), lambda layer: layer(x, n)),
        (NetVLADEncoder(TINY_NONLOCAL, name="enc"), lambda layer: layer(x, n)),
        (DBoFEncoder(TINY["dbof-average"], name="enc"), lambda layer: layer(x, n)),
        (NetVLADPooling(4, "netfv", False, name="pool"), lambda layer: layer(x[..., 1024:], mask)),
        (NetVLADPooling(4, "netrvlad", True, True, name="pool"), lambda layer: layer(x[..., 1024:], mask)),
        (NonLocalBlock(name="block"), lambda layer: layer(v)),
    ]
    for layer, call in layers:
        out = call(layer)
        again = type(layer).from_config(layer.get_config())
        out_again = call(again)
        assert again.get_config() == layer.get_config()
        assert again.count_params() == layer.count_params()
        assert out_again.shape == out.shape


# --- export ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["netfv", "nonlocal", "dbof-max"])
def test_onnx_export_parity(name):
    """One tiny model of each new family through the exporter's conversion: the ONNX file computes what Keras
    computes, for every length from an empty video to a full one, whatever the padding holds."""
    import onnxruntime as ort

    from vidistill.export.onnx_export import convert

    config = TINY[name]
    network = _perturbed(build_model(config))  # no weight at an initial 0 or 1, which grappler would fold away
    proto = convert(network, config)
    x, n = _batch(list(range(FRAMES + 1)), seed=4)
    x = _with_padding(x, n, np.zeros)
    reference = network({"frames": x, "num_frames": n}, training=False)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"frames": x, "num_frames": n})))
    for key in ("predictions", "representation"):
        np.testing.assert_allclose(outputs[key], reference[key].numpy(), rtol=1e-4, atol=1e-5)
    garbage = _with_padding(x, n, lambda shape: np.full(shape, 3.0, np.float32))
    again = session.run(["predictions"], {"frames": garbage, "num_frames": n})[0]
    np.testing.assert_array_equal(again, outputs["predictions"])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["netfv", "nonlocal", "dbof", "mixnextvlad"])
def test_quantized_exports_pass_their_gates(family, synth_data, tmp_path):
    """A briefly trained tiny student of each new family through `vidistill export`: fp16 and int8-dynamic (and
    int8-qat for non-local NetVLAD, whose block tfmot must wrap) pass their parity and accuracy gates on 60
    held-out videos."""
    import dataclasses as dc

    from vidistill.cli import main
    from vidistill.distill.finetune import finetune
    from vidistill.export.card import read_card
    from vidistill.students.convert import save_student
    from vidistill.students.student import build_student, student_config
    from vidistill.teachers.config import MixNeXtVLADConfig

    data = synth_data(videos=160, heldout=60, classes=3, min_frames=30, max_frames=30, seed=7)
    models = {
        "netfv": dc.replace(TINY_NETFV, frames=30),
        "nonlocal": dc.replace(TINY_NONLOCAL, frames=30),
        "dbof": dc.replace(TINY_DBOF, frames=30),
        "mixnextvlad": MixNeXtVLADConfig(
            num_classes=3, frames=30, expansion=1, groups=2, clusters=4, hidden=8, se_reduction=2, dropout=0.0
        ),
    }
    config = student_config(models[family], k=6)
    untrained = save_student(build_student(config), config, str(tmp_path / "untrained"))
    student = finetune(
        untrained, data.train, str(tmp_path / "student"), steps=40, batch_size=16, learning_rate=1e-2, progress=False
    )
    out = tmp_path / "onnx"
    # int8-qat (tfmot wrapping the layers, a fine-tuning) for the family with new sublayers only: CI time
    precisions = "fp32,fp16,int8-dynamic" + (",int8-qat" if family == "nonlocal" else "")
    argv = ["export", student, "--out", str(out), "--eval-data", data.heldout, "--calibration-data", data.train]
    assert main(argv + ["--precision", precisions, "--qat-steps", "3", "--batch-size", "16"]) == 0
    for name in precisions.split(","):
        card = read_card(str(out / f"{name}.json"))
        assert card.parity.passed and card.accuracy.videos == 60, (name, card.parity)
    # the non-local attention overflowed float16 (NaN scores): its layer stays float32, and the card says so
    kept = "layers kept in float32 (values past fp16's range): non_local"
    assert (kept in read_card(str(out / "fp16.json")).notes) == (family == "nonlocal")
