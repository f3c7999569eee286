"""The errors the data sets raise when they are missing, corrupt or cannot be fetched.

Each carries a one-line message that says what is wrong and what to do, so the command
line can print it without a traceback (these are the user's environment, not bugs).
They subclass the built-in exceptions callers already catch: a missing data set is a
``FileNotFoundError``, a checksum mismatch a ``ValueError``, a failed download or an
unusable cache folder an ``OSError``.
"""

from __future__ import annotations

__all__ = ["CacheError", "DataIntegrityError", "DataNotFoundError", "FetchError"]


class DataNotFoundError(FileNotFoundError):
    """A data set is not installed anywhere the loaders look.

    ``dataset`` is its registry name and ``command`` the command that gets it
    (``compactnn data fetch NAME``), for callers that report the skip in their own words.
    """

    def __init__(self, message: str, dataset: str = "", command: str = ""):
        super().__init__(message)
        self.dataset = dataset
        self.command = command

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # picklable across worker processes with its fields
        return (type(self), (str(self), self.dataset, self.command))


class DataIntegrityError(ValueError):
    """A file's SHA-256 differs from the pinned one (a corrupt or different file)."""


class FetchError(OSError):
    """A download failed: offline, refused, an HTTP error, or cut too often to resume."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CacheError(OSError):
    """The cache folder cannot be used: a file in the way, read-only, or out of space."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
