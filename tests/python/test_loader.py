"""Finding and loading the library: env override, every path named on failure,
a library of another version refused with both versions, import without a GPU."""
from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest

import flashdecoding as fd
from flashdecoding import _loader
from conftest import run_python

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _shared_lib(tmp_path, name, source):
    if CC is None:
        pytest.skip("no C compiler to build a stand-in library")
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / f"lib{name}.so"
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return str(out)


def _load_in_subprocess(path):
    code = textwrap.dedent("""
        import flashdecoding as fd
        try:
            fd.library_version()
        except fd.LibraryError as e:
            assert isinstance(e, ImportError)
            print("LIBRARY_ERROR"); print(e)
        else:
            print("LOADED")
    """)
    r = run_python(code, env={"FLASHDECODING_LIBRARY": path})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_missing_library_names_the_path(tmp_path):
    missing = str(tmp_path / "nowhere" / "libflashdecoding.so")
    out = _load_in_subprocess(missing)
    assert out.startswith("LIBRARY_ERROR")
    assert missing in out and "no such file" in out
    assert "FLASHDECODING_LIBRARY" in out


def test_not_a_library_names_the_path_and_the_loader_error(tmp_path):
    junk = tmp_path / "libflashdecoding.so"
    junk.write_text("not an ELF file")
    out = _load_in_subprocess(str(junk))
    assert out.startswith("LIBRARY_ERROR") and str(junk) in out


def test_wrong_version_is_refused_with_both_versions(tmp_path):
    path = _shared_lib(tmp_path, "fdwrong", "int fd_get_version(void) { return 20304; }\n")
    out = _load_in_subprocess(path)
    assert out.startswith("LIBRARY_ERROR")
    assert "2.3.4" in out and fd.__version__ in out and path in out


def test_library_without_fd_get_version_is_refused(tmp_path):
    path = _shared_lib(tmp_path, "fdnone", "int something_else(void) { return 1; }\n")
    out = _load_in_subprocess(path)
    assert out.startswith("LIBRARY_ERROR") and "fd_get_version" in out


def test_right_version_but_missing_symbols_is_refused(tmp_path):
    ver = fd._version.version_int()
    path = _shared_lib(tmp_path, "fdhalf", f"int fd_get_version(void) {{ return {ver}; }}\n")
    out = _load_in_subprocess(path)
    assert out.startswith("LIBRARY_ERROR") and "lacks a symbol" in out


def test_env_override_loads_the_real_library():
    path = fd.library_path()
    out = _load_in_subprocess(path)
    assert out.strip() == "LOADED"


def test_default_search_names_the_package_lib_dir(monkeypatch):
    monkeypatch.delenv("FLASHDECODING_LIBRARY", raising=False)
    paths, from_env = _loader.candidate_paths()
    assert not from_env
    pkg_lib = os.path.join(os.path.dirname(fd.__file__), "_lib")
    assert any(p.startswith(pkg_lib) for p in paths)


def test_versions_agree():
    assert fd.library_version() == fd.__version__


def test_import_needs_no_gpu_and_the_first_gpu_call_says_so():
    code = textwrap.dedent("""
        import flashdecoding as fd
        d = fd.FlashDecodingDescriptor.new(1, 8, 16, 64, fd.ElementKind.F16)
        p = fd.FlashDecodingPlan.select(None, d)   # host-only: works
        try:
            fd.cuda.DeviceBuffer(64)
        except fd.CudaError as e:
            print("CUDA_ERROR", e)
    """)
    # CUDA_VISIBLE_DEVICES="" hides every GPU, also on a machine that has one
    r = run_python(code, env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("CUDA_ERROR") and "no CUDA GPU" in r.stdout


def test_import_without_the_library_still_works():
    code = "import flashdecoding as fd; print(fd.DispatchKey(fd.SmArch.SM90, fd.DType.F16, 64).kernel_name())"
    r = run_python(code, env={"FLASHDECODING_LIBRARY": "/nonexistent/libflashdecoding.so"})
    assert r.returncode == 0, r.stderr
    assert "fd::decode_kernel<fd::Identity<__half>, 64, fd::ContiguousKv>" in r.stdout
