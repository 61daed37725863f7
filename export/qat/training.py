"""Setting a QAT model's ranges and training it: `calibrate` (activation ranges from batches), `is_calibrated`,
`refresh_weight_ranges`, and `qat_finetune` (its own short training loop: Adam on L_CE in training mode)."""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from vidistill.export.qat.quantizers import calibrating
from vidistill.export.qat.scheme import _quantizers, _refresh, _wrappers
from vidistill.yt8m.loss import cross_entropy
from vidistill.yt8m.errors import ConfigError


def refresh_weight_ranges(model: keras.Model) -> None:
    """Set every kernel's quantization range from its current values (after the optimizer's last update)."""
    _refresh(model)


def _split(element):
    """A batch -> (inputs {"frames", "num_frames"}, labels or None)."""
    if isinstance(element, (tuple, list)):
        inputs, labels = element[0], (element[1] if len(element) > 1 else None)
    else:
        inputs, labels = element, element.get("labels") if isinstance(element, dict) else None
    return {"frames": inputs["frames"], "num_frames": inputs["num_frames"]}, labels


def calibrate(model: keras.Model, batches, *, steps: int | None = None) -> int:
    """Set the activation ranges of a QAT model to the max |x| seen over `batches` (inference mode: batch norms
    use their moving statistics, the activations pass through unquantized), and the kernel ranges to max |w|.
    Ranges already set are only widened. Returns the number of batches used."""
    if not _wrappers(model):
        return 0
    count = 0
    with calibrating():
        forward = tf.function(lambda inputs: model(inputs, training=False))  # traced while calibrating
        for element in batches:
            if steps is not None and count >= steps:
                break
            forward(_split(element)[0])
            count += 1
    if count == 0:
        raise ConfigError("calibrate: no batches")
    _refresh(model)
    return count


def is_calibrated(model: keras.Model) -> bool:
    """True when every range of the QAT model has been set (by `calibrate` or a training step)."""
    return all(bool(tf.reduce_all(quantizer.vars["max"] > 0)) for quantizer, _ in _quantizers(model) if quantizer.vars)


def qat_finetune(qat_model: keras.Model, dataset, *, steps: int, learning_rate: float = 1e-4) -> list[float]:
    """`steps` steps of Adam on L_CE (plus the model's regularization losses) in training mode, over batches of
    ({"frames" [B, k, 1152], "num_frames" [B]}, labels [B, C]) (repeated when shorter). The quantizers update
    their ranges as they go; at the end the kernel ranges are refreshed. Returns L_CE per step."""
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    optimizer = keras.optimizers.Adam(learning_rate)
    variables = qat_model.trainable_variables

    # the optimizer's update runs eagerly: a Keras optimizer applied inside a tf.function keeps its two slots per
    # weight alive after both are gone (measured: 2x the weights, resident through the rest of the export)
    @tf.function
    def gradients(inputs, labels):
        with tf.GradientTape() as tape:
            predictions = qat_model(inputs, training=True)["predictions"]
            loss = cross_entropy(labels, predictions)
            total = (loss + tf.add_n(qat_model.losses)) if qat_model.losses else loss
        return loss, tape.gradient(total, variables)

    def step(inputs, labels):
        loss, grads = gradients(inputs, labels)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    source = dataset.repeat() if isinstance(dataset, tf.data.Dataset) else dataset
    losses = []
    for element in source:
        inputs, labels = _split(element)
        if labels is None:
            raise ConfigError("qat_finetune: the batches carry no labels")
        losses.append(float(step(inputs, labels)))
        if len(losses) >= steps:
            break
    if len(losses) < steps:
        raise ConfigError(f"qat_finetune: the data ended after {len(losses)} of {steps} steps")
    _refresh(qat_model)
    return losses
