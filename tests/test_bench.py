"""`vidistill bench` and the bench/ package on tiny ONNX models (built with onnx.helper) and one tiny SavedModel:
statistics, the measurement loop, parity failures, bad models, unavailable providers, the report files, the
Pareto front, and that timing ONNX files never imports TensorFlow."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from vidistill.bench.benchmark import BenchConfig, run_benchmark
from vidistill.bench.report import ROW_FIELDS, pareto_front
from vidistill.bench.runners import parse_profile, parse_providers, placement_summary, probe_provider, top_ops
from vidistill.bench.timing import latency_stats, timed_runs
from vidistill.export.card import Accuracy, ModelCard, TensorSpec, Tolerance, write_card
from vidistill.cli import main

T, F, C, E = 4, 1152, 5, 8
FLOPS = 2 * T * F + 2 * F * (C + E)
WEIGHT_READS = F * (C + E) + 100_000  # a little more traffic than the matrices (as a recurrent model would read)
GAPS = {"fp32": 0.80, "int8-dynamic": 0.79, "fp16": 0.50}
TOLERANCE = 0.01


def _weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.05, (F, C)).astype(np.float32), rng.normal(0, 0.05, (F, E)).astype(np.float32)


def _onnx_model(w: np.ndarray, p: np.ndarray, batch="batch"):
    """predictions = sigmoid(mean_frames @ w), representation = mean_frames @ p; the mean divides by num_frames."""
    from onnx import TensorProto, helper, numpy_helper

    inputs = [
        helper.make_tensor_value_info("frames", TensorProto.FLOAT, [batch, T, F]),
        helper.make_tensor_value_info("num_frames", TensorProto.INT32, [batch]),
    ]
    outputs = [
        helper.make_tensor_value_info("predictions", TensorProto.FLOAT, [batch, C]),
        helper.make_tensor_value_info("representation", TensorProto.FLOAT, [batch, E]),
    ]
    initializers = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(p, "p"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["frames", "axis1"], ["total"], keepdims=0),
        helper.make_node("Cast", ["num_frames"], ["count"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["count", "axis1"], ["count2"]),
        helper.make_node("Div", ["total", "count2"], ["mean"]),
        helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions"]),
        helper.make_node("MatMul", ["mean", "p"], ["representation"]),
    ]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _card(precision: str, file: str, reference: str | None, gap: float | None = None) -> ModelCard:
    accuracy = Accuracy(data="synthetic", videos=100, hit_at_1=gap, perr=gap, gap=gap, map=gap - 0.1) if gap else None
    return ModelCard(
        precision=precision,
        file=file,
        role="student",
        family="tiny",
        frames=T,
        selection=None,
        classes=C,
        feature_sizes={"rgb": 1024, "audio": 128},
        inputs=[TensorSpec("frames", ["batch", T, F], "float32"), TensorSpec("num_frames", ["batch"], "int32")],
        outputs=[
            TensorSpec("predictions", ["batch", C], "float32"),
            TensorSpec("representation", ["batch", E], "float32"),
        ],
        parameters=F * (C + E),
        flops_per_video=FLOPS,
        weight_reads_per_video=WEIGHT_READS,
        file_bytes=0,
        opset=17,
        tolerance=Tolerance(max_abs=TOLERANCE, gap_drop=0.005),
        reference=reference,
        accuracy=accuracy,
    )


def _write(directory, precision: str, model, gap: float | None, reference: str | None = "fp32.onnx"):
    import onnx

    directory.mkdir(exist_ok=True)
    path = directory / f"{precision}.onnx"
    if isinstance(model, bytes):
        path.write_bytes(model)
    else:
        onnx.save(model, str(path))
    write_card(_card(precision, path.name, None if precision == "fp32" else reference, gap), str(path)[:-5] + ".json")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """student/fp32.onnx, student/int8-dynamic.onnx (weights nudged: within tolerance), student/fp16.onnx (weights
    far off: beyond tolerance), broken/fp32.onnx (not ONNX), static/fp32.onnx (static batch 1)."""
    root = tmp_path_factory.mktemp("models")
    w, p = _weights()
    rng = np.random.default_rng(1)
    student = root / "student"
    paths = {
        "fp32": _write(student, "fp32", _onnx_model(w, p), GAPS["fp32"]),
        "int8": _write(
            student,
            "int8-dynamic",
            _onnx_model(w + rng.normal(0, 1e-4, w.shape).astype(np.float32), p),
            GAPS["int8-dynamic"],
        ),
        "wrong": _write(
            student, "fp16", _onnx_model(w + rng.normal(0, 0.5, w.shape).astype(np.float32), p), GAPS["fp16"]
        ),
        "broken": _write(root / "broken", "fp32", b"this is not an ONNX file", 0.7),
        "static": _write(root / "static", "fp32", _onnx_model(w, p, batch=1), None),
    }
    return {k: str(v) for k, v in paths.items()}


def test_latency_stats_exact_percentiles():
    seconds = [ms / 1e3 for ms in range(1, 101)]
    random.Random(0).shuffle(seconds)
    stats = latency_stats(seconds)
    assert stats.runs == 100
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.std_ms == pytest.approx(math.sqrt(100 * 101 / 12))  # sample std of 1..n: sqrt(n(n+1)/12)
    assert (stats.min_ms, stats.max_ms) == (pytest.approx(1.0), pytest.approx(100.0))
    one = latency_stats([0.002])
    assert (one.p50_ms, one.p99_ms, one.std_ms) == (pytest.approx(2.0), pytest.approx(2.0), 0.0)
    with pytest.raises(ValueError):
        latency_stats([])


def test_timed_runs_counts_and_rotation():
    calls = []
    latencies = timed_runs(calls.append, warmup=2, runs=5)
    assert len(latencies) == 5 and calls == list(range(7))  # 2 warm-up + exactly 5 timed, indices rotate inputs

    import time

    latencies = timed_runs(lambda i: time.sleep(0.002), warmup=0, runs=None, duration=0.02, min_runs=4)
    assert len(latencies) >= 4 and sum(latencies) >= 4 * 0.002
    capped = timed_runs(lambda i: time.sleep(0.004), warmup=0, runs=None, duration=0.01, min_runs=10_000, time_cap=0.04)
    assert 3 <= len(capped) < 100


def test_pareto_front_exact():
    points = [(1.0, 0.5), (2.0, 0.7), (2.0, 0.6), (3.0, 0.65), (4.0, 0.9), (1.0, 0.5), (5.0, 0.9), (0.5, 0.2)]
    assert pareto_front(points) == [(0.5, 0.2), (1.0, 0.5), (2.0, 0.7), (4.0, 0.9)]
    assert pareto_front([]) == []


def test_parse_profile_counts_cpu_fallbacks_and_times_the_last_run():
    def node(name, op, provider, ts, dur, out=None):
        args = {"op_name": op, "provider": provider}
        if out is not None:
            args["output_type_shape"] = out
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": args}

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "args": {}},
        node("mm", "MatMul", "CUDAExecutionProvider", 1, 9000),
        node("sig", "Sigmoid", "CUDAExecutionProvider", 2, 10),
        node("topk", "TopK", "CPUExecutionProvider", 3, 10, [{"float": [1, 20]}, {"int64": [1, 20]}]),
        node("untyped", "Slice", "CPUExecutionProvider", 4, 10),
        # what the GPU run showed: the LSTMs' initial-state shapes, computed on the CPU (integer outputs only)
        node("shape_cast", "Cast", "CPUExecutionProvider", 5, 10, [{"int32": [3]}]),
        node("zeros_dims", "Concat", "CPUExecutionProvider", 6, 10, [{"int64": [2]}]),
        {"cat": "Session", "name": "model_run", "ts": 100, "args": {}},  # the second run: its times count
        node("mm", "MatMul", "CUDAExecutionProvider", 101, 3000),
        node("topk", "TopK", "CPUExecutionProvider", 102, 1000),
    ]
    placement = parse_profile(events, "CUDAExecutionProvider")
    assert placement == {
        "nodes": {"CUDAExecutionProvider": 2, "CPUExecutionProvider": 4},
        "fallbacks": 2,
        "fallback_ops": {"TopK": 1, "Slice": 1},
        "shape_ops": 2,
        "op_ms": {"MatMul": 3.0, "TopK": 1.0},
    }
    assert placement_summary(placement) == ("CPU 4, CUDA 2", 2, "TopK x1, Slice x1", 2)
    on_cpu = parse_profile(events, "CPUExecutionProvider")
    assert on_cpu["fallbacks"] == 0 and on_cpu["shape_ops"] == 0
    assert top_ops(placement) == "MatMul 75%, TopK 25%"


def test_unknown_provider_is_an_error_before_anything_runs(models, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown provider 'rocm': choose from cpu, cuda, tensorrt"):
        parse_providers("cpu,rocm")
    report = tmp_path / "report"
    code = main(["bench", models["fp32"], "--providers", "cpu,rocm", "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if line.strip()] == [
        "vidistill bench: error: unknown provider 'rocm': choose from cpu, cuda, tensorrt (comma-separated), or auto"
    ]
    assert not report.exists()
    for flag, value, message in (
        ("--min-runs", "0", "--min-runs must be at least 1, not 0"),
        ("--time-cap", "-1", "--time-cap must be positive, not -1.0"),
    ):
        assert main(["bench", models["fp32"], flag, value, "--report", str(report)]) == 2
        assert capsys.readouterr().err.strip() == f"vidistill bench: error: {message}"
        assert not report.exists()


def test_bench_onnx_rows_report_and_failures(models, tmp_path):
    report = tmp_path / "report"
    order = ["fp32", "int8", "wrong", "broken", "static"]
    config = BenchConfig(
        models=[models[k] for k in order],
        providers=["cpu", "cuda"],
        batches=[1, 2],
        runs=4,
        warmup=1,
        input_sets=3,
        peak_size=64,
        report=str(report),
        command="test",
    )
    all_rows, bench = run_benchmark(config, progress=False)
    rows = [r for r in all_rows if r["provider"] == "cpu"]
    by = {(r["model"], r["batch"]): r for r in rows}
    labels = {k: f"{os.path.basename(os.path.dirname(models[k]))}/{os.path.basename(models[k])[:-5]}" for k in order}

    # without a usable GPU CUDA is reported unavailable, one line, and the CPU rows are all there; on a GPU
    # machine the CUDA rows run beside them
    cuda = probe_provider("cuda") is None
    assert any("CUDA unavailable" in n for n in bench.notes) != cuda, bench.notes
    assert {r["provider"] for r in all_rows} == ({"cpu", "cuda"} if cuda else {"cpu"})
    assert len(rows) == 2 + 2 + 2 + 1 + 2

    for key in ("fp32", "int8"):
        for batch in (1, 2):
            row = by[(labels[key], batch)]
            assert row["status"].startswith("ok"), row["status"]
            assert row["runs"] == 4 and row["mode"] == "run"
            assert row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"] and row["videos_per_s"] > 0
            assert row["gflops"] == pytest.approx(FLOPS * batch / (row["p50_ms"] / 1e3) / 1e9)
            assert row["pct_peak"] == pytest.approx(100 * row["gflops"] / row["peak_gflops"])
            assert row["peak_dtype"] == ("int8" if key == "int8" else "float32")  # int8 files: an int8 peak
            # bytes: the card's weight reads x bytes per weight (int8: 1, fp32: 4) + the batch's float32 frames
            assert row["bytes_mb"] * 1e6 == WEIGHT_READS * (1 if key == "int8" else 4) + batch * T * F * 4
            compute = FLOPS * batch / (row["peak_gflops"] * 1e9)
            memory = row["bytes_mb"] * 1e6 / (row["bandwidth_gbs"] * 1e9)
            assert row["roof_ms"] == pytest.approx(1e3 * max(compute, memory))
            assert row["bound"] == ("memory" if memory > compute else "compute")
            assert row["pct_roof"] == pytest.approx(100 * row["roof_ms"] / row["p50_ms"])
            assert row["session_s"] > 0 and row["first_run_ms"] > 0 and row["peak_mem_mb"] is not None
            assert row["nodes"].startswith("CPU ") and row["cpu_fallbacks"] == 0
    assert by[(labels["fp32"], 1)]["status"] == "ok (is the fp32 reference)"
    int8 = by[(labels["int8"], 1)]
    assert int8["status"] == "ok" and 0 < int8["parity_max_abs"] < TOLERANCE and int8["gap"] == GAPS["int8-dynamic"]

    for batch in (1, 2):  # beyond tolerance: failed, not timed
        wrong = by[(labels["wrong"], batch)]
        assert wrong["status"].startswith("failed: parity ") and wrong["status"].endswith(f"> {TOLERANCE:.3g}")
        assert wrong["parity_max_abs"] > TOLERANCE
        assert wrong["runs"] is None and wrong["p50_ms"] is None
    broken = by[(labels["broken"], None)]
    assert broken["status"].startswith("failed: cannot load: ") and broken["runs"] is None
    assert by[(labels["static"], 1)]["status"].startswith("ok")
    assert "static batch of 1: cannot take 2" in by[(labels["static"], 2)]["status"]

    # speed-up against the first model at the same batch and provider
    for batch in (1, 2):
        base, other = by[(labels["fp32"], batch)], by[(labels["int8"], batch)]
        assert base["speedup"] == pytest.approx(1.0)
        assert other["speedup"] == pytest.approx(base["p50_ms"] / other["p50_ms"])
        assert other["roof_speedup"] == pytest.approx(base["roof_ms"] / other["roof_ms"])

    # the report files
    assert sorted(os.listdir(report)) == ["pareto.png", "report.csv", "report.json", "report.md", "rows.jsonl"]
    assert len((report / "rows.jsonl").read_text().splitlines()) == len(all_rows)
    with open(report / "report.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ROW_FIELDS
        assert len(list(reader)) == len(all_rows)
    saved = json.loads((report / "report.json").read_text())
    assert saved["config"]["runs"] == 4 and saved["config"]["batches"] == [1, 2] and saved["threads"] >= 1
    assert len(saved["rows"]) == len(all_rows) and saved["peaks"][0]["gflops"] > 0
    assert {"float32", "int8"} <= {p["dtype"] for p in saved["peaks"]} and saved["bandwidths"][0]["gbs"] > 0
    markdown = (report / "report.md").read_text()
    for text in ("failed: parity", "failed: cannot load", "static batch of 1", "Pareto", "CPU"):
        assert text in markdown, text
    assert ("CUDA unavailable" in markdown) != cuda
    roofline = markdown[markdown.index("## Speed-ups against the roofline's") :].split("\n\n")[1]
    int8_row = by[(labels["int8"], 1)]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in roofline.splitlines()[2:]]
    expected = f"{100 * int8_row['speedup'] / int8_row['roof_speedup']:.0f}%"
    assert [labels["int8"], "cpu", "1", int8_row["bound"]] + [f"{int8_row['speedup']:.2f}x"] in [c[:5] for c in cells]
    assert expected in [c[6] for c in cells if c[0] == labels["int8"] and c[2] == "1"]
    assert (report / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interrupted_run_keeps_measured_rows(models, tmp_path, monkeypatch):
    """Interrupted at the second model: the first model's rows are in rows.jsonl and in the report files."""
    from vidistill.bench.benchmark import Benchmark

    measure = Benchmark._bench_cell

    def interrupt_at_int8(self, model, provider, batch, inputs):
        if model.label.endswith("int8-dynamic"):
            raise KeyboardInterrupt
        return measure(self, model, provider, batch, inputs)

    monkeypatch.setattr(Benchmark, "_bench_cell", interrupt_at_int8)
    report = tmp_path / "report"
    config = BenchConfig(
        models=[models["fp32"], models["int8"]],
        providers=["cpu"],
        batches=[1, 2],
        runs=2,
        warmup=0,
        peak_size=64,
        report=str(report),
    )
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(config, progress=False)
    rows = [json.loads(line) for line in (report / "rows.jsonl").read_text().splitlines()]
    assert [(r["model"], r["batch"], r["runs"]) for r in rows] == [("student/fp32", 1, 2), ("student/fp32", 2, 2)]
    assert len(json.loads((report / "report.json").read_text())["rows"]) == 2
    assert "student/fp32" in (report / "report.md").read_text()


def test_onnx_bench_does_not_import_tensorflow(models, tmp_path):
    """The CLI, in a fresh interpreter, benchmarking ONNX files: TensorFlow never enters sys.modules."""
    report = tmp_path / "report"
    code = (
        "import sys\n"
        "from vidistill.cli import main\n"
        f"code = main(['bench', {models['fp32']!r}, {models['int8']!r}, '--providers', 'cpu', '--batch', '1,3',"
        f" '--runs', '3', '--warmup', '1', '--peak-size', '64', '--quiet', '--report', {str(report)!r}])\n"
        "print('tensorflow imported:', 'tensorflow' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tensorflow imported: False" in done.stdout
    assert "student/int8-dynamic" in done.stdout and f"report: {report}/report.md" in done.stdout
    rows = [json.loads(line) for line in (report / "rows.jsonl").read_text().splitlines()]
    assert [(r["batch"], r["runs"]) for r in rows] == [(1, 3), (3, 3), (1, 3), (3, 3)]  # model by model, batch by batch


def test_saved_model_runner_against_fp32_onnx(models, tmp_path):
    """A TF SavedModel (card <dir>.json beside it) next to fp32.onnx: parity against it, timed on TF, and the
    baseline for the speed-ups."""
    import shutil

    import tensorflow as tf

    folder = tmp_path / "student"
    shutil.copytree(os.path.dirname(models["fp32"]), folder)
    w, p = _weights()

    class Tiny(tf.Module):
        def __init__(self):
            self.w, self.p = tf.Variable(w), tf.Variable(p)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None, F], tf.float32, name="frames"),
                tf.TensorSpec([None], tf.int32, name="num_frames"),
            ]
        )
        def serve(self, frames, num_frames):
            mean = tf.reduce_sum(frames, axis=1) / tf.cast(num_frames, tf.float32)[:, None]
            return {"predictions": tf.sigmoid(mean @ self.w), "representation": mean @ self.p}

    module = Tiny()
    tf.saved_model.save(module, str(folder / "tf-fp32"), signatures={"serving_default": module.serve})
    write_card(_card("tf-fp32", "tf-fp32", "fp32.onnx", 0.80), str(folder / "tf-fp32.json"))

    config = BenchConfig(
        models=[str(folder / "fp32.onnx"), str(folder / "tf-fp32")],
        providers=["cpu"],
        batches=[2],
        runs=3,
        warmup=1,
        peak_size=64,
        report=str(tmp_path / "report"),
        baseline="tf-fp32",
    )
    rows, _ = run_benchmark(config, progress=False)
    onnx_row, tf_row = rows
    assert tf_row["model"] == "student/tf-fp32" and tf_row["kind"] == "savedmodel" and tf_row["mode"] == "tf"
    assert tf_row["status"] == "ok" and tf_row["parity_max_abs"] < 1e-5 and tf_row["runs"] == 3
    assert tf_row["providers_loaded"].startswith("TensorFlow") and tf_row["pct_peak"] > 0
    assert tf_row["speedup"] == pytest.approx(1.0)
    assert onnx_row["speedup"] == pytest.approx(tf_row["p50_ms"] / onnx_row["p50_ms"])


def test_bench_exits_1_when_a_row_fails(models, tmp_path, capsys):
    """0 only when every row asked for was measured: a model that cannot load, or a variant past its tolerance,
    makes the command exit 1 (its rows and report are still written); a provider that is not on this machine is
    a skipped row, not a failure."""
    fast = ["--providers", "cpu", "--batch", "1", "--runs", "2", "--warmup", "0", "--peak-size", "64", "--quiet"]
    for bad in ("broken", "wrong"):
        report = tmp_path / bad
        assert main(["bench", models["fp32"], models[bad], *fast, "--report", str(report)]) == 1
        err = capsys.readouterr().err
        assert "vidistill bench: 1 of 2 rows failed (see their status in the report)" in err, err
        assert (report / "report.md").exists()
    skipped = ["--providers", "cpu,cuda", *fast[2:]]
    assert main(["bench", models["fp32"], *skipped, "--report", str(tmp_path / "ok")]) == 0


def test_pareto_plot_names_every_point_in_a_legend(tmp_path):
    """Clustered variants stay readable: each point is numbered and named (with its latency and GAP) in a legend
    beside the plot, coloured by model and shaped by precision."""
    from vidistill.bench.report import plot_pareto

    points = [
        ("teacher-300f/tf-fp32 @cpu", 4.7, 0.602),
        ("student-k30/fp32 @cpu", 0.31, 0.569),
        ("student-k30/int8-dynamic @cpu", 0.21, 0.5691),
        ("student-k30/int8-static @cpu", 0.22, 0.5692),
    ]
    path = tmp_path / "pareto.png"
    entries = plot_pareto(points, str(path), batch=1)
    assert entries == [
        "1  teacher-300f/tf-fp32 @cpu: 4.7 ms, GAP 0.602",
        "2  student-k30/fp32 @cpu: 0.31 ms, GAP 0.569",
        "3  student-k30/int8-dynamic @cpu: 0.21 ms, GAP 0.569",
        "4  student-k30/int8-static @cpu: 0.22 ms, GAP 0.569",
    ]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_pareto([], str(path), batch=1) == []


def test_full_range_int8_files_on_a_cpu_without_vnni_get_a_warning(monkeypatch, capsys):
    from types import SimpleNamespace

    from vidistill.bench import benchmark

    def model(label, precision, levels):
        return SimpleNamespace(label=label, card=SimpleNamespace(precision=precision, int8_weight_levels=levels))

    bench = benchmark.Benchmark.__new__(benchmark.Benchmark)
    bench.providers, bench.notes = ["cpu"], []
    bench.models = [
        model("s/int8-dynamic", "int8-dynamic", 64),  # 7-bit: exact everywhere
        model("full/int8-static", "int8-static", 127),
        model("old/int8-qat", "int8-qat", 0),  # a card from before the range was recorded
        model("s/fp32", "fp32", 0),
    ]
    monkeypatch.setattr(benchmark, "int8_saturates", lambda: True)
    bench._warn_of_int8_saturation()
    assert len(bench.notes) == 1 and bench.notes[0].startswith("full/int8-static, old/int8-qat: int8 weights over")
    assert "re-export them without --full-int8-range" in capsys.readouterr().err
    monkeypatch.setattr(benchmark, "int8_saturates", lambda: False)  # VNNI: nothing to say
    bench.notes = []
    bench._warn_of_int8_saturation()
    assert bench.notes == []
