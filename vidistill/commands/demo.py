"""The whole mission on built-in synthetic data: synth -> parallel teacher-student training -> serial student ->
convert -> fine-tune -> export (fp32, fp16, bf16, int8 dynamic / static / QAT, TF SavedModels) -> bench -> one
table of GAP, mAP, latency, throughput, size and speed-up against the teacher served as a TF SavedModel.
The stages live in vidistill/pipeline.py; OUT/demo.yaml holds the configuration, OUT/summary.md the table."""

from __future__ import annotations

HELP = "run the whole pipeline on built-in synthetic data and print the final table"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the whole pipeline in under 3 minutes")
    parser.add_argument(
        "--resume", action="store_true", help="continue a killed demo in --out (finished stages are kept)"
    )
    parser.add_argument("--overwrite", action="store_true", help="delete --out and start again")


def run(args) -> int:
    from vidistill.pipeline import run_demo

    print(run_demo(args.out, quick=args.quick, resume=args.resume, overwrite=args.overwrite))
    return 0
