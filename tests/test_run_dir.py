"""The run directory over a run's life: claimed by its first checkpoint (a failed start does not block it), replaced
with --overwrite, and resumed with TensorBoard steps, train.jsonl and checkpoints that go on where they stopped."""

from __future__ import annotations

import json
import os

import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from vidistill.cli import main
from vidistill.teachers.config import save_config


@pytest.fixture(scope="module")
def teacher_yaml(tmp_path_factory, tiny_teacher):
    path = tmp_path_factory.mktemp("models") / "teacher.yaml"
    save_config(tiny_teacher, str(path))
    return str(path)


def _train(capsys, teacher_yaml, data, out, *extra) -> tuple[int, str]:
    argv = ["train", "--mode", "teacher", "--teacher", teacher_yaml, "--data", data, "--out", str(out)]
    argv += ["--batch-size", "4", "--checkpoint-every", "2", *map(str, extra)]
    code = main(argv)
    return code, capsys.readouterr().err


def _events(run_dir, tag="batch_loss") -> list[int]:
    folder = os.path.join(run_dir, "logs", "train")
    steps = []
    for name in sorted(os.listdir(folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return steps


def test_a_failed_start_does_not_claim_the_directory(synth_data, teacher_yaml, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (tmp_path / "run").mkdir()
    (run_dir / "notes.txt").write_text("the user's own file")
    bad = str(tmp_path / "typo-*.tfrecord")
    code, err = _train(capsys, teacher_yaml, bad, run_dir, "--steps", 2)
    assert code == 2 and "typo-*.tfrecord" in err
    # a start killed before its first checkpoint leaves a config.yaml (and logs): simulate one
    (run_dir / "config.yaml").write_text("train: {mode: teacher, steps: 99}\n")
    (run_dir / "logs").mkdir()
    # --resume of that start begins again with the new configuration (the old one never trained)
    code, err = _train(capsys, teacher_yaml, synth_data().train, run_dir, "--steps", 2, "--resume")
    assert code == 0, err
    assert sorted(os.listdir(run_dir)) == ["checkpoints", "config.yaml", "logs", "notes.txt", "train.jsonl"]
    assert (run_dir / "notes.txt").read_text() == "the user's own file"
    # now it is claimed: a new run needs --overwrite, which replaces the run's files and only those
    code, err = _train(capsys, teacher_yaml, synth_data().train, run_dir, "--steps", 4)
    assert code == 2 and "already holds a run: pass --resume to continue it, --overwrite to replace it" in err
    code, err = _train(capsys, teacher_yaml, synth_data().train, run_dir, "--steps", 4, "--overwrite", "--resume")
    assert code == 2 and "pass one of them" in err
    code, err = _train(capsys, teacher_yaml, synth_data().train, run_dir, "--steps", 4, "--overwrite")
    assert code == 0, err
    assert sorted(os.listdir(run_dir / "checkpoints")) == sorted(
        ["checkpoint", *(f"ckpt-{s}.{e}" for s in (2, 4) for e in ("index", "data-00000-of-00001"))]
    )
    assert [json.loads(line)["step"] for line in open(run_dir / "train.jsonl")] == [2, 4]  # the old run's are gone
    assert (run_dir / "notes.txt").exists()


def test_a_resumed_run_goes_on_where_it_stopped(synth_data, teacher_yaml, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, err = _train(capsys, teacher_yaml, synth_data().train, run_dir, "--steps", 4)
    assert code == 0, err
    partial = run_dir / "checkpoints" / "ckpt-6_temp"  # what a kill during a save leaves
    partial.mkdir()
    (partial / "part-00000-of-00001.data-00000-of-00001").write_text("half")
    code, err = _train(capsys, teacher_yaml, synth_data().train, run_dir, "--steps", 8, "--resume")
    assert code == 0, err
    assert not partial.exists()
    steps = _events(run_dir)
    assert steps == sorted(steps) and len(set(steps)) == len(steps), steps  # no step logged twice
    assert max(steps) >= 6 and min(steps) <= 2, steps  # the second segment logs steps 5-8, not 1-4 again
    lines = [json.loads(line) for line in open(run_dir / "train.jsonl")]
    assert [(line["step"], line["from_step"]) for line in lines] == [(2, 0), (4, 0), (6, 4), (8, 4)]
    assert all(line["seconds"] > 0 for line in lines)


def test_average_last_saves_the_mean_of_the_last_checkpoints(synth_data, teacher_yaml, tmp_path, capsys):
    """average_last: N (SWA) writes checkpoints/averaged/ holding the mean of the last N checkpoints' trainable
    variables."""
    import numpy as np

    config = tmp_path / "swa.yaml"
    config.write_text("train:\n  average_last: 2\n  keep_checkpoints: 3\n")
    run_dir = tmp_path / "run"
    code, err = _train(capsys, teacher_yaml, synth_data().train, run_dir, "--steps", 6, "--config", config)
    assert code == 0, err
    readers = {s: tf.train.load_checkpoint(str(run_dir / "checkpoints" / f"ckpt-{s}")) for s in (4, 6)}
    averaged = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir / "checkpoints" / "averaged")))
    kernels = [k for k in readers[6].get_variable_to_shape_map() if k.startswith("teacher/") and "kernel" in k]
    kernels = [k for k in kernels if "OPTIMIZER_SLOT" not in k]
    assert kernels
    for key in kernels:
        mean = (readers[4].get_tensor(key) + readers[6].get_tensor(key)) / 2
        np.testing.assert_allclose(averaged.get_tensor(key), mean, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(readers[4].get_tensor(kernels[0]), readers[6].get_tensor(kernels[0]))


def test_the_best_checkpoint_follows_the_best_held_out_gap(synth_data, tiny_teacher, tmp_path, monkeypatch):
    """checkpoints/best is replaced when a held-out GAP beats the best so far, and kept otherwise (the evaluation
    is replaced by a GAP sequence, so that the replacement surely runs)."""
    from vidistill.distill import evaluate
    from vidistill.distill.config import DataConfig, TrainConfig
    from vidistill.distill.trainer import train

    gaps = iter([0.1, 0.3, 0.2])
    monkeypatch.setattr(
        evaluate,
        "evaluate_model",
        lambda *a, **k: {"gap": next(gaps), "map": 0.0, "hit_at_one": 0.0, "perr": 0.0, "loss": 1.0, "num_videos": 8},
    )
    data = synth_data()
    config = TrainConfig(
        mode="teacher",
        teacher=tiny_teacher,
        data=DataConfig(train=data.train, eval=data.heldout, max_frames=30, batch_size=4, shuffle_buffer=8),
        steps=6,
        checkpoint_every=2,
        eval_every=2,
    )
    train(config, str(tmp_path / "run"), progress=False)
    lines = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [(m["step"], m["gap"]) for m in lines] == [(2, 0.1), (4, 0.3), (6, 0.2)]
    best = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints" / "best"))
    assert best.endswith("ckpt-4"), best  # replaced at step 4 (0.3 > 0.1), kept at step 6 (0.2 < 0.3)


def test_keras_dispatch_timing_warning_is_dropped_during_fit_only(caplog):
    """Keras compares a step's dispatch with the batch-end hooks that wait for its results, and warns of slow
    callbacks at every small model's run: dropped while a run trains; every other warning passes."""
    import logging

    from vidistill.distill.trainer import _without_dispatch_timing_warning

    slow = "Callback method `on_train_batch_end` is slow compared to the batch time (batch time: 0.01s vs ...)."
    logger = tf.get_logger()
    with caplog.at_level(logging.WARNING, logger=logger.name):
        with _without_dispatch_timing_warning():
            logger.warning(slow)
            logger.warning("another warning")
        logger.warning(slow)
    assert [r.getMessage() for r in caplog.records] == ["another warning", slow]
