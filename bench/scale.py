"""Every stage at a reference model size (`vidistill bench-scale`): synthetic data, one parallel training step,
convert, one fine-tuning step, the student's export in every precision, the teacher's TF SavedModel and ONNX
file, and the benchmark of the teacher against the k-frame student's variants.

Each stage is the `vidistill` command a user would type, run in its own child process, so its wall time and peak
resident memory (the child's own `ru_maxrss`, from `os.wait4`) are clean of the other stages. Each is held to the
memory budget 2 GB + 8 x the teacher's float32 weight bytes. Each stage's row is written when it finishes
(OUT/stages/<NN-stage>.json, its output in OUT/logs/); `scale.md` is the table for docs/BENCHMARKS.md. A stage
already done in OUT with the same command is not run again (`--overwrite` runs everything).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from vidistill.yt8m.errors import ConfigError
from vidistill.yt8m.files import atomic_write

STUDENT_PRECISIONS = ("fp32", "fp16", "bf16", "int8-dynamic", "int8-static", "int8-qat", "tf-fp32", "tf-bf16")
BUDGET_FIXED = 2e9  # bytes
BUDGET_PER_WEIGHT_BYTE = 8


def memory_budget(weight_bytes: int) -> float:
    """The most resident memory any stage may use for a model of `weight_bytes` float32 weights."""
    return BUDGET_FIXED + BUDGET_PER_WEIGHT_BYTE * weight_bytes


# parallel training holds, for teacher and student alike, the weights, Adam's two slots and the gradients
TRAINING_FLOOR_PER_WEIGHT_BYTE = 4


def training_floor(weight_bytes: int) -> float:
    """The bytes parallel training holds, for teacher and student float32 weights of `weight_bytes` together,
    before TensorFlow itself, the activations and any temporary."""
    return TRAINING_FLOOR_PER_WEIGHT_BYTE * weight_bytes


@dataclass
class ScaleConfig:
    preset: str
    out: str
    k: int = 30  # the student's frames
    width: float = 1.0  # the student's width factor (train --width)
    videos: int = 48  # synthetic training videos (300 frames at most)
    heldout: int = 16  # synthetic held-out videos: parity and accuracy
    classes: int = 100  # classes the synthetic labels use (the model keeps its preset's output width)
    batch_size: int = 2  # training and fine-tuning
    export_batch_size: int = 8
    calibration_batches: int = 2
    qat_steps: int = 2
    precisions: tuple[str, ...] = STUDENT_PRECISIONS
    bench_batches: tuple[int, ...] = (1, 64)
    bench_duration: float = 3.0
    bench_min_runs: int = 20
    bench_time_cap: float = 30.0
    overwrite: bool = False

    def __post_init__(self) -> None:
        unknown = [p for p in self.precisions if p not in STUDENT_PRECISIONS]
        if unknown:
            raise ConfigError(f"--precision: unknown {', '.join(unknown)}; choose from {', '.join(STUDENT_PRECISIONS)}")
        for name in ("k", "videos", "heldout", "classes", "batch_size", "export_batch_size", "qat_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if not 0 < self.width <= 1:
            raise ConfigError(f"--width must be in (0, 1] (got {self.width})")
        if not self.bench_duration > 0:
            raise ConfigError(f"--bench-duration must be positive (got {self.bench_duration})")


@dataclass
class Stage:
    name: str
    argv: list[str]
    needs: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()  # outputs cleared before the stage runs (so a rerun starts clean)
    optional: tuple[str, ...] = ()  # input paths left out of argv when absent (a variant whose export failed)

    def arguments(self) -> list[str]:
        return [a for a in self.argv if a not in self.optional or os.path.exists(a)]

    @property
    def command(self) -> str:
        return shlex.join(["vidistill", *self.argv])


@dataclass
class StageResult:
    stage: str
    command: str
    exit_code: int
    seconds: float
    peak_rss: int  # bytes
    budget: float  # bytes
    finished: str
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def within_budget(self) -> bool:
        return self.peak_rss <= self.budget


@dataclass
class ScaleRun:
    config: ScaleConfig
    parameters: dict = field(default_factory=dict)  # {"teacher": n, "student": n}
    results: list[StageResult] = field(default_factory=list)


def stages(config: ScaleConfig) -> list[Stage]:
    out = lambda *p: os.path.join(config.out, *p)  # noqa: E731
    train_data, eval_data = out("data", "train-*.tfrecord"), out("data", "validate-*.tfrecord")
    plan = [
        Stage(
            "synth",
            ["synth", "--out", out("data"), "--videos", str(config.videos), "--heldout", str(config.heldout)]
            + ["--classes", str(config.classes), "--seed", "1", "--overwrite"],
        ),
        Stage(
            "train (parallel, 1 step)",
            ["train", "--out", out("run"), "--data", train_data, "--mode", "parallel", "--teacher", config.preset]
            + ["--frames", str(config.k), "--width", str(config.width), "--steps", "1"]
            + ["--batch-size", str(config.batch_size), "--overwrite"],
            needs=("synth",),
        ),
        Stage(
            "convert",
            ["convert", out("run"), "--out", out("student")],
            ("train (parallel, 1 step)",),
            (out("student"),),
        ),
        Stage(
            "finetune (1 step)",
            ["finetune", out("student"), "--data", train_data, "--out", out("student-ft"), "--steps", "1"]
            + ["--batch-size", str(config.batch_size)],
            ("convert",),
            (out("student-ft"),),
        ),
    ]
    common = ["--eval-data", eval_data, "--batch-size", str(config.export_batch_size)]
    for precision in config.precisions:
        argv = ["export", out("student-ft"), "--out", out("export-student"), "--precision", precision, *common]
        if precision in ("int8-static", "int8-qat"):
            argv += ["--calibration-data", train_data, "--calibration-batches", str(config.calibration_batches)]
            argv += ["--qat-steps", str(config.qat_steps)]
        name = f"export student {precision}" + ("" if precision == "fp32" else " (+ fp32)")
        plan.append(Stage(name, argv, ("finetune (1 step)",)))
    plan.append(
        Stage(
            "export teacher tf-fp32 (+ fp32)",
            ["export", out("run"), "--which", "teacher", "--out", out("export-teacher"), "--precision", "tf-fp32"]
            + common,
            ("train (parallel, 1 step)",),
        )
    )
    student_files = [
        out("export-student", p if p.startswith("tf-") else f"{p}.onnx")
        for p in STUDENT_PRECISIONS
        if p in config.precisions or p == "fp32"
    ]
    baseline = out("export-teacher", "tf-fp32")
    plan.append(
        Stage(
            "bench",
            ["bench", baseline, out("export-teacher", "fp32.onnx"), *student_files, "--providers", "cpu"]
            + ["--batch", ",".join(map(str, config.bench_batches)), "--baseline", baseline, "--report", out("bench")]
            + ["--duration", str(config.bench_duration), "--min-runs", str(config.bench_min_runs)]
            + ["--time-cap", str(config.bench_time_cap), "--quiet"],
            needs=("export student fp32", "export teacher tf-fp32 (+ fp32)"),
            optional=tuple(student_files[1:]),
        )
    )
    return plan


def vidistill_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "vidistill.cli", *argv]


# Runs the stage's command and reports its exit status and peak memory (wait4's ru_maxrss). A child started with
# vfork (as subprocess does) counts its parent's highest resident size, so the measuring parent is this small
# fresh interpreter, not the caller (a test runner, a notebook); it ignores Ctrl-C, which reaches the stage itself.
_LAUNCHER = """
import json, os, signal, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGINT, signal.SIG_IGN)
_, status, usage = os.wait4(process.pid, 0)
process.returncode = code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    json.dump({"exit_code": code, "max_rss_kb": usage.ru_maxrss}, f)
"""


def run_child(command: list[str], log_path: str) -> tuple[int, float, int]:
    """(exit code, seconds, peak resident bytes) of the child process `command`, its output to `log_path`. A child
    killed by a signal gets exit code -N."""
    report = log_path + ".rusage.json"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        launcher = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, report, *command], stdout=log, stderr=subprocess.STDOUT
        )
    seconds = time.perf_counter() - start
    if launcher.returncode != 0 or not os.path.exists(report):
        raise RuntimeError(f"the stage launcher failed (exit code {launcher.returncode}); see {log_path}")
    with open(report) as f:
        measured = json.load(f)
    os.remove(report)
    return measured["exit_code"], seconds, measured["max_rss_kb"] * 1024  # Linux: kilobytes


def _note(code: int, log_path: str) -> str:
    if code == -signal.SIGKILL:
        return "killed (signal 9): out of memory?"
    if code < 0:
        return f"killed by signal {-code}"
    if code == 0:
        return ""
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return (lines[-1] if lines else "")[:200]


def _parameters(config: ScaleConfig, logs: str) -> dict:
    path = os.path.join(logs, "models.json")
    argv = ["models", "--teacher", config.preset, "--frames", f"300,{config.k}", "--width", str(config.width), "--json"]
    code, _, _ = run_child(vidistill_command(argv), path)
    if code != 0:
        raise ConfigError(f"`vidistill {shlex.join(argv)}` failed: see {path}")
    with open(path) as f:
        text = f.read()
    described = json.loads(text[text.index("{") :])
    return {role: described[role]["parameters"] for role in ("teacher", "student")}


def _done(path: str, command: str) -> StageResult | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = StageResult(**json.load(f))
    return result if result.ok and result.command == command else None


def run_scale(config: ScaleConfig, echo=print) -> ScaleRun:
    logs = os.path.join(config.out, "logs")
    marks = os.path.join(config.out, "stages")
    os.makedirs(logs, exist_ok=True)
    os.makedirs(marks, exist_ok=True)
    with atomic_write(os.path.join(config.out, "scale-config.json")) as f:
        json.dump(dataclasses.asdict(config), f, indent=1)
    run = ScaleRun(config, _parameters(config, logs))
    budget = memory_budget(4 * run.parameters["teacher"])
    echo(f"{config.preset}: teacher {run.parameters['teacher'] / 1e6:.1f} M parameters, budget {budget / 1e9:.1f} GB")
    failed: set[str] = set()
    ran: set[str] = set()  # stages run by this call (not kept from an earlier one)
    for i, stage in enumerate(stages(config)):
        slug = f"{i:02d}-" + "".join(c if c.isalnum() else "-" for c in stage.name).strip("-")
        mark, log_path = os.path.join(marks, f"{slug}.json"), os.path.join(logs, f"{slug}.log")
        rerun = config.overwrite or any(n in ran for n in stage.needs)  # its input was made again
        done = None if rerun else _done(mark, stage.command)
        if done is not None:
            echo(f"  {stage.name}: done before ({done.finished}), kept")
            run.results.append(done)
            continue
        blocked = [n for n in stage.needs if n in failed]
        if blocked:
            failed.add(stage.name)
            echo(f"  {stage.name}: not run ({', '.join(blocked)} failed)")
            continue
        for path in stage.remove:
            _remove(path)
        code, seconds, peak = run_child(vidistill_command(stage.arguments()), log_path)
        ran.add(stage.name)
        result = StageResult(
            stage.name,
            stage.command,
            code,
            seconds,
            peak,
            budget,
            datetime.datetime.now().isoformat(timespec="seconds"),
            _note(code, log_path),
        )
        with atomic_write(mark) as f:
            json.dump(dataclasses.asdict(result), f, indent=1)
        run.results.append(result)
        if not result.ok:
            failed.add(stage.name)
        status = "ok" if result.ok else f"FAILED ({result.note}; log {log_path})"
        within = "within" if result.within_budget else "OVER"
        echo(f"  {stage.name}: {seconds:.0f} s, peak {peak / 1e9:.2f} GB ({within} budget), {status}")
    with atomic_write(os.path.join(config.out, "scale.md")) as f:
        f.write(markdown(run))
    return run


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def markdown(run: ScaleRun) -> str:
    from tabulate import tabulate

    from vidistill.bench.system import cpu_model, physical_cores

    import psutil

    config, params = run.config, run.parameters
    weights = 4 * params["teacher"]
    rows = [
        [
            r.stage,
            f"{r.seconds:.0f}",
            f"{r.peak_rss / 1e9:.2f}",
            f"{r.peak_rss / weights:.1f}x",
            "yes" if r.within_budget else "**no**",
            "ok" if r.ok else f"**failed**: {r.note}",
        ]
        for r in run.results
    ]
    table = tabulate(
        rows,
        headers=["stage", "wall s", "peak RSS GB", "peak / weights", "within budget", "result"],
        tablefmt="github",
        disable_numparse=True,
    )
    machine = f"{cpu_model()}, {physical_cores()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    first = min((r.finished for r in run.results), default="-")
    over = [r.stage for r in run.results if not r.within_budget]
    failed = [r.stage for r in run.results if not r.ok]
    verdict = "every stage ran within the budget" if not over and not failed else ""
    if over:
        verdict += f"over the budget: {', '.join(over)}. "
    if failed:
        verdict += f"failed: {', '.join(failed)}."
    command = shlex.join(
        ["vidistill", "bench-scale", "--preset", config.preset, "--out", config.out, "--k", str(config.k)]
        + (["--width", str(config.width)] if config.width != 1.0 else [])
        + (["--precision", ",".join(config.precisions)] if config.precisions != STUDENT_PRECISIONS else [])
    )
    pair = 4 * (params["teacher"] + params["student"])
    floor, budget = training_floor(pair), memory_budget(weights)
    floor_line = (
        f"Parallel training holds at least the weights, Adam's two slots and the gradients of both networks: "
        f"{TRAINING_FLOOR_PER_WEIGHT_BYTE} x {pair / 1e6:.0f} MB = "
        f"{floor / 1e9:.1f} GB before TensorFlow itself, the activations and any temporary, "
        + (
            f"{(budget - floor) / 1e9:.1f} GB under the budget."
            if floor < budget
            else f"{(floor - budget) / 1e9:.1f} GB over the budget: it cannot fit it."
        )
    )
    return (
        f"### `{config.preset}`: teacher {params['teacher'] / 1e6:.1f} M parameters ({weights / 1e6:.0f} MB float32), "
        f"k={config.k} student (width {config.width:g}) {params['student'] / 1e6:.1f} M\n\n"
        f"`{command}` on {machine}, {first[:10]} (stages finished from {first}). Budget per stage: 2 GB + 8 x "
        f"{weights / 1e6:.0f} MB = {budget / 1e9:.1f} GB. Peak RSS: each stage's child process "
        f"(`ru_maxrss`).\n\n{table}\n\nResult: {verdict.strip()}\n\n{floor_line}\n"
    )
