"""Exceptions, and the one place where a C status becomes one of them.

The message is the library's own (``fd_last_error_message()``), so a Python user
and a C host read the same words for the same refusal.

=============================  =====================  ======================
C status                       exception              extra attributes
=============================  =====================  ======================
FD_STATUS_INVALID_PROBLEM (1)  ``InvalidProblem``
FD_STATUS_UNSUPPORTED (2)      ``Unsupported``
FD_STATUS_WORKSPACE_TOO_SMALL  ``WorkspaceTooSmall``  ``needed``, ``got``
FD_STATUS_INVALID_POINTER (4)  ``InvalidPointer``     (a subclass of InvalidProblem)
FD_STATUS_CUDA_ERROR (5)       ``CudaError``          ``code`` (cudaError_t or None)
(DispatchKey rules)            ``DispatchError``
(loading the .so)              ``LibraryError``
=============================  =====================  ======================

Every exception carries ``status`` (the C code, or None for Python-only errors).
"""
from __future__ import annotations

import re
from typing import Optional

STATUS_SUCCESS = 0
STATUS_INVALID_PROBLEM = 1
STATUS_UNSUPPORTED = 2
STATUS_WORKSPACE_TOO_SMALL = 3
STATUS_INVALID_POINTER = 4
STATUS_CUDA_ERROR = 5


class Error(Exception):
    """Base of every flashdecoding error."""

    status: Optional[int] = None

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidProblem(Error, ValueError):
    """Extents, divisibility, strides, shapes or overflow break a rule."""

    status = STATUS_INVALID_PROBLEM


class InvalidPointer(InvalidProblem):
    """A NULL or misaligned pointer, or an output overlapping an input.

    A subclass of InvalidProblem: ``except InvalidProblem`` catches it too.
    """

    status = STATUS_INVALID_POINTER


class Unsupported(Error):
    """A valid problem this library does not implement (dtype, head_dim, feature)."""

    status = STATUS_UNSUPPORTED


class WorkspaceTooSmall(Error):
    """The workspace is missing or smaller than ``needed`` bytes (``got`` given)."""

    status = STATUS_WORKSPACE_TOO_SMALL

    def __init__(self, message: str, needed: int, got: int):
        super().__init__(message)
        self.needed = int(needed)
        self.got = int(got)


class CudaError(Error, RuntimeError):
    """The CUDA runtime failed, or there is no usable GPU. ``code`` is the
    cudaError_t value when known, else None."""

    status = STATUS_CUDA_ERROR

    def __init__(self, message: str, code: Optional[int] = None):
        super().__init__(message)
        self.code = code


class DispatchError(Error):
    """A DispatchKey names no kernel this library can have (or has)."""


class LibraryError(Error, ImportError):
    """libflashdecoding could not be found or loaded, or has another version."""


_BY_STATUS = {
    STATUS_INVALID_PROBLEM: InvalidProblem,
    STATUS_UNSUPPORTED: Unsupported,
    STATUS_INVALID_POINTER: InvalidPointer,
}


def _cuda_code_from(message: str) -> Optional[int]:
    """Best effort: the cudaError_t number in a CUDA message, e.g. 'cudaErrorNoDevice (100)'
    or 'CUDA error 100'. None when the message names none."""
    m = re.search(r"\((\d+)\)", message) or re.search(r"(?:error|code)[ =:]*(\d+)", message, re.I)
    if m:
        return int(m.group(1))
    m = re.search(r"\b(cudaError\w+)", message)
    if m:
        try:
            from .cuda import cuda_error_code_from_name

            return cuda_error_code_from_name(m.group(1))
        except Exception:  # cuda-python missing: the name stays in the message
            return None
    return None


def _workspace_numbers(message: str) -> tuple:
    """(needed, got) from the C message 'workspace_bytes = GOT is smaller than the NEEDED
    bytes ...'; (0, 0) when it does not read that way."""
    m = re.search(r"workspace_bytes = (\d+) is smaller than the (\d+)", message)
    return (int(m.group(2)), int(m.group(1))) if m else (0, 0)


def error_from_status(status: int, message: str, *, needed: Optional[int] = None,
                      got: Optional[int] = None) -> Error:
    """The exception for a non-zero C status with the library's message."""
    if status == STATUS_WORKSPACE_TOO_SMALL:
        if needed is None or got is None:
            n, g = _workspace_numbers(message)
            needed = n if needed is None else needed
            got = g if got is None else got
        return WorkspaceTooSmall(message, needed, got)
    if status == STATUS_CUDA_ERROR:
        return CudaError(message, _cuda_code_from(message))
    cls = _BY_STATUS.get(status)
    if cls is None:
        return Error(message, status)
    return cls(message)
