"""Training runs end to end on tiny models and synthetic data: the four modes through `vidistill train`, where the
gradients go, convert / eval / predict agreeing with each other, resume (also after SIGKILL), the NaN guard, bad
input, and finetune.

Everything shares one small synthetic data set and a few module-scoped runs (H-LSTM with 8 cells, 6 classes, 40
frames, batch 8), so that the whole file stays within a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from vidistill.distill.config import DataConfig, TrainConfig, load_train_config
from vidistill.distill.trainer import Run, TrainingError
from vidistill.students.student import student_config
from vidistill.teachers.config import HLSTMConfig, save_config
from vidistill.cli import main

pytestmark = pytest.mark.slow  # every mode trained, resumed, killed, converted and fine-tuned

CLASSES = 6
FRAMES = 40  # the data's (and the teacher's) max_frames
K = 10  # the distilled students' frames
TEACHER = HLSTMConfig(
    num_classes=CLASSES, frames=FRAMES, chunks=4, lower_cells=8, upper_cells=8, lower_layers=1, upper_layers=1
)
POLICIES = "uniform, random, first, middle, last, fml"


# ------------------------------------------------------------------------------------------------ helpers
def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _train(*argv) -> None:
    """`vidistill train` in a module fixture (no capsys there): it must succeed."""
    code = main(["train", *map(str, argv)])
    assert code == 0, argv


def _error_line(err: str, command: str, *fragments: str) -> str:
    """The one `vidistill COMMAND: error: ...` line. stderr may also hold TensorFlow logs and a progress bar, which
    the error can follow on the same line (the bar is drawn before the training data is opened)."""
    prefix = f"vidistill {command}: error: "
    lines = [line[line.index(prefix) :] for line in err.splitlines() if prefix in line]
    assert len(lines) == 1, err
    assert not [line for line in err.splitlines() if line.startswith("Traceback")], err
    line = lines[0]
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def _step_of(checkpoint_path: str | None) -> int:
    assert checkpoint_path, "no checkpoint"
    return int(re.search(r"ckpt-(\d+)$", checkpoint_path).group(1))


def _checkpoint_steps(run_dir) -> list[int]:
    folder = os.path.join(run_dir, "checkpoints")
    return sorted(int(m.group(1)) for f in os.listdir(folder) if (m := re.fullmatch(r"ckpt-(\d+)\.index", f)))


def _metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _model_variables(checkpoint_path: str, model: str) -> dict[str, np.ndarray]:
    """A model's variables ("teacher", "student") in a checkpoint, without the optimizer's slots."""
    reader = tf.train.load_checkpoint(checkpoint_path)
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.startswith(f"{model}/") and "OPTIMIZER_SLOT" not in key and key.endswith("VARIABLE_VALUE")
    }


def _batch(pattern: str, batch_size: int = 4, max_frames: int = FRAMES) -> dict:
    from vidistill.yt8m.readers import read_frame_dataset

    ds = read_frame_dataset(
        pattern, num_classes=CLASSES, max_frames=max_frames, batch_size=batch_size, deterministic=True
    )
    return next(iter(ds))


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("distill")


@pytest.fixture(scope="module")
def data(work):
    """48 training videos (2 shards) + 9 held out, 30-40 frames, 6 classes."""
    out = work / "data"
    code = main(
        [
            "synth",
            "--out",
            str(out),
            "--videos",
            "48",
            "--classes",
            str(CLASSES),
            "--seed",
            "3",
            "--min-frames",
            "30",
            "--max-frames",
            str(FRAMES),
            "--shards",
            "2",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    return {"train": str(out / "train-*.tfrecord"), "eval": str(out / "validate-*.tfrecord")}


@pytest.fixture(scope="module")
def model_yaml(work):
    path = work / "hlstm-tiny.yaml"
    save_config(TEACHER, str(path))
    return path


@pytest.fixture(scope="module")
def parallel_run(work, data, model_yaml):
    """60 steps of parallel distillation (learning rate 0.01 from a config file), checkpoints at steps 30 and 60,
    evaluated at the end."""
    config = work / "lr.yaml"
    config.write_text(yaml.safe_dump({"train": {"optimizer": {"learning_rate": 0.01}}}))
    out = work / "parallel"
    _train(
        "--config",
        config,
        "--teacher",
        model_yaml,
        "--frames",
        K,
        "--data",
        data["train"],
        "--eval-data",
        data["eval"],
        "--out",
        out,
        "--steps",
        60,
        "--batch-size",
        8,
        "--checkpoint-every",
        30,
        "--eval-every",
        60,
    )
    return out


@pytest.fixture(scope="module")
def teacher_run(work, data, model_yaml):
    out = work / "teacher"
    _train(
        "--mode",
        "teacher",
        "--teacher",
        model_yaml,
        "--data",
        data["train"],
        "--eval-data",
        data["eval"],
        "--out",
        out,
        "--steps",
        10,
        "--batch-size",
        8,
        "--checkpoint-every",
        5,
        "--eval-every",
        10,
    )
    return out


@pytest.fixture(scope="module")
def serial_run(work, data, teacher_run):
    out = work / "serial"
    _train(
        "--teacher-run",
        teacher_run,
        "--frames",
        K,
        "--data",
        data["train"],
        "--eval-data",
        data["eval"],
        "--out",
        out,
        "--steps",
        10,
        "--batch-size",
        8,
        "--checkpoint-every",
        5,
        "--eval-every",
        10,
    )
    return out


@pytest.fixture(scope="module")
def student_run(work, data, model_yaml):
    out = work / "student"
    _train(
        "--mode",
        "student",
        "--student",
        model_yaml,
        "--frames",
        8,
        "--selection",
        "first",
        "--data",
        data["train"],
        "--eval-data",
        data["eval"],
        "--out",
        out,
        "--steps",
        6,
        "--batch-size",
        8,
        "--checkpoint-every",
        3,
        "--eval-every",
        6,
    )
    return out


@pytest.fixture(scope="module")
def converted(work, parallel_run):
    out = work / "converted"
    assert main(["convert", str(parallel_run), "--out", str(out)]) == 0
    return out


# ------------------------------------------------------------------------------------------------ 1. the modes
@pytest.mark.parametrize(
    "fixture, mode, k, policy, steps, every",
    [
        ("parallel_run", "parallel", K, "uniform", 60, 30),
        ("teacher_run", "teacher", None, None, 10, 5),
        ("serial_run", "serial", K, "uniform", 10, 5),
        ("student_run", "student", 8, "first", 6, 3),
    ],
)
def test_every_mode_trains(request, fixture, mode, k, policy, steps, every, model_yaml):
    run_dir = request.getfixturevalue(fixture)
    config = load_train_config(str(run_dir))
    assert config.mode == mode
    assert config.steps == steps and config.checkpoint_every == every and config.data.batch_size == 8
    if k is None:
        assert config.student is None and config.teacher == TEACHER
    else:
        assert (config.student.k, config.student.policy) == (k, policy)
        assert config.student.model.num_classes == CLASSES
    if mode in ("parallel", "serial"):
        assert config.teacher == TEACHER and config.data.max_frames == FRAMES
    if mode == "serial":
        assert config.teacher_run == str(request.getfixturevalue("teacher_run"))
    # checkpoints every `every` steps (the last keep_checkpoints=3), the best one, and the evaluations
    assert _checkpoint_steps(run_dir) == list(range(every, steps + 1, every))[-3:]
    assert _step_of(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))) == steps
    assert tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints", "best"))
    metrics = _metrics(run_dir)
    assert [m["step"] for m in metrics] == [steps]  # --eval-every STEPS
    for m in metrics:
        assert m["num_videos"] == 9
        for name in ("gap", "map", "hit_at_one", "perr"):
            assert 0.0 <= m[name] <= 1.0, (name, m)
        assert math.isfinite(m["loss"])


def test_parallel_student_loss_falls(parallel_run):
    """The student's L_CE, logged to TensorBoard every 3 steps, is clearly lower at the end than at the start."""
    values = []
    folder = os.path.join(parallel_run, "logs", "train")
    for name in sorted(os.listdir(folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for value in event.summary.value:
                if value.tag == "batch_ce":
                    values.append((event.step, float(tf.make_ndarray(value.tensor))))
    ce = [v for _, v in sorted(values)]
    assert len(ce) >= 10, values
    assert all(math.isfinite(v) for v in ce)
    first, last = np.mean(ce[:5]), np.mean(ce[-5:])
    assert last < 0.8 * first, ce


# ------------------------------------------------------------------------------------------------ 2. gradients
def test_student_losses_never_reach_the_teacher(data):
    """Every student loss term has no gradient path to the teacher (the projection and the student do get one);
    the teacher's own L_CE does reach it; in serial mode the teacher is not even a trainable variable."""
    from vidistill.distill.distiller import Distiller
    from vidistill.distill.trainer import build_models

    config = TrainConfig(
        mode="parallel",
        teacher=TEACHER,
        student=student_config(TEACHER, k=K, width=0.5),  # narrower: a projection maps E_S to E_T for L_REP
        data=DataConfig(train=data["train"], max_frames=FRAMES, batch_size=4),
    )
    models = build_models(config)
    assert models.projection is not None
    distiller = Distiller("parallel", models.teacher, models.student, config.loss, models.projection)
    batch = _batch(data["train"])
    with tf.GradientTape(persistent=True) as tape:
        logs = distiller.compute_losses(batch, training=True)
    teacher_vars = models.teacher.trainable_variables
    student_vars = models.student.trainable_variables + models.projection.trainable_variables
    assert teacher_vars and student_vars
    for term in ("ce", "rep", "pred", "student_total"):
        assert float(logs[term]) > 0, (term, logs)
        assert all(g is None for g in tape.gradient(logs[term], teacher_vars)), term
    student_grads = tape.gradient(logs["student_total"], student_vars)
    assert all(g is not None for g in student_grads)
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in student_grads)
    projection_grads = tape.gradient(logs["rep"], models.projection.trainable_variables)
    assert all(g is not None for g in projection_grads)
    teacher_grads = tape.gradient(logs["teacher_ce"], teacher_vars)
    assert all(g is not None for g in teacher_grads)
    assert all(g is None for g in tape.gradient(logs["teacher_ce"], student_vars))

    distiller = Distiller("serial", models.teacher, models.student, config.loss, models.projection)
    trainable = {id(v) for v in distiller.trainable_variables}
    assert not trainable & {id(v) for v in models.teacher.variables}
    assert {id(v) for v in student_vars} <= trainable


def test_serial_teacher_is_frozen_parallel_teacher_learns(parallel_run, serial_run, teacher_run):
    from vidistill.distill.trainer import latest_checkpoint

    # serial: the teacher in every checkpoint is bit for bit the one restored from the teacher run
    source = _model_variables(latest_checkpoint(str(teacher_run)), "teacher")
    assert len(source) >= 6
    steps = _checkpoint_steps(serial_run)
    for step in steps:
        saved = _model_variables(os.path.join(serial_run, "checkpoints", f"ckpt-{step}"), "teacher")
        assert saved.keys() == source.keys()
        for key in source:
            assert np.array_equal(saved[key], source[key]), key
    # ... while its student learned
    first, last = (
        _model_variables(os.path.join(serial_run, "checkpoints", f"ckpt-{s}"), "student") for s in (steps[0], steps[-1])
    )
    assert any(not np.array_equal(first[key], last[key]) for key in first)

    # parallel: the teacher trains too (every teacher variable moved between the checkpoints at 30 and 60 steps)
    at_30, at_60 = (
        _model_variables(os.path.join(parallel_run, "checkpoints", f"ckpt-{s}"), "teacher") for s in (30, 60)
    )
    assert at_30.keys() == at_60.keys() and len(at_30) >= 6
    for key in at_30:
        assert not np.array_equal(at_30[key], at_60[key]), key


# ------------------------------------------------------------------------------------------------ 3. convert
def test_convert_parity(parallel_run, converted, data):
    """The joint model's student, the converted Keras student and the SavedModel predict the same, for whole
    videos of any length (padded to 40 or 64 frames, or each one cut to its own length)."""
    from vidistill.distill.runs import load_model
    from vidistill.students.convert import load_student

    assert sorted(os.listdir(converted)) == ["saved_model", "student.yaml", "weights"]
    joint = load_model(str(parallel_run), "student").model
    keras_student = load_student(str(converted))
    serving = tf.saved_model.load(str(converted / "saved_model")).signatures["serving_default"]
    assert len(keras_student.variables) == len(joint.variables)

    batch = _batch(data["eval"], batch_size=9)
    frames, counts = batch["frames"].numpy(), batch["num_frames"].numpy()
    videos = [int(np.argmin(counts)), int(np.argmax(counts))]  # the shortest and the longest, one by one
    assert counts[videos[0]] < counts[videos[1]], counts
    inputs = [  # (frames, num_frames, the rows of the 40-frame batch they are)
        (frames, counts, slice(None)),
        (np.pad(frames, [(0, 0), (0, 64 - FRAMES), (0, 0)]), counts, slice(None)),
        *((frames[i : i + 1, : counts[i]], counts[i : i + 1], slice(i, i + 1)) for i in videos),
    ]
    reference = None
    for x, n, rows in inputs:
        x, n = tf.constant(x, tf.float32), tf.constant(n, tf.int32)
        outputs = [
            joint({"frames": x, "num_frames": n}, training=False),
            keras_student({"frames": x, "num_frames": n}, training=False),
            serving(frames=x, num_frames=n),
        ]
        for name in ("predictions", "representation"):
            a, b, c = (o[name].numpy() for o in outputs)
            np.testing.assert_allclose(b, a, atol=1e-6, rtol=0, err_msg=name)
            np.testing.assert_allclose(c, a, atol=1e-6, rtol=0, err_msg=name)
        predictions = outputs[0]["predictions"].numpy()
        assert np.all((predictions >= 0) & (predictions <= 1))
        if reference is None:
            reference = predictions
        # the padding does not matter: the same predictions as in the 40-frame batch
        np.testing.assert_allclose(predictions, reference[rows], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ 4. eval
def test_eval_agrees_with_predict_and_score(parallel_run, converted, data, tmp_path, capsys):
    code, out, err = _run(capsys, "eval", parallel_run, "--data", data["eval"], "--json")
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["num_videos"] == 9
    # the last periodic evaluation of the run (step 60, also the best checkpoint's or a better one)
    assert evaluated["gap"] == pytest.approx(max(m["gap"] for m in _metrics(parallel_run)), abs=1e-6)

    csv_path = tmp_path / "predictions.csv"
    code, out, err = _run(capsys, "predict", parallel_run, "--data", data["eval"], "--out", csv_path)
    assert code == 0, err
    assert "9 videos" in out
    code, out, err = _run(
        capsys, "score", "--predictions", csv_path, "--data", data["eval"], "--num-classes", CLASSES, "--json"
    )
    assert code == 0, err
    scored = json.loads(out)
    assert scored["num_videos"] == 9 and scored["videos_without_prediction"] == 0
    # The CSV keeps 6 significant digits (%g). That rounding is monotone, and all four metrics depend only on the
    # ranking of the scores, so they are unchanged unless rounding made two scores equal (a tie the metrics may
    # break the other way). With all 9 x 6 scores in the CSV distinct the metrics agree to float precision.
    lines = csv_path.read_text().splitlines()[1:]
    scores = [float(v) for line in lines for v in line.split(",")[1].split()[1::2]]
    assert len(scores) == 9 * CLASSES and len(set(scores)) == len(scores), "rounded scores tie: see the comment"
    for name in ("gap", "map", "hit_at_one", "perr"):
        assert scored[name] == pytest.approx(evaluated[name], abs=1e-6), name

    code, out, err = _run(capsys, "eval", converted, "--data", data["eval"], "--json")
    assert code == 0, err
    from_converted = json.loads(out)
    for name in ("gap", "map", "hit_at_one", "perr", "loss"):
        assert from_converted[name] == pytest.approx(evaluated[name], abs=1e-6), name


# ------------------------------------------------------------------------------------------------ 5. resume
def test_resume_continues_to_the_new_step_count(teacher_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(teacher_run, run_dir)
    code, out, err = _run(capsys, "train", "--out", run_dir, "--resume", "--steps", 20)
    assert code == 0, err
    assert "trained to step 20" in out
    assert _checkpoint_steps(run_dir) == [10, 15, 20]
    assert [m["step"] for m in _metrics(run_dir)] == [10, 20]
    assert load_train_config(str(run_dir)).steps == 20
    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints" / "ckpt-20"))
    assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 20


def test_resume_refusals(teacher_run, model_yaml, data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(teacher_run, run_dir)
    before = sorted(os.listdir(run_dir / "checkpoints"))

    # another configuration (a batch size of 4 instead of 8)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["train"]["data"]["batch_size"] = 4
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(saved))
    code, _, err = _run(capsys, "train", "--config", changed, "--out", run_dir, "--resume", "--steps", 20)
    assert code == 2
    _error_line(err, "train", str(run_dir), "another configuration", "only --steps may change")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["data"]["batch_size"] == 8
    # the same through a flag
    code, _, err = _run(capsys, "train", "--out", run_dir, "--resume", "--batch-size", 4)
    assert code == 2
    _error_line(err, "train", "another configuration")

    # --resume of a directory that holds no run
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "train", "--out", empty, "--resume")
    assert code == 2
    _error_line(err, "train", str(empty), "config.yaml")
    code, _, err = _run(capsys, "train", "--config", run_dir / "config.yaml", "--out", empty, "--resume")
    assert code == 2
    _error_line(err, "train", "nothing to resume", str(empty))
    assert os.listdir(empty) == []

    # a new run into an existing run directory
    code, _, err = _run(
        capsys,
        "train",
        "--mode",
        "teacher",
        "--teacher",
        model_yaml,
        "--data",
        data["train"],
        "--out",
        run_dir,
        "--steps",
        5,
    )
    assert code == 2
    _error_line(err, "train", str(run_dir), "already holds a run", "--resume")
    assert sorted(os.listdir(run_dir / "checkpoints")) == before


# ------------------------------------------------------------------------------------------------ 6. SIGKILL
def _pointer_step(run_dir) -> int | None:
    """The step of the `checkpoints/checkpoint` pointer (TensorFlow replaces that file atomically)."""
    try:
        text = open(os.path.join(run_dir, "checkpoints", "checkpoint")).read()
    except FileNotFoundError:
        return None
    match = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', text, re.M)
    return int(match.group(1)) if match else None


EVERY = 5  # the killed run's checkpoint interval


class _KilledInBackground:
    """`python -m vidistill.cli train` of 100000 steps in a subprocess, SIGKILLed by a watcher thread a little
    after its third checkpoint. Started when the module's first test starts, so that the subprocess (mostly
    single-threaded graph building) runs on the second core while the other tests run."""

    def __init__(self, model_yaml, data: dict, work):
        self.run_dir = work / "killed"
        self.stderr_path = work / "killed-stderr.txt"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        command = [
            sys.executable,
            "-m",
            "vidistill.cli",
            "train",
            "--mode",
            "teacher",
            "--teacher",
            str(model_yaml),
            "--data",
            data["train"],
            "--out",
            str(self.run_dir),
            "--steps",
            "100000",
            "--batch-size",
            "8",
            "--checkpoint-every",
            str(EVERY),
        ]
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=work)
        self.seen: int | None = None  # the checkpoint pointer's step just before the kill
        self.bar: list[int] = []  # the progress bar's step counts until then
        self.error = ""
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 240
        while (_pointer_step(self.run_dir) or 0) < 3 * EVERY:  # a few checkpoints: it is well into training
            if self.process.poll() is not None:
                self.error = f"training exited early (code {self.process.returncode}):\n{self._stderr()}"
                return
            if time.monotonic() > deadline:
                self.error = f"no third checkpoint after 240 s:\n{self._stderr()}"
                self.stop()
                return
            time.sleep(0.05)
        time.sleep(0.3)  # kill it between checkpoints or while it writes one
        self.seen = _pointer_step(self.run_dir)
        self.bar = [int(n) for n in re.findall(r"(\d+)/100000 \[", self.stderr_path.read_text())]
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def _stderr(self) -> str:
        return self.stderr_path.read_text()[-3000:]

    def result(self) -> None:
        self.thread.join(timeout=300)
        assert not self.thread.is_alive(), "the watcher thread did not finish"
        assert not self.error, self.error
        assert self.process.returncode == -signal.SIGKILL, self.process.returncode

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module", autouse=True)
def killed_in_background(model_yaml, data, work):
    killer = _KilledInBackground(model_yaml, data, work)
    yield killer
    killer.stop()
    killer.thread.join(timeout=10)


@pytest.fixture(scope="module")
def killed_run(killed_in_background):
    """The killed run resumed in-process for two more intervals: the resumed Run, what was seen before the kill,
    the step it restored."""
    killer = killed_in_background
    killer.result()
    run_dir = killer.run_dir
    restored = _step_of(tf.train.latest_checkpoint(str(run_dir / "checkpoints")))
    config = load_train_config(str(run_dir))
    assert config.steps == 100000
    config.steps = restored + 2 * EVERY  # only the steps may change on resume
    run = Run(config, str(run_dir), resume=True)
    start = run.step
    run.optimizer.build(run.distiller.trainable_variables)  # what the first step does: the slots, restored
    optimizer_state = [v.numpy() for v in run.optimizer.variables]
    run.train(progress=False)
    return {
        "run": run,
        "dir": run_dir,
        "seen": killer.seen,
        "bar": killer.bar,
        "restored": restored,
        "start": start,
        "optimizer_state": optimizer_state,
    }


def test_sigkill_loses_at_most_one_checkpoint_interval(killed_run):
    seen, restored = killed_run["seen"], killed_run["restored"]
    completed = max(killed_run["bar"] + [seen])  # steps known to be done when it was killed (the bar lags behind)
    assert seen >= 3 * EVERY
    assert restored % EVERY == 0
    assert restored >= seen  # the last checkpoint seen complete before the kill is there
    assert restored >= completed - EVERY, (restored, completed)  # at most one interval of work lost
    assert killed_run["start"] == restored  # the resumed run started from it
    run = killed_run["run"]
    assert run.step == restored + 2 * EVERY  # and reached its target
    assert _step_of(tf.train.latest_checkpoint(str(killed_run["dir"] / "checkpoints"))) == run.step
    assert _checkpoint_steps(killed_run["dir"])[-2:] == [restored + EVERY, restored + 2 * EVERY]


def test_resume_restores_the_optimizer_state(killed_run):
    """Right after the resumed Run restored its checkpoint, the optimizer's state (iterations, and Adam's m and v
    of every variable) is the saved one."""
    state = killed_run["optimizer_state"]
    reader = tf.train.load_checkpoint(os.path.join(killed_run["dir"], "checkpoints", f"ckpt-{killed_run['restored']}"))
    saved_slots = [k for k in reader.get_variable_to_shape_map() if k.startswith("optimizer/_variables/")]
    variables = killed_run["run"].distiller.trainable_variables
    assert len(state) == 1 + 2 * len(variables) == 1 + len(saved_slots)
    assert state[0] == killed_run["restored"]
    for i, value in enumerate(state):
        key = "optimizer/_iterations" if i == 0 else f"optimizer/_variables/{i}"
        saved = reader.get_tensor(f"{key}/.ATTRIBUTES/VARIABLE_VALUE")
        assert np.array_equal(value, saved), i
        if i:
            assert np.any(saved != 0), i  # real moments, not fresh zeros


# ------------------------------------------------------------------------------------------------ 7. NaN
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(killed_run, data):
    """The resumed run of the SIGKILL test goes on with a poisoned weight: it stops at the first non-finite loss,
    writes no checkpoint of the diverged model, and names the last good one, which still loads."""
    from vidistill.distill.runs import load_model

    run, run_dir = killed_run["run"], killed_run["dir"]
    good = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    good_step = _step_of(good)
    assert good_step == run.step
    before = _checkpoint_steps(run_dir)

    kernel = run.models.teacher.trainable_variables[0]  # poison one weight: every later loss is NaN
    kernel.assign(tf.fill(kernel.shape, float("nan")))
    run.config.steps = good_step + 3 * EVERY
    with pytest.raises(TrainingError) as error:
        run.train(progress=False)
    message = str(error.value)
    assert "non-finite" in message and f"at step {good_step + 1}" in message, message
    assert good in message and "--resume" in message, message
    assert run.step == good_step + 1  # it stopped at the first bad step
    assert _checkpoint_steps(run_dir) == before
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")) == good

    # the good checkpoint loads, with finite weights and predictions
    loaded = load_model(str(run_dir))
    assert good in loaded.description
    assert all(np.all(np.isfinite(v.numpy())) for v in loaded.model.variables)
    batch = _batch(data["train"])
    predictions = loaded.model({"frames": batch["frames"], "num_frames": batch["num_frames"]})["predictions"]
    assert np.all(np.isfinite(predictions.numpy()))


# ------------------------------------------------------------------------------------------------ 8. bad input
def test_bad_training_input(model_yaml, data, tmp_path, capsys):
    base = ["train", "--teacher", model_yaml, "--batch-size", 8, "--steps", 5]

    pattern = str(tmp_path / "nothing-*.tfrecord")
    code, _, err = _run(capsys, *base, "--frames", K, "--data", pattern, "--out", tmp_path / "r1")
    assert code == 2
    _error_line(err, "train", "no file matches", pattern)

    code, _, err = _run(capsys, *base, "--frames", 50, "--data", data["train"], "--out", tmp_path / "r2")
    assert code == 2
    _error_line(err, "train", "k=50", f"max_frames={FRAMES}", "--frames")
    assert not (tmp_path / "r2").exists()

    code, _, err = _run(
        capsys, *base, "--mode", "serial", "--frames", K, "--data", data["train"], "--out", tmp_path / "r3"
    )
    assert code == 2
    _error_line(err, "train", "serial", "--teacher-run")
    assert not (tmp_path / "r3").exists()

    code, _, err = _run(
        capsys, *base, "--frames", K, "--selection", "best", "--data", data["train"], "--out", tmp_path / "r4"
    )
    assert code == 2
    _error_line(err, "train", "'best'", POLICIES)
    assert not (tmp_path / "r4").exists()

    neither = tmp_path / "neither"
    neither.mkdir()
    code, out, err = _run(capsys, "eval", neither, "--data", data["eval"])
    assert code == 2 and out == ""
    _error_line(err, "eval", str(neither), "neither a run directory")


# ------------------------------------------------------------------------------------------------ 9. finetune
def _student_weights(student_dir) -> dict[str, np.ndarray]:
    """A converted student's variables, read from its weights/ checkpoint."""
    reader = tf.train.load_checkpoint(os.path.join(student_dir, "weights", "student"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k.endswith("VARIABLE_VALUE")}


def test_finetune(converted, teacher_run, data, tmp_path, capsys):
    from vidistill.distill.trainer import latest_checkpoint

    original = _student_weights(converted)
    assert len(original) >= 6
    out = tmp_path / "tuned"
    code, stdout, err = _run(
        capsys,
        "finetune",
        converted,
        "--data",
        data["train"],
        "--out",
        out,
        "--steps",
        5,
        "--batch-size",
        8,
        "--learning-rate",
        0.01,
    )
    assert code == 0, err
    assert str(out) in stdout
    assert sorted(os.listdir(out)) == ["run", "saved_model", "student.yaml", "weights"]
    config = load_train_config(str(out / "run"))
    assert config.mode == "student" and config.init_student == str(converted) and config.steps == 5
    assert _checkpoint_steps(out / "run") == [5]
    tuned = _student_weights(out)
    assert tuned.keys() == original.keys()
    assert any(not np.array_equal(tuned[name], original[name]) for name in original)
    assert (out / "student.yaml").read_text() == (converted / "student.yaml").read_text()
    # still distilling from a trained teacher: serial mode against that teacher
    out2 = tmp_path / "tuned-serial"
    code, _, err = _run(
        capsys,
        "finetune",
        converted,
        "--data",
        data["train"],
        "--out",
        out2,
        "--steps",
        5,
        "--batch-size",
        8,
        "--teacher-run",
        teacher_run,
    )
    assert code == 0, err
    config = load_train_config(str(out2 / "run"))
    assert config.mode == "serial" and config.teacher_run == str(teacher_run) and config.teacher == TEACHER
    assert sorted(os.listdir(out2)) == ["run", "saved_model", "student.yaml", "weights"]
    tuned = _student_weights(out2)
    assert any(not np.array_equal(tuned[name], original[name]) for name in original)
    teacher = _model_variables(latest_checkpoint(str(out2 / "run")), "teacher")  # the frozen teacher of that run
    source = _model_variables(latest_checkpoint(str(teacher_run)), "teacher")
    assert teacher.keys() == source.keys() and all(np.array_equal(teacher[k], source[k]) for k in source)

    # a non-empty --out is refused
    code, _, err = _run(capsys, "finetune", converted, "--data", data["train"], "--out", out, "--steps", 5)
    assert code == 2
    _error_line(err, "finetune", str(out), "not empty")


# ------------------------------------------------------------------------------------------------ known bugs
def test_a_start_that_fails_on_the_data_can_be_retried(model_yaml, data, tmp_path, capsys):
    run_dir = tmp_path / "r"
    argv = ["train", "--mode", "teacher", "--teacher", model_yaml, "--out", run_dir, "--steps", 2, "--batch-size", 8]
    code, _, _ = _run(capsys, *argv, "--data", tmp_path / "typo-*.tfrecord")
    assert code == 2
    code, _, err = _run(capsys, *argv, "--data", data["train"])  # "already holds a run: pass --resume"
    assert code == 0, err


def test_runs_stop_at_exactly_the_requested_step_and_resume_off_the_grid(model_yaml, data, tmp_path, capsys):
    import tensorflow as tf

    run_dir = tmp_path / "exact"
    argv = [
        "train",
        "--mode",
        "teacher",
        "--teacher",
        model_yaml,
        "--out",
        run_dir,
        "--data",
        data["train"],
        "--batch-size",
        8,
        "--checkpoint-every",
        5,
    ]
    code, out, err = _run(capsys, *argv, "--steps", 7)
    assert code == 0, err
    assert "trained to step 7" in out
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("ckpt-7")
    code, out, err = _run(capsys, *argv, "--steps", 10, "--resume")
    assert code == 0, err
    assert "trained to step 10" in out
    steps = sorted(int(p.name.split("-")[1].split(".")[0]) for p in (run_dir / "checkpoints").glob("ckpt-*.index"))
    assert steps[-1] == 10 and all(s <= 10 for s in steps)


def test_a_step_that_would_train_nothing_is_an_error_not_a_silent_no_op():
    import tf_keras as keras

    from vidistill.distill.distiller import Distiller
    from vidistill.distill.losses import LossWeights
    from vidistill.students.student import build_student

    student = build_student(student_config(TEACHER, k=K))
    student.trainable = False
    distiller = Distiller("student", None, student, LossWeights())
    distiller.compile(optimizer=keras.optimizers.Adam())
    batch = {
        "frames": np.zeros((2, FRAMES, 1152), np.float32),
        "num_frames": np.array([FRAMES, 5], np.int32),
        "labels": np.zeros((2, CLASSES), np.float32),
    }
    with pytest.raises(
        ValueError, match=r"no trainable variable gets a gradient in mode 'student'.*nothing would train"
    ):
        distiller.fit(tf.data.Dataset.from_tensors(batch), verbose=0)
