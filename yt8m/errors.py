"""The user-error types: what a user can fix (the input data, an option, a configuration, the environment).

The command line prints a `UserError` as one line and exits with code 2; any other exception is a bug in
vidistill and keeps its traceback. `UserError` is a ValueError, so code that catches ValueError still works.
"""


class UserError(ValueError):
    """Something the user can fix; the message names it (file, record, option) and says what to do."""


class DataError(UserError):
    """Input data that cannot be used as it is; the message names the file (and record or line) and what to do."""


class ConfigError(UserError):
    """An option, argument or configuration value that cannot be used; the message names it and what to do."""
