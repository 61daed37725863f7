"""A model's predictions as a tf.function made once per model and traced once per frame count.

Evaluation and the exporter's held-out reference used to make a new tf.function at every call: each evaluation
traced the network again (twice: the smaller last batch relaxed the batch size), and TensorFlow warned of
"frequent retracing" once a process had evaluated a few models. Here the batch size is left open in the function's
signature, and the function is kept for as long as its model lives.
"""

from __future__ import annotations

import weakref

import tensorflow as tf

from vidistill.yt8m.constants import FEATURE_SIZE

# model -> {frame count: its tf.function}; the functions reach the model through a weak reference, so this table
# never keeps a model (and its weights) alive
_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _traced(model_ref: weakref.ref, frames: int):
    @tf.function(
        input_signature=(
            tf.TensorSpec([None, frames, FEATURE_SIZE], tf.float32),
            tf.TensorSpec([None], tf.int32),
        )
    )
    def predict(frames, num_frames):
        outputs = model_ref()({"frames": frames, "num_frames": num_frames}, training=False)
        return {"predictions": outputs["predictions"], "representation": outputs["representation"]}

    return predict


def predictions_of(model, frames, num_frames) -> tf.Tensor:
    """`model`'s predictions [B, C] for frames [B, T, 1152] and num_frames [B], any B: the network is traced on the
    first call for each T, never again for the same model."""
    return outputs_of(model, frames, num_frames)["predictions"]


def outputs_of(model, frames, num_frames) -> dict[str, tf.Tensor]:
    """{"predictions" [B, C], "representation" [B, E]} of `model`, traced as `predictions_of` (one function)."""
    functions = _FUNCTIONS.setdefault(model, {})
    t = int(frames.shape[1])
    if t not in functions:
        functions[t] = _traced(weakref.ref(model), t)
    return functions[t](tf.convert_to_tensor(frames, tf.float32), tf.convert_to_tensor(num_frames, tf.int32))


def trace_count(model) -> int:
    """How many times `model`'s prediction functions have been traced (for tests)."""
    return sum(f.experimental_get_tracing_count() for f in _FUNCTIONS.get(model, {}).values())
