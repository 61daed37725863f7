"""Teachers run once: `vidistill teacher-outputs` writes a teacher's outputs beside the records, and a serial run
given them (`--teacher-outputs`) trains as it does against the live frozen teacher, without running it. Bad
outputs (other videos, a missing video, another class count, changed records) are errors naming file and video."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from vidistill.cli import main
from vidistill.distill.config import load_train_config
from vidistill.distill.runs import load_model
from vidistill.yt8m.errors import ConfigError
from vidistill.teachers.config import HLSTMConfig, save_config
from vidistill.yt8m.readers import list_files, read_frame_dataset
from vidistill.yt8m.records import write_records
from vidistill.yt8m.teacher_outputs import TeacherOutputs

pytestmark = pytest.mark.slow  # a teacher trained, its outputs written, three serial runs

CLASSES = 4
FRAMES = 30
K = 6
TEACHER = HLSTMConfig(
    num_classes=CLASSES, frames=FRAMES, chunks=3, lower_cells=8, upper_cells=8, lower_layers=1, upper_layers=1
)


def _main(*argv) -> None:
    assert main([str(a) for a in argv]) == 0, argv


@pytest.fixture(scope="module")
def work(tmp_path_factory, synth_data):
    """Data in two files, a trained tiny teacher, and its outputs in float32 and float16."""
    root = tmp_path_factory.mktemp("teacher_outputs")
    data = synth_data(videos=32, heldout=8, classes=CLASSES, shards=2)
    model = root / "teacher.yaml"
    save_config(TEACHER, str(model))
    teacher = root / "teacher"
    common = ("--data", data.train, "--batch-size", 8, "--checkpoint-every", 5)
    _main("train", "--mode", "teacher", "--teacher", model, "--out", teacher, "--steps", 10, *common)
    for dtype in ("float32", "float16"):
        _main("teacher-outputs", teacher, "--data", data.train, "--out", root / dtype, "--dtype", dtype)
    return {"root": root, "data": data, "teacher": teacher, "common": common}


def _student_weights(run_dir) -> dict[str, np.ndarray]:
    path = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.startswith("student/") and "OPTIMIZER_SLOT" not in key and key.endswith("VARIABLE_VALUE")
    }


def test_outputs_are_the_teachers_for_every_video_in_file_order(work):
    from vidistill.teachers.inference import outputs_of

    outputs = TeacherOutputs.load(str(work["root"] / "float32"))
    files = list_files(work["data"].train)
    assert sorted(outputs.files) == sorted(os.path.basename(f) for f in files) and len(files) == 2
    assert outputs.num_classes == CLASSES and outputs.representation_width == 2 * 8  # c and h of the upper LSTM
    assert outputs.source == os.path.abspath(work["teacher"]) and outputs.dtype == "float32"
    teacher = load_model(str(work["teacher"]), "teacher").model
    batch = next(iter(read_frame_dataset(files[0], num_classes=CLASSES, max_frames=FRAMES, batch_size=64)))
    live = outputs_of(teacher, batch["frames"], batch["num_frames"])
    stored = next(
        iter(
            read_frame_dataset(files[0], num_classes=CLASSES, max_frames=FRAMES, batch_size=64, teacher_outputs=outputs)
        )
    )
    assert outputs.files[os.path.basename(files[0])].records == len(batch["id"])
    np.testing.assert_array_equal(stored["id"], batch["id"])
    np.testing.assert_allclose(stored["teacher_predictions"], live["predictions"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stored["teacher_representation"], live["representation"], rtol=1e-6, atol=1e-6)
    half = TeacherOutputs.load(str(work["root"] / "float16"))
    halved = next(
        iter(read_frame_dataset(files[0], num_classes=CLASSES, max_frames=FRAMES, batch_size=64, teacher_outputs=half))
    )
    np.testing.assert_allclose(halved["teacher_predictions"], live["predictions"], rtol=2**-11, atol=1e-7)
    for stored_outputs, itemsize in ((outputs, 4), (half, 2)):
        record = next(iter(tf.data.TFRecordDataset(stored_outputs.path_for(files[0]))))
        example = tf.train.Example.FromString(record.numpy())
        values = example.features.feature["predictions"].bytes_list.value[0]
        assert len(values) == CLASSES * itemsize


def test_training_on_stored_outputs_equals_training_against_the_live_teacher(work):
    """The same serial run (uniform k=6, deterministic order) against the live teacher and against its float32
    outputs: equal student weights after 10 steps, to float noise; float16 outputs stay close."""
    runs = {}
    for name, extra in (
        ("live", ()),
        ("stored", ("--teacher-outputs", work["root"] / "float32")),
        ("stored16", ("--teacher-outputs", work["root"] / "float16")),
    ):
        runs[name] = work["root"] / f"serial-{name}"
        config = work["root"] / f"serial-{name}.yaml"
        config.write_text("train:\n  data:\n    deterministic: true\n")
        _main(
            "train",
            "--config",
            config,
            "--teacher-run",
            work["teacher"],
            "--frames",
            K,
            "--out",
            runs[name],
            "--steps",
            10,
            *extra,
            *work["common"],
        )
    assert load_train_config(str(runs["stored"])).teacher_outputs == str(work["root"] / "float32")
    with pytest.raises(ConfigError, match="trained against stored teacher outputs .* its teacher is "):
        load_model(str(runs["stored"]), "teacher")
    live, stored, half = (_student_weights(runs[name]) for name in ("live", "stored", "stored16"))
    assert live.keys() == stored.keys() == half.keys() and live
    for key in live:
        np.testing.assert_allclose(stored[key], live[key], atol=2e-5, err_msg=key)
        np.testing.assert_allclose(half[key], live[key], atol=2e-3, err_msg=key)
    # the stored outputs are what the student learned from: float16's rounding shows in its weights
    assert max(np.abs(half[key] - stored[key]).max() for key in live) > 0


def test_the_teacher_run_defaults_to_the_one_that_wrote_the_outputs(work):
    from vidistill.commands.train import add_arguments, resolve_config
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--teacher-outputs", str(work["root"] / "float16"), "--frames", "3", "--data", "x", "--out", "y"]
    )
    config = resolve_config(args)
    assert config.mode == "serial" and config.teacher_run == os.path.abspath(work["teacher"])
    assert config.teacher == TEACHER and config.teacher_outputs == str(work["root"] / "float16")


def _bad_outputs(work, tmp_path, edit):
    """A copy of the float16 outputs with every file's records changed by `edit(records) -> records` (every file:
    the run reads a shuffled few of the records), and the first file's name."""
    out = tmp_path / "bad"
    shutil.copytree(work["root"] / "float16", out)
    outputs = TeacherOutputs.load(str(out))
    files = list_files(work["data"].train)
    for path in files:
        records = [r.numpy() for r in tf.data.TFRecordDataset(outputs.path_for(path))]
        write_records(outputs.path_for(path), edit(records))
    return out, files[0]


def _train_error(work, capsys, outputs, tmp_path) -> str:
    code = main(
        [
            "train",
            "--teacher-outputs",
            str(outputs),
            "--frames",
            str(K),
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "2",
            *map(str, work["common"]),
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err, err
    return err


def test_outputs_of_other_videos_are_an_error_naming_file_and_videos(work, tmp_path, capsys):
    out, first = _bad_outputs(work, tmp_path, lambda records: records[::-1])  # 16 records: none in its place
    err = _train_error(work, capsys, out, tmp_path)
    assert re.search(r"teacher outputs of record \d+ of .*train-0000[01]-of-00002.tfrecord: are for video", err), err


def test_a_missing_video_is_an_error_naming_it(work, tmp_path, capsys):
    out, first = _bad_outputs(work, tmp_path, lambda records: [])  # every video of the files is missing
    err = _train_error(work, capsys, out, tmp_path)
    assert re.search(r"teacher outputs of record \d+ of .*: missing: .* ends before this video", err), err


def test_another_class_count_and_changed_records_are_refused_before_training(work, tmp_path, capsys):
    out = tmp_path / "classes"
    shutil.copytree(work["root"] / "float16", out)
    manifest = out / "teacher_outputs.json"
    manifest.write_text(manifest.read_text().replace(f'"num_classes": {CLASSES}', '"num_classes": 7'))
    err = _train_error(work, capsys, out, tmp_path)
    assert "the outputs hold 7 classes but the run has 4" in err, err
    out = tmp_path / "sizes"
    shutil.copytree(work["root"] / "float16", out)
    manifest = out / "teacher_outputs.json"
    manifest.write_text(manifest.read_text().replace('"bytes": ', '"bytes": 1'))
    err = _train_error(work, capsys, out, tmp_path)
    assert "the records changed; write the outputs again" in err, err


def test_outputs_only_in_serial_mode_and_not_for_segments():
    from vidistill.distill.config import TrainConfig
    from vidistill.students.student import student_config

    config = TrainConfig(mode="parallel", teacher=TEACHER, student=student_config(TEACHER, k=K), teacher_outputs="x")
    config.data.train = "x"
    with pytest.raises(ConfigError, match="teacher_outputs replace the frozen teacher of a serial run"):
        config.validate()
    with pytest.raises(ConfigError, match="segment mode"):
        read_frame_dataset("x", segment_labels=True, teacher_outputs=TeacherOutputs("d", "s", "t", 4, 2))


def test_a_student_on_stored_outputs_decodes_only_its_k_frames_and_trains_as_on_whole_videos(
    work, tmp_path, monkeypatch
):
    """Where the teacher's outputs are stored nothing runs on the whole video: the reader decodes only the
    student's k frames, and the run trains exactly as one that decodes every frame and lets the student select."""
    from vidistill.commands.train import add_arguments, resolve_config
    from vidistill.distill import trainer
    from vidistill.students.selection import select_frames
    from vidistill.students.student import StudentConfig
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--teacher-outputs", str(work["root"] / "float32"), "--frames", str(K), "--data", work["data"].train]
    argv += ["--out", "unused", "--steps", "3", "--checkpoint-every", "3", "--batch-size", "8"]

    def run(name: str) -> tuple[dict, trainer.Run]:
        config = resolve_config(parser.parse_args(argv))
        config.data.deterministic = True
        assert config.mode == "serial" and config.teacher_outputs
        built = trainer.Run(config, str(tmp_path / name))  # seeds TensorFlow: the same shuffle in both runs
        batch = next(iter(trainer._train_dataset(config)))
        built.train(progress=False)
        return batch, built

    chosen, decoded_k = run("k-frames")
    assert chosen["frames"].shape == (8, K, 1152)  # only the student's frames were decoded
    monkeypatch.setattr(StudentConfig, "frames_to_decode", lambda self, training=False, k=None: None)
    whole, decoded_all = run("whole")
    assert whole["frames"].shape == (8, FRAMES, 1152)
    np.testing.assert_array_equal(chosen["id"], whole["id"])
    for key in ("teacher_predictions", "teacher_representation", "labels"):
        np.testing.assert_array_equal(chosen[key], whole[key], err_msg=key)
    selected, counts = select_frames(whole["frames"], whole["num_frames"], K, "uniform")
    np.testing.assert_array_equal(chosen["frames"], selected)  # the same frames the student selects itself
    np.testing.assert_array_equal(chosen["num_frames"], counts)
    assert decoded_k.step == decoded_all.step == 3
    for a, b in zip(decoded_k.models.student.weights, decoded_all.models.student.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
