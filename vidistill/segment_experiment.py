"""The segment task (2019) on synthetic segment-rated data, one command: does video-level pre-training pay, does
shift test-time augmentation pay, and does a few-frame segment student pay?

For each family (H-LSTM, NeXtVLAD, transformer, at CPU sizes, on the same data):
- `FAMILY/video`: trained on the video-level labels (the pre-training); its held-out GAP;
- `FAMILY/scratch`: trained on the rated 5-frame segments alone (`--segments`);
- `FAMILY/pretrained`: the video run fine-tuned on the rated segments (`--segments --init`), the same steps.
Each segment model's segment MAP (Kaggle 2019, MAP@100000 over the rated segments of the held-out videos) without
and with shift TTA (`shifts`, each segment averaged over its windows shifted by those frames, clipped at the
video's ends).

Then, for the family whose pre-trained segment model scores best: a student that sees `student_k` of each
segment's 5 frames, trained alone (`student/alone`) and distilled from that model (`student/distilled`: serial,
L_REP + L_PRED + L_CE).

Latency: every segment model exported to ONNX (fp32 and int8-dynamic, parity checked by the exporter) and timed in
one bench run at each of `bench_batches` (a batch of segments).

Each training cell runs in a child process (TensorFlow keeps what a process traced); OUT/results.json holds each
finished cell, which a second run does not train again. Writes OUT/segments.md.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from vidistill.distill.experiments import MINIATURE_DATA, CellExperiment

FAMILIES = ("hlstm", "nextvlad", "transformer")
STUDENT_LOSS = {"ce": 1.0, "rep": 0.01, "pred": 1.0}  # L_REP + L_PRED + L_CE, Table 1's best row


@dataclass
class SegmentExperimentConfig:
    """Sizes chosen so that the experiment runs in about 20 minutes on 2 cores (docs/EXPERIMENTS.md)."""

    classes: int = 25
    videos: int = 2000
    heldout: int = 500
    min_frames: int = 60
    max_frames: int = 120
    seed: int = 0
    families: tuple[str, ...] = FAMILIES
    video_steps: int = 600  # the pre-training
    segment_steps: int = 400  # segment training, from scratch or from the video run
    batch_size: int = 32
    learning_rate: float = 2e-3
    shifts: tuple[int, ...] = (-1, 0, 1)
    student_k: int = 2  # of a segment's 5 frames
    bench_batches: tuple[int, ...] = (1, 64)
    bench_duration: float = 2.0
    bench_runs: int | None = None  # exactly this many timed runs instead (quick)

    @classmethod
    def quick(cls) -> SegmentExperimentConfig:
        """A miniature that runs in a few minutes (the tests run it)."""
        return cls(
            **MINIATURE_DATA,
            families=("hlstm", "nextvlad"),  # the recurrent and the VLAD path (a third family: 80 s more in CI)
            video_steps=6,
            segment_steps=4,
            batch_size=8,
            bench_batches=(1, 4),
            bench_runs=3,
        )


def family_config(family: str, c: SegmentExperimentConfig):
    """The family's model at the experiment's sizes (the CPU presets' widths, `classes` and `max_frames`)."""
    from vidistill.teachers.config import HLSTMConfig
    from vidistill.teachers.presets import PRESETS
    from vidistill.yt8m.errors import ConfigError

    sizes = {"num_classes": c.classes, "frames": c.max_frames}
    if family == "hlstm":
        return HLSTMConfig(**sizes, chunks=8, lower_cells=128, upper_cells=128, lower_layers=1, upper_layers=1)
    if family in ("nextvlad", "transformer"):
        return dataclasses.replace(PRESETS[f"{family}-small"], **sizes)
    raise ConfigError(f"unknown family {family!r} for the segment experiment; choose from {', '.join(FAMILIES)}")


def _cell(config, run_dir: str, heldout: str, shifts: tuple[int, ...]) -> dict:
    """One cell, in the child process: trains, then evaluates the run's model on the held-out records (a segment
    run: segment MAP without and with `shifts`; a video run: GAP and mAP)."""
    from vidistill.distill.evaluate import evaluate_model, evaluate_segments
    from vidistill.distill.runs import load_model
    from vidistill.distill.trainer import Run

    Run(config, run_dir).train(progress=False)
    loaded = load_model(run_dir)
    common = {"num_classes": loaded.num_classes, "max_frames": config.data.max_frames, "batch_size": 128}
    seen = config.student.model if config.mode.has_student else config.teacher  # the model evaluated
    result = {"parameters": loaded.model.count_params(), "frames": seen.frames}
    if config.data.segments:
        for name, chosen in (("map", (0,)), ("map_tta", shifts)):
            result[name] = evaluate_segments(loaded.model, heldout, shifts=chosen, **common)["map"]
    else:
        metrics = evaluate_model(loaded.model, heldout, select=loaded.select, **common)
        result.update(gap=metrics["gap"], map=metrics["map"])
    return result


class SegmentExperiment(CellExperiment):
    REPORT = "segments.md"

    def __init__(self, config: SegmentExperimentConfig, out_dir: str, progress: bool = True):
        super().__init__(config, out_dir, progress)
        self.train_data = os.path.join(self.data_dir, "train-*.tfrecord")
        self.heldout = os.path.join(self.data_dir, "validate-*.tfrecord")

    def run(self) -> dict:
        from vidistill.distill.experiments import claim_experiment_dir
        from vidistill.yt8m.segment_windows import check_shifts

        check_shifts(self.config.shifts, "shifts")
        for family in self.config.families:
            family_config(family, self.config)  # an unknown family fails before any work
        claim_experiment_dir(self.out_dir, self.config)
        self._data(segments=True)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=8) as pool:
            self._pool = pool
            self._cells()
        self._bench()
        self.write_report()
        return self.results

    # ------------------------------------------------------------------------------------------------ cells
    def run_dir(self, name: str) -> str:
        return os.path.join(self.out_dir, "runs", name)

    def _train(self, name: str, config, steps: int) -> str:
        from vidistill.distill.config import DataConfig, OptimizerConfig

        run_dir = self.run_dir(name)
        if name in self.results:
            return run_dir
        c = self.config
        segments = config.data.segments
        config.data = DataConfig(
            train=self.train_data,
            eval="",
            max_frames=c.max_frames,
            batch_size=c.batch_size,
            eval_batch_size=128,
            segments=segments,
        )
        config.optimizer = OptimizerConfig(learning_rate=c.learning_rate, decay_steps=max(steps, 1))
        config.steps = config.checkpoint_every = steps
        config.eval_every, config.seed = 0, c.seed
        if os.path.exists(run_dir):
            import shutil

            shutil.rmtree(run_dir)  # an unfinished cell of a killed experiment
        started = time.perf_counter()
        result = self._pool.submit(_cell, config, run_dir, self.heldout, tuple(c.shifts)).result()
        self.results[name] = {**result, "seconds": round(time.perf_counter() - started, 1), "steps": steps}
        self._save()
        if self.progress:
            shown = {k: round(v, 4) for k, v in result.items() if k in ("gap", "map", "map_tta")}
            print(f"{name:28s} {shown}  ({self.results[name]['seconds']:.0f} s)", flush=True)
        return run_dir

    def _cells(self) -> None:
        from vidistill.distill.config import DataConfig, TrainConfig
        from vidistill.distill.losses import LossWeights
        from vidistill.distill.segments import segment_train_config
        from vidistill.students.student import student_config

        c = self.config

        def segment_run(**fields) -> TrainConfig:
            config = TrainConfig(data=DataConfig(segments=True), **fields)
            return segment_train_config(config)

        for family in c.families:
            model = family_config(family, c)
            video = self._train(f"{family}/video", TrainConfig(mode="teacher", teacher=model), c.video_steps)
            self._train(f"{family}/scratch", segment_run(mode="teacher", teacher=model), c.segment_steps)
            self._train(f"{family}/pretrained", segment_run(mode="teacher", teacher=model, init=video), c.segment_steps)
        best = self.best_family()
        model = family_config(best, c)
        student = student_config(model, k=c.student_k)
        self._train("student/alone", segment_run(mode="student", student=student), c.segment_steps)
        distilled = segment_run(
            mode="serial",
            teacher=model,
            student=student,
            teacher_run=self.run_dir(f"{best}/pretrained"),
            loss=LossWeights(**STUDENT_LOSS),
        )
        self._train("student/distilled", distilled, c.segment_steps)

    def best_family(self) -> str:
        """The family whose pre-trained segment model has the best segment MAP (with TTA)."""
        scored = [f for f in self.config.families if f"{f}/pretrained" in self.results]
        return max(scored, key=lambda f: self.results[f"{f}/pretrained"]["map_tta"])

    # ------------------------------------------------------------------------------------------------ latency
    def segment_models(self) -> list[str]:
        names = [f"{f}/{kind}" for f in self.config.families for kind in ("scratch", "pretrained")]
        return [n for n in names + ["student/alone", "student/distilled"] if n in self.results]

    def _bench(self) -> None:
        """Every segment model's fp32 and int8-dynamic ONNX files, timed in one bench run."""
        from vidistill.experiment_bench import export_and_time

        if "latency" in self.results:
            return
        c = self.config
        self.results["latency"] = export_and_time(
            {name: self.run_dir(name) for name in self.segment_models()},
            self.out_dir,
            self.heldout,
            precisions=("fp32", "int8-dynamic"),
            batches=tuple(c.bench_batches),
            duration=c.bench_duration,
            runs=c.bench_runs,
            command="vidistill experiment segments (its bench stage)",
            progress=self.progress,
        )
        self._save()

    # ------------------------------------------------------------------------------------------------ report
    def table(self) -> str:
        c, r = self.config, self.results
        latency = r.get("latency", {})
        shifts = ",".join(map(str, c.shifts))
        batches = c.bench_batches

        def ms(name: str, precision: str, batch: int) -> str:
            value = latency.get(name, {}).get(precision, {}).get(str(batch))
            return f"{value:.2f}" if value is not None else ""

        def timing(name: str) -> str:
            return " | ".join(ms(name, p, b) for p in ("fp32", "int8-dynamic") for b in batches)

        timing_head = " | ".join(f"{p} b{b} ms" for p in ("fp32", "int8") for b in batches)
        lines = [
            f"| family | parameters | video GAP (pre-training) | segment MAP from scratch | + TTA [{shifts}] | "
            f"segment MAP pre-trained | + TTA [{shifts}] | {timing_head} |",
            "|---|---|---|---|---|---|---|" + "---|" * (2 * len(batches)),
        ]
        for family in c.families:
            video, scratch, pre = (r.get(f"{family}/{kind}") for kind in ("video", "scratch", "pretrained"))
            if not (video and scratch and pre):
                continue
            lines.append(
                f"| {family} | {pre['parameters']:,} | {video['gap']:.3f} | {scratch['map']:.3f} | "
                f"{scratch['map_tta']:.3f} | {pre['map']:.3f} | {pre['map_tta']:.3f} | "
                f"{timing(f'{family}/pretrained')} |"
            )
        text = "\n".join(lines) + "\n"
        if "student/distilled" in r:
            best = self.best_family()
            text += (
                f"\nFew-frame segment students of the best pre-trained segment model ({best}): "
                f"{c.student_k} of each segment's 5 frames.\n\n"
                f"| model | frames | parameters | segment MAP | + TTA [{shifts}] | {timing_head} |\n"
                "|---|---|---|---|---|" + "---|" * (2 * len(batches)) + "\n"
            )
            for name, label in (
                (f"{best}/pretrained", f"{best} segment model (teacher)"),
                ("student/alone", f"student k={c.student_k}, trained alone"),
                ("student/distilled", f"student k={c.student_k}, distilled (serial L_rep, L_pred, L_CE)"),
            ):
                row = r[name]
                text += (
                    f"| {label} | {row['frames']} | {row['parameters']:,} | {row['map']:.3f} | {row['map_tta']:.3f} "
                    f"| {timing(name)} |\n"
                )
        return text
