"""Options several commands share."""

from __future__ import annotations

import re

from vidistill.yt8m.errors import ConfigError


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
