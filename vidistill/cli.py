"""The `vidistill` command: one subcommand per stage, each in its own module under vidistill/commands/."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from vidistill import __version__
from vidistill.console import quiet_tensorflow

# subcommand name -> module in vidistill.commands (imported when the command line is built; heavy imports
# such as TensorFlow happen inside each command's run()).
COMMANDS = {
    "synth": "synth",
    "baseline": "baseline",
    "score": "score",
    "models": "models",
    "train": "train",
    "ensemble": "ensemble",
    "teacher-outputs": "teacher_outputs",
    "convert": "convert",
    "finetune": "finetune",
    "eval": "eval",
    "predict": "predict",
    "export": "export",
    "experiment": "experiment",
    "demo": "demo",
    "bench-data": "bench_data",
    "bench": "bench",
    "bench-scale": "bench_scale",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidistill",
        description="Teacher-student efficient inference for video classification on YouTube-8M features.",
    )
    parser.add_argument("--version", action="version", version=f"vidistill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"vidistill.commands.{module_name}")
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(command)
        command.set_defaults(handler_=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the terminal
    args = build_parser().parse_args(argv)
    from vidistill.yt8m.errors import UserError

    try:
        with quiet_tensorflow():
            return int(args.handler_(args) or 0)
    except (UserError, FileExistsError, FileNotFoundError) as e:  # anything else is a bug: its traceback shows
        print(f"vidistill {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vidistill {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a TensorFlow error raised by a reader's assertion carries a DataError
        from vidistill.yt8m.readers import explain

        data_error = explain(e)
        if data_error is None:
            raise
        print(f"vidistill {args.command}: error: {data_error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
