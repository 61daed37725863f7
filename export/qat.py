"""Quantization-aware training (int8, symmetric) of a student's backbone, for the ONNX export.

`quantize_aware(backbone)` returns a QAT copy of a backbone (the functional model `teachers.registry.build_model`
builds: {"frames" [B, k, 1152], "num_frames" [B]} -> {"predictions", "representation"}), made with tfmot's
`quantize_annotate_layer` / `quantize_apply` under a `quantize_scope`, the float weights copied. What is quantized:

- every Dense-like matmul inside a layer that holds no recurrent layer: the classifier head (MoE gates and
  experts, or the logistic layer, and probability gating) and the cluster-pooling encoders (NetVLAD: the
  cluster-assignment kernels, the hidden FC, context gating; NeXtVLAD: the expansion, group attention and
  assignment kernels, the hidden FC, the SE gating). Its kernel is fake-quantized per output channel and its
  INPUT per tensor, both int8 symmetric (zero point 0), which is where TensorRT and ONNX Runtime want Q/DQ pairs
  for an int8 GEMM (the layer's float output then feeds a float softmax / sigmoid / batch norm / the next
  quantized input);
- nothing else: recurrent encoders (H-LSTM, LSTM / GRU: tfmot has no QAT for RNN layers) stay float and are left
  unannotated, so the StackedRNN layers remain ordinary layers of the model; batch norms, the VLAD aggregation
  (a product of two activations) and the centre terms stay float inside the quantized layers.
  `quantization_report(model)` lists what was quantized and what stayed float, and why.

Each quantized composite layer gets its own `SublayerQuantizeConfig` (the paths of its Dense sublayers). Keras has
no pre-call hook, so the Dense sublayers of a wrapped layer are switched to `InputQuantizedDense` (a Dense subclass
that applies an input quantizer first; same weights and tracking).

The quantizers (`SymmetricQuantizer`) are not tfmot's Last/MovingAverageQuantizer: those use
FakeQuantWithMinMaxVars, which tf2onnx 1.17 converts to uint8 Q/DQ with zero point 128 for a symmetric range,
refuses with narrow_range, and does not convert per channel. `SymmetricQuantizer` fake-quantizes with
QuantizeAndDequantizeV4 (activations, per tensor) and V3 (kernels, per output channel), signed, range given,
which tf2onnx turns into int8 QuantizeLinear / DequantizeLinear with zero point 0 (per channel with `axis` for
kernels) and which has a straight-through gradient. Ranges: weights use the last value (max |w| per output
channel, refreshed at every training step and at the end of `qat_finetune`); activations are calibrated with
`calibrate` (max |x| over the calibration batches) and then follow an exponential moving average of the batch
max |x| during training. Activations use the full int8 range [-128, 127] (exactly what ONNX QuantizeLinear
saturates to, so TF and ONNX Runtime agree), weights the narrow [-127, 127].

A QAT model must be calibrated (or fine-tuned at least one step) before inference or export: until then its
activation ranges are 0. `quantize_aware(backbone, calibration=...)` calibrates right away.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

from vidistill.export.errors import ExportError  # noqa: E402

if os.environ.get("TF_USE_LEGACY_KERAS", "1").lower() not in ("1", "true"):  # vidistill/__init__ sets "1" unless set
    raise ExportError(f"int8-qat needs Keras 2 (tensorflow-model-optimization), but TF_USE_LEGACY_KERAS is "
                      f"{os.environ['TF_USE_LEGACY_KERAS']!r}: unset it or set it to 1")  # fmt: skip

import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
from tensorflow.python.ops import gen_array_ops  # noqa: E402  (QuantizeAndDequantizeV3: per-axis, range given)

from vidistill.yt8m.loss import cross_entropy  # noqa: E402

__all__ = [
    "InputQuantizedDense",
    "QuantizationReport",
    "SublayerQuantizeConfig",
    "SymmetricQuantizer",
    "calibrate",
    "is_calibrated",
    "qat_finetune",
    "quantization_report",
    "quantize_aware",
    "quantize_custom_objects",
    "refresh_weight_ranges",
    "selected_frames_dataset",
]

QK = tfmot.quantization.keras

_MIN_RANGE = 1e-8  # a range is never 0 once set (a 0 scale would make tf2onnx refuse the Q/DQ pair)
_CALIBRATING = False  # read at trace time by the quantizers: observe ranges (max) and pass activations through


# ------------------------------------------------------------------------------------------------ quantizers
class SymmetricQuantizer(QK.quantizers.Quantizer):
    """int8 symmetric fake quantization (zero point 0): QuantizeAndDequantizeV4 per tensor, V3 per axis.

    `per_axis`: one range per slice of the last axis (a Dense kernel's output channels), else one per tensor.
    `ema_decay` None: the range is the last value of max |x| (weights); otherwise (activations) it is an
    exponential moving average of the batch max |x| during training, and the running max during `calibrate`.
    The range lives in two non-trainable variables, `<name>_min` = -range and `<name>_max` = range, created on the
    layer that owns the quantizer; `name` is given here (unique within the layer), not by the caller of `build`.
    """

    def __init__(
        self,
        name: str,
        *,
        per_axis: bool = False,
        narrow_range: bool = False,
        ema_decay: float | None = 0.99,
    ):
        self.name, self.per_axis, self.narrow_range, self.ema_decay = name, per_axis, narrow_range, ema_decay
        self.weight = None  # the variable a weight quantizer quantizes (set by SublayerQuantizeConfig)
        self.vars = None

    def build(self, tensor_shape, name, layer):
        shape = (int(tensor_shape[-1]),) if self.per_axis else ()
        self.vars = {
            bound: layer.add_weight(
                f"{self.name}_{bound}", shape=shape, initializer="zeros", trainable=False, dtype=tf.float32
            )
            for bound in ("min", "max")
        }
        return self.vars

    def _observed(self, x):
        x = tf.abs(tf.cast(x, tf.float32))
        if self.per_axis:
            return tf.reduce_max(tf.reshape(x, [-1, tf.shape(x)[-1]]), axis=0)
        return tf.reduce_max(x)

    def _quantize(self, x, low, high):
        value = tf.cast(x, tf.float32)
        if self.per_axis:
            # QuantizeAndDequantizeV2/V4 reject per-axis ranges when the range is given; V3 takes them
            # (straight-through gradient, no clipping: a kernel lies within its own range anyway).
            y = gen_array_ops.quantize_and_dequantize_v3(
                value, low, high, num_bits=8, signed_input=True, range_given=True,
                narrow_range=self.narrow_range, axis=x.shape.rank - 1,
            )  # fmt: skip
        else:  # QuantizeAndDequantizeV4: straight-through gradient inside the range, zero outside
            y = tf.quantization.quantize_and_dequantize_v2(
                value, low, high, signed_input=True, num_bits=8, range_given=True, narrow_range=self.narrow_range
            )
        return tf.cast(y, x.dtype)

    def __call__(self, inputs, training, weights, **kwargs):
        low, high = weights["min"], weights["max"]
        if not (training or _CALIBRATING):
            return self._quantize(inputs, low, high)
        observed = self._observed(inputs)
        if self.ema_decay is None:
            value = observed
        elif _CALIBRATING:
            value = tf.maximum(high, observed)
        else:
            decay = self.ema_decay
            value = tf.where(high > 0, decay * high + (1.0 - decay) * observed, observed)
        value = tf.maximum(value, _MIN_RANGE)
        updates = [high.assign(value), low.assign(-value)]
        with tf.control_dependencies(updates):
            if _CALIBRATING and self.ema_decay is not None:
                return tf.identity(inputs)  # calibration observes the float activations
            return self._quantize(inputs, -value, value)

    def refresh(self) -> None:
        """A weight quantizer: set its range from the current weight (max |w| per channel)."""
        if self.weight is None or self.vars is None:
            return
        value = tf.maximum(self._observed(self.weight), _MIN_RANGE)
        self.vars["max"].assign(value)
        self.vars["min"].assign(-value)

    def get_config(self):
        return {
            "name": self.name,
            "per_axis": self.per_axis,
            "narrow_range": self.narrow_range,
            "ema_decay": self.ema_decay,
        }

    def __eq__(self, other):
        return isinstance(other, SymmetricQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = object.__hash__


class InputQuantizedDense(keras.layers.Dense):
    """A Dense whose input goes through `input_quantizer` (if set) first: the int8 GEMM's activation operand."""

    def call(self, inputs):
        quantizer = getattr(self, "input_quantizer", None)
        if quantizer is not None:
            inputs = quantizer(inputs)
        return super().call(inputs)


# ------------------------------------------------------------------------------------------------ configs
def _children(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    return list(layer._flatten_layers(include_self=False, recursive=False))  # noqa: SLF001 (tf_keras API)


def _sublayer(layer: keras.layers.Layer, path: str) -> keras.layers.Layer:
    for name in filter(None, path.split("/")):
        matches = [child for child in _children(layer) if child.name == name]
        if len(matches) != 1:
            raise ValueError(f"{layer.name}: no unique sublayer {name!r} (path {path!r})")
        layer = matches[0]
    return layer


def _walk(layer: keras.layers.Layer, prefix: str = ""):
    """(path, sublayer) for every sublayer below `layer`, depth first; recurrent layers are not entered."""
    for child in _children(layer):
        path = f"{prefix}{child.name}"
        yield path, child
        if not isinstance(child, keras.layers.RNN):
            yield from _walk(child, path + "/")


def _own_weights(layer: keras.layers.Layer) -> list[tf.Variable]:
    below = {id(w) for child in _children(layer) for w in child.weights}
    return [w for w in layer.weights if id(w) not in below]


def _has_recurrent(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.RNN) or any(isinstance(s, keras.layers.RNN) for _, s in _walk(layer))


def _dense_paths(layer: keras.layers.Layer) -> list[str]:
    """The Dense sublayers of a layer ("" for a Dense itself)."""
    if isinstance(layer, keras.layers.Dense):
        return [""]
    return [path for path, sub in _walk(layer) if isinstance(sub, keras.layers.Dense)]


class SublayerQuantizeConfig(QK.QuantizeConfig):
    """Quantizes the Dense sublayers at `paths` of a (composite) layer: each one's kernel per output channel
    (`per_channel`, else per tensor) and its input per tensor, int8 symmetric. No output quantizer: the outputs of
    the quantized matmuls stay float (the next quantized matmul quantizes its own input)."""

    def __init__(self, paths, per_channel: bool = True):
        self.paths = [str(p) for p in paths]
        self.per_channel = per_channel
        self._weights = [
            SymmetricQuantizer(f"{_slug(p)}kernel", per_axis=per_channel, narrow_range=True, ema_decay=None)
            for p in self.paths
        ]
        self._inputs = [SymmetricQuantizer(f"{_slug(p)}input") for p in self.paths]

    def _dense(self, layer):
        return [_sublayer(layer, path) for path in self.paths]

    def get_weights_and_quantizers(self, layer):
        pairs = []
        for dense, quantizer in zip(self._dense(layer), self._weights):
            quantizer.weight = dense.kernel
            pairs.append((dense.kernel, quantizer))
        return pairs

    def get_activations_and_quantizers(self, layer):
        # `linear` makes tfmot's QuantizeAwareActivation quantize what it is called on (its "post activation").
        return [(keras.activations.linear, quantizer) for quantizer in self._inputs]

    def set_quantize_weights(self, layer, quantize_weights):
        for dense, weight in zip(self._dense(layer), quantize_weights):
            dense.kernel = weight

    def set_quantize_activations(self, layer, quantize_activations):
        for dense, activation in zip(self._dense(layer), quantize_activations):
            if type(dense) is keras.layers.Dense:
                dense.__class__ = InputQuantizedDense
            elif not isinstance(dense, InputQuantizedDense):
                raise TypeError(f"cannot quantize the input of {type(dense).__name__} {dense.name!r}")
            dense.input_quantizer = activation

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {"paths": list(self.paths), "per_channel": self.per_channel}

    def __eq__(self, other):
        return isinstance(other, SublayerQuantizeConfig) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = object.__hash__


def _slug(path: str) -> str:
    return path.replace("/", ".") + "." if path else ""


class _Registry(QK.QuantizeRegistry):
    """Which layers this module quantizes: a layer with Dense sublayers (or a Dense) and no recurrent layer."""

    def __init__(self, per_channel: bool = True):
        self.per_channel = per_channel

    def supports(self, layer) -> bool:
        return not _has_recurrent(layer) and bool(_dense_paths(layer))

    def get_quantize_config(self, layer) -> SublayerQuantizeConfig:
        return SublayerQuantizeConfig(_dense_paths(layer), self.per_channel)


class _KeepLayout(QK.QuantizeLayoutTransform):
    """No layout rewrite (tfmot's default would add asymmetric input quantizers, also on the int32 num_frames)."""

    def apply(self, model, layer_quantize_map):
        inputs = {layer.name for layer in model._input_layers}  # noqa: SLF001
        return model, {name: v for name, v in layer_quantize_map.items() if name not in inputs}


class _Scheme(QK.QuantizeScheme):
    def __init__(self, per_channel: bool = True):
        self.per_channel = per_channel

    def get_layout_transformer(self):
        return _KeepLayout()

    def get_quantize_registry(self):
        return _Registry(self.per_channel)


# ------------------------------------------------------------------------------------------------ public API
def quantize_custom_objects(model: keras.Model | None = None) -> dict:
    """What `quantize_scope` needs to clone a model with QuantizeAnnotate / QuantizeWrapper layers: the classes
    of every layer in `model` (found by walking it, so export/ needs no import of teachers/) and this module's
    quantization classes."""
    classes = [SublayerQuantizeConfig, SymmetricQuantizer, InputQuantizedDense]
    if model is not None:
        classes += [type(m) for m in model.submodules if isinstance(m, keras.layers.Layer)]
    return {cls.__name__: cls for cls in classes}


def quantize_aware(
    backbone: keras.Model,
    calibration=None,
    *,
    calibration_steps: int | None = 8,
    per_channel: bool = True,
) -> keras.Model:
    """A QAT copy of `backbone` (same inputs and output dict, float weights copied); see the module docstring.

    `calibration`: batches (a tf.data.Dataset or iterable of inputs dicts or (inputs, labels) pairs) to calibrate
    the activation ranges with (at most `calibration_steps` of them; None: all). Without it the model must be
    calibrated (`calibrate`) or fine-tuned before it is used for inference or exported.
    `per_channel`: kernels quantized per output channel (True) or per tensor.
    """
    if not isinstance(backbone, keras.Model) or not getattr(backbone, "_is_graph_network", False):
        raise ValueError("quantize_aware needs a functional tf_keras Model (the student's backbone)")
    nested = [layer.name for layer in backbone.layers if isinstance(layer, keras.Model)]
    if nested:
        raise ValueError(
            f"quantize_aware: {backbone.name!r} holds the model(s) {nested}; pass the backbone itself "
            "(a student's is student.get_layer('<name>_backbone'); frame selection stays outside the QAT model)"
        )
    registry = _Registry(per_channel)
    custom = quantize_custom_objects(backbone)

    def annotate(layer):
        clone = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.InputLayer) or not registry.supports(layer):
            return clone
        return QK.quantize_annotate_layer(clone, registry.get_quantize_config(layer))

    with QK.quantize_scope(custom):
        annotated = keras.models.clone_model(backbone, clone_function=annotate)
        for layer, target in zip(backbone.layers, annotated.layers):  # clone_model keeps the layer order
            target = getattr(target, "layer", target)  # the layer inside a QuantizeAnnotate
            if target.name != layer.name:
                raise RuntimeError(f"quantize_aware: layer order changed ({layer.name} -> {target.name})")
            target.set_weights(layer.get_weights())
        if not any(isinstance(layer, QK.QuantizeWrapper) or hasattr(layer, "quantize_config")
                   for layer in annotated.layers):  # fmt: skip
            model = annotated  # nothing tfmot can quantize (quantize_apply would refuse): all float
        else:
            model = QK.quantize_apply(annotated, scheme=_Scheme(per_channel))
    _refresh(model)
    if calibration is not None:
        calibrate(model, calibration, steps=calibration_steps)
    return model


@contextlib.contextmanager
def _calibrating():
    """While set, the quantizers traced observe ranges instead of quantizing activations."""
    global _CALIBRATING
    previous, _CALIBRATING = _CALIBRATING, True
    try:
        yield
    finally:
        _CALIBRATING = previous


def _wrappers(model: keras.Model) -> list:
    return [layer for layer in model.layers if isinstance(layer, QK.QuantizeWrapper)]


def _quantizers(model: keras.Model):
    for wrapper in _wrappers(model):
        config = wrapper.quantize_config
        if isinstance(config, SublayerQuantizeConfig):
            yield from ((q, "weight") for q in config._weights)  # noqa: SLF001
            yield from ((q, "input") for q in config._inputs)  # noqa: SLF001


def _refresh(model: keras.Model) -> None:
    for quantizer, kind in _quantizers(model):
        if kind == "weight":
            quantizer.refresh()


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
    with _calibrating():
        forward = tf.function(lambda inputs: model(inputs, training=False))  # traced while calibrating
        for element in batches:
            if steps is not None and count >= steps:
                break
            forward(_split(element)[0])
            count += 1
    if count == 0:
        raise ValueError("calibrate: no batches")
    _refresh(model)
    return count


def is_calibrated(model: keras.Model) -> bool:
    """True when every range of the QAT model has been set (by `calibrate` or a training step)."""
    return all(
        bool(tf.reduce_all(quantizer.vars["max"] > 0)) for quantizer, _ in _quantizers(model) if quantizer.vars
    )


def qat_finetune(qat_model: keras.Model, dataset, *, steps: int, learning_rate: float = 1e-4) -> list[float]:
    """`steps` steps of Adam on L_CE (plus the model's regularization losses) in training mode, over batches of
    ({"frames" [B, k, 1152], "num_frames" [B]}, labels [B, C]) (repeated when shorter). The quantizers update
    their ranges as they go; at the end the kernel ranges are refreshed. Returns L_CE per step."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    optimizer = keras.optimizers.Adam(learning_rate)
    variables = qat_model.trainable_variables

    @tf.function
    def step(inputs, labels):
        with tf.GradientTape() as tape:
            predictions = qat_model(inputs, training=True)["predictions"]
            loss = cross_entropy(labels, predictions)
            total = (loss + tf.add_n(qat_model.losses)) if qat_model.losses else loss
        optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
        return loss

    source = dataset.repeat() if isinstance(dataset, tf.data.Dataset) else dataset
    losses = []
    for element in source:
        inputs, labels = _split(element)
        if labels is None:
            raise ValueError("qat_finetune: the batches carry no labels")
        losses.append(float(step(inputs, labels)))
        if len(losses) >= steps:
            break
    if len(losses) < steps:
        raise ValueError(f"qat_finetune: the data ended after {len(losses)} of {steps} steps")
    _refresh(qat_model)
    return losses


def selected_frames_dataset(
    pattern: str,
    student_config,
    *,
    batch_size: int = 32,
    num_classes: int | None = None,
    max_frames: int | None = None,
    num_epochs: int | None = 1,
    shuffle: bool = False,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Labeled frame-level records -> batches of ({"frames" [B, k, 1152], "num_frames" [B]}, labels [B, C]): the
    student's own frame selection (its k, policy and seed; inference mode, so `random` is deterministic) applied
    to each video, so that the batches match the backbone's inputs. `num_classes` defaults to the student's,
    `max_frames` to the format's 300."""
    from vidistill.students.selection import select_frames
    from vidistill.yt8m.constants import MAX_FRAMES
    from vidistill.yt8m.readers import read_frame_dataset

    model = student_config.model
    classes = model.num_classes if num_classes is None else num_classes
    if classes != model.num_classes:
        raise ValueError(f"num_classes={classes} but the student predicts {model.num_classes} classes")
    videos = read_frame_dataset(
        pattern,
        num_classes=classes,
        max_frames=MAX_FRAMES if max_frames is None else max_frames,
        batch_size=batch_size,
        num_epochs=num_epochs,
        shuffle=shuffle,
        seed=seed,
        deterministic=not shuffle,
    )
    k, policy, selection_seed = student_config.k, student_config.policy, student_config.seed

    def select(batch):
        frames, counts = select_frames(
            batch["frames"], batch["num_frames"], k, policy, training=False, seed=selection_seed
        )
        return {"frames": frames, "num_frames": counts}, batch["labels"]

    return videos.map(select, num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------------------------------------------------ report
@dataclasses.dataclass(frozen=True)
class QuantizationReport:
    """`quantized`: the layers (paths "layer/sublayer/...") whose kernel and input are fake-quantized int8;
    `float`: the other layers that hold weights (or a whole unquantized layer), each with the reason."""

    quantized: tuple[str, ...]
    float: dict[str, str]


def _float_reason(sub: keras.layers.Layer) -> str:
    if isinstance(sub, keras.layers.RNN):
        return "recurrent (LSTM/GRU): tfmot has no QAT for RNN layers"
    if isinstance(sub, keras.layers.BatchNormalization):
        return "batch norm: stays float (an int8 engine folds or fuses it)"
    if isinstance(sub, keras.layers.Dense):
        return "Dense inside a layer that also holds recurrent layers"
    return "own weights used outside a matmul (e.g. VLAD centres); stays float"


def quantization_report(model: keras.Model) -> QuantizationReport:
    """Which layers of a model from `quantize_aware` are quantized and which stay float."""
    quantized, floating = [], {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        config = getattr(layer, "quantize_config", None)
        inner = getattr(layer, "layer", layer) if isinstance(layer, QK.QuantizeWrapper) else layer
        paths = set(config.paths) if isinstance(config, SublayerQuantizeConfig) else set()
        quantized += [f"{inner.name}/{p}" if p else inner.name for p in sorted(paths)]
        if _own_weights(inner) and "" not in paths:
            floating[inner.name] = _float_reason(inner)
        for path, sub in _walk(inner):
            if path in paths or not sub.weights:
                continue
            if _own_weights(sub) or isinstance(sub, keras.layers.RNN):
                floating[f"{inner.name}/{path}"] = _float_reason(sub)
        if not paths and not inner.weights:
            continue
        if not paths and not _has_recurrent(inner):
            floating.setdefault(inner.name, "no Dense sublayer to quantize")
    return QuantizationReport(tuple(quantized), floating)
