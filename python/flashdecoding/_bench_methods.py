"""The methods the benchmark compares, each prepared for one shape.

``prepare(name, data)`` returns a :class:`Prepared`: one callable per KV
replica (each returns its output, shape-compatible with [B, Hq, D]), ready to
be checked and captured in a CUDA graph.  It raises :class:`NotAvailable` when
the method's library is missing (reported "n/a") and :class:`Unsupported` when
the method refuses the shape (reported "unsupported").

Imports torch at import time: only bench.py's GPU path imports this module.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field

import torch

from ._bench_stats import METHODS, OURS, OURS_BATCH_INVARIANT  # noqa: F401  (one list of names)

PAGE_SIZE = 16


class NotAvailable(Exception):
    pass


class Unsupported(Exception):
    pass


@dataclass
class Prepared:
    calls: list
    extra: dict = field(default_factory=dict)
    poison: object = None        # callable: fill the output with NaN before a check
    keep: list = field(default_factory=list)   # objects that must outlive the graph


class ShapeData:
    """Inputs of one shape: q [B, Hq, D] and R replicas of k, v [B, Hkv, K, D]
    (contiguous, HND), random normal."""

    def __init__(self, shape, dtype: str, tdtype, replicas: int, seed: int):
        self.shape, self.dtype, self.tdtype, self.R = shape, dtype, tdtype, replicas
        self.scale = 1.0 / math.sqrt(shape.D)
        s = shape
        gen = torch.Generator(device="cuda")
        gen.manual_seed(seed)
        self.q = torch.randn((s.B, s.Hq, s.D), dtype=tdtype, device="cuda", generator=gen)
        self.k_all = torch.randn((replicas, s.B, s.Hkv, s.K, s.D), dtype=tdtype,
                                 device="cuda", generator=gen)
        self.v_all = torch.randn((replicas, s.B, s.Hkv, s.K, s.D), dtype=tdtype,
                                 device="cuda", generator=gen)
        self.k = [self.k_all[r] for r in range(replicas)]
        self.v = [self.v_all[r] for r in range(replicas)]
        self._paged = None

    def paged(self):
        """(k_pages, v_pages): per replica [B·P, Hkv, 16, D] (FlashInfer HND pages,
        page table in order), same content as k/v; built once, shared by fi-cc
        and fi-tc."""
        if self._paged is None:
            self._paged = (_to_pages(self.k_all), _to_pages(self.v_all))
        return self._paged

    def release_paged(self):
        self._paged = None

    def release(self):
        self._paged = None
        self.k = self.v = None
        self.k_all = self.v_all = self.q = None


def _to_pages(x):
    """[R, B, Hkv, K, D] -> [R, B·P, Hkv, PAGE, D] with P = ceil(K / PAGE); the
    tail of the last page is zero padding that the page table excludes."""
    R, B, H, K, D = x.shape
    P = -(-K // PAGE_SIZE)
    if P * PAGE_SIZE != K:
        x = torch.nn.functional.pad(x, (0, 0, 0, P * PAGE_SIZE - K))
    x = x.reshape(R, B, H, P, PAGE_SIZE, D).permute(0, 1, 3, 2, 4, 5)
    return x.contiguous().reshape(R, B * P, H, PAGE_SIZE, D)


# ----------------------------------------------------------------- flashdecoding

def _member(cls, names):
    for n in names:
        if hasattr(cls, n):
            return getattr(cls, n)
    raise AttributeError(f"{cls.__name__} has none of {names}")


def _describe(obj):
    """A plan query's answer for the JSON: plain values and dicts kept, the rest str()."""
    if callable(obj):
        try:
            obj = obj()
        except Exception as e:  # a description must never break the bench
            return f"<error: {type(e).__name__}: {e}>"
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _describe(v) for k, v in obj.items()}
    return str(obj)


def _prepare_ours(data: ShapeData, batch_invariant: bool = False) -> Prepared:
    try:
        import flashdecoding as fd
        api = (fd.FlashDecodingDescriptor, fd.FlashDecodingPlan, fd.FlashDecodingArgs,
               fd.TensorRef, fd.TensorMut, fd.Workspace, fd.ElementKind)
    except Exception as e:
        raise NotAvailable(f"flashdecoding API not importable: {e}") from e
    Desc, Plan, Args, TRef, TMut, Workspace, ElementKind = api
    s = data.shape
    kind = _member(ElementKind, ("BF16", "Bf16", "BFLOAT16") if data.dtype == "bf16"
                   else ("F16", "FP16", "FLOAT16", "Half"))
    desc = Desc.new_gqa(s.B, s.Hq, s.Hkv, s.K, s.D, kind)
    if hasattr(desc, "with_scale"):
        scaled = desc.with_scale(data.scale)
        desc = scaled if scaled is not None else desc
    stream = torch.cuda.current_stream().cuda_stream
    if batch_invariant:
        plan = Plan.select(stream, desc, fd.PlanPreference.BATCH_INVARIANT)
    else:
        plan = Plan.select(stream, desc)
    ws_bytes = int(plan.workspace_size())
    ws_tensor = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device="cuda")
    ws = Workspace.borrowed(ws_tensor) if ws_bytes else Workspace.none()
    y = torch.empty((s.B, s.Hq, s.D), dtype=data.tdtype, device="cuda")
    # Wrap every tensor once, outside capture: only plan.run runs in the graph.
    args = [Args(TRef(data.q), TRef(data.k[r]), TRef(data.v[r]), TMut(y))
            for r in range(data.R)]

    def make(a):
        def call():
            plan.run(torch.cuda.current_stream().cuda_stream, ws, a)
            return y
        return call

    extra = {"workspace_bytes": ws_bytes}
    for name in ("sku", "backend", "dispatch_key", "launch_plan"):
        if hasattr(plan, name):
            extra[name] = _describe(getattr(plan, name))
    return Prepared(calls=[make(a) for a in args], extra=extra,
                    poison=lambda: y.fill_(float("nan")),
                    keep=[plan, ws, ws_tensor, y, args, desc])


# ----------------------------------------------------------------- PyTorch SDPA

def _prepare_sdpa(data: ShapeData, which: str) -> Prepared:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception as e:
        raise NotAvailable(f"torch.nn.attention: {e}") from e
    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[which]
    s = data.shape
    gqa = s.Hq != s.Hkv
    q4 = data.q.unsqueeze(2)                                   # [B, Hq, 1, D]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def make(k, v):
        def call():
            with sdpa_kernel([backend]):
                return sdpa(q4, k, v, scale=data.scale, enable_gqa=gqa)
        return call

    calls = [make(data.k[r], data.v[r]) for r in range(data.R)]
    # Probe once: a backend that refuses the problem says why in warnings.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            calls[0]()
            torch.cuda.synchronize()
        except RuntimeError as e:
            if "No available kernel" not in str(e):
                raise
            why = [str(w.message).splitlines()[0] for w in caught
                   if str(w.message).strip()]
            msg = "; ".join(why) or str(e).splitlines()[0]
            raise Unsupported(f"{which}: {msg}"[:300]) from e
    return Prepared(calls=calls, extra={"enable_gqa": gqa, "backend": which})


# ----------------------------------------------------------------- FlashInfer

_FI = {"module": None, "error": None}
_FI_WS = {}


def import_flashinfer():
    """The flashinfer module, or raise NotAvailable (once tried, remembered)."""
    if _FI["module"] is None and _FI["error"] is None:
        major, minor = torch.cuda.get_device_capability()
        os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST",
                              f"{major}.{minor}" + ("a" if major >= 9 else ""))
        os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 8))
        try:
            import flashinfer
            _FI["module"] = flashinfer
        except Exception as e:
            _FI["error"] = f"import flashinfer failed: {type(e).__name__}: {e}"[:300]
    if _FI["module"] is None:
        raise NotAvailable(_FI["error"])
    return _FI["module"]


def _fi_workspace():
    if "float" not in _FI_WS:
        _FI_WS["float"] = torch.zeros(128 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    return _FI_WS["float"]


def _prepare_flashinfer(data: ShapeData, tensor_cores: bool) -> Prepared:
    fi = import_flashinfer()
    s = data.shape
    P = -(-s.K // PAGE_SIZE)
    dev = "cuda"
    indptr = torch.arange(0, s.B + 1, dtype=torch.int32, device=dev) * P
    indices = torch.arange(0, s.B * P, dtype=torch.int32, device=dev)
    last = torch.full((s.B,), s.K - (P - 1) * PAGE_SIZE, dtype=torch.int32, device=dev)
    bufs = (torch.empty_like(indptr), torch.empty_like(indices), torch.empty_like(last))
    ws = _fi_workspace()
    try:
        w = fi.BatchDecodeWithPagedKVCacheWrapper(
            ws, "HND", use_cuda_graph=True, use_tensor_cores=tensor_cores,
            paged_kv_indptr_buffer=bufs[0], paged_kv_indices_buffer=bufs[1],
            paged_kv_last_page_len_buffer=bufs[2])
    except TypeError:
        w = fi.BatchDecodeWithPagedKVCacheWrapper(ws, "HND", use_tensor_cores=tensor_cores)
    kw = dict(pos_encoding_mode="NONE", q_data_type=data.tdtype, kv_data_type=data.tdtype,
              sm_scale=data.scale)
    try:
        w.plan(indptr, indices, last, s.Hq, s.Hkv, s.D, PAGE_SIZE, **kw)
    except TypeError:
        w.plan(indptr, indices, last, s.Hq, s.Hkv, s.D, PAGE_SIZE,
               pos_encoding_mode="NONE", data_type=data.tdtype)
    kp, vp = data.paged()
    q = data.q

    def make(r):
        cache = (kp[r], vp[r])

        def call():
            return w.run(q, cache)
        return call

    extra = {"page_size": PAGE_SIZE, "kv_layout": "HND", "use_tensor_cores": tensor_cores}
    return Prepared(calls=[make(r) for r in range(data.R)], extra=extra,
                    keep=[w, indptr, indices, last, bufs])


def prepare(name: str, data: ShapeData) -> Prepared:
    if name == OURS:
        return _prepare_ours(data)
    if name == OURS_BATCH_INVARIANT:
        return _prepare_ours(data, batch_invariant=True)
    if name == "sdpa-flash":
        return _prepare_sdpa(data, "flash")
    if name == "sdpa-cudnn":
        return _prepare_sdpa(data, "cudnn")
    if name == "fi-cc":
        return _prepare_flashinfer(data, tensor_cores=False)
    if name == "fi-tc":
        return _prepare_flashinfer(data, tensor_cores=True)
    raise ValueError(f"unknown method {name!r}")


def versions() -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        out["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        out["cudnn"] = None
    fi = _FI["module"]
    out["flashinfer"] = getattr(fi, "__version__", None) if fi is not None else _FI["error"]
    try:
        import flashdecoding as fd
        v = getattr(fd, "__version__", None)
        if v is None and hasattr(fd, "get_version"):
            v = fd.get_version()
        out["flashdecoding"] = str(v) if v is not None else None
    except Exception as e:
        out["flashdecoding"] = f"not importable: {e}"[:200]
    return out
