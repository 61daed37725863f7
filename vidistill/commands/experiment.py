"""Experiments on the synthetic benchmark. `table1`: the paper's Table 1 (teacher skyline, selection baselines,
parallel and serial distillation at k in {6, 10, 15, 20, 30}; with --serial-pred-rows also the paper's serial L_pred
rows), a VLAD-family row and a narrow-student row. `segments`: the 2019 segment task (H-LSTM, NeXtVLAD and
transformer with and without video-level pre-training, with and without shift TTA, a few-frame segment student,
latency at batch 1 and 64). `ensemble`: five families alone, MixNeXtVLAD, their fitted ensemble, and a k=30 student
distilled from the best single teacher vs from the ensemble; the serial speed-up of stored teacher outputs. `anyk`:
one student trained at every k in {6, 10, 15, 20, 30} at once (alone, parallel-distilled, and with
self-distillation) vs a dedicated student per k, over two training seeds; its training cost and its int8 latency at
each k. Resumable: cells already in OUT/results.json are not trained again."""

from __future__ import annotations

from vidistill.commands.options import number

HELP = "the paper's Table 1 (about an hour on 2 cores), the segment task, ensembles or any-k students on synthetic data"


def add_arguments(parser) -> None:
    parser.add_argument("name", choices=["table1", "segments", "ensemble", "anyk"], help="which experiment")
    parser.add_argument("--out", required=True, help="experiment directory (data, runs, results.json, the report)")
    parser.add_argument("--quick", action="store_true", help="a miniature that runs in a few minutes")
    parser.add_argument(
        "--seed",
        type=number(">= 0"),
        default=0,
        help="seed of the synthetic data and the training (another seed: the spread; anyk: the data's, its cells are "
        "each trained at seeds 0 and 1)",
    )
    parser.add_argument(
        "--serial-pred-rows",
        action="store_true",
        help="also the paper's Serial L_pred and Serial L_pred, L_CE rows (10 more cells, about 8 min)",
    )


def run(args) -> int:
    if args.name in ("segments", "ensemble", "anyk"):
        return _cells(args)
    from vidistill.distill.experiments import Table1, Table1Config

    config = Table1Config.quick() if args.quick else Table1Config()
    config.seed = args.seed
    if args.serial_pred_rows:
        config.serial_losses = ("L_pred", "L_pred, L_CE")
    experiment = Table1(config, args.out)
    experiment.run()
    print(experiment.table())
    print(f"report: {experiment.write_report()}")
    return 0


def _cells(args) -> int:
    from vidistill.yt8m.errors import ConfigError

    if args.serial_pred_rows:
        raise ConfigError(f"--serial-pred-rows belongs to table1, not to the {args.name} experiment")
    if args.name == "segments":
        from vidistill.segment_experiment import SegmentExperiment as Experiment
        from vidistill.segment_experiment import SegmentExperimentConfig as Config
    elif args.name == "ensemble":
        from vidistill.ensemble_experiment import EnsembleExperiment as Experiment
        from vidistill.ensemble_experiment import EnsembleExperimentConfig as Config
    else:
        from vidistill.anyk_experiment import AnyKExperiment as Experiment
        from vidistill.anyk_experiment import AnyKExperimentConfig as Config
    config = Config.quick() if args.quick else Config()
    config.seed = args.seed
    experiment = Experiment(config, args.out)
    experiment.run()
    print(experiment.table())
    print(f"report: {experiment.write_report()}")
    return 0
