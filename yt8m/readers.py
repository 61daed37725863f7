"""Reading YouTube-8M TFRecords into model-ready tf.data pipelines.

Every record travels with its file and index, so that a bad one is reported by name ("record 17 of
gs://.../train0093.tfrecord: rgb frame has 1000 bytes, expected 1024"). Files are checked whole: the bytes of
the records read must add up to the file size, so a truncated or corrupt file is an error naming it, where
TensorFlow's own DataLossError names only a byte offset. By default bad input raises; pass a `BadRecords`
to skip bad records instead and count them.
"""

from __future__ import annotations

import functools
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import tensorflow as tf

from vidistill.yt8m.constants import AUDIO_SIZE, MAX_FRAMES, NUM_CLASSES, RGB_SIZE
from vidistill.yt8m.errors import ConfigError, DataError
from vidistill.yt8m.quantize import dequantize_frames
from vidistill.yt8m.segment_windows import check_shifts, cut_windows, window_rows
from vidistill.yt8m.teacher_outputs import TeacherOutputs

_RECORD_OVERHEAD = 16  # TFRecord framing: length (8) + length crc (4) + data crc (4)
_MESSAGE_TAG = "yt8m-data-error"
_REPLAY_TAG = "yt8m-bad-record"  # a failed check that carries only where it failed (see _check)
_REPLAYED = re.compile(rf"\[{_REPLAY_TAG}\] \[([^\]]*)\] \[(\d+)\] \[(.*?)\](?: \[(\d+)\] \[(\d+)\])?\n")
_SKIP_HINT = (
    "fix or regenerate the file, or skip bad records (--skip-bad-records; in Python pass bad_records=BadRecords())"
)


def list_files(pattern: str) -> list[str]:
    """Comma-separated globs, local or gs:// (tf.io.gfile) -> sorted file list; DataError if nothing matches."""
    files: list[str] = []
    for part in (p.strip() for p in pattern.split(",")):
        if part:
            files.extend(sorted(tf.io.gfile.glob(part)))
    if not files:
        raise DataError(f"no file matches {pattern!r}: check the path (comma-separate several globs; gs:// works)")
    files = list(dict.fromkeys(files))
    for path in files:  # an empty file would make a repeated dataset spin forever, or metrics of 0 videos
        if tf.io.gfile.stat(path).length == 0:
            raise DataError(f"{path} holds no records (it is empty): regenerate it, or leave it out of {pattern!r}")
    return files


class BadRecords:
    """Opt-in skipping: a reader given one skips bad records (printing why) and counts them here."""

    def __init__(self) -> None:
        self._count = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_records")

    @property
    def count(self) -> int:
        return int(self._count.numpy())

    def _add(self, bad: tf.Tensor) -> tf.Tensor:
        return self._count.assign_add(tf.cast(bad, tf.int64))

    def summary(self) -> str:
        return f"skipped {self.count} bad record(s)" if self.count else "no bad records"


def explain(error: Exception) -> DataError | None:
    """The DataError behind a TensorFlow error raised while iterating a reader's dataset, if there is one."""
    replayed = _REPLAYED.search(str(error) + "\n")
    if replayed:
        return _replay(*replayed.groups())
    match = re.search(rf"{_MESSAGE_TAG}: (.*?{re.escape(_SKIP_HINT)})", str(error), flags=re.DOTALL)
    return DataError(match.group(1).replace("\\'", "'").replace('\\"', '"')) if match else None


@contextmanager
def data_errors():
    """Turns a reader's TensorFlow assertion error, raised while iterating in Python, into its DataError."""
    try:
        yield
    except tf.errors.OpError as e:
        error = explain(e)
        if error is None:
            raise
        raise error from None


def _replay(kind: str, index: str, path: str, consumed: str | None, size: str | None) -> DataError:
    """The message of a check that failed in strict mode, built now: from its numbers, or by reading the record
    again and running its parser with messages (the same checks, in Python's eager mode)."""
    if kind == "end":
        return DataError(
            f"{path}: corrupt or truncated: only its first {index} record(s) could be read ({consumed} of {size} "
            f"bytes); {_SKIP_HINT}"
        )
    name, *numbers = kind.split()
    try:
        record = next(iter(tf.data.TFRecordDataset(path).skip(int(index)).take(1)))
    except (tf.errors.OpError, StopIteration) as e:
        now = f"it cannot be read now ({type(e).__name__})" if isinstance(e, tf.errors.OpError) else "it is gone"
        return DataError(f"record {index} of {path}: failed a check, and {now} to say which; {_SKIP_HINT}")
    options = dict(zip(("num_classes", "max_frames", "segments"), map(int, numbers)))
    parse = _parse_frame_record if name == "frame" else _parse_video_record
    if name == "frame":
        options.update(segments=bool(options["segments"]), select=None)
    try:
        parse(tf.constant(path), tf.constant(int(index), tf.int64), record, bad_records=None, replay=False, **options)
    except tf.errors.OpError as e:
        error = explain(e)
        if error is not None:
            return error
    return DataError(f"record {index} of {path}: failed a check that passes when read again (was the file changed?)")


def _check(valid, message_fn, where, bad_records: BadRecords | None, replay=None):
    """Raises (strict mode) or counts and prints (skip mode) when `valid` is False; returns `valid`.

    Strict mode with `replay` ([kind, record index, path, ...]): the assertion carries only those, so that no
    message is built while every record passes; `explain` builds it on failure (`_replay`)."""
    if bad_records is None and replay is not None:
        with tf.control_dependencies([tf.debugging.Assert(valid, [_REPLAY_TAG, *replay])]):
            return tf.identity(valid)
    problem = tf.cond(valid, lambda: tf.constant(""), lambda: tf.strings.join([where, ": ", message_fn()]))
    if bad_records is None:
        message = tf.strings.join([f"{_MESSAGE_TAG}: ", problem, f"; {_SKIP_HINT}"])
        with tf.control_dependencies([tf.debugging.Assert(valid, [message])]):
            return tf.identity(valid)
    with tf.control_dependencies([bad_records._add(tf.logical_not(valid))]):
        printed = tf.cond(
            valid, tf.no_op, lambda: tf.print(tf.strings.join(["skipping ", problem]), output_stream=sys.stderr)
        )
    with tf.control_dependencies([printed]):
        return tf.identity(valid)


def _keep_record(keep, index, record):
    return keep


def _file_records(path, size, bad_records: BadRecords | None, outputs_path=None):
    """(path, index, record) for each record of one file, then a check that the file was read to its end; with
    `outputs_path` (teacher outputs), (path, index, record, outputs record): the outputs file's records in step,
    an empty string past its end (the parser's check names the missing video)."""
    records = tf.data.TFRecordDataset(path).ignore_errors()  # a DataLossError ends the file; checked below
    end = tf.data.Dataset.from_tensors(tf.constant(b"")).map(lambda r: (r, True))
    stream = records.map(lambda r: (r, False)).concatenate(end)

    def step(state, element):
        consumed, count = state
        record, is_end = element
        length = tf.cast(tf.strings.length(record), tf.int64) + _RECORD_OVERHEAD
        next_state = (consumed + tf.where(is_end, tf.constant(0, tf.int64), length), count + 1)
        return next_state, (count, record, is_end, consumed)

    def check_end(index, record, is_end, consumed):
        ok = tf.logical_or(tf.logical_not(is_end), tf.equal(consumed, size))
        message = lambda: tf.strings.format(  # noqa: E731
            "corrupt or truncated: only its first {} record(s) could be read ({} of {} bytes)", (index, consumed, size)
        )
        ok = _check(ok, message, path, bad_records, replay=["end", index, path, consumed, size])
        return tf.logical_and(ok, tf.logical_not(is_end)), index, record

    zero = tf.constant(0, tf.int64)
    checked = stream.scan((zero, zero), step).map(check_end).filter(_keep_record)
    if outputs_path is None:
        return checked.map(lambda keep, index, record: (path, index, record))
    missing = tf.data.Dataset.from_tensors(tf.constant(b"")).repeat()
    outputs = tf.data.TFRecordDataset(outputs_path).concatenate(missing)
    return tf.data.Dataset.zip((checked, outputs)).map(lambda c, out: (path, c[1], c[2], out))


@dataclass(frozen=True)
class _Reading:
    """How records are listed, ordered and repeated (shared by every reader)."""

    pattern: str
    shuffle: bool = False
    shuffle_buffer: int = 1024
    seed: int | None = None
    deterministic: bool = False
    num_epochs: int | None = 1
    num_readers: int = 4
    teacher_outputs: TeacherOutputs | None = None  # read each file's outputs in step with its records


def record_stream(pattern: str, *, bad_records: BadRecords | None = None, **reading) -> tf.data.Dataset:
    """(path, index, serialized record) of every record of the files matching `pattern`, each file checked whole.
    `reading`: shuffle, shuffle_buffer, seed, deterministic, num_epochs, num_readers (as in read_frame_dataset)."""
    return _record_stream(_Reading(pattern, **reading), bad_records)


def _record_stream(reading: _Reading, bad_records: BadRecords | None) -> tf.data.Dataset:
    files = list_files(reading.pattern)
    sizes = [tf.io.gfile.stat(f).length for f in files]
    seed = (reading.seed or 0) if reading.deterministic else reading.seed
    columns = (files, tf.constant(sizes, tf.int64))
    if reading.teacher_outputs is not None:
        columns += ([reading.teacher_outputs.path_for(f) for f in files],)
    ds = tf.data.Dataset.from_tensor_slices(columns)
    if reading.shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if reading.num_epochs != 1:
        ds = ds.repeat(reading.num_epochs)
    ds = ds.interleave(
        lambda f, s, *outputs: _file_records(f, s, bad_records, *outputs),
        cycle_length=min(len(files), reading.num_readers),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=reading.deterministic,
    )
    if reading.shuffle:
        ds = ds.shuffle(reading.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return ds


def _is_valid(valid, video):
    return valid


def _video_only(valid, video):
    return video


def _valid_videos(reading: _Reading, parse, bad_records: BadRecords | None) -> tf.data.Dataset:
    """Records parsed in parallel by `parse(path, index, record) -> (valid, video)`, the invalid ones dropped (in
    strict mode an invalid record raises: nothing to drop, one stage fewer per record)."""
    ds = _record_stream(reading, bad_records)
    if bad_records is None:
        return ds.map(
            lambda *record: parse(*record)[1], num_parallel_calls=tf.data.AUTOTUNE, deterministic=reading.deterministic
        )
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=reading.deterministic)
    return ds.filter(_is_valid).map(_video_only)


def _record_name(path, index):
    return tf.strings.join(["record ", tf.strings.as_string(index), " of ", path])


def _multi_hot(labels, num_classes: int):
    return tf.minimum(tf.scatter_nd(labels[:, None], tf.ones_like(labels, tf.float32), [num_classes]), 1.0)


def _first_failure(checks):
    """checks: [(ok, message_fn)] -> (all ok, message function of the first failure)."""
    oks = tf.stack([ok for ok, _ in checks])
    first = tf.argmin(tf.cast(oks, tf.int32), output_type=tf.int32)

    def message():
        branches = {i: fn for i, (_, fn) in enumerate(checks)}
        return tf.switch_case(first, branches)

    return tf.reduce_all(oks), message


def _label_checks(labels, num_classes: int, what: str = "labels"):
    in_range = tf.reduce_all((labels >= 0) & (labels < num_classes))
    return (
        in_range,
        lambda: tf.strings.format(
            f"'{what}' holds an id outside [0, {num_classes}): {{}} (set num_classes to the data's vocabulary size)",
            labels,
        ),
    )


def _video_id(context, where_has_checks):
    video_id = tf.where(tf.strings.length(context["id"]) > 0, context["id"], context["video_id"])
    ok = tf.strings.length(video_id) > 0
    where_has_checks.append((ok, lambda: tf.constant("has no context feature 'id' (bytes)")))
    return video_id


# ---------------------------------------------------------------------------------------------- frame level
FRAME_CONTEXT = {
    "id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "video_id": tf.io.FixedLenFeature([], tf.string, default_value=""),  # the 2017 release's name
    "labels": tf.io.VarLenFeature(tf.int64),
}
_SEGMENT_CONTEXT = {
    "segment_start_times": tf.io.VarLenFeature(tf.int64),
    "segment_labels": tf.io.VarLenFeature(tf.int64),
    "segment_scores": tf.io.VarLenFeature(tf.float32),
}
FRAME_LISTS = {
    "rgb": tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True),
    "audio": tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True),
}


def _frame_byte_checks(frames, size: int, name: str):
    lengths = tf.strings.length(frames)
    bad = tf.where(lengths != size)[:, 0]
    return (
        tf.size(bad) == 0,
        lambda: tf.strings.format(
            f"'{name}' frame {{}} has {{}} bytes, expected {size}", (bad[0], tf.gather(lengths, bad[0]))
        ),
    )


def _decode(frames, rows, decodable, size: int):
    """uint8 codes [len(rows), size] of the frames at `rows` (all < decodable), or of the first `decodable`."""
    if rows is None:
        return tf.io.decode_raw(frames[:decodable], tf.uint8, fixed_length=size)
    taken = tf.cond(
        decodable > 0, lambda: tf.gather(frames, rows), lambda: tf.fill(tf.shape(rows), tf.constant(b""))
    )  # (a record with no frames is invalid: it is dropped or raised on, but still runs up to here)
    return tf.io.decode_raw(taken, tf.uint8, fixed_length=size)


def _parse_frame_record(path, index, record, *, num_classes, max_frames, segments, select, bad_records, replay=True):
    where = _record_name(path, index)
    context_spec = {**FRAME_CONTEXT, **(_SEGMENT_CONTEXT if segments else {})}
    context, lists = tf.io.parse_single_sequence_example(record, context_spec, FRAME_LISTS, example_name=where)
    checks = []
    video_id = _video_id(context, checks)
    rgb, audio = lists["rgb"], lists["audio"]
    total = tf.size(rgb)
    checks.append(
        (
            total > 0,
            lambda: tf.constant(
                "has no 'rgb' frames (is it a video-level file? read it with read_video_level_dataset)"
            ),
        )
    )
    checks.append(
        (
            tf.equal(tf.size(audio), total),
            lambda: tf.strings.format("has {} rgb frames but {} audio frames", (total, tf.size(audio))),
        )
    )
    checks.append(_frame_byte_checks(rgb, RGB_SIZE, "rgb"))
    checks.append(_frame_byte_checks(audio, AUDIO_SIZE, "audio"))
    labels = context["labels"].values
    checks.append(_label_checks(labels, num_classes))
    num_frames = tf.minimum(total, max_frames)
    decodable = tf.minimum(num_frames, tf.size(audio))  # == num_frames in every valid record
    if segments:
        starts = context["segment_start_times"].values
        seg_labels = context["segment_labels"].values
        scores = context["segment_scores"].values
        same = tf.equal(tf.size(starts), tf.size(seg_labels)) & tf.equal(tf.size(starts), tf.size(scores))
        checks.append(
            (
                tf.size(starts) > 0,
                lambda: tf.constant(
                    "has no segment_start_times: segment mode (--segments) needs segment-rated (2019-style) records, "
                    "such as the official validate files or those of `vidistill synth --segments`"
                ),
            )
        )
        checks.append(
            (
                same,
                lambda: tf.strings.format(
                    "has {} segment_start_times, {} segment_labels, {} segment_scores",
                    (tf.size(starts), tf.size(seg_labels), tf.size(scores)),
                ),
            )
        )
        in_video = tf.reduce_all((starts >= 0) & (starts < tf.cast(num_frames, tf.int64)))
        checks.append(
            (
                in_video,
                lambda: tf.strings.format("segment_start_times {} fall outside its {} frames", (starts, num_frames)),
            )
        )
        checks.append(_label_checks(seg_labels, num_classes, "segment_labels"))
    all_ok, message = _first_failure(checks)
    kind = f"frame {num_classes} {max_frames} {int(segments)}"
    valid = _check(all_ok, message, where, bad_records, replay=[kind, index, path] if replay else None)

    with tf.control_dependencies([valid]):
        if select is None:
            rows, count, length = None, decodable, max_frames
        else:
            indices, counts = select(tf.reshape(decodable, [1]))
            rows, count, length = indices[0], counts[0], indices.shape[1]
        codes = tf.concat([_decode(rgb, rows, decodable, RGB_SIZE), _decode(audio, rows, decodable, AUDIO_SIZE)], 1)
    if select is None:
        codes = tf.pad(codes, [[0, max_frames - decodable], [0, 0]])  # padding rows: code 0
    else:  # rows past the count (short videos) repeat frame 0: zero them, as padding
        codes = tf.where(tf.range(length)[:, None] < count, codes, tf.zeros([], tf.uint8))
    codes.set_shape([length, RGB_SIZE + AUDIO_SIZE])
    video = {
        "id": video_id,
        "frames": codes,
        "num_frames": tf.cast(count, tf.int32),
        "labels": _multi_hot(tf.where(valid, labels, tf.zeros_like(labels)), num_classes),
    }
    if segments:
        video["segments"] = (starts, seg_labels, scores)
    return valid, video


_OUTPUT_FEATURES = {
    name: tf.io.FixedLenFeature([], tf.string, default_value="") for name in ("id", "predictions", "representation")
}


def _parse_teacher_outputs(path, index, record, video_id, outputs: TeacherOutputs, bad_records):
    """(valid, {"teacher_predictions" [C], "teacher_representation" [E]}) of one video's outputs record, checked
    against the video: present, for the same id, of the manifest's sizes."""
    where = tf.strings.join(["teacher outputs of record ", tf.strings.as_string(index), " of ", path])
    present = tf.strings.length(record) > 0
    parsed = tf.io.parse_single_example(tf.where(present, record, tf.constant(b"")), _OUTPUT_FEATURES)
    sizes = {"predictions": outputs.num_classes, "representation": outputs.representation_width}
    outputs_file = tf.strings.regex_replace(path, r"^.*/", outputs.directory.rstrip("/") + "/")
    checks = [
        (
            present,
            lambda: tf.strings.format(
                "missing: {} ends before this video ({}); write the outputs again", (outputs_file, video_id)
            ),
        ),
        (
            tf.equal(parsed["id"], video_id),
            lambda: tf.strings.format(
                "are for video {} but the record holds video {}: they were written for other records; write the "
                "outputs again",
                (parsed["id"], video_id),
            ),
        ),
    ]
    values = {}
    for name, size in sizes.items():
        length = tf.strings.length(parsed[name])
        checks.append(
            (
                tf.equal(length, size * outputs.itemsize),
                lambda length=length, name=name, size=size: tf.strings.format(
                    f"hold {{}} bytes of {name}, expected {size} {outputs.dtype} values (video {{}})",
                    (length, video_id),
                ),
            )
        )
        nbytes = size * outputs.itemsize  # cut or padded to its size: checked above, and a bad record is dropped
        fitted = tf.strings.substr(tf.strings.join([parsed[name], tf.constant(b"\0" * nbytes)]), 0, nbytes)
        decoded = tf.io.decode_raw(fitted, outputs.dtype)
        values[f"teacher_{name}"] = tf.reshape(tf.cast(decoded, tf.float32), [size])
    all_ok, message = _first_failure(checks)
    return _check(all_ok, message, where, bad_records), values


def _with_teacher_outputs(parse, outputs: TeacherOutputs, bad_records):
    """`parse(path, index, record)` extended to the (path, index, record, outputs record) of a stream read with
    teacher outputs: the video gains its teacher's predictions and representation."""

    def parse_both(path, index, record, outputs_record):
        valid, video = parse(path, index, record)
        ok, values = _parse_teacher_outputs(path, index, outputs_record, video["id"], outputs, bad_records)
        return tf.logical_and(valid, ok), {**video, **values}

    return parse_both


def _cut_segments(video, num_classes: int, max_frames: int, shifts: tuple[int, ...] | None):
    """One video -> a dataset of its rated 5-frame segments (one per unique start time); with `shifts`, each
    segment's windows shifted by each of them (segment_windows.py: clipped to the video's frames)."""
    starts, seg_labels, scores = video["segments"]
    unique_starts, which = tf.unique(starts)
    count = tf.size(unique_starts)
    rows, num_real = window_rows(unique_starts, video["num_frames"], shifts or (0,), max_frames)
    frames = cut_windows(video["frames"], rows, num_real)  # [N, S, 5, D]
    if shifts is None:
        frames, num_real = frames[:, 0], num_real[:, 0]
    pairs = tf.stack([tf.cast(which, tf.int64), seg_labels], axis=1)
    labels = tf.scatter_nd(pairs, scores, [tf.cast(count, tf.int64), num_classes])
    weights = tf.minimum(tf.scatter_nd(pairs, tf.ones_like(scores), [tf.cast(count, tf.int64), num_classes]), 1.0)
    return tf.data.Dataset.from_tensor_slices(
        {
            "id": tf.fill([count], video["id"]),
            "segment_start": tf.cast(unique_starts, tf.int32),
            "frames": frames,
            "num_frames": num_real,
            "labels": tf.minimum(labels, 1.0),
            "label_weights": weights,
        }
    )


def read_frame_dataset(
    pattern: str,
    *,
    num_classes: int = NUM_CLASSES,
    max_frames: int = MAX_FRAMES,
    batch_size: int = 32,
    shuffle: bool = False,
    shuffle_buffer: int = 1024,
    segment_labels: bool = False,
    segment_shifts: tuple[int, ...] | None = None,
    num_epochs: int | None = 1,
    drop_remainder: bool = False,
    deterministic: bool = False,
    seed: int | None = None,
    num_readers: int = 4,
    bad_records: BadRecords | None = None,
    select=None,
    dequantize: bool = True,
    teacher_outputs: TeacherOutputs | None = None,
) -> tf.data.Dataset:
    """Frame-level records -> batches of {"id", "frames" [B, max_frames, 1152], "num_frames" [B], "labels" [B, C]}.

    Frames are dequantized like the official starter code; rgb (1024) then audio (128); rows past num_frames
    are 0.0; videos longer than max_frames are truncated. The uint8 codes travel through the pipeline and are
    dequantized once per batch; with `dequantize=False` the batches hold the codes themselves (uint8, rows past
    num_frames 0: `quantize.dequantize_frames` makes them the float frames, e.g. on the accelerator).
    `select(num_frames [1]) -> (indices [1, k], counts [1])` decodes only the k frames it picks of each video
    (e.g. a student's `students.selection.selection_indices`): "frames" is then [B, k, 1152], "num_frames" the
    counts. With `segment_labels=True` (2019 data) each rated
    5-frame segment is an element: {"id", "segment_start", "frames" [B, 5, 1152], "num_frames" (real frames in
    the segment), "labels" (segment scores at the rated classes), "label_weights" (1 at rated classes)}; shuffled,
    the segments are shuffled again (`shuffle_buffer` segments), since a video's segments come out together.
    `segment_shifts` (e.g. (-1, 0, 1), segment mode only) gives each segment its windows shifted by each shift
    instead, clipped to the video's frames (segment_windows.py): "frames" [B, S, 5, 1152], "num_frames" [B, S].
    `deterministic=True` gives the same order on every run (seed 0 unless `seed` is given); `num_epochs=None`
    repeats forever. Bad records raise (naming file and record) unless `bad_records` is given.
    `teacher_outputs` (yt8m/teacher_outputs.py) adds each video's stored "teacher_predictions" [B, C] and
    "teacher_representation" [B, E], checked against its id (a missing or mismatched video is a bad record).
    """
    if max_frames < 1:
        raise ConfigError(f"max_frames must be >= 1, got {max_frames}")
    if select is not None and segment_labels:
        raise ConfigError("segment_labels cuts 5-frame segments from whole videos: it takes no frame selection")
    if segment_shifts is not None:
        if not segment_labels:
            raise ConfigError("segment_shifts shifts the windows of rated segments: pass segment_labels=True")
        segment_shifts = check_shifts(segment_shifts, "segment_shifts")
    if teacher_outputs is not None and segment_labels:
        raise ConfigError("teacher outputs are per video: segment mode (segment_labels) takes the live teacher")
    reading = _Reading(pattern, shuffle, shuffle_buffer, seed, deterministic, num_epochs, num_readers, teacher_outputs)
    parse = functools.partial(
        _parse_frame_record,
        num_classes=num_classes,
        max_frames=max_frames,
        segments=segment_labels,
        select=select,
        bad_records=bad_records,
    )
    if teacher_outputs is not None:
        parse = _with_teacher_outputs(parse, teacher_outputs, bad_records)
    ds = _valid_videos(reading, parse, bad_records)
    if segment_labels:
        ds = ds.flat_map(lambda video: _cut_segments(video, num_classes, max_frames, segment_shifts))
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=(seed or 0) if deterministic else seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if dequantize:
        ds = ds.map(_dequantized, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _dequantized(batch):
    codes, counts = batch["frames"], batch["num_frames"]
    if codes.shape.rank == 4:  # shifted segment windows [B, S, 5, D]
        flat = dequantize_frames(tf.reshape(codes, [-1, *codes.shape[2:]]), tf.reshape(counts, [-1]))
        return {**batch, "frames": tf.reshape(flat, tf.shape(codes))}
    return {**batch, "frames": dequantize_frames(codes, counts)}


# ---------------------------------------------------------------------------------------------- video level
def _length_check(values, size: int, name: str):
    n = tf.size(values)
    hint = tf.where(n == 0, " (is it a frame-level file? read it with read_frame_dataset)", "")
    return (
        tf.equal(n, size),
        lambda: tf.strings.join([tf.strings.format(f"'{name}' has {{}} values, expected {size}", n), hint]),
    )


def _fit(values, size: int):
    """Pads or cuts to a static length (only valid records, which already have it, are kept)."""
    values = tf.pad(values, [[0, tf.maximum(size - tf.size(values), 0)]])[:size]
    values.set_shape([size])
    return values


_VIDEO_FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "video_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "labels": tf.io.VarLenFeature(tf.int64),
    "mean_rgb": tf.io.VarLenFeature(tf.float32),
    "mean_audio": tf.io.VarLenFeature(tf.float32),
}


def _parse_video_record(path, index, record, *, num_classes, bad_records, replay=True):
    where = _record_name(path, index)
    parsed = tf.io.parse_single_example(record, _VIDEO_FEATURES, example_names=where)
    checks = []
    video_id = _video_id(parsed, checks)
    features = []
    for name, size in (("mean_rgb", RGB_SIZE), ("mean_audio", AUDIO_SIZE)):
        values = parsed[name].values
        checks.append(_length_check(values, size, name))
        features.append(_fit(values, size))
    labels = parsed["labels"].values
    checks.append(_label_checks(labels, num_classes))
    all_ok, message = _first_failure(checks)
    valid = _check(
        all_ok, message, where, bad_records, replay=[f"video {num_classes}", index, path] if replay else None
    )
    with tf.control_dependencies([valid]):
        vector = tf.concat(features, axis=0)
    vector.set_shape([RGB_SIZE + AUDIO_SIZE])
    return valid, {
        "id": video_id,
        "features": vector,
        "labels": _multi_hot(tf.where(valid, labels, tf.zeros_like(labels)), num_classes),
    }


def read_video_level_dataset(
    pattern: str,
    *,
    num_classes: int = NUM_CLASSES,
    batch_size: int = 32,
    shuffle: bool = False,
    shuffle_buffer: int = 1024,
    num_epochs: int | None = 1,
    drop_remainder: bool = False,
    deterministic: bool = False,
    seed: int | None = None,
    num_readers: int = 4,
    bad_records: BadRecords | None = None,
) -> tf.data.Dataset:
    """Video-level records -> batches of {"id", "features" [B, 1152] (mean_rgb then mean_audio), "labels" [B, C]}.

    `labels` is optional in the records (test files have none): such videos get an all-zero label row.
    """
    reading = _Reading(pattern, shuffle, shuffle_buffer, seed, deterministic, num_epochs, num_readers)
    parse = functools.partial(_parse_video_record, num_classes=num_classes, bad_records=bad_records)
    ds = _valid_videos(reading, parse, bad_records)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------------------- labels only
_CONTEXT_ONLY = {
    "id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "video_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "labels": tf.io.RaggedFeature(tf.int64),
    "segment_start_times": tf.io.RaggedFeature(tf.int64),
    "segment_labels": tf.io.RaggedFeature(tf.int64),
    "segment_scores": tf.io.RaggedFeature(tf.float32),
}


@dataclass
class GroundTruth:
    """Labels of every video of a dataset, read from the context alone (no frames decoded)."""

    labels: dict[str, list[int]]  # video id -> label ids, in file order
    segments: dict[int, dict[str, float]]  # class -> {"vid:start": score} of the rated segments

    def label_matrix(self, ids: list[str], num_classes: int):
        import numpy as np

        matrix = np.zeros((len(ids), num_classes), np.float32)
        for row, video in enumerate(ids):
            matrix[row, self.labels[video]] = 1.0
        return matrix


def read_ground_truth(pattern: str, *, num_classes: int = NUM_CLASSES) -> GroundTruth:
    """Ids, labels and segment ratings of frame-level or video-level records (a SequenceExample's context has
    the wire layout of an Example's features, so one parser reads both)."""
    stream = _record_stream(_Reading(pattern, deterministic=True), None).batch(512)
    labels: dict[str, list[int]] = {}
    segments: dict[int, dict[str, float]] = {}
    with data_errors():
        batches = [(p.numpy(), i.numpy(), tf.io.parse_example(r, _CONTEXT_ONLY)) for p, i, r in stream]
    for paths, indices, parsed in batches:
        rows = zip(
            paths,
            indices,
            parsed["id"].numpy(),
            parsed["video_id"].numpy(),
            parsed["labels"].to_list(),
            parsed["segment_start_times"].to_list(),
            parsed["segment_labels"].to_list(),
            parsed["segment_scores"].to_list(),
        )
        for path, index, vid, old_vid, video_labels, starts, seg_labels, scores in rows:
            where = f"record {index} of {path.decode()}"
            video = (vid or old_vid).decode()
            if not video:
                raise DataError(f"{where}: has no context feature 'id' (bytes)")
            if video in labels:
                raise DataError(f"{where}: video id {video!r} appears twice; ids must be unique")
            bad = [c for c in video_labels + seg_labels if not 0 <= c < num_classes]
            if bad:
                raise DataError(
                    f"{where}: label id {bad[0]} is outside [0, {num_classes}) "
                    "(set num_classes to the data's vocabulary size)"
                )
            if not len(starts) == len(seg_labels) == len(scores):
                raise DataError(
                    f"{where}: {len(starts)} segment_start_times, {len(seg_labels)} segment_labels, "
                    f"{len(scores)} segment_scores; they must pair up"
                )
            labels[video] = video_labels
            for start, label, score in zip(starts, seg_labels, scores):
                segments.setdefault(label, {})[f"{video}:{start}"] = score
    return GroundTruth(labels, segments)


def require_segment_ratings(pattern: str, what: str = "segment mode") -> None:
    """A DataError naming the file when the first record of `pattern` holds no segment ratings (a quick check
    before a long read: every record is checked again as it is read)."""
    first = list_files(pattern)[0]
    record = next(iter(tf.data.TFRecordDataset(first).take(1)), None)
    if record is None:
        raise DataError(f"{first}: holds no record")
    try:
        context = tf.train.SequenceExample.FromString(record.numpy()).context.feature
    except Exception as e:  # noqa: BLE001 - any protobuf failure means the same to the user
        raise DataError(f"record 0 of {first}: not a YouTube-8M record ({e})") from None
    starts = context["segment_start_times"].int64_list.value if "segment_start_times" in context else []
    if not starts:
        raise DataError(
            f"record 0 of {first}: has no segment ratings (segment_start_times / segment_labels / segment_scores): "
            f"{what} needs segment-rated (2019-style) records, such as the official validate files or those of "
            "`vidistill synth --segments`"
        )


def detect_format(pattern: str) -> str:
    """ "frame" (SequenceExample with rgb/audio feature lists) or "video" (Example with mean_rgb), from the first
    record of the first file."""
    first = list_files(pattern)[0]
    record = next(iter(tf.data.TFRecordDataset(first).take(1)), None)
    if record is None:
        raise DataError(f"{first}: holds no record")
    try:
        example = tf.train.SequenceExample.FromString(record.numpy())
    except Exception as e:  # noqa: BLE001 - any protobuf failure means the same to the user
        raise DataError(f"record 0 of {first}: not a YouTube-8M record ({e})") from None
    if "mean_rgb" in example.context.feature:
        return "video"
    if "rgb" in example.feature_lists.feature_list:
        return "frame"
    raise DataError(
        f"record 0 of {first}: neither frame-level (feature list 'rgb') nor video-level (feature 'mean_rgb')"
    )
