"""Find and load libflashdecoding.so; refuse one of another version.

Search order (the first that exists is loaded; a failure names every path tried):

1. ``$FLASHDECODING_LIBRARY`` when set: that file and nothing else.
2. Inside the installed package: ``flashdecoding/_lib/libflashdecoding.so``
   (where ``pip install .`` puts it), found through importlib.resources.
3. In a source checkout (the package imported from ``<repo>/python``):
   ``<repo>/build/libflashdecoding.so`` and ``<repo>/build/wheel/libflashdecoding.so``.
4. The dynamic linker's own search (``LD_LIBRARY_PATH``, ldconfig) for
   ``libflashdecoding.so``, e.g. after ``cmake --install`` into /usr/local.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path
from typing import List, Tuple

from ._version import __version__, version_int, version_text
from .errors import LibraryError

ENV_VAR = "FLASHDECODING_LIBRARY"


def _library_filename() -> str:
    if sys.platform == "win32":
        return "flashdecoding.dll"
    if sys.platform == "darwin":
        return "libflashdecoding.dylib"
    return "libflashdecoding.so"


def candidate_paths() -> Tuple[List[str], bool]:
    """The paths to try, in order, and whether they came from the env override."""
    override = os.environ.get(ENV_VAR)
    if override:
        return [override], True
    name = _library_filename()
    paths: List[str] = []
    pkg_dir = Path(__file__).resolve().parent
    lib_dirs = []
    try:
        from importlib import resources

        lib_dirs.append(Path(str(resources.files("flashdecoding").joinpath("_lib"))))
    except Exception:  # pragma: no cover - namespace/zip oddities
        pass
    if pkg_dir / "_lib" not in lib_dirs:
        lib_dirs.append(pkg_dir / "_lib")
    for lib_dir in lib_dirs:
        # The wheel may carry only the versioned names (libflashdecoding.so.0.2.0 and
        # its soname copy): the plain name first, then those, newest last-resort.
        paths.append(str(lib_dir / name))
        if lib_dir.is_dir():
            versioned = sorted(str(p) for p in lib_dir.glob(name + ".*"))
            paths.extend(p for p in versioned if p not in paths)
    repo = pkg_dir.parent.parent
    if (pkg_dir.parent.name == "python") and (repo / "CMakeLists.txt").exists():
        paths.append(str(repo / "build" / name))
        paths.append(str(repo / "build" / "wheel" / name))
    found = ctypes.util.find_library("flashdecoding")
    paths.append(found or name)  # a bare name lets dlopen search LD_LIBRARY_PATH
    return paths, False


def load() -> Tuple[ctypes.CDLL, str]:
    """Loads the library and checks its version; returns (CDLL, path)."""
    paths, from_env = candidate_paths()
    tried: List[str] = []
    for path in paths:
        is_bare = os.sep not in path
        if not is_bare and not os.path.exists(path):
            tried.append(f"{path} (no such file)")
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            tried.append(f"{path} ({exc})")
            continue
        _check_version(lib, path)
        return lib, path
    how = (f"{ENV_VAR} is set, so only that path was tried" if from_env else
           f"set {ENV_VAR} to the .so, or install the package with `pip install .`")
    raise LibraryError(
        "cannot load libflashdecoding; tried:\n  " + "\n  ".join(tried) + f"\n({how})")


def _check_version(lib: ctypes.CDLL, path: str) -> None:
    try:
        get_version = lib.fd_get_version
    except AttributeError:
        raise LibraryError(f"{path} is not libflashdecoding: it has no fd_get_version()") from None
    get_version.restype = ctypes.c_int
    get_version.argtypes = []
    got = int(get_version())
    want = version_int(__version__)
    if got != want:
        raise LibraryError(
            f"{path} is libflashdecoding {version_text(got)} but this Python package is "
            f"flashdecoding {__version__}; they must be the same version (rebuild with "
            f"`pip install .`, or point {ENV_VAR} at a matching library)")
