"""The command line's stderr without TensorFlow's start-up chatter.

TensorFlow's C++ side logs before absl is initialized (`WARNING: All log messages before absl::InitializeLog()
...`, `I0000 ... port.cc] oneDNN custom operations are on`, `Could not find cuda drivers`, and on a machine without
a GPU `E0000 ... failed call to cuInit`), straight to file descriptor 2, once per process (synth workers
included), whatever TF_CPP_MIN_LOG_LEVEL says. Two more of its lines say nothing a user can act on: oneDNN's
"supports DT_BOOL only on platforms with AVX-512" (an error-level line, printed on AVX-512 machines too, before
falling back to Eigen), and the "Output shapes may be inaccurate" warning for every while loop of a loaded
SavedModel (TensorFlow's own loop metadata, recomputed at load). `quiet_tensorflow()` points descriptor 2 at a
pipe and forwards everything but those lines: our messages, progress bars (partial lines go through at once),
warnings and tracebacks pass untouched. VIDISTILL_TF_LOGS=1 turns the filter off.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

# the lines dropped: absl's banner, and TensorFlow / XLA log lines at INFO level or the known no-GPU error
NOISE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|I\d{4} [\d:. ]+\s+\d+ \S+:\d+\] "
    rb"|[EW]\d{4} [\d:. ]+\s+\d+ cuda_(?:platform|executor|diagnostics)\.cc:\d+\] (?:failed call to cuInit|.*CUDA)"
    rb"|E\d{4} [\d:. ]+\s+\d+ util\.cc:\d+\] oneDNN supports DT_BOOL only on platforms with AVX-512\."
    rb"|W\d{4} [\d:. ]+\s+\d+ graph_constructor\.cc:\d+\] Node '[^']*' has \d+ outputs but the _output_shapes "
    rb"attribute specifies shapes for \d+ outputs\. Output shapes may be inaccurate\."
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
    rb"|This TensorFlow binary is optimized to use available CPU instructions"
)
_LINE_START = re.compile(rb"(?:W(?:A(?:R(?:N(?:I(?:N(?:G(?::.*)?)?)?)?)?)?)?|[IEW]\d{0,4}(?: .*)?|T(?:o.*|h.*)?)?$")


def is_noise(line: bytes) -> bool:
    return NOISE.match(line) is not None


def _split_partial(pending: bytes) -> tuple[bytes, bytes]:
    """(what can go out now, the tail that may still become a noise line)."""
    for i in range(len(pending)):
        if pending[i : i + 1] in b"WIET" and _LINE_START.match(pending, i):
            return pending[:i], pending[i:]
    return pending, b""


def _clean(line: bytes) -> bytes:
    """A complete line without its noise: a noise line goes, and so does one appended to a progress bar's text
    (which has no newline of its own), the bar's part kept."""
    found = NOISE.search(line)
    if found is None:
        return line + b"\n"
    return line[: found.start()]


class _Filter:
    """Reads the pipe behind descriptor 2 and writes what is not noise to `out` (the real stderr)."""

    def __init__(self, read_fd: int, out_fd: int):
        self.read_fd, self.out_fd = read_fd, out_fd
        self.thread = threading.Thread(target=self._run, name="vidistill-stderr", daemon=True)

    def _write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.out_fd, data) :]

    def _run(self) -> None:
        pending = b""  # the start of a line that may still turn out to be noise
        while chunk := os.read(self.read_fd, 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            self._write(b"".join(_clean(line) for line in lines))
            ready, pending = _split_partial(pending)  # a progress bar's update goes through at once
            self._write(ready)
        self._write(_clean(pending)[: len(pending)] if pending else b"")


@contextlib.contextmanager
def quiet_tensorflow():
    """While inside, descriptor 2 goes through the noise filter (no-op with VIDISTILL_TF_LOGS=1)."""
    if os.environ.get("VIDISTILL_TF_LOGS") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 (an embedded interpreter): nothing to filter
        yield
        return
    read_fd, write_fd = os.pipe()
    relay = _Filter(read_fd, saved)
    relay.thread.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer here is gone: the relay reads to the end and stops
        relay.thread.join(timeout=5)
        os.close(read_fd)
        os.close(saved)
