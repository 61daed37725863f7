"""Train a teacher, a student, or both (parallel / serial distillation). The config file holds everything; flags
override it; the full resolved configuration is saved in the run directory as config.yaml."""

from __future__ import annotations

import dataclasses

from vidistill.commands.options import add_skip_bad_records, flags_named, frame_counts
from vidistill.yt8m.errors import ConfigError

HELP = "train teacher-student pairs (parallel, serial) or either alone"


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML config file (a run's config.yaml works too)")
    parser.add_argument("--data", help="training records (glob)")
    parser.add_argument("--eval-data", help="held-out records for periodic evaluation (glob)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--mode", choices=["parallel", "serial", "teacher", "student"])
    parser.add_argument("--teacher", help="teacher preset or model config file")
    parser.add_argument("--student", help="student backbone preset or config file (default: the teacher's family)")
    parser.add_argument(
        "--teacher-run",
        help="a trained teacher's run directory (serial mode); several teachers: an ensemble directory "
        "(`vidistill ensemble`) or RUN1,RUN2,... (equal weights, L_REP to the first)",
    )
    parser.add_argument(
        "--teacher-outputs",
        metavar="DIR",
        help="serial mode without running the teacher: its outputs for every training video, written by "
        "`vidistill teacher-outputs` (the teacher run defaults to the one that wrote them)",
    )
    parser.add_argument(
        "--init",
        metavar="RUN",
        help="start from this run's weights (its best checkpoint, else its last; a fresh optimizer). Without "
        "--teacher/--student/--mode the new run takes RUN's models: a teacher-only run's teacher, else (student, "
        "parallel or serial runs) its student alone; --mode teacher / student / parallel picks RUN's teacher, "
        "student, or both. Each must be of RUN's family and class count",
    )
    parser.add_argument(
        "--segments",
        action="store_true",
        help="train on the rated 5-frame segments of 2019-style segment-rated records (--data and --eval-data), "
        "only the rated classes in the loss, evaluating segment MAP; the models are built for one 5-frame "
        "segment with the same weights (distill/segments.py), videos are read at data.max_frames",
    )
    parser.add_argument(
        "--frames",
        type=frame_counts,
        help="k: frames the student sees; a set (6,10,15,20,30): one any-k student trained at each k",
    )
    parser.add_argument("--selection", default=None, help="uniform, random, first, middle, last, fml")
    parser.add_argument("--width", type=float, default=None, help="student width factor (default 1)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--num-classes", type=int, help="override the models' number of classes")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --out (its checkpoints, logs)")
    add_skip_bad_records(parser)


# option (TrainConfig's, or the student's width / the models' classes) -> the numeric flag's argparse destination
FLAGS = {
    "steps": "steps",
    "checkpoint_every": "checkpoint_every",
    "eval_every": "eval_every",
    "data.batch_size": "batch_size",
    "width": "width",
    "num_classes": "num_classes",
}


def resolve_config(args):
    """The TrainConfig of the config file (or defaults) with the flags applied."""
    from vidistill.distill.config import TrainConfig, load_train_config
    from vidistill.distill.ensemble import ensemble_config, is_ensemble, member_shapes
    from vidistill.distill.modes import Mode
    from vidistill.distill.segments import segment_train_config
    from vidistill.distill.warm_start import default_mode, init_run_config
    from vidistill.students.student import student_config
    from vidistill.teachers.presets import resolve

    if args.resume and not args.config:
        config = load_train_config(args.out)
    else:
        config = load_train_config(args.config) if args.config else TrainConfig()
    if args.segments:
        config.data.segments = True
    student_flags = args.student or args.frames or args.selection or args.width is not None
    if args.init:
        config.init = args.init
        init = init_run_config(args.init)
        if config.teacher is None and config.student is None and not (args.teacher or student_flags):
            mode = Mode.parse(args.mode or ("serial" if args.teacher_run else default_mode(init)), "--mode")
            _models_of_init(config, init, mode, args)
    if args.mode:
        config.mode = Mode.parse(args.mode, "--mode")
    if args.data:
        config.data.train = args.data
    if args.skip_bad_records:
        config.data.skip_bad_records = True
    if args.eval_data:
        config.data.eval = args.eval_data
    for flag, field in (("steps", "steps"), ("checkpoint_every", "checkpoint_every"), ("eval_every", "eval_every")):
        if getattr(args, flag) is not None:
            setattr(config, field, getattr(args, flag))
    if args.batch_size is not None:
        config.data.batch_size = args.batch_size
    if args.teacher_outputs:
        from vidistill.yt8m.teacher_outputs import TeacherOutputs

        config.teacher_outputs = args.teacher_outputs
        if not args.teacher_run and not config.teacher_run:
            args.teacher_run = TeacherOutputs.load(args.teacher_outputs).source
    if args.teacher_run:
        config.teacher_run = args.teacher_run
        config.mode = Mode.parse(args.mode or "serial", "--mode")
        if is_ensemble(args.teacher_run):  # many teachers: built from their runs (distill/ensemble.py)
            config.teacher = None
            shapes = member_shapes(ensemble_config(args.teacher_run))
            config.data.max_frames = max(frames for frames, _ in shapes)
            if args.num_classes is None:
                args.num_classes = shapes[0][1]
        else:
            config.teacher = load_train_config(args.teacher_run).teacher
    if args.teacher:
        config.teacher = resolve(args.teacher)
    if args.num_classes is not None and config.teacher:
        config.teacher = dataclasses.replace(config.teacher, num_classes=args.num_classes)
    if config.teacher and not config.data.segments:  # a segments run reads whole videos whatever its models take
        config.data.max_frames = config.teacher.frames
    if student_flags:
        base = resolve(args.student) if args.student else (config.student.model if config.student else config.teacher)
        if base is None:
            raise ConfigError("a student needs a model: pass --student PRESET|CONFIG or --teacher")
        k = args.frames or (config.student.ks if config.student else None)
        if not k:
            raise ConfigError("pass --frames K (or a set K1,K2,...): the number of frames the student sees")
        policy = args.selection or (config.student.policy if config.student else "uniform")
        classes = config.teacher.num_classes if config.teacher else args.num_classes
        width = 1.0 if args.width is None else args.width
        config.student = student_config(base, k=k, policy=policy, width=width, num_classes=classes)
    if config.data.segments:
        segment_train_config(config)  # the models built for one 5-frame segment (distill/segments.py)
    return config


def _ks(metrics: dict) -> list[int]:
    """The k's of an any-k student's held-out metrics (their "gap_kK" keys), ascending."""
    return sorted(int(name[len("gap_k") :]) for name in metrics if name.startswith("gap_k"))


def _models_of_init(config, init, mode, args) -> None:
    """The mode, models and read length of the run `init` (--init without --teacher / --student)."""
    from vidistill.distill.warm_start import check_models

    config.mode = mode
    config.teacher = init.teacher if mode.has_teacher and not mode.restores_teacher else None  # serial: --teacher-run
    config.student = init.student if mode.has_student else None
    if args.num_classes is not None:  # checked against init's below: a class count init's weights do not fit is refused
        if config.teacher is not None:
            config.teacher = dataclasses.replace(config.teacher, num_classes=args.num_classes)
        if config.student is not None:
            model = dataclasses.replace(config.student.model, num_classes=args.num_classes)
            config.student = dataclasses.replace(config.student, model=model)
    config.data.max_frames = init.data.max_frames
    check_models(config, init)  # e.g. --mode student from a teacher-only run: said here, naming --init


def run(args) -> int:
    from vidistill.distill.trainer import Run

    with flags_named(args, FLAGS):  # each numeric flag checked where its option is, and named as typed
        config = resolve_config(args)
        run = Run(config, args.out, resume=args.resume, overwrite=args.overwrite)  # validates before it writes
    print(f"strategy: {type(run.strategy).__name__}, {run.strategy.num_replicas_in_sync} replica(s) in sync")
    summary = run.train()
    print(f"trained to step {summary['step']}; run directory {args.out}")
    if summary["input_wait_share"] is not None:
        print(
            f"input wait: {summary['input_wait_share']:.1%} of the step time "
            "(outside the steps' computation; TensorBoard: input_wait_share)"
        )
    e = summary["last_eval"]
    if e and "segment_map" in e:
        print(f"held-out: segment MAP {e['segment_map']:.4f}  ({e['num_classes_scored']} classes scored)")
    elif e:
        print(
            f"held-out: GAP {e['gap']:.4f}  mAP {e['map']:.4f}  Hit@1 {e['hit_at_one']:.4f}  ({e['num_videos']} videos)"
            + ("  (means over k)" if _ks(e) else "")
        )
        for k in _ks(e):
            print(f"  k={k}: GAP {e[f'gap_k{k}']:.4f}  mAP {e[f'map_k{k}']:.4f}  Hit@1 {e[f'hit_at_one_k{k}']:.4f}")
    if summary.get("bad_records") is not None:
        count = summary["bad_records"]
        print(
            f"skipped {count} bad record reads (a bad record counts once per pass over the data)"
            if count
            else "no bad records"
        )
    return 0
