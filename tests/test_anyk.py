"""Any-k students: one student trained at a set of k's, chosen at request time.

At each k its network is the network a student of that k alone would be (the same weights give the same outputs, the
H-LSTM chunked by the same rule); it trains on the mean of its terms over the k's (and optionally distils its
largest k into the smaller ones); the ONNX file takes [batch, k, 1152] with k dynamic, checked at every k; the
Predictor, eval, predict and bench take a k; a k it was not trained at, a duplicate or a zero is a clear error.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from vidistill.cli import main
from vidistill.distill.config import DataConfig, TrainConfig, load_train_config, save_train_config
from vidistill.distill.distiller import Distiller
from vidistill.distill.losses import LossWeights
from vidistill.distill.terms import LossInputs, Prediction
from vidistill.export.card import AtK, ModelCard, Parity, read_card
from vidistill.students.student import (
    StudentConfig,
    build_student,
    parse_frame_counts,
    student_at,
    student_config,
    student_views,
)
from vidistill.teachers.config import HLSTMConfig, TransformerConfig, default_chunks
from vidistill.teachers.presets import PRESETS
from vidistill.teachers.recurrent import sqrt_chunking
from vidistill.yt8m.errors import ConfigError

KS = (3, 5, 8)
HLSTM = HLSTMConfig(num_classes=4, frames=20, chunks=4, lower_cells=6, upper_cells=5, lower_layers=1, upper_layers=1)
FAMILIES = {
    "hlstm": HLSTM,
    "netvlad": dataclasses.replace(PRESETS["netvlad-nonlocal-small"], num_classes=4, frames=20),
    "transformer": TransformerConfig(num_classes=4, frames=20, layers=1, heads=2, head_size=4, dropout=0.0),
    "dbof": dataclasses.replace(PRESETS["dbof-small"], num_classes=4, frames=20),
}


def _videos(seed: int = 0, lengths=(20, 9, 4, 1)):
    rng = np.random.default_rng(seed)
    frames = rng.uniform(-2, 2, (len(lengths), max(lengths), 1152)).astype(np.float32)
    n = np.array(lengths, np.int32)
    frames[np.arange(frames.shape[1])[None, :] >= n[:, None]] = 0
    return frames, n


# ------------------------------------------------------------------------------------------------ the networks
def test_the_sqrt_rule_at_run_time_is_default_chunks_at_every_length():
    lengths = tf.range(1, 301)
    chunks, sizes = tf.map_fn(lambda t: tf.stack(sqrt_chunking(t)), lengths, fn_output_signature=tf.int32).numpy().T
    for t, c, size in zip(range(1, 301), chunks, sizes):
        assert (c, size) == (default_chunks(t), -(-t // default_chunks(t))), t


@pytest.mark.parametrize("family", list(FAMILIES))
def test_at_each_k_the_any_k_student_is_the_dedicated_student_with_its_weights(family):
    """Same weights, same outputs: bit for bit the network a student of that k alone would be (the H-LSTM chunked as
    a k-student is), on full, short and one-frame videos."""
    config = student_config(FAMILIES[family], k=KS)
    assert config.ks == KS and config.k == 8 and config.any_k
    any_k = build_student(config)
    views = student_views(any_k, config)
    assert list(views) == list(KS) and views[8] is any_k
    frames, n = _videos()
    for k in KS:
        dedicated_config = student_config(FAMILIES[family], k=k)
        dedicated = build_student(dedicated_config)
        assert dedicated.count_params() == any_k.count_params()
        dedicated.set_weights(any_k.get_weights())
        want = dedicated({"frames": frames, "num_frames": n})
        got = views[k]({"frames": frames, "num_frames": n})
        for key in ("predictions", "representation"):
            np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(), err_msg=f"{family} k={k} {key}")


def test_views_share_the_weights_and_the_config_round_trips(tmp_path):
    config = student_config(HLSTM, k=[8, 3, 5], policy="random", seed=4)
    assert config.model.chunk_rule == "sqrt" and config.model.chunks == default_chunks(8) and config.ks == KS
    student = build_student(config)
    views = student_views(student, config)
    assert all(
        {id(v) for v in view.trainable_variables} == {id(v) for v in student.trainable_variables}
        for view in views.values()
    )
    assert StudentConfig.from_dict(config.to_dict()) == config
    train = TrainConfig(mode="student", student=config, data=DataConfig(train="x", max_frames=20))
    save_train_config(train, str(tmp_path))
    assert load_train_config(str(tmp_path)).student == config
    single = student_config(HLSTM, k=5)
    assert single.frame_counts == [] and "frame_counts" not in single.to_dict() and single.ks == (5,)
    assert single.model.chunk_rule == "fixed"


def test_bad_sets_of_k_are_clear_errors():
    with pytest.raises(ConfigError, match=r"repeat 5: give each k once"):
        student_config(HLSTM, k=[3, 5, 5])
    with pytest.raises(ConfigError, match=r"k >= 1 frames, got 0"):
        student_config(HLSTM, k=[0, 5])
    with pytest.raises(ConfigError, match=r"--frames: expected a whole number .* got '6,ten'"):
        parse_frame_counts("6,ten")
    with pytest.raises(ConfigError, match=r"--frames: frame counts \[6, 10, 6\] repeat 6"):
        parse_frame_counts("6,10,6")
    assert parse_frame_counts(" 30, 6,10") == (6, 10, 30)
    with pytest.raises(ConfigError, match=r"holds one k \(5\): an any-k student needs two or more"):
        StudentConfig(dataclasses.replace(HLSTM, frames=5, chunks=2), frame_counts=[5])
    with pytest.raises(ConfigError, match=r"largest k \(8\), but its model.frames is 20"):
        StudentConfig(dataclasses.replace(FAMILIES["dbof"]), frame_counts=[3, 8])
    with pytest.raises(ConfigError, match=r"set its model's chunk_rule to 'sqrt'"):
        StudentConfig(dataclasses.replace(HLSTM, frames=8, chunks=3), frame_counts=[3, 8])
    with pytest.raises(ConfigError, match=r"cuts 8 frames into default_chunks\(8\) = 3 chunks, but chunks is 4"):
        HLSTMConfig(frames=8, chunks=4, chunk_rule="sqrt")
    config = student_config(HLSTM, k=KS)
    with pytest.raises(ConfigError, match=r"trained at k = 3, 5, 8; k=4 is not one of them"):
        student_at(build_student(config), config, 4)
    segments = TrainConfig(mode="student", student=config, data=DataConfig(train="x", segments=True))
    with pytest.raises(ConfigError, match=r"an any-k student is for whole videos"):
        segments.validate()


# ------------------------------------------------------------------------------------------------ the loss
def test_the_loss_is_the_mean_over_k_and_self_distillation_reads_the_largest_k():
    """Each k's L_CE, their mean, and loss.self_pred: W adding exactly W x the mean over the smaller k's of L_PRED
    from the largest k's pass, that pass held constant (the term's gradient is the one with the largest k's output
    a constant, and it would differ were the largest k's output live)."""
    from vidistill.distill.losses import prediction_kl

    tf.random.set_seed(0)
    config = student_config(HLSTM, k=KS)
    student = build_student(config)
    for variable in student.trainable_variables:  # untrained, its k's agree (self_pred ~ 1e-6): spread them
        variable.assign(variable * 5)
    views = student_views(student, config)
    weights = LossWeights(ce=1.0, rep=0.0, pred=0.0, self_pred=0.5)
    distiller = Distiller("student", None, student, weights, student_views=views)
    frames, n = _videos(1)
    labels = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]
    batch = {"frames": frames, "num_frames": n, "labels": labels}
    variables = student.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        logs = distiller.compute_losses(batch, training=False)
        outputs = {k: views[k]({"frames": frames, "num_frames": n}) for k in KS}
        largest = outputs[8]["predictions"]
        held = tf.add_n([prediction_kl(tf.stop_gradient(largest), outputs[k]["predictions"]) for k in (3, 5)]) / 2
        live = tf.add_n([prediction_kl(largest, outputs[k]["predictions"]) for k in (3, 5)]) / 2
    for k in KS:  # the official loss: summed over the classes, eps 1e-5 inside the logs, batch mean
        p = outputs[k]["predictions"].numpy().astype(np.float64)
        ce = -(labels * np.log(p + 1e-5) + (1 - labels) * np.log(1 - p + 1e-5)).sum(-1).mean()
        np.testing.assert_allclose(logs[f"ce_k{k}"], ce, rtol=1e-5)
    np.testing.assert_allclose(logs["ce"], np.mean([logs[f"ce_k{k}"] for k in KS]), rtol=1e-6)
    kl = Prediction(1.0, "kl")
    self_pred = np.mean([kl.compute(LossInputs(labels, outputs[8], outputs[k])) for k in (3, 5)])
    np.testing.assert_allclose(logs["self_pred"], self_pred, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], logs["ce"] + 0.5 * self_pred + sum(student.losses), rtol=1e-5)
    off = Distiller("student", None, student, dataclasses.replace(weights, self_pred=0.0), student_views=views)
    logs_off = off.compute_losses(batch, training=False)
    assert "self_pred" not in logs_off
    np.testing.assert_allclose(logs_off["ce"], logs["ce"], rtol=1e-6)
    np.testing.assert_allclose(logs["loss"], logs_off["loss"] + 0.5 * logs["self_pred"], rtol=1e-6)
    # the stop-gradient: the term's gradient is the one with the largest k's output held constant
    got, want, through = (tape.gradient(value, variables) for value in (logs["self_pred"], held, live))
    scale = max(float(np.abs(g).max()) for g in want)
    for variable, g, w in zip(variables, got, want):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4 * scale, err_msg=variable.name)
    # and the check has teeth: through the largest k's pass the gradient is another one
    assert max(float(np.abs(t - w).max()) for t, w in zip(through, want)) > 0.1 * scale


def _official_ce(labels, predictions):
    """L_CE restated: -(y log(p + 1e-5) + (1 - y) log(1 - p + 1e-5)) summed over the classes, batch mean."""
    per_class = labels * tf.math.log(predictions + 1e-5) + (1 - labels) * tf.math.log(1 - predictions + 1e-5)
    return -tf.reduce_mean(tf.reduce_sum(per_class, axis=-1))


def _kl(teacher, student, eps=1e-8):
    """The paper's L_PRED restated: KL between the prediction vectors renormalized to sum 1, batch mean."""
    q_t = teacher / tf.reduce_sum(teacher, axis=-1, keepdims=True)
    q_s = student / tf.reduce_sum(student, axis=-1, keepdims=True)
    return tf.reduce_mean(tf.reduce_sum(q_t * (tf.math.log(q_t + eps) - tf.math.log(q_s + eps)), axis=-1))


def _counting_calls(model, monkeypatch) -> tf.Variable:
    """A counter of `model`'s executed calls (a variable: a traced step counts each time it runs, not when traced)."""
    count = tf.Variable(0, trainable=False)
    call = model.call

    def counted(*args, **kwargs):
        count.assign_add(1)
        return call(*args, **kwargs)

    monkeypatch.setattr(model, "call", counted)
    return count


@pytest.mark.slow
@pytest.mark.parametrize("family", ["netvlad", "transformer"])  # the H-LSTM trains end to end below
def test_the_vlad_and_transformer_families_train_at_every_k_in_one_step(family, monkeypatch):
    """One fit step of an any-k student distilled in parallel with a teacher of its family: the teacher runs once
    and the student's backbone once per k; each k's terms are logged as computed here on the batch; and the update
    (plain SGD) is -lr times the gradient of teacher_ce + the mean over k of (L_CE + 0.01 L_REP + L_PRED) +
    self_pred, the teacher's outputs and the largest k's held constant in the student's terms: every k trains the
    shared weights and the teacher learns from its own L_CE alone."""
    import tf_keras as keras

    from vidistill.students.student import backbone_of
    from vidistill.teachers.registry import build_model

    keras.utils.set_random_seed(0)
    teacher = build_model(FAMILIES[family], name="teacher")
    config = student_config(FAMILIES[family], k=KS)
    student = build_student(config)
    views = student_views(student, config)
    distiller = Distiller("parallel", teacher, student, LossWeights(self_pred=1.0), student_views=views)
    learning_rate = 0.5
    distiller.compile(optimizer=keras.optimizers.SGD(learning_rate))
    frames, n = _videos(4)
    labels = np.eye(4, dtype=np.float32)
    x = {"frames": frames, "num_frames": n}
    variables = teacher.trainable_variables + student.trainable_variables
    with tf.GradientTape() as tape:
        t = teacher(x, training=True)
        s = {k: views[k](x, training=True) for k in KS}
        held_t = {key: tf.stop_gradient(t[key]) for key in ("predictions", "representation")}
        want = {"teacher_ce": _official_ce(labels, t["predictions"])}
        for k in KS:
            want[f"ce_k{k}"] = _official_ce(labels, s[k]["predictions"])
            diff = held_t["representation"] - s[k]["representation"]
            want[f"rep_k{k}"] = tf.reduce_mean(tf.reduce_sum(diff * diff, axis=-1))
            want[f"pred_k{k}"] = _kl(held_t["predictions"], s[k]["predictions"])
        largest = tf.stop_gradient(s[8]["predictions"])
        want["self_pred"] = (_kl(largest, s[3]["predictions"]) + _kl(largest, s[5]["predictions"])) / 2
        per_k = [want[f"ce_k{k}"] + 0.01 * want[f"rep_k{k}"] + want[f"pred_k{k}"] for k in KS]
        want["loss"] = want["teacher_ce"] + tf.add_n(per_k) / 3 + want["self_pred"]
        want["loss"] += tf.add_n(teacher.losses + student.losses) if teacher.losses + student.losses else 0.0
    gradients = tape.gradient(want["loss"], variables)
    before = [v.numpy() for v in variables]
    teacher_calls = _counting_calls(teacher, monkeypatch)
    backbone_calls = _counting_calls(backbone_of(student), monkeypatch)

    history = distiller.fit(tf.data.Dataset.from_tensors({**x, "labels": labels}), epochs=1, verbose=0)
    logs = {name: values[-1] for name, values in history.history.items()}
    assert (int(teacher_calls.numpy()), int(backbone_calls.numpy())) == (1, len(KS))
    for name, value in want.items():
        np.testing.assert_allclose(logs[name], value.numpy(), rtol=1e-4, err_msg=name)
    for name in ("ce", "rep", "pred"):
        np.testing.assert_allclose(logs[name], np.mean([logs[f"{name}_k{k}"] for k in KS]), rtol=1e-5)
    for variable, old, gradient in zip(variables, before, gradients):
        step = (old - variable.numpy()) / learning_rate
        atol = 1e-6 + 1e-3 * float(np.abs(gradient).max())
        np.testing.assert_allclose(step, gradient, rtol=1e-3, atol=atol, err_msg=variable.name)
    teachers = len(teacher.trainable_variables)  # both models moved: their gradients are not 0
    assert min(max(float(np.abs(g).max()) for g in part) for part in (gradients[:teachers], gradients[teachers:])) > 0


def test_the_mean_gap_over_k_picks_the_best_checkpoint(tmp_path, monkeypatch):
    """Held-out metrics are logged per k (gap_k3, gap_k6) and their mean picks checkpoints/best: the evaluations'
    GAPs are made up so that k=3 alone would keep step 2, k=6 (the default k) alone step 4, and their mean step 6."""
    from vidistill.distill import evaluate
    from vidistill.distill.trainer import BEST, Run

    records = tmp_path / "records.tfrecord"
    records.write_bytes(b"x")  # nothing reads them: the run only checks that its patterns name files
    config = TrainConfig(
        mode="student",
        student=student_config(dataclasses.replace(FAMILIES["dbof"], clusters=16, hidden=16), k=[3, 6]),
        data=DataConfig(train=str(records), eval=str(records), max_frames=20),
    )
    run = Run(config, str(tmp_path / "run"))
    gaps = {2: {3: 0.9, 6: 0.0}, 4: {3: 0.0, 6: 0.9}, 6: {3: 0.6, 6: 0.6}}
    evaluated = []

    def made_up(model, pattern, *, select, **_):
        k = model.get_layer("select").k  # the student at k (its selector's k)
        evaluated.append((step, k, select is not None))
        return {"gap": gaps[step][k]}

    monkeypatch.setattr(evaluate, "evaluate_model", made_up)
    for step in gaps:
        run.evaluate_and_keep_best(step)
    assert evaluated == [(step, k, True) for step in gaps for k in (3, 6)]
    metrics = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [(m["step"], m["gap_k3"], m["gap_k6"]) for m in metrics] == [(s, g[3], g[6]) for s, g in gaps.items()]
    np.testing.assert_allclose([m["gap"] for m in metrics], [0.45, 0.45, 0.6])
    assert os.path.basename(tf.train.latest_checkpoint(str(tmp_path / "run" / BEST))) == "ckpt-6"


# ------------------------------------------------------------------------------------------------ the card
def test_a_card_at_k_describes_the_file_there_and_refuses_other_ks(tmp_path):
    parity = Parity(videos=4, max_abs=1e-6, max_rel=1e-5, mean_abs=1e-7, passed=True)
    card = ModelCard(
        precision="fp32",
        file="fp32.onnx",
        role="student",
        family="hlstm",
        frames=8,
        selection={"k": 8, "policy": "uniform", "seed": 0},
        classes=4,
        feature_sizes={"rgb": 1024, "audio": 128},
        inputs=[],
        outputs=[],
        parameters=10,
        flops_per_video=800,
        file_bytes=1,
        opset=17,
        tolerance=read_tolerance(),
        frame_counts=[3, 8],
        at_k={"3": AtK(300, 30, parity), "8": AtK(800, 80, parity)},
    )
    path = tmp_path / "fp32.json"
    path.write_text(json.dumps(card.to_dict()))
    loaded = read_card(str(path))
    assert loaded == card and loaded.ks == (3, 8)
    at3 = loaded.for_k(3)
    assert (at3.frames, at3.selection["k"], at3.flops_per_video, at3.weight_reads_per_video) == (3, 3, 300, 30)
    assert at3.frame_counts == [] and loaded.for_k(None) is loaded
    with pytest.raises(ConfigError, match=r"fp32.onnx is an any-k student trained at k = 3, 8; k=5 is not one"):
        loaded.for_k(5)
    with pytest.raises(ConfigError, match=r"a student of k = 3; k=8 is not one of them.*--frames K1,K2"):
        at3.for_k(8)


def read_tolerance():
    from vidistill.export.config import TOLERANCES

    return TOLERANCES["fp32"]


# ------------------------------------------------------------------------------------------------ export
@pytest.mark.slow
@pytest.mark.parametrize("family", ["hlstm", "transformer", "netvlad"])
def test_the_onnx_file_takes_any_k_and_matches_keras_at_each(family):
    """One conversion, k dynamic: at the trained k's and at others (the file computes any k; only the Predictor
    holds to the trained ones), fp32 and int8-dynamic within their tolerances of the Keras network at that k, each
    under half what a file that ignores its input would miss by (an untrained student's probabilities barely
    depend on its input: int8's bound is a quarter of their spread)."""
    import onnxruntime as ort

    from vidistill.export import onnx_export, quantize
    from vidistill.export.source import student_source
    from vidistill.students.selection_numpy import select_frames

    config = student_config(FAMILIES[family], k=KS)
    student = build_student(config)
    source = student_source(student, config, "test")
    assert source.input_frames is None and source.inputs()[0].shape == ["batch", "k", 1152]
    proto = onnx_export.convert_source(source)
    assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param  # a named, dynamic axis
    files = {"fp32": proto, "int8-dynamic": quantize.quantize_dynamic(proto)}
    sessions = {
        name: ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
        for name, p in files.items()
    }
    frames, n = _videos(2)
    for k in (*KS, 6, 1):
        selected, counts = select_frames(frames, n, k, "uniform", seed=0)
        want = source.network({"frames": selected, "num_frames": counts})["predictions"].numpy()
        ignoring = float((want.max(axis=0) - want.min(axis=0)).max()) / 2  # the least miss of a constant output
        tolerances = {"fp32": 1e-5, "int8-dynamic": min(0.05, ignoring / 4)}
        for name, session in sessions.items():
            assert tolerances[name] < ignoring / 2, (family, name, k, ignoring)
            got = session.run(["predictions"], {"frames": selected, "num_frames": counts})[0]
            np.testing.assert_allclose(got, want, atol=tolerances[name], err_msg=f"{family} {name} k={k}")
        if k in KS:
            full = student_at(student, config, k)({"frames": frames, "num_frames": n})["predictions"].numpy()
            np.testing.assert_allclose(want, full, atol=1e-6)


def _main(*argv) -> None:
    assert main([str(a) for a in argv]) == 0, argv


@pytest.mark.slow
def test_train_convert_export_predict_and_bench_at_run_time_k(tmp_path, synth_data, tiny_teacher, capsys):
    """The CLI end to end: a parallel any-k run at {3, 6}, eval at each k, convert (one SavedModel signature per k),
    export checked per k (int8-qat refused), the Predictor and bench choosing k, predict --frames 3 writing the
    student's k=3 probabilities and refusing k=4."""
    from vidistill.export.predictor import Predictor
    from vidistill.teachers.config import save_config

    data = synth_data()
    teacher = tmp_path / "teacher.yaml"
    save_config(tiny_teacher, str(teacher))
    run = tmp_path / "run"
    common = ("--data", data.train, "--eval-data", data.heldout, "--batch-size", 8, "--checkpoint-every", 4)
    _main("train", "--mode", "parallel", "--teacher", teacher, "--frames", "6,3", "--steps", 4, "--out", run, *common)
    out = capsys.readouterr().out
    assert "(means over k)" in out and "k=3: GAP" in out and "k=6: GAP" in out
    metrics = [json.loads(line) for line in open(run / "metrics.jsonl")]
    last = metrics[-1]
    assert {"gap_k3", "gap_k6", "map_k3"} <= set(last)
    np.testing.assert_allclose(last["gap"], (last["gap_k3"] + last["gap_k6"]) / 2)
    assert load_train_config(str(run)).student.ks == (3, 6)

    serial = tmp_path / "serial"  # a serial any-k student against the run's teacher, frozen
    _main("train", "--teacher-run", run, "--frames", "3,6", "--steps", 2, "--out", serial, *common)
    assert {"gap_k3", "gap_k6"} <= set(json.loads(open(serial / "metrics.jsonl").readlines()[-1]))
    capsys.readouterr()

    _main("eval", run, "--data", data.heldout, "--frames", "3,6", "--json")
    by_k = json.loads(capsys.readouterr().out)
    assert set(by_k) == {"k=3", "k=6"}
    for k in (3, 6):
        assert by_k[f"k={k}"]["gap"] == pytest.approx(last[f"gap_k{k}"], abs=1e-6)
    assert main(["eval", str(run), "--data", data.heldout, "--frames", "4"]) == 2
    assert "trained at k = 3, 6; k=4 is not one of them" in capsys.readouterr().err
    assert main(["eval", str(run), "--which", "teacher", "--data", data.heldout, "--frames", "3"]) == 2
    assert "is not a student" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_code:  # argparse's own error exit
        main(["eval", str(run), "--data", data.heldout, "--frames", "3,3"])
    assert exit_code.value.code == 2 and "repeat 3: give each k once" in capsys.readouterr().err

    student = tmp_path / "student"
    _main("convert", run, "--out", student)
    served = tf.saved_model.load(str(student / "saved_model"))
    assert set(served.signatures) == {"serving_default", "k3", "k6"}

    export = tmp_path / "export"
    _main("export", student, "--out", export, "--precision", "fp32,int8-dynamic", "--eval-data", data.heldout)
    capsys.readouterr()
    card = read_card(str(export / "int8-dynamic.onnx"))
    assert card.frame_counts == [3, 6] and card.inputs[0].shape == ["batch", "k", 1152] and card.frames == 6
    assert all(card.at_k[str(k)].parity.passed for k in (3, 6)) and card.parity.passed
    assert card.at_k["3"].flops_per_video < card.at_k["6"].flops_per_video == card.flops_per_video
    for k in (3, 6):
        gap = card.at_k[str(k)].accuracy.gap
        assert abs(gap - last[f"gap_k{k}"]) < 0.02, (k, gap)

    frames, n = _videos(3, lengths=(30, 12, 2))
    from vidistill.students.convert import load_student, load_student_config

    keras_student = load_student(str(student))
    config = load_student_config(str(student))
    for k in (3, 6):
        predictor = Predictor(str(export / "fp32.onnx"), k=k)
        assert predictor.card.frames == k
        want = student_at(keras_student, config, k)({"frames": frames, "num_frames": n})["predictions"].numpy()
        np.testing.assert_allclose(predictor.predict(frames, n)["predictions"], want, atol=1e-5)
    default = Predictor(str(export / "fp32.onnx")).predict(frames, n)["predictions"]
    np.testing.assert_allclose(default, Predictor(str(export / "fp32.onnx"), k=6).predict(frames, n)["predictions"])
    with pytest.raises(ConfigError, match=r"trained at k = 3, 6; k=4 is not one of them"):
        Predictor(str(export / "fp32.onnx"), k=4)

    qat = tmp_path / "qat"  # int8-qat fine-tunes at one k: refused in one line, nothing written for it
    argv = ["export", student, "--out", qat, "--precision", "int8-qat", "--calibration-data", data.train]
    assert main([str(a) for a in [*argv, "--eval-data", data.heldout]]) == 2
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vidistill export:")]
    assert said == [
        "vidistill export: error: int8-qat fine-tunes at one k, and this any-k student runs at several: export it "
        "as int8-dynamic or int8-static (checked at each of its k's)"
    ]
    assert sorted(os.listdir(qat)) == ["export.yaml", "fp32.json", "fp32.onnx"]

    from vidistill.yt8m.constants import MAX_FRAMES
    from vidistill.yt8m.readers import read_frame_dataset
    from vidistill.yt8m.submission import read_video_predictions

    csv = tmp_path / "k3.csv"
    _main("predict", student, "--data", data.heldout, "--frames", 3, "--out", csv)
    ids, scores = read_video_predictions(str(csv), num_classes=4)  # top 20 of 4 classes: every score listed
    batches = read_frame_dataset(data.heldout, num_classes=4, max_frames=MAX_FRAMES, batch_size=64, deterministic=True)
    videos = next(batches.as_numpy_iterator())  # whole videos: the student at k selects its frames itself
    assert ids == [i.decode() for i in videos["id"]] and len(ids) == 8
    whole = {"frames": videos["frames"], "num_frames": videos["num_frames"]}
    at = {k: student_at(keras_student, config, k)(whole)["predictions"].numpy() for k in (3, 6)}
    np.testing.assert_allclose(scores, at[3], rtol=1e-5)  # the CSV's %g: 6 significant digits
    assert np.abs(scores - at[6]).max() > 1e-4  # not the default k's (2.5e-3 apart after these 4 steps)
    capsys.readouterr()
    refused = tmp_path / "k4.csv"  # a k it was not trained at: refused in one line, no CSV
    assert main(["predict", str(student), "--data", data.heldout, "--frames", "4", "--out", str(refused)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "vidistill predict: error: this student was trained at k = 3, 6; k=4 is not one of them: choose one of "
        "those (or train an any-k student with that k in its --frames set)"
    ]
    assert not [name for name in os.listdir(tmp_path) if name.startswith("k4")]

    report = tmp_path / "bench"
    files = [export / "fp32.onnx", export / "int8-dynamic.onnx"]
    code = main(
        ["bench", *map(str, files), "--frames", "3,6,4", "--batch", "1", "--runs", "3", "--warmup", "1"]
        + ["--min-runs", "1", "--no-profile", "--quiet", "--report", str(report)]
    )
    assert code == 1  # the k=4 rows fail, saying why; the others ran
    rows = [json.loads(line) for line in open(report / "rows.jsonl")]
    by_label = {row["model"]: row for row in rows}
    assert set(by_label) == {f"export/{p}@k{k}" for p in ("fp32", "int8-dynamic") for k in (3, 6, 4)}
    for p in ("fp32", "int8-dynamic"):
        for k in (3, 6):
            row = by_label[f"export/{p}@k{k}"]
            assert row["status"].startswith("ok") and row["frames"] == k and row["p50_ms"] > 0
            assert row["gap"] == pytest.approx(card.at_k[str(k)].accuracy.gap, abs=0.02)
        assert "k=4 is not one of them" in by_label[f"export/{p}@k4"]["status"]
