"""What every exported file serves: the network as a tf.function of (frames [B, T, 1152] float32, num_frames [B]
int32) returning {"predictions", "representation"}. The ONNX conversion and the SavedModels trace this one
function."""

from __future__ import annotations

import tensorflow as tf

from vidistill.yt8m.constants import FEATURE_SIZE


def signature(frames: int) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    return (
        tf.TensorSpec([None, frames, FEATURE_SIZE], tf.float32, name="frames"),
        tf.TensorSpec([None], tf.int32, name="num_frames"),
    )


def serving_function(network, frames: int):
    @tf.function(input_signature=signature(frames))
    def serve(frames, num_frames):
        outputs = network({"frames": frames, "num_frames": num_frames}, training=False)
        return {"predictions": outputs["predictions"], "representation": outputs["representation"]}

    return serve
