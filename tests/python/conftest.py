"""Shared fixtures: the library, fake device arrays for host-only checks, GPU skips.

GPU tests carry the ``gpu`` marker (``@gpu`` or ``pytestmark = gpu``). Without a
usable CUDA device they are skipped with the reason. With ``FD_REQUIRE_GPU=1``
(set by scripts/gpu_check.sh on a GPU machine) a test that would be skipped for
a missing GPU, PyTorch or CuPy, or for a PyTorch without CUDA, fails instead,
with the reason (whole modules skipped at import included). Skips for facts of
the machine or build (a second GPU, free memory, an older GPU) stay skips.
``FD_ALLOW_SKIP`` (comma separated words, e.g. ``CuPy``) lets a skip whose
reason names one of them stay a skip. The terminal summary lists, per test
file, what ran and what was skipped and why, so a run says plainly which
suites ran and which optional dependency was missing."""
from __future__ import annotations

import collections
import ctypes
import os
import subprocess
import sys

import pytest

import flashdecoding as fd
from flashdecoding import _capi, _native
from flashdecoding.cuda import gpu_status

HAS_GPU, NO_GPU_REASON = gpu_status()

REQUIRE_GPU = os.environ.get("FD_REQUIRE_GPU", "") not in ("", "0")
ALLOWED_SKIPS = [w.strip().lower() for w in os.environ.get("FD_ALLOW_SKIP", "").split(",")
                 if w.strip()]

# The marker of every test that needs a CUDA device (see pytest_runtest_setup).
gpu = pytest.mark.gpu

# Made-up device addresses for host-only checks (never dereferenced: every function
# these tests call on them is documented as host-only).
BASE = 1 << 40
REGION = 1 << 34


def addr(i: int) -> int:
    """Start of the i-th disjoint fake region."""
    return BASE + i * REGION


class RecordedLaunches:
    """Stands in for a C run function (fd_decode, fd_merge_states): records a copy of
    each params struct and answers with the matching check's status, so its message
    stays the thread's last error. Host-only tests see what Python would launch."""

    def __init__(self, struct, check: str):
        self.calls, self.statuses = [], []
        self._struct, self._check = struct, getattr(_native.lib(), check)

    def __call__(self, params):
        self.calls.append(self._struct.from_buffer_copy(params))
        self.statuses.append(self._check(ctypes.byref(params)))
        return self.statuses[-1]


@pytest.fixture
def launches(monkeypatch):
    """fd_decode replaced by a RecordedLaunches (a test module may define its own)."""
    rec = RecordedLaunches(_capi.FdDecodeParams, "fd_decode_check")
    monkeypatch.setattr(fd.plan, "_c_decode", rec)
    return rec


class FakeCudaArray:
    """An object with a CUDA array interface v3 over a fake address (strides in bytes)."""

    def __init__(self, ptr, shape, typestr="<f2", strides=None, readonly=False, stream=None,
                 mask=None):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape), "typestr": typestr, "data": (ptr, readonly),
            "strides": None if strides is None else tuple(strides), "version": 3,
            "stream": stream, "mask": mask}


def contiguous(shape):
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(out))


def fake_args(desc, typestr=None, shapes=None, strides=None):
    """FlashDecodingArgs over four disjoint fake regions with C-order (or given) layouts."""
    typestr = typestr or ("<f2" if desc.element is fd.ElementKind.F16 else None)
    shapes = shapes or {}
    strides = strides or {}
    default = {"q": desc.q_shape(), "k": desc.kv_shape(), "v": desc.kv_shape(), "y": desc.y_shape()}
    tensors = {}
    for i, name in enumerate("qkvy"):
        shape = shapes.get(name, default[name])
        stride = strides.get(name, contiguous(shape))
        cls = fd.TensorMut if name == "y" else fd.TensorRef
        tensors[name] = cls(addr(i), shape, stride, dtype=desc.element)
        if typestr is not None and typestr != "<f2":
            item = int(typestr[2:])
            tensors[name] = cls(FakeCudaArray(addr(i), shape, typestr,
                                              [s * item for s in stride]))
    return fd.FlashDecodingArgs(tensors["q"], tensors["k"], tensors["v"], tensors["y"])


@pytest.fixture(scope="session")
def lib():
    return _native.lib()


def c_message() -> str:
    return _native.last_error_message()


def run_python(code: str, env=None, timeout=120):
    """Runs ``code`` in a fresh interpreter with this one's sys.path; returns CompletedProcess."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if env:
        for key, value in env.items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------ GPU skips and FD_REQUIRE_GPU

# Skip reasons that FD_REQUIRE_GPU=1 turns into failures: the device or a GPU
# dependency is missing. Other skips (a second GPU, free memory, a build
# without fp8 cells) are facts of the machine or build and stay skips; the
# summary lists them with their reasons.
REQUIRED_CATEGORIES = ("no GPU", "torch missing", "PyTorch without CUDA", "CuPy missing")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gpu: needs a CUDA GPU; skipped without one, a failure with FD_REQUIRE_GPU=1")


def skip_category(reason: str) -> str:
    """What a skip reason is about: 'no GPU', 'torch missing', 'PyTorch without CUDA',
    'CuPy missing', 'transformers missing', 'module missing' (another optional
    import), or 'other'."""
    r = reason.lower()
    missing = any(w in r for w in ("import", "no module", "not installed"))
    if r.startswith("needs a cuda gpu"):
        return "no GPU"
    if "cupy" in r and missing:
        return "CuPy missing"
    if "transformers" in r and missing:
        return "transformers missing"
    if "torch" in r and missing:
        return "torch missing"
    if "torch" in r and "no cuda device" in r:
        # On a machine without a GPU this is the missing GPU, not PyTorch.
        return "PyTorch without CUDA" if HAS_GPU else "no GPU"
    if missing:
        return "module missing"
    return "other"


def _allowed(reason: str) -> bool:
    r = reason.lower()
    return any(word in r for word in ALLOWED_SKIPS)


def _must_not_skip(reason: str) -> bool:
    return REQUIRE_GPU and skip_category(reason) in REQUIRED_CATEGORIES and not _allowed(reason)


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is None or HAS_GPU:
        return
    reason = f"needs a CUDA GPU: {NO_GPU_REASON}"
    if _must_not_skip(reason):
        pytest.fail(f"FD_REQUIRE_GPU=1 but this GPU test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(getattr(longrepr, "longrepr", longrepr))
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def _fail_instead(report, what: str) -> None:
    reason = _skip_reason(report)
    report.outcome = "failed"
    report.longrepr = (f"FD_REQUIRE_GPU=1: {what} would have been skipped "
                       f"({skip_category(reason)}): {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and _must_not_skip(_skip_reason(report)):
        # A GPU machine's check must not pass by skipping.
        _fail_instead(report, "this test")


# Modules skipped at import (pytest.importorskip("torch") at the top) for a
# reason FD_REQUIRE_GPU=1 does not accept: the run fails at its end, after the
# other modules ran (a failed collection would stop them).
_REFUSED_MODULE_SKIPS = []


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _must_not_skip(_skip_reason(report)):
        reason = _skip_reason(report)
        _REFUSED_MODULE_SKIPS.append(
            f"{report.nodeid or collector.nodeid}: skipped at import ({skip_category(reason)}): "
            f"{reason}")


def pytest_sessionfinish(session, exitstatus):
    if _REFUSED_MODULE_SKIPS and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    """Per test file: passed / failed / skipped, and the skips grouped by why."""
    stats = terminalreporter.stats
    files = collections.OrderedDict()
    others = collections.Counter()

    def entry(nodeid):
        name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        return files.setdefault(name, {"passed": 0, "failed": 0, "skipped": 0,
                                       "why": collections.Counter()})

    for key in ("passed", "failed", "error", "skipped"):
        for report in stats.get(key, []):
            nodeid = getattr(report, "nodeid", "")
            when = getattr(report, "when", None)
            if not nodeid or when == "teardown" or (key == "passed" and when != "call"):
                continue
            e = entry(nodeid)
            if key == "skipped":
                reason = _skip_reason(report)
                category = skip_category(reason)
                e["skipped"] += 1
                e["why"][category] += 1
                if category in ("other", "module missing"):
                    others[reason] += 1
            elif key in ("failed", "error"):
                e["failed"] += 1
            else:
                e["passed"] += 1
    write = terminalreporter.write_line
    if not files and not _REFUSED_MODULE_SKIPS:
        return
    terminalreporter.section("suites")
    totals = collections.Counter()
    for name, e in files.items():
        why = ", ".join(f"{n} {c}" for c, n in sorted(e["why"].items()))
        line = (f"{name:32s} {e['passed']:5d} passed {e['failed']:4d} failed "
                f"{e['skipped']:4d} skipped")
        if why:
            line += f"  ({why})"
        write(line)
        totals.update(e["why"])
    gpu_line = "GPU: present" if HAS_GPU else f"GPU: none ({NO_GPU_REASON})"
    if REQUIRE_GPU:
        gpu_line += "; FD_REQUIRE_GPU=1: a missing GPU, torch or CuPy fails the run"
    write(gpu_line)
    for category, hint in (("torch missing", "pip install torch"),
                           ("PyTorch without CUDA", "install a CUDA build of torch"),
                           ("CuPy missing", "pip install cupy-cuda12x or cupy-cuda13x"),
                           ("transformers missing", "pip install transformers")):
        if totals.get(category):
            write(f"skipped for a missing optional dependency: {category} "
                  f"({totals[category]} tests; {hint})")
    if totals.get("no GPU"):
        write(f"skipped for want of a GPU: {totals['no GPU']} tests")
    for reason, count in others.most_common():
        write(f"skipped ({count}): {reason}")
    for line in _REFUSED_MODULE_SKIPS:
        write(f"FAILED (FD_REQUIRE_GPU=1): {line}")
