"""`Predictor`: an exported ONNX file, used alone. Needs onnxruntime and numpy only (TensorFlow just to read
tfrecords with `predict_records`).

    predictor = Predictor("export/int8-dynamic.onnx")
    probabilities = predictor.predict_videos([video_a, video_b])   # each [frames, 1152], float or uint8 codes
    fast = Predictor("export/int8-dynamic.onnx", k=10)             # an any-k student's file at k=10

It reads the model card beside the file, turns whole videos into the file's inputs (a student's k frames chosen
by its selection policy, bit for bit as in training; a teacher's frames padded or cut to its length), and runs
the ONNX Runtime session. `record_batches` reads labeled records as whole videos, for the export's checks and
int8-qat fine-tuning.
"""

from __future__ import annotations

import os

import numpy as np

from vidistill.export.card import ModelCard, read_card
from vidistill.export.sessions import create_session
from vidistill.students.selection_numpy import select_frames
from vidistill.yt8m.constants import FEATURE_SIZE, MAX_FRAMES
from vidistill.yt8m.quantize import dequantize
from vidistill.yt8m.errors import ConfigError


def frames_to_read(model) -> int:
    """Frames to read per video for `model` (a ModelCard or an ExportSource: anything with `selection` and
    `frames`): a student selects from the whole video (up to 300 frames, or its k if larger); a teacher sees its
    first `frames` frames, as in training."""
    return max(MAX_FRAMES, model.frames) if model.selection else model.frames


def prepare_inputs(card, frames: np.ndarray, num_frames) -> dict[str, np.ndarray]:
    """Whole videos [B, T, 1152] (float features or uint8 codes; rows past num_frames ignored) -> the inputs of
    the file `card` describes (a ModelCard, or an ExportSource before its card exists): a student's selected
    frames, or a teacher's frames padded / cut to its length."""
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[-1] != FEATURE_SIZE:
        raise ConfigError(f"frames must be [batch, time, {FEATURE_SIZE}], got shape {frames.shape}")
    if frames.dtype == np.uint8:
        frames = dequantize(frames)
    frames = frames.astype(np.float32, copy=False)
    n = np.clip(np.asarray(num_frames, np.int64).reshape(-1), 0, frames.shape[1])
    if card.selection:
        selection = card.selection
        selected, counts = select_frames(frames, n, selection["k"], selection["policy"], seed=selection["seed"])
        return {"frames": selected, "num_frames": counts}
    t = card.frames
    fitted = np.zeros((frames.shape[0], t, FEATURE_SIZE), np.float32)
    fitted[:, : min(t, frames.shape[1])] = frames[:, :t]
    counts = np.minimum(n, t)
    fitted[np.arange(t)[None, :] >= counts[:, None]] = 0
    return {"frames": fitted, "num_frames": counts.astype(np.int32)}


def frames_to_decode(model):
    """The reader's `select` for a file with a frame selection (its k frames, picked before decoding, which its
    inputs then pass through unchanged), else None."""
    if not model.selection:
        return None
    from vidistill.students.selection import frames_to_decode as selection_to_decode

    return selection_to_decode(*(model.selection[key] for key in ("k", "policy", "seed")))


def record_batches(pattern: str, model, batch_size: int, max_videos: int = 0, bad_records=None):
    """Labeled frame-level records -> (frames [B, T, 1152] whole videos, num_frames [B], labels [B, C]) per batch,
    in file order, T = `frames_to_read(model)` (needs TensorFlow); at most `max_videos` videos (0: all);
    `bad_records` (a readers.BadRecords): skip and count bad records."""
    from vidistill.yt8m.readers import data_errors, read_frame_dataset

    ds = read_frame_dataset(
        pattern,
        num_classes=model.classes,
        max_frames=frames_to_read(model),
        batch_size=batch_size,
        deterministic=True,
        bad_records=bad_records,
        select=frames_to_decode(model),
    )
    if max_videos:
        ds = ds.unbatch().take(max_videos).batch(batch_size)
    with data_errors():
        for batch in ds.as_numpy_iterator():
            yield batch["frames"], batch["num_frames"], batch["labels"]


class Predictor:
    """`k`: an any-k student's file at one of its k's (None: its largest; the card's `frame_counts` lists them);
    `card` then describes the file at k (ModelCard.for_k)."""

    def __init__(
        self,
        path: str,
        *,
        k: int | None = None,
        provider: str = "cpu",
        threads: int | None = None,
        card: ModelCard | None = None,
    ):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no ONNX file {path}")
        self.path = path
        self.card = (card or read_card(path)).for_k(k)  # before the session: a bad k costs no loading
        self.session = create_session(path, provider, threads)
        self.frames = self.card.frames

    def inputs(self, frames: np.ndarray, num_frames) -> dict[str, np.ndarray]:
        """Whole videos [B, T, 1152] (rows past num_frames ignored) -> the file's inputs."""
        return prepare_inputs(self.card, frames, num_frames)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The session on ready inputs (see `inputs`)."""
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, inputs)))

    def predict(self, frames: np.ndarray, num_frames) -> dict[str, np.ndarray]:
        """{"predictions" [B, C], "representation" [B, E]} for a padded batch of whole videos."""
        return self.run(self.inputs(frames, num_frames))

    def predict_videos(self, videos: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Probabilities [N, C] for a list of videos, each [frames, 1152] (float features or uint8 codes)."""
        outputs = []
        for start in range(0, len(videos), batch_size):
            chunk = videos[start : start + batch_size]
            length = max(1, max(len(v) for v in chunk))
            dtype = np.uint8 if all(np.asarray(v).dtype == np.uint8 for v in chunk) else np.float32
            frames = np.zeros((len(chunk), length, FEATURE_SIZE), dtype)
            for i, video in enumerate(chunk):
                video = np.asarray(video)
                if video.ndim != 2 or video.shape[1] != FEATURE_SIZE:
                    raise ConfigError(f"video {start + i}: expected [frames, {FEATURE_SIZE}], got {video.shape}")
                frames[i, : len(video)] = video
            lengths = np.array([len(v) for v in chunk], np.int32)
            outputs.append(self.predict(frames, lengths)["predictions"])
        return np.concatenate(outputs) if outputs else np.zeros((0, self.card.classes), np.float32)

    def predict_records(self, pattern: str, batch_size: int = 64, bad_records=None):
        """(ids, probabilities [B, C], labels [B, C]) per batch of frame-level tfrecords (needs TensorFlow);
        `bad_records` (a readers.BadRecords): skip and count bad records."""
        from vidistill.yt8m.readers import data_errors, read_frame_dataset

        ds = read_frame_dataset(
            pattern,
            num_classes=self.card.classes,
            max_frames=frames_to_read(self.card),
            batch_size=batch_size,
            deterministic=True,
            bad_records=bad_records,
            select=frames_to_decode(self.card),
        )
        with data_errors():
            for batch in ds.as_numpy_iterator():
                scores = self.predict(batch["frames"], batch["num_frames"])["predictions"]
                yield [v.decode() for v in batch["id"]], scores, batch["labels"]
