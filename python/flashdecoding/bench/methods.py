"""The methods the benchmark compares, each prepared for one row.

``prepare(name, data)`` returns a :class:`Prepared`: one callable per KV
replica (each returns its output, shape-compatible with [B, Hq, D]), ready to
be checked and captured in a CUDA graph.  It raises :class:`NotAvailable` when
the method's library is missing (reported "n/a") and :class:`Unsupported` when
the method cannot run the row by design (reported "unsupported", with why).

flashdecoding runs through its public Python API only: the plan API
(descriptor, plan, args) on plain rows, ``flash_decode`` with the row's
extension arguments on the others.

Imports torch at import time: only the measuring path imports this module.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch

from . import stats as st
from . import support


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


def _stream():
    return torch.cuda.current_stream().cuda_stream


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


# ----------------------------------------------------------------- flashdecoding

def _import_fd():
    try:
        import flashdecoding as fd
        fd.flash_decode, fd.FlashDecodingPlan  # noqa: B018  (fail here, not mid-run)
    except Exception as e:
        raise NotAvailable(f"flashdecoding not importable: {type(e).__name__}: {e}") from e
    return fd


def _prepare_ours_plan(fd, data, batch_invariant: bool) -> Prepared:
    """Plain rows: descriptor -> plan -> run, as a C host would call it."""
    s = data.case.shape
    kind = fd.ElementKind.BF16 if data.case.dtype == "bf16" else fd.ElementKind.F16
    desc = fd.FlashDecodingDescriptor.new_gqa(s.B, s.Hq, s.Hkv, s.K, s.D, kind)
    if hasattr(desc, "with_scale"):
        scaled = desc.with_scale(data.scale)
        desc = scaled if scaled is not None else desc
    if batch_invariant:
        plan = fd.FlashDecodingPlan.select(_stream(), desc, fd.PlanPreference.BATCH_INVARIANT)
    else:
        plan = fd.FlashDecodingPlan.select(_stream(), desc)
    ws_bytes = int(plan.workspace_size())
    ws_tensor = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device="cuda")
    ws = fd.Workspace.borrowed(ws_tensor) if ws_bytes else fd.Workspace.none()
    y = torch.empty((s.B, s.Hq, s.D), dtype=data.tdtype, device="cuda")
    # Wrap every tensor once, outside capture: only plan.run runs in the graph.
    args = [fd.FlashDecodingArgs(fd.TensorRef(data.q), fd.TensorRef(data.k[r]),
                                 fd.TensorRef(data.v[r]), fd.TensorMut(y))
            for r in range(data.R)]

    def make(a):
        def call():
            plan.run(_stream(), ws, a)
            return y
        return call

    extra = {"api": "plan", "workspace_bytes": ws_bytes}
    for name in ("sku", "dispatch_key", "launch_plan"):
        if hasattr(plan, name):
            extra[name] = _describe(getattr(plan, name))
    return Prepared(calls=[make(a) for a in args], extra=extra,
                    poison=lambda: y.fill_(float("nan")),
                    keep=[plan, ws, ws_tensor, y, args, desc])


def _workspace_guess(fd, data) -> int:
    """The plain problem's workspace of the same extents: a first guess for
    flash_decode's (the check call grows it if the library asks for more)."""
    s, c = data.case.shape, data.case
    kind = fd.ElementKind.BF16 if c.dtype == "bf16" else fd.ElementKind.F16
    try:
        desc = fd.FlashDecodingDescriptor.new_gqa(s.B, s.Hq, s.Hkv, c.max_seq_len, s.D, kind)
        return max(int(fd.FlashDecodingPlan.select(None, desc).workspace_size()), 1 << 16)
    except Exception:
        return 1 << 20


def _prepare_ours_call(fd, data, batch_invariant: bool) -> Prepared:
    """Rows with extensions: one flash_decode call with the row's arguments."""
    c, s = data.case, data.case.shape
    y = torch.empty((s.B, s.Hq, s.D), dtype=data.tdtype, device="cuda")
    opts = support.ours_options(c, data.k_scale, data.v_scale)
    if batch_invariant:
        opts["batch_invariant"] = True
    if data.seq_lens is not None:
        opts["seq_lens"] = data.seq_lens
    if data.sink_logits is not None:
        opts["sink_logits"] = data.sink_logits
    if c.paged:
        pools = data.pools(c.page_size, shuffle=True)
        opts["block_table"] = pools.block_table
        kv = [(pools.k[r], pools.v[r]) for r in range(data.R)]
        keep = [pools]
    else:
        kv = [(data.k[r], data.v[r]) for r in range(data.R)]
        keep = []
    ws = {"tensor": torch.empty(_workspace_guess(fd, data), dtype=torch.uint8, device="cuda")}

    def make(k, v):
        def call():
            fd.flash_decode(data.q, k, v, scale=data.scale, out=y, workspace=ws["tensor"],
                            stream=_stream(), **opts)
            return y
        return call

    calls = [make(k, v) for k, v in kv]
    # Size the workspace by asking: the library names what it needs.
    for _ in range(8):
        try:
            calls[0]()
            torch.cuda.synchronize()
            break
        except fd.WorkspaceTooSmall as e:
            need = max(int(getattr(e, "needed", 0) or 0), 2 * ws["tensor"].numel())
            ws["tensor"] = torch.empty(need, dtype=torch.uint8, device="cuda")
    extra = {"api": "flash_decode", "workspace_bytes": int(ws["tensor"].numel()),
             "options": {k: (v if isinstance(v, (int, float, str, bool)) else "<tensor>")
                         for k, v in opts.items()}}
    return Prepared(calls=calls, extra=extra, poison=lambda: y.fill_(float("nan")),
                    keep=keep + [ws, y, opts])


def _prepare_ours(data, batch_invariant: bool = False) -> Prepared:
    fd = _import_fd()
    try:
        if data.case.plain:
            return _prepare_ours_plan(fd, data, batch_invariant)
        return _prepare_ours_call(fd, data, batch_invariant)
    except fd.Unsupported as e:   # e.g. fp8 on a GPU older than sm_89: the library says so
        raise Unsupported(f"flashdecoding: {e}") from e


# ----------------------------------------------------------------- PyTorch SDPA

def _prepare_sdpa(data, which: str) -> Prepared:
    why = support.sdpa_refusal(data.case)
    if why:
        raise Unsupported(why)
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception as e:
        raise NotAvailable(f"torch.nn.attention: {e}") from e
    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[which]
    s = data.case.shape
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
            why = [str(w.message).splitlines()[0] for w in caught if str(w.message).strip()]
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


def _prepare_flashinfer(data, tensor_cores: bool) -> Prepared:
    c = data.case
    why = support.flashinfer_refusal(c, tensor_cores)
    if why:
        raise Unsupported(why)
    fi = import_flashinfer()
    s = c.shape
    page = support.flashinfer_page_size(c)
    # Paged rows: the very pool flashdecoding reads. Contiguous rows: pages in order.
    pools = data.pools(page, shuffle=c.paged)
    bufs = (torch.empty_like(pools.indptr), torch.empty_like(pools.indices),
            torch.empty_like(pools.last_page_len))
    try:
        w = fi.BatchDecodeWithPagedKVCacheWrapper(
            _fi_workspace(), "HND", use_cuda_graph=True, use_tensor_cores=tensor_cores,
            paged_kv_indptr_buffer=bufs[0], paged_kv_indices_buffer=bufs[1],
            paged_kv_last_page_len_buffer=bufs[2])
    except TypeError:
        w = fi.BatchDecodeWithPagedKVCacheWrapper(_fi_workspace(), "HND",
                                                  use_tensor_cores=tensor_cores)
    kw = dict(pos_encoding_mode="NONE", q_data_type=data.tdtype, kv_data_type=data.kv_tdtype,
              sm_scale=data.scale)
    if c.window:
        kw["window_left"] = support.flashinfer_window_left(c)
    if c.soft_cap:
        kw["logits_soft_cap"] = float(c.soft_cap)
    w.plan(pools.indptr, pools.indices, pools.last_page_len, s.Hq, s.Hkv, s.D, page, **kw)
    run_kw = {}
    if c.fp8:
        run_kw.update(k_scale=data.k_scale, v_scale=data.v_scale)
    if data.sink_logits is not None:
        run_kw["sinks"] = data.sink_logits
    q = data.q

    def make(r):
        cache = (pools.k[r], pools.v[r])

        def call():
            return w.run(q, cache, **run_kw)
        return call

    extra = {"page_size": page, "kv_layout": "HND", "use_tensor_cores": tensor_cores,
             "pages": pools.plan.num_pages}
    return Prepared(calls=[make(r) for r in range(data.R)], extra=extra,
                    keep=[w, pools, bufs])


def prepare(name: str, data) -> Prepared:
    if name == st.OURS:
        return _prepare_ours(data)
    if name == st.OURS_BATCH_INVARIANT:
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
        out["flashdecoding"] = str(getattr(fd, "__version__", None))
    except Exception as e:
        out["flashdecoding"] = f"not importable: {e}"[:200]
    return out
