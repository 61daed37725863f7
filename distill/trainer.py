"""Training runs: models from the config, data, the Distiller under a tf.distribute strategy, and callbacks for
checkpoints, held-out evaluation, progress and TensorBoard.

A run directory holds config.yaml (the full resolved TrainConfig), checkpoints/ (the last `keep_checkpoints`,
written every `checkpoint_every` steps; TensorFlow writes the `checkpoint` pointer atomically, so a run killed
mid-save resumes from the previous one), checkpoints/best/ (the best held-out GAP), logs/ (TensorBoard) and
metrics.jsonl (one line per evaluation).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from vidistill.distill.config import TrainConfig, load_train_config, save_train_config
from vidistill.distill.distiller import Distiller
from vidistill.distill.ensemble import build_ensemble, ensemble_config, is_ensemble
from vidistill.distill.optimizer import FusedAdam
from vidistill.distill.warm_start import check_init, restore_init
from vidistill.students.convert import load_student_weights
from vidistill.students.student import RepresentationProjection, build_student, student_views
from vidistill.teachers.registry import build_model
from vidistill.yt8m.constants import SEGMENT_FRAMES
from vidistill.yt8m.readers import BadRecords, list_files, read_frame_dataset, require_segment_ratings
from vidistill.yt8m.errors import ConfigError, UserError
from vidistill.yt8m.memory import require_memory
from vidistill.yt8m.teacher_outputs import TeacherOutputs

CHECKPOINTS = "checkpoints"
# Training's peak resident memory is at most this (the weights, Adam's two slots, the gradients and their
# temporaries: netvlad-willow's parallel step took 2 GB + 4.7 x its 2.6 GB of teacher and student weights, measured
# with `vidistill bench-scale`, docs/BENCHMARKS.md); it is refused before it starts where less is available.
TRAIN_MEMORY_FIXED = 2e9  # bytes: TensorFlow, the input pipeline, activations of a small batch
TRAIN_MEMORY_PER_WEIGHT_BYTE = 5
BEST = os.path.join(CHECKPOINTS, "best")


def default_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG describes a cluster, MirroredStrategy over several GPUs, else the
    default (one device)."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _worker(strategy) -> tuple[bool, int]:
    """(is_chief, task id). Every worker saves checkpoints (reading variables may need all of them); only the
    chief's go to the run directory."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True, 0
    task_id = resolver.task_id or 0
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and task_id == 0), task_id


@contextmanager
def _precision(mixed: bool):
    """Builds models under the mixed_bfloat16 policy (bf16 compute, float32 variables), then restores the policy."""
    previous = keras.mixed_precision.global_policy()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class TrainingError(UserError, RuntimeError):
    """A run that cannot go on (a NaN loss, an incompatible checkpoint); the message says what to do."""


@dataclass
class Models:
    teacher: keras.Model | None
    student: keras.Model | None
    projection: keras.layers.Layer | None

    def checkpoint(self, **extra) -> tf.train.Checkpoint:
        parts = {
            k: v
            for k, v in (("teacher", self.teacher), ("student", self.student), ("projection", self.projection))
            if v
        }
        return tf.train.Checkpoint(**parts, **extra)


def build_models(config: TrainConfig, *, only: str = "") -> Models:
    """The teacher and/or student of a run, and the L_REP projection when their widths differ; `only`
    ("teacher" or "student") builds just that one."""
    ensemble = config.mode.restores_teacher and config.teacher is None and is_ensemble(config.teacher_run)
    with_teacher = (config.teacher is not None or ensemble) and config.mode.has_teacher and only != "student"
    with_student = config.student is not None and config.mode.has_student and only != "teacher"
    if with_teacher and config.teacher_outputs and only != "teacher":
        with_teacher = config.loss.resolved_head() == "teacher"  # stored outputs: built only for its head
    if with_teacher and ensemble:  # its members built and restored from their runs (distill/ensemble.py)
        teacher = build_ensemble(ensemble_config(config.teacher_run).pruned())
    else:
        teacher = build_model(config.teacher, name="teacher") if with_teacher else None
    if with_student:  # the student starts from the same weights whether or not a teacher was built before it
        keras.utils.set_random_seed(config.seed + 1)
    student = build_student(config.student) if with_student else None
    projection = None
    stored = config.teacher_outputs and config.mode.distills and only == ""
    if student is not None and (teacher is not None or stored) and config.loss.rep > 0:
        if stored:
            t_width = TeacherOutputs.load(config.teacher_outputs).representation_width
        else:
            t_width = teacher.output["representation"].shape[-1]
        s_width = student.output["representation"].shape[-1]
        if t_width != s_width:
            projection = RepresentationProjection(t_width, name="projection")
            projection.build((None, s_width))
    return Models(teacher, student, projection)


def restore_models(models: Models, run_dir: str, *, prefer_best: bool = True) -> str:
    """Restores a run's weights (best checkpoint if any, else the last) into `models`; returns the path used."""
    path = latest_checkpoint(run_dir, prefer_best=prefer_best)
    status = models.checkpoint().restore(path)
    try:
        status.expect_partial().assert_existing_objects_matched()
    except AssertionError as e:
        raise TrainingError(f"{path} does not match this model configuration ({e}); was the config changed?") from None
    return path


def latest_checkpoint(run_dir: str, *, prefer_best: bool = True) -> str:
    for folder in ([BEST] if prefer_best else []) + [CHECKPOINTS]:
        path = tf.train.latest_checkpoint(os.path.join(run_dir, folder))
        if path:
            return path
    raise FileNotFoundError(f"{run_dir} holds no checkpoint: is it a training run directory?")


def _optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    o = config.optimizer
    schedule = keras.optimizers.schedules.ExponentialDecay(o.learning_rate, o.decay_steps, o.decay_rate)
    return FusedAdam(schedule, clipnorm=o.clip_norm)  # clipnorm: each gradient separately


def _step_dequantizes() -> bool:
    """With a GPU the batches carry the uint8 codes (4x fewer bytes to copy) and the train step dequantizes them
    there; on CPU the reader's float batches are cheaper (the pipeline's threads overlap the step)."""
    return bool(tf.config.list_physical_devices("GPU"))


def _train_dataset(config: TrainConfig, bad_records: BadRecords | None = None) -> tf.data.Dataset:
    """Shuffled, repeated forever; under several workers each keeps every n-th batch (auto-shard by data). Where
    no teacher runs, only the student's k frames are decoded; see also `_step_dequantizes`. A segments run reads
    the rated 5-frame segments (with their label weights), padded to the teacher's length where it takes more."""
    segments = config.data.segments
    runs_teacher = config.mode.has_teacher and not config.teacher_outputs
    alone = config.student if not runs_teacher and not segments else None
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = read_frame_dataset(
        config.data.train,
        num_classes=config.num_classes,
        max_frames=config.data.max_frames,
        batch_size=config.data.batch_size,
        shuffle=True,
        shuffle_buffer=config.data.shuffle_buffer,
        segment_labels=segments,
        num_epochs=None,
        drop_remainder=True,
        seed=config.seed,
        deterministic=config.data.deterministic,
        bad_records=bad_records,
        select=alone.frames_to_decode(training=True) if alone is not None else None,
        dequantize=not _step_dequantizes(),
        teacher_outputs=TeacherOutputs.load(config.teacher_outputs) if config.teacher_outputs else None,
    )
    length = config.teacher.frames if segments and config.mode.has_teacher else SEGMENT_FRAMES
    if length > SEGMENT_FRAMES:  # a family that keeps its frame count for segments (distill/segments.py)
        from vidistill.distill.evaluate import fit_frames

        dataset = dataset.map(
            lambda batch: {**batch, "frames": fit_frames(batch["frames"], batch["num_frames"], length)[0]}
        )
    return dataset.with_options(options)


BAR_TERMS = ("loss", "teacher_ce", "ce")  # what the progress bar shows; every term goes to TensorBoard


class _Progress(keras.callbacks.Callback):
    """A tqdm bar over the whole run: steps/s, ETA, and the latest total loss and L_CE terms (BAR_TERMS: short
    enough for the bar to keep its width in an 80-column terminal; every term is in TensorBoard)."""

    def __init__(self, total: int, initial: int):
        super().__init__()
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", desc="train", dynamic_ncols=True)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and batch % 10 == 0:
            shown = {k: f"{float(logs[k]):.4g}" for k in BAR_TERMS if k in logs}
            self.bar.set_postfix(shown, refresh=False)

    def on_train_end(self, logs=None):
        self.bar.close()


class _NaNGuard(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        bad = {k: float(v) for k, v in (logs or {}).items() if not math.isfinite(float(v))}
        if bad:
            self.model.stop_training = True
            self.bad = bad


class _StepLimit(keras.callbacks.Callback):
    """Stops training after the batch that reaches `steps` (Keras then ends the epoch, which checkpoints)."""

    def __init__(self, optimizer, steps: int):
        super().__init__()
        self.optimizer, self.steps = optimizer, steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.optimizer.iterations.numpy()) >= self.steps:
            self.model.stop_training = True


class _InputWait(keras.callbacks.Callback):
    """The share of the train steps' time spent outside their computation: waiting for input (and dispatching the
    step). Each step's wall time, from Keras starting it to its results, less its computing time (from its inputs'
    arrival to its updates: `Distiller.compute_seconds`); the first step of each fit (tracing) left out. Written
    per checkpoint interval to TensorBoard (logs/input, "input_wait_share") and for the whole run to the summary."""

    def __init__(self, run: Run):
        super().__init__()
        self.run = run
        self.wall = self.compute = 0.0  # over the run, first steps left out
        self.interval = (0.0, 0.0)  # at the last interval's end
        self.counted = None  # compute_seconds when the current fit's first step ended
        self.writer = None  # logs/input, made at the first interval's end

    @property
    def share(self) -> float | None:
        return _waiting(self.wall, self.compute)

    def on_train_begin(self, logs=None):
        self.counted = None

    def on_train_batch_begin(self, batch, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        elapsed = time.perf_counter() - self.started
        if self.counted is None:
            self.counted = float(self.run.distiller.compute_seconds.numpy())
        else:
            self.wall += elapsed

    def on_epoch_end(self, epoch, logs=None):
        total = float(self.run.distiller.compute_seconds.numpy())
        self.compute += total - self.counted
        self.counted = total
        share = _waiting(self.wall - self.interval[0], self.compute - self.interval[1])
        self.interval = (self.wall, self.compute)
        if share is not None and self.run.is_chief:
            if self.writer is None:
                self.writer = tf.summary.create_file_writer(os.path.join(self.run.run_dir, "logs", "input"))
            with self.writer.as_default():
                tf.summary.scalar("input_wait_share", share, step=self.run.step)


def _waiting(wall: float, compute: float) -> float | None:
    """The share of `wall` seconds not spent computing; None for no timed step."""
    return max(0.0, 1 - compute / wall) if wall > 0 else None


class _Checkpointer(keras.callbacks.Callback):
    """Every `checkpoint_every` steps (one Keras epoch): save; every `eval_every`: evaluate and keep the best."""

    def __init__(self, run: Run):
        super().__init__()
        self.run = run

    def on_epoch_end(self, epoch, logs=None):
        if getattr(self.run.nan_guard, "bad", None):
            return  # never checkpoint a diverged model
        step = int(self.run.optimizer.iterations.numpy())
        self.run.manager.save(checkpoint_number=step)
        started, first_step = self.run.segment
        self.run._write_line(
            "train.jsonl", {"step": step, "seconds": time.perf_counter() - started, "from_step": first_step}
        )
        every = self.run.config.eval_every
        if self.run.config.data.eval and every and (step % every < self.run.config.checkpoint_every):
            self.run.evaluate_and_keep_best(step)


RUN_FILES = ("config.yaml", CHECKPOINTS, "logs", "metrics.jsonl", "train.jsonl", "workers")  # what a run writes


def is_claimed(run_dir: str) -> bool:
    """A run directory is claimed by its first checkpoint: a config.yaml alone is a start that failed or was killed
    before it saved anything, and a new run may take its place."""
    return tf.train.latest_checkpoint(os.path.join(run_dir, CHECKPOINTS)) is not None


def _clear_run(run_dir: str) -> None:
    """Removes what a run writes (RUN_FILES) from `run_dir`, and nothing else that may be there."""
    for name in RUN_FILES:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def _remove_partial_checkpoints(directory: str) -> None:
    """A kill during a save leaves `ckpt-N_temp` folders that no checkpoint pointer names: removed on resume."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.endswith("_temp"):
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


class _DispatchTimingFilter(logging.Filter):
    """Drops Keras' "Callback method `on_train_batch_end` is slow compared to the batch time": Keras times a batch
    as the dispatch of its step, and the batch-end hooks including the wait for that step's results (the logs turned
    into numbers), so with small models it fires whatever the hooks do. Measured on the quick demo: the hooks
    themselves take about 3 ms a step (nearly all of it TensorBoard's scalars) where Keras reported 14-35 ms."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is slow compared to the batch time" not in record.getMessage()


@contextmanager
def _without_dispatch_timing_warning():
    logger, dropped = tf.get_logger(), _DispatchTimingFilter()
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)


class _TensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard logging at the run's own steps: Keras counts from 0 at every fit, so the steps of a resumed
    run would start again at 0 (overlapping the first segment's)."""

    def __init__(self, optimizer, log_dir: str, update_freq: int):
        super().__init__(log_dir, update_freq=update_freq)
        self.optimizer = optimizer

    def on_train_begin(self, logs=None):
        self.model._train_counter.assign(self.optimizer.iterations)  # fit has just set it to 0
        super().on_train_begin(logs)


class Run:
    """One training run in `run_dir`: a new one (`overwrite` replaces a run already there), or the run there
    continued (`resume`)."""

    def __init__(
        self, config: TrainConfig, run_dir: str, *, resume: bool = False, overwrite: bool = False, strategy=None
    ):
        if resume and overwrite:
            raise ConfigError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
        config.validate()
        if config.student is not None and config.student.k > config.data.max_frames:
            raise ConfigError(
                f"the student asks for k={config.student.k} frames but the data gives at most "
                f"max_frames={config.data.max_frames}: lower --frames"
            )
        self.config, self.run_dir = config, run_dir
        self.strategy = strategy or default_strategy()
        self.is_chief, task_id = _worker(self.strategy)
        checkpoint_dir = run_dir if self.is_chief else os.path.join(run_dir, "workers", str(task_id))
        started = os.path.exists(os.path.join(run_dir, "config.yaml"))
        claimed = is_claimed(run_dir)
        if not self.is_chief:
            started = claimed = resume  # the chief owns the run directory; a worker follows it
        if claimed and not resume and not overwrite:
            raise FileExistsError(
                f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to replace it, "
                "or another --out"
            )
        if resume and not started:
            raise FileNotFoundError(f"nothing to resume in {run_dir}: it holds no config.yaml")
        resume = resume and claimed  # a start that saved no checkpoint is started again (its config may change)
        fresh = not resume  # the run's files in run_dir are replaced once the models are built
        if resume:
            saved = load_train_config(run_dir).resolve()  # a config.yaml from before loss.head holds no head
            if saved.to_dict() | {"steps": 0} != config.to_dict() | {"steps": 0}:
                raise TrainingError(
                    f"{run_dir} was started with another configuration; resume it with its own config.yaml "
                    "(only --steps may change)"
                )
        for option, pattern in (("--data", config.data.train), ("--eval-data", config.data.eval)):
            if pattern:
                list_files(pattern)  # a data pattern that matches nothing fails before the run directory exists
                if config.data.segments:
                    require_segment_ratings(pattern, f"--segments ({option})")
        if config.teacher_outputs:  # every training file has its outputs, for this class count
            TeacherOutputs.load(config.teacher_outputs).check(list_files(config.data.train), config.num_classes)
        if fresh and config.init:
            check_init(config)  # the init run, its families and class counts, before anything is built
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope(), _precision(config.mixed_precision):
            self.models = build_models(config)
            if config.mode.restores_teacher and self.models.teacher is not None and config.teacher is not None:
                restore_models(Models(self.models.teacher, None, None), config.teacher_run)
            if fresh and config.init:
                restore_init(self.models, config)
            if config.init_student:
                load_student_weights(self.models.student, config.init_student)
            self.optimizer = _optimizer(config)
            # an any-k student at each of its k's (one entry: a single-k student)
            self.student_views = student_views(self.models.student, config.student) if self.models.student else {}
            self.distiller = Distiller(
                config.mode,
                self.models.teacher,
                self.models.student,
                config.loss,
                self.models.projection,
                student_views=self.student_views,
            )
            self.distiller.compile(optimizer=self.optimizer)
        # models that cannot be built (e.g. loss.head "teacher" with a narrower student) fail before this point
        weights = 4 * sum(m.count_params() for m in (self.models.teacher, self.models.student) if m is not None)
        require_memory(
            TRAIN_MEMORY_FIXED + TRAIN_MEMORY_PER_WEIGHT_BYTE * weights,
            f"training these models ({weights / 1e6:.0f} MB of float32 weights)",
            "use a smaller preset or a narrower student (--width), or a machine with more memory "
            "(docs/BENCHMARKS.md: memory per stage)",
        )
        if fresh and self.is_chief:
            _clear_run(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        if self.is_chief:
            save_train_config(config, run_dir)
        self.checkpoint = self.models.checkpoint(optimizer=self.optimizer)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(checkpoint_dir, CHECKPOINTS), max_to_keep=config.keep_checkpoints
        )
        self.best_manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(checkpoint_dir, BEST), max_to_keep=1
        )
        self.best_score = _best_score(run_dir, _key_metric(config))
        _remove_partial_checkpoints(self.manager.directory)
        if resume and self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            self.distiller.head_policy.after_restore()
        self.bad_records = BadRecords() if config.data.skip_bad_records else None  # counted over the whole run
        self.nan_guard = _NaNGuard()
        self.input_wait = _InputWait(self)
        self.last_eval_step = -1

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def train(self, *, progress: bool = True) -> dict:
        """Trains to exactly `config.steps` steps, checkpointing every `checkpoint_every` (and at the end)."""
        config = self.config
        if self.step >= config.steps:
            return self.summary()
        interval = config.checkpoint_every
        # fit distributes the dataset over the strategy the models were built under
        dataset = _train_dataset(config, self.bad_records)
        callbacks = [
            self.input_wait,  # first: its step timing brackets the others' hooks
            self.nan_guard,
            _StepLimit(self.optimizer, config.steps),
            _Checkpointer(self),
            _TensorBoard(self.optimizer, os.path.join(self.run_dir, "logs"), update_freq=max(1, interval // 10)),
        ]
        if progress:
            callbacks.append(_Progress(config.steps, self.step))
        self.segment = (time.perf_counter(), self.step)  # train.jsonl: a line per checkpoint of this segment
        # one Keras epoch = one checkpoint interval; _StepLimit ends the run at exactly config.steps
        with _without_dispatch_timing_warning():
            self.distiller.fit(
                dataset,
                epochs=math.ceil(config.steps / interval) + 1,
                initial_epoch=self.step // interval,
                steps_per_epoch=interval,
                callbacks=callbacks,
                verbose=0,
            )
        if getattr(self.nan_guard, "bad", None):
            last = self.manager.latest_checkpoint or "none yet"
            raise TrainingError(
                f"the loss became non-finite at step {self.step} ({self.nan_guard.bad}); training stopped and the "
                f"last good checkpoint is kept ({last}). Lower the learning rate or the loss weights, then --resume"
            )
        if config.data.eval and self.last_eval_step != self.step:
            self.evaluate_and_keep_best(self.step)
        if config.average_last > 1:
            self.average_checkpoints(config.average_last)
        return self.summary()

    def average_checkpoints(self, last: int) -> str:
        """SWA (the 2018 4th-place trick): the mean of the trainable variables over the last `last` checkpoints
        (batch-norm statistics are not averaged: they come from the newest), saved in checkpoints/averaged/;
        evaluated, and kept as the best when it beats it."""
        paths = self.manager.checkpoints[-last:]
        if len(paths) < 2:
            return ""
        variables = [
            v
            for m in (self.models.teacher, self.models.student, self.models.projection)
            if m
            for v in m.trainable_variables
        ]
        total = [np.zeros(v.shape, np.float64) for v in variables]
        for path in paths:
            self.checkpoint.restore(path).expect_partial()
            for acc, v in zip(total, variables):
                acc += v.numpy()
        for acc, v in zip(total, variables):
            v.assign((acc / len(paths)).astype(v.dtype.as_numpy_dtype))
        self.distiller.head_policy.after_restore()  # loss.head "teacher": the student's head is the averaged teacher's
        averaged = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(os.path.dirname(self.manager.directory), CHECKPOINTS, "averaged"), 1
        ).save(checkpoint_number=self.step)
        if self.config.data.eval:
            metrics = self.evaluate_and_keep_best(self.step, tag="averaged")
            key = _key_metric(self.config)
            print(f"average of the last {len(paths)} checkpoints: held-out {key} {metrics[key]:.4f}")
        return averaged

    def evaluate_and_keep_best(self, step: int, tag: str = "") -> dict:
        """Evaluates the run's student (else its teacher) on data.eval (a segments run: segment MAP, as
        "segment_map"), logs it, and saves the best checkpoint by GAP (segment MAP)."""
        self.last_eval_step = step
        model = self.models.student if self.models.student is not None else self.models.teacher
        metrics = self._evaluate(model, student=self.models.student is not None)
        key = _key_metric(self.config)
        # every worker evaluates (same weights, same data: the same decision below, so that all of them take
        # part in the same checkpoint saves); only the chief writes files
        if self.is_chief:
            writer = tf.summary.create_file_writer(os.path.join(self.run_dir, "logs", "eval"))
            with writer.as_default():
                for name in ("gap", "map", "hit_at_one", "perr", "segment_map"):
                    if name in metrics:
                        tf.summary.scalar(f"{tag or 'last'}/{name}", metrics[name], step=step)
        self._write_line("metrics.jsonl", {"step": step, **({"checkpoint": tag} if tag else {}), **metrics})
        if self.best_score is None or metrics[key] > self.best_score:
            self.best_score = metrics[key]
            self.best_manager.save(checkpoint_number=step)
        return metrics

    def _evaluate(self, model, *, student: bool) -> dict:
        from vidistill.distill.evaluate import evaluate_model, evaluate_segments

        config = self.config
        common = dict(
            num_classes=config.num_classes,
            max_frames=config.data.max_frames,
            batch_size=config.data.eval_batch_size,
            bad_records=self.bad_records,
        )
        if config.data.segments:
            result = evaluate_segments(model, config.data.eval, **common)
            return {"segment_map": result.pop("map"), **result}
        if student and config.student.any_k:  # at every k: NAME_kK, and NAME their mean (the best checkpoint's)
            per_k = {
                k: evaluate_model(
                    view,
                    config.data.eval,
                    max_videos=config.data.eval_videos,
                    select=config.student.frames_to_decode(k=k),
                    **common,
                )
                for k, view in self.student_views.items()
            }
            names = [name for name, value in per_k[config.student.k].items() if isinstance(value, float)]
            means = {name: float(np.mean([result[name] for result in per_k.values()])) for name in names}
            per_k_names = {f"{name}_k{k}": result[name] for k, result in per_k.items() for name in names}
            return {**per_k[config.student.k], **means, **per_k_names}
        return evaluate_model(
            model,
            config.data.eval,
            max_videos=config.data.eval_videos,
            select=config.student.frames_to_decode() if student else None,
            **common,
        )

    def summary(self) -> dict:
        path = os.path.join(self.run_dir, "metrics.jsonl")
        lines = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
        summary = {"step": self.step, "run_dir": self.run_dir, "last_eval": lines[-1] if lines else None}
        summary["input_wait_share"] = self.input_wait.share  # this process's steps; None before any was timed
        if self.bad_records is not None:
            summary["bad_records"] = self.bad_records.count  # in this process (a resumed run counts from its start)
        return summary

    def _write_line(self, name: str, record: dict) -> None:
        if not self.is_chief:
            return
        with open(os.path.join(self.run_dir, name), "a") as f:
            f.write(json.dumps(record) + "\n")


def train(
    config: TrainConfig, run_dir: str, *, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> dict:
    """Trains `config` into `run_dir` (continuing its checkpoints with `resume`, replacing a run there with
    `overwrite`); returns the run's summary."""
    return Run(config, run_dir, resume=resume, overwrite=overwrite).train(progress=progress)


def _key_metric(config: TrainConfig) -> str:
    """What picks the best checkpoint: held-out GAP, or segment MAP in a segments run."""
    return "segment_map" if config.data.segments else "gap"


def _best_score(run_dir: str, key: str) -> float | None:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    scores = [json.loads(line).get(key) for line in open(path) if line.strip()]
    scores = [score for score in scores if score is not None]
    return max(scores) if scores else None
