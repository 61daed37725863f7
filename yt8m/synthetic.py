"""Synthetic YouTube-8M-style frame-level data that is learnable AND temporal.

The generative model (documented in the README):
- Every class c has a prototype in rgb (1024) and in audio (128), a strength, and an event kind: "long" (events
  cover 10-40% of the video's content) or "brief" (2-6 frames: a goal, a door slam). Class frequency is
  Zipf-like: class 0 is the most frequent, like the official vocabulary.
- A video has 60..300 frames (one per second), a per-video background made of shots (piecewise-constant
  scenes), white noise on every frame, and with some probability an outro (an end screen shared by all videos,
  carrying no label) over its last 5-15 frames (fewer where that would leave under 30 frames of content).
- It carries 1..4 labels drawn without replacement by class frequency; each label shows up as 1-2 events at
  random places in the content, where the class prototype (scaled by the class strength) is added to the
  frames. A brief event is easy to miss when looking at few frames; an event's position decides whether
  first-k / middle-k / last-k frames see it, so uniform-k beats them; the outro makes last-k the worst.
- Features are quantized exactly like the official extractor. Every video is drawn from its own random stream
  (seed, split, index): the data does not depend on the number of shards or workers.
- Segment mode (2019-style): each video has up to 5 rated 5-frame segments for one of its labels; a segment is
  positive (score 1) when at least 3 of its 5 frames lie inside an event of that class, else negative (0).
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from vidistill.yt8m.constants import AUDIO_SIZE, FEATURE_SIZE, MAX_FRAMES, RGB_SIZE, SEGMENT_FRAMES
from vidistill.yt8m.quantize import quantize
from vidistill.yt8m.errors import ConfigError

SPLITS = ("train", "validate")
_MIN_CONTENT = 30


@dataclass
class SynthConfig:
    """Everything that defines a synthetic dataset; saved as synth.yaml beside the shards."""

    videos: int = 2000  # training videos
    heldout: int | None = None  # held-out ("validate") videos; default videos // 5
    classes: int = 100
    seed: int = 0
    min_frames: int = 60
    max_frames: int = MAX_FRAMES
    segments: bool = False
    shards: int = 4  # training shards; the held-out split gets max(1, shards // 4)
    max_labels: int | None = None  # labels per video at most; default min(4, classes)
    zipf_exponent: float = 1.0
    brief_fraction: float = 0.3  # fraction of classes whose events last only a few frames
    outro_probability: float = 0.5
    signal: float = 0.1  # event amplitude per feature (unit-RMS prototypes times this): ~6 sigma per frame
    noise: float = 0.5  # white noise per feature and frame
    background: float = 0.3  # per-video background; shots add half of it again
    generator_version: int = 1

    def __post_init__(self) -> None:
        if self.heldout is None:
            self.heldout = max(1, self.videos // 5)
        if self.max_labels is None:
            self.max_labels = min(4, self.classes)
        checks = {
            "videos": self.videos >= 1,
            "heldout": self.heldout >= 0,
            "classes": self.classes >= 2,
            "shards": self.shards >= 1,
            "seed": self.seed >= 0,
            "min_frames": _MIN_CONTENT <= self.min_frames <= self.max_frames,
            "max_frames": self.max_frames <= MAX_FRAMES,
            "max_labels": 1 <= self.max_labels <= self.classes,
            "brief_fraction": 0.0 <= self.brief_fraction <= 1.0,
            "outro_probability": 0.0 <= self.outro_probability <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"synthetic data option {name}={getattr(self, name)!r} is out of range "
                    f"(videos >= 1, classes >= 2, shards >= 1, seed >= 0, {_MIN_CONTENT} <= min_frames <= max_frames "
                    f"<= {MAX_FRAMES}, 1 <= max_labels <= classes, fractions in [0, 1])"
                )

    def split_sizes(self) -> dict[str, tuple[int, int]]:
        """split -> (videos, shards)."""
        return {"train": (self.videos, self.shards), "validate": (self.heldout, max(1, self.shards // 4))}


@dataclass
class World:
    """The class-level parameters shared by all videos of a dataset."""

    rgb: np.ndarray  # [C, 1024] unit-RMS prototypes
    audio: np.ndarray  # [C, 128]
    strength: np.ndarray  # [C]
    brief: np.ndarray  # [C] bool
    prior: np.ndarray  # [C] Zipf-like frequencies
    outro: np.ndarray  # [1152] the shared end screen
    names: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, config: SynthConfig) -> World:
        rng = np.random.default_rng([config.seed, 7919])
        c = config.classes
        prior = 1.0 / np.arange(1, c + 1) ** config.zipf_exponent
        brief = np.zeros(c, bool)
        brief[rng.choice(c, size=round(config.brief_fraction * c), replace=False)] = True
        return cls(
            rgb=rng.standard_normal((c, RGB_SIZE)).astype(np.float32),
            audio=rng.standard_normal((c, AUDIO_SIZE)).astype(np.float32),
            strength=rng.uniform(0.6, 1.4, c).astype(np.float32),
            brief=brief,
            prior=prior / prior.sum(),
            outro=rng.uniform(-1.0, 1.0, FEATURE_SIZE).astype(np.float32),
            names=[f"{'brief' if b else 'long'}-{i}" for i, b in enumerate(brief)],
        )


@dataclass
class SyntheticVideo:
    """One generated video: quantized features, labels, events and rated segments."""

    id: str
    labels: list[int]
    codes: np.ndarray  # [n, 1152] uint8
    events: list[tuple[int, int, int]]  # (class, start, end) frame ranges
    segments: list[tuple[int, int, float]]  # (start, class, score)


def video_id(split: str, index: int) -> str:
    return f"{split[0]}{index:07d}"


def generate_video(config: SynthConfig, world: World, split: str, index: int) -> SyntheticVideo:
    """The video `index` of `split`: a pure function of (config, split, index)."""
    rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
    n = int(rng.integers(config.min_frames, config.max_frames + 1))
    outro = int(rng.integers(5, 16)) if rng.random() < config.outro_probability else 0
    content = max(n - outro, _MIN_CONTENT)
    outro = n - content

    num_labels = min(int(rng.geometric(0.6)), config.max_labels)
    labels = sorted(int(c) for c in rng.choice(config.classes, size=num_labels, replace=False, p=world.prior))

    # background: a per-video scene plus one offset per shot (shots of 4-40 frames), then white noise
    shot_of_frame = np.cumsum(rng.random(n) < 1 / 20) % 64
    scene = rng.standard_normal(FEATURE_SIZE, dtype=np.float32) * config.background
    shots = rng.standard_normal((64, FEATURE_SIZE), dtype=np.float32) * (config.background / 2)
    frames = rng.standard_normal((n, FEATURE_SIZE), dtype=np.float32)
    frames *= config.noise  # in place, like every step below (a fresh array per step costs its page faults)
    frames += scene
    starts = np.flatnonzero(np.diff(shot_of_frame, prepend=-1))  # shots are runs of frames
    for start, end in zip(starts, [*starts[1:], n]):
        frames[start:end] += shots[shot_of_frame[start]]

    events = []
    for c in labels:
        for _ in range(1 + int(rng.random() < 0.3)):
            if world.brief[c]:
                length = int(rng.integers(2, 7))
            else:
                length = max(8, int(content * rng.uniform(0.1, 0.4)))
            length = min(length, content)
            start = int(rng.integers(0, content - length + 1))
            amplitude = config.signal * world.strength[c] * rng.uniform(0.8, 1.2)
            frames[start : start + length, :RGB_SIZE] += amplitude * world.rgb[c]
            frames[start : start + length, RGB_SIZE:] += amplitude * world.audio[c]
            events.append((c, start, start + length))
    if outro:
        frames[content:] = world.outro + rng.standard_normal((outro, FEATURE_SIZE), dtype=np.float32) * 0.1

    segments = _rate_segments(rng, n, labels, events) if config.segments else []
    return SyntheticVideo(video_id(split, index), labels, quantize(frames), events, segments)


def _rate_segments(rng, n, labels, events, per_video: int = 5, min_overlap: int = 3):
    rated = labels[int(rng.integers(len(labels)))]
    inside = np.zeros(n, bool)
    for c, start, end in events:
        if c == rated:
            inside[start:end] = True
    starts = np.arange(0, n - SEGMENT_FRAMES + 1, SEGMENT_FRAMES)
    overlap = np.array([inside[s : s + SEGMENT_FRAMES].sum() for s in starts])
    positives = starts[overlap >= min_overlap]
    negatives = starts[overlap < min_overlap]
    take_pos = rng.permutation(positives)[: min(3, len(positives))]
    take_neg = rng.permutation(negatives)[: per_video - len(take_pos)]
    chosen = [(int(s), rated, 1.0) for s in take_pos] + [(int(s), rated, 0.0) for s in take_neg]
    return sorted(chosen)


def _serialize(video: SyntheticVideo) -> bytes:
    from vidistill.yt8m.records import Segment, Video, frame_example

    return frame_example(
        Video(
            video.id,
            video.labels,
            video.codes[:, :RGB_SIZE],
            video.codes[:, RGB_SIZE:],
            [Segment(s, c, score) for s, c, score in video.segments],
        ),
        quantized=True,
    )


def shard_path(out_dir: str, split: str, shard: int, shards: int) -> str:
    return os.path.join(out_dir, f"{split}-{shard:05d}-of-{shards:05d}.tfrecord")


def _shard_indices(videos: int, shard: int, shards: int) -> range:
    return range(shard * videos // shards, (shard + 1) * videos // shards)


_progress = None  # a shared counter in worker processes


def _init_worker(counter) -> None:
    global _progress
    _progress = counter


def _write_shard(task) -> int:
    from vidistill.yt8m.records import write_records

    config, out_dir, split, shard, shards = task
    world = World.build(config)
    videos, _ = config.split_sizes()[split]

    def records():
        for index in _shard_indices(videos, shard, shards):
            yield _serialize(generate_video(config, world, split, index))
            if _progress is not None:
                with _progress.get_lock():
                    _progress.value += 1

    return write_records(shard_path(out_dir, split, shard, shards), records())


def write_dataset(config: SynthConfig, out_dir: str, *, workers: int | None = None, progress: bool = True) -> dict:
    """Writes all shards of both splits (in parallel processes), synth.yaml and classes.csv; returns a summary."""
    import yaml
    from tqdm import tqdm

    os.makedirs(out_dir, exist_ok=True)
    tasks = [
        (config, out_dir, split, shard, shards)
        for split, (videos, shards) in config.split_sizes().items()
        if videos
        for shard in range(shards)
    ]
    total = config.videos + config.heldout
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    started = time.perf_counter()
    context = mp.get_context("spawn")  # never fork a process that may hold TensorFlow threads
    counter = context.Value("q", 0)
    with tqdm(total=total, unit="video", desc="synth", disable=not progress) as bar:
        if workers == 1:
            _init_worker(counter)
            try:
                for task in tasks:
                    _write_shard(task)
                    bar.update(counter.value - bar.n)
            finally:
                _init_worker(None)
        else:
            with context.Pool(workers, initializer=_init_worker, initargs=(counter,)) as pool:
                pending = pool.map_async(_write_shard, tasks)
                while not pending.ready():
                    pending.wait(0.25)
                    bar.update(counter.value - bar.n)
                pending.get()
                bar.update(counter.value - bar.n)
    seconds = time.perf_counter() - started

    world = World.build(config)
    with open(os.path.join(out_dir, "synth.yaml"), "w") as f:
        yaml.safe_dump({"synth": asdict(config)}, f, sort_keys=False)
    with open(os.path.join(out_dir, "classes.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Index", "Name", "Kind", "Prior", "Strength"])
        for c in range(config.classes):
            kind = "brief" if world.brief[c] else "long"
            writer.writerow([c, world.names[c], kind, f"{world.prior[c]:.6f}", f"{world.strength[c]:.3f}"])
    return {
        "out_dir": out_dir,
        "train": os.path.join(out_dir, "train-*.tfrecord"),
        "validate": os.path.join(out_dir, "validate-*.tfrecord"),
        "videos": total,
        "seconds": seconds,
        "videos_per_second": total / seconds if seconds else float("inf"),
        "workers": workers,
    }
