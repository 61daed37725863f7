"""The user-error types: what a user can fix (the input data, an option, a configuration, the environment).

The command line prints a `UserError` as one line and exits with code 2; any other exception is a bug in
vidistill and keeps its traceback. `UserError` is a ValueError, so code that catches ValueError still works.
"""


class UserError(ValueError):
    """Something the user can fix; the message names it (file, record, option) and says what to do."""

    # Exception's own constructor: TensorFlow's autograph re-raises an error raised while tracing a tf.function
    # with its own type only when the type's __init__ is Exception.__init__ (else it raises a StagingError, which
    # the command line would show as a traceback)
    __init__ = Exception.__init__


class DataError(UserError):
    """Input data that cannot be used as it is; the message names the file (and record or line) and what to do."""


class ConfigError(UserError):
    """An option, argument or configuration value that cannot be used; the message names it and what to do."""
