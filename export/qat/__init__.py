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

A QAT model must be calibrated (or fine-tuned at least one step) before inference or export: until then its
activation ranges are 0. `quantize_aware(backbone, calibration=...)` calibrates right away.

The modules, one job each: `quantizers` (the int8 symmetric fake quantizers and the calibration mode they read),
`scheme` (which layers are quantized, and `quantize_aware`), `training` (`calibrate`, `qat_finetune`), `data`
(`finetune_dataset`: the exported file's own inputs, as the exporter fine-tunes on them), `report`
(`quantization_report`).
"""

from __future__ import annotations

import os

from vidistill.export.errors import ExportError

if os.environ.get("TF_USE_LEGACY_KERAS", "1").lower() not in ("1", "true"):  # vidistill/__init__ sets "1" unless set
    raise ExportError(
        f"int8-qat needs Keras 2 (tensorflow-model-optimization), but TF_USE_LEGACY_KERAS is "
        f"{os.environ['TF_USE_LEGACY_KERAS']!r}: unset it or set it to 1"
    )

from vidistill.export.qat.data import finetune_dataset
from vidistill.export.qat.quantizers import InputQuantizedDense, SymmetricQuantizer
from vidistill.export.qat.report import QuantizationReport, quantization_report
from vidistill.export.qat.scheme import SublayerQuantizeConfig, quantize_aware, quantize_custom_objects
from vidistill.export.qat.training import calibrate, is_calibrated, qat_finetune, refresh_weight_ranges

__all__ = [
    "InputQuantizedDense",
    "QuantizationReport",
    "SublayerQuantizeConfig",
    "SymmetricQuantizer",
    "calibrate",
    "finetune_dataset",
    "is_calibrated",
    "qat_finetune",
    "quantization_report",
    "quantize_aware",
    "quantize_custom_objects",
    "refresh_weight_ranges",
]
