"""Errors a user causes and can fix: bad input, a missing file, no network, a checkpoint that does
not fit. The ``bilaf`` command line prints these in one line and exits 2; any other exception is
a bug and keeps its traceback.

Each class also derives from the built-in exception of its kind (and all from ``ValueError``, which
is what these errors were before the hierarchy), so library callers can catch ``ValueError`` or
``FileNotFoundError`` as they would from scikit-learn or NumPy.
"""

from __future__ import annotations


class BilafError(Exception):
    """Base class of every error the user can fix."""


class InvalidInputError(BilafError, ValueError):
    """A value, an argument or the content of a file is not what the tool accepts."""


class MissingFileError(BilafError, FileNotFoundError, ValueError):
    """A file or artifact the step needs is not there (often: an earlier step has not run)."""


class OfflineError(BilafError, ConnectionError, ValueError):
    """A download was needed and the network is unreachable."""


class CheckpointError(BilafError, ValueError):
    """A checkpoint or weights file is missing pieces or does not fit the model."""
