"""`ExportError`: an export that cannot be done, with what to do (the CLI prints it as one line, exit code 2)."""


class ExportError(ValueError):
    pass
