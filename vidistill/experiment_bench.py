"""The latency stage the experiments share: each model exported (parity and accuracy checked by the exporter),
then every file timed in ONE bench run, so that the times compare."""

from __future__ import annotations

import os


def export_and_time(
    models: dict[str, str],
    out_dir: str,
    heldout: str,
    *,
    precisions: tuple[str, ...],
    batches: tuple[int, ...],
    duration: float,
    runs: int | None,
    command: str,
    progress: bool = True,
    frames: tuple[int, ...] | None = None,
) -> dict:
    """`models` {name: run or model directory} -> {name: {precision: {str(batch): p50 ms}}}; an any-k student's
    files are timed at each k of `frames` (None: each k it was trained at), under the names NAME@kK. Each model's
    files go to OUT/export/NAME (kept: a rerun exports only what is missing), the bench report to OUT/bench."""
    from vidistill.bench.benchmark import BenchConfig, run_benchmark
    from vidistill.export.config import ExportConfig
    from vidistill.export.exporter import export
    from vidistill.sources import export_source

    files = {}
    for name, model_dir in models.items():
        out = os.path.join(out_dir, "export", name)
        if not os.path.exists(os.path.join(out, f"{precisions[-1]}.json")):
            config = ExportConfig(precisions=list(precisions), eval_data=heldout, eval_videos=200)
            export(export_source(model_dir), out, config)
        files[name] = [os.path.join(out, f"{p}.onnx") for p in precisions]
    bench = BenchConfig(
        models=[path for paths in files.values() for path in paths],
        providers=["cpu"],
        batches=list(batches),
        duration=duration,
        runs=runs,
        report=os.path.join(out_dir, "bench"),
        profile=False,
        command=command,
        frames=list(frames) if frames else None,
    )
    rows, _ = run_benchmark(bench, progress=progress)
    latency: dict = {}
    for name, paths in files.items():
        for path, precision in zip(paths, precisions):
            for row in rows:
                if os.path.abspath(row["path"]) == os.path.abspath(path) and row.get("p50_ms") is not None:
                    key = f"{name}@k{row['frames']}" if "@k" in row["model"] else name  # an any-k file at k
                    latency.setdefault(key, {}).setdefault(precision, {})[str(row["batch"])] = row["p50_ms"]
    return latency
