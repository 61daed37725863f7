"""Ensembles and their distillation on synthetic data, one command: does a student distilled from an ensemble beat
the same student distilled from the best single teacher? And what do stored teacher outputs save?

Cells (each trained in a child process; OUT/results.json keeps finished cells, a rerun trains only what is missing):
- `teacher/FAMILY` for each of `families` (CPU widths, `max_frames` frames): each family alone;
- `teacher/mixnextvlad`: MixNeXtVLAD, three NeXtVLAD branches distilled on the fly (one model, one run);
- `ensemble`: every `teacher/FAMILY` as one model, its weights fitted on the fit split (the last training shard,
  which no model trains on) by the grid search of distill/ensemble.py;
- `student/alone`, `student/single`, `student/ensemble`: the same k-frame H-LSTM student trained alone, distilled
  (serial, L_REP + L_PRED + L_CE) from the best single teacher, and from the ensemble (through its stored outputs;
  L_REP to the same best member, so only L_PRED's target differs).
Every model's GAP and mAP on the held-out split, parameters, and latency at batch 1 (fp32 ONNX, the ensemble as
one graph) from one bench run.

Teachers run once: `speed/...` cells train the same serial student for `speed_steps` steps against the live
teacher and against its stored outputs, for the H-LSTM teacher and for an ensemble of `speed_members` teachers;
steps/s from the run's train.jsonl after its first checkpoint (tracing excluded), and the outputs' one-off cost.
Writes OUT/ensemble.md.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from vidistill.distill.experiments import CellExperiment

FAMILIES = ("hlstm", "netvlad", "nextvlad", "netfv", "dbof")
STUDENT_LOSS = {"ce": 1.0, "rep": 0.01, "pred": 1.0}  # L_REP + L_PRED + L_CE, Table 1's best row


@dataclass
class EnsembleExperimentConfig:
    """Sizes chosen so that the experiment runs in under an hour on 2 cores (docs/EXPERIMENTS.md)."""

    classes: int = 25
    videos: int = 2000  # 4 shards: 3 train, the last the fit split
    heldout: int = 500
    min_frames: int = 60
    max_frames: int = 120
    seed: int = 0
    families: tuple[str, ...] = FAMILIES
    teacher_steps: int = 600
    student_steps: int = 400
    student_k: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    speed_steps: int = 120
    speed_members: tuple[str, ...] = ("hlstm", "netvlad", "nextvlad")
    bench_duration: float = 2.0
    bench_runs: int | None = None  # exactly this many timed runs instead (quick)

    @classmethod
    def quick(cls) -> EnsembleExperimentConfig:
        """A miniature that runs in a few minutes (the tests run it)."""
        return cls(
            classes=4,
            videos=64,
            heldout=16,
            min_frames=30,
            max_frames=40,
            families=("hlstm", "netvlad"),
            teacher_steps=6,
            student_steps=4,
            student_k=6,
            batch_size=8,
            speed_steps=8,
            speed_members=("hlstm", "netvlad"),
            bench_runs=3,
        )


def family_config(family: str, c: EnsembleExperimentConfig):
    """The family's model at the experiment's sizes (the CPU presets' widths, `classes` and `max_frames`)."""
    from vidistill.teachers.config import HLSTMConfig
    from vidistill.teachers.presets import PRESETS
    from vidistill.yt8m.errors import ConfigError

    sizes = {"num_classes": c.classes, "frames": c.max_frames}
    if family == "hlstm":
        return HLSTMConfig(**sizes, chunks=8, lower_cells=128, upper_cells=128, lower_layers=1, upper_layers=1)
    if f"{family}-small" in PRESETS:
        return dataclasses.replace(PRESETS[f"{family}-small"], **sizes)
    raise ConfigError(f"unknown family {family!r} for the ensemble experiment; choose from {', '.join(FAMILIES)}")


def _steps_per_second(run_dir: str) -> float | None:
    """Steps/s between the run's first and last checkpoint (train.jsonl), so without the first step's tracing."""
    with open(os.path.join(run_dir, "train.jsonl")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if len(lines) < 2:
        return None
    first, last = lines[0], lines[-1]
    return (last["step"] - first["step"]) / (last["seconds"] - first["seconds"])


def _cell(config, run_dir: str, heldout: str) -> dict:
    """One training cell, in the child process: trains, then evaluates the run's model on `heldout`."""
    from vidistill.distill.trainer import Run

    Run(config, run_dir).train(progress=False)
    return {**_evaluate(run_dir, heldout), "steps_per_second": _steps_per_second(run_dir)}


def _evaluate(model_dir: str, heldout: str) -> dict:
    from vidistill.distill.evaluate import evaluate_model
    from vidistill.distill.runs import load_model

    loaded = load_model(model_dir)
    metrics = evaluate_model(
        loaded.model,
        heldout,
        num_classes=loaded.num_classes,
        max_frames=loaded.max_frames,
        batch_size=128,
        select=loaded.select,
    )
    return {"parameters": loaded.model.count_params(), "gap": metrics["gap"], "map": metrics["map"]}


def _ensemble_cell(members: list[str], out_dir: str, fit_data: str, heldout: str, representation: int) -> dict:
    """The ensemble of `members`, weights fitted on `fit_data` (equal weights when it is empty), evaluated on
    `heldout` (child process)."""
    from vidistill.cli import main

    argv = ["ensemble", *members, "--out", out_dir, "--representation", str(representation)]
    argv += ["--fit-weights", fit_data] if fit_data else []
    if main(argv) != 0:
        raise RuntimeError(f"vidistill {' '.join(argv)} failed")
    from vidistill.distill.ensemble import ensemble_config

    config = ensemble_config(out_dir)
    return {**_evaluate(out_dir, heldout), "weights": config.weights, "fitted": config.fitted}


def _outputs_cell(model_dir: str, data: str, out_dir: str) -> dict:
    """The teacher's (or ensemble's) outputs for the training data, and their one-off cost (child process)."""
    from vidistill.distill.teacher_outputs import write_teacher_outputs

    started = time.perf_counter()
    outputs = write_teacher_outputs(model_dir, data, out_dir, progress=False)
    seconds = time.perf_counter() - started
    size = sum(os.path.getsize(outputs.path_for(entry.source)) for entry in outputs.files.values())
    return {"seconds": round(seconds, 1), "videos": sum(e.records for e in outputs.files.values()), "bytes": size}


class EnsembleExperiment(CellExperiment):
    REPORT = "ensemble.md"
    TIME_LABEL = "Time of all cells"  # (it includes writing teacher outputs)

    def __init__(self, config: EnsembleExperimentConfig, out_dir: str, progress: bool = True):
        super().__init__(config, out_dir, progress)
        shard = os.path.join(self.data_dir, "train-0000{}-of-00004.tfrecord")
        self.train_data = ",".join(shard.format(i) for i in range(3))
        self.fit_data = shard.format(3)
        self.heldout = os.path.join(self.data_dir, "validate-*.tfrecord")

    def run(self) -> dict:
        from vidistill.distill.experiments import claim_experiment_dir

        for family in self.config.families:
            family_config(family, self.config)  # an unknown family fails before any work
        claim_experiment_dir(self.out_dir, self.config)
        self._data()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=6) as pool:
            self._pool = pool
            self._cells()
            self._speed()
        self._bench()
        self.write_report()
        return self.results

    # ------------------------------------------------------------------------------------------------ cells
    def run_dir(self, name: str) -> str:
        return os.path.join(self.out_dir, "runs", name)

    def _submit(self, name: str, function, *args) -> dict:
        """Runs `function(*args)` in the child process unless `name` has results; records them with its time."""
        if name in self.results:
            return self.results[name]
        started = time.perf_counter()
        result = self._pool.submit(function, *args).result()
        self.results[name] = {**result, "seconds": round(time.perf_counter() - started, 1)}
        self._save()
        if self.progress:
            shown = {k: round(v, 4) for k, v in result.items() if k in ("gap", "map", "steps_per_second") and v}
            print(f"{name:24s} {shown}  ({self.results[name]['seconds']:.0f} s)", flush=True)
        return self.results[name]

    def _train(self, name: str, config, steps: int, checkpoint_every: int | None = None) -> str:
        from vidistill.distill.config import DataConfig, OptimizerConfig

        run_dir = self.run_dir(name)
        if name in self.results:
            return run_dir
        c = self.config
        config.data = DataConfig(
            train=self.train_data, eval="", max_frames=c.max_frames, batch_size=c.batch_size, eval_batch_size=128
        )
        config.optimizer = OptimizerConfig(learning_rate=c.learning_rate, decay_steps=max(steps, 1))
        config.steps, config.checkpoint_every = steps, checkpoint_every or steps
        config.eval_every, config.seed = 0, c.seed
        if os.path.exists(run_dir):
            import shutil

            shutil.rmtree(run_dir)  # an unfinished cell of a killed experiment
        self._submit(name, _cell, config, run_dir, self.heldout)
        self.results[name]["steps"] = steps
        self._save()
        return run_dir

    def _cells(self) -> None:
        from vidistill.distill.config import TrainConfig
        from vidistill.distill.losses import LossWeights
        from vidistill.students.student import student_config

        c = self.config
        for family in (*c.families, "mixnextvlad"):
            self._train(
                f"teacher/{family}", TrainConfig(mode="teacher", teacher=family_config(family, c)), c.teacher_steps
            )
        best = self.best_family()
        members = [self.run_dir(f"teacher/{f}") for f in c.families]
        self._submit(
            "ensemble", _ensemble_cell, members, self.run_dir("ensemble"), self.fit_data, self.heldout,
            c.families.index(best),
        )  # fmt: skip
        student = student_config(family_config("hlstm", c), k=c.student_k)
        self._train("student/alone", TrainConfig(mode="student", student=student), c.student_steps)
        loss = LossWeights(**STUDENT_LOSS)
        single = TrainConfig(
            mode="serial",
            teacher=family_config(best, c),
            student=student,
            teacher_run=self.run_dir(f"teacher/{best}"),
            loss=loss,
        )
        self._train("student/single", single, c.student_steps)
        outputs = self._outputs("ensemble")
        from_ensemble = TrainConfig(
            mode="serial", student=student, teacher_run=self.run_dir("ensemble"), teacher_outputs=outputs, loss=loss
        )
        self._train("student/ensemble", from_ensemble, c.student_steps)

    def _outputs(self, name: str) -> str:
        out = os.path.join(self.out_dir, "outputs", name)
        self._submit(f"outputs/{name}", _outputs_cell, self.run_dir(name), self.train_data, out)
        return out

    def best_family(self) -> str:
        """The family whose teacher has the best held-out GAP."""
        return max(self.config.families, key=lambda f: self.results[f"teacher/{f}"]["gap"])

    # ------------------------------------------------------------------------------------------------ speed
    def _speed(self) -> None:
        """The same serial student against live teachers and against their stored outputs: steps/s."""
        from vidistill.distill.config import TrainConfig
        from vidistill.distill.losses import LossWeights
        from vidistill.students.student import student_config

        c = self.config
        student = student_config(family_config("hlstm", c), k=c.student_k)
        loss = LossWeights(**STUDENT_LOSS)
        every = max(1, c.speed_steps // 4)
        if "speed/ensemble" not in self.results:  # the speed ensemble: equal weights, no fitting
            members = ",".join(self.run_dir(f"teacher/{f}") for f in c.speed_members)
            self._submit("speed/ensemble", _ensemble_cell, members.split(","), self.run_dir("speed/ensemble"),
                         "", self.heldout, 0)  # fmt: skip
        for name, teacher_run, teacher in (
            ("hlstm", self.run_dir("teacher/hlstm"), family_config("hlstm", c)),
            ("ensemble", self.run_dir("speed/ensemble"), None),
        ):
            live = TrainConfig(mode="serial", teacher=teacher, student=student, teacher_run=teacher_run, loss=loss)
            self._train(f"speed/{name}/live", live, c.speed_steps, every)
            outputs = self._outputs("teacher/hlstm" if name == "hlstm" else "speed/ensemble")
            stored = dataclasses.replace(live, teacher_outputs=outputs)
            self._train(f"speed/{name}/stored", stored, c.speed_steps, every)

    # ------------------------------------------------------------------------------------------------ latency
    def models(self) -> list[str]:
        names = [f"teacher/{f}" for f in (*self.config.families, "mixnextvlad")]
        names += ["ensemble", "student/alone", "student/single", "student/ensemble"]
        return [n for n in names if n in self.results]

    def _bench(self) -> None:
        """Every model's fp32 ONNX file (the ensemble as one graph), parity checked, timed at batch 1 in one run."""
        from vidistill.experiment_bench import export_and_time

        if "latency" in self.results:
            return
        c = self.config
        latency = export_and_time(
            {name: self.run_dir(name) for name in self.models()},
            self.out_dir,
            self.heldout,
            precisions=("fp32",),
            batches=(1,),
            duration=c.bench_duration,
            runs=c.bench_runs,
            command="vidistill experiment ensemble (its bench stage)",
            progress=self.progress,
        )
        self.results["latency"] = {name: times["fp32"]["1"] for name, times in latency.items()}
        self._save()

    # ------------------------------------------------------------------------------------------------ report
    def table(self) -> str:
        c, r = self.config, self.results
        latency = r.get("latency", {})
        best = self.best_family() if all(f"teacher/{f}" in r for f in c.families) else "?"
        labels = {f"teacher/{f}": f"{f} teacher" for f in c.families}
        labels["teacher/mixnextvlad"] = "MixNeXtVLAD (3 branches, on-the-fly distillation)"
        if "ensemble" in r:
            weights = ", ".join(f"{f} {w:.1f}" for f, w in zip(c.families, r["ensemble"]["weights"]))
            labels["ensemble"] = f"ensemble of the {len(c.families)} teachers ({weights})"
        k = c.student_k
        labels["student/alone"] = f"H-LSTM student k={k}, trained alone"
        labels["student/single"] = f"H-LSTM student k={k}, distilled from the {best} teacher"
        labels["student/ensemble"] = f"H-LSTM student k={k}, distilled from the ensemble (stored outputs)"
        lines = [
            "| model | frames | parameters | GAP | mAP | fp32 ms at batch 1 |",
            "|---|---|---|---|---|---|",
        ]
        for name, label in labels.items():
            if name not in r:
                continue
            row = r[name]
            frames = k if name.startswith("student/") else c.max_frames
            ms = f"{latency[name]:.2f}" if name in latency else ""
            lines.append(f"| {label} | {frames} | {row['parameters']:,} | {row['gap']:.3f} | {row['map']:.3f} | {ms} |")
        text = "\n".join(lines) + "\n"
        if "ensemble" in r:
            fitted = r["ensemble"]["fitted"]
            text += (
                f"\nEnsemble weights fitted on the fit split ({fitted['videos']} videos no model trained on): GAP "
                f"{fitted['gap']:.3f} there (equal weights: {fitted['equal_gap']:.3f}).\n"
            )
        speed = [
            (name, r.get(f"speed/{name}/live"), r.get(f"speed/{name}/stored"), r.get(f"outputs/{out}"))
            for name, out in (("hlstm", "teacher/hlstm"), ("ensemble", "speed/ensemble"))
        ]
        if all(live and stored and cost for _, live, stored, cost in speed):
            text += (
                f"\nSerial training of the k={k} student, {c.speed_steps} steps of batch {c.batch_size}: steps/s "
                "after the first checkpoint.\n\n"
                "| teacher | live teacher steps/s | stored outputs steps/s | speed-up | writing the outputs once |\n"
                "|---|---|---|---|---|\n"
            )
            members = ", ".join(c.speed_members)
            for name, live, stored, cost in speed:
                label = "H-LSTM" if name == "hlstm" else f"ensemble of {len(c.speed_members)} ({members})"
                text += (
                    f"| {label} | {live['steps_per_second']:.2f} | {stored['steps_per_second']:.2f} | "
                    f"{stored['steps_per_second'] / live['steps_per_second']:.1f}x | {cost['seconds']:.0f} s for "
                    f"{cost['videos']} videos ({cost['bytes'] / 1e6:.1f} MB) |\n"
                )
        return text
