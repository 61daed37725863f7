"""Process memory: giving freed memory back to the OS, and refusing work that will not fit before it starts."""

from __future__ import annotations

import ctypes
import gc

import psutil

from vidistill.yt8m.errors import UserError


class OutOfMemory(UserError):
    """The work would need more memory than the machine has available (raised before it starts)."""


def trim_heap() -> None:
    """Free unreachable cycles now (tf2onnx's graphs are full of them, and hold copies of the weights until the
    cycle collector runs) and give freed memory back to the OS (glibc malloc_trim), so that the resident size shows
    what is live. The OS part is a no-op where there is no glibc."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def require_memory(needed: float, what: str, how: str) -> None:
    """Raises OutOfMemory when this process, which will peak at about `needed` bytes, needs more than it holds now
    plus what the machine has available (free + reclaimable), naming `what` needs it and `how` to get by: a clear
    error instead of the kernel killing the process minutes later."""
    held = psutil.Process().memory_info().rss
    available = psutil.virtual_memory().available
    if needed - held > available:
        raise OutOfMemory(
            f"{what} needs about {needed / 1e9:.1f} GB of memory (this process holds {held / 1e9:.1f} GB) and "
            f"this machine has {available / 1e9:.1f} GB more available: {how}"
        )
