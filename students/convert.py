"""A student on its own: the directory `vidistill convert` writes, and loading it back.

DIR/student.yaml   the StudentConfig (backbone family, k, selection policy)
DIR/weights/       the student's variables (a tf.train.Checkpoint: fine-tuning restores from here)
DIR/saved_model/   a TF SavedModel with one serving signature: frames [B, T, 1152] float32 (the whole video,
                   any T) and num_frames [B] int32 in, {"predictions", "representation"} out; the frame
                   selection is inside, so it is a drop-in replacement for a teacher served the same way.
                   An any-k student: at its largest k, and one more signature per k ("k10": at k=10).
"""

from __future__ import annotations

import os
import shutil

import tensorflow as tf
import tf_keras as keras
import yaml

from vidistill.students.student import StudentConfig, build_student, student_at
from vidistill.yt8m.constants import FEATURE_SIZE
from vidistill.yt8m.errors import ConfigError

CONFIG = "student.yaml"
WEIGHTS = "weights"
SAVED_MODEL = "saved_model"


def save_student(student: keras.Model, config: StudentConfig, out_dir: str) -> str:
    """Writes config, weights and SavedModel into `out_dir` (built in a temporary folder, then renamed)."""
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, CONFIG), "w") as f:
        yaml.safe_dump({"student": config.to_dict()}, f, sort_keys=False)
    tf.train.Checkpoint(student=student).write(os.path.join(tmp, WEIGHTS, "student"))

    signatures = {"serving_default": _serving(student)}
    if config.any_k:  # an any-k student: one signature per k too ("k10": the student at k=10)
        signatures.update({f"k{k}": _serving(student_at(student, config, k)) for k in config.ks})
    module = tf.Module()  # a plain module holding the variables saves about 4x faster than the Keras model
    module.variables_ = list(student.variables)
    for name, function in signatures.items():
        setattr(module, f"serve_{name}", function)
    tf.saved_model.save(module, os.path.join(tmp, SAVED_MODEL), signatures=signatures)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def _serving(student: keras.Model):
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, FEATURE_SIZE], tf.float32, name="frames"),
            tf.TensorSpec([None], tf.int32, name="num_frames"),
        ]
    )
    def serve(frames, num_frames):
        outputs = student({"frames": frames, "num_frames": num_frames}, training=False)
        # exactly these two, whatever training-only outputs the model has (a MixNeXtVLAD's branch logits)
        return {"predictions": outputs["predictions"], "representation": outputs["representation"]}

    return serve


def is_student_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, CONFIG))


def load_student_config(student_dir: str) -> StudentConfig:
    path = os.path.join(student_dir, CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{student_dir} is not a converted student (no {CONFIG}): run `vidistill convert`")
    with open(path) as f:
        return StudentConfig.from_dict(yaml.safe_load(f)["student"])


def load_student_weights(student: keras.Model, student_dir: str) -> None:
    path = os.path.join(student_dir, WEIGHTS, "student")
    status = tf.train.Checkpoint(student=student).read(path)
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ConfigError(f"{student_dir}: its weights do not fit this student configuration ({e})") from None


def load_student(student_dir: str) -> keras.Model:
    """The Keras student rebuilt from its config, with its weights."""
    student = build_student(load_student_config(student_dir))
    load_student_weights(student, student_dir)
    return student
