"""The fault catalogue: every bad input a user hit (issue "Faults a new user hit" and the bad-input lists before it),
run through the command line on tiny data, with the exit code and the one line it must print. Exit codes: 0 when
everything asked for was done, 1 when a result failed a gate or a row failed (bench, export), 2 for bad input or
usage. A case that comes back fails here.

Other modules hold the cases that need more set-up: tests/test_run_dir.py (a failed start, --overwrite, resumed
TensorBoard steps), tests/test_bench.py (a failing row exits 1), tests/test_export.py (calibration on a partial
last batch), tests/test_readers.py (each kind of bad record, in Python).
"""

from __future__ import annotations

import os

import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

from vidistill.cli import main
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
    assert main([*argv, "--steps", "2", "--batch-size", "4"]) == 0
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
    return {"root": str(root), "data": data, "teacher": str(teacher), "run": str(run)}


def _f(files, name: str) -> str:
    return os.path.join(files["root"], name)


def _train(files, *extra) -> list:
    out = os.path.join(files["root"], "runs", "x")
    return ["train", "--mode", "teacher", "--teacher", files["teacher"], "--out", out, "--steps", "2", *extra]


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
    # configuration files are checked against the typed config before anything runs
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
        ["keep_checkpoints must be >= 1, got 0"],
    ),
    "a zero batch size": (
        lambda f: _train(f, "--config", _f(f, "zero-batch.yaml"), "--data", f["data"].train),
        2,
        ["data.batch_size must be >= 1, got 0"],
    ),
    "a negative learning rate": (
        lambda f: _train(f, "--config", _f(f, "negative-lr.yaml"), "--data", f["data"].train),
        2,
        ["optimizer.learning_rate must be > 0, got -0.1"],
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
}


@pytest.mark.parametrize("case", list(CASES))
def test_fault(case, files, capsys):
    argv, code, fragments = CASES[case]
    assert main([str(a) for a in argv(files)]) == code
    line = _error_line(capsys.readouterr().err, argv(files)[0])
    for fragment in fragments:
        assert fragment in line, (fragment, line)


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
