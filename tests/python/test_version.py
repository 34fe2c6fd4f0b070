"""One version everywhere: header macros, pyproject, the package, the library."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import flashdecoding as fd

ROOT = Path(__file__).resolve().parents[2]


def test_header_macros_match_the_package():
    header = ROOT / "native" / "include" / "flashdecoding" / "flashdecoding.h"
    if not header.exists():
        pytest.skip("not run from a source tree")
    text = header.read_text()
    parts = [re.search(rf"#define FD_VERSION_{p} (\d+)", text).group(1)
             for p in ("MAJOR", "MINOR", "PATCH")]
    assert ".".join(parts) == fd.__version__
    assert int(re.search(r"#define FD_FLASH_DECODING_MAX_HEAD_DIM (\d+)", text).group(1)) == \
        fd.FLASH_DECODING_MAX_D


def test_pyproject_matches_the_package():
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("not run from a source tree")
    m = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.M)
    assert m and m.group(1) == fd.__version__


def test_library_matches_the_package():
    assert fd.library_version() == fd.__version__
