"""Teachers run once: `write_teacher_outputs` stores a trained teacher's (or an ensemble's) outputs for every
video of a data set (format: yt8m/teacher_outputs.py), which a serial run then reads instead of running the
teacher (TrainConfig.teacher_outputs).

Written file by file, each atomically, the manifest updated after each: an interrupted run keeps the files it
finished, and running the same command again skips them (same teacher, value type and unchanged source files).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import tensorflow as tf

from vidistill.teachers.inference import outputs_of
from vidistill.yt8m.errors import ConfigError
from vidistill.yt8m.readers import data_errors, list_files, read_frame_dataset
from vidistill.yt8m.records import write_records
from vidistill.yt8m.teacher_outputs import MANIFEST, SourceFile, TeacherOutputs, outputs_example


def _file_outputs(loaded, path: str, dtype: str, batch_size: int) -> Iterator[bytes]:
    """One serialized outputs record per record of `path`, in the file's order."""
    dataset = read_frame_dataset(
        path,
        num_classes=loaded.num_classes,
        max_frames=loaded.max_frames,
        batch_size=batch_size,
        deterministic=True,
        select=loaded.select,
    )
    with data_errors():
        for batch in dataset:
            outputs = outputs_of(loaded.model, batch["frames"], batch["num_frames"])
            predictions, representation = outputs["predictions"].numpy(), outputs["representation"].numpy()
            for i, video_id in enumerate(batch["id"].numpy()):
                yield outputs_example(video_id, predictions[i], representation[i], dtype)


def write_teacher_outputs(
    source: str,
    data: str,
    out_dir: str,
    *,
    dtype: str = "float16",
    batch_size: int = 64,
    which: str = "teacher",
    overwrite: bool = False,
    progress: bool = True,
) -> TeacherOutputs:
    """Writes the outputs of `source` (a run's teacher, or with `which` its student; an ensemble directory; a
    converted student) for every video of `data` into `out_dir`; returns the manifest."""
    from tqdm import tqdm

    from vidistill.distill.runs import load_model

    files = list_files(data)
    by_name: dict[str, str] = {}
    for path in files:
        name = os.path.basename(path)
        if name in by_name:
            raise ConfigError(
                f"{by_name[name]} and {path} share the file name {name!r}: teacher outputs are stored under each "
                "source's file name; write them into two --out directories"
            )
        by_name[name] = path
    loaded = load_model(source, which)
    width = int(loaded.model.output["representation"].shape[-1])
    fresh = TeacherOutputs(out_dir, os.path.abspath(source), loaded.description, loaded.num_classes, width, dtype)
    outputs = fresh
    if os.path.exists(os.path.join(out_dir, MANIFEST)) and not overwrite:
        outputs = TeacherOutputs.load(out_dir)
        if (outputs.teacher, outputs.num_classes, outputs.representation_width, outputs.dtype) != (
            fresh.teacher,
            fresh.num_classes,
            fresh.representation_width,
            fresh.dtype,
        ):
            raise ConfigError(
                f"{out_dir} holds outputs of another teacher or type ({outputs.teacher}, {outputs.dtype}): pass "
                "--overwrite to replace them, or another --out"
            )
    elif overwrite and os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            if name == MANIFEST or name in (os.path.basename(p) for p in files):
                os.remove(os.path.join(out_dir, name))
        outputs = fresh
    os.makedirs(out_dir, exist_ok=True)
    for path in tqdm(files, desc="teacher outputs", unit="file", disable=not progress):
        name, size = os.path.basename(path), tf.io.gfile.stat(path).length
        done = outputs.files.get(name)
        if done is not None and done.bytes == size and os.path.exists(outputs.path_for(path)):
            continue  # written by an earlier, interrupted run
        count = write_records(outputs.path_for(path), _file_outputs(loaded, path, dtype, batch_size))
        outputs.files[name] = SourceFile(os.path.abspath(path), size, count)
        outputs.save()
    return outputs
