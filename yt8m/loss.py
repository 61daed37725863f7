"""The official YouTube-8M training loss (the starter code's ``CrossEntropyLoss``), shared by distillation
(distill/), evaluation and quantization-aware fine-tuning (export/qat/)."""

from __future__ import annotations


import tensorflow as tf

from vidistill.yt8m.errors import ConfigError


def _f32(x) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def cross_entropy(labels, predictions, label_weights=None, epsilon: float = 1e-5) -> tf.Tensor:
    """L_CE = mean_b sum_c w_bc * -( y_bc log(p_bc + eps) + (1 - y_bc) log(1 - p_bc + eps) ),  eps = 1e-5,

    with w = 1 everywhere unless ``label_weights`` [B, C] is given (segment training: 1 only at the rated
    classes, 0 elsewhere). ``labels`` and ``predictions`` are [B, C] (labels 0/1, or scores in [0, 1]), any
    float or int dtype (cast to float32 inside); graph-mode safe; a float32 scalar.
    """
    y = _f32(labels)
    p = _f32(predictions)
    width_y = y.shape[-1] if y.shape.rank else None
    width_p = p.shape[-1] if p.shape.rank else None
    if width_y is not None and width_p is not None and width_y != width_p:
        raise ConfigError(f"cross_entropy(labels, predictions): last dimensions differ ({width_y} vs {width_p})")
    per_class = -(y * tf.math.log(p + epsilon) + (1.0 - y) * tf.math.log(1.0 - p + epsilon))
    if label_weights is not None:
        per_class = per_class * _f32(label_weights)
    return tf.reduce_mean(tf.reduce_sum(per_class, axis=-1))
