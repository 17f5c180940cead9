"""Errors a person can act on. Each carries a message meant to be printed as is (no traceback)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in a DAG file, with where it is: ``file:line:col: path: message``.

    A ``warning`` is a file that is valid but probably does not mean what it says (a Quartz-style
    cron, ``calendar: UK``): shown as ``file:line:col: warning: path: message``, never stored, and
    an error only under ``ctl validate --strict``."""

    file: str
    line: int
    col: int
    path: str
    message: str
    severity: str = "error"  # or "warning"

    @property
    def is_warning(self) -> bool:
        return self.severity == "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" + (": warning" if self.is_warning else "")
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConveyorError(Exception):
    """An expected failure: bad input, a missing run, an unreachable service. Exit code 1.

    Every error a person can act on is one of these, so that ``ctl`` prints its message (one line,
    no traceback) with its exit code, and a daemon logs it and goes on.
    """

    exit_code = 1


class InputError(ConveyorError, ValueError):
    """Text a person wrote (a template, duration, condition, cron, calendar, outage, schedule) that
    does not mean what it should. Also a ValueError, so that code parsing values the standard way
    (``except ValueError``) keeps catching it."""


class ConfigError(InputError):
    """A bad setting: an environment variable (``CONVEYOR_*``, ``REDIS_URL``) or an option value that
    cannot be used. Exit code 2, like any other usage error; the message names the setting, the value
    and the forms it accepts."""

    exit_code = 2


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
