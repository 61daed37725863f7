"""int8 variants with ONNX Runtime's quantization tools.

dynamic  weights int8 ahead of time, activations quantized on the fly per batch: MatMul -> MatMulInteger, fused
         LSTM -> DynamicQuantizeLSTM (GRU stays float: ONNX Runtime never quantizes it). Best on CPU; needs no data.
static   QDQ format, int8 weights (per channel) and activations, both symmetric (zero points 0, what TensorRT
         requires), on the matrix products only (MatMul, Gemm: the int8 GEMMs TensorRT runs; quantizing every Mul,
         Concat and Transpose too cost 1.8 GAP points in the demo), activation ranges from the 99.999th percentile
         over calibration batches of real inputs; `quant_pre_process` (shape inference and graph optimization)
         runs first, as ONNX Runtime recommends. Recurrent nodes stay float (no static int8 LSTM).
(QAT, the third int8 variant, is trained in TensorFlow: export/qat/.)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np
import onnx

from vidistill.yt8m.errors import ConfigError


# ONNX's shape inference gives no type to the outputs of ONNX Runtime's contrib ops (a transformer's fused nodes,
# export/fusion.py) nor to what is computed from them: the quantizer takes those tensors for float32
CONTRIB_TYPES = {"DefaultTensorType": onnx.TensorProto.FLOAT}


def _quiet() -> None:
    logging.getLogger("root").setLevel(logging.ERROR)  # "Please consider to run pre-processing..." and friends


def quantize_dynamic(model: onnx.ModelProto, *, reduce_range: bool = True) -> onnx.ModelProto:
    """MatMul -> MatMulInteger and LSTM -> DynamicQuantizeLSTM with int8 weights (7-bit with `reduce_range`), one
    scale per output channel: on a trained H-LSTM student max |p - p_fp32| 0.035 against 0.084 with one scale per
    matrix, at the same speed (hlstm-paper's student; NeXtVLAD's 0-10% slower at batch 1: docs/BENCHMARKS.md)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    _quiet()
    with tempfile.TemporaryDirectory() as tmp:
        source, target = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(model, source)
        ort_quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            extra_options=CONTRIB_TYPES,
        )
        return onnx.load(target)


class _Batches:
    """An onnxruntime CalibrationDataReader over an iterable of input dicts, handing out batches of one size only:
    ONNX Runtime's histogram calibrators stack the outputs of all batches into one array, which fails ("inhomogeneous
    shape") on the smaller last batch of a data set whose size is not a multiple of the batch size. A batch of
    another size than the first is skipped (calibration needs ranges, not every video) and counted in `skipped`."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]]):
        self._iterator: Iterator = iter(batches)
        self._size: int | None = None
        self.count = 0
        self.skipped = 0

    def get_next(self):
        for batch in self._iterator:
            size = len(next(iter(batch.values())))
            if self._size is None:
                self._size = size
            if size == self._size:
                self.count += 1
                return batch
            self.skipped += size
        return None

    def rewind(self):  # calibration reads the data once
        pass


def activation_products(model: onnx.ModelProto) -> list[str]:
    """The MatMul / Gemm nodes none of whose inputs is a weight (an initializer)."""
    weights = {init.name for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm") and not any(name in weights for name in node.input)
    ]


def quantize_static(
    model: onnx.ModelProto, calibration: Iterable[dict[str, np.ndarray]], *, reduce_range: bool = True
) -> tuple[onnx.ModelProto, int]:
    """QDQ int8 with symmetric activations and weights (7-bit weights with `reduce_range`) on every matrix product
    with a weight; products of two activations (NetVLAD's and NeXtVLAD's aggregation: assignments x features) stay
    float32, since two per-tensor int8 scales lose too much there (a trained NeXtVLAD student: max |p - p_fp32|
    0.27 with them quantized, 0.02 without). `calibration` yields {"frames", "num_frames"} batches. Returns (model,
    calibration batches read)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _quiet()
    reader = _Batches(calibration)
    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, target = (os.path.join(tmp, f) for f in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(model, source)
        quant_pre_process(
            source, prepared, skip_symbolic_shape=True, save_as_external_data=True, all_tensors_to_one_file=True
        )  # the weights beside the graph, so that the graph alone can be read below
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its histogram settings
            ort_quantize_static(
                prepared,
                target,
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=reduce_range,
                op_types_to_quantize=["MatMul", "Gemm"],
                nodes_to_exclude=activation_products(onnx.load(prepared, load_external_data=False)),
                calibrate_method=CalibrationMethod.Percentile,
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "CalibPercentile": 99.999,
                    **CONTRIB_TYPES,
                },
            )
        if reader.count == 0:
            raise ConfigError("int8-static: the calibration data gave no batch")
        return onnx.load(target), reader.count
