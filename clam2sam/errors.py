"""One error tree for the whole project; the CLI turns it into exit codes in one place.

Every message says what went wrong, where (slide id and file), and what to do about it.
"""
from __future__ import annotations


class Clam2SamError(Exception):
    """Base class. ``str(err)`` is a complete, user-facing message.

    Args:
        message: what is wrong.
        slide: slide id concerned, if any.
        path: file concerned, if any.
        fix: what the user can do about it.
    """

    def __init__(self, message: str, *, slide: str | None = None, path: object | None = None,
                 fix: str | None = None):
        self.message = message
        self.slide = slide
        self.path = None if path is None else str(path)
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = []
        if self.slide is not None:
            parts.append(f"slide {self.slide!r}")
        if self.path is not None:
            parts.append(f"{self.path}")
        where = ": ".join(parts)
        msg = f"{where}: {self.message}" if where else self.message
        if self.fix:
            msg += f" -- {self.fix}"
        return msg

    def __reduce__(self):  # picklable across worker processes
        return (_rebuild, (type(self), self.message, self.slide, self.path, self.fix))


def _rebuild(cls, message, slide, path, fix):
    return cls(message, slide=slide, path=path, fix=fix)


class UsageError(Clam2SamError):
    """Bad combination of options or arguments (exit code 2)."""


class InputFormatError(Clam2SamError):
    """A source file is unreadable, truncated, inconsistent or of an unknown layout."""


class LegacyFormatError(InputFormatError):
    """A legacy CLAM file that cannot be converted without more information."""


class UnsafeInputError(InputFormatError):
    """A pickle / .pt file holds objects outside the allow-list (refused, never executed)."""


class SegmentsError(InputFormatError):
    """A Segments pickle or SAM result that does not fit the slide."""


class StoreError(Clam2SamError):
    """The Zarr store is missing, locked, of another schema, or corrupt."""


class StoreExistsError(StoreError):
    """The output exists and neither resume nor --overwrite applies."""


class StoreLockedError(StoreError):
    """Another process holds the store's write lock."""


class SamError(Clam2SamError):
    """SAM model / checkpoint / slide reading problem in the SAM pass."""


class TrainError(Clam2SamError):
    """Training / evaluation problem (bad config, corrupt store at training time, ...)."""
