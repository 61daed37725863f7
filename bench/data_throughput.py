"""How fast the data layer is: synthetic generation (videos/s) and the frame-level reader, stage by stage.

Stages, each timed over full passes over the same files (median of 3; the OS page cache is warmed by a first
untimed pass):
  records   TFRecord bytes only (I/O + framing + the file integrity check)
  parse     + SequenceExample parsing (tf.io.parse_single_sequence_example), frames left as bytes
  decode    the bare loop: + decode_raw, dequantize, pad to max_frames per record, batch; no checks
  full      read_frame_dataset, model-ready float batches: every per-record check, uint8 codes batched and
            dequantized once per batch
  codes     read_frame_dataset(dequantize=False): the same, handing out the uint8 codes
  k=K       read_frame_dataset(select=uniform K): only K frames of each video decoded (a student's input)
Each stage also reports its process CPU time and minor page faults per video: on a shared machine CPU time is the
steadier figure, and the faults show what fresh allocations of float batches cost.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import dataclass

import tensorflow as tf

from vidistill.yt8m.quantize import dequantize
from vidistill.yt8m.readers import FRAME_CONTEXT, FRAME_LISTS, read_frame_dataset, record_stream

CHECKED_SHARE_GOAL = 0.9  # full / decode
VIDEOS_PER_SECOND_GOAL = 2500


@dataclass
class StageResult:
    stage: str
    videos: int
    seconds: list[float]  # one per timed pass
    cpu_seconds: list[float]
    page_faults: list[int]

    @property
    def videos_per_second(self) -> float:
        """Median over the passes."""
        return self.videos / statistics.median(self.seconds)

    @property
    def spread(self) -> str:
        return f"{self.videos / max(self.seconds):.0f}-{self.videos / min(self.seconds):.0f}"

    @property
    def cpu_ms_per_video(self) -> float:
        return 1000 * statistics.median(self.cpu_seconds) / self.videos

    @property
    def faults_per_video(self) -> float:
        return statistics.median(self.page_faults) / self.videos


def _count(ds, videos_of) -> tuple[int, float, float, int]:
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started, cpu = time.perf_counter(), time.process_time()
    videos = 0
    for element in ds:
        videos += videos_of(element)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return videos, seconds, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def reader_stages(
    pattern: str, *, batch_size: int = 64, max_frames: int = 300, k: int = 30, passes: int = 3
) -> list[StageResult]:
    from vidistill.students.selection import frames_to_decode

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

    def full(**options):
        return lambda: read_frame_dataset(pattern, batch_size=batch_size, max_frames=max_frames, **options)

    def batch_size_of(batch):
        return int(batch["num_frames"].shape[0])

    stages = [
        ("records", records, lambda e: 1),
        ("parse", parse, lambda e: 1),
        ("decode", decode, lambda batch: int(batch.shape[0])),
        ("full", full(), batch_size_of),
        ("codes", full(dequantize=False), batch_size_of),
        (f"k={k}", full(select=frames_to_decode(k, "uniform")), batch_size_of),
    ]
    _count(records(), lambda e: 1)  # warm the page cache
    results = []
    for name, make, videos_of in stages:
        timed = [_count(make(), videos_of) for _ in range(passes)]
        results.append(StageResult(name, timed[0][0], *(list(column) for column in list(zip(*timed))[1:])))
    return results


def verdict(stages: list[StageResult]) -> list[str]:
    """The issue's goals, met or missed, from one run's stages."""
    by_name = {stage.stage: stage for stage in stages}
    full, decode = by_name["full"], by_name["decode"]
    share = full.videos_per_second / decode.videos_per_second
    fast = full.videos_per_second >= VIDEOS_PER_SECOND_GOAL
    cpu_share = decode.cpu_ms_per_video / full.cpu_ms_per_video
    lines = [
        f"checked / unchecked (full / decode): {share:.0%} of the videos/s, {cpu_share:.0%} by CPU time per video "
        f"(goal >= {CHECKED_SHARE_GOAL:.0%}): {'met' if share >= CHECKED_SHARE_GOAL else 'missed'}",
        f"model-ready float batches: {full.videos_per_second:.0f} videos/s "
        f"(goal >= {VIDEOS_PER_SECOND_GOAL}): {'met' if fast else 'missed'}",
    ]
    for stage in stages:
        if stage.stage.startswith("k="):
            lines.append(
                f"decoding only {stage.stage} frames: {stage.videos_per_second / full.videos_per_second:.2f}x "
                "the full videos/s"
            )
    return lines


def machine() -> str:
    from vidistill.export.sessions import cpu_flags, cpu_model  # (onnxruntime: imported only here)

    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    allocator = "BFC" if os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "").lower() in ("1", "true") else "default"
    return f"{cpu_model()} ({isa}), {os.cpu_count()} cores, TensorFlow {tf.__version__}, CPU allocator {allocator}"
