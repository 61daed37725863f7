"""The frame-selection policies' names and the arithmetic shared by the TF op (students/selection.py) and its numpy
twin (students/selection_numpy.py). No TensorFlow: the Predictor imports it."""

from __future__ import annotations

import numpy as np

from vidistill.yt8m.errors import ConfigError

POLICIES = ("uniform", "random", "first", "middle", "last", "fml")


def validate(k, policy) -> tuple[int, str]:
    """(k as an int, policy), or ValueError naming what is wrong."""
    if isinstance(k, np.integer):
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int):
        raise ConfigError(f"k must be a Python int >= 1 (the number of frames to select), got k={k!r}")
    if k < 1:
        raise ConfigError(f"k must be >= 1 (the number of frames to select), got k={k}")
    if policy not in POLICIES:
        raise ConfigError(f"unknown frame-selection policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return k, policy


def fml_block_sizes(k: int) -> tuple[int, int, int]:
    """Sizes of the first, middle and last blocks of the ``fml`` policy: k // 3 each, +1 for the first k % 3."""
    k, _ = validate(k, "fml")
    q, r = divmod(k, 3)
    return q + (r > 0), q + (r > 1), q
