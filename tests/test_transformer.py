"""The transformer family: sizes and FLOPs by hand, masking for every pooling and both stream layouts, the config
round trip, students at k frames, training, and distillation across families."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from vidistill.teachers.config import (
    HeadConfig,
    HLSTMConfig,
    TransformerConfig,
    config_from_dict,
    config_to_dict,
    narrow,
)
from vidistill.teachers.presets import PRESETS
from vidistill.teachers.registry import build_model, model_flops, model_weight_reads

TINY = TransformerConfig(
    num_classes=5, frames=6, layers=2, heads=2, head_size=4, max_positions=10, head=HeadConfig(kind="logistic")
)


def _videos(batch: int, frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, frames, 1152)).astype("float32")


def _layer_parameters(h: int, feed_forward: int, attentions: int) -> int:
    attention = 4 * (h * h + h) + 2 * h  # Q, K, V, output (+ biases), its LayerNorm
    return attentions * attention + (h * feed_forward * h + feed_forward * h) + (feed_forward * h * h + h) + 2 * h


# ------------------------------------------------------------------------------------------------ sizes
def test_transformer_2019_has_the_hand_counted_parameters():
    """H = 768, 2 layers, 12 heads, MoE with 2 mixtures over 3862 classes."""
    config = PRESETS["transformer-2019"]
    h, c = 768, 3862
    embedding = 1152 * h + h + 300 * h + 2 * h  # projection, positions, LayerNorm
    layers = 2 * _layer_parameters(h, 4, 1)
    head = h * c * 3 + h * c * 2 + c * 2  # MoE gates (no bias), experts (+ bias)
    assert embedding + layers + head == 30_130_988
    assert build_model(config).count_params() == 30_130_988
    assert model_flops(config) == 9_606_927_360  # 9.6 GFLOPs at 300 frames (below)


@pytest.mark.parametrize("streams", ["concat", "cross"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_tiny_parameters_and_flops_by_hand(streams, pooling):
    config = dataclasses.replace(TINY, streams=streams, pooling=pooling)
    h, t, ff = 8, 6, 4
    token = h if pooling == "cls" else 0
    inputs = (1024, 128) if streams == "cross" else (1152,)
    attentions = 2 if streams == "cross" else 1
    encoder = sum(d * h + h + 10 * h + 2 * h + token + 2 * _layer_parameters(h, ff, attentions) for d in inputs)
    width = h * len(inputs)
    assert build_model(config).count_params() == encoder + width * 5 + 5
    length = t + (1 if pooling == "cls" else 0)
    layer_macs = attentions * (4 * length * h * h + 2 * length * length * h) + 2 * ff * length * h * h
    macs = sum(t * d * h + 2 * layer_macs for d in inputs)
    assert model_flops(config) == 2 * macs + 2 * width * 5


@pytest.mark.parametrize("pooling", ["cls", "first"])
def test_weight_reads_are_the_models_matrices_when_every_position_is_used(pooling):
    config = dataclasses.replace(TINY, frames=10, pooling=pooling)
    model = build_model(config)
    matrices = sum(int(np.prod(v.shape)) for v in model.weights if len(v.shape) >= 2)
    assert model_weight_reads(config) == matrices
    fewer = dataclasses.replace(config, frames=4)  # 6 position rows fewer
    assert model_weight_reads(config) - model_weight_reads(fewer) == 6 * 8


# ------------------------------------------------------------------------------------------------ masking
@pytest.mark.parametrize("streams", ["concat", "cross"])
@pytest.mark.parametrize("pooling", ["cls", "mean", "first", "max"])
def test_padding_never_changes_the_output(pooling, streams):
    config = dataclasses.replace(TINY, pooling=pooling, streams=streams)
    model = build_model(config)
    frames = _videos(4, config.frames)
    num_frames = np.array([0, 1, 3, config.frames], "int32")
    noisy = frames.copy()
    for row, n in enumerate(num_frames):
        noisy[row, n:] = np.random.default_rng(row).uniform(-50, 50, noisy[row, n:].shape)
    clean = model({"frames": frames, "num_frames": num_frames})
    dirty = model({"frames": noisy, "num_frames": num_frames})
    for key in ("predictions", "representation"):
        np.testing.assert_array_equal(clean[key].numpy(), dirty[key].numpy())
    assert np.all(np.isfinite(clean["representation"].numpy()))
    changed = frames.copy()
    changed[:, 0] += 1.0  # a real frame matters (every video but the empty one)
    moved = model({"frames": changed, "num_frames": num_frames})["representation"].numpy()
    assert not np.allclose(moved[1:], clean["representation"].numpy()[1:])
    if pooling == "max":
        np.testing.assert_array_equal(clean["representation"].numpy()[0], 0.0)  # no real frame: 0


def test_a_video_is_the_same_at_any_input_length():
    """Padding to more frames (at the same positions) changes nothing: what a segment or student model relies on."""
    model = build_model(dataclasses.replace(TINY, frames=10))
    frames, num_frames = _videos(2, 10), np.array([4, 6], "int32")
    short = build_model(dataclasses.replace(TINY, frames=6))
    short.set_weights(model.get_weights())
    long_out = model({"frames": frames, "num_frames": num_frames})["predictions"].numpy()
    short_out = short({"frames": frames[:, :6], "num_frames": num_frames})["predictions"].numpy()
    np.testing.assert_allclose(long_out, short_out, atol=1e-6)


# ------------------------------------------------------------------------------------------------ configuration
def test_config_round_trips_narrows_and_refuses_bad_values(tmp_path):
    from vidistill.teachers.config import load_config, save_config

    for config in (
        PRESETS["transformer-small"],
        PRESETS["transformer-2019"],
        dataclasses.replace(TINY, streams="cross"),
    ):
        assert config_from_dict(config_to_dict(config)) == config
        path = str(tmp_path / "model.yaml")
        save_config(config, path)
        assert load_config(path) == config
    half = narrow(PRESETS["transformer-2019"], 0.5)
    assert (half.heads, half.head_size, half.hidden) == (12, 32, 384)
    with pytest.raises(ValueError, match="pooling must be cls, mean, first or max, got 'attention'"):
        dataclasses.replace(TINY, pooling="attention")
    with pytest.raises(ValueError, match="streams must be 'concat' or 'cross'"):
        dataclasses.replace(TINY, streams="sum")
    with pytest.raises(ValueError, match=r"frames \(11\) exceeds max_positions \(10\)"):
        dataclasses.replace(TINY, frames=11)
    with pytest.raises(ValueError, match="transformer.heads must be an integer, got 2.5"):
        config_from_dict({**config_to_dict(TINY), "heads": 2.5})


def test_student_at_k_frames_uses_its_own_positions():
    from vidistill.students.student import build_student, student_config

    config = student_config(PRESETS["transformer-small"], k=30)
    assert (config.model.frames, config.model.max_positions) == (30, 300)
    student = build_student(config)
    out = student({"frames": _videos(2, 300), "num_frames": np.array([300, 12], "int32")})
    assert out["predictions"].shape == (2, 100) and out["representation"].shape == (2, 64)
    assert model_flops(PRESETS["transformer-small"]) / model_flops(config.model) > 9  # 10x fewer frames


# ------------------------------------------------------------------------------------------------ training
# (falling loss on a learnable problem: tests/test_models.py, with every family)
@pytest.mark.slow
@pytest.mark.parametrize("teacher, student", [("hlstm", "transformer"), ("transformer", "hlstm")])
def test_distills_across_families_through_the_projection(synth_data, tmp_path, teacher, student):
    """An H-LSTM teacher with a transformer student and the other way round: the widths differ, so L_REP goes
    through the learned projection; every loss term is finite and the student's checkpoint holds the projection."""
    from vidistill.cli import main
    from vidistill.distill.config import load_train_config
    from vidistill.teachers.config import save_config

    data = synth_data()
    configs = {
        "hlstm": HLSTMConfig(
            num_classes=4, frames=30, chunks=3, lower_cells=6, upper_cells=6, lower_layers=1, upper_layers=1
        ),
        "transformer": TransformerConfig(num_classes=4, frames=30, layers=1, heads=2, head_size=8),  # E 16, not 12
    }
    paths = {}
    for name, config in configs.items():
        paths[name] = str(tmp_path / f"{name}.yaml")
        save_config(config, paths[name])
    out = tmp_path / "run"
    argv = ["train", "--teacher", paths[teacher], "--student", paths[student], "--frames", "6", "--data", data.train]
    argv += ["--out", str(out), "--steps", "4", "--batch-size", "4", "--checkpoint-every", "4", "--eval-every", "0"]
    assert main(argv) == 0
    config = load_train_config(str(out))
    assert (config.teacher.family, config.student.model.family, config.student.k) == (teacher, student, 6)
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(out / "checkpoints")))
    assert any(name.startswith("projection/") for name in reader.get_variable_to_shape_map())


# ------------------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("streams, pooling", [("concat", "mean"), ("concat", "cls"), ("cross", "max")])
def test_onnx_fuses_attention_layer_norm_and_gelu_with_parity(streams, pooling):
    """Every attention block, LayerNorm and GELU becomes one node, and the fused file computes what the unfused one
    and the Keras model compute, for every length from an empty video to a full one."""
    import onnxruntime as ort

    from vidistill.export.onnx_export import FUSION_NOTE, convert

    config = dataclasses.replace(TINY, frames=8, streams=streams, pooling=pooling)
    network = build_model(config)
    rng = np.random.default_rng(1)  # no weight left at its initial 0 or 1, which grappler would fold away
    network.set_weights([w + rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in network.get_weights()])
    fused, unfused = convert(network, config), convert(network, config, fuse=False)
    counts = lambda model, op: sum(n.op_type == op for n in model.graph.node)  # noqa: E731
    streams_count, attentions = (2, 2) if streams == "cross" else (1, 1)
    assert counts(fused, "MultiHeadAttention") == streams_count * attentions * config.layers
    assert counts(fused, "LayerNormalization") == streams_count * (1 + (attentions + 1) * config.layers)
    assert counts(fused, "Gelu") == streams_count * config.layers
    assert counts(fused, "Softmax") == 0 and counts(fused, "Erf") == 0
    assert counts(unfused, "MultiHeadAttention") == 0 and counts(unfused, "Softmax") > 0
    note = {p.key: p.value for p in fused.metadata_props}[FUSION_NOTE]
    assert note.startswith("fused transformer nodes: MultiHeadAttention") and "0/" not in note
    frames = _videos(9, 8, seed=3)
    num_frames = np.arange(9, dtype="int32")
    frames[np.arange(8)[None] >= num_frames[:, None]] = 0
    feed = {"frames": frames, "num_frames": num_frames}
    reference = network(feed)
    for model in (fused, unfused):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        for key in ("predictions", "representation"):
            # the empty video (row 0) aside: its keys are all masked, where ONNX Runtime's kernel and Keras round
            # the -10000 differently
            np.testing.assert_allclose(outputs[key][1:], reference[key].numpy()[1:], atol=2e-5)


@pytest.mark.slow
def test_every_precision_exports_with_parity_and_accuracy(synth_data, tmp_path):
    """A trained tiny transformer student through `vidistill export`: every ONNX precision and TF SavedModel passes
    its parity and accuracy gates on 120 held-out videos, the fused nodes are in the fp32, fp16 and int8-dynamic
    files, and int8-dynamic quantizes the matrix products."""
    import onnx

    from vidistill.cli import main
    from vidistill.distill.finetune import finetune
    from vidistill.export.card import read_card
    from vidistill.export.config import PRECISIONS
    from vidistill.students.convert import save_student
    from vidistill.students.student import build_student, student_config

    data = synth_data(videos=300, heldout=120, classes=5, min_frames=30, max_frames=40, seed=5)
    config = student_config(
        TransformerConfig(num_classes=5, frames=40, layers=2, heads=2, head_size=8, head=HeadConfig(mixtures=2)), k=10
    )
    untrained = save_student(build_student(config), config, str(tmp_path / "untrained"))
    student = finetune(
        untrained, data.train, str(tmp_path / "student"), steps=150, batch_size=16, learning_rate=1e-2, progress=False
    )
    out = tmp_path / "onnx"
    argv = ["export", student, "--out", str(out), "--eval-data", data.heldout, "--calibration-data", data.train]
    assert main(argv + ["--calibration-batches", "2", "--qat-steps", "3", "--batch-size", "16"]) == 0
    for name in PRECISIONS:
        card = read_card(str(out / f"{name}.json"))
        assert card.parity.passed and card.accuracy.videos == 120, (name, card.parity)
        assert card.accuracy.reference_gap - card.accuracy.gap <= card.tolerance.gap_drop
    assert read_card(str(out / "fp32.json")).parity.max_abs <= 1e-5
    assert read_card(str(out / "fp32.json")).notes[0].startswith("fused transformer nodes")
    for name in ("fp32", "fp16", "int8-dynamic"):
        ops = {n.op_type for n in onnx.load(str(out / f"{name}.onnx")).graph.node}
        assert {"MultiHeadAttention", "LayerNormalization", "Gelu"} <= ops, name
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(out / "int8-dynamic.onnx")).graph.node}
