"""Writing YouTube-8M records in the official format.

Frame level: one `tf.train.SequenceExample` per video - context `id` (bytes) and `labels` (int64), feature lists
`rgb` (1024 uint8 bytes per frame) and `audio` (128). Segment-rated videos (the 2019 data) add
`segment_start_times`, `segment_end_times`, `segment_labels` and `segment_scores` to the context.
Video level: one `tf.train.Example` - `id`, `labels`, `mean_rgb` (1024 floats), `mean_audio` (128 floats).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from vidistill.yt8m.constants import AUDIO_SIZE, MAX_FRAMES, RGB_SIZE, SEGMENT_FRAMES
from vidistill.yt8m.quantize import quantize
from vidistill.yt8m.errors import ConfigError


@dataclass
class Segment:
    """One rated 5-second segment: frames [start, start + 5) rated for `label` (score 1 positive, 0 negative)."""

    start: int
    label: int
    score: float


@dataclass
class Video:
    """One video's features as floats (they are quantized when written)."""

    id: str
    labels: list[int]
    rgb: np.ndarray  # [num_frames, 1024]
    audio: np.ndarray  # [num_frames, 128]
    segments: list[Segment] = field(default_factory=list)


def _as_video(video: Video | Mapping) -> Video:
    if isinstance(video, Video):
        return video
    segments = [s if isinstance(s, Segment) else Segment(**s) for s in video.get("segments", ())]
    return Video(video["id"], list(video.get("labels", ())), video["rgb"], video["audio"], segments)


def _check_frames(video: Video) -> None:
    rgb, audio = np.asarray(video.rgb), np.asarray(video.audio)
    if rgb.ndim != 2 or rgb.shape[1] != RGB_SIZE:
        raise ConfigError(f"video {video.id!r}: rgb must be [frames, {RGB_SIZE}], got {list(rgb.shape)}")
    if audio.ndim != 2 or audio.shape[1] != AUDIO_SIZE:
        raise ConfigError(f"video {video.id!r}: audio must be [frames, {AUDIO_SIZE}], got {list(audio.shape)}")
    if len(rgb) != len(audio):
        raise ConfigError(f"video {video.id!r}: {len(rgb)} rgb frames but {len(audio)} audio frames")
    if len(rgb) == 0:
        raise ConfigError(f"video {video.id!r}: no frames")


def frame_example(video: Video | Mapping, *, quantized: bool = False):
    """A video as a serialized frame-level SequenceExample.

    `quantized=True` takes rgb/audio that are already uint8 codes (the fast path of the synthetic generator).
    More than 300 frames are written as given: the reader truncates, like the official one.
    """
    import tensorflow as tf

    video = _as_video(video)
    _check_frames(video)
    rgb = np.asarray(video.rgb) if quantized else quantize(video.rgb)
    audio = np.asarray(video.audio) if quantized else quantize(video.audio)
    example = tf.train.SequenceExample()
    context = example.context.feature
    context["id"].bytes_list.value.append(video.id.encode())
    context["labels"].int64_list.value.extend(int(label) for label in video.labels)
    if video.segments:
        context["segment_start_times"].int64_list.value.extend(s.start for s in video.segments)
        context["segment_end_times"].int64_list.value.extend(s.start + SEGMENT_FRAMES for s in video.segments)
        context["segment_labels"].int64_list.value.extend(s.label for s in video.segments)
        context["segment_scores"].float_list.value.extend(s.score for s in video.segments)
    for name, codes in (("rgb", rgb.astype(np.uint8, copy=False)), ("audio", audio.astype(np.uint8, copy=False))):
        feature_list = example.feature_lists.feature_list[name]
        for row in codes:
            feature_list.feature.add().bytes_list.value.append(row.tobytes())
    return example.SerializeToString(deterministic=True)  # map keys sorted: the same bytes in every process


def video_level_example(video_id: str, labels: Iterable[int], mean_rgb, mean_audio) -> bytes:
    """A serialized video-level Example (`mean_rgb` / `mean_audio` are means of dequantized frames)."""
    import tensorflow as tf

    example = tf.train.Example()
    feature = example.features.feature
    feature["id"].bytes_list.value.append(video_id.encode())
    feature["labels"].int64_list.value.extend(int(label) for label in labels)
    feature["mean_rgb"].float_list.value.extend(np.asarray(mean_rgb, dtype=np.float32).ravel().tolist())
    feature["mean_audio"].float_list.value.extend(np.asarray(mean_audio, dtype=np.float32).ravel().tolist())
    return example.SerializeToString(deterministic=True)  # map keys sorted: the same bytes in every process


def write_records(path: str, serialized: Iterable[bytes]) -> int:
    """Writes serialized records to a TFRecord file atomically (temporary name, then rename); returns the count."""
    import tensorflow as tf

    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in serialized:
                writer.write(record)
                count += 1
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise
    return count


def write_frame_records(path: str, videos: Iterable[Video | Mapping]) -> int:
    """Writes videos (float features, quantized like the official extractor) as frame-level records."""
    return write_records(path, (frame_example(v) for v in videos))


def write_video_level_records(path: str, videos: Iterable[Video | Mapping]) -> int:
    """Writes videos as video-level records: the means of their dequantized frames, as the official data holds."""
    from vidistill.yt8m.quantize import dequantize

    def serialize(video):
        video = _as_video(video)
        _check_frames(video)
        rgb = dequantize(quantize(video.rgb[:MAX_FRAMES]))
        audio = dequantize(quantize(video.audio[:MAX_FRAMES]))
        return video_level_example(video.id, video.labels, rgb.mean(0), audio.mean(0))

    return write_records(path, (serialize(v) for v in videos))
