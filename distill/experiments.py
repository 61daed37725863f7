"""The paper's Table 1 on our synthetic benchmark: one command trains and evaluates every row.

Rows: the teacher skyline (all frames); students without distillation for each selection policy (Uniform-k,
Random-k, First-k, Middle-k, Last-k, First-Middle-Last-k); parallel and serial students with L_REP,
L_REP + L_CE and L_REP + L_PRED + L_CE, and on request serial students with L_PRED and L_PRED + L_CE (the
paper's two serial-only rows); one VLAD-family row (teacher, Uniform-30, distilled-30) and one narrow student (a
quarter of the teacher's parameters at k = 30). Each cell is a run directory under OUT/runs/, trained in a child
process; a cell whose results exist is not trained again, so a killed experiment continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from vidistill.distill.config import DataConfig, OptimizerConfig, TrainConfig
from vidistill.distill.losses import LossWeights
from vidistill.students.student import student_config, width_for_parameters
from vidistill.teachers.config import HeadConfig, HLSTMConfig, NetVLADConfig
from vidistill.teachers.registry import build_model
from vidistill.yt8m.files import atomic_write
from vidistill.yt8m.errors import ConfigError

POLICY_ROWS = {
    "uniform": "Uniform-k",
    "random": "Random-k",
    "first": "First-k",
    "middle": "Middle-k",
    "last": "Last-k",
    "fml": "First-Middle-Last-k",
}
LOSS_ROWS = {  # name -> student loss weights (L_CE, L_REP, L_PRED), in the paper's row order
    # nothing else trains the head of an L_rep-only student: it is a frozen copy of the teacher's (losses.py)
    "L_rep": LossWeights(ce=0.0, rep=0.01, pred=0.0, head="teacher"),
    "L_pred": LossWeights(ce=0.0, rep=0.0, pred=1.0),
    "L_rep, L_CE": LossWeights(ce=1.0, rep=0.01, pred=0.0),
    "L_pred, L_CE": LossWeights(ce=1.0, rep=0.0, pred=1.0),
    "L_rep, L_pred, L_CE": LossWeights(ce=1.0, rep=0.01, pred=1.0),
}


# the synthetic data of every experiment's miniature (`quick()`): 4 classes, 48 + 16 videos of 30-40 frames
MINIATURE_DATA = {"classes": 4, "videos": 48, "heldout": 16, "min_frames": 30, "max_frames": 40}


@dataclass
class Table1Config:
    """Sizes chosen so that the whole table trains in under an hour on 2 cores (see docs/EXPERIMENTS.md)."""

    classes: int = 25
    videos: int = 2000
    heldout: int = 500
    min_frames: int = 60
    max_frames: int = 120
    seed: int = 0
    ks: tuple[int, ...] = (6, 10, 15, 20, 30)
    policies: tuple[str, ...] = tuple(POLICY_ROWS)
    losses: tuple[str, ...] = ("L_rep", "L_rep, L_CE", "L_rep, L_pred, L_CE")  # parallel and serial rows
    # the paper's two serial-only rows, "L_pred" and "L_pred, L_CE": 10 more cells (about 8 min), so opt-in
    # (`--serial-pred-rows`) to keep the default table inside the hour
    serial_losses: tuple[str, ...] = ()
    teacher_steps: int = 800
    student_steps: int = 400
    batch_size: int = 32
    cells: int = 128
    chunks: int = 8  # of 15 frames, like the paper's 20 chunks of 15 at 300 frames
    learning_rate: float = 2e-3
    vlad_row: bool = True
    narrow_row: bool = True
    # cells are trained in a child process, replaced after this many cells: TensorFlow keeps every graph a process
    # has traced (about 150 MB per cell here), so one process for all cells would grow by gigabytes
    cells_per_process: int = 12
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> Table1Config:
        """A miniature that runs in a few minutes (the tests run it)."""
        return cls(
            **MINIATURE_DATA,
            ks=(6,),
            policies=("uniform", "first"),
            losses=("L_rep, L_pred, L_CE",),
            serial_losses=("L_pred",),
            teacher_steps=6,
            student_steps=4,
            batch_size=8,
            cells=8,
            chunks=4,
        )


def claim_experiment_dir(out_dir: str, config) -> None:
    """Records `config` (a dataclass) as OUT/experiment.json, or checks that the experiment already in `out_dir`
    has the same one: a rerun resumes its cells, so a changed configuration (another seed, --quick) would mix
    cells of two experiments in one table."""
    path = os.path.join(out_dir, "experiment.json")
    wanted = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as lists, as read back
    if os.path.exists(path):
        with open(path) as f:
            held = json.load(f)
        if held != wanted:
            changed = sorted(k for k in set(held) | set(wanted) if held.get(k) != wanted.get(k))
            raise ConfigError(
                f"{out_dir} holds an experiment with another configuration (changed: {', '.join(changed)}): "
                "pass a new --out, or the same options to resume it"
            )
        return
    os.makedirs(out_dir, exist_ok=True)
    with atomic_write(path) as f:
        json.dump(wanted, f, indent=1)


def _teacher(config: Table1Config) -> HLSTMConfig:
    """The H-LSTM teacher at `config`'s classes, max_frames, chunks and cells (also the any-k experiment's)."""
    return HLSTMConfig(
        num_classes=config.classes,
        frames=config.max_frames,
        chunks=config.chunks,
        lower_cells=config.cells,
        upper_cells=config.cells,
        lower_layers=1,
        upper_layers=1,
    )


def _vlad_teacher(config: Table1Config) -> NetVLADConfig:
    return NetVLADConfig(
        num_classes=config.classes,
        frames=config.max_frames,
        clusters=16,
        hidden=config.cells * 2,
        head=HeadConfig(kind="moe", mixtures=2),
    )


def _train_cell(config: TrainConfig, run_dir: str) -> dict:
    """One cell, in the child process: trains, then returns its held-out metrics, parameters and frames (an any-k
    student: the metrics' means over its k's, and each k's GAP and mAP as gap_kK, map_kK)."""
    from vidistill.distill.trainer import Run

    summary = Run(config, run_dir).train(progress=False)
    model_config = config.student.model if config.student else config.teacher
    last = summary["last_eval"]
    return {
        **{key: last[key] for key in ("gap", "map", "hit_at_one", "perr")},
        **{key: value for key, value in last.items() if key.startswith(("gap_k", "map_k"))},
        "parameters": build_model(model_config).count_params(),
        "frames": model_config.frames,
    }


class CellExperiment:
    """What an experiment of trained cells keeps in its folder: its configuration (`claim_experiment_dir`), the
    synthetic data (OUT/data, written once) and each finished cell's results (OUT/results.json, saved after every
    cell, so a rerun trains only what is missing). `config` holds the data's sizes: classes, videos, heldout,
    min_frames, max_frames, seed."""

    def __init__(self, config, out_dir: str, progress: bool = True):
        self.config, self.out_dir, self.progress = config, out_dir, progress
        self.data_dir = os.path.join(out_dir, "data")
        self.results_path = os.path.join(out_dir, "results.json")
        self.results: dict = {}
        if os.path.exists(self.results_path):
            with open(self.results_path) as f:
                self.results = json.load(f)
        self._pool: ProcessPoolExecutor | None = None  # while the cells run

    def _data(self, *, segments: bool = False) -> None:
        from vidistill.yt8m.synthetic import SynthConfig, write_dataset

        if os.path.exists(os.path.join(self.data_dir, "synth.yaml")):
            return
        c = self.config
        sizes = {
            name: getattr(c, name) for name in ("videos", "heldout", "classes", "seed", "min_frames", "max_frames")
        }
        write_dataset(SynthConfig(**sizes, shards=4, segments=segments), self.data_dir, progress=self.progress)

    def _save(self) -> None:
        with atomic_write(self.results_path) as f:
            json.dump(self.results, f, indent=1)

    REPORT = ""  # the report's file name in OUT
    TIME_LABEL = "Training and evaluation time of all cells"

    def table(self) -> str:
        raise NotImplementedError

    def write_report(self) -> str:
        """OUT/REPORT: the table, the cells' total time and the configuration."""
        path = os.path.join(self.out_dir, self.REPORT)
        total = sum(v["seconds"] for k, v in self.results.items() if k != "latency")
        with atomic_write(path) as f:
            f.write(self.table())
            f.write(f"\n{self.TIME_LABEL}: {total / 60:.1f} min.\n")
            f.write("\nConfiguration: " + json.dumps(dataclasses.asdict(self.config)) + "\n")
        return path


class Table1(CellExperiment):
    REPORT = "table1.md"

    # ---------------------------------------------------------------------------------------------- running
    def run(self) -> dict:
        claim_experiment_dir(self.out_dir, self.config)
        self._data()
        # the child starts at the first cell that needs training (none when every result exists)
        with ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            max_tasks_per_child=max(1, self.config.cells_per_process),
        ) as self._pool:
            return self._run_cells()

    def _run_cells(self) -> dict:
        c = self.config
        teacher = _teacher(c)
        teacher_run = self._train("teacher", TrainConfig(mode="teacher", teacher=teacher), c.teacher_steps)
        for k in c.ks:
            for policy in c.policies:
                self._train(
                    f"student/{policy}/k{k}",
                    TrainConfig(mode="student", student=student_config(teacher, k=k, policy=policy)),
                )
            for mode, name in self._distilled_rows():
                student = student_config(teacher, k=k)
                self._train(
                    f"{mode}/{name}/k{k}",
                    TrainConfig(
                        mode=mode,
                        teacher=teacher,
                        student=student,
                        loss=LOSS_ROWS[name],
                        teacher_run=teacher_run if mode == "serial" else "",
                    ),
                )
        k = max(c.ks)
        if c.vlad_row:
            vlad = _vlad_teacher(c)
            vlad_run = self._train("vlad/teacher", TrainConfig(mode="teacher", teacher=vlad), c.teacher_steps)
            student = student_config(vlad, k=k)
            self._train(f"vlad/uniform/k{k}", TrainConfig(mode="student", student=student))
            self._train(
                f"vlad/serial/k{k}",
                TrainConfig(
                    mode="serial",
                    teacher=vlad,
                    student=student,
                    teacher_run=vlad_run,
                    loss=LOSS_ROWS["L_rep, L_pred, L_CE"],
                ),
            )
        if c.narrow_row:
            narrow = student_config(teacher, k=k, width=width_for_parameters(teacher, k=k, fraction=0.25))
            self._train(
                f"narrow/serial/k{k}",
                TrainConfig(
                    mode="serial",
                    teacher=teacher,
                    student=narrow,
                    teacher_run=teacher_run,
                    loss=LOSS_ROWS["L_rep, L_pred, L_CE"],
                ),
            )
            self._train(f"narrow/uniform/k{k}", TrainConfig(mode="student", student=narrow))
        self.write_report()
        return self.results

    def _distilled_rows(self) -> list[tuple[str, str]]:
        """(mode, loss row) pairs, parallel rows first, each mode in the paper's row order."""
        c = self.config
        unknown = [name for name in (*c.losses, *c.serial_losses) if name not in LOSS_ROWS]
        if unknown:
            raise ConfigError(f"unknown loss row(s) {', '.join(unknown)}: choose from {', '.join(LOSS_ROWS)}")
        parallel = [("parallel", name) for name in LOSS_ROWS if name in c.losses]
        return parallel + [("serial", name) for name in LOSS_ROWS if name in c.losses or name in c.serial_losses]

    def _train(self, name: str, config: TrainConfig, steps: int | None = None) -> str:
        run_dir = os.path.join(self.out_dir, "runs", name.replace(", ", "+").replace(" ", ""))
        if name in self.results:
            return run_dir
        c = self.config
        config.data = DataConfig(
            train=os.path.join(self.data_dir, "train-*.tfrecord"),
            eval=os.path.join(self.data_dir, "validate-*.tfrecord"),
            max_frames=c.max_frames,
            batch_size=c.batch_size,
            eval_batch_size=128,
        )
        config.optimizer = OptimizerConfig(learning_rate=c.learning_rate, decay_steps=max(steps or c.student_steps, 1))
        config.steps = steps or c.student_steps
        config.checkpoint_every = config.steps
        config.eval_every = 0
        config.seed = c.seed
        if os.path.exists(run_dir):
            import shutil

            shutil.rmtree(run_dir)  # an unfinished cell from a killed experiment
        started = time.perf_counter()
        self.results[name] = {
            **self._pool.submit(_train_cell, config, run_dir).result(),
            "seconds": round(time.perf_counter() - started, 1),
            "steps": config.steps,
        }
        self._save()
        if self.progress:
            r = self.results[name]
            print(f"{name:40s} GAP {r['gap']:.3f}  mAP {r['map']:.3f}  ({r['seconds']:.0f} s)", flush=True)
        return run_dir

    # ---------------------------------------------------------------------------------------------- report
    def table(self) -> str:
        """The results in the paper's layout: GAP / mAP per k."""
        c, r = self.config, self.results
        header = "| model | " + " | ".join(f"k={k}" for k in c.ks) + " |\n|---|" + "---|" * len(c.ks) + "\n"

        def cell(name):
            return f"{r[name]['gap']:.3f} / {r[name]['map']:.3f}" if name in r else ""

        rows = []
        if "teacher" in r:
            rows.append(
                "| Teacher-Skyline (all frames) | " + " | ".join([""] * (len(c.ks) - 1) + [cell("teacher")]) + " |"
            )
        for policy in c.policies:
            rows.append(f"| {POLICY_ROWS[policy]} | " + " | ".join(cell(f"student/{policy}/k{k}") for k in c.ks) + " |")
        for mode, loss in self._distilled_rows():
            rows.append(
                f"| {mode.capitalize()} {loss} | " + " | ".join(cell(f"{mode}/{loss}/k{k}") for k in c.ks) + " |"
            )
        extra = []
        k = max(c.ks)
        for name, label in (
            ("vlad/teacher", "NetVLAD teacher (all frames)"),
            (f"vlad/uniform/k{k}", f"NetVLAD Uniform-{k}"),
            (f"vlad/serial/k{k}", f"NetVLAD serial L_rep, L_pred, L_CE, k={k}"),
            (f"narrow/uniform/k{k}", f"H-LSTM narrow (1/4 of the parameters) Uniform-{k}"),
            (f"narrow/serial/k{k}", f"H-LSTM narrow (1/4 of the parameters) serial L_rep, L_pred, L_CE, k={k}"),
        ):
            if name in r:
                extra.append(f"| {label} | {r[name]['gap']:.3f} | {r[name]['map']:.3f} | {r[name]['parameters']:,} |")
        text = header + "\n".join(rows) + "\n"
        if extra:
            text += "\n| other rows | GAP | mAP | parameters |\n|---|---|---|---|\n" + "\n".join(extra) + "\n"
        if "teacher" in r:
            text += f"\nTeacher parameters: {r['teacher']['parameters']:,}.\n"
        return text
