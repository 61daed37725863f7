"""The `vidistill` command line, run in-process: synth -> baseline -> score, segment scoring, and its errors."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from vidistill.cli import COMMANDS, main
from vidistill.yt8m.metrics import gap, hit_at_one, mean_average_precision, perr

CLASSES = 6
VIDEOS = 40  # held out: 40 // 5 = 8


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(err: str, command: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"vidistill {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Plain synthetic data written by `vidistill synth` (one process)."""
    out = tmp_path_factory.mktemp("data")
    code = main(
        [
            "synth",
            "--out",
            str(out),
            "--videos",
            str(VIDEOS),
            "--classes",
            str(CLASSES),
            "--seed",
            "5",
            "--min-frames",
            "30",
            "--max-frames",
            "40",
            "--shards",
            "2",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def segment_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("segments")
    code = main(
        [
            "synth",
            "--out",
            str(out),
            "--videos",
            "10",
            "--heldout",
            "30",
            "--classes",
            str(CLASSES),
            "--segments",
            "--min-frames",
            "30",
            "--max-frames",
            "50",
            "--shards",
            "1",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def predictions(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("baseline") / "preds.csv"
    code = main(
        [
            "baseline",
            "--train",
            str(data / "train-*.tfrecord"),
            "--data",
            str(data / "validate-*.tfrecord"),
            "--out",
            str(path),
            "--num-classes",
            str(CLASSES),
        ]
    )
    assert code == 0
    return path


def test_synth_writes_what_it_says(data):
    import yaml

    assert sorted(os.listdir(data)) == [
        "classes.csv",
        "synth.yaml",
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "validate-00000-of-00001.tfrecord",
    ]
    saved = yaml.safe_load((data / "synth.yaml").read_text())["synth"]
    assert (saved["videos"], saved["heldout"], saved["classes"], saved["seed"]) == (VIDEOS, 8, CLASSES, 5)
    assert (saved["min_frames"], saved["max_frames"], saved["shards"], saved["segments"]) == (30, 40, 2, False)


def test_baseline_then_score(data, predictions, capsys):
    from vidistill.yt8m.readers import read_ground_truth
    from vidistill.yt8m.submission import read_video_predictions

    validate = str(data / "validate-*.tfrecord")
    truth = read_ground_truth(validate, num_classes=CLASSES)
    assert len(truth.labels) == 8
    ids, scores = read_video_predictions(predictions, num_classes=CLASSES)
    assert sorted(ids) == sorted(truth.labels) and len(ids) == 8
    assert np.all((scores > 0) & (scores < 1))  # logistic squashing, all 6 classes listed

    code, out, err = _run(
        capsys, "score", "--predictions", predictions, "--data", validate, "--num-classes", CLASSES, "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"hit_at_one", "perr", "gap", "map", "num_videos", "videos_without_prediction"}
    for name in ("hit_at_one", "perr", "gap", "map"):
        assert 0.0 <= result[name] <= 1.0
    assert result["num_videos"] == 8 and result["videos_without_prediction"] == 0

    # the same metrics computed directly from the CSV and the records' labels
    order = list(truth.labels)
    row = {video: i for i, video in enumerate(ids)}
    dense = scores[[row[video] for video in order]]
    labels = truth.label_matrix(order, CLASSES)
    assert result["hit_at_one"] == hit_at_one(dense, labels)
    assert result["perr"] == perr(dense, labels)
    assert result["gap"] == gap(dense, labels)
    assert result["map"] == mean_average_precision(dense, labels)

    # the table output shows the same numbers
    code, out, _ = _run(capsys, "score", "--predictions", predictions, "--data", validate, "--num-classes", CLASSES)
    assert code == 0
    assert f"{result['gap']:.4f}" in out and "hit_at_one" in out


def test_score_counts_missing_predictions(data, predictions, tmp_path, capsys):
    """A labeled video without a prediction line predicts nothing; the others keep their scores."""
    lines = predictions.read_text().splitlines()
    partial = tmp_path / "partial.csv"
    partial.write_text("\n".join(lines[:-3]) + "\n")
    code, out, err = _run(
        capsys,
        "score",
        "--predictions",
        partial,
        "--data",
        data / "validate-*.tfrecord",
        "--num-classes",
        CLASSES,
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["num_videos"] == 8 and result["videos_without_prediction"] == 3


def _segment_truth(segment_data):
    from vidistill.yt8m.readers import read_ground_truth

    truth = read_ground_truth(str(segment_data / "validate-*.tfrecord"), num_classes=CLASSES)
    rated = sorted({(seg, cls, score) for cls, scores in truth.segments.items() for seg, score in scores.items()})
    return truth, rated


def _write_ranking(path, rated, score_of):
    from vidistill.yt8m.submission import write_segment_predictions

    ids = sorted({seg for seg, _, _ in rated})
    index = {seg: i for i, seg in enumerate(ids)}
    matrix = np.zeros((len(ids), CLASSES), np.float32)
    for seg, cls, score in rated:
        matrix[index[seg], cls] = score_of(score)
    write_segment_predictions(path, ids, matrix)


def test_score_segments(segment_data, tmp_path, capsys):
    truth, rated = _segment_truth(segment_data)
    assert len(truth.labels) == 30
    classes_with_positives = {cls for _, cls, score in rated if score > 0}
    assert len(classes_with_positives) >= 2
    validate = segment_data / "validate-*.tfrecord"

    perfect = tmp_path / "perfect.csv"
    _write_ranking(perfect, rated, lambda score: 0.5 + score / 2)  # positives first
    code, out, err = _run(
        capsys, "score", "--segments", "--predictions", perfect, "--data", validate, "--num-classes", CLASSES, "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result == {
        "map": 1.0,
        "num_classes_scored": len(classes_with_positives),
        "num_classes_skipped": CLASSES - len(classes_with_positives),
    }

    reversed_csv = tmp_path / "reversed.csv"
    _write_ranking(reversed_csv, rated, lambda score: 1.0 - score / 2)  # negatives first
    code, out, err = _run(
        capsys,
        "score",
        "--segments",
        "--predictions",
        reversed_csv,
        "--data",
        validate,
        "--num-classes",
        CLASSES,
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert 0.0 < result["map"] < 1.0
    assert result["num_classes_scored"] == len(classes_with_positives)


def test_score_segments_needs_segment_data(data, tmp_path, capsys):
    csv_path = tmp_path / "segments.csv"
    csv_path.write_text("Class,Segments\n0,t0000000:0\n")
    code, _, err = _run(
        capsys,
        "score",
        "--segments",
        "--predictions",
        csv_path,
        "--data",
        data / "validate-*.tfrecord",
        "--num-classes",
        CLASSES,
    )
    assert code == 2
    _assert_one_line_error(err, "score", "segment ratings")


# ------------------------------------------------------------------------------------------------ errors
def test_synth_refuses_existing_records(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "train-00000-of-00001.tfrecord").write_bytes(b"old")
    (out / "validate-00000-of-00001.tfrecord").write_bytes(b"old")
    argv = [
        "synth",
        "--out",
        out,
        "--videos",
        4,
        "--classes",
        4,
        "--min-frames",
        30,
        "--max-frames",
        30,
        "--shards",
        1,
        "--workers",
        1,
    ]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    _assert_one_line_error(err, "synth", str(out), "2 .tfrecord file(s)", "--overwrite")
    assert (out / "train-00000-of-00001.tfrecord").read_bytes() == b"old"
    assert sorted(os.listdir(out)) == ["train-00000-of-00001.tfrecord", "validate-00000-of-00001.tfrecord"]

    code, _, err = _run(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert (out / "train-00000-of-00001.tfrecord").stat().st_size > 1000


def test_synth_bad_option(tmp_path, capsys):
    code, _, err = _run(capsys, "synth", "--out", tmp_path / "d", "--classes", 1, "--workers", 1)
    assert code == 2
    _assert_one_line_error(err, "synth", "classes=1")
    code, _, err = _run(capsys, "synth", "--out", tmp_path / "d", "--max-frames", 301, "--workers", 1)
    assert code == 2
    _assert_one_line_error(err, "synth", "max_frames=301")
    assert not (tmp_path / "d").exists()


def test_score_data_glob_matching_nothing(predictions, tmp_path, capsys):
    pattern = str(tmp_path / "nothing-*.tfrecord")
    code, out, err = _run(capsys, "score", "--predictions", predictions, "--data", pattern, "--num-classes", CLASSES)
    assert code == 2 and out == ""
    _assert_one_line_error(err, "score", "no file matches", pattern)


def test_score_bad_csv_line(data, predictions, tmp_path, capsys):
    lines = predictions.read_text().splitlines()
    vid = lines[2].split(",")[0]
    lines[2] = f"{vid},1 0.5 2"  # line 3: a label without a score
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    code, out, err = _run(
        capsys, "score", "--predictions", bad, "--data", data / "validate-*.tfrecord", "--num-classes", CLASSES
    )
    assert code == 2 and out == ""
    _assert_one_line_error(err, "score", f"{bad}: line 3:", "odd number")


def test_score_label_out_of_range(data, predictions, tmp_path, capsys):
    lines = predictions.read_text().splitlines()
    lines[4] = lines[4].split(",")[0] + f",{CLASSES} 0.5"
    bad = tmp_path / "range.csv"
    bad.write_text("\n".join(lines) + "\n")
    code, _, err = _run(
        capsys, "score", "--predictions", bad, "--data", data / "validate-*.tfrecord", "--num-classes", CLASSES
    )
    assert code == 2
    _assert_one_line_error(err, "score", f"{bad}: line 5:", f"label {CLASSES} out of range")


def test_score_unknown_video(data, predictions, tmp_path, capsys):
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(predictions.read_text() + "zzz_not_a_video,0 0.9\n")
    code, out, err = _run(
        capsys, "score", "--predictions", unknown, "--data", data / "validate-*.tfrecord", "--num-classes", CLASSES
    )
    assert code == 2 and out == ""
    _assert_one_line_error(err, "score", str(unknown), "'zzz_not_a_video'", "not in")
    # training-set predictions scored against the held-out split: every id is unknown
    train_ids = tmp_path / "train_ids.csv"
    train_ids.write_text("VideoId,LabelConfidencePairs\nt0000000,0 0.9\n")
    code, _, err = _run(
        capsys, "score", "--predictions", train_ids, "--data", data / "validate-*.tfrecord", "--num-classes", CLASSES
    )
    assert code == 2
    _assert_one_line_error(err, "score", "'t0000000'")


def test_demo_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, stdout, err = _run(capsys, "demo", "--out", out, "--quick")
    assert code == 2 and stdout == ""
    _assert_one_line_error(err, "demo", str(out), "not empty", "--resume", "--overwrite")
    assert sorted(os.listdir(out)) == ["keep.txt"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vidistill")
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.split()}
    assert set(COMMANDS) <= listed, (sorted(COMMANDS), out)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: vidistill {name}")


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_baseline_on_a_truncated_file_fails_or_skips_with_a_count(data, tmp_path, capfd):
    import shutil

    shard = data / "train-00000-of-00002.tfrecord"
    broken = tmp_path / "train-broken.tfrecord"
    shutil.copy(shard, broken)
    blob = broken.read_bytes()
    broken.write_bytes(blob[: len(blob) - 500])
    out = tmp_path / "preds.csv"
    argv = [
        "baseline",
        "--train",
        broken,
        "--data",
        data / "validate-*.tfrecord",
        "--out",
        out,
        "--num-classes",
        CLASSES,
    ]
    code, _, err = _run(capfd, *argv)
    assert code == 2 and not out.exists()
    err = "\n".join(line for line in err.splitlines() if line.startswith("vidistill"))  # fd 2 also has TF logs
    _assert_one_line_error(err, "baseline", str(broken), "corrupt or truncated", "only its first 19 record(s)")
    code, stdout, err = _run(capfd, *argv, "--skip-bad-records")
    assert code == 0 and out.exists()
    assert "fit on 19 videos" in stdout and "skipped 1 bad record(s)" in stdout
    assert f"skipping {broken}: corrupt or truncated" in err


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    """Every error a user can fix is a UserError (exit 2, one line); any other exception, even a ValueError, is a
    bug in vidistill and propagates with its traceback instead of hiding behind a one-line message."""
    from vidistill.commands import models
    from vidistill.yt8m.errors import ConfigError, DataError, UserError
    from vidistill.export.errors import ExportError

    assert all(issubclass(e, UserError) and issubclass(e, ValueError) for e in (ConfigError, DataError, ExportError))
    monkeypatch.setattr(models, "run", lambda args: (_ for _ in ()).throw(ConfigError("--preset: no such preset")))
    code, _, err = _run(capsys, "models")
    assert code == 2
    _assert_one_line_error(err, "models", "--preset: no such preset")
    monkeypatch.setattr(models, "run", lambda args: (_ for _ in ()).throw(ValueError("an internal mistake")))
    with pytest.raises(ValueError, match="an internal mistake"):
        main(["models"])


def test_an_interrupted_command_exits_130_with_one_line(monkeypatch, capsys):
    """Ctrl-C inside any command is exit code 130 and one line on stderr, not a traceback."""
    from vidistill.commands import models

    def interrupted(args):
        print("building the presets")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "run", interrupted)
    code, out, err = _run(capsys, "models")
    assert code == 130 and out == "building the presets\n"
    assert err == "vidistill models: interrupted\n"


# `python -m vidistill.cli` with Ctrl-C raising KeyboardInterrupt, as in a terminal, even where the tests run as a
# background job of a non-interactive shell: its children start with SIGINT ignored, and so would the child's Python
AS_IF_FROM_A_TERMINAL = (
    "import runpy, signal\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "runpy.run_module('vidistill.cli', run_name='__main__', alter_sys=True)\n"
)


@pytest.mark.slow  # a child process trains a tiny teacher until interrupted, then the run is resumed
def test_sigint_stops_training_with_130_and_the_run_resumes_from_its_last_checkpoint(
    synth_data, tiny_teacher, tmp_path
):
    """A real SIGINT to `vidistill train` once it has saved a checkpoint: exit code 130, the one line, and a run
    that `--resume` continues from that checkpoint (not from step 0)."""
    import signal
    import subprocess
    import sys
    import time

    import tensorflow as tf

    from vidistill.teachers.config import save_config

    data = synth_data()
    teacher, run = tmp_path / "teacher.yaml", tmp_path / "run"
    save_config(tiny_teacher, str(teacher))
    argv = ["--out", run, "--mode", "teacher", "--teacher", teacher, "--data", data.train, "--batch-size", 8]
    argv += ["--checkpoint-every", 2, "--eval-every", 0]
    with open(tmp_path / "stdout", "w") as log_out, open(tmp_path / "stderr", "w") as log_err:  # no pipe to fill
        child = subprocess.Popen(
            [sys.executable, "-c", AS_IF_FROM_A_TERMINAL, "train", *map(str, argv), "--steps", "1000000"],
            stdout=log_out,
            stderr=log_err,
            env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
        )
    try:
        deadline = time.monotonic() + 900  # generous: first checkpoint after 2 steps, seconds on an idle machine
        while tf.train.latest_checkpoint(str(run / "checkpoints")) is None:
            assert child.poll() is None, f"training ended before it was interrupted: {child.returncode}"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        code = child.wait(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    err = (tmp_path / "stderr").read_text()
    assert code == 130, err[-3000:]
    assert "vidistill train: interrupted\n" in err and "Traceback" not in err, err[-3000:]
    last = tf.train.latest_checkpoint(str(run / "checkpoints"))
    step = int(last.rsplit("-", 1)[1])  # checkpoints are numbered by their step
    assert step >= 2 and step % 2 == 0, last
    assert main(["train", "--out", str(run), "--resume", "--steps", str(step + 2)]) == 0
    lines = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == step + 2 and lines[-1]["from_step"] == step, lines  # continued where it stopped
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith(f"ckpt-{step + 2}")


def test_tensorflow_start_up_chatter_is_filtered_and_ours_is_not():
    """TensorFlow logs before absl is initialized straight to descriptor 2 (banner, oneDNN, no-CUDA lines, the
    cuInit error); the CLI's filter drops those and passes our lines, warnings, partial progress-bar updates and
    tracebacks through. VIDISTILL_TF_LOGS=1 shows everything."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from vidistill.console import quiet_tensorflow\n"
        "with quiet_tensorflow():\n"
        "    os.environ['TF_USE_LEGACY_KERAS'] = '1'\n"
        "    import tensorflow as tf\n"
        "    tf.constant(1.0) + 1\n"
        "    sys.stderr.write('\\rtrain:  10%|#         | 1/10')\n"
        "    sys.stderr.flush()\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to '\n"
        "             b'STDERR\\n')\n"
        "    os.write(2, b'I0000 00:00:1795678297.406065    1755 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "    os.write(2, b'E0000 00:00:1795678242.153616    1049 cuda_platform.cc:52] failed call to cuInit: x\\n')\n"
        "    os.write(2, b'E0000 00:00:1795709607.562158    4658 util.cc:131] oneDNN supports DT_BOOL only '\n"
        "             b'on platforms with AVX-512. Falling back to the default Eigen-based implementation '\n"
        "             b'if present.\\n')\n"
        "    os.write(2, b\"W0000 00:00:1795709436.562727    4011 graph_constructor.cc:846] Node 'cond/while' \"\n"
        '             b"has 13 outputs but the _output_shapes attribute specifies shapes for 42 outputs. "\n'
        '             b"Output shapes may be inaccurate.\\n")\n'
        "    os.write(2, b'E0000 00:00:1795709607.562158    4658 util.cc:131] another error, kept\\n')\n"
        "    sys.stderr.write('\\rtrain: 100%|##########| 10/10\\n')\n"
        "    print('vidistill train: error: our own line', file=sys.stderr)\n"
        "    print('Warning: a real one', file=sys.stderr)\n"
        "print('after', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode() == (
        "\rtrain:  10%|#         | 1/10E0000 00:00:1795709607.562158    4658 util.cc:131] another error, kept\n"
        "\rtrain: 100%|##########| 10/10\n"
        "vidistill train: error: our own line\nWarning: a real one\nafter\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=120, env=dict(os.environ, VIDISTILL_TF_LOGS="1")
    )
    assert b"absl::InitializeLog" in shown.stderr and b"failed call to cuInit" in shown.stderr
    assert b"DT_BOOL" in shown.stderr and b"Output shapes may be inaccurate" in shown.stderr


def test_bench_data_times_every_reader_stage(tmp_path, capsys):
    """`vidistill bench-data`: generation, then each reader stage over every generated video (median of 3 passes)."""
    assert (
        main(["bench-data", "--out", str(tmp_path / "d"), "--videos", "8", "--batch-size", "4", "--workers", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "8 videos x 300 frames; batch 4" in out
    stages = ("records", "parse", "decode", "full", "codes", "k=30")
    for stage in ("synthetic generation (write)", *(f"reader: {s} " for s in stages)):
        row = next(line for line in out.splitlines() if stage in line)
        assert " 8 " in row, row  # each stage read all 8 videos
    assert re.search(r"checked / unchecked \(full / decode\): \d+% .* \(goal >= 90%\): (met|missed)", out), out
    assert re.search(r"model-ready float batches: \d+ videos/s \(goal >= 2500\): (met|missed)", out), out
    assert re.search(r"decoding only k=30 frames: \d+\.\d\dx the full videos/s", out), out


def test_the_baseline_beats_random_scores(synth_data, tmp_path, capsys):
    """The linear probe learns the synthetic data: its held-out GAP is far above random scores' (5 draws)."""
    from vidistill.yt8m.readers import read_ground_truth
    from vidistill.yt8m.submission import write_video_predictions

    data = synth_data(videos=160, heldout=80, classes=CLASSES)
    baseline = tmp_path / "baseline.csv"
    assert (
        main(
            [
                "baseline",
                "--train",
                data.train,
                "--data",
                data.heldout,
                "--out",
                str(baseline),
                "--num-classes",
                str(CLASSES),
            ]
        )
        == 0
    )

    def score(path) -> float:
        capsys.readouterr()
        argv = ["score", "--predictions", str(path), "--data", data.heldout, "--num-classes", str(CLASSES), "--json"]
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out)["gap"]

    ids = sorted(read_ground_truth(data.heldout, num_classes=CLASSES).labels)
    random_gaps = []
    for seed in range(5):
        path = tmp_path / f"random{seed}.csv"
        write_video_predictions(path, ids, np.random.default_rng(seed).random((len(ids), CLASSES)))
        random_gaps.append(score(path))
    learned = score(baseline)
    assert learned > max(random_gaps) + 0.1, (learned, random_gaps)
