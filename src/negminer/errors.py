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


class SaveError(NegminerError):
    """Writing a file failed (disk full, permissions): the previous file or checkpoint is intact."""

    exit_code = 1


class MissingSplit(NegminerError, KeyError):
    """A split the run needs is not in the data (a KeyError too, for callers that catch that)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Interrupted(NegminerError):
    """SIGINT / SIGTERM: the run saved a checkpoint and stopped; ``--resume`` continues it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class CheckpointError(NegminerError):
    """A checkpoint file that cannot be read: names the file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        super().__init__(f"{path}: {problem}")
