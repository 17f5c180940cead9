"""Errors a person can act on. Each carries a message meant to be printed as is (no traceback)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in a DAG file, with where it is: ``file:line:col: path: message``."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConveyorError(Exception):
    """An expected failure: bad input, a missing run, an unreachable service. Exit code 1."""

    exit_code = 1


class SpecError(ConveyorError):
    """A DAG file (or its params) has problems; all of them are reported at once."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ParamError(ConveyorError):
    """A run's params do not fit the DAG's declared params."""


class NotFoundError(ConveyorError):
    """A DAG, run, step or attempt that does not exist."""


class UnavailableError(ConveyorError):
    """Redis or Docker cannot be reached; the message says which and how to fix it."""
