"""Imports every family module so that each registers itself."""

from teachers import recurrent  # noqa: F401
from teachers import vlad  # noqa: F401
