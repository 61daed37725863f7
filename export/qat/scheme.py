"""How a backbone becomes a QAT model: which layers are quantized (the tfmot registry, layout and scheme), each
one's `SublayerQuantizeConfig`, and `quantize_aware`, which applies them to a copy of the backbone.

Each quantized composite layer gets its own `SublayerQuantizeConfig` (the paths of its Dense sublayers); its
Dense sublayers become `InputQuantizedDense` (quantizers.py). A layer is walked through its sublayers (never into
a recurrent layer) by the helpers here, which report.py uses too.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from vidistill.export.config import QAT_REDUCED_LEVELS
from vidistill.export.qat.quantizers import InputQuantizedDense, SymmetricQuantizer
from vidistill.yt8m.errors import ConfigError

QK = tfmot.quantization.keras


# ------------------------------------------------------------------------------------------------ layer walking
def _children(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    return list(layer._flatten_layers(include_self=False, recursive=False))  # (tf_keras API)


def _sublayer(layer: keras.layers.Layer, path: str) -> keras.layers.Layer:
    for name in filter(None, path.split("/")):
        matches = [child for child in _children(layer) if child.name == name]
        if len(matches) != 1:
            raise ConfigError(f"{layer.name}: no unique sublayer {name!r} (path {path!r})")
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


# ------------------------------------------------------------------------------------------------ configs
class SublayerQuantizeConfig(QK.QuantizeConfig):
    """Quantizes the Dense sublayers at `paths` of a (composite) layer: each one's kernel per output channel
    (`per_channel`, else per tensor) and its input per tensor, int8 symmetric. No output quantizer: the outputs of
    the quantized matmuls stay float (the next quantized matmul quantizes its own input)."""

    def __init__(self, paths, per_channel: bool = True, weight_levels: int = QAT_REDUCED_LEVELS):
        self.paths = [str(p) for p in paths]
        self.per_channel, self.weight_levels = per_channel, weight_levels
        self._weights = [
            SymmetricQuantizer(
                f"{_slug(p)}kernel", per_axis=per_channel, narrow_range=True, ema_decay=None, levels=weight_levels
            )
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
        return {"paths": list(self.paths), "per_channel": self.per_channel, "weight_levels": self.weight_levels}

    def __eq__(self, other):
        return isinstance(other, SublayerQuantizeConfig) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = object.__hash__


def _slug(path: str) -> str:
    return path.replace("/", ".") + "." if path else ""


class _Registry(QK.QuantizeRegistry):
    """Which layers this package quantizes: a layer with Dense sublayers (or a Dense) and no recurrent layer."""

    def __init__(self, per_channel: bool = True, weight_levels: int = QAT_REDUCED_LEVELS):
        self.per_channel, self.weight_levels = per_channel, weight_levels

    def supports(self, layer) -> bool:
        return not _has_recurrent(layer) and bool(_dense_paths(layer))

    def get_quantize_config(self, layer) -> SublayerQuantizeConfig:
        return SublayerQuantizeConfig(_dense_paths(layer), self.per_channel, self.weight_levels)


class _KeepLayout(QK.QuantizeLayoutTransform):
    """No layout rewrite (tfmot's default would add asymmetric input quantizers, also on the int32 num_frames)."""

    def apply(self, model, layer_quantize_map):
        inputs = {layer.name for layer in model._input_layers}
        return model, {name: v for name, v in layer_quantize_map.items() if name not in inputs}


class _Scheme(QK.QuantizeScheme):
    def __init__(self, per_channel: bool = True, weight_levels: int = QAT_REDUCED_LEVELS):
        self.per_channel, self.weight_levels = per_channel, weight_levels

    def get_layout_transformer(self):
        return _KeepLayout()

    def get_quantize_registry(self):
        return _Registry(self.per_channel, self.weight_levels)


# ------------------------------------------------------------------------------------------------ the QAT model
def quantize_custom_objects(model: keras.Model | None = None) -> dict:
    """What `quantize_scope` needs to clone a model with QuantizeAnnotate / QuantizeWrapper layers: the classes
    of every layer in `model` (found by walking it, so export/ needs no import of teachers/) and this package's
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
    weight_levels: int = QAT_REDUCED_LEVELS,
) -> keras.Model:
    """A QAT copy of `backbone` (same inputs and output dict, float weights copied); see the package docstring.

    `calibration`: batches (a tf.data.Dataset or iterable of inputs dicts or (inputs, labels) pairs) to calibrate
    the activation ranges with (at most `calibration_steps` of them; None: all). Without it the model must be
    calibrated (`calibrate`) or fine-tuned before it is used for inference or exported.
    `per_channel`: kernels quantized per output channel (True) or per tensor.
    `weight_levels`: the kernels' int8 grid [-levels, levels]: `QAT_REDUCED_LEVELS` (63, exact on every x86 CPU) or
    127 (for CPUs with VNNI, and GPUs); see `quantizers`.
    """
    if not isinstance(backbone, keras.Model) or not getattr(backbone, "_is_graph_network", False):
        raise ConfigError("quantize_aware needs a functional tf_keras Model (the student's backbone)")
    nested = [layer.name for layer in backbone.layers if isinstance(layer, keras.Model)]
    if nested:
        raise ConfigError(
            f"quantize_aware: {backbone.name!r} holds the model(s) {nested}; pass the backbone itself "
            "(a student's is student.get_layer('<name>_backbone'); frame selection stays outside the QAT model)"
        )
    registry = _Registry(per_channel, weight_levels)
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
        if not any(
            isinstance(layer, QK.QuantizeWrapper) or hasattr(layer, "quantize_config") for layer in annotated.layers
        ):
            model = annotated  # nothing tfmot can quantize (quantize_apply would refuse): all float
        else:
            model = QK.quantize_apply(annotated, scheme=_Scheme(per_channel, weight_levels))
    _refresh(model)
    if calibration is not None:
        from vidistill.export.qat.training import calibrate  # training.py imports this module

        calibrate(model, calibration, steps=calibration_steps)
    return model


# ------------------------------------------------------------------------------------------------ its quantizers
def _wrappers(model: keras.Model) -> list:
    return [layer for layer in model.layers if isinstance(layer, QK.QuantizeWrapper)]


def _quantizers(model: keras.Model):
    for wrapper in _wrappers(model):
        config = wrapper.quantize_config
        if isinstance(config, SublayerQuantizeConfig):
            yield from ((q, "weight") for q in config._weights)
            yield from ((q, "input") for q in config._inputs)


def _refresh(model: keras.Model) -> None:
    for quantizer, kind in _quantizers(model):
        if kind == "weight":
            quantizer.refresh()
