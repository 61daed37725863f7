"""What `vidistill export` makes: the precisions, their tolerances, and the typed configuration (saved as
DIR/export.yaml). Importable without TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass

from vidistill.export.card import Tolerance
from vidistill.teachers.config import check_range
from vidistill.yt8m.errors import ConfigError

TF_PRECISIONS = ("tf-fp32", "tf-bf16")
TARGETS = ("cpu", "cuda")
ONNX_PRECISIONS = ("fp32", "fp16", "bf16", "int8-dynamic", "int8-static", "int8-qat")
PRECISIONS = ONNX_PRECISIONS + TF_PRECISIONS
NEEDS_DATA = ("int8-static", "int8-qat")

# The largest integer of an int8 file's weights: the full narrow range, ONNX Runtime quantizer's reduced range
# ([-64, 64]) and QAT's ([-63, 63]). With x86 uint8 activations a pair of products stays under the 16-bit lanes
# of VPMADDUBSW (32,767) below 2 x 255 x 64 = 32,640.
FULL_LEVELS = 127
ORT_REDUCED_LEVELS = 64
QAT_REDUCED_LEVELS = 63


def int8_weight_levels(precision: str, reduce_range: bool) -> int:
    """The largest |integer| of the weights of a file of `precision` (0 for a file that is not int8)."""
    if not precision.startswith("int8"):
        return 0
    if not reduce_range:
        return FULL_LEVELS
    return QAT_REDUCED_LEVELS if precision == "int8-qat" else ORT_REDUCED_LEVELS


# max |p - p_tf| on probabilities, and the largest GAP drop against the TF fp32 model. Measured on the tests'
# tiny models and the CPU-sized students (docs/BENCHMARKS.md); fp32 is the 1e-4.
TOLERANCES = {
    "fp32": Tolerance(max_abs=1e-4, gap_drop=0.001),
    "fp16": Tolerance(max_abs=1e-2, gap_drop=0.003),
    "bf16": Tolerance(max_abs=5e-2, gap_drop=0.01),
    # activations quantized per batch, errors compounding over the recurrent steps: trained H-LSTM students measured
    # 0.080-0.086 (docs/BENCHMARKS.md, "Export numerics on trained students"); an input-ignoring file misses by ~1
    "int8-dynamic": Tolerance(max_abs=0.15, gap_drop=0.01),
    "int8-static": Tolerance(max_abs=0.15, gap_drop=0.015),
    # parity against the QAT TF model (same weights); the fine-tuning moves it away from the fp32 file (bench)
    "int8-qat": Tolerance(max_abs=0.03, gap_drop=0.015, vs_reference=0.25),
    "tf-fp32": Tolerance(max_abs=1e-5, gap_drop=0.0005),
    "tf-bf16": Tolerance(max_abs=5e-2, gap_drop=0.01),
}


@dataclass
class ExportConfig:
    precisions: list[str] | None = None  # None: every precision (those that need data only when data is given)
    target: str = "cpu"  # the provider the fp16 / bf16 files are made for: cpu or cuda
    eval_data: str | None = None  # held-out labeled records: parity and accuracy (random videos when absent)
    eval_videos: int = 0  # 0: all of them
    # training records for int8-static calibration and int8-qat fine-tuning; never the held-out data (QAT trains
    # on it, and calibration on the test videos would flatter int8-static)
    calibration_data: str | None = None
    calibration_batches: int = 8
    batch_size: int = 32
    qat_steps: int = 50
    qat_learning_rate: float = 1e-4
    # int8 weights with 7 bits ([-64, 64] for ONNX Runtime's quantizer, [-63, 63] for QAT): exact on every x86 CPU.
    # Full range ([-127, 127]) only for CPUs with VNNI / AMX and GPUs: without them ONNX Runtime sums pairs of
    # uint8 x int8 products in 16-bit lanes, which saturate (export/sessions.py: int8_saturates)
    reduce_range: bool = True
    opset: int = 17  # ONNX opset (tf2onnx)
    fuse: bool = True  # a transformer's attention, LayerNorm and GELU as fused nodes (export/fusion.py)
    random_videos: int = 64  # parity without eval data
    seed: int = 0

    def __post_init__(self) -> None:
        for name, rule in (
            ("eval_videos", ">= 0"),
            ("calibration_batches", ">= 1"),
            ("batch_size", ">= 1"),
            ("qat_steps", ">= 1"),
            ("qat_learning_rate", "> 0"),
            ("random_videos", ">= 1"),
            ("seed", ">= 0"),
        ):
            check_range(name, getattr(self, name), rule)
        data = self.calibration_data
        if self.precisions is None:
            self.precisions = [p for p in PRECISIONS if data or p not in NEEDS_DATA]
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise ConfigError(f"unknown precision(s) {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
        if self.target not in TARGETS:
            raise ConfigError(f"unknown --target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if "fp32" not in self.precisions:  # the reference every other ONNX variant is compared with in bench
            self.precisions = ["fp32", *self.precisions]
        self.precisions = [p for p in PRECISIONS if p in self.precisions]
        missing = [p for p in self.precisions if p in NEEDS_DATA and not data]
        if missing:
            raise ConfigError(f"{', '.join(missing)} need(s) training records: give --calibration-data")
        if data and self.eval_data and data == self.eval_data:
            raise ConfigError(
                "--calibration-data must not be the held-out --eval-data (QAT trains on it): give training records"
            )
