"""Reproduce the paper's Table 1 on the synthetic benchmark: teacher skyline, selection baselines, parallel and
serial distillation at k in {6, 10, 15, 20, 30} (with --serial-pred-rows also the paper's serial L_pred rows), a
VLAD-family row and a narrow-student row. Resumable: cells already in OUT/results.json are not trained again."""

from __future__ import annotations

HELP = "the paper's Table 1 on synthetic data (about an hour on 2 cores; --quick: a miniature)"


def add_arguments(parser) -> None:
    parser.add_argument("name", choices=["table1"], help="which experiment")
    parser.add_argument("--out", required=True, help="experiment directory (data, runs, results.json, table1.md)")
    parser.add_argument("--quick", action="store_true", help="a miniature that runs in a few minutes")
    parser.add_argument(
        "--serial-pred-rows",
        action="store_true",
        help="also the paper's Serial L_pred and Serial L_pred, L_CE rows (10 more cells, about 8 min)",
    )


def run(args) -> int:
    from vidistill.distill.experiments import Table1, Table1Config

    config = Table1Config.quick() if args.quick else Table1Config()
    if args.serial_pred_rows:
        config.serial_losses = ("L_pred", "L_pred, L_CE")
    experiment = Table1(config, args.out)
    experiment.run()
    print(experiment.table())
    print(f"report: {experiment.write_report()}")
    return 0
