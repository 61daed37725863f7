"""The one exception type for bad input data."""


class DataError(ValueError):
    """Input data that cannot be used as it is; the message names the file (and record or line) and what to do."""
