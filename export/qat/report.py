"""`quantization_report`: which layers of a QAT model are quantized, and which stay float and why."""

from __future__ import annotations

import dataclasses

import tensorflow_model_optimization as tfmot
import tf_keras as keras

from vidistill.export.qat.scheme import SublayerQuantizeConfig, _has_recurrent, _own_weights, _walk

QK = tfmot.quantization.keras


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
