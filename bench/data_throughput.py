"""How fast the data layer is: synthetic generation (videos/s) and the frame-level reader, stage by stage.

Stages, each timed over full passes over the same files (median of 3; the OS page cache is warmed by a first
untimed pass):
  records   TFRecord bytes only (I/O + framing + the file integrity check)
  parse     + SequenceExample parsing (tf.io.parse_single_sequence_example), frames left as bytes
  decode    + decode_raw, dequantize, pad to max_frames, batch, but no validation
  full      the model-ready pipeline, read_frame_dataset: decode plus every per-record check
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import tensorflow as tf

from vidistill.yt8m.quantize import dequantize
from vidistill.yt8m.readers import FRAME_CONTEXT, FRAME_LISTS, read_frame_dataset, record_stream


@dataclass
class StageResult:
    stage: str
    videos: int
    seconds: list[float]  # one per timed pass

    @property
    def videos_per_second(self) -> float:
        """Median over the passes."""
        return self.videos / statistics.median(self.seconds)

    @property
    def spread(self) -> str:
        return f"{self.videos / max(self.seconds):.0f}-{self.videos / min(self.seconds):.0f}"


def _count(ds, videos_of) -> tuple[int, float]:
    started = time.perf_counter()
    videos = 0
    for element in ds:
        videos += videos_of(element)
    return videos, time.perf_counter() - started


def reader_stages(pattern: str, *, batch_size: int = 64, max_frames: int = 300, passes: int = 3) -> list[StageResult]:
    def records():
        return record_stream(pattern, num_readers=4)

    def parse():
        def parse_one(path, index, record):
            _, lists = tf.io.parse_single_sequence_example(record, FRAME_CONTEXT, FRAME_LISTS)
            return tf.size(lists["rgb"])

        return records().map(parse_one, num_parallel_calls=tf.data.AUTOTUNE)

    def decode():
        def decode_one(path, index, record):
            _, lists = tf.io.parse_single_sequence_example(record, FRAME_CONTEXT, FRAME_LISTS)
            n = tf.minimum(tf.size(lists["rgb"]), max_frames)
            rgb = dequantize(tf.io.decode_raw(lists["rgb"][:n], tf.uint8, fixed_length=1024))
            audio = dequantize(tf.io.decode_raw(lists["audio"][:n], tf.uint8, fixed_length=128))
            return tf.pad(tf.concat([rgb, audio], 1), [[0, max_frames - n], [0, 0]])

        return records().map(decode_one, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)

    def full():
        return read_frame_dataset(pattern, batch_size=batch_size, max_frames=max_frames)

    stages = [
        ("records", records, lambda e: 1),
        ("parse", parse, lambda e: 1),
        ("decode", decode, lambda batch: int(batch.shape[0])),
        ("full", full, lambda batch: int(batch["num_frames"].shape[0])),
    ]
    _count(records(), lambda e: 1)  # warm the page cache
    results = []
    for name, make, videos_of in stages:
        timed = [_count(make(), videos_of) for _ in range(passes)]
        results.append(StageResult(name, timed[0][0], [seconds for _, seconds in timed]))
    return results


def machine() -> str:
    from vidistill.export.sessions import cpu_model  # (onnxruntime, imported only here: the reader never needs it)

    return f"{cpu_model()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}"
