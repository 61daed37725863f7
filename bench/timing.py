"""The measurement loop and its statistics, independent of what is being run.

A cell is measured as: warm-up runs (discarded), then timed runs, each timed alone with perf_counter around one
synchronous call. Either exactly `runs` timed runs, or runs until `duration` seconds have passed and at least
`min_runs` were timed (p99 needs about 100 runs to be more than the maximum), giving up the minimum after
`time_cap` seconds (with at least 3 runs) so a slow cell cannot run for hours. Peak memory is the resident set
size sampled by a background thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import psutil

from vidistill.yt8m.errors import ConfigError
from vidistill.yt8m.memory import trim_heap

PERCENTILES = (50, 90, 99)
MIN_CAPPED_RUNS = 3


@dataclass
class LatencyStats:
    """Milliseconds. Percentiles interpolate linearly between the two closest ranks (numpy's default); std is the
    sample standard deviation (0 for one run)."""

    runs: int
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def latency_stats(seconds) -> LatencyStats:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ConfigError("no timed runs")
    p50, p90, p99 = np.percentile(ms, PERCENTILES)
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    return LatencyStats(
        runs=int(ms.size),
        mean_ms=float(ms.mean()),
        std_ms=std,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
    )


def time_once(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def timed_runs(
    run: Callable[[int], object],
    *,
    warmup: int = 5,
    runs: int | None = None,
    duration: float | None = 5.0,
    min_runs: int = 100,
    time_cap: float = 60.0,
    start: int = 0,
) -> list[float]:
    """Seconds of each timed call of `run(i)`; i counts up from `start` over warm-up and timed runs (the caller
    rotates its input sets with i % sets)."""
    if runs is None and duration is None:
        raise ConfigError("give runs or duration")
    if runs is not None and runs < 1:
        raise ConfigError(f"runs must be at least 1, not {runs}")
    i = start
    for _ in range(warmup):
        run(i)
        i += 1
    latencies: list[float] = []
    began = time.perf_counter()
    while True:
        started = time.perf_counter()
        run(i)
        ended = time.perf_counter()
        latencies.append(ended - started)
        i += 1
        if runs is not None:
            if len(latencies) >= runs:
                return latencies
            continue
        elapsed = ended - began
        if elapsed >= duration and len(latencies) >= min_runs:
            return latencies
        if elapsed >= max(time_cap, duration) and len(latencies) >= MIN_CAPPED_RUNS:
            return latencies


class PeakRSS:
    """Samples this process's resident set size every `interval` seconds while active (`with PeakRSS() as m:`);
    `baseline` is taken on entry (after trim_heap), `peak` is the largest sample, `delta_mb` the peak over the
    baseline."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline = 0
        self.peak = 0

    def sample(self) -> None:
        self.peak = max(self.peak, self._process.memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakRSS:
        trim_heap()
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20
