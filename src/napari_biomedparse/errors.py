"""The documented failures of napari-biomedparse: one hierarchy, caught by the command line.

Every error here carries a message that says what to do; the command line prints it as one
line (``napari-biomedparse: error: ...``) and exits with status 1, without a traceback. Each
class also derives from the built-in exception a caller would expect (``ValueError`` for bad
input, ``FileExistsError`` for an existing output...), so ``except ValueError`` keeps working.

This module imports nothing, so that every layer may raise these errors.
"""

from __future__ import annotations

__all__ = [
    "BiomedParseError",
    "InvalidInputError",
    "SourceChangedError",
    "ResultExistsError",
    "OutputConflictError",
    "OutputLockedError",
    "SchedulerUnavailableError",
]


class BiomedParseError(Exception):
    """Base of the documented failures (the command line prints their message as one line)."""


class InvalidInputError(BiomedParseError, ValueError):
    """An input or parameter that cannot be processed as given (kind, shape, range, size)."""


class SourceChangedError(BiomedParseError, ValueError):
    """An unfinished or finished run was made from another image than the one given now."""


class ResultExistsError(BiomedParseError, FileExistsError):
    """A finished result exists at the output path.

    ``same_parameters`` is True when it was made from the same source with the same
    parameters (so it is the answer: nothing needs to be recomputed); otherwise
    ``differences`` lists what differs and the result is only replaced with ``overwrite``.
    """

    def __init__(self, message: str, *, path=None, same_parameters: bool = False, differences=()):
        super().__init__(message)
        self.path = path
        self.same_parameters = bool(same_parameters)
        self.differences = list(differences)


class OutputConflictError(BiomedParseError, ValueError):
    """The output path would destroy or overlap the input (``out`` = the source, inside it or
    holding it)."""


class OutputLockedError(BiomedParseError, RuntimeError):
    """Another live process is writing the same output."""


class SchedulerUnavailableError(BiomedParseError, ConnectionError):
    """No dask scheduler answers at the given address."""
