"""`ExportError`: an export that cannot be done, with what to do (the CLI prints it as one line, exit code 2)."""

from vidistill.yt8m.errors import UserError


class ExportError(UserError):
    """An export that cannot be done as asked; the message says what to do."""
