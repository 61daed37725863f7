"""Teacher outputs stored beside the records: each video's teacher probabilities and representation, written once
(`vidistill teacher-outputs`), so that serial students train without running their teacher.

A directory of teacher outputs holds

    teacher_outputs.json   the manifest: the teacher, the class count C, the representation width E, the value
                           type, and for each source file its path, size in bytes and record count
    <name>                 one TFRecord file per source file, under the source's base name, with one
                           tf.train.Example per source record, in the source's order: "id" (bytes, the video's id),
                           "predictions" (C values) and "representation" (E values), raw little-endian bytes

The reader (`read_frame_dataset(..., teacher_outputs=...)`) walks each source file and its outputs file side by
side and checks every pair's id, so outputs written for other records are an error naming the file and video.

Every class, in float16 by default, rather than the top N: L_PRED's cross-entropy and KL read the probability of
every class, and a top-N table would replace the teacher's small probabilities by zero (a different target, and
an infinite KL term). At 3,862 classes that is 7.7 KB per video, 2% of a 300-frame record's 346 KB; float16's
relative rounding (2^-11) is far below the teacher's own error. `float32` keeps the teacher's values exactly (the
trainer's equality test uses it) at twice the size.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from vidistill.yt8m.errors import ConfigError, DataError
from vidistill.yt8m.files import atomic_write

MANIFEST = "teacher_outputs.json"
FORMAT = 1
DTYPES = ("float16", "float32")
FEATURES = ("id", "predictions", "representation")


@dataclass
class SourceFile:
    """A records file whose videos have outputs: where it was, its size when the outputs were written, and how
    many records it held."""

    source: str
    bytes: int
    records: int


@dataclass
class TeacherOutputs:
    """A directory of teacher outputs (its manifest); `load` reads and checks one."""

    directory: str
    source: str  # the run or ensemble directory whose model wrote them
    teacher: str  # which model of it, and its checkpoint
    num_classes: int
    representation_width: int
    dtype: str = "float16"
    files: dict[str, SourceFile] = field(default_factory=dict)  # base name -> its source

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"teacher outputs dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    def path_for(self, source: str) -> str:
        """The outputs file of a source records file."""
        return os.path.join(self.directory, os.path.basename(source))

    @classmethod
    def load(cls, directory: str) -> TeacherOutputs:
        path = os.path.join(directory, MANIFEST)
        if not os.path.exists(path):
            raise DataError(
                f"{directory} holds no teacher outputs ({MANIFEST} is missing): write them with "
                f"`vidistill teacher-outputs RUN --data GLOB --out {directory}`"
            )
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
        if data.get("format") != FORMAT:
            raise DataError(f"{path}: format {data.get('format')!r}, this version reads format {FORMAT}")
        files = {name: SourceFile(**entry) for name, entry in data["files"].items()}
        return cls(
            directory,
            data["source"],
            data["teacher"],
            data["num_classes"],
            data["representation_width"],
            data["dtype"],
            files,
        )

    def save(self) -> None:
        data = {"format": FORMAT, **asdict(self)}
        del data["directory"]
        with atomic_write(os.path.join(self.directory, MANIFEST)) as f:
            json.dump(data, f, indent=2)

    def check(self, sources: list[str], num_classes: int, what: str = "--teacher-outputs") -> None:
        """Before training: every source file has outputs written from it as it is now, for `num_classes`."""
        if self.num_classes != num_classes:
            raise ConfigError(
                f"{what} {self.directory}: the outputs hold {self.num_classes} classes but the run has "
                f"{num_classes}: write them with the run's teacher"
            )
        for source in sources:
            name = os.path.basename(source)
            entry = self.files.get(name)
            if entry is None:
                raise DataError(
                    f"{what} {self.directory} holds no outputs for {source}: write them with "
                    f"`vidistill teacher-outputs ... --data {source} --out {self.directory}`"
                )
            import tensorflow as tf

            size = tf.io.gfile.stat(source).length
            if size != entry.bytes:
                raise DataError(
                    f"{source} has {size} bytes, but its teacher outputs in {self.directory} were written from "
                    f"{entry.bytes} bytes ({entry.source}): the records changed; write the outputs again"
                )
            if not tf.io.gfile.exists(self.path_for(source)):
                raise DataError(f"{self.path_for(source)} is missing (listed in {MANIFEST}): write the outputs again")


def outputs_example(video_id: bytes, predictions: np.ndarray, representation: np.ndarray, dtype: str) -> bytes:
    """One video's outputs as a serialized tf.train.Example."""
    import tensorflow as tf

    def raw(values: np.ndarray) -> tf.train.Feature:
        data = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))

    features = {
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[video_id])),
        "predictions": raw(predictions),
        "representation": raw(representation),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)
