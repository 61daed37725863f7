"""The record format both ways: real 2018 video-level files, frame-level round trips, segments, bad input."""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from vidistill.yt8m.errors import ConfigError, DataError
from vidistill.yt8m.quantize import (
    _dequantize_op,
    _dequantize_op_is_exact,
    dequantize,
    dequantize_frames,
    quantize,
)
from vidistill.yt8m.readers import (
    BadRecords,
    detect_format,
    explain,
    list_files,
    read_frame_dataset,
    read_ground_truth,
    read_video_level_dataset,
)
from vidistill.yt8m.records import Segment, Video, write_frame_records, write_records, write_video_level_records

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "yt8m-2018-video-level")
VALIDATE = os.path.join(REAL, "validate00.tfrecord")
TEST = os.path.join(REAL, "test0z.tfrecord")
needs_real = pytest.mark.skipif(
    not os.path.exists(VALIDATE), reason=f"the real YouTube-8M files are not at {os.path.abspath(REAL)}"
)


def _all(ds):
    batches = list(ds)
    return {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}


def _raises_data_error(ds, *fragments):
    with pytest.raises(tf.errors.OpError) as info:
        for _ in ds:
            pass
    error = explain(info.value)
    assert error is not None, str(info.value)
    for fragment in fragments:
        assert fragment in str(error), str(error)
    return str(error)


# ------------------------------------------------------------------------------------------- quantization
def test_dequantize_matches_the_official_formula():
    codes = np.array([0, 1, 127, 128, 255], np.uint8)
    np.testing.assert_allclose(dequantize(codes), codes * (4 / 255) + (4 / 512 - 2), rtol=0, atol=2e-7)  # float32
    assert dequantize(np.array([0], np.uint8))[0] == np.float32(-1.9921875)
    assert dequantize(np.array([255], np.uint8))[0] == np.float32(2.0078125)
    np.testing.assert_allclose(dequantize(tf.constant(codes)).numpy(), dequantize(codes), rtol=0, atol=1e-6)


def test_quantize_clips_and_rounds_half_to_even_like_the_extractor():
    x = np.array([-3.0, -2.0, 2.0, 5.0, 0.0, 1.0])  # 0.0 scales to exactly 127.5: half to even gives 128
    assert quantize(x).tolist() == [0, 0, 255, 255, 128, 191]
    x = np.random.default_rng(0).uniform(-2.2, 2.2, 10_000)
    expected = [int(round((min(max(v, -2), 2) + 2) * 255 / 4)) for v in x]  # the extractor's Python round
    assert quantize(x).tolist() == expected


# ------------------------------------------------------------------------------------------- real 2018 files
@needs_real
def test_real_validate_file_reads_every_record_exactly():
    assert hashlib.sha256(open(VALIDATE, "rb").read()).hexdigest().startswith("cfa532c0")
    data = _all(read_video_level_dataset(VALIDATE, batch_size=100, deterministic=True))
    assert data["features"].shape == (312, 1152) and data["labels"].shape == (312, 3862)
    assert data["id"][0] == b"8O00"
    assert np.flatnonzero(data["labels"][0]).tolist() == [3, 4, 13, 41, 54]
    assert data["labels"].sum() == 1025 and data["labels"].sum(1).min() >= 1 and data["labels"].sum(1).max() <= 13
    assert np.flatnonzero(data["labels"].sum(0)).max() <= 3808
    assert -1.9922 <= data["features"].min() and data["features"].max() <= 2.0079
    # the same values as a plain protobuf parse of the first record
    raw = next(iter(tf.data.TFRecordDataset(VALIDATE))).numpy()
    feature = tf.train.Example.FromString(raw).features.feature
    expected = np.concatenate([feature["mean_rgb"].float_list.value, feature["mean_audio"].float_list.value])
    np.testing.assert_array_equal(data["features"][0], expected.astype(np.float32))


@needs_real
def test_real_test_file_has_no_labels_and_reads():
    data = _all(read_video_level_dataset(TEST, batch_size=128))
    assert data["features"].shape == (305, 1152)
    assert data["labels"].sum() == 0
    assert detect_format(TEST) == "video"


@needs_real
def test_real_ground_truth_and_a_frame_reader_hint():
    truth = read_ground_truth(VALIDATE)
    assert len(truth.labels) == 312 and truth.labels["8O00"] == [3, 4, 13, 41, 54]
    assert sum(len(v) for v in truth.labels.values()) == 1025 and truth.segments == {}
    # every record of a video-level file is bad for the frame reader; which one is named first depends on which of
    # the reader's parallel parse calls fails first (record 1 was seen under load)
    message = _raises_data_error(read_frame_dataset(VALIDATE), "has no 'rgb' frames", "read_video_level_dataset")
    assert re.match(r"record \d+ of \S*validate00\.tfrecord: ", message), message


# ------------------------------------------------------------------------------------------- frame level
def _random_video(rng, vid, n, labels=(1,), segments=()):
    return Video(vid, list(labels), rng.uniform(-2.5, 2.5, (n, 1024)), rng.uniform(-2.5, 2.5, (n, 128)), list(segments))


def test_frame_round_trip_within_one_quantization_step(tmp_path):
    rng = np.random.default_rng(0)
    videos = [_random_video(rng, "a", 7, [0, 5]), _random_video(rng, "bb", 300, [2]), _random_video(rng, "c", 340, [])]
    path = str(tmp_path / "f.tfrecord")
    assert write_frame_records(path, videos) == 3
    data = _all(read_frame_dataset(path, num_classes=6, batch_size=2, deterministic=True))
    assert data["id"].tolist() == [b"a", b"bb", b"c"]
    assert data["num_frames"].tolist() == [7, 300, 300]  # 340 frames truncated to 300
    assert data["frames"].shape == (3, 300, 1152) and data["frames"].dtype == np.float32
    np.testing.assert_array_equal(data["labels"], [[1, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0], [0] * 6])
    for row, video in enumerate(videos):
        n = data["num_frames"][row]
        original = np.clip(np.concatenate([video.rgb, video.audio], 1)[:n], -2, 2)
        assert np.abs(data["frames"][row, :n] - original).max() <= 4 / 255 + 1e-6
        # exactly the official dequantization of the official quantization
        np.testing.assert_array_equal(data["frames"][row, :n], dequantize(quantize(original)))
    assert not data["frames"][0, 7:].any()  # padding rows are exactly 0.0


def test_batches_carry_uint8_codes_and_dequantize_bit_for_bit_once_per_batch(tmp_path):
    """Every code 0..255, both dequantization paths (TensorFlow's one-pass op where exact, else the arithmetic),
    bit for bit the official formula; rows past num_frames +0.0; `dequantize=False` hands out the codes."""
    codes = np.arange(256, dtype=np.uint8).reshape(1, 2, 128).repeat(9, axis=2)[:, :, :1152]
    official = dequantize(codes)
    assert _dequantize_op_is_exact()  # (documented: TensorFlow's kernel runs no fused multiply-add)
    for values in (_dequantize_op(tf.constant(codes)), dequantize(tf.constant(codes))):
        assert np.array_equal(values.numpy().view(np.uint32), official.view(np.uint32))
    padded = dequantize_frames(tf.constant(np.concatenate([codes, codes], 1)), tf.constant([3])).numpy()
    assert np.array_equal(padded[0, :2].view(np.uint32), official[0].view(np.uint32))
    assert np.array_equal(padded[0, 2:3].view(np.uint32), official[0, :1].view(np.uint32))
    assert not padded[0, 3:].view(np.uint32).any()  # +0.0, not -0.0 and not dequantize(0)

    rng = np.random.default_rng(3)
    path = str(tmp_path / "f.tfrecord")
    write_frame_records(path, [_random_video(rng, f"v{i}", n) for i, n in enumerate([4, 300, 17, 340, 1])])
    floats = _all(read_frame_dataset(path, num_classes=2, batch_size=2, deterministic=True))
    raw = _all(read_frame_dataset(path, num_classes=2, batch_size=2, deterministic=True, dequantize=False))
    assert raw["frames"].dtype == np.uint8 and raw["frames"].shape == (5, 300, 1152)
    assert not raw["frames"][0, 4:].any()  # padding: code 0
    again = dequantize_frames(tf.constant(raw["frames"]), tf.constant(raw["num_frames"])).numpy()
    assert np.array_equal(again.view(np.uint32), floats["frames"].view(np.uint32))


@pytest.mark.parametrize("policy", ["uniform", "random", "first", "middle", "last", "fml"])
def test_decoding_only_the_selected_frames_gives_the_students_frames_bit_for_bit(tmp_path, policy):
    """`select` decodes the k frames a student's selector would take; the selector then passes them unchanged."""
    from vidistill.students.selection import select_frames
    from vidistill.students.student import StudentConfig
    from vidistill.teachers.config import config_from_dict

    k = 7
    student = StudentConfig(config_from_dict({"family": "netvlad", "frames": k, "num_classes": 2}), policy, seed=5)
    rng = np.random.default_rng(4)
    path = str(tmp_path / "f.tfrecord")
    write_frame_records(path, [_random_video(rng, f"v{i}", n) for i, n in enumerate([3, 7, 8, 100, 300, 333])])
    whole = _all(read_frame_dataset(path, num_classes=2, batch_size=4, deterministic=True))
    chosen = _all(
        read_frame_dataset(path, num_classes=2, batch_size=4, deterministic=True, select=student.frames_to_decode())
    )
    expected, counts = select_frames(whole["frames"], whole["num_frames"], k, policy, seed=5)
    assert chosen["frames"].shape == (6, k, 1152) and chosen["num_frames"].tolist() == [3, 7, 7, 7, 7, 7]
    assert np.array_equal(chosen["num_frames"], counts.numpy())
    assert np.array_equal(chosen["frames"].view(np.uint32), expected.numpy().view(np.uint32))
    again, same_counts = select_frames(chosen["frames"], chosen["num_frames"], k, policy, seed=5)
    assert np.array_equal(again.numpy().view(np.uint32), chosen["frames"].view(np.uint32))
    assert np.array_equal(same_counts.numpy(), chosen["num_frames"])
    if policy == "random":
        assert student.frames_to_decode(training=True) is None  # training draws afresh: whole videos
        assert chosen["frames"].any()


def test_selected_reading_still_names_and_skips_bad_records(tmp_path):
    from vidistill.students.selection import frames_to_decode

    select = frames_to_decode(4, "uniform")
    path = str(tmp_path / "bad.tfrecord")
    good = _sequence_example(vid=b"good")
    write_records(path, [good, _sequence_example(n=0), _sequence_example(audio_rows=[bytes(128)] * 2), good])
    _raises_data_error(read_frame_dataset(path, num_classes=4, select=select), "record 1 of", "has no 'rgb' frames")
    skipped = BadRecords()
    data = _all(read_frame_dataset(path, num_classes=4, select=select, bad_records=skipped))
    assert data["id"].tolist() == [b"good", b"good"] and skipped.count == 2
    assert data["frames"].shape == (2, 4, 1152) and data["num_frames"].tolist() == [3, 3]
    with pytest.raises(ConfigError, match="segment_labels"):
        read_frame_dataset(path, num_classes=4, select=select, segment_labels=True)


def test_max_frames_and_deterministic_shuffle(tmp_path):
    rng = np.random.default_rng(1)
    for shard in range(3):
        write_frame_records(
            str(tmp_path / f"s{shard}.tfrecord"), [_random_video(rng, f"{shard}-{i}", 12) for i in range(8)]
        )
    pattern = str(tmp_path / "s*.tfrecord")

    def shuffled():
        return read_frame_dataset(
            pattern, max_frames=10, batch_size=5, shuffle=True, deterministic=True, seed=3, num_classes=4
        )

    first, second = _all(shuffled()), _all(shuffled())
    assert first["frames"].shape == (24, 10, 1152) and set(first["num_frames"]) == {10}
    assert first["id"].tolist() == second["id"].tolist()  # the same order on every run
    assert sorted(first["id"].tolist()) == sorted(f"{s}-{i}".encode() for s in range(3) for i in range(8))
    assert first["id"].tolist() != sorted(first["id"].tolist())  # and actually shuffled
    two_epochs = _all(read_frame_dataset(pattern, batch_size=8, num_epochs=2, num_classes=4))
    assert len(two_epochs["id"]) == 48


def test_segment_mode_yields_rated_five_frame_segments(tmp_path):
    rng = np.random.default_rng(2)
    video = _random_video(rng, "v", 23, [1, 3], [Segment(5, 3, 1.0), Segment(20, 3, 0.0), Segment(5, 1, 0.0)])
    path = str(tmp_path / "seg.tfrecord")
    write_frame_records(path, [video])
    full = _all(read_frame_dataset(path, num_classes=4, batch_size=1))
    segs = _all(read_frame_dataset(path, num_classes=4, batch_size=8, segment_labels=True))
    assert segs["segment_start"].tolist() == [5, 20]  # one element per unique start time
    assert segs["frames"].shape == (2, 5, 1152)
    np.testing.assert_array_equal(segs["frames"][0], full["frames"][0, 5:10])
    np.testing.assert_array_equal(segs["frames"][1, :3], full["frames"][0, 20:23])
    assert not segs["frames"][1, 3:].any()  # past the video's end: padding
    assert segs["num_frames"].tolist() == [5, 3]
    np.testing.assert_array_equal(segs["labels"], [[0, 0, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(segs["label_weights"], [[0, 1, 0, 1], [0, 0, 0, 1]])
    assert segs["id"].tolist() == [b"v", b"v"]
    truth = read_ground_truth(path, num_classes=4)
    assert truth.segments == {3: {"v:5": 1.0, "v:20": 0.0}, 1: {"v:5": 0.0}}


def test_video_level_writer_holds_means_of_dequantized_frames(tmp_path):
    rng = np.random.default_rng(3)
    video = _random_video(rng, "m", 9, [2])
    path = str(tmp_path / "v.tfrecord")
    write_video_level_records(path, [video])
    data = _all(read_video_level_dataset(path, num_classes=3))
    expected = dequantize(quantize(np.concatenate([video.rgb, video.audio], 1))).mean(0)
    np.testing.assert_allclose(data["features"][0], expected, atol=1e-6)
    assert data["labels"].tolist() == [[0, 0, 1]] and detect_format(path) == "video"


# ------------------------------------------------------------------------------------------- bad input
def _sequence_example(vid=b"x", labels=(0,), rgb_rows=None, audio_rows=None, n=3):
    example = tf.train.SequenceExample()
    if vid is not None:
        example.context.feature["id"].bytes_list.value.append(vid)
    example.context.feature["labels"].int64_list.value.extend(labels)
    for name, rows, size in (("rgb", rgb_rows, 1024), ("audio", audio_rows, 128)):
        for row in rows if rows is not None else [bytes(size)] * n:
            example.feature_lists.feature_list[name].feature.add().bytes_list.value.append(row)
    return example.SerializeToString()


@pytest.mark.parametrize(
    "record, fragments",
    [
        (
            _sequence_example(rgb_rows=[bytes(1024), bytes(1000)], audio_rows=[bytes(128)] * 2),
            ["'rgb' frame 1 has 1000 bytes, expected 1024"],
        ),
        (_sequence_example(audio_rows=[bytes(128)] * 2), ["has 3 rgb frames but 2 audio frames"]),
        (_sequence_example(vid=None), ["has no context feature 'id'"]),
        (_sequence_example(labels=(0, 4)), ["'labels' holds an id outside [0, 4)", "num_classes"]),
        (_sequence_example(labels=(-1,)), ["outside [0, 4)"]),
        (_sequence_example(n=0), ["has no 'rgb' frames"]),
    ],
    # named: a serialized record's bytes depend on map order, which differs between processes (xdist's workers
    # must collect the same test ids)
    ids=["short-rgb-frame", "frame-count-mismatch", "no-id", "label-too-large", "negative-label", "no-frames"],
)
def test_bad_frame_records_raise_naming_file_and_record(tmp_path, record, fragments):
    good = _sequence_example(vid=b"good")
    path = str(tmp_path / "bad.tfrecord")
    write_records(path, [good, record, good])
    message = _raises_data_error(read_frame_dataset(path, num_classes=4), "record 1 of", path, *fragments)
    assert "bad_records=BadRecords()" in message
    skipped = BadRecords()
    data = _all(read_frame_dataset(path, num_classes=4, bad_records=skipped))
    assert data["id"].tolist() == [b"good", b"good"] and skipped.count == 1


def test_a_bad_record_is_named_even_when_its_file_is_gone_before_the_message(tmp_path):
    """Strict mode builds a message after the failure, by reading the record again: a file removed meanwhile still
    gives the file and record, and the hint."""
    path = str(tmp_path / "bad.tfrecord")
    write_records(path, [_sequence_example(vid=b"good"), _sequence_example(n=0)])
    with pytest.raises(tf.errors.OpError) as info:
        list(read_frame_dataset(path, num_classes=4))
    os.remove(path)
    message = str(explain(info.value))
    assert message.startswith(f"record 1 of {path}: failed a check, and it cannot be read now"), message
    assert "bad_records=BadRecords()" in message


def test_truncated_and_corrupt_files_are_named(tmp_path):
    rng = np.random.default_rng(4)
    path = str(tmp_path / "ok.tfrecord")
    write_frame_records(path, [_random_video(rng, f"v{i}", 5) for i in range(4)])
    blob = open(path, "rb").read()
    truncated = str(tmp_path / "truncated.tfrecord")
    open(truncated, "wb").write(blob[:-100])
    corrupt = str(tmp_path / "corrupt.tfrecord")
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF
    open(corrupt, "wb").write(bytes(flipped))
    _raises_data_error(read_frame_dataset(truncated, num_classes=2), truncated, "only its first 3 record(s)")
    _raises_data_error(read_frame_dataset(corrupt, num_classes=2), corrupt, "corrupt or truncated")
    skipped = BadRecords()
    data = _all(
        read_frame_dataset(str(tmp_path / "*.tfrecord"), num_classes=2, bad_records=skipped, deterministic=True)
    )
    assert skipped.count == 2 and len(data["id"]) == 4 + 3 + 2
    with pytest.raises(DataError, match=r"truncated.tfrecord: corrupt or truncated"):
        read_ground_truth(truncated, num_classes=2)


def test_bad_video_level_records(tmp_path):
    path = str(tmp_path / "v.tfrecord")
    example = tf.train.Example()
    example.features.feature["id"].bytes_list.value.append(b"short")
    example.features.feature["mean_rgb"].float_list.value.extend([0.0] * 1000)
    example.features.feature["mean_audio"].float_list.value.extend([0.0] * 128)
    write_records(path, [example.SerializeToString()])
    _raises_data_error(read_video_level_dataset(path), "record 0 of", "'mean_rgb' has 1000 values, expected 1024")
    frame_file = str(tmp_path / "f.tfrecord")
    write_records(frame_file, [_sequence_example()])
    _raises_data_error(read_video_level_dataset(frame_file), "'mean_rgb' has 0 values", "read_frame_dataset")


def test_an_empty_file_is_an_error_everywhere_it_is_read(tmp_path, capsys):
    """A 0-byte tfrecord made `train` spin forever (a repeated empty dataset) and `eval` print metrics of 0 videos."""
    from vidistill.cli import main

    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    good = str(tmp_path / "good.tfrecord")
    write_records(good, [_sequence_example()])
    message = f"{empty} holds no records (it is empty)"
    for pattern in (str(empty), f"{good},{empty}", str(tmp_path / "*.tfrecord")):
        with pytest.raises(DataError, match=re.escape(message)):
            list_files(pattern)
    with pytest.raises(DataError, match=re.escape(message)):
        read_frame_dataset(str(empty))
    with pytest.raises(DataError, match=re.escape(message)):
        read_video_level_dataset(str(empty))
    with pytest.raises(DataError, match=re.escape(message)):
        read_ground_truth(str(empty))
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path / "run"),
                "--data",
                str(empty),
                "--teacher",
                "hlstm-small",
                "--frames",
                "10",
                "--steps",
                "2",
            ]
        )
        == 2
    )
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_no_matching_file_and_ground_truth_errors(tmp_path):
    with pytest.raises(DataError, match="no file matches"):
        list_files(str(tmp_path / "nothing-*.tfrecord"))
    with pytest.raises(DataError, match="no file matches"):
        read_frame_dataset(str(tmp_path / "nothing-*.tfrecord"))
    path = str(tmp_path / "dup.tfrecord")
    write_records(path, [_sequence_example(vid=b"same"), _sequence_example(vid=b"same")])
    with pytest.raises(DataError, match=r"record 1 of .*dup.tfrecord: video id 'same' appears twice"):
        read_ground_truth(path)
    labels = str(tmp_path / "labels.tfrecord")
    write_records(labels, [_sequence_example(labels=(7,))])
    with pytest.raises(DataError, match=r"record 0 of .*label id 7 is outside \[0, 5\)"):
        read_ground_truth(labels, num_classes=5)
