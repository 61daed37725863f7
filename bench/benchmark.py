"""Orchestration: every (model, batch, provider) cell checked for parity, then timed; rows written as they come.

Models are ONNX files with their model card beside them (DIR/<precision>.onnx + DIR/<precision>.json) or TF
SavedModel directories (card: <dir>.json beside the directory). A bad model, a provider that does not load or a
batch size a model cannot take becomes a row that says so; it never stops the rows after it or loses the rows
before it (DIR/rows.jsonl is appended row by row, the report files are rewritten after every model).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from vidistill.bench import report as reporting
from vidistill.bench.inputs import DEFAULT_SETS, feature_size, input_names, inputs_for_card
from vidistill.bench.roofline import (
    achieved_gflops,
    bytes_moved,
    onnx_bandwidth,
    onnx_matmul_peak,
    peak_dtype,
    roof_seconds,
    tf_matmul_peak,
)
from vidistill.bench.runners import (
    OnnxRunner,
    SavedModelRunner,
    first_line,
    node_placement,
    parse_providers,
    placement_summary,
    top_ops,
    probe_provider,
)
from vidistill.bench.system import physical_cores, system_info
from vidistill.bench.timing import PeakRSS, latency_stats, time_once, timed_runs
from vidistill.export.card import read_card
from vidistill.export.config import FULL_LEVELS
from vidistill.export.sessions import PROVIDER_NAMES, ProviderUnavailable, cpu_model, int8_saturates
from vidistill.yt8m.errors import ConfigError

DISPLAY = {"cpu": "CPU", "cuda": "CUDA", "tensorrt": "TensorRT"}


@dataclass
class BenchConfig:
    models: list[str]
    providers: list[str] = field(default_factory=lambda: ["auto"])  # cpu, cuda, tensorrt; auto: all that load
    batches: list[int] = field(default_factory=lambda: [1, 8, 64, 256])
    threads: int | None = None  # intra-op threads; None: the physical cores
    runs: int | None = None  # exactly this many timed runs per cell, or else:
    duration: float = 5.0  # seconds per cell, with at least min_runs, at most time_cap seconds
    min_runs: int = 100
    time_cap: float = 60.0
    warmup: int = 5
    input_sets: int = DEFAULT_SETS
    seed: int = 0
    report: str = "bench-report"
    baseline: str | None = None  # a model (label, path or file stem); None: the first model
    pareto_batch: int = 1
    peak_size: int | None = None  # MatMul peak n; None: 2048 on CPU, 8192 on GPU
    profile: bool = True  # per-node providers from a short profiled session
    command: str = ""
    # an any-k student's file is timed at each of these k's (a model per k, labelled MODEL@kK); None: at each k it
    # was trained at. Files of one k are timed at their k whatever this says
    frames: list[int] | None = None

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("give at least one model")
        self.providers = parse_providers(",".join(self.providers))
        if not self.batches or any(int(b) != b or b < 1 for b in self.batches):
            raise ConfigError(f"--batch: batch sizes must be positive integers, not {self.batches}")
        self.batches = list(dict.fromkeys(self.batches))
        checks = [
            (self.threads is None or self.threads >= 1, f"--threads must be at least 1, not {self.threads}"),
            (self.runs is None or self.runs >= 1, f"--runs must be at least 1, not {self.runs}"),
            (self.duration > 0, f"--duration must be positive, not {self.duration}"),
            (self.min_runs >= 1, f"--min-runs must be at least 1, not {self.min_runs}"),
            (self.time_cap > 0, f"--time-cap must be positive, not {self.time_cap}"),
            (self.warmup >= 0, f"--warmup (warm-up runs) must be 0 or more, not {self.warmup}"),
            (self.input_sets >= 2, f"--input-sets must be 2 or more (rotated between runs), not {self.input_sets}"),
            (self.seed >= 0, f"--seed must be 0 or more, not {self.seed}"),
            (self.pareto_batch >= 1, f"--pareto-batch must be at least 1, not {self.pareto_batch}"),
            (self.peak_size is None or self.peak_size >= 1, f"--peak-size must be at least 1, not {self.peak_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for path in self.models:
            if not os.path.exists(path):
                raise FileNotFoundError(f"no model {path}: give an ONNX file (its card beside it) or a SavedModel dir")


@dataclass
class Model:
    path: str
    label: str
    kind: str = "onnx"  # onnx | savedmodel
    card: object = None  # export.card.ModelCard
    reference: str | None = None  # the fp32 ONNX file compared with
    reference_frames: int | None = None
    error: str | None = None


def _is_saved_model(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb"))


def resolve_model(path: str) -> Model:
    """The model, its card and its fp32 reference; a card that cannot be read leaves `error` set."""
    path = os.path.normpath(path)
    folder, name = os.path.split(os.path.abspath(path))
    model = Model(path=path, label=f"{os.path.basename(folder)}/{os.path.splitext(name)[0]}")
    try:
        if os.path.isdir(path):
            if not _is_saved_model(path):
                raise ConfigError(f"{path} is a directory but no TF SavedModel (no saved_model.pb)")
            model.kind = "savedmodel"
            model.card = read_card(path + ".json")
        else:
            model.card = read_card(path)
        input_names(model.card)  # the card names a frames and a num_frames input
    except (OSError, ValueError) as e:
        model.error = first_line(e)
        return model
    reference = os.path.join(folder, model.card.reference or "fp32.onnx")
    if os.path.isfile(reference):
        model.reference = reference
        try:  # the reference's T, where it differs (a SavedModel student takes whole videos)
            model.reference_frames = read_card(reference).frames
        except (OSError, ValueError):
            model.reference_frames = None
    return model


def models_at_k(model: Model, frames: list[int] | None) -> list[Model]:
    """An any-k student's file as one model per k (`frames`, None: each k it was trained at), each with its card at
    that k (ModelCard.for_k: frames, FLOPs, accuracy) and labelled MODEL@kK; a k it was not trained at becomes a
    model whose row says so. Any other model as it is."""
    card = model.card
    if card is None or not card.frame_counts:
        return [model]
    views = []
    for k in frames or card.frame_counts:
        view = dataclasses.replace(model, label=f"{model.label}@k{k}")
        try:
            view.card = card.for_k(k)
        except ConfigError as e:
            view.card, view.error = None, first_line(e)
        else:
            if view.reference is not None and view.reference_frames == card.frames:
                view.reference_frames = k  # the any-k fp32 file, at the same k
        views.append(view)
    return views


def resolve_baseline(name: str | None, models: list[Model]) -> str:
    if name is None:
        return models[0].label
    for model in models:
        stem = os.path.splitext(os.path.basename(model.path))[0]
        names = {model.label, model.path, os.path.abspath(model.path), stem}
        if name in names or os.path.normpath(name) in names:
            return model.label
    raise ConfigError(f"--baseline {name!r} is none of the models ({', '.join(m.label for m in models)})")


def _unique_labels(models: list[Model]) -> None:
    seen: dict[str, int] = {}
    for model in models:
        seen[model.label] = seen.get(model.label, 0) + 1
        if seen[model.label] > 1:
            model.label = f"{model.label}#{seen[model.label]}"


def _predictions(outputs: dict) -> np.ndarray:
    return np.asarray(outputs["predictions"] if "predictions" in outputs else next(iter(outputs.values())))


class Benchmark:
    def __init__(self, config: BenchConfig, *, progress: bool = True):
        config.validate()
        self.config = config
        self.threads = config.threads or physical_cores()
        self.progress = progress
        self.models = [at_k for p in config.models for at_k in models_at_k(resolve_model(p), config.frames)]
        _unique_labels(self.models)
        self.baseline = resolve_baseline(config.baseline, self.models)
        self.notes: list[str] = []
        self.pareto_batch = config.pareto_batch
        if self.pareto_batch not in config.batches:
            self.pareto_batch = min(config.batches)
            self.notes.append(
                f"--pareto-batch {config.pareto_batch} was not benchmarked: the plot uses batch {self.pareto_batch}"
            )
        self.providers = self._available_providers()
        self._warn_of_int8_saturation()
        self.system = system_info()
        self.peaks: dict[tuple[str, str], object] = {}
        self.bandwidths: dict[str, object] = {}
        self.placements: dict[tuple[str, str], dict] = {}
        self.reference_cache: dict[tuple, list[np.ndarray]] = {}  # (file, batch, T, sets) -> predictions
        self.rows: list[dict] = []
        self.started = time.strftime("%Y-%m-%d %H:%M:%S %Z")

    def _warn_of_int8_saturation(self) -> None:
        """A note (and a line on stderr) when int8 files with full-range weights run on a CPU without VNNI / AMX,
        where ONNX Runtime's uint8 x int8 products can saturate: their accuracy there is not what their card says."""
        if "cpu" not in self.providers or not int8_saturates():
            return
        full = [
            m.label
            for m in self.models
            if m.card is not None
            and m.card.precision.startswith("int8")
            and m.card.int8_weight_levels in (0, FULL_LEVELS)  # 0: a card from before the range was recorded
        ]
        if full:
            note = (
                f"{', '.join(full)}: int8 weights over the full range (or not recorded) on a CPU without VNNI / AMX "
                f"({cpu_model()}): ONNX Runtime's int8 products can saturate here, so these files may be less "
                "accurate than their cards say; re-export them without --full-int8-range (7-bit weights)"
            )
            self.notes.append(note)
            print(f"vidistill bench: warning: {note}", file=sys.stderr)

    def _available_providers(self) -> list[str]:
        asked = list(PROVIDER_NAMES) if self.config.providers == ["auto"] else self.config.providers
        problems = {provider: probe_provider(provider) for provider in asked}
        ready = [provider for provider in asked if problems[provider] is None]
        for provider, problem in problems.items():
            if problem is not None:
                only = f"; only {', '.join(DISPLAY[p] for p in ready)} ran" if ready else "; nothing ran"
                self.notes.append(f"{DISPLAY[provider]} unavailable ({problem}): no {provider} rows{only}")
        return ready

    # ---- the report -------------------------------------------------------------------------------------------
    def meta(self) -> dict:
        config = dataclasses.asdict(self.config)
        config["threads"] = self.threads
        return {
            "date": self.started,
            "command": self.config.command,
            "config": config,
            "system": self.system,
            "threads": self.threads,
            "providers_run": self.providers,
            "notes": self.notes,
            "peaks": [p.to_dict() for p in self.peaks.values()],
            "bandwidths": [b.to_dict() for b in self.bandwidths.values()],
            "baseline": self.baseline,
            "pareto_batch": self.pareto_batch,
        }

    def write_report(self, *, plot: bool = True) -> list[dict]:
        return reporting.write_report(self.config.report, self.rows, self.meta(), plot=plot)

    def _emit(self, row: dict) -> None:
        reporting.append_row(self.config.report, row)
        self.rows.append(row)

    # ---- the run ----------------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        from tqdm import tqdm

        os.makedirs(self.config.report, exist_ok=True)
        rows_path = os.path.join(self.config.report, reporting.ROWS)
        if os.path.exists(rows_path):
            os.remove(rows_path)  # a new run: rows of an earlier one would mix in
        cells = len(self.models) * len(self.config.batches) * max(len(self.providers), 1)
        bar = tqdm(total=cells, desc="bench", unit="cell", file=sys.stderr, disable=not self.progress)
        try:
            for model in self.models:
                self._bench_model(model, bar)
                self.write_report(plot=False)  # the tables so far (0.5 s a plot: drawn once, at the end)
        finally:
            bar.close()
            self.write_report()
        return reporting.add_speedups(self.rows, self.baseline)

    def _base_row(self, model: Model, provider: str, batch, mode: str = "-") -> dict:
        card = model.card
        accuracy = getattr(card, "accuracy", None)
        row = dict.fromkeys(reporting.ROW_FIELDS)
        row.update(
            model=model.label,
            path=model.path,
            kind=model.kind,
            precision=getattr(card, "precision", None),
            provider=provider,
            mode=mode,
            batch=batch,
            frames=getattr(card, "frames", None),
            threads=self.threads,
            reference=os.path.basename(model.reference) if model.reference else None,
            tolerance=card.tolerance.against_reference() if card is not None else None,
            gap=accuracy.gap if accuracy else None,
            map=accuracy.map if accuracy else None,
        )
        return row

    def _bench_model(self, model: Model, bar) -> None:
        per_model = len(self.config.batches) * max(len(self.providers), 1)
        if model.error is not None:
            self._emit(dict(self._base_row(model, "-", None), status=f"failed: {model.error}"))
            bar.update(per_model)
            return
        dead: set[str] = set()  # providers on which this model cannot run at all
        for batch in self.config.batches:
            inputs = None
            for provider in self.providers:
                bar.set_postfix_str(f"{model.label} {provider} batch {batch}")
                if provider not in dead:
                    try:
                        inputs = inputs or inputs_for_card(
                            model.card, batch, sets=self.config.input_sets, seed=self.config.seed
                        )
                        rows = self._bench_cell(model, provider, batch, inputs)
                    except _Dead as e:
                        dead.add(provider)
                        rows = [dict(self._base_row(model, provider, None), status=str(e))]
                    except Exception as e:  # noqa: BLE001 - the row says what went wrong; the others go on
                        rows = [dict(self._base_row(model, provider, batch), status=f"failed: {first_line(e)}")]
                    for row in rows:
                        self._emit(row)
                bar.update(1)
            del inputs  # collected by the next cell's PeakRSS

    def _runner_class(self, model: Model):
        return SavedModelRunner if model.kind == "savedmodel" else OnnxRunner

    def _runner(self, model: Model, provider: str):
        try:
            return self._runner_class(model)(model.path, provider, self.threads)
        except ProviderUnavailable as e:
            raise _Dead(f"skipped: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise _Dead(f"failed: cannot load: {first_line(e)}") from None

    def _reference(self, model: Model, batch: int, inputs: list[dict]) -> tuple[list[dict], list[np.ndarray]] | None:
        """(parity inputs, the fp32 reference's predictions on them, run on CPU); None when there is no reference
        other than the model itself on CPU."""
        if model.reference is None:
            return None
        frames = model.reference_frames or model.card.frames
        if frames != model.card.frames:
            inputs = inputs_for_card(
                model.card, batch, frames=frames, sets=self.config.input_sets, seed=self.config.seed
            )
        key = (model.reference, batch, frames, len(inputs))
        if key not in self.reference_cache:
            runner = OnnxRunner(model.reference, "cpu", self.threads)
            self.reference_cache[key] = [_predictions(runner.run(x)).astype(np.float32) for x in inputs]
            runner.close()
        return inputs, self.reference_cache[key]

    def _bench_cell(self, model: Model, provider: str, batch: int, inputs: list[dict]) -> list[dict]:
        rows = self._measure(model, provider, batch, inputs)
        self._place(model, provider, batch, inputs[0])  # the session loaded and took these inputs
        placement = self.placements.get((model.label, provider, batch))
        nodes, fallbacks, ops, shape_ops = placement_summary(placement)
        return [
            dict(
                row,
                nodes=nodes or None,
                cpu_fallbacks=fallbacks,
                fallback_ops=ops or None,
                cpu_shape_ops=shape_ops,
                top_ops=top_ops(placement) or None,
            )
            for row in rows
        ]

    def _measure(self, model: Model, provider: str, batch: int, inputs: list[dict]) -> list[dict]:
        config, card = self.config, model.card
        row = self._base_row(model, provider, batch)
        is_self = model.reference == os.path.abspath(model.path) and provider == "cpu"
        reference = None if is_self else self._reference(model, batch, inputs)
        self._runner_class(model).prepare(self.threads)
        with PeakRSS() as memory:  # collects garbage first (0.2 s with TensorFlow loaded: once per cell)
            started = time.perf_counter()
            runner = self._runner(model, provider)
            row.update(session_s=time.perf_counter() - started, providers_loaded=", ".join(runner.providers))
            runner.check_inputs(inputs[0])
            row["first_run_ms"] = time_once(lambda: runner.run(inputs[0])) * 1e3
            if reference is None:
                row["status"] = "ok (is the fp32 reference)" if is_self else "ok (parity unchecked: no fp32 reference)"
            else:
                parity_inputs, expected = reference
                worst = 0.0
                for x, want in zip(parity_inputs, expected):
                    got = _predictions(runner.run(x)).astype(np.float64)
                    if got.shape != want.shape:
                        raise ConfigError(f"predictions {list(got.shape)} but the reference gives {list(want.shape)}")
                    worst = max(worst, float(np.max(np.abs(got - want.astype(np.float64)))))
                row["parity_max_abs"] = worst
                tolerance = card.tolerance.against_reference()
                if not worst <= tolerance:  # NaN fails too
                    runner.close()
                    return [dict(row, status=f"failed: parity {worst:.3g} > {tolerance:.3g}")]
                row["status"] = "ok"
            timed = {}
            for mode in runner.modes:
                if mode == "iobinding":
                    step = runner.bound(inputs)
                else:

                    def step(i, runner=runner):
                        runner.run(inputs[i % len(inputs)])

                timed[mode] = timed_runs(
                    step,
                    warmup=config.warmup,
                    runs=config.runs,
                    duration=config.duration,
                    min_runs=config.min_runs,
                    time_cap=config.time_cap,
                )
            runner.close()
        rows = []
        for mode, latencies in timed.items():
            stats = latency_stats(latencies)
            out = dict(row, mode=mode, **stats.to_dict(), peak_mem_mb=memory.delta_mb)
            out["videos_per_s"] = batch / (stats.p50_ms / 1e3)
            self._roofline(out, model, provider, stats.p50_ms / 1e3)
            rows.append(out)
        return rows

    def _place(self, model: Model, provider: str, batch: int, inputs: dict) -> None:
        """Per-node providers and time per op type of this model on this provider and batch (a short extra
        profiled session: two runs, the second one's kernel times)."""
        key = (model.label, provider, batch)
        if not self.config.profile or model.kind != "onnx" or key in self.placements:
            return
        try:
            self.placements[key] = node_placement(model.path, provider, self.threads, inputs)
        except Exception as e:  # noqa: BLE001
            self.placements[key] = None
            self.notes.append(f"{model.label} on {provider}: profiling failed: {first_line(e)}")

    def _peak(self, provider_key: str, dtype: str):
        if (provider_key, dtype) not in self.peaks:
            size = self.config.peak_size
            if provider_key.startswith("tf-"):
                peak = tf_matmul_peak(provider_key[3:], size)
            else:
                peak = onnx_matmul_peak(provider_key, self.threads, size, dtype)
            self.peaks[(provider_key, dtype)] = peak
            if peak.gflops is None:
                self.notes.append(f"{provider_key} {dtype} MatMul peak failed: {peak.error}")
        return self.peaks[(provider_key, dtype)]

    def _bandwidth(self, provider: str):
        """The ONNX Runtime GEMV bandwidth of `provider` (TF rows on the same device use it too: same memory)."""
        if provider not in self.bandwidths:
            self.bandwidths[provider] = onnx_bandwidth(provider, self.threads)
            if self.bandwidths[provider].gbs is None:
                self.notes.append(f"{provider} bandwidth measurement failed: {self.bandwidths[provider].error}")
        return self.bandwidths[provider]

    def _roofline(self, row: dict, model: Model, provider: str, seconds: float) -> None:
        card = model.card
        row["gflops"] = achieved_gflops(card.flops_per_video, row["batch"], seconds)
        key = f"tf-{provider}" if model.kind == "savedmodel" else provider
        dtype = peak_dtype(card.precision, provider) if model.kind == "onnx" else "float32"
        peak = self._peak(key, dtype)
        if peak.gflops is None and dtype != "float32":
            peak = self._peak(key, "float32")
        if peak.gflops:
            row["peak_gflops"] = peak.gflops
            row["peak_dtype"] = peak.dtype
            row["pct_peak"] = 100.0 * row["gflops"] / peak.gflops
        if not card.weight_reads_per_video:  # a card from before the bytes were recorded: FLOPs only
            return
        moved = bytes_moved(
            card.weight_reads_per_video, card.precision, provider, row["batch"], card.frames, feature_size(card)
        )
        bandwidth = self._bandwidth(provider)
        roof, bound = roof_seconds(card.flops_per_video * row["batch"], moved, peak.gflops, bandwidth.gbs)
        row["bytes_mb"] = moved / 1e6
        row["bandwidth_gbs"] = bandwidth.gbs
        if roof is not None:
            row["roof_ms"] = roof * 1e3
            row["pct_roof"] = 100.0 * roof / seconds
            row["bound"] = bound


class _Dead(Exception):
    """The model cannot run on this provider at all: one row, and its other batch sizes are skipped."""


def run_benchmark(config: BenchConfig, *, progress: bool = True) -> tuple[list[dict], Benchmark]:
    bench = Benchmark(config, progress=progress)
    return bench.run(), bench
