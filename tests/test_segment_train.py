"""The segment task end to end: fine-tuning a video-level run on rated 5-frame segments (`train --segments
--init RUN`, models built for 5 frames with the init run's weights, only rated classes in the loss), and shift
test-time augmentation (`eval / predict --segments --shift`, windows clipped at the video's ends)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from vidistill.cli import build_parser, main
from vidistill.distill.config import DataConfig, TrainConfig, load_train_config, save_train_config
from vidistill.distill.segments import segment_model_config
from vidistill.students.student import student_config
from vidistill.teachers.config import HLSTMConfig, RNNConfig, save_config
from vidistill.yt8m.constants import SEGMENT_FRAMES
from vidistill.yt8m.errors import ConfigError

CLASSES, FRAMES = 4, 40
TINY = HLSTMConfig(
    num_classes=CLASSES, frames=FRAMES, chunks=4, lower_cells=8, upper_cells=8, lower_layers=1, upper_layers=1
)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str, command: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"vidistill {command}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def data(synth_data):
    """Segment-rated records (`vidistill synth --segments` rates segments in both splits)."""
    return synth_data(videos=24, heldout=16, max_frames=FRAMES, segments=True)


def _fake_run(path, model, mode: str = "teacher") -> str:
    """A run directory as `vidistill train` leaves it (config.yaml, one checkpoint) of untrained models."""
    from vidistill.distill.trainer import CHECKPOINTS, build_models

    config = TrainConfig(
        mode=mode,
        teacher=model if mode != "student" else None,
        student=student_config(model, k=6) if mode != "teacher" else None,
        data=DataConfig(train="unused", max_frames=model.frames),
    )
    models = build_models(config)
    os.makedirs(path)
    save_train_config(config, str(path))
    tf.train.CheckpointManager(models.checkpoint(), os.path.join(path, CHECKPOINTS), 1).save(checkpoint_number=1)
    return str(path)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    return _fake_run(tmp_path_factory.mktemp("init") / "teacher", TINY)


@pytest.fixture(scope="module")
def parallel_run(tmp_path_factory, data):
    """A video-level parallel run (teacher and a 6-frame student) trained for 2 steps from the CLI."""
    folder = tmp_path_factory.mktemp("parallel")
    save_config(TINY, str(folder / "tiny.yaml"))
    out = folder / "run"
    argv = ["train", "--out", out, "--data", data.train, "--teacher", folder / "tiny.yaml", "--frames", "6"]
    assert main([str(a) for a in argv + ["--steps", "2", "--batch-size", "8", "--checkpoint-every", "2"]]) == 0
    return str(out)


def _resolve(*argv):
    from vidistill.commands.train import resolve_config

    return resolve_config(build_parser().parse_args(["train", *map(str, argv)]))


# ------------------------------------------------------------------------------------------- the model rule
def test_segment_models_have_the_video_models_weights():
    from vidistill.teachers.config import NetVLADConfig, NeXtVLADConfig, TransformerConfig
    from vidistill.teachers.registry import build_model

    small = dict(num_classes=CLASSES, frames=FRAMES)
    for config in (
        TINY,
        RNNConfig(**small, cells=8, layers=1),
        NetVLADConfig(**small, clusters=4, hidden=8),
        NeXtVLADConfig(**small, expansion=1, groups=2, clusters=4, hidden=8, se_reduction=2),
        TransformerConfig(**small, layers=1, heads=2, head_size=4),
    ):
        segment = segment_model_config(config)
        assert segment.frames == SEGMENT_FRAMES and segment_model_config(segment) == segment  # idempotent
        shapes = [[tuple(w.shape) for w in build_model(c).weights] for c in (config, segment)]
        assert shapes[0] == shapes[1], config.family
    assert segment_model_config(TINY).chunks == 2  # default_chunks(5)


def test_a_few_frame_segment_student_keeps_its_k():
    """A student of k < 5 frames picks k of each segment's 5 (a cheaper segment model); k >= 5 takes all 5."""
    from vidistill.distill.segments import segment_student_config
    from vidistill.students.student import student_config

    two = segment_student_config(student_config(TINY, k=2))
    assert (two.k, two.model.chunks, two.policy) == (2, 1, "uniform")
    assert segment_student_config(two) == two
    assert segment_student_config(student_config(TINY, k=8)).k == SEGMENT_FRAMES


def test_segment_config_rules():
    segment = TrainConfig(mode="teacher", teacher=segment_model_config(TINY), data=DataConfig(train="x", segments=True))
    segment.validate()  # videos read at 300 frames, the teacher takes 5
    assert load_train_config_roundtrip(segment).data.segments
    with pytest.raises(ConfigError, match="fewer than a segment's 5"):
        TrainConfig(
            mode="teacher", teacher=HLSTMConfig(frames=3, chunks=1), data=DataConfig(train="x", segments=True)
        ).validate()
    with pytest.raises(ConfigError, match="set them equal"):  # video runs: as before
        TrainConfig(mode="teacher", teacher=segment_model_config(TINY), data=DataConfig(train="x")).validate()


def load_train_config_roundtrip(config):
    """The config as a run's config.yaml gives it back."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        save_train_config(config, folder)
        return load_train_config(folder)


def test_init_takes_the_models_and_mode_of_the_run(tmp_path, teacher_run):
    student_run = _fake_run(tmp_path / "student", TINY, mode="student")
    parallel = _fake_run(tmp_path / "parallel", TINY, mode="parallel")
    common = ("--out", tmp_path / "new", "--data", "x", "--segments")
    config = _resolve("--init", teacher_run, *common)
    assert (config.mode, config.student, config.init) == ("teacher", None, teacher_run)
    assert (config.teacher.frames, config.teacher.chunks, config.data.max_frames) == (5, 2, FRAMES)
    assert load_train_config_roundtrip(config).init == teacher_run
    config = _resolve("--init", student_run, *common)
    assert (config.mode, config.teacher, config.student.k, config.student.policy) == ("student", None, 5, "uniform")
    config = _resolve("--init", parallel, *common)  # a two-model run: its student, alone
    assert (config.mode, config.teacher, config.student.k) == ("student", None, 5)
    config = _resolve("--init", parallel, *common, "--mode", "parallel")
    assert (config.mode, config.teacher.frames, config.student.k) == ("parallel", 5, 5)
    config = _resolve("--init", parallel, "--out", tmp_path / "new", "--data", "x")  # no --segments: as it was
    assert (config.student.k, config.data.max_frames, config.data.segments) == (6, FRAMES, False)


# ------------------------------------------------------------------------------------------ fine-tuning
@pytest.mark.slow
def test_segment_fine_tune_end_to_end(tmp_path, capsys, monkeypatch, data, parallel_run):
    out = tmp_path / "segments"
    code, printed, err = _run(
        capsys, "train", "--segments", "--init", parallel_run, "--out", out, "--data", data.train,
        "--eval-data", data.heldout, "--steps", "2", "--batch-size", "8", "--checkpoint-every", "2",
    )  # fmt: skip
    assert code == 0, err
    assert "segment MAP" in printed
    config = load_train_config(str(out))
    assert (config.mode, config.init, config.data.segments, config.student.k) == ("student", parallel_run, True, 5)
    last = [json.loads(line) for line in open(out / "metrics.jsonl")][-1]
    assert last["step"] == 2 and "gap" not in last
    assert tf.train.latest_checkpoint(str(out / "checkpoints" / "best"))  # kept by segment MAP
    # eval's segment MAP with shift TTA, and the logged one, against the windows by hand, scored by the model eval
    # loaded (the step-2 student: the run's only checkpoint; a second model would cost its build and trace)
    from vidistill.distill import runs

    loaded, load_model = [], runs.load_model

    def spied(*args, **kwargs):
        loaded.append(load_model(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(runs, "load_model", spied)
    code, printed, err = _run(capsys, "eval", out, "--data", data.heldout, "--segments", "--shift", "-1,0,1", "--json")
    assert code == 0, err
    monkeypatch.undo()
    (model,) = [run.model for run in loaded]
    plain, shifted = (_segment_map_by_hand(model, data.heldout, shifts) for shifts in ((0,), (-1, 0, 1)))
    assert plain != shifted  # the data tells the shifted windows from the segments
    assert last["segment_map"] == pytest.approx(plain, rel=1e-12)
    assert json.loads(printed)["map"] == pytest.approx(shifted, rel=1e-12)
    code, _, err = _run(capsys, "train", "--out", out, "--resume", "--steps", "3")  # its config.yaml, unchanged
    assert code == 0, err
    assert [json.loads(line)["step"] for line in open(out / "train.jsonl")] == [2, 3]


def _segment_map_by_hand(model, pattern: str, shifts) -> float:
    """The Kaggle 2019 segment MAP of `model` on the rated segments of `pattern`, straight from the records (the
    ratings from each SequenceExample's context, the frames dequantized from its byte lists): each segment scored by
    `_by_hand`'s windows (video by video), each rated class's segments ranked by their scores (segment_metrics)."""
    import glob

    from vidistill.yt8m.quantize import dequantize
    from vidistill.yt8m.segment_metrics import segment_map

    scores, truth = {}, {}
    for record in tf.data.TFRecordDataset(sorted(glob.glob(pattern))):
        example = tf.train.SequenceExample.FromString(record.numpy())
        context, lists = example.context.feature, example.feature_lists.feature_list
        video_id = context["id"].bytes_list.value[0].decode()
        frames = np.concatenate(
            [
                dequantize(np.stack([np.frombuffer(f.bytes_list.value[0], np.uint8) for f in lists[name].feature]))
                for name in ("rgb", "audio")
            ],
            axis=1,
        )[:FRAMES]
        ratings = list(
            zip(
                context["segment_start_times"].int64_list.value,
                context["segment_labels"].int64_list.value,
                context["segment_scores"].float_list.value,
            )
        )
        starts = sorted({start for start, _, _ in ratings})
        for start, score in zip(starts, _by_hand(model, frames, len(frames), starts, shifts, SEGMENT_FRAMES)):
            scores[f"{video_id}:{start}"] = score
        for start, label, rating in ratings:
            truth.setdefault(int(label), {})[f"{video_id}:{start}"] = float(rating)
    order = {c: sorted(rated, key=lambda i: -scores[i][c]) for c, rated in truth.items()}
    result = segment_map(truth, order)
    assert len(scores) > 2 * CLASSES and result["num_classes_scored"] >= 2
    return result["map"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["student", "teacher", "parallel"])
def test_restored_weights_are_the_init_runs(tmp_path, data, parallel_run, mode):
    from vidistill.distill.runs import load_model
    from vidistill.distill.trainer import Run

    config = _resolve("--segments", "--init", parallel_run, "--mode", mode, "--out", tmp_path, "--data", data.heldout)
    run = Run(config, str(tmp_path))  # built and restored; no step taken
    for role in ("teacher", "student"):
        model = getattr(run.models, role)
        if model is None:
            continue
        assert model.input["frames"].shape[1] == (SEGMENT_FRAMES if role == "teacher" else None)
        expected = load_model(parallel_run, role).model.get_weights()
        restored = model.get_weights()
        assert len(restored) == len(expected) > 0
        assert all(np.array_equal(a, b) for a, b in zip(restored, expected)), role


def test_label_weights_leave_unrated_classes_out_of_the_loss(data):
    from vidistill.distill.distiller import Distiller
    from vidistill.distill.losses import LossWeights
    from vidistill.distill.trainer import _train_dataset
    from vidistill.teachers.registry import build_model

    config = TrainConfig(
        mode="teacher",
        teacher=segment_model_config(TINY),
        data=DataConfig(train=data.heldout, max_frames=FRAMES, batch_size=16, segments=True),
    )
    batch = next(iter(_train_dataset(config)))
    assert batch["frames"].shape == (16, SEGMENT_FRAMES, 1152) and "label_weights" in batch
    tf.random.set_seed(0)
    distiller = Distiller("teacher", build_model(config.teacher), None, LossWeights())
    weights = batch["label_weights"].numpy()
    assert 0 < weights.sum() < weights.size  # some classes rated, some not
    loss = distiller.compute_losses(batch, training=False)["loss"].numpy()
    unrated = {**batch, "labels": np.where(weights == 0, 1.0 - batch["labels"].numpy(), batch["labels"].numpy())}
    assert distiller.compute_losses(unrated, training=False)["loss"].numpy() == loss  # exactly
    rated = {**batch, "labels": np.where(weights == 1, 1.0 - batch["labels"].numpy(), batch["labels"].numpy())}
    assert distiller.compute_losses(rated, training=False)["loss"].numpy() != loss


def test_a_family_that_keeps_its_frames_gets_padded_segments(data):
    from vidistill.distill.trainer import _train_dataset

    config = TrainConfig(
        mode="teacher", teacher=TINY, data=DataConfig(train=data.heldout, max_frames=FRAMES, segments=True)
    )
    config.validate()
    batch = next(iter(_train_dataset(config)))
    assert batch["frames"].shape[1:] == (FRAMES, 1152) and not batch["frames"].numpy()[:, SEGMENT_FRAMES:].any()


# ------------------------------------------------------------------------------------- shift augmentation
def _hand_made(tmp_path) -> str:
    """One video of 11 frames rated at starts 0 (a window shifted by -1 is clipped at the start), 3 (never
    clipped) and 10 (shifted by -1: 2 frames; by 0: 1; by +1: none, left out)."""
    from vidistill.yt8m.records import Segment, Video, write_frame_records

    rng = np.random.default_rng(7)
    segments = [Segment(0, 1, 1.0), Segment(3, 2, 0.0), Segment(10, 1, 1.0), Segment(10, 3, 0.0)]
    path = str(tmp_path / "hand.tfrecord")
    write_frame_records(
        path, [Video("v", [1], rng.uniform(-2, 2, (11, 1024)), rng.uniform(-2, 2, (11, 128)), segments)]
    )
    return path


def _by_hand(model, video: np.ndarray, num_frames: int, starts, shifts, length: int) -> np.ndarray:
    """Each segment's mean of the model's scores of its windows [start + s, start + s + 5) clipped to
    [0, num_frames), over the windows that keep a frame. The windows go through the model as one batch (segment by
    segment, shift by shift), as the evaluation feeds them: a batch of other rows may round the last bit of a
    score differently."""
    from vidistill.teachers.inference import predictions_of

    windows = np.zeros((len(starts) * len(shifts), length, video.shape[1]), np.float32)
    counts = np.zeros(len(windows), np.int32)
    for row, (start, s) in enumerate((start, s) for start in starts for s in shifts):
        kept = [t for t in range(start + s, start + s + SEGMENT_FRAMES) if 0 <= t < num_frames]
        windows[row, : len(kept)] = video[kept]
        counts[row] = len(kept)
    scores = predictions_of(model, windows, counts).numpy().reshape(len(starts), len(shifts), -1)
    counts = counts.reshape(len(starts), len(shifts))
    means = []
    for segment, held in zip(scores, counts):
        kept = [score for score, count in zip(segment, held) if count > 0]
        total = kept[0]
        for score in kept[1:]:
            total = total + score
        means.append(total / np.float32(len(kept)))
    return np.stack(means)


@pytest.mark.parametrize("length", [SEGMENT_FRAMES, FRAMES])  # a segment model, and a video model (padded)
def test_shift_average_equals_the_windows_by_hand(tmp_path, length):
    from vidistill.distill.evaluate import all_segment_predictions, rated_segment_predictions
    from vidistill.teachers.registry import build_model
    from vidistill.yt8m.readers import read_frame_dataset

    path = _hand_made(tmp_path)
    tf.random.set_seed(1)
    model = build_model(TINY if length == FRAMES else segment_model_config(TINY))
    video = next(iter(read_frame_dataset(path, num_classes=CLASSES, max_frames=FRAMES)))["frames"].numpy()[0]
    shifts = (-1, 0, 1)
    ids, scores, labels, weights = rated_segment_predictions(
        model, path, num_classes=CLASSES, max_frames=FRAMES, shifts=shifts
    )
    assert ids == ["v:0", "v:3", "v:10"]
    np.testing.assert_array_equal(weights, [[0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 1]])
    np.testing.assert_array_equal(scores, _by_hand(model, video, 11, (0, 3, 10), shifts, length))
    chunk_ids, chunk_scores = all_segment_predictions(
        model, path, num_classes=CLASSES, max_frames=FRAMES, shifts=shifts
    )
    assert chunk_ids == ["v:0", "v:5", "v:10"]
    np.testing.assert_array_equal(chunk_scores, _by_hand(model, video, 11, (0, 5, 10), shifts, length))
    # the same windows as the rated segments 0 and 10 (in a batch with other rows: equal to the last bit or so)
    np.testing.assert_allclose(chunk_scores[[0, 2]], scores[[0, 2]], rtol=1e-6)


@pytest.mark.parametrize("length", [SEGMENT_FRAMES, FRAMES])
def test_shift_zero_is_the_segment_itself(data, length):
    from vidistill.distill.evaluate import rated_segment_predictions
    from vidistill.teachers.inference import predictions_of
    from vidistill.teachers.registry import build_model
    from vidistill.yt8m.readers import read_frame_dataset

    tf.random.set_seed(2)
    model = build_model(TINY if length == FRAMES else segment_model_config(TINY))
    _, scores, _, _ = rated_segment_predictions(model, data.heldout, num_classes=CLASSES, max_frames=FRAMES)
    expected = []  # the segments as the reader cuts them, padded to the model's length
    segments = dict(batch_size=64, segment_labels=True, deterministic=True)
    for batch in read_frame_dataset(data.heldout, num_classes=CLASSES, max_frames=FRAMES, **segments):
        frames = tf.pad(batch["frames"], [[0, 0], [0, length - SEGMENT_FRAMES], [0, 0]])
        expected.append(predictions_of(model, frames, batch["num_frames"]).numpy())
    np.testing.assert_array_equal(scores, np.concatenate(expected))


def test_shift_lists_are_checked(capsys):
    from vidistill.yt8m.segment_windows import check_shifts, parse_shifts

    assert parse_shifts("-1,0,1") == (-1, 0, 1) and parse_shifts(" 2 , -4") == (2, -4)
    for text, fragment in (("5", "moves the window off"), ("-1,0,-1", "given twice"), ("0.5", "whole number")):
        for command in ("eval", "predict"):
            out = ["--out", "x.csv"] if command == "predict" else []
            code, _, err = _run(capsys, command, "no-run", "--data", "x", *out, "--segments", "--shift", text)
            assert code == 2
            _one_line_error(err, command, "--shift", fragment)
    code, _, err = _run(capsys, "eval", "no-run", "--data", "x", "--shift", "-1,0")
    assert code == 2
    _one_line_error(err, "eval", "--shift", "--segments")
    with pytest.raises(ConfigError, match="at least one"):
        check_shifts(())


# --------------------------------------------------------------------------------------------- bad input
def test_segments_on_data_without_segment_ratings(tmp_path, capsys, synth_data, teacher_run):
    plain = synth_data()  # no segment ratings
    capsys.readouterr()
    out = tmp_path / "run"
    code, _, err = _run(capsys, "train", "--segments", "--init", teacher_run, "--out", out, "--data", plain.train)
    assert code == 2 and not out.exists()
    _one_line_error(err, "train", "record 0 of", "train-", "has no segment ratings", "segment-rated", "--data")


def test_init_errors(tmp_path, capsys, data, teacher_run):
    rnn, wide = tmp_path / "rnn.yaml", tmp_path / "wide.yaml"
    save_config(RNNConfig(num_classes=CLASSES, frames=FRAMES, cells=8, layers=1), str(rnn))
    save_config(HLSTMConfig(num_classes=CLASSES, frames=FRAMES, chunks=4, lower_cells=16, upper_cells=8), str(wide))
    not_a_run, a_file = tmp_path / "empty", tmp_path / "file.txt"
    not_a_run.mkdir()
    a_file.write_text("x")
    cases = [
        (["--init", teacher_run, "--mode", "teacher", "--teacher", rnn], ["its teacher is a hlstm model", "rnn"]),
        (["--init", teacher_run, "--num-classes", "7"], ["4 classes", "has 7", "--num-classes 4"]),
        (["--init", teacher_run, "--mode", "student"], ["'teacher' run", "no student", "--mode teacher"]),
        (["--init", teacher_run, "--mode", "teacher", "--teacher", wide], ["weights do not fit"]),
        (["--init", tmp_path / "missing"], ["no such run directory"]),
        (["--init", not_a_run], ["not a training run", "config.yaml"]),
        (["--init", a_file], ["is a file"]),
    ]
    for flags, fragments in cases:
        out = tmp_path / "out"
        code, _, err = _run(capsys, "train", "--segments", *flags, "--out", out, "--data", data.heldout)
        assert code == 2, flags
        _one_line_error(err, "train", "--init", *fragments)
