"""The loaded, bound library (loaded once, on first use) and status -> exception."""
from __future__ import annotations

import ctypes
import threading
from typing import Optional

from . import _capi, _loader
from .errors import Error, LibraryError, error_from_status

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_path: Optional[str] = None


def lib() -> ctypes.CDLL:
    """The bound libflashdecoding; raises LibraryError naming every path tried."""
    global _lib, _path
    if _lib is None:
        with _lock:
            if _lib is None:
                loaded, path = _loader.load()
                try:
                    _capi.bind(loaded)
                except AttributeError as exc:
                    raise LibraryError(f"{path} lacks a symbol of flashdecoding.h: {exc}") from None
                _lib, _path = loaded, path
    return _lib


def library_path() -> str:
    lib()
    assert _path is not None
    return _path


def status_string(status: int) -> str:
    return lib().fd_status_string(int(status)).decode("utf-8", "replace")


def last_error_message() -> str:
    raw = lib().fd_last_error_message()
    return raw.decode("utf-8", "replace") if raw else ""


def error_for(status: int, *, needed: Optional[int] = None, got: Optional[int] = None) -> Error:
    """The exception for ``status`` with this thread's C message (read right away)."""
    message = last_error_message() or status_string(status)
    return error_from_status(status, message, needed=needed, got=got)


def check(status: int, *, needed: Optional[int] = None, got: Optional[int] = None) -> None:
    """Raises the exception for a non-zero C status."""
    if status != 0:
        raise error_for(status, needed=needed, got=got)
