"""Errors whose messages are written for users, and the exit codes the CLI gives them.

- 0: success
- 1: the command could not do its work: a missing table, file or model, bad data, a cluster
  too small, training failed in every attempt
- 2: usage or configuration error (bad arguments, an unknown or mistyped setting)
- 3: reconciliation failed: rows were lost or doubled (never expected: a bug to report)
- 4: an unexpected internal error (the trace is in the run's log file)
- 130: interrupted (Ctrl-C)
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RECONCILIATION = 3
EXIT_INTERNAL = 4
EXIT_INTERRUPTED = 130


class SparkerasError(RuntimeError):
    """A failure the user can act on: the message says what failed and what to do."""
    exit_code = EXIT_FAILED


class ReconciliationError(SparkerasError):
    """Rows were lost or duplicated between a stage's input and its output: never expected."""
    exit_code = EXIT_RECONCILIATION


class NotEnoughSlots(SparkerasError):
    """The cluster cannot run a barrier stage's tasks all at once."""


class TrainingFailed(SparkerasError):
    """Every attempt of the training barrier stage failed."""


class DataError(SparkerasError, ValueError):
    """The data cannot do what was asked: too few rows or classes, mixed image sizes, a
    table without the columns a model needs..."""


class UsageError(SparkerasError, ValueError):
    """An explicit setting or argument that cannot work (a batch larger than the data, an
    unknown format, petastorm on a Spark 4 stack...)."""
    exit_code = EXIT_USAGE


class InputNotFound(SparkerasError, FileNotFoundError):
    """No input files match the source."""


class MetastoreBusy(SparkerasError):
    """Another process holds the embedded (Derby) metastore, which admits one at a time."""


class JvmDidNotStart(SparkerasError):
    """The embedded Spark JVM exited before it answered (a bad JVM option, too much driver
    memory for the machine, a missing or wrong Java)."""


class ServerError(SparkerasError):
    """``sparkeras server`` could not start, or no server answers where one was expected."""
