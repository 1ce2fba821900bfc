"""Errors that the CLI turns into one clear message and exit code 2."""

from __future__ import annotations


class NegminerError(Exception):
    """A user-facing error: the CLI prints it without a traceback and exits with 2."""

    exit_code = 2


class DataError(NegminerError):
    """Bad input data. Names the file, the line (1-based, if any) and the problem."""

    def __init__(self, path, problem: str, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        where = self.path if line is None else f"{self.path}:{line}"
        what = problem if field is None else f"field '{field}': {problem}"
        super().__init__(f"{where}: {what}")


class ConfigError(NegminerError):
    """A bad option or config file."""


class TrainingDiverged(NegminerError):
    """A non-finite loss or gradient with ``--on-nan stop``: nothing of that step was applied."""

    exit_code = 3
