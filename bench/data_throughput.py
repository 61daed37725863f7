"""How fast the data layer is: synthetic generation (videos/s) and the frame-level reader, stage by stage.

Stages, each a full pass over the same files (the OS page cache is warmed by a first untimed pass):
  records   TFRecord bytes only (I/O + framing + the file integrity check)
  parse     + SequenceExample parsing (tf.io.parse_single_sequence_example), frames left as bytes
  full      + validation, decode_raw, dequantize, pad to max_frames, batch: the model-ready pipeline
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import tensorflow as tf

from yt8m.readers import FRAME_CONTEXT, FRAME_LISTS, read_frame_dataset, record_stream


@dataclass
class StageResult:
    stage: str
    videos: int
    seconds: float

    @property
    def videos_per_second(self) -> float:
        return self.videos / self.seconds


def _count(ds, videos_of) -> tuple[int, float]:
    started = time.perf_counter()
    videos = 0
    for element in ds:
        videos += videos_of(element)
    return videos, time.perf_counter() - started


def reader_stages(pattern: str, *, batch_size: int = 64, max_frames: int = 300) -> list[StageResult]:
    def records():
        return record_stream(pattern, num_readers=4)

    def parse():
        def parse_one(path, index, record):
            _, lists = tf.io.parse_single_sequence_example(record, FRAME_CONTEXT, FRAME_LISTS)
            return tf.size(lists["rgb"])

        return records().map(parse_one, num_parallel_calls=tf.data.AUTOTUNE)

    def full():
        return read_frame_dataset(pattern, batch_size=batch_size, max_frames=max_frames)

    stages = [
        ("records", records, lambda e: 1),
        ("parse", parse, lambda e: 1),
        ("full", full, lambda batch: int(batch["num_frames"].shape[0])),
    ]
    _count(records(), lambda e: 1)  # warm the page cache
    results = []
    for name, make, videos_of in stages:
        videos, seconds = _count(make(), videos_of)
        results.append(StageResult(name, videos, seconds))
    return results


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}"
