"""Exceptions: one class per msa_status_t, each a subclass of msa.Error.

The message is the library's msa_last_error() (or, for checks made in
Python before the call, one in the same style naming the argument).
Where a built-in exception means the same, the class derives from it too,
so `except ValueError` catches a bad argument and `except OSError` an I/O
failure.
"""

import builtins


class Error(Exception):
    """An msa call failed. `status` is the msa_status_t code."""

    status = None

    def __init__(self, message, status=None):
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self):
        return self.args[0] if self.args else ""


class InvalidArgument(Error, ValueError):
    """MSA_INVALID_ARGUMENT: a bad argument, shape, dtype or range."""
    status = 1


class NotFound(Error, LookupError):
    """MSA_NOT_FOUND: no such store, document or file."""
    status = 2


class Corruption(Error):
    """MSA_CORRUPTION: checksum mismatch or malformed data on disk."""
    status = 3


class IOError(Error, builtins.OSError):  # noqa: A001 (msa.IOError mirrors MSA_IO_ERROR)
    """MSA_IO_ERROR: the operating system failed a read, write or sync."""
    status = 4

    def __init__(self, message, status=None):
        # OSError reads two arguments as (errno, strerror); keep the one message.
        Error.__init__(self, message, status)

    def __str__(self):
        return self.message


class NotSupported(Error):
    """MSA_NOT_SUPPORTED: not built in, or not available on this machine."""
    status = 5


class AlreadyExists(Error):
    """MSA_ALREADY_EXISTS: store or document name already taken."""
    status = 6


class Internal(Error):
    """MSA_INTERNAL: a bug in msa."""
    status = 7


BY_STATUS = {cls.status: cls for cls in
             (InvalidArgument, NotFound, Corruption, IOError, NotSupported, AlreadyExists, Internal)}


def from_status(status, message):
    cls = BY_STATUS.get(status)
    if cls is None:  # a code newer than this wrapper
        return Error(f"{message} (status {status})", status)
    return cls(message)

# Shown as msa.NotFound (not msa.errors.NotFound) in tracebacks.
for _cls in (Error, *BY_STATUS.values()):
    _cls.__module__ = "msa"
del _cls
