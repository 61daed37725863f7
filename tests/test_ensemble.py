"""Ensembles (distill/ensemble.py): weighted predictions exactly, representation targets, fitted weights, eval /
predict / teacher-outputs of an ensemble directory, serial students of many teachers (`--teacher-run A,B`), and
the ensemble exported as one ONNX graph with parity."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import onnx
import pytest
import yaml

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from vidistill.cli import main
from vidistill.distill.ensemble import EnsembleConfig, ensemble_config, fit_weights
from vidistill.teachers.config import HLSTMConfig, RNNConfig, save_config
from vidistill.yt8m.errors import ConfigError
from vidistill.yt8m.readers import read_frame_dataset

CLASSES = 4
FRAMES = 30
HLSTM = HLSTMConfig(
    num_classes=CLASSES, frames=FRAMES, chunks=3, lower_cells=8, upper_cells=8, lower_layers=1, upper_layers=1
)
GRU = RNNConfig(num_classes=CLASSES, frames=20, cell="gru", cells=6, layers=1)  # reads only the first 20 frames


def _main(*argv) -> str:
    assert main([str(a) for a in argv]) == 0, argv


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synth_data):
    """Two tiny teachers of different families and input lengths, trained a few steps."""
    root = tmp_path_factory.mktemp("ensemble")
    data = synth_data(videos=32, heldout=16, classes=CLASSES)
    made = {"root": root, "data": data}
    for name, config in (("hlstm", HLSTM), ("gru", GRU)):
        path = root / f"{name}.yaml"
        save_config(config, str(path))
        made[name] = root / name
        _main(
            "train", "--mode", "teacher", "--teacher", path, "--data", data.train, "--out", made[name],
            "--steps", 6, "--batch-size", 8, "--checkpoint-every", 6,
        )  # fmt: skip
    return made


def _batch(pattern: str):
    return next(iter(read_frame_dataset(pattern, num_classes=CLASSES, max_frames=FRAMES, batch_size=16)))


def _outputs(path: str, batch, which="auto"):
    from vidistill.distill.runs import load_model
    from vidistill.teachers.inference import outputs_of

    loaded = load_model(str(path), which)
    frames = loaded.model.input["frames"].shape[1]
    n = np.minimum(batch["num_frames"].numpy(), frames)
    return {k: v.numpy() for k, v in outputs_of(loaded.model, batch["frames"][:, :frames], n).items()}


def test_predictions_are_the_members_weighted_average(runs):
    out = runs["root"] / "weighted"
    _main("ensemble", runs["hlstm"], runs["gru"], "--out", out, "--weights", "3,1")
    config = ensemble_config(str(out))
    assert config.members == [str(runs["hlstm"]), str(runs["gru"])] and config.normalized_weights == [0.75, 0.25]
    saved = yaml.safe_load((out / "ensemble.yaml").read_text())["ensemble"]
    assert saved["members"] == ["../hlstm", "../gru"]  # relative: the folder moves with its runs
    batch = _batch(runs["data"].heldout)
    a, b, ensemble = _outputs(runs["hlstm"], batch), _outputs(runs["gru"], batch), _outputs(out, batch)
    np.testing.assert_allclose(ensemble["predictions"], 0.75 * a["predictions"] + 0.25 * b["predictions"], atol=1e-7)
    np.testing.assert_array_equal(ensemble["representation"], a["representation"])  # member 0's (default)


def test_every_representation_concatenated_and_scaled(runs):
    out = runs["root"] / "all"
    _main(
        "ensemble", runs["hlstm"], runs["gru"], "--out", out, "--representation", "all", "--rep-weights", "1,3"
    )  # fmt: skip
    batch = _batch(runs["data"].heldout)
    a, b, ensemble = _outputs(runs["hlstm"], batch), _outputs(runs["gru"], batch), _outputs(out, batch)
    expected = np.concatenate([math.sqrt(0.25) * a["representation"], math.sqrt(0.75) * b["representation"]], -1)
    np.testing.assert_allclose(ensemble["representation"], expected, atol=1e-7)
    np.testing.assert_allclose(ensemble["predictions"], (a["predictions"] + b["predictions"]) / 2, atol=1e-7)


def test_fit_weights_finds_the_best_gap_on_the_grid():
    labels = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]
    right = labels * 0.9 + 0.05
    wrong = np.roll(right, 1, axis=1)
    weights, score = fit_weights([wrong, right], labels)
    # GAP ranks: from 0.4 / 0.6 on, the right member's scores lead (0.59 to 0.41) and GAP is perfect; of those
    # points, the one nearest equal weights is kept (at 0.5 / 0.5 the two classes tie)
    assert weights == pytest.approx([0.4, 0.6]) and score == pytest.approx(1.0)
    weights, score = fit_weights([right, right, right], labels)
    assert weights == pytest.approx([0.4, 0.3, 0.3]) and score == pytest.approx(1.0)  # ties: nearest equal
    with pytest.raises(ConfigError, match="weight combinations for 9 members"):
        fit_weights([right] * 9, labels)


def test_fitted_weights_beat_each_member_and_equal_weights(runs, capsys):
    out = runs["root"] / "fitted"
    _main("ensemble", runs["hlstm"], runs["gru"], "--out", out, "--fit-weights", runs["data"].heldout)
    printed = capsys.readouterr().out
    fitted = ensemble_config(str(out)).fitted
    assert fitted["gap"] >= max(fitted["member_gaps"]) and fitted["gap"] >= fitted["equal_gap"]
    assert fitted["videos"] == 16 and "GAP alone" in printed and f"fitted {fitted['gap']:.4f}" in printed
    # the saved GAP is the ensemble's own on that data
    code = main(["eval", str(out), "--data", runs["data"].heldout, "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["gap"] == pytest.approx(fitted["gap"], abs=1e-6)


def test_config_errors_name_the_problem(runs, tmp_path, capsys):
    with pytest.raises(ConfigError, match="2 values for 1 members"):
        EnsembleConfig(members=["a"], weights=[1, 2])
    with pytest.raises(ConfigError, match="member's index"):
        EnsembleConfig(members=["a", "b"], representation=2)
    other = tmp_path / "other.yaml"
    save_config(RNNConfig(num_classes=5, frames=20, cell="gru", cells=4, layers=1), str(other))
    _main(
        "train", "--mode", "teacher", "--teacher", other, "--data", runs["data"].train, "--out", tmp_path / "r5",
        "--steps", 1, "--num-classes", 5, "--checkpoint-every", 1,
    )  # fmt: skip
    capsys.readouterr()
    code = main(["ensemble", str(runs["hlstm"]), str(tmp_path / "r5"), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "e").exists() and "Traceback" not in err
    assert f"ensemble members disagree on the classes: {runs['hlstm']} has 4, {tmp_path / 'r5'} has 5" in err, err


@pytest.mark.slow
def test_a_student_of_two_teachers_and_of_their_stored_outputs(runs, tmp_path):
    """Serial training against `--teacher-run A,B` (the teachers frozen, L_REP to the first), and against an
    ensemble's stored outputs with every representation as L_REP's target (the projection to both widths)."""
    import tensorflow as tf

    from vidistill.distill.config import load_train_config
    from vidistill.distill.runs import load_model

    common = ("--data", runs["data"].train, "--batch-size", 8, "--checkpoint-every", 4, "--steps", 4)
    student = tmp_path / "student.yaml"
    save_config(HLSTM, str(student))
    pair = f"{runs['hlstm']},{runs['gru']}"
    _main("train", "--teacher-run", pair, "--student", student, "--frames", 6, "--out", tmp_path / "two", *common)
    config = load_train_config(str(tmp_path / "two"))
    assert config.mode == "serial" and config.teacher is None and config.teacher_run == pair
    batch = _batch(runs["data"].heldout)
    # the teachers in the run's checkpoint are the trained ones, unchanged
    ensemble = load_model(str(tmp_path / "two"), "teacher").model
    live = _outputs(pair, batch)
    frames, n = batch["frames"], batch["num_frames"]
    np.testing.assert_allclose(
        ensemble({"frames": frames, "num_frames": n})["predictions"], live["predictions"], atol=1e-6
    )

    both = runs["root"] / "both"
    _main("ensemble", runs["hlstm"], runs["gru"], "--out", both, "--representation", "all")
    outputs = tmp_path / "outputs"
    _main("teacher-outputs", both, "--data", runs["data"].train, "--out", outputs)
    manifest = json.loads((outputs / "teacher_outputs.json").read_text())
    assert manifest["representation_width"] == 16 + 6  # H-LSTM c and h (2 x 8) + GRU h (6)
    _main(
        "train",
        "--teacher-outputs",
        outputs,
        "--student",
        student,
        "--frames",
        6,
        "--out",
        tmp_path / "stored",
        *common,
    )
    reader = tf.train.load_checkpoint(str(tmp_path / "stored" / "checkpoints" / "ckpt-4"))
    shapes = reader.get_variable_to_shape_map()
    kernel = [k for k in shapes if k.startswith("projection/") and "kernel" in k and "OPTIMIZER" not in k]
    assert len(kernel) == 1 and shapes[kernel[0]] == [16, 22]  # the student's 16 to both teachers' 22
    assert not [k for k in shapes if k.startswith("teacher/")]  # no teacher ran, none was built


def test_many_teachers_refuse_the_teacher_head(runs):
    from vidistill.distill.config import TrainConfig
    from vidistill.students.student import student_config

    config = TrainConfig(
        mode="serial", student=student_config(HLSTM, k=6), teacher_run=f"{runs['hlstm']},{runs['gru']}"
    )
    config.data.train = runs["data"].train
    config.loss.ce = config.loss.pred = 0.0
    with pytest.raises(ConfigError, match="an ensemble has several"):
        config.validate()


@pytest.mark.slow
def test_the_ensemble_exports_as_one_onnx_graph_with_parity(runs, tmp_path):
    out = runs["root"] / "export-me"
    _main("ensemble", runs["hlstm"], runs["gru"], "--out", out, "--weights", "2,1")
    exported = tmp_path / "onnx"
    _main(
        "export", out, "--out", exported, "--precision", "fp32,int8-dynamic", "--eval-data", runs["data"].heldout
    )  # fmt: skip
    model = onnx.load(str(exported / "fp32.onnx"))
    assert [i.name for i in model.graph.input] == ["frames", "num_frames"]
    assert [o.name for o in model.graph.output] == ["predictions", "representation"]
    ops = [n.op_type for n in model.graph.node]
    assert "Sum" in ops and "Slice" in ops  # the GRU member sees the first 20 frames
    assert {n.name.split("/")[0] for n in model.graph.node if n.op_type in ("LSTM", "GRU")} == {
        "member_0",
        "member_1",
    }
    for precision in ("fp32", "int8-dynamic"):
        card = json.loads((exported / f"{precision}.json").read_text())
        assert card["family"] == "ensemble" and card["role"] == "ensemble", card
        assert card["parity"]["passed"], card["parity"]
        assert [m["family"] for m in card["model_config"]["members"]] == ["hlstm", "rnn"]
    assert os.path.exists(exported / "fp32.onnx")


def _member_names(ensemble) -> list[str]:
    import tf_keras as keras

    return [layer.name for layer in ensemble.layers if isinstance(layer, keras.Model)]


def test_a_member_of_weight_zero_is_not_built_unless_l_rep_reads_it(runs):
    from vidistill.distill.runs import load_model

    out = runs["root"] / "zero"
    _main("ensemble", runs["hlstm"], runs["gru"], "--out", out, "--weights", "0,1")
    loaded = load_model(str(out))
    assert _member_names(loaded.model) == ["member_0", "member_1"]
    assert ensemble_config(str(out)).pruned().members == [str(runs["hlstm"]), str(runs["gru"])]  # L_REP: member 0
    config = EnsembleConfig(members=["a", "b", "c"], weights=[0, 1, 1], representation=2)
    pruned = config.pruned()
    assert pruned.members == ["b", "c"] and pruned.weights == [0.5, 0.5] and pruned.representation == 1
    every = EnsembleConfig(members=["a", "b"], weights=[0, 1], representation="all", rep_weights=[0, 1]).pruned()
    assert every.members == ["b"] and every.rep_weights == [1.0]
    out = runs["root"] / "zero-rep"
    _main("ensemble", runs["hlstm"], runs["gru"], "--out", out, "--weights", "0,1", "--representation", "1")
    loaded = load_model(str(out))
    assert _member_names(loaded.model) == ["member_0"]
    assert "1 of weight 0 left out" in loaded.description
    batch = _batch(runs["data"].heldout)
    np.testing.assert_allclose(
        _outputs(out, batch)["predictions"], _outputs(runs["gru"], batch)["predictions"], atol=1e-7
    )
