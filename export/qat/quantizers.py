"""The int8 symmetric fake quantizers of a QAT model, and the calibration state they read when traced.

The quantizers (`SymmetricQuantizer`) are not tfmot's Last/MovingAverageQuantizer: those use
FakeQuantWithMinMaxVars, which tf2onnx 1.17 converts to uint8 Q/DQ with zero point 128 for a symmetric range,
refuses with narrow_range, and does not convert per channel. `SymmetricQuantizer` fake-quantizes with
QuantizeAndDequantizeV4 (activations, per tensor) and V3 (kernels, per output channel), signed, range given,
which tf2onnx turns into int8 QuantizeLinear / DequantizeLinear with zero point 0 (per channel with `axis` for
kernels) and which has a straight-through gradient. Ranges: weights use the last value (max |w| per output
channel, refreshed at every training step and at the end of `qat_finetune`); activations are calibrated with
`calibrate` (max |x| over the calibration batches) and then follow an exponential moving average of the batch
max |x| during training. Activations use the full int8 range [-128, 127] (exactly what ONNX QuantizeLinear
saturates to, so TF and ONNX Runtime agree), weights the narrow [-127, 127], or [-63, 63] with `levels=63`
(`QAT_REDUCED_LEVELS`, the default of the export): on x86 CPUs without VNNI (AVX2), ONNX Runtime multiplies uint8
activations by int8 weights with VPMADDUBSW, which sums pairs of products into 16-bit lanes that saturate when
both are large (2 x 255 x 127 > 32767); with 7-bit weights a pair stays below it (2 x 255 x 63 = 32130). The
range given to the Q/DQ op is then max |w| x 127 / 63, so the op's [-127, 127] grid is the weights' [-63, 63]
and tf2onnx's scale (range / 127) is max |w| / 63.

Keras has no pre-call hook, so the Dense sublayers of a quantized layer are switched to `InputQuantizedDense` (a
Dense subclass that applies an input quantizer first; same weights and tracking).

Calibration is a mode of the quantizers while a model is traced (`calibrating()`): they then observe ranges
(running max) and pass the activations through unquantized. The mode is a context variable, set for the block
and the thread (or task) that runs it, and read when a quantizer is traced, not when the graph runs.
"""

from __future__ import annotations

import contextlib
import contextvars

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow.python.ops import gen_array_ops  # QuantizeAndDequantizeV3: per-axis, range given

from vidistill.export.config import FULL_LEVELS

QK = tfmot.quantization.keras

_MIN_RANGE = 1e-8  # a range is never 0 once set (a 0 scale would make tf2onnx refuse the Q/DQ pair)

# read at trace time by the quantizers: observe ranges (max) and pass activations through
_CALIBRATING: contextvars.ContextVar[bool] = contextvars.ContextVar("vidistill_qat_calibrating", default=False)


@contextlib.contextmanager
def calibrating():
    """While set, the quantizers traced observe ranges instead of quantizing activations."""
    token = _CALIBRATING.set(True)
    try:
        yield
    finally:
        _CALIBRATING.reset(token)


class SymmetricQuantizer(QK.quantizers.Quantizer):
    """int8 symmetric fake quantization (zero point 0): QuantizeAndDequantizeV4 per tensor, V3 per axis.

    `per_axis`: one range per slice of the last axis (a Dense kernel's output channels), else one per tensor.
    `ema_decay` None: the range is the last value of max |x| (weights); otherwise (activations) it is an
    exponential moving average of the batch max |x| during training, and the running max during `calibrate`.
    `levels` (weights, with `narrow_range`): max |x| maps to this integer, 127 or `QAT_REDUCED_LEVELS`.
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
        levels: int = FULL_LEVELS,
    ):
        if not 1 <= levels <= FULL_LEVELS or (levels != FULL_LEVELS and not (narrow_range and ema_decay is None)):
            raise ValueError(f"levels={levels}: 1-127, and below 127 only for a weight (narrow range, no EMA)")
        self.name, self.per_axis, self.narrow_range, self.ema_decay = name, per_axis, narrow_range, ema_decay
        self.levels = levels
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
        """max |x| (per channel), stretched by 127 / `levels`: the range the Q/DQ op is given."""
        x = tf.abs(tf.cast(x, tf.float32))
        if self.per_axis:
            observed = tf.reduce_max(tf.reshape(x, [-1, tf.shape(x)[-1]]), axis=0)
        else:
            observed = tf.reduce_max(x)
        return observed if self.levels == FULL_LEVELS else observed * (FULL_LEVELS / self.levels)

    def _quantize(self, x, low, high):
        value = tf.cast(x, tf.float32)
        if self.per_axis:
            # QuantizeAndDequantizeV2/V4 reject per-axis ranges when the range is given; V3 takes them
            # (straight-through gradient, no clipping: a kernel lies within its own range anyway).
            y = gen_array_ops.quantize_and_dequantize_v3(
                value,
                low,
                high,
                num_bits=8,
                signed_input=True,
                range_given=True,
                narrow_range=self.narrow_range,
                axis=x.shape.rank - 1,
            )
        else:  # QuantizeAndDequantizeV4: straight-through gradient inside the range, zero outside
            y = tf.quantization.quantize_and_dequantize_v2(
                value, low, high, signed_input=True, num_bits=8, range_given=True, narrow_range=self.narrow_range
            )
        return tf.cast(y, x.dtype)

    def __call__(self, inputs, training, weights, **kwargs):
        calibrating_now = _CALIBRATING.get()
        low, high = weights["min"], weights["max"]
        if not (training or calibrating_now):
            return self._quantize(inputs, low, high)
        observed = self._observed(inputs)
        if self.ema_decay is None:
            value = observed
        elif calibrating_now:
            value = tf.maximum(high, observed)
        else:
            decay = self.ema_decay
            value = tf.where(high > 0, decay * high + (1.0 - decay) * observed, observed)
        value = tf.maximum(value, _MIN_RANGE)
        updates = [high.assign(value), low.assign(-value)]
        with tf.control_dependencies(updates):
            if calibrating_now and self.ema_decay is not None:
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
            "levels": self.levels,
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
