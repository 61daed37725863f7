"""Imports every family module so that each registers itself."""

from vidistill.teachers import recurrent  # noqa: F401
from vidistill.teachers import vlad  # noqa: F401
from vidistill.teachers import transformer  # noqa: F401
from vidistill.teachers import mixture  # noqa: F401
