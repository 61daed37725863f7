"""Synthetic YouTube-8M data (yt8m.synthetic): determinism, the files written, and the generative model."""

from __future__ import annotations

import csv
import hashlib
import dataclasses
import os
from collections import Counter

import numpy as np
import pytest
import yaml

from vidistill.yt8m.constants import FEATURE_SIZE, MAX_FRAMES, RGB_SIZE, SEGMENT_FRAMES
from vidistill.yt8m.quantize import BIAS, SCALE, dequantize
from vidistill.yt8m.synthetic import SynthConfig, World, generate_video, write_dataset

# Tiny but complete: 23 training videos (uneven shards), 30-45 frames, 6 classes.
SMALL = dict(videos=23, classes=6, seed=3, min_frames=30, max_frames=45)
# For the in-process property tests: many short videos, every second one with an outro.
MODEL = SynthConfig(videos=300, classes=10, seed=11, min_frames=30, max_frames=60, segments=True)


def _events_mask(video, cls: int, n: int) -> np.ndarray:
    inside = np.zeros(n, bool)
    for c, start, end in video.events:
        if c == cls:
            inside[start:end] = True
    return inside


def _outro_frames(features: np.ndarray, world: World) -> int:
    """How many trailing frames are the shared end screen (plus its small noise); asserts they form a suffix."""
    is_outro = np.sqrt(((features - world.outro) ** 2).mean(axis=1)) < 0.3
    count = int(is_outro.sum())
    assert is_outro[len(is_outro) - count :].all(), "outro frames must be the last frames of the video"
    return count


def _read_back(pattern: str, config: SynthConfig) -> dict[str, tuple[tuple[int, ...], bytes]]:
    """id -> (labels, uint8 codes of the real frames) of frame-level records, via the official-style reader."""
    from vidistill.yt8m.readers import read_frame_dataset

    out = {}
    ds = read_frame_dataset(
        pattern, num_classes=config.classes, max_frames=config.max_frames, batch_size=64, deterministic=True
    )
    for batch in ds:
        for vid, frames, n, labels in zip(
            batch["id"].numpy(), batch["frames"].numpy(), batch["num_frames"].numpy(), batch["labels"].numpy()
        ):
            codes = np.rint((frames[:n] - BIAS) / SCALE)
            assert codes.min() >= 0 and codes.max() <= 255
            np.testing.assert_array_equal(frames[n:], 0.0)  # padding rows
            key = vid.decode()
            assert key not in out, f"video {key} read twice"
            out[key] = (tuple(np.flatnonzero(labels).tolist()), codes.astype(np.uint8).tobytes())
    return out


def _expected(config: SynthConfig, split: str, count: int) -> dict[str, tuple[tuple[int, ...], bytes]]:
    world = World.build(config)
    videos = (generate_video(config, world, split, i) for i in range(count))
    return {v.id: (tuple(v.labels), v.codes.tobytes()) for v in videos}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The same data written twice: one shard by one process, and three shards by two spawned processes."""
    serial = SynthConfig(**SMALL, shards=1)
    parallel = SynthConfig(**SMALL, shards=3)
    serial_dir = str(tmp_path_factory.mktemp("serial"))
    parallel_dir = str(tmp_path_factory.mktemp("parallel"))
    serial_summary = write_dataset(serial, serial_dir, workers=1, progress=False)
    parallel_summary = write_dataset(parallel, parallel_dir, workers=2, progress=False)
    return {
        "serial": (serial, serial_dir, serial_summary),
        "parallel": (parallel, parallel_dir, parallel_summary),
    }


# ------------------------------------------------------------------------------------------------ determinism
def test_same_config_gives_identical_videos():
    config = SynthConfig(**SMALL, segments=True)
    world_a, world_b = World.build(config), World.build(SynthConfig(**SMALL, segments=True))
    for name in ("rgb", "audio", "strength", "brief", "prior", "outro"):
        np.testing.assert_array_equal(getattr(world_a, name), getattr(world_b, name))
    for split in ("train", "validate"):
        for i in range(8):
            a = generate_video(config, world_a, split, i)
            b = generate_video(config, world_b, split, i)
            assert a.id == b.id == f"{split[0]}{i:07d}"
            assert a.labels == b.labels and a.events == b.events and a.segments == b.segments
            assert a.codes.dtype == np.uint8 and a.codes.shape[1] == FEATURE_SIZE
            np.testing.assert_array_equal(a.codes, b.codes)


def test_the_generated_content_is_pinned():
    """Codes, labels, events and segment ratings of 12 videos, hashed: the value the generator gave before its
    speed-ups (in-place quantization and noise), so that a faster generator is the same generator."""
    h = hashlib.sha256()
    configs = (
        SynthConfig(videos=12, classes=100, min_frames=30, max_frames=300),
        SynthConfig(videos=6, classes=3, min_frames=30, max_frames=45, segments=True, seed=2, outro_probability=1.0),
    )
    for config in configs:
        world = World.build(config)
        for split in ("train", "validate"):
            for index in range(3):
                video = generate_video(config, world, split, index)
                h.update(video.codes.tobytes())
                h.update(repr((video.id, video.labels, video.events, video.segments)).encode())
    assert h.hexdigest() == "fadf5f89ddebb4c82f5676e180c5dfcb2298088c77c948bd8aaca39462f51970"


def test_records_have_the_same_bytes_in_every_process():
    """Protobuf orders a map's keys (feature lists rgb / audio, context features) by a per-process hash unless asked
    not to: the same video must be the same bytes whatever the process (files byte-reproducible)."""
    import subprocess
    import sys

    code = (
        "import hashlib; from vidistill.yt8m.synthetic import SynthConfig, World, generate_video, _serialize; "
        "c = SynthConfig(videos=2, classes=5, segments=True); "
        "print(hashlib.sha256(_serialize(generate_video(c, World.build(c), 'train', 0))).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True
        ).stdout.split()[-1]
        for seed in ("1", "2", "3")
    }
    assert len(digests) == 1, digests


def test_different_seed_split_or_index_gives_different_videos():
    config = SynthConfig(**SMALL)
    other = dataclasses.replace(config, seed=config.seed + 1)
    world, other_world = World.build(config), World.build(other)
    assert not np.array_equal(world.rgb, other_world.rgb)
    base = [generate_video(config, world, "train", i) for i in range(6)]
    reseeded = [generate_video(other, other_world, "train", i) for i in range(6)]
    for a, b in zip(base, reseeded):
        assert a.codes.shape != b.codes.shape or not np.array_equal(a.codes, b.codes)
    assert [(a.labels, a.events) for a in base] != [(b.labels, b.events) for b in reseeded]
    # within one dataset, videos differ by index and by split
    assert len({v.codes.tobytes() for v in base}) == len(base)
    held_out = generate_video(config, world, "validate", 0)
    assert held_out.id == "v0000000" and held_out.codes.tobytes() != base[0].codes.tobytes()


def test_data_does_not_depend_on_shards_or_workers(datasets):
    serial, serial_dir, _ = datasets["serial"]
    parallel, parallel_dir, summary = datasets["parallel"]
    assert summary["workers"] == 2 and summary["videos"] == 23 + 4
    for split, count in (("train", 23), ("validate", 4)):
        one = _read_back(os.path.join(serial_dir, f"{split}-*.tfrecord"), serial)
        three = _read_back(os.path.join(parallel_dir, f"{split}-*.tfrecord"), parallel)
        assert len(one) == count
        assert sorted(one.items()) == sorted(three.items())
        # and both hold exactly what generate_video makes in this process
        assert sorted(one.items()) == sorted(_expected(serial, split, count).items())


# ------------------------------------------------------------------------------------------------ the files
def test_file_names_and_counts(datasets):
    import tensorflow as tf

    parallel, out_dir, summary = datasets["parallel"]
    names = sorted(f for f in os.listdir(out_dir) if f.endswith(".tfrecord"))
    assert names == [
        "train-00000-of-00003.tfrecord",
        "train-00001-of-00003.tfrecord",
        "train-00002-of-00003.tfrecord",
        "validate-00000-of-00001.tfrecord",
    ]
    assert not [f for f in os.listdir(out_dir) if ".tmp" in f]
    assert sorted(os.listdir(datasets["serial"][1])) == sorted(
        ["train-00000-of-00001.tfrecord", "validate-00000-of-00001.tfrecord", "synth.yaml", "classes.csv"]
    )
    assert summary["train"] == os.path.join(out_dir, "train-*.tfrecord")
    assert summary["validate"] == os.path.join(out_dir, "validate-*.tfrecord")

    # the shards partition the training videos into contiguous index ranges of (almost) equal size
    shard_ids = []
    for name in names[:3]:
        ids = []
        for record in tf.data.TFRecordDataset(os.path.join(out_dir, name)):
            example = tf.train.SequenceExample.FromString(record.numpy())
            ids.append(int(example.context.feature["id"].bytes_list.value[0].decode()[1:]))
        shard_ids.append(ids)
    assert [len(ids) for ids in shard_ids] == [7, 8, 8]
    assert [i for ids in shard_ids for i in ids] == list(range(23))
    held_out = sum(1 for _ in tf.data.TFRecordDataset(os.path.join(out_dir, names[3])))
    assert held_out == parallel.heldout == 23 // 5


def test_split_sizes_and_default_heldout():
    assert SynthConfig(videos=2000, shards=8).split_sizes() == {"train": (2000, 8), "validate": (400, 2)}
    assert SynthConfig(videos=23, shards=3).split_sizes() == {"train": (23, 3), "validate": (4, 1)}
    assert SynthConfig(videos=4).heldout == 1  # never an empty held-out split by default
    assert SynthConfig(videos=10, heldout=0).heldout == 0


def test_synth_yaml_round_trips(datasets):
    for config, out_dir, _ in datasets.values():
        with open(os.path.join(out_dir, "synth.yaml")) as f:
            saved = yaml.safe_load(f)
        assert list(saved) == ["synth"]
        assert saved["synth"]["heldout"] == 4  # the resolved default is saved, not None
        assert SynthConfig(**saved["synth"]) == config


def test_classes_csv(datasets):
    config, out_dir, _ = datasets["parallel"]
    world = World.build(config)
    with open(os.path.join(out_dir, "classes.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Index", "Name", "Kind", "Prior", "Strength"]
    body = rows[1:]
    assert len(body) == config.classes
    assert [int(r[0]) for r in body] == list(range(config.classes))
    kinds = [r[2] for r in body]
    assert set(kinds) <= {"brief", "long"}
    assert kinds.count("brief") == round(config.brief_fraction * config.classes) == 2
    assert kinds == ["brief" if b else "long" for b in world.brief]
    assert [r[1] for r in body] == [f"{k}-{i}" for i, k in enumerate(kinds)]
    priors = np.array([float(r[3]) for r in body])
    assert np.all(np.diff(priors) < 0) and abs(priors.sum() - 1) < 1e-5
    np.testing.assert_allclose(priors, (1 / np.arange(1, 7)) / (1 / np.arange(1, 7)).sum(), atol=1e-6)
    strengths = np.array([float(r[4]) for r in body])
    assert np.all((strengths >= 0.6) & (strengths <= 1.4))


def test_segment_ratings_are_written(tmp_path):
    from vidistill.yt8m.readers import read_ground_truth

    config = SynthConfig(videos=6, heldout=2, classes=5, seed=2, min_frames=30, max_frames=40, segments=True)
    write_dataset(config, str(tmp_path), workers=1, progress=False)
    truth = read_ground_truth(str(tmp_path / "*.tfrecord"), num_classes=config.classes)
    world = World.build(config)
    expected: dict[int, dict[str, float]] = {}
    labels = {}
    for split, count in (("train", 6), ("validate", 2)):
        for i in range(count):
            video = generate_video(config, world, split, i)
            labels[video.id] = video.labels
            for start, cls, score in video.segments:
                expected.setdefault(cls, {})[f"{video.id}:{start}"] = score
    assert truth.labels == labels
    assert truth.segments == expected


# ------------------------------------------------------------------------------------------------ the model
@pytest.fixture(scope="module")
def model_videos():
    world = World.build(MODEL)
    return world, [generate_video(MODEL, world, "train", i) for i in range(MODEL.videos)]


def test_frames_labels_events(model_videos):
    world, videos = model_videos
    lengths, outros, num_labels = [], [], Counter()
    for video in videos:
        n = len(video.codes)
        lengths.append(n)
        assert MODEL.min_frames <= n <= MODEL.max_frames
        assert video.codes.shape == (n, FEATURE_SIZE)
        assert 1 <= len(video.labels) <= MODEL.max_labels
        assert video.labels == sorted(set(video.labels))
        assert all(0 <= c < MODEL.classes for c in video.labels)
        num_labels[len(video.labels)] += 1

        outro = _outro_frames(dequantize(video.codes), world)
        outros.append(outro)
        content = n - outro
        assert content >= 30 and outro <= 15
        # 5-15 frames, cut shorter only where the content would drop below 30 frames
        assert outro == 0 or outro >= 5 or content == 30
        assert {c for c, _, _ in video.events} == set(video.labels)  # every label has an event, no other class
        for c in video.labels:
            assert 1 <= sum(1 for e in video.events if e[0] == c) <= 2
        for c, start, end in video.events:
            assert 0 <= start < end <= content, (video.id, video.events, n, outro)
            if world.brief[c]:
                assert 2 <= end - start <= 6
            else:
                assert 8 <= end - start <= 0.4 * content
    assert min(lengths) < 35 and max(lengths) > 55  # the whole range is used
    assert set(num_labels) == {1, 2, 3, 4} and num_labels[1] > num_labels[4]
    # outros appear about half of the time (outro_probability=0.5)
    assert 0.35 < np.mean([o > 0 for o in outros]) < 0.65
    # long and brief classes are both present
    assert world.brief.sum() == 3


def test_outro_probability_and_max_labels():
    config = SynthConfig(videos=30, classes=8, min_frames=45, max_frames=50, outro_probability=1.0, max_labels=2)
    world = World.build(config)
    no_outro = dataclasses.replace(config, outro_probability=0.0)
    for i in range(30):
        video = generate_video(config, world, "train", i)
        outro = _outro_frames(dequantize(video.codes), world)
        assert 5 <= outro <= 15  # always there, and never shortened (45 - 15 >= 30)
        assert all(end <= len(video.codes) - outro for _, _, end in video.events)
        assert 1 <= len(video.labels) <= 2
        assert _outro_frames(dequantize(generate_video(no_outro, world, "train", i).codes), world) == 0


def test_segments(model_videos):
    _, videos = model_videos
    positives = negatives = 0
    for video in videos:
        n = len(video.codes)
        assert 1 <= len(video.segments) <= 5
        rated = {c for _, c, _ in video.segments}
        assert len(rated) == 1 and rated <= set(video.labels)
        (cls,) = rated
        inside = _events_mask(video, cls, n)
        starts = [s for s, _, _ in video.segments]
        assert len(set(starts)) == len(starts)
        for start, _, score in video.segments:
            assert start % SEGMENT_FRAMES == 0 and 0 <= start <= n - SEGMENT_FRAMES
            expected = 1.0 if inside[start : start + SEGMENT_FRAMES].sum() >= 3 else 0.0
            assert score == expected, (video.id, start, video.events)
            positives += score == 1.0
            negatives += score == 0.0
    assert positives > 100 and negatives > 100
    assert generate_video(dataclasses.replace(MODEL, segments=False), World.build(MODEL), "train", 0).segments == []


def test_class_frequency_is_zipf_like(model_videos):
    _, videos = model_videos
    counts = np.bincount([c for v in videos for c in v.labels], minlength=MODEL.classes)
    assert counts.min() > 0
    assert counts[0] == counts.max()
    assert counts[0] > 2 * np.median(counts)
    assert counts[:3].sum() > counts[-3:].sum()


def _projection(features: np.ndarray, world: World, cls: int) -> np.ndarray:
    """Per-frame rgb dot product with the class prototype, per feature (an event adds about signal*strength)."""
    return features[:, :RGB_SIZE] @ world.rgb[cls] / RGB_SIZE


def test_signal_is_inside_the_event(model_videos):
    world, videos = model_videos
    video = next(v for v in videos if any(not world.brief[c] for c in v.labels) and len(v.codes) >= 50)
    cls = next(c for c in video.labels if not world.brief[c])
    features = dequantize(video.codes)
    n = len(features)
    content = n - _outro_frames(features, world)
    inside = _events_mask(video, cls, n)
    outside = ~inside & (np.arange(n) < content)
    assert inside.sum() >= 8 and outside.sum() >= 8
    proj = _projection(features, world, cls)
    amplitude = MODEL.signal * world.strength[cls]
    assert proj[inside].mean() - proj[outside].mean() > 0.5 * amplitude
    # a class the video does not carry shows no such step between the same frames
    other = next(c for c in range(MODEL.classes) if c not in video.labels)
    other_proj = _projection(features, world, other)
    assert abs(other_proj[inside].mean() - other_proj[outside].mean()) < 0.3 * amplitude


def test_signal_is_temporal_over_many_videos(model_videos):
    """Averaged over videos and labels: frames inside a label's events carry its prototype (about one
    amplitude); the content frames outside them carry no more of it than of a class the video lacks."""
    world, videos = model_videos
    inside_excess, outside_excess, control = [], [], []
    for video in videos[:150]:
        features = dequantize(video.codes)
        n = len(features)
        content = np.arange(n) < n - _outro_frames(features, world)
        absent = [c for c in range(MODEL.classes) if c not in video.labels]
        for cls in video.labels:
            amplitude = MODEL.signal * world.strength[cls]
            inside = _events_mask(video, cls, n)
            outside = content & ~inside
            proj = _projection(features, world, cls)
            inside_excess.append((proj[inside].mean() - proj[outside].mean()) / amplitude)
            outside_excess.append(proj[outside].mean() / amplitude)
            control.append(np.mean([_projection(features[outside], world, c).mean() for c in absent]) / amplitude)
    inside_excess, outside_excess, control = map(np.array, (inside_excess, outside_excess, control))
    assert inside_excess.min() > 0.4
    assert 0.8 < inside_excess.mean() < 1.4
    assert abs(outside_excess.mean() - control.mean()) < 0.1
    assert abs(outside_excess.mean()) < 0.1


# ------------------------------------------------------------------------------------------------ bad options
@pytest.mark.parametrize(
    "options, name",
    [
        (dict(classes=1), "classes=1"),
        (dict(min_frames=61, max_frames=60), "min_frames=61"),
        (dict(min_frames=29), "min_frames=29"),
        (dict(max_frames=MAX_FRAMES + 1), "max_frames=301"),
        (dict(videos=0), "videos=0"),
        (dict(heldout=-1), "heldout=-1"),
        (dict(shards=0), "shards=0"),
        (dict(max_labels=0), "max_labels=0"),
        (dict(classes=3, max_labels=4), "max_labels=4"),
        (dict(brief_fraction=1.5), "brief_fraction=1.5"),
        (dict(outro_probability=-0.1), "outro_probability=-0.1"),
    ],
)
def test_bad_options_raise_naming_the_option(options, name):
    with pytest.raises(ValueError, match=f"option {name} is out of range"):
        SynthConfig(**options)


@pytest.mark.parametrize("classes", [2, 3])
def test_few_classes_work_with_default_max_labels(classes):
    config = SynthConfig(videos=5, classes=classes, min_frames=30, max_frames=30)
    assert config.max_labels == min(4, classes)
    video = generate_video(config, World.build(config), "train", 0)
    assert 1 <= len(video.labels) <= classes
