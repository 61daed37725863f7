"""Any-k students on Table 1's synthetic data, one command: does ONE student trained at every k of a set match a
dedicated student per k, and what does it cost?

Cells, each trained once per training seed of `seeds` (named `sS/...`; the data is the same for every seed):
- `sS/uniform/kK`, `sS/parallel/kK`: the dedicated students at each k of `ks`, Table 1's Uniform-k (L_CE alone)
  and its best distilled row (parallel L_REP + L_PRED + L_CE, which trains its own teacher);
- `sS/anyk/uniform`, `sS/anyk/parallel`: one any-k student trained at every k of `ks` the same two ways;
- `sS/anyk/parallel-self`: the parallel any-k student with self-distillation (L_PRED from its largest k's
  predictions to its smaller k's, weight 1).
Each cell's held-out GAP and mAP (an any-k cell's at each k) and its seconds (training and evaluation).

Latency (the first seed's runs): the any-k parallel student's file timed at each k and each dedicated parallel
student's file, fp32 and int8-dynamic ONNX at batch 1, in one bench run.

Each cell runs in a child process (TensorFlow keeps what a process traced); OUT/results.json holds each finished
cell, which a second run does not train again. Writes OUT/anyk.md.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from vidistill.distill.experiments import (
    LOSS_ROWS,
    MINIATURE_DATA,
    CellExperiment,
    Table1Config,
    _teacher,
    _train_cell,
    claim_experiment_dir,
)

DISTILLED = "L_rep, L_pred, L_CE"  # Table 1's best distilled row
KINDS = {  # any-k cell -> its label and its dedicated counterpart
    "uniform": ("any-k Uniform", "uniform"),
    "parallel": ("any-k Parallel", "parallel"),
    "parallel-self": ("any-k Parallel + self-distillation", "parallel"),
}
GOAL = -0.005  # any-k Parallel (with or without self-distillation) minus dedicated Parallel, GAP


@dataclass
class AnyKExperimentConfig:
    """Table 1's data, teacher and student sizes (its defaults), every cell trained once per seed of `seeds`."""

    classes: int = Table1Config.classes
    videos: int = Table1Config.videos
    heldout: int = Table1Config.heldout
    min_frames: int = Table1Config.min_frames
    max_frames: int = Table1Config.max_frames
    seed: int = 0  # the data's
    seeds: tuple[int, ...] = (0, 1)  # the training's: the run-to-run spread
    ks: tuple[int, ...] = Table1Config.ks
    student_steps: int = Table1Config.student_steps  # every cell (a parallel one trains its teacher as long)
    batch_size: int = Table1Config.batch_size
    cells: int = Table1Config.cells
    chunks: int = Table1Config.chunks
    learning_rate: float = Table1Config.learning_rate
    cells_per_process: int = 8  # a fresh child process after this many (an any-k cell traces each of its k's)
    latency: bool = True
    bench_duration: float = 2.0
    bench_runs: int | None = None  # exactly this many timed runs instead

    @classmethod
    def quick(cls) -> AnyKExperimentConfig:
        """A miniature (about 3 minutes on 2 cores, run by hand; the tests check its report); no latency stage."""
        return cls(
            **MINIATURE_DATA,
            seeds=(0,),
            ks=(6, 10),
            student_steps=4,
            batch_size=8,
            cells=8,
            chunks=4,
            latency=False,
        )


def _spread(values: list[float], sign: str = "") -> str:
    """'mean ± half-range' (one value: the value; none: '')."""
    if not values:
        return ""
    text = f"{sum(values) / len(values):{sign}.3f}"
    return text + (f" ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else "")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class AnyKExperiment(CellExperiment):
    REPORT = "anyk.md"

    def __init__(self, config: AnyKExperimentConfig, out_dir: str, progress: bool = True):
        super().__init__(config, out_dir, progress)
        self.heldout = os.path.join(self.data_dir, "validate-*.tfrecord")

    def run(self) -> dict:
        from vidistill.students.student import check_frame_counts
        from vidistill.yt8m.errors import ConfigError

        c = self.config
        if len(check_frame_counts(c.ks)) < 2:
            raise ConfigError(f"the any-k experiment needs two or more ks, got {list(c.ks)}")
        if not c.seeds or len(set(c.seeds)) != len(c.seeds):
            raise ConfigError(f"the any-k experiment needs one or more distinct training seeds, got {list(c.seeds)}")
        claim_experiment_dir(self.out_dir, c)
        self._data()
        with ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=max(1, c.cells_per_process)
        ) as pool:
            self._pool = pool
            for seed in c.seeds:
                self._cells(seed)
        if c.latency:
            self._bench()
        self.write_report()
        return self.results

    # ------------------------------------------------------------------------------------------------ cells
    def run_dir(self, name: str) -> str:
        return os.path.join(self.out_dir, "runs", name)

    def _cells(self, seed: int) -> None:
        from vidistill.distill.config import TrainConfig
        from vidistill.students.student import student_config

        c = self.config
        teacher = _teacher(c)
        loss = LOSS_ROWS[DISTILLED]
        for k in c.ks:
            student = student_config(teacher, k=k)
            self._train(f"s{seed}/uniform/k{k}", TrainConfig(mode="student", student=student), seed)
            parallel = TrainConfig(mode="parallel", teacher=teacher, student=student, loss=loss)
            self._train(f"s{seed}/parallel/k{k}", parallel, seed)
        student = student_config(teacher, k=c.ks)
        self._train(f"s{seed}/anyk/uniform", TrainConfig(mode="student", student=student), seed)
        for name, weights in (("parallel", loss), ("parallel-self", dataclasses.replace(loss, self_pred=1.0))):
            config = TrainConfig(mode="parallel", teacher=teacher, student=student, loss=weights)
            self._train(f"s{seed}/anyk/{name}", config, seed)

    def _train(self, name: str, config, seed: int) -> str:
        from vidistill.distill.config import DataConfig, OptimizerConfig

        run_dir = self.run_dir(name)
        if name in self.results:
            return run_dir
        c = self.config
        config.data = DataConfig(
            train=os.path.join(self.data_dir, "train-*.tfrecord"),
            eval=self.heldout,
            max_frames=c.max_frames,
            batch_size=c.batch_size,
            eval_batch_size=128,
        )
        config.optimizer = OptimizerConfig(learning_rate=c.learning_rate, decay_steps=max(c.student_steps, 1))
        config.steps = config.checkpoint_every = c.student_steps
        config.eval_every, config.seed = 0, seed
        if os.path.exists(run_dir):
            import shutil

            shutil.rmtree(run_dir)  # an unfinished cell of a killed experiment
        started = time.perf_counter()
        result = self._pool.submit(_train_cell, config, run_dir).result()
        self.results[name] = {**result, "seconds": round(time.perf_counter() - started, 1), "steps": config.steps}
        self._save()
        if self.progress:
            per_k = "".join(f"  k{k} {result[f'gap_k{k}']:.3f}" for k in c.ks if f"gap_k{k}" in result)
            print(f"{name:24s} GAP {result['gap']:.3f}{per_k}  ({self.results[name]['seconds']:.0f} s)", flush=True)
        return run_dir

    # ------------------------------------------------------------------------------------------------ latency
    def _bench(self) -> None:
        """The first seed's any-k parallel student (timed at each k: "anyk@kK") and dedicated parallel students
        ("kK"): fp32 and int8-dynamic ONNX files at batch 1, in one bench run."""
        from vidistill.experiment_bench import export_and_time

        if "latency" in self.results:
            return
        c = self.config
        seed = c.seeds[0]
        models = {"anyk": self.run_dir(f"s{seed}/anyk/parallel")}
        models.update({f"k{k}": self.run_dir(f"s{seed}/parallel/k{k}") for k in c.ks})
        self.results["latency"] = export_and_time(
            models,
            self.out_dir,
            self.heldout,
            precisions=("fp32", "int8-dynamic"),
            batches=(1,),
            duration=c.bench_duration,
            runs=c.bench_runs,
            command="vidistill experiment anyk (its bench stage)",
            progress=self.progress,
            frames=tuple(c.ks),
        )
        self._save()

    # ------------------------------------------------------------------------------------------------ report
    def gaps(self, name: str, k: int) -> list[float]:
        """GAP at k of cell `name` ("uniform", "parallel" or "anyk/KIND") for each seed that has it."""
        key = f"gap_k{k}" if name.startswith("anyk/") else "gap"
        cell = name if name.startswith("anyk/") else f"{name}/k{k}"
        return [self.results[f"s{s}/{cell}"][key] for s in self.config.seeds if f"s{s}/{cell}" in self.results]

    def table(self) -> str:
        c, r = self.config, self.results
        latency = r.get("latency", {})

        def ms(name: str) -> str:
            value = latency.get(name, {}).get("int8-dynamic", {}).get("1")
            return f"{value:.2f}" if value is not None else "?"

        def difference(k: int) -> str:
            pairs = [(f"s{s}/anyk/parallel", f"s{s}/parallel/k{k}") for s in c.seeds]
            return _spread([r[a][f"gap_k{k}"] - r[b]["gap"] for a, b in pairs if a in r and b in r], "+")

        lines = [
            f"| k | Uniform-k (dedicated) | Parallel {DISTILLED} (dedicated) | "
            + " | ".join(label for label, _ in KINDS.values())
            + " | any-k Parallel minus dedicated Parallel | latency batch 1 int8 any-k / dedicated (ms) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k in c.ks:
            gaps = [_spread(self.gaps(name, k)) for name in ("uniform", "parallel", *(f"anyk/{n}" for n in KINDS))]
            timing = f"{ms(f'anyk@k{k}')} / {ms(f'k{k}')}" if latency else ""
            lines.append(f"| {k} | " + " | ".join(gaps) + f" | {difference(k)} | {timing} |")
        seeds = ", ".join(map(str, c.seeds))
        text = (
            "\n".join(lines)
            + f"\n\nHeld-out GAP, mean ± half-range over the training seeds ({seeds}); {c.student_steps} steps of "
            f"batch {c.batch_size} per cell.\n"
        )
        text += self._costs()
        verdicts = []
        for k in c.ks:
            anyk = [_mean(self.gaps(f"anyk/{n}", k)) for n in ("parallel", "parallel-self")]
            dedicated = _mean(self.gaps("parallel", k))
            if dedicated is None or None in anyk:
                continue
            best = max(anyk)
            label = KINDS["parallel" if anyk[0] >= anyk[1] else "parallel-self"][0]
            verdict = "met" if round(best - dedicated, 9) >= GOAL else "missed"  # (no float noise at the goal)
            verdicts.append(
                f"- k={k}: {label} {best:.3f} vs dedicated Parallel {dedicated:.3f} ({best - dedicated:+.3f}): "
                f"{verdict}"
            )
        if verdicts:
            text += (
                "\nGoal: the any-k Parallel student (the better of with and without self-distillation) within "
                f"{-GOAL * 100:.1f} GAP points of the dedicated distilled student, or above it (seed means):\n\n"
                + "\n".join(verdicts)
                + "\n"
            )
        return text

    def _costs(self) -> str:
        """Training seconds per seed: each dedicated row's k's together vs one any-k run."""
        c, r = self.config, self.results

        def seconds(cells: list[str]) -> float | None:
            per_seed = [sum(r[f"s{s}/{n}"]["seconds"] for n in cells) for s in c.seeds]
            return _mean(per_seed) if all(f"s{s}/{n}" in r for s in c.seeds for n in cells) else None

        dedicated = {kind: seconds([f"{kind}/k{k}" for k in c.ks]) for kind in ("uniform", "parallel")}
        rows = [
            (f"Uniform-k, dedicated ({len(c.ks)} runs)", dedicated["uniform"], None),
            (f"Parallel {DISTILLED}, dedicated ({len(c.ks)} runs)", dedicated["parallel"], None),
        ]
        rows += [(f"{label} (one run)", seconds([f"anyk/{n}"]), dedicated[d]) for n, (label, d) in KINDS.items()]
        lines = [
            f"| cell kind (k = {', '.join(map(str, c.ks))}) | seconds per seed | vs dedicated |",
            "|---|---|---|",
        ]
        for label, value, base in rows:
            if value is None:
                continue
            ratio = f"{value / base:.2f}x" if base else ""
            lines.append(f"| {label} | {value:.0f} | {ratio} |")
        if len(lines) == 2:
            return ""
        return (
            "\nTraining cost: each cell's seconds (training, then held-out evaluation; an any-k cell's at every "
            "k), mean over the seeds.\n\n" + "\n".join(lines) + "\n"
        )
