"""The benchmark report: rows appended to DIR/rows.jsonl as they are measured, and from them DIR/report.md,
report.csv, report.json and pareto.png (GAP against p50 latency), regenerated after every model so that a crash
never loses a measured row."""

from __future__ import annotations

import csv
import json
import os

from tabulate import tabulate

from vidistill.yt8m.files import atomic_write

ROWS = "rows.jsonl"
ROW_FIELDS = [
    "model",
    "path",
    "kind",
    "precision",
    "provider",
    "mode",
    "batch",
    "frames",
    "status",
    "parity_max_abs",
    "tolerance",
    "reference",
    "runs",
    "session_s",
    "first_run_ms",
    "mean_ms",
    "std_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "min_ms",
    "max_ms",
    "videos_per_s",
    "peak_mem_mb",
    "gflops",
    "peak_gflops",
    "peak_dtype",
    "pct_peak",
    "bytes_mb",
    "bandwidth_gbs",
    "roof_ms",
    "pct_roof",
    "bound",
    "roof_speedup",
    "speedup",
    "gap",
    "map",
    "nodes",
    "cpu_fallbacks",
    "fallback_ops",
    "cpu_shape_ops",
    "top_ops",
    "providers_loaded",
    "threads",
]
TIMED_MODES = ("run", "tf")  # the modes a user calling the model gets (IO binding is the GPU-resident variant)


def append_row(out_dir: str, row: dict) -> None:
    with open(os.path.join(out_dir, ROWS), "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def read_rows(out_dir: str) -> list[dict]:
    path = os.path.join(out_dir, ROWS)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def is_ok(row: dict) -> bool:
    return str(row.get("status", "")).startswith("ok") and row.get("p50_ms") is not None


def add_speedups(rows: list[dict], baseline: str | None) -> list[dict]:
    """Each row's p50 speed-up over the baseline model's row at the same batch and provider (same mode where the
    baseline has it, else the baseline's plain 'run'/'tf' row): baseline p50 / row p50; and the speed-up the
    roofline predicts (baseline roof / row roof) where both have one."""
    reference = {}
    for row in rows:
        if row["model"] == baseline and is_ok(row):
            reference[(row["batch"], row["provider"], row["mode"])] = row
    out = []
    for row in rows:
        row = dict(row, speedup=None, roof_speedup=None)
        if is_ok(row):
            key = (row["batch"], row["provider"])
            base = reference.get((*key, row["mode"]))
            base = base or next((reference[(*key, m)] for m in TIMED_MODES if (*key, m) in reference), None)
            if base:
                row["speedup"] = base["p50_ms"] / row["p50_ms"]
                if base.get("roof_ms") and row.get("roof_ms"):
                    row["roof_speedup"] = base["roof_ms"] / row["roof_ms"]
        out.append(row)
    return out


def roofline_table(rows: list[dict]) -> str:
    """Each model's measured speed-up over the baseline next to the one the roofline predicts."""
    table = [
        [
            r["model"],
            r["provider"],
            r["batch"],
            r.get("bound") or "",
            _num(r.get("speedup"), ".2f") + "x",
            _num(r.get("roof_speedup"), ".2f") + "x",
            _num(100 * r["speedup"] / r["roof_speedup"], ".0f") + "%",
        ]
        for r in rows
        if r.get("speedup") is not None and r.get("roof_speedup")
    ]
    headers = ["model", "provider", "batch", "bound", "speed-up", "roofline's speed-up", "% of the roofline's"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True) if table else "(none)"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, GAP) points no other point beats (lower or equal latency and higher or equal GAP, one of them
    strictly), sorted by latency; duplicates count once."""
    front, best_gap = [], float("-inf")
    for latency, gap in sorted(set(points), key=lambda p: (p[0], -p[1])):
        if gap > best_gap:
            front.append((latency, gap))
            best_gap = gap
    return front


def pareto_points(rows: list[dict], batch: int) -> list[tuple[str, float, float]]:
    """(label, p50 ms, GAP) per model/precision/provider at `batch`, from the plain (not IO-binding) rows."""
    return [
        (f"{r['model']} @{r['provider']}", r["p50_ms"], r["gap"])
        for r in rows
        if is_ok(r) and r["batch"] == batch and r["mode"] in TIMED_MODES and r.get("gap") is not None
    ]


PRECISION_MARKERS = {
    "fp32": "o",
    "fp16": "s",
    "bf16": "D",
    "int8-dynamic": "^",
    "int8-static": "v",
    "int8-qat": "P",
    "tf-fp32": "X",
    "tf-bf16": "*",
}
_OFFSETS = ((5, 4), (5, -10), (-12, 4), (-12, -10))  # points' number labels, turned around to spread a cluster


def plot_pareto(points: list[tuple[str, float, float]], path: str, batch: int) -> list[str]:
    """GAP against p50 latency: one point per model / precision / provider, coloured by model and shaped by
    precision, numbered on the plot and named in a legend beside it (so that clustered variants stay readable);
    the Pareto front in red. Returns the legend's entries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    entries = []
    if points:
        models = sorted({label.split("/")[0] for label, _, _ in points})
        colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
        for number, (label, latency, gap) in enumerate(points, 1):
            model, _, rest = label.partition("/")
            precision = rest.split(" @")[0]
            entry = f"{number}  {label}: {latency:.3g} ms, GAP {gap:.3f}"
            entries.append(entry)
            marker = PRECISION_MARKERS.get(precision, "o")
            ax.scatter(latency, gap, color=colours[model], marker=marker, s=45, zorder=3, label=entry)
            ax.annotate(
                str(number), (latency, gap), textcoords="offset points", xytext=_OFFSETS[number % 4], fontsize=7
            )
        front = pareto_front([(p[1], p[2]) for p in points])
        ax.step(
            [p[0] for p in front],
            [p[1] for p in front],
            where="post",
            color="tab:red",
            alpha=0.6,
            label="Pareto front",
            zorder=2,
        )
        latencies = [p[1] for p in points]
        if min(latencies) > 0 and max(latencies) / min(latencies) > 20:
            ax.set_xscale("log")
            from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.1, 0.2, 0.5, 1, 2, 5 ms
            ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    else:
        ax.text(
            0.5, 0.5, f"no measured model with a GAP on its card at batch {batch}", ha="center", transform=ax.transAxes
        )
    ax.set_xlabel(f"p50 latency at batch {batch} (ms)")
    ax.set_ylabel("GAP@20 (model card)")
    ax.set_title("Accuracy against latency (colour: model, shape: precision)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return entries


def _num(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


COMPACT = [
    "model",
    "provider",
    "mode",
    "batch",
    "status",
    "parity",
    "p50 ms",
    "p99 ms",
    "videos/s",
    "mem MB",
    "% roof",
    "bound",
    "speed-up",
    "GAP",
]


def summary_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """The results as a GitHub-style table: every column, or only `columns` (e.g. COMPACT for a terminal)."""
    headers = [
        "model",
        "provider",
        "mode",
        "batch",
        "T",
        "status",
        "parity",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "mean±std ms",
        "videos/s",
        "first run ms",
        "session s",
        "mem MB",
        "GFLOP/s",
        "% peak",
        "MB moved",
        "roof ms",
        "% roof",
        "bound",
        "speed-up",
        "GAP",
        "mAP",
        "runs",
    ]
    table = []
    for r in rows:
        mean = f"{r['mean_ms']:.3f}±{r['std_ms']:.3f}" if r.get("mean_ms") is not None else ""
        table.append(
            [
                r["model"],
                r["provider"],
                r["mode"],
                "all" if r["batch"] is None else r["batch"],
                r.get("frames"),
                r["status"],
                _num(r.get("parity_max_abs"), ".2g"),
                _num(r.get("p50_ms"), ".3f"),
                _num(r.get("p90_ms"), ".3f"),
                _num(r.get("p99_ms"), ".3f"),
                mean,
                _num(r.get("videos_per_s"), ",.0f"),
                _num(r.get("first_run_ms"), ".1f"),
                _num(r.get("session_s"), ".2f"),
                _num(r.get("peak_mem_mb"), ".1f"),
                _num(r.get("gflops"), ".2f"),
                _num(r.get("pct_peak"), ".1f"),
                _num(r.get("bytes_mb"), ",.1f"),
                _num(r.get("roof_ms"), ".3f"),
                _num(r.get("pct_roof"), ".1f"),
                r.get("bound") or "",
                _num(r.get("speedup"), ".2f") + ("x" if r.get("speedup") is not None else ""),
                _num(r.get("gap"), ".4f"),
                _num(r.get("map"), ".4f"),
                r.get("runs") or "",
            ]
        )
    if columns is not None:
        keep = [headers.index(c) for c in columns]
        headers, table = columns, [[line[i] for i in keep] for line in table]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def placement_table(rows: list[dict]) -> str:
    seen, table = set(), []
    for r in rows:
        key = (r["model"], r["provider"], r.get("batch"))
        if r.get("nodes") and key not in seen:
            seen.add(key)
            table.append(
                [
                    r["model"],
                    r["provider"],
                    r.get("batch"),
                    r["nodes"],
                    r.get("cpu_fallbacks"),
                    r.get("fallback_ops") or "-",
                    "-" if r.get("cpu_shape_ops") is None else r["cpu_shape_ops"],
                    r.get("top_ops") or "-",
                ]
            )
    headers = [
        "model",
        "provider",
        "batch",
        "nodes per provider",
        "CPU fallbacks",
        "fallback op types",
        "integer shape nodes on CPU (by design)",
        "kernel time by op type (one profiled run)",
    ]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True) if table else "(not profiled)"


def write_csv(rows: list[dict], path: str) -> None:
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in ROW_FIELDS})


def _markdown(rows: list[dict], meta: dict) -> str:
    from vidistill.bench.system import describe

    config = meta["config"]
    lines = [
        "# Inference benchmark",
        "",
        f"Date: {meta['date']}",
        "",
        "Command:",
        "",
        "```",
        meta["command"],
        "```",
        "",
        "## System",
        "",
        tabulate(describe(meta["system"]), tablefmt="github", headers=["", ""]),
        "",
        "## Settings",
        "",
        f"- providers asked: {', '.join(config['providers'])}; ran: {', '.join(meta['providers_run']) or 'none'}",
        f"- threads: intra-op {meta['threads']}, inter-op 1, sequential execution (ONNX Runtime); "
        f"TensorFlow: intra-op {meta['threads']}, inter-op 1",
        f"- warm-up runs (discarded): {config['warmup']}; timed: "
        + (
            f"exactly {config['runs']} runs"
            if config["runs"]
            else f"{config['duration']} s and at least {config['min_runs']} runs (at most {config['time_cap']} s)"
        ),
        f"- input sets rotated between runs: up to {config['input_sets']} per batch size (seed {config['seed']})",
        f"- baseline for speed-up: {meta['baseline']}; Pareto plot at batch {meta['pareto_batch']}",
        "",
    ]
    if meta["notes"]:
        lines += ["## Notes", "", *(f"- {n}" for n in meta["notes"]), ""]
    lines += [
        "## Results",
        "",
        summary_table(rows),
        "",
        "## Which provider ran each node, and where the time went",
        "",
        placement_table(rows),
        "",
    ]
    peaks = [
        [p["provider"], p["dtype"], p["size"], _num(p["gflops"], ",.1f"), p.get("error") or ""] for p in meta["peaks"]
    ]
    bandwidths = [
        [b["provider"], f"{b['bytes'] / 1e6:.0f} MB", _num(b["gbs"], ".1f"), b.get("error") or ""]
        for b in meta.get("bandwidths", [])
    ]
    lines += [
        "## Roofline: compute peaks and memory bandwidth",
        "",
        tabulate(
            peaks, headers=["provider", "dtype", "n", "GFLOP/s", "error"], tablefmt="github", disable_numparse=True
        )
        if peaks
        else "(no peak measured)",
        "",
        tabulate(
            bandwidths,
            headers=["provider", "matrix streamed", "GB/s", "error"],
            tablefmt="github",
            disable_numparse=True,
        )
        if bandwidths
        else "(no bandwidth measured: the cards hold no weight reads; re-export the models)",
        "",
        "## Speed-ups against the roofline's",
        "",
        roofline_table(rows),
        "",
        "## Accuracy against latency",
        "",
        "![Pareto](pareto.png)",
        "",
        "## Method",
        "",
        *(f"- {m}" for m in METHOD),
        "",
    ]
    return "\n".join(lines)


METHOD = [
    "Inputs: frames [B, T, 1152] float32 made like dequantized YouTube-8M features (random uint8 codes through the "
    "official dequantization, values in [-2, 2]), num_frames = T for every video (full-length videos; T is the "
    "card's frames: k for a student, whose frame selection is not part of the ONNX file). Several such sets per "
    "batch size are rotated between runs.",
    'Each cell (model, provider, batch) creates its own session ("session s"), times its first run apart '
    '("first run ms": lazy initialisation, TensorRT engine build), checks parity, runs the warm-up, then the timed '
    "runs.",
    'Parity: before timing, the outputs ("predictions") on every input set are compared with the fp32 reference '
    "file (card.reference, or fp32.onnx beside the model) run on CPU; a model further off than its card's "
    "tolerance.max_abs is reported failed and not timed. TF SavedModels are compared at the reference's T.",
    "Latency: wall clock around one synchronous call; percentiles interpolate linearly between the closest ranks; "
    "std is the sample standard deviation. videos/s = batch / p50.",
    "Memory: resident set size sampled every 10 ms during the cell, minus the RSS just before the session was "
    "created (the input sets already allocated, freed memory returned to the OS with malloc_trim first). The first "
    "cell of a runtime also pays its one-time allocations (TensorFlow's, for a SavedModel).",
    "Roofline: achieved GFLOP/s = card.flops_per_video x batch / p50, against the best of a few runs of one "
    "n x n MatMul on the same provider with the same threads ('% peak'; int8 files against an int8 MatMulInteger "
    "peak on the CPU, fp16/bf16 files against a float16 peak on a GPU). 'MB moved' = the weights one video reads "
    "(card.weight_reads_per_video: a recurrent matrix once per sequential step) x bytes per weight of the precision "
    "+ the batch's float32 frames; 'roof ms' = max(FLOPs / peak, MB moved / bandwidth), the bandwidth measured by "
    "a vector-matrix product streaming a 256 MB matrix; '% roof' = roof ms / p50; 'bound' names the larger term.",
    "On a GPU, 'run' rows use session.run with numpy (host copies included); 'iobinding' rows keep inputs and "
    "outputs on the device. The CUDA provider runs with use_tf32=0 (float32 means float32); TensorRT keeps its "
    "defaults.",
]


def write_report(out_dir: str, rows: list[dict], meta: dict, *, plot: bool = True) -> list[dict]:
    """Writes report.md, report.csv, report.json and (with `plot`) pareto.png; returns the rows with their
    speed-ups."""
    rows = add_speedups(rows, meta["baseline"])
    write_csv(rows, os.path.join(out_dir, "report.csv"))
    with atomic_write(os.path.join(out_dir, "report.json")) as f:
        json.dump({**meta, "rows": rows}, f, indent=2)
        f.write("\n")
    if plot:
        plot_pareto(
            pareto_points(rows, meta["pareto_batch"]), os.path.join(out_dir, "pareto.png"), meta["pareto_batch"]
        )
    with atomic_write(os.path.join(out_dir, "report.md")) as f:
        f.write(_markdown(rows, meta))
    return rows
