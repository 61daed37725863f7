"""The fault catalogue: every bad input a user hit (issue "Faults a new user hit" and the bad-input lists before it),
run through the command line on tiny data, with the exit code and the one line it must print. Exit codes: 0 when
everything asked for was done, 1 when a result failed a gate or a row failed (bench, export), 2 for bad input or
usage. A case that comes back fails here. A refused command has written nothing: no --out or --report it named.

Other modules hold the cases that need more set-up: tests/test_run_dir.py (a failed start, --overwrite, resumed
TensorBoard steps), tests/test_bench.py (a failing row exits 1), tests/test_export.py (calibration on a partial
last batch), tests/test_readers.py (each kind of bad record, in Python).
"""

from __future__ import annotations

import itertools
import os

import pytest
import yaml

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

from vidistill.cli import main
from vidistill.students.convert import CONFIG
from vidistill.students.student import student_config
from vidistill.teachers.config import save_config
from vidistill.yt8m.records import write_records

CLASSES = 4


def _error_line(err: str, command: str) -> str:
    """The one `vidistill COMMAND: error: ...` line (stderr may also hold TensorFlow's logs); no traceback."""
    prefix = f"vidistill {command}: error: "
    lines = [line[line.index(prefix) :] for line in err.splitlines() if prefix in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _sequence_example(vid: bytes, labels=(0,), frames: int = 3) -> bytes:
    import tensorflow as tf

    example = tf.train.SequenceExample()
    example.context.feature["id"].bytes_list.value.append(vid)
    example.context.feature["labels"].int64_list.value.extend(labels)
    for name, size in (("rgb", 1024), ("audio", 128)):
        for _ in range(frames):
            example.feature_lists.feature_list[name].feature.add().bytes_list.value.append(bytes(size))
    return example.SerializeToString()


@pytest.fixture(scope="module")
def files(tmp_path_factory, synth_data, tiny_teacher):
    """Good data, a tiny trained run, and one file per kind of bad input."""
    root = tmp_path_factory.mktemp("faults")
    data = synth_data()
    teacher = root / "teacher.yaml"
    save_config(tiny_teacher, str(teacher))
    run = root / "run"
    argv = ["train", "--mode", "teacher", "--teacher", str(teacher), "--data", data.train, "--out", str(run)]
    # --eval-every 0, the smallest value it takes ("only at the end"): test_valid_edge_values_still_work
    assert main([*argv, "--steps", "2", "--batch-size", "4", "--eval-every", "0"]) == 0
    # a converted student's configuration alone: finetune's numbers are refused before its weights are read
    student = root / "student"
    student.mkdir()
    (student / CONFIG).write_text(yaml.safe_dump({"student": student_config(tiny_teacher, k=10).to_dict()}))
    (root / "empty.tfrecord").write_bytes(b"")
    good = [_sequence_example(f"good{i}".encode()) for i in range(3)]
    write_records(str(root / "bad-label.tfrecord"), [good[0], _sequence_example(b"bad", labels=(0, 9)), *good[1:]])
    blob = open(sorted(__import__("glob").glob(data.heldout))[0], "rb").read()
    (root / "truncated.tfrecord").write_bytes(blob[:-100])
    (root / "text.tfrecord").write_text("VideoId,LabelConfidencePairs\nabc,1 0.5\n")
    configs = {
        "steps-word": "train:\n  steps: ten\n",
        "steps-float": "train:\n  steps: 5.5\n",
        "lr-word": "train:\n  optimizer: {learning_rate: fast}\n",
        "batch-string": "train:\n  data: {batch_size: '8'}\n",
        "yaml-syntax": "train:\n  steps: [1, 2\n",
        "typo-key": "train:\n  stpes: 5\n",
        "mode-word": "train:\n  mode: jointly\n",
        "zero-keep": "train:\n  keep_checkpoints: 0\n",
        "zero-batch": "train:\n  data: {batch_size: 0}\n",
        "negative-lr": "train:\n  optimizer: {learning_rate: -0.1}\n",
    }
    for name, text in configs.items():
        (root / f"{name}.yaml").write_text(text)
    return {"root": str(root), "data": data, "teacher": str(teacher), "run": str(run), "student": str(student)}


def _f(files, name: str) -> str:
    return os.path.join(files["root"], name)


_FRESH = itertools.count()


def _fresh(files) -> str:
    """A path nothing has written yet (the --out of a case that must write nothing)."""
    return os.path.join(files["root"], "fresh", str(next(_FRESH)))


def _train(files, *extra, out: str | None = None) -> list:
    out = out or os.path.join(files["root"], "runs", "x")
    return ["train", "--mode", "teacher", "--teacher", files["teacher"], "--out", out, "--steps", "2", *extra]


def _train_flag(flag: str, value: str):
    """A teacher-only training run with one numeric flag set to `value` (the rest valid)."""
    return lambda f: _train(f, "--data", f["data"].train, flag, value, out=_fresh(f))


def _student_flag(flag: str, value: str):
    """Training a k=10 student (parallel) with one numeric flag set to `value`."""
    return lambda f: [
        "train",
        "--teacher",
        f["teacher"],
        "--frames",
        "10",
        "--data",
        f["data"].train,
        "--out",
        _fresh(f),
        flag,
        value,
    ]


def _command_flag(command: str, *argv: str):
    """`command` with its required arguments (valid; nothing that exists is written to) followed by `argv`."""

    def build(f):
        data, out = f["data"], _fresh(f)
        required = {
            "finetune": [f["student"], "--data", data.train, "--out", out],
            "export": [f["run"], "--which", "teacher", "--out", out],
            "eval": [f["run"], "--data", data.heldout],
            "predict": [f["run"], "--data", data.heldout, "--out", out],
            "teacher-outputs": [f["run"], "--data", data.train, "--out", out],
            "ensemble": [f["run"], f["run"], "--out", out],
            "synth": ["--out", out],
            "bench": [_f(f, "missing.onnx"), "--report", out],
            "bench-scale": ["--preset", f["teacher"], "--out", out],
            "bench-data": ["--out", out],
            "baseline": ["--train", data.train, "--data", data.heldout, "--out", out],
            "score": ["--predictions", _f(f, "missing.csv"), "--data", data.heldout],
            "models": ["--teacher", f["teacher"], "--frames", "30,10"],
            "experiment": ["table1", "--quick", "--out", out],
        }[command]
        return [command, *required, *argv]

    return build


CASES = {
    # an input with no records is an error everywhere it is read
    "train on an empty file": (lambda f: _train(f, "--data", _f(f, "empty.tfrecord")), 2, ["holds no records"]),
    "eval on an empty file": (lambda f: ["eval", f["run"], "--data", _f(f, "empty.tfrecord")], 2, ["holds no records"]),
    "predict on an empty file": (
        lambda f: ["predict", f["run"], "--data", _f(f, "empty.tfrecord"), "--out", _f(f, "p.csv")],
        2,
        ["holds no records"],
    ),
    # bad records name the file and the record, and say how to skip them
    "eval on a bad record": (
        lambda f: ["eval", f["run"], "--data", _f(f, "bad-label.tfrecord")],
        2,
        ["bad-label.tfrecord", "record 1 of", "outside [0, 4)", "--skip-bad-records"],
    ),
    "eval on a truncated file": (
        lambda f: ["eval", f["run"], "--data", _f(f, "truncated.tfrecord")],
        2,
        ["truncated.tfrecord", "--skip-bad-records"],
    ),
    "eval on a file that is no tfrecord": (
        lambda f: ["eval", f["run"], "--data", _f(f, "text.tfrecord")],
        2,
        ["text.tfrecord"],
    ),
    "eval on a glob that matches nothing": (
        lambda f: ["eval", f["run"], "--data", _f(f, "typo-*.tfrecord")],
        2,
        ["no file matches", "typo-*.tfrecord"],
    ),
    # configuration files are checked against the typed config before anything runs (their values named by their
    # keys alone: no flag set them)
    "a word for an integer": (
        lambda f: _train(f, "--config", _f(f, "steps-word.yaml"), "--data", f["data"].train),
        2,
        ["steps-word.yaml", "train.steps must be an integer, got 'ten'"],
    ),
    "a float for an integer": (
        lambda f: _train(f, "--config", _f(f, "steps-float.yaml"), "--data", f["data"].train),
        2,
        ["train.steps must be an integer, got 5.5"],
    ),
    "a word for a number": (
        lambda f: _train(f, "--config", _f(f, "lr-word.yaml"), "--data", f["data"].train),
        2,
        ["train.optimizer.learning_rate must be a number, got 'fast'"],
    ),
    "a string for an integer": (
        lambda f: _train(f, "--config", _f(f, "batch-string.yaml"), "--data", f["data"].train),
        2,
        ["train.data.batch_size must be an integer, got '8'"],
    ),
    "a YAML syntax error": (
        lambda f: _train(f, "--config", _f(f, "yaml-syntax.yaml"), "--data", f["data"].train),
        2,
        ["yaml-syntax.yaml", "line"],
    ),
    "a misspelt option": (
        lambda f: _train(f, "--config", _f(f, "typo-key.yaml"), "--data", f["data"].train),
        2,
        ["unknown option(s) ['stpes']"],
    ),
    "an unknown mode": (
        lambda f: _train(f, "--config", _f(f, "mode-word.yaml"), "--data", f["data"].train),
        2,
        ["train.mode must be one of parallel, serial, teacher, student, got 'jointly'"],
    ),
    "a zero count": (
        lambda f: _train(f, "--config", _f(f, "zero-keep.yaml"), "--data", f["data"].train),
        2,
        ["error: keep_checkpoints must be >= 1, got 0"],
    ),
    "a zero batch size": (
        lambda f: _train(f, "--config", _f(f, "zero-batch.yaml"), "--data", f["data"].train),
        2,
        ["error: data.batch_size must be >= 1, got 0"],
    ),
    "a negative learning rate": (
        lambda f: _train(f, "--config", _f(f, "negative-lr.yaml"), "--data", f["data"].train),
        2,
        ["error: optimizer.learning_rate must be > 0, got -0.1"],
    ),
    # usage
    "more student frames than the data has": (
        lambda f: [
            "train",
            "--teacher",
            f["teacher"],
            "--frames",
            "31",
            "--data",
            f["data"].train,
            "--out",
            _f(f, "runs/k31"),
        ],
        2,
        ["k=31", "max_frames=30"],
    ),
    "a new run over a trained one": (
        lambda f: [
            "train",
            "--mode",
            "teacher",
            "--teacher",
            f["teacher"],
            "--data",
            f["data"].train,
            "--out",
            f["run"],
        ],
        2,
        ["already holds a run", "--resume", "--overwrite"],
    ),
    "an unknown precision": (
        lambda f: ["export", f["run"], "--which", "teacher", "--out", _f(f, "e"), "--precision", "int4"],
        2,
        ["int4"],
    ),
    # numeric flags: the check of the option they set (the config file's, or the flag's own rule), named as typed;
    # a word where a number belongs is argparse's error
    "train --batch-size 0": (
        _train_flag("--batch-size", "0"),
        2,
        ["--batch-size (data.batch_size) must be >= 1, got 0"],
    ),
    "train --batch-size -4": (
        _train_flag("--batch-size", "-4"),
        2,
        ["--batch-size (data.batch_size) must be >= 1, got -4"],
    ),
    "train --batch-size 2.5": (
        _train_flag("--batch-size", "2.5"),
        2,
        ["argument --batch-size: invalid int value: '2.5'"],
    ),
    "train --steps 0": (_train_flag("--steps", "0"), 2, ["--steps must be >= 1, got 0"]),
    "train --steps ten": (_train_flag("--steps", "ten"), 2, ["argument --steps: invalid int value: 'ten'"]),
    "train --checkpoint-every 0": (
        _train_flag("--checkpoint-every", "0"),
        2,
        ["--checkpoint-every must be >= 1, got 0"],
    ),
    "train --eval-every -1": (_train_flag("--eval-every", "-1"), 2, ["--eval-every must be >= 0, got -1"]),
    "train --num-classes 0": (_train_flag("--num-classes", "0"), 2, ["--num-classes must be >= 1, got 0"]),
    "train --width 0": (_student_flag("--width", "0"), 2, ["--width must be > 0, got 0.0"]),
    "train --width -0.5": (_student_flag("--width", "-0.5"), 2, ["--width must be > 0, got -0.5"]),
    "train --width nan": (_student_flag("--width", "nan"), 2, ["--width must be > 0, got nan"]),
    "train --width wide": (_student_flag("--width", "wide"), 2, ["argument --width: invalid float value: 'wide'"]),
    "finetune --steps 0": (_command_flag("finetune", "--steps", "0"), 2, ["--steps must be >= 1, got 0"]),
    "finetune --batch-size 0": (
        _command_flag("finetune", "--batch-size", "0"),
        2,
        ["--batch-size (data.batch_size) must be >= 1, got 0"],
    ),
    "finetune --learning-rate 0": (
        _command_flag("finetune", "--learning-rate", "0"),
        2,
        ["--learning-rate (optimizer.learning_rate) must be > 0, got 0.0"],
    ),
    "finetune --learning-rate -0.001": (
        _command_flag("finetune", "--learning-rate", "-0.001"),
        2,
        ["--learning-rate (optimizer.learning_rate) must be > 0, got -0.001"],
    ),
    "export --batch-size 0": (_command_flag("export", "--batch-size", "0"), 2, ["--batch-size must be >= 1, got 0"]),
    "export --calibration-batches 0": (
        _command_flag("export", "--calibration-batches", "0"),
        2,
        ["--calibration-batches must be >= 1, got 0"],
    ),
    "export --qat-steps 0": (_command_flag("export", "--qat-steps", "0"), 2, ["--qat-steps must be >= 1, got 0"]),
    "export --eval-videos -1": (
        _command_flag("export", "--eval-videos", "-1"),
        2,
        ["--eval-videos must be >= 0, got -1"],
    ),
    "eval --batch-size 0": (
        _command_flag("eval", "--batch-size", "0"),
        2,
        ["argument --batch-size: must be >= 1, got 0"],
    ),
    "predict --batch-size 0": (
        _command_flag("predict", "--batch-size", "0"),
        2,
        ["argument --batch-size: must be >= 1, got 0"],
    ),
    "predict --batch-size -1": (
        _command_flag("predict", "--batch-size", "-1"),
        2,
        ["argument --batch-size: must be >= 1, got -1"],
    ),
    "teacher-outputs --batch-size 0": (
        _command_flag("teacher-outputs", "--batch-size", "0"),
        2,
        ["argument --batch-size: must be >= 1, got 0"],
    ),
    "ensemble --batch-size 0": (
        _command_flag("ensemble", "--batch-size", "0"),
        2,
        ["argument --batch-size: must be >= 1, got 0"],
    ),
    "synth --videos 0": (
        _command_flag("synth", "--videos", "0"),
        2,
        ["option videos=0 is out of range", "videos >= 1"],
    ),
    "synth --videos many": (_command_flag("synth", "--videos", "many"), 2, ["argument --videos: invalid int value"]),
    "synth --heldout -1": (_command_flag("synth", "--heldout", "-1"), 2, ["option heldout=-1 is out of range"]),
    "synth --classes 0": (
        _command_flag("synth", "--classes", "0"),
        2,
        ["option classes=0 is out of range", "classes >= 2"],
    ),
    "synth --shards 0": (
        _command_flag("synth", "--shards", "0"),
        2,
        ["option shards=0 is out of range", "shards >= 1"],
    ),
    "synth --min-frames > --max-frames": (
        _command_flag("synth", "--min-frames", "100", "--max-frames", "50"),
        2,
        ["option min_frames=100 is out of range", "min_frames <= max_frames"],
    ),
    "synth --seed -1": (_command_flag("synth", "--seed", "-1"), 2, ["option seed=-1 is out of range", "seed >= 0"]),
    "synth --workers 0": (_command_flag("synth", "--workers", "0"), 2, ["argument --workers: must be >= 1, got 0"]),
    "bench --runs 0": (_command_flag("bench", "--runs", "0"), 2, ["--runs must be at least 1, not 0"]),
    "bench --duration 0": (_command_flag("bench", "--duration", "0"), 2, ["--duration must be positive, not 0.0"]),
    "bench --warmup -1": (_command_flag("bench", "--warmup", "-1"), 2, ["--warmup (warm-up runs) must be 0 or more"]),
    "bench --threads 0": (_command_flag("bench", "--threads", "0"), 2, ["--threads must be at least 1, not 0"]),
    "bench --input-sets 1": (_command_flag("bench", "--input-sets", "1"), 2, ["--input-sets must be 2 or more"]),
    "bench --seed -1": (_command_flag("bench", "--seed", "-1"), 2, ["--seed must be 0 or more, not -1"]),
    "bench --pareto-batch 0": (_command_flag("bench", "--pareto-batch", "0"), 2, ["--pareto-batch must be at least 1"]),
    "bench --peak-size 0": (_command_flag("bench", "--peak-size", "0"), 2, ["--peak-size must be at least 1, not 0"]),
    "bench --batch 0": (_command_flag("bench", "--batch", "0"), 2, ["--batch: batch sizes must be positive integers"]),
    "bench --runs 1.5": (_command_flag("bench", "--runs", "1.5"), 2, ["argument --runs: invalid int value: '1.5'"]),
    "bench-scale --k 0": (_command_flag("bench-scale", "--k", "0"), 2, ["--k must be at least 1 (got 0)"]),
    "bench-scale --width 0": (_command_flag("bench-scale", "--width", "0"), 2, ["--width must be in (0, 1] (got 0.0)"]),
    "bench-scale --videos -1": (_command_flag("bench-scale", "--videos", "-1"), 2, ["--videos must be at least 1"]),
    "bench-scale --heldout 0": (_command_flag("bench-scale", "--heldout", "0"), 2, ["--heldout must be at least 1"]),
    "bench-scale --bench-duration 0": (
        _command_flag("bench-scale", "--bench-duration", "0"),
        2,
        ["--bench-duration must be positive (got 0.0)"],
    ),
    "bench-data --videos 0": (_command_flag("bench-data", "--videos", "0"), 2, ["option videos=0 is out of range"]),
    "bench-data --batch-size 0": (
        _command_flag("bench-data", "--batch-size", "0"),
        2,
        ["argument --batch-size: must be >= 1, got 0"],
    ),
    "bench-data --frames 0": (
        _command_flag("bench-data", "--frames", "0"),
        2,
        ["argument --frames: must be >= 1, got 0"],
    ),
    "bench-data --workers -2": (
        _command_flag("bench-data", "--workers", "-2"),
        2,
        ["argument --workers: must be >= 1, got -2"],
    ),
    "baseline --num-classes 0": (
        _command_flag("baseline", "--num-classes", "0"),
        2,
        ["argument --num-classes: must be >= 1, got 0"],
    ),
    "baseline --l2 0": (_command_flag("baseline", "--l2", "0"), 2, ["argument --l2: must be > 0, got 0.0"]),
    "baseline --l2 -1": (_command_flag("baseline", "--l2", "-1"), 2, ["argument --l2: must be > 0, got -1.0"]),
    "score --num-classes 0": (
        _command_flag("score", "--num-classes", "0"),
        2,
        ["argument --num-classes: must be >= 1, got 0"],
    ),
    "models --width 0": (_command_flag("models", "--width", "0"), 2, ["--width must be > 0, got 0.0"]),
    "models --num-classes 0": (_command_flag("models", "--num-classes", "0"), 2, ["--num-classes must be >= 1, got 0"]),
    "experiment --seed -1": (_command_flag("experiment", "--seed", "-1"), 2, ["argument --seed: must be >= 0, got -1"]),
    # the smallest values the options take pass their checks: each command goes on to its next error
    "export --eval-videos 0 (all of them)": (
        _command_flag("export", "--eval-videos", "0", "--precision", "int4"),
        2,
        ["unknown precision(s) int4"],
    ),
    "synth --heldout 0": (
        lambda f: ["synth", "--out", f["data"].root, "--heldout", "0"],
        2,
        ["already holds", "--overwrite"],
    ),
    "bench --warmup 0": (_command_flag("bench", "--warmup", "0", "--runs", "1"), 2, ["no model", "missing.onnx"]),
}


def _exit_code(argv: list[str]) -> int:
    """main's exit code; argparse's own errors (a word for an integer) leave through SystemExit, with theirs."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("case", list(CASES))
def test_fault(case, files, capsys):
    make_argv, code, fragments = CASES[case]
    argv = [str(a) for a in make_argv(files)]
    outputs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--out", "--report")]
    new = [path for path in outputs if not os.path.exists(path)]
    assert _exit_code(argv) == code
    line = _error_line(capsys.readouterr().err, argv[0])
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert not [path for path in new if os.path.exists(path)], "a refused command wrote its output"


def test_valid_edge_values_still_work(files):
    """The files fixture trained with --eval-every 0 (evaluate only at the end): accepted, and recorded."""
    config = yaml.safe_load(open(os.path.join(files["run"], "config.yaml")))["train"]
    assert (config["eval_every"], config["steps"], config["data"]["batch_size"]) == (0, 2, 4)


@pytest.mark.parametrize(
    "command",
    [
        lambda f: ["eval", f["run"], "--data", _f(f, "bad-label.tfrecord")],
        lambda f: ["predict", f["run"], "--data", _f(f, "bad-label.tfrecord"), "--out", _f(f, "skip.csv")],
        lambda f: _train(f, "--data", _f(f, "bad-label.tfrecord"), "--batch-size", "2", "--overwrite"),
    ],
    ids=["eval", "predict", "train"],
)
def test_skip_bad_records_on_every_command_that_reads_records(command, files, capsys):
    argv = [str(a) for a in command(files)]
    assert main([*argv, "--skip-bad-records"]) == 0
    out = capsys.readouterr().out
    # training reads its data over and over: the bad record counts once per pass
    assert "skipped 1 bad record(s)" in out or "bad record reads (a bad record counts once per pass" in out, out


def test_an_export_that_will_not_fit_is_refused_before_it_starts(files, capsys, monkeypatch):
    """The estimate (2 GB + 8 x the weights: the measured bound, docs/BENCHMARKS.md; here made 1000 GB) against
    what the process holds plus what the machine has available. One line, exit 2, nothing written."""
    from vidistill.export import exporter

    monkeypatch.setattr(exporter, "EXPORT_MEMORY_FIXED", 1e12)
    out = _f(files, "no-room")
    assert main(["export", str(files["run"]), "--which", "teacher", "--out", out, "--precision", "fp32"]) == 2
    line = _error_line(capsys.readouterr().err, "export")
    assert "exporting this 0 MB model needs about 1000.0 GB of memory (this process holds" in line, line
    assert "GB more available: close other programs" in line
    assert not os.path.exists(out)


def test_training_that_will_not_fit_is_refused_before_it_starts(files, tmp_path, capsys, monkeypatch):
    from vidistill.distill import trainer

    monkeypatch.setattr(trainer, "TRAIN_MEMORY_FIXED", 1e12)
    run = tmp_path / "no-room"
    assert main(_train(files, "--data", files["data"].train, "--out", str(run), "--steps", "1")) == 2
    line = _error_line(capsys.readouterr().err, "train")
    assert "training these models (" in line and "needs about 1000.0 GB of memory" in line, line
    assert "--width" in line
    assert not run.exists()  # refused before the run directory was claimed
