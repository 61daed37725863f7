"""Recurrent families, configuration, presets, students and the `models` command."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from vidistill.teachers.config import (
    HeadConfig,
    HLSTMConfig,
    RNNConfig,
    TransformerConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    narrow,
    save_config,
)
from vidistill.teachers.presets import PRESETS, resolve
from vidistill.teachers.registry import build_model, model_flops, model_weight_reads

TINY_HLSTM = HLSTMConfig(
    num_classes=5,
    frames=6,
    chunks=2,
    lower_cells=4,
    lower_layers=1,
    upper_cells=3,
    upper_layers=1,
    head=HeadConfig(kind="logistic"),
)


def _videos(batch=3, frames=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, frames, 1152)).astype("float32")


# ------------------------------------------------------------------------------------------- sizes
def test_hlstm_paper_has_the_reference_parameter_count():
    model = build_model(PRESETS["hlstm-paper"])
    # lower 2x1024 on 1152 inputs + upper 2x1024 on 4096-d chunk states + MoE(2) on E = 4096, 4716 classes
    lower = 4 * 1024 * (1152 + 1024 + 1) + 4 * 1024 * (2048 + 1)
    upper = 4 * 1024 * (4096 + 1024 + 1) + 4 * 1024 * (2048 + 1)
    moe = 4096 * 4716 * 3 + 4096 * 4716 * 2 + 4716 * 2
    assert model.count_params() == lower + upper + moe == 143_271_128
    assert abs(model.count_params() - 143.3e6) / 143.3e6 < 0.005
    assert model.output["representation"].shape[-1] == 4096


def test_tiny_hlstm_parameters_and_flops_by_hand():
    model = build_model(TINY_HLSTM)
    lower = 4 * 4 * (1152 + 4) + 4 * 4  # one LSTM layer, 4 cells: kernels + recurrent kernels + bias
    upper = 4 * 3 * (2 * 4 + 3) + 4 * 3  # its input: the chunk state (c and h of the lower layer) = 8
    head = 2 * 3 * 5 + 5  # logistic on E = c and h of the upper layer = 6
    assert model.count_params() == lower + upper + head == 18_691
    # FLOPs = 2 x MACs: lower LSTM at 6 frame slots, upper LSTM at 2 chunks, the head once
    macs = 6 * 4 * 4 * (1152 + 4) + 2 * 4 * 3 * (8 + 3) + 6 * 5
    assert model_flops(TINY_HLSTM) == 2 * macs == 222_540


def test_rnn_flops_and_gru_parameters():
    config = RNNConfig(num_classes=7, frames=10, cell="gru", cells=5, layers=2, head=HeadConfig(kind="logistic"))
    model = build_model(config)
    # tf_keras GRU (reset_after=True): 3 * units * (input + units) + 2 * 3 * units biases
    gru1 = 3 * 5 * (1152 + 5) + 6 * 5
    gru2 = 3 * 5 * (5 + 5) + 6 * 5
    assert model.count_params() == gru1 + gru2 + 10 * 7 + 7
    assert model_flops(config) == 2 * (10 * (3 * 5 * (1152 + 5) + 3 * 5 * 10) + 10 * 7)


def test_flops_fall_about_tenfold_from_300_to_30_frames():
    teacher = PRESETS["hlstm-paper"]
    from vidistill.students.student import student_config

    student = student_config(teacher, k=30).model
    assert (student.frames, student.chunks, student.chunk_frames) == (30, 5, 6)  # the paper's 5 chunks of 6
    ratio = model_flops(teacher) / model_flops(student)
    assert 7 < ratio < 10  # the head runs once per video whatever k is


# ------------------------------------------------------------------------------------------- masking
@pytest.mark.parametrize(
    "config",
    [
        HLSTMConfig(num_classes=4, frames=12, chunks=3, lower_cells=6, upper_cells=5, lower_layers=2, upper_layers=2),
        HLSTMConfig(num_classes=4, frames=7, chunks=5, lower_cells=6, upper_cells=5),  # 7 frames, 5 chunks of 2
        RNNConfig(num_classes=4, frames=12, cell="lstm", cells=6, layers=2),
        RNNConfig(num_classes=4, frames=12, cell="gru", cells=6, layers=1),
        dataclasses.replace(PRESETS["netfv-small"], num_classes=4, frames=12),
        dataclasses.replace(PRESETS["dbof-small"], num_classes=4, frames=12),
        dataclasses.replace(PRESETS["netvlad-nonlocal-small"], num_classes=4, frames=12),
        dataclasses.replace(PRESETS["mixnextvlad-small"], num_classes=4, frames=12, clusters=4, hidden=16),
    ],
    ids=["hlstm", "hlstm-uneven-chunks", "lstm", "gru", "netfv", "dbof", "netvlad-nonlocal", "mixnextvlad"],
)
def test_padding_never_changes_the_output(config):
    model = build_model(config)
    frames = _videos(batch=3, frames=config.frames)
    num_frames = np.array([1, config.frames // 2, config.frames], "int32")
    noisy = frames.copy()
    for row, n in enumerate(num_frames):
        noisy[row, n:] = np.random.default_rng(row).uniform(-50, 50, noisy[row, n:].shape)
    clean_out = model({"frames": frames, "num_frames": num_frames})
    noisy_out = model({"frames": noisy, "num_frames": num_frames})
    for key in ("predictions", "representation"):
        np.testing.assert_array_equal(clean_out[key].numpy(), noisy_out[key].numpy())
    # and real frames do matter
    changed = frames.copy()
    changed[:, 0] += 1.0
    assert not np.allclose(
        model({"frames": changed, "num_frames": num_frames})["predictions"], clean_out["predictions"]
    )
    assert np.all((clean_out["predictions"].numpy() >= 0) & (clean_out["predictions"].numpy() <= 1))


# ------------------------------------------------------------------------------------------- training
def _learnable_problem(frames, n=64, seed=0):
    """Label = which of two prototypes is added to a few frames somewhere in the video."""
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((2, 1152)).astype("float32")
    x = rng.standard_normal((n, frames, 1152)).astype("float32") * 0.5
    y = np.zeros((n, 2), "float32")
    for i in range(n):
        c = i % 2
        start = rng.integers(0, frames - 2)
        x[i, start : start + 2] += protos[c]
        y[i, c] = 1
    return x, np.full(n, frames, "int32"), y


@pytest.mark.parametrize(
    "config",
    [
        HLSTMConfig(num_classes=2, frames=8, chunks=2, lower_cells=8, upper_cells=8, lower_layers=1, upper_layers=1),
        RNNConfig(num_classes=2, frames=8, cell="lstm", cells=8, layers=1, head=HeadConfig(kind="logistic")),
        RNNConfig(num_classes=2, frames=8, cell="gru", cells=8, layers=1),
        TransformerConfig(num_classes=2, frames=8, layers=2, heads=2, head_size=4, dropout=0.0),
        dataclasses.replace(PRESETS["netfv-small"], num_classes=2, frames=8),
        dataclasses.replace(PRESETS["dbof-small"], num_classes=2, frames=8),
        dataclasses.replace(PRESETS["netvlad-nonlocal-small"], num_classes=2, frames=8),
        dataclasses.replace(PRESETS["mixnextvlad-small"], num_classes=2, frames=8, clusters=4, hidden=16, dropout=0.0),
    ],
    ids=["hlstm", "lstm", "gru", "transformer", "netfv", "dbof", "netvlad-nonlocal", "mixnextvlad"],
)
def test_each_family_trains_with_falling_loss(config):
    keras.utils.set_random_seed(0)
    model = build_model(config)
    x, n, y = _learnable_problem(config.frames)
    optimizer = keras.optimizers.Adam(0.01)
    losses = []
    for _ in range(25):
        with tf.GradientTape() as tape:
            p = model({"frames": x, "num_frames": n}, training=True)["predictions"]
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(y, p))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        losses.append(float(loss))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


# ------------------------------------------------------------------------------------------- configuration
def test_config_round_trips_and_rebuilds_identically(tmp_path):
    for name in ("hlstm-small", "lstm-small", "gru-small"):
        config = PRESETS[name]
        assert config_from_dict(config_to_dict(config)) == config
        for suffix in ("yaml", "json"):
            path = str(tmp_path / f"{name}.{suffix}")
            save_config(config, path)
            assert load_config(path) == config
        assert build_model(load_config(path)).count_params() == build_model(config).count_params()


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown model family 'cnn'"):
        config_from_dict({"family": "cnn"})
    with pytest.raises(ValueError, match=r"hlstm: unknown option\(s\) \['cells'\]"):
        config_from_dict({"family": "hlstm", "cells": 3})
    with pytest.raises(ValueError, match="chunks must be in"):
        HLSTMConfig(frames=6, chunks=7)
    with pytest.raises(ValueError, match="head kind"):
        HeadConfig(kind="softmax")
    with pytest.raises(ValueError, match="neither a preset"):
        resolve("no-such-model")


def test_narrow_scales_widths():
    config = PRESETS["hlstm-small"]
    half = narrow(config, 0.5)
    assert (half.lower_cells, half.upper_cells, half.chunks, half.frames) == (64, 64, config.chunks, config.frames)
    # LSTM parameters scale about quadratically with the width (the input side does not shrink)
    ratio = build_model(half).count_params() / build_model(config).count_params()
    assert 0.2 < ratio < 0.5


# ------------------------------------------------------------------------------------------- students
def test_student_selects_k_real_frames_then_runs_its_backbone():
    from vidistill.students.student import StudentConfig, build_student, student_config

    config = student_config(TINY_HLSTM, k=4, policy="uniform")
    assert config.k == 4 and config.model.chunks == 2
    assert StudentConfig.from_dict(config.to_dict()) == config
    student = build_student(config)
    frames = _videos(batch=2, frames=40)
    num_frames = np.array([40, 8], "int32")
    out = student({"frames": frames, "num_frames": num_frames})
    assert out["predictions"].shape == (2, 5)
    # the backbone on frames 0, 10, 20, 30 (uniform k=4 of 40) and 0, 2, 4, 6 (of 8) gives the same output
    backbone = student.get_layer("student_backbone")
    picked = np.stack([frames[0, [0, 10, 20, 30]], frames[1, [0, 2, 4, 6]]])
    direct = backbone({"frames": picked, "num_frames": np.array([4, 4], "int32")})
    np.testing.assert_allclose(out["predictions"], direct["predictions"], atol=1e-6)
    with pytest.raises(ValueError, match="unknown frame-selection policy 'best'"):
        StudentConfig(TINY_HLSTM, policy="best")


# ------------------------------------------------------------------------------------------- the command
def test_models_command_prints_counts_and_the_teacher_student_table(capsys):
    from vidistill.cli import main

    assert main(["models", "--preset", "hlstm-small", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["parameters"] == build_model(PRESETS["hlstm-small"]).count_params()
    assert described["flops_per_video"] == model_flops(PRESETS["hlstm-small"])
    assert main(["models", "--teacher", "hlstm-small", "--frames", "300,30", "--json"]) == 0
    pair = json.loads(capsys.readouterr().out)
    assert pair["student"]["frames"] == 30 and pair["teacher"]["frames"] == 300
    assert pair["flops_ratio"] == pytest.approx(pair["teacher"]["flops_per_video"] / pair["student"]["flops_per_video"])
    assert pair["flops_ratio"] > 5
    assert main(["models", "--teacher", "hlstm-small", "--width", "0.5", "--frames", "300,10"]) == 0
    table = capsys.readouterr().out
    assert "teacher / student" in table and "30.0x" in table
    assert main(["models", "--teacher", "hlstm-small", "--frames", "300"]) == 2
    assert "--frames takes two integers" in capsys.readouterr().err


def test_cross_family_narrow_student_and_projection():
    from vidistill.students.student import RepresentationProjection, build_student, student_config

    teacher = build_model(PRESETS["hlstm-small"])
    config = student_config(PRESETS["netvlad-small"], k=30, width=0.5, num_classes=100)
    assert (config.model.family, config.model.clusters, config.model.hidden, config.k) == ("netvlad", 8, 128, 30)
    student = build_student(config)
    out = student({"frames": _videos(batch=2, frames=300), "num_frames": np.array([300, 45], "int32")})
    assert out["predictions"].shape == (2, 100) and out["representation"].shape == (2, 128)
    projected = RepresentationProjection(teacher.output["representation"].shape[-1])(out["representation"])
    assert projected.shape == (2, 256)  # hlstm-small: c and h of one 128-cell upper layer


def test_weight_reads_by_hand_recurrent_matrices_once_per_step():
    """Lower LSTM: W 4*8*1152, R 4*8*8 over 4 steps (12 frames / 3 chunks); upper: W 4*8*16 (c and h of the lower
    layer), R 4*8*8 over 3 steps; MoE head 16 x 4 x (2*2 + 1). Fused (ONNX Runtime): W once, R per step; Keras'
    step function reads both per step."""
    config = HLSTMConfig(
        num_classes=4, frames=12, chunks=3, lower_cells=8, upper_cells=8, lower_layers=1, upper_layers=1
    )
    head = 16 * 4 * 5
    assert model_weight_reads(config) == (36864 + 256 * 4) + (512 + 256 * 3) + head
    assert model_weight_reads(config, fused=False) == (36864 + 256) * 4 + (512 + 256) * 3 + head


def _matrix_weights(model) -> int:
    # a GRU's bias is [2, 3 * cells] (input and recurrent biases): a bias all the same
    return int(sum(np.prod(v.shape) for v in model.weights if len(v.shape) >= 2 and "bias" not in v.name))


@pytest.mark.parametrize(
    "config",
    [
        PRESETS["netvlad-small"],
        PRESETS["nextvlad-small"],
        PRESETS["netfv-small"],
        PRESETS["dbof-small"],
        PRESETS["netvlad-nonlocal-small"],
        PRESETS["mixnextvlad-small"],
        dataclasses.replace(PRESETS["lstm-small"], frames=1),  # one step: every matrix read once
        dataclasses.replace(PRESETS["gru-small"], frames=1),
    ],
    ids=["netvlad", "nextvlad", "netfv", "dbof", "netvlad-nonlocal", "mixnextvlad", "lstm", "gru"],
)
def test_weight_reads_without_recurrence_are_the_models_matrices(config):
    """A VLAD model (or an RNN over one frame) reads each weight matrix exactly once per video: the count is the
    built model's matrices (biases and normalization vectors are not counted)."""
    assert model_weight_reads(config) == _matrix_weights(build_model(config))
