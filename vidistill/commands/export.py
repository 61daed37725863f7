"""Export a converted student (or a run's student / teacher) to ONNX in several precisions, plus TF SavedModels of
the same network, each checked against the TF model for parity and held-out accuracy and described by a model
card (DIR/<precision>.json). Exits 1 when a variant is past its tolerance."""

from __future__ import annotations

from vidistill.commands.options import add_skip_bad_records, bad_records_for, flags_named, report_bad_records

HELP = "ONNX (fp32, fp16, bf16, int8) and TF SavedModel variants, each with parity, accuracy and a model card"


def add_arguments(parser) -> None:
    from vidistill.export.config import PRECISIONS

    parser.add_argument("model", help="converted student directory (vidistill convert), or a run directory")
    parser.add_argument("--out", required=True, help="directory for <precision>.onnx and <precision>.json files")
    parser.add_argument(
        "--precision",
        help=f"comma-separated, of: {', '.join(PRECISIONS)} (default: all; "
        "int8-static and int8-qat need --calibration-data; fp32 is always made)",
    )
    parser.add_argument(
        "--which",
        choices=["auto", "student", "teacher"],
        default="auto",
        help="for a run directory: which model to export (auto: the student if there is one)",
    )
    parser.add_argument("--eval-data", help="held-out labeled records: parity and accuracy (else random videos)")
    parser.add_argument("--eval-videos", type=int, default=0, help="at most this many held-out videos (0: all)")
    parser.add_argument(
        "--calibration-data",
        help="TRAINING records for int8-static calibration and int8-qat fine-tuning (not the held-out data)",
    )
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--qat-steps", type=int, default=50)
    parser.add_argument(
        "--target",
        choices=["cpu", "cuda"],
        default="cpu",
        help="provider the fp16/bf16 files are made for (its kernels decide what stays float32)",
    )
    parser.add_argument(
        "--full-int8-range",
        action="store_true",
        help="int8 weights over [-127, 127] instead of 7 bits: only for CPUs with VNNI / AMX and GPUs (on other x86 "
        "CPUs ONNX Runtime's int8 products can saturate)",
    )
    parser.add_argument(
        "--unfused",
        action="store_true",
        help="keep a transformer's attention, LayerNorm and GELU as tf2onnx wrote them (to measure the fusion)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    add_skip_bad_records(parser)


def run(args) -> int:

    from tabulate import tabulate

    from vidistill.export.config import ExportConfig
    from vidistill.export.exporter import export, summary_rows
    from vidistill.sources import export_source

    numbers = ("eval_videos", "calibration_batches", "batch_size", "qat_steps")  # ExportConfig checks them
    with flags_named(args, {name: name for name in numbers}):
        config = ExportConfig(
            precisions=[p.strip() for p in args.precision.split(",") if p.strip()] if args.precision else None,
            target=args.target,
            eval_data=args.eval_data,
            eval_videos=args.eval_videos,
            calibration_data=args.calibration_data,
            calibration_batches=args.calibration_batches,
            batch_size=args.batch_size,
            qat_steps=args.qat_steps,
            reduce_range=not args.full_int8_range,
            fuse=not args.unfused,
        )
    source = export_source(args.model, args.which)
    bad_records = bad_records_for(args)
    cards = export(source, args.out, config, bad_records=bad_records)
    report_bad_records(bad_records)
    print(tabulate(summary_rows(cards), headers="keys", floatfmt=".4g"))
    failed = [c.precision for c in cards if c.parity is not None and not c.parity.passed]
    unchecked = [c.precision for c in cards if c.parity is None]
    if unchecked:
        print(
            f"vidistill export: {', '.join(unchecked)} not checked here (made for --target {args.target}, which "
            "this machine lacks): run `vidistill bench` on it there"
        )
    if failed:
        print(f"vidistill export: {', '.join(failed)} past tolerance (see the cards in {args.out})")
        return 1
    print(f"wrote {len(cards)} variants and their model cards to {args.out}")
    return 0
