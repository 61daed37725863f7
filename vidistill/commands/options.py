"""Options several commands share."""

from __future__ import annotations


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
