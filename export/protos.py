"""Copying protobuf messages field by field, leaving one field out (the weights, or attributes about to be
rewritten): a new message without a copy of what it leaves out."""

from __future__ import annotations


def copy_fields(source, target, *, skip: str) -> None:
    """Sets every field of `source` but `skip` on `target` (repeated fields extended, messages copied)."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(target, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):  # a message
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)
