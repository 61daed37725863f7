"""`export`: every requested precision of a model, each checked against the TF model and written with its card.

For each precision: build the file under a temporary name, run it (ONNX Runtime, CPU) on the held-out videos next
to the TF model, measure parity (max absolute and relative error on the probabilities) and accuracy (Hit@1,
PERR, GAP, mAP), write the card, then rename both into place. A variant past its tolerance is kept, with
`parity.passed: false` in its card, and reported: the command then exits non-zero.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
from collections.abc import Iterator

import numpy as np
import onnx
import tensorflow as tf
import yaml
from tqdm import tqdm

from vidistill.export import onnx_export, precision, quantize
from vidistill.export.card import Accuracy, AtK, ModelCard, Parity, card_path, write_card
from vidistill.export.config import (
    FULL_LEVELS,
    ONNX_PRECISIONS,
    TF_PRECISIONS,
    TOLERANCES,
    ExportConfig,
    int8_weight_levels,
)
from vidistill.export.errors import ExportError
from vidistill.export.predictor import Predictor, frames_to_read, prepare_inputs, record_batches
from vidistill.export.saved_model import SavedModelRunner, directory_bytes, save_saved_model
from vidistill.export.sessions import available_providers, cpu_model, int8_saturates
from vidistill.export.source import ExportSource
from vidistill.teachers.inference import predictions_of
from vidistill.yt8m.constants import AUDIO_SIZE, FEATURE_SIZE, RGB_SIZE
from vidistill.yt8m.memory import require_memory, trim_heap
from vidistill.yt8m.metrics import VideoMetrics

# The export's peak resident memory is at most this (measured with `vidistill bench-scale` on the three reference
# presets, docs/BENCHMARKS.md): it is refused before it starts where less is available.
EXPORT_MEMORY_FIXED = 2e9  # bytes: TensorFlow, ONNX Runtime, the held-out videos
EXPORT_MEMORY_PER_WEIGHT_BYTE = 8
FROM_FP32 = {"fp16", "bf16", "int8-dynamic", "int8-static"}  # the variants made from the fp32 ONNX model

# Below this many held-out videos a GAP difference is noise (its standard error is several points): accuracy is
# still reported, but the GAP-drop tolerance is not applied (the card says so).
MIN_ACCURACY_VIDEOS = 100


class HeldOut:
    """The videos every variant is checked on: the exported file's inputs for them, the TF model's probabilities
    on them (computed once) and their labels. The inputs are kept in memory up to `CACHED_INPUT_BYTES` (a
    student's k frames always fit); past that (long teacher videos) they are read again per variant, in the same
    order, so that memory stays bounded."""

    CACHED_INPUT_BYTES = 512 * 2**20

    def __init__(self, source: ExportSource, config: ExportConfig, bad_records=None):
        self.source, self.config, self.bad_records = source, config, bad_records
        self.labeled = config.eval_data is not None
        self.reference: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self._cached: list[dict[str, np.ndarray]] | None = []
        cached_bytes = 0
        for frames, num_frames, labels in self._videos():
            self.reference.append(predictions_of(source.full_model, frames, num_frames).numpy())
            self.labels.append(labels)
            if self._cached is not None:
                inputs = prepare_inputs(source, frames, num_frames)
                cached_bytes += sum(a.nbytes for a in inputs.values())
                if cached_bytes <= self.CACHED_INPUT_BYTES:
                    self._cached.append(inputs)
                else:
                    self._cached = None
        if not self.reference:
            raise ExportError(f"no videos in {config.eval_data}")
        self.reference_metrics = _metrics(self.reference, self.labels, source.classes) if self.labeled else None

    @property
    def videos(self) -> int:
        return sum(len(r) for r in self.reference)

    def inputs(self) -> Iterator[dict[str, np.ndarray]]:
        """The exported file's inputs, batch by batch, in the order of `reference` and `labels`."""
        if self._cached is not None:
            yield from self._cached
            return
        for frames, num_frames, _ in self._videos():
            yield prepare_inputs(self.source, frames, num_frames)

    def _videos(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """(frames [B, T, 1152] whole videos, num_frames [B], labels [B, C] or None)."""
        config = self.config
        if not self.labeled:
            rng = np.random.default_rng(config.seed)
            t = frames_to_read(self.source)
            for start in range(0, config.random_videos, config.batch_size):
                b = min(config.batch_size, config.random_videos - start)
                num_frames = rng.integers(1, t + 1, b).astype(np.int32)
                frames = rng.uniform(-2, 2, (b, t, FEATURE_SIZE)).astype(np.float32)
                frames[np.arange(t)[None, :] >= num_frames[:, None]] = 0
                yield frames, num_frames, None
            return
        yield from record_batches(
            config.eval_data, self.source, config.batch_size, config.eval_videos, bad_records=self.bad_records
        )


def _metrics(predictions: list[np.ndarray], labels: list[np.ndarray], classes: int) -> dict:
    metrics = VideoMetrics(classes)
    for p, y in zip(predictions, labels):
        metrics.accumulate(p, y)
    return metrics.result()


def _versions() -> dict:
    import onnxruntime
    import tf2onnx

    return {
        "tensorflow": tf.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


class Exporter:
    def __init__(self, source: ExportSource, out_dir: str, config: ExportConfig, *, bad_records=None):
        self.source, self.out_dir, self.config = source, out_dir, config
        self.bad_records = bad_records  # a readers.BadRecords: the record readers skip and count bad records
        self.fp32: onnx.ModelProto | None = None
        self.held_outs: dict[int, HeldOut] = {}  # the videos each k is checked on (one k but for an any-k student)
        self.cards: list[ModelCard] = []

    @property
    def held_out(self) -> HeldOut:
        """The videos the default k (a single-k model's only k) is checked on."""
        return self.held_outs[self.source.frames]

    # -- the variants ------------------------------------------------------------------------------------------
    def _onnx_variant(self, name: str) -> tuple[onnx.ModelProto, list[str], list[np.ndarray] | None]:
        """(model, notes, the TF predictions on the held-out batches it is checked against, or None: the source
        network's)."""
        if name == "fp32":
            return self.fp32, fusion_notes(self.fp32), None
        if name in ("fp16", "bf16"):
            available = available_providers()
            model, blocked, verified = precision.lower_precision_for(
                self.fp32, name, self.config.target, available=available
            )
            notes = [f"made for the {self.config.target} provider; ops kept in float32: {', '.join(sorted(blocked))}"]
            kept = sorted({s.strip("/") for s in precision.FLOAT32_SCOPES for n in self.fp32.graph.node if s in n.name})
            if kept:
                notes.append(f"layers kept in float32 (values past {name}'s range): {', '.join(kept)}")
            if not verified:
                notes.append(f"not loaded on {self.config.target} here (no such provider on the exporting machine)")
            return model, notes, None
        reduce_range = self.config.reduce_range
        if name == "int8-dynamic":
            model = quantize.quantize_dynamic(self.fp32, reduce_range=reduce_range)
            return model, ["MatMul -> MatMulInteger, LSTM -> DynamicQuantizeLSTM", self._weights_note(name)], None
        if name == "int8-static":
            model, batches = quantize.quantize_static(self.fp32, self._calibration_inputs(), reduce_range=reduce_range)
            note = (
                f"QDQ, symmetric int8 on MatMul/Gemm, per-channel weights, percentile calibration on {batches} batches"
            )
            return model, [note, self._weights_note(name)], None
        if name == "int8-qat":
            return self._qat()
        raise AssertionError(name)

    def _weights_note(self, name: str) -> str:
        levels = int8_weight_levels(name, self.config.reduce_range)
        if levels == FULL_LEVELS:
            return (
                "full-range int8 weights [-127, 127]: exact on CPUs with VNNI / AMX and on GPUs; on x86 CPUs "
                "without them ONNX Runtime's products can saturate (export without --full-int8-range)"
            )
        return f"7-bit int8 weights [-{levels}, {levels}]: exact on every x86 CPU, VNNI or not"

    def _calibration_inputs(self) -> Iterator[dict[str, np.ndarray]]:
        """The calibration batches (an any-k student's: as many at each of its k's)."""
        pattern = self.config.calibration_data
        for source in (held_out.source for held_out in self.held_outs.values()):
            batches = record_batches(
                pattern,
                source,
                self.config.batch_size,
                self.config.calibration_batches * self.config.batch_size,
                bad_records=self.bad_records,
            )
            for frames, num_frames, _ in batches:
                yield prepare_inputs(source, frames, num_frames)

    def _qat(self):
        from vidistill.export import qat

        if self.source.frame_counts:
            raise ExportError(
                "int8-qat fine-tunes at one k, and this any-k student runs at several: export it as int8-dynamic "
                "or int8-static (checked at each of its k's)"
            )
        if self.source.members:
            raise ExportError(
                "int8-qat fine-tunes one network: an ensemble's members each take it (export each run with "
                "int8-qat), or export the ensemble as int8-dynamic / int8-static"
            )
        levels = int8_weight_levels("int8-qat", self.config.reduce_range)
        model = qat.quantize_aware(self.source.network, weight_levels=levels)
        dataset = qat.finetune_dataset(
            self.config.calibration_data, self.source, self.config.batch_size, bad_records=self.bad_records
        )
        losses = qat.qat_finetune(
            model, dataset, steps=self.config.qat_steps, learning_rate=self.config.qat_learning_rate
        )
        trim_heap()  # what the fine-tuning freed (its optimizer, the tape's tensors) goes before the conversion
        proto = onnx_export.convert(model, self.source.config, opset=self.config.opset, fuse=self.config.fuse)
        # its reference predictions now, so the QAT network (a second copy of the weights) is gone before the check
        # loads the ONNX file
        references = [model(inputs, training=False)["predictions"].numpy() for inputs in self.held_out.inputs()]
        del model
        trim_heap()
        notes = [
            f"tfmot quantization-aware training, {self.config.qat_steps} steps at lr "
            f"{self.config.qat_learning_rate}: L_CE {losses[0]:.4f} -> {losses[-1]:.4f}",
            self._weights_note("int8-qat"),
            *fusion_notes(proto),
        ]
        return proto, notes, references

    # -- checking ------------------------------------------------------------------------------------------------
    def _checking_provider(self, name: str) -> str | None:
        """Where variant `name` is run for its check: the CPU, except for an fp16 / bf16 file made for another
        provider (its low-precision kernels exist there, not on the CPU): that provider when it is here, else None
        (not checked here)."""
        target = self.config.target
        if name not in ("fp16", "bf16") or target == "cpu":
            return "cpu"
        return target if precision.PROVIDERS[target] in available_providers() else None

    def _provisional_card(self, name: str, file: str) -> ModelCard:
        s = self.source
        return ModelCard(
            precision=name,
            file=file,
            role=s.role,
            family=s.family,
            frames=s.frames,
            selection=s.selection,
            classes=s.classes,
            feature_sizes={"rgb": RGB_SIZE, "audio": AUDIO_SIZE},
            inputs=s.inputs(),
            outputs=s.outputs(),
            parameters=int(s.network.count_params()),
            flops_per_video=s.flops(),
            weight_reads_per_video=s.weight_reads(fused=name not in TF_PRECISIONS),
            int8_weight_levels=int8_weight_levels(name, self.config.reduce_range),
            file_bytes=0,
            opset=self.config.opset if name in ONNX_PRECISIONS else 0,
            tolerance=TOLERANCES[name],
            reference=None if name == "fp32" else "fp32.onnx",
            model_config=s.model_config(),
            source=s.origin,
            versions=_versions(),
            created=datetime.datetime.now().isoformat(timespec="seconds"),
            frame_counts=list(s.frame_counts),
            at_k={
                str(k): AtK(held_out.source.flops(), held_out.source.weight_reads(fused=name not in TF_PRECISIONS))
                for k, held_out in self.held_outs.items()
            }
            if s.frame_counts
            else {},
        )

    def _check(self, card: ModelCard, run, tf_references: list[np.ndarray] | None) -> None:
        """Parity against the TF model's predictions (or `tf_references`, one array per held-out batch) and
        accuracy; an any-k student's at each of its k's (card.at_k), its parity the worst of them and its accuracy
        the largest k's."""
        if not card.frame_counts:
            card.parity, card.accuracy = self._measure(card, run, tf_references, self.held_out)
            return
        for k, held_out in self.held_outs.items():
            at = card.at_k[str(k)]
            at.parity, at.accuracy = self._measure(card, run, None, held_out, label=f" at k={k}")
        checks = [at.parity for at in card.at_k.values()]
        card.parity = Parity(
            videos=self.held_out.videos,
            max_abs=max(p.max_abs for p in checks),
            max_rel=max(p.max_rel for p in checks),
            mean_abs=float(np.mean([p.mean_abs for p in checks])),
            passed=all(p.passed for p in checks),
        )
        card.accuracy = card.at_k[str(self.source.frames)].accuracy

    def _measure(
        self, card: ModelCard, run, tf_references: list[np.ndarray] | None, held_out: HeldOut, label: str = ""
    ) -> tuple[Parity, Accuracy | None]:
        max_abs = max_rel = total = 0.0
        count = 0
        predictions = []
        for inputs, reference in zip(held_out.inputs(), tf_references or held_out.reference):
            scores = run(inputs)["predictions"].astype(np.float32)
            error = np.abs(scores - reference)
            max_abs = max(max_abs, float(error.max()))
            max_rel = max(max_rel, float((error / np.maximum(np.abs(reference), 1e-3)).max()))
            total += float(error.sum())
            count += error.size
            predictions.append(scores)
        parity = Parity(
            videos=held_out.videos,
            max_abs=max_abs,
            max_rel=max_rel,
            mean_abs=total / max(count, 1),
            passed=max_abs <= card.tolerance.max_abs,
        )
        if not held_out.labeled:
            return parity, None
        m = _metrics(predictions, held_out.labels, self.source.classes)
        reference_gap = held_out.reference_metrics["gap"]
        accuracy = Accuracy(
            data=self.config.eval_data,
            videos=held_out.videos,
            hit_at_1=m["hit_at_one"],
            perr=m["perr"],
            gap=m["gap"],
            map=m["map"],
            reference_gap=reference_gap,
        )
        if held_out.videos < MIN_ACCURACY_VIDEOS:
            note = f"GAP drop not checked: {held_out.videos} held-out videos < {MIN_ACCURACY_VIDEOS}"
            if note not in card.notes:
                card.notes.append(note)
        elif reference_gap - m["gap"] > card.tolerance.gap_drop:
            parity.passed = False
            card.notes.append(
                f"GAP{label} {m['gap']:.4f} is {reference_gap - m['gap']:.4f} below the TF model's {reference_gap:.4f}"
            )
        return parity, accuracy

    # -- the whole export --------------------------------------------------------------------------------------
    def run(self) -> list[ModelCard]:
        weights = 4 * self.source.network.count_params()
        require_memory(
            EXPORT_MEMORY_FIXED + EXPORT_MEMORY_PER_WEIGHT_BYTE * weights,
            f"exporting this {weights / 1e6:.0f} MB model",
            "close other programs, or export on a machine with more memory (docs/BENCHMARKS.md: memory per stage)",
        )
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, "export.yaml"), "w") as f:
            yaml.safe_dump(
                {"export": dataclasses.asdict(self.config), "source": self.source.origin}, f, sort_keys=False
            )
        ks = self.source.frame_counts
        sources = {k: self.source.at_k(k) for k in ks} if ks else {self.source.frames: self.source}
        self.held_outs = {k: HeldOut(source, self.config, self.bad_records) for k, source in sources.items()}
        self.fp32 = onnx_export.convert_source(self.source, opset=self.config.opset, fuse=self.config.fuse)
        trim_heap()  # the conversion's freed copies go back to the OS before the variants need memory
        remaining = list(self.config.precisions)
        for name in tqdm(self.config.precisions, desc="export", unit="variant"):
            self.cards.append(self._export_one(name))
            remaining.remove(name)
            if not FROM_FP32.intersection(remaining):
                self.fp32 = None  # no variant left is made from it: its memory goes before the next one
            trim_heap()
        return self.cards

    def _export_one(self, name: str) -> ModelCard:
        final = os.path.join(self.out_dir, name if name in TF_PRECISIONS else f"{name}.onnx")
        tmp = os.path.join(self.out_dir, f".{os.path.basename(final)}.tmp")
        card = self._provisional_card(name, os.path.basename(final))
        try:
            if name in TF_PRECISIONS:
                save_saved_model(self.source.network, self.source.input_frames, tmp, name)
                runner = SavedModelRunner(tmp)
                self._check(card, runner.run, None)
                card.file_bytes = directory_bytes(tmp)
                card.notes.insert(0, "TF SavedModel, signature 'serving_default' (same inputs as the ONNX files)")
                if name == "tf-bf16":
                    card.notes.append("weights frozen and stored as bfloat16, cast to float32 in the graph")
                shutil.rmtree(final, ignore_errors=True)
            else:
                model, notes, tf_references = self._onnx_variant(name)
                onnx_export.save_model(model, tmp)
                provider = self._checking_provider(name)
                if provider is None:
                    card.notes.append(
                        f"parity and accuracy not checked: made for the {self.config.target} provider, "
                        f"which is not on the exporting machine; `vidistill bench --providers "
                        f"{self.config.target}` checks it against fp32.onnx there"
                    )
                else:
                    predictor = Predictor(tmp, card=card, provider=provider)
                    self._check(card, predictor.run, tf_references)
                    card.checked_on = {"cpu": cpu_model(), "provider": provider, "int8_saturates": int8_saturates()}
                    if provider != "cpu":
                        card.notes.append(f"parity and accuracy checked on the {provider} provider")
                card.file_bytes = os.path.getsize(tmp)
                card.notes[:0] = notes
            os.replace(tmp, final)
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.exists(tmp):
                os.remove(tmp)
        write_card(card, card_path(final))
        return card


def fusion_notes(model: onnx.ModelProto) -> list[str]:
    """The fusion report convert() left in a transformer's metadata, as a card note (none for other families)."""
    return [p.value for p in model.metadata_props if p.key == onnx_export.FUSION_NOTE]


def export(
    source: ExportSource, out_dir: str, config: ExportConfig | None = None, *, bad_records=None
) -> list[ModelCard]:
    """Writes DIR/<precision>.onnx (or DIR/tf-*/ SavedModels) and DIR/<precision>.json for each precision;
    `bad_records` (a readers.BadRecords): the held-out and calibration readers skip and count bad records."""
    return Exporter(source, out_dir, config or ExportConfig(), bad_records=bad_records).run()


def summary_rows(cards: list[ModelCard]) -> list[dict]:
    rows = []
    for card in cards:
        a, p = card.accuracy, card.parity
        rows.append(
            {
                "precision": card.precision,
                "file": card.file,
                "MB": card.file_bytes / 1e6,
                "max |err|": p.max_abs if p else None,
                "tolerance": card.tolerance.max_abs,
                "GAP": a.gap if a else None,
                "mAP": a.map if a else None,
                "dGAP vs TF": (a.gap - a.reference_gap) if a else None,
                "passed": p.passed if p else None,
            }
        )
        if card.at_k:  # an any-k student: its GAP at each k (the GAP column is the largest k's)
            rows[-1]["GAP per k"] = "  ".join(
                f"{k}: {at.accuracy.gap:.4f}" if at.accuracy else f"{k}: -" for k, at in card.at_k.items()
            )
    return rows
