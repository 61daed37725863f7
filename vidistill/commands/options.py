"""Options several commands share."""

from __future__ import annotations

import contextlib
import re

from vidistill.yt8m.errors import ConfigError


def flag(dest: str) -> str:
    """The flag of an argparse destination: batch_size -> --batch-size."""
    return "--" + dest.replace("_", "-")


def number(rule: str, kind=int):
    """argparse type of a numeric flag no configuration holds (eval's --batch-size, synth's --workers): a `kind`
    under `rule` (teachers.config.range_problem: ">= 0", ">= 1", "> 0"); argparse shows what is wrong. A flag
    that sets a configuration's option keeps type=int / float: the configuration checks it (flags_named)."""
    import argparse

    from vidistill.teachers.config import range_problem

    def parse(text: str):
        value = kind(text)  # a ValueError: argparse's "invalid int value: 'ten'"
        problem = range_problem(value, rule)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__
    return parse


@contextlib.contextmanager
def flags_named(args, options: dict[str, str]):
    """Inside, an option out of its range (teachers.config.check_range) that a flag set is said with that flag:
    `options` maps the option ("data.batch_size") to the flag's argparse destination ("batch_size"), and the
    message becomes "--batch-size (data.batch_size) must be >= 1, got 0" ("--steps must be ..." where the two
    are the same words). A flag not given (None) leaves the message as it is: the value came from elsewhere."""
    from vidistill.teachers.config import OutOfRange

    try:
        yield
    except OutOfRange as e:
        dest = options.get(e.option)
        if dest is None or getattr(args, dest, None) is None:
            raise
        named = flag(dest) if dest == e.option else f"{flag(dest)} ({e.option})"
        raise ConfigError(f"{named} {e.problem}") from None


def add_skip_bad_records(parser) -> None:
    parser.add_argument(
        "--skip-bad-records",
        action="store_true",
        help="skip bad records (each one printed) instead of stopping at the first, and report their count",
    )


def bad_records_for(args):
    """A readers.BadRecords when --skip-bad-records was given, else None (imports TensorFlow only then)."""
    if not getattr(args, "skip_bad_records", False):
        return None
    from vidistill.yt8m.readers import BadRecords

    return BadRecords()


def report_bad_records(bad_records) -> None:
    if bad_records is not None:
        print(bad_records.summary())


SHIFT_HELP = (
    "with --segments: shift test-time augmentation, e.g. -1,0,1: each segment's score is the mean of the model's "
    "scores of its 5-frame window shifted by each shift (frames [start+s, start+s+5)), clipped at the video's ends "
    "(a shifted window keeps only the frames inside the video, the model masks the rest; np.roll would wrap "
    "around); a window left with no frame is left out. |s| <= 4, each shift once. Default 0: the segment itself"
)


def add_shift(parser) -> None:
    """--shift LIST (segment test-time augmentation). A value such as -1,0,1 starts with "-": argparse takes it
    for an option unless it looks like a negative number, so this parser's notion of one also covers lists."""
    parser.add_argument("--shift", default="0", metavar="S,S,...", help=SHIFT_HELP)
    parser._negative_number_matcher = re.compile(r"^-\d+(,-?\d+)*$|^-\d*\.\d+$")


def shifts_for(args) -> tuple[int, ...]:
    """The shifts of --shift (ConfigError naming it when bad, or given without --segments)."""
    from vidistill.yt8m.segment_windows import parse_shifts

    shifts = parse_shifts(args.shift)
    if shifts != (0,) and not args.segments:
        raise ConfigError("--shift shifts the windows of 5-frame segments: pass --segments as well")
    return shifts


def frame_counts(text: str) -> tuple[int, ...]:
    """argparse type of --frames: K or a set K1,K2,... (argparse shows the message of a bad one)."""
    import argparse

    from vidistill.students.student import parse_frame_counts

    try:
        return parse_frame_counts(text, option="")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_frames(parser, *, several: bool) -> None:
    """--frames for the commands that run a student: which k of an any-k student (several: each k of a set)."""
    parser.add_argument(
        "--frames",
        type=frame_counts,
        help="an any-k student's k (default: its largest)" + ("; a set K1,K2,... runs each of them" if several else ""),
    )


def frames_of(args) -> tuple[int, ...]:
    """The k's of --frames (() when not given); a ConfigError with --segments, which scores 5-frame segments."""
    if args.frames and getattr(args, "segments", False):
        raise ConfigError("--frames is for whole videos (an any-k student); --segments scores 5-frame segments")
    return args.frames or ()


def one_k(args) -> int | None:
    """The single k of --frames (None when not given); a ConfigError for a set (or with --segments)."""
    if not frames_of(args):
        return None
    if len(args.frames) > 1:
        raise ConfigError(f"--frames: this command runs one k, got {','.join(map(str, args.frames))}: pass one")
    return args.frames[0]
