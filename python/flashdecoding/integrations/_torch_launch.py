"""What the torch ops do with real tensors: describe the call, pick its plan, and
launch it once on torch's current stream.

Everything a launch needs in memory comes from torch's caching allocator on that
stream -- y, lse and the workspace (a uint8 tensor of the plan's size) -- and nothing
waits for the GPU, so a call can be captured in a CUDA graph and replayed. The
tensors reach the library as addresses with their shapes, strides and dtypes: the
launch runs on the stream torch is using, so there is no producer stream to order
against and nothing to synchronise.

``check_call`` and ``describe`` read only shapes and dtypes, so they work on meta and
fake tensors too (the ops' fake implementations run ``check_call``).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from ..api import plan_for
from ..decode_args import FlashDecodingArgs, FlashDecodingPagedArgs
from ..descriptor import FlashDecodingDescriptor, check_kv_layout
from ..errors import InvalidPointer, InvalidProblem, Unsupported
from ..kinds import ElementKind, PlanPreference
from ..plan import Workspace
from ..tensor import TensorMut, TensorRef


class Extensions(NamedTuple):
    """The decode's optional arguments, as the ops' schemas name them.

    Per-tensor fp8 scales are floats (``k_scale``, ``v_scale``); per-KV-head scales
    are f32 [H_kv] tensors (``k_scales``, ``v_scales``): a schema argument has one
    type, so the two kinds of scale are two arguments each.
    """

    scale: Optional[float] = None
    seq_lens: Optional[torch.Tensor] = None
    window: Optional[int] = None
    sink_tokens: int = 0
    sink_logits: Optional[torch.Tensor] = None
    alibi_slopes: Optional[torch.Tensor] = None
    soft_cap: Optional[float] = None
    block_table: Optional[torch.Tensor] = None
    kv_layout: str = "NHD"
    max_seq_len: Optional[int] = None
    k_scale: Optional[float] = None
    v_scale: Optional[float] = None
    k_scales: Optional[torch.Tensor] = None
    v_scales: Optional[torch.Tensor] = None
    batch_invariant: bool = False

    def tensors(self):
        """(name, tensor) of the optional tensors that are given."""
        for name in ("seq_lens", "sink_logits", "alibi_slopes", "block_table", "k_scales",
                     "v_scales"):
            t = getattr(self, name)
            if t is not None:
                yield name, t


def _element_kinds():
    kinds = {torch.float16: ElementKind.F16, torch.bfloat16: ElementKind.BF16}
    # fp8 dtypes exist in torch >= 2.1; the FP8 kinds in every 0.2 package.
    for dtype_name, kind_name in (("float8_e4m3fn", "FP8_E4M3"), ("float8_e5m2", "FP8_E5M2")):
        if hasattr(torch, dtype_name) and hasattr(ElementKind, kind_name):
            kinds[getattr(torch, dtype_name)] = getattr(ElementKind, kind_name)
    return kinds


_KINDS = _element_kinds()


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _query_kind(name: str, t: torch.Tensor) -> ElementKind:
    kind = _KINDS.get(t.dtype)
    if kind not in (ElementKind.F16, ElementKind.BF16):
        raise Unsupported(f"{name} has dtype {_dtype_name(t)}; q and the output are float16 "
                          "or bfloat16")
    return kind


def _cache_kind(name: str, t: torch.Tensor) -> ElementKind:
    kind = _KINDS.get(t.dtype)
    if kind is None:
        raise Unsupported(f"{name} has dtype {_dtype_name(t)}; k and v are float16, bfloat16, "
                          "float8_e4m3fn or float8_e5m2")
    return kind


def check_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ext: Extensions) -> None:
    """The checks that need neither data nor sizes: ranks, dtypes, arguments that
    exclude each other. Safe on symbolic shapes (no size is read as an int)."""
    if q.dim() != 3:
        raise InvalidProblem(f"q: expected shape (B, H_q, D), got {tuple(q.shape)}")
    paged = ext.block_table is not None
    for name, t in (("k", k), ("v", v)):
        if t.dim() != 4:
            want = ("(pages, page_size, H_kv, D) or (pages, H_kv, page_size, D)" if paged
                    else "(B, H_kv, K_len, D)")
            raise InvalidProblem(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    if paged and ext.block_table.dim() != 2:
        raise InvalidProblem(f"block_table: expected int32 [B, max_pages], got "
                             f"{_dtype_name(ext.block_table)} {tuple(ext.block_table.shape)}")
    layout = check_kv_layout(ext.kv_layout)
    if not paged and layout != "NHD":
        raise InvalidProblem(f"kv_layout = {ext.kv_layout!r} applies to page pools (block_table); "
                             "a contiguous cache is [B, H_kv, K_len, D] with any strides")
    if not paged and ext.max_seq_len is not None:
        raise InvalidProblem(f"max_seq_len = {ext.max_seq_len} is the launch bound of a paged "
                             "cache; without a block_table the length is k.shape[2]")
    _query_kind("q", q)
    kv = _cache_kind("k", k)
    if _cache_kind("v", v) is not kv:
        raise InvalidProblem(f"k has dtype {_dtype_name(k)} but v has {_dtype_name(v)}; "
                             "k and v are stored in one type")
    if ext.k_scale is not None and ext.k_scales is not None:
        raise InvalidProblem("k_scale and k_scales are both given: a cache has one fp8 scale "
                             "per tensor (a float) or one per KV head (an f32 [H_kv] tensor)")
    if ext.v_scale is not None and ext.v_scales is not None:
        raise InvalidProblem("v_scale and v_scales are both given: a cache has one fp8 scale "
                             "per tensor (a float) or one per KV head (an f32 [H_kv] tensor)")


def describe(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             ext: Extensions) -> Tuple[FlashDecodingDescriptor, PlanPreference]:
    """The descriptor and plan preference of a call, from shapes and dtypes only.

    Contiguous cache: q [B, H_q, D], k/v [B, H_kv, K, D]. Paged cache (a
    ``block_table`` [B, max_pages]): k/v are page pools, NHD [pages, page_size,
    H_kv, D] or HND [pages, H_kv, page_size, D]. The library checks the rest when
    the plan is selected.
    """
    check_call(q, k, v, ext)
    element, kv = _KINDS[q.dtype], _KINDS[k.dtype]
    paged = ext.block_table is not None
    b, hq, d = (int(n) for n in q.shape)
    paging = {}
    if paged:
        layout = check_kv_layout(ext.kv_layout)
        bt = ext.block_table
        pages = int(k.shape[0])
        if layout == "NHD":
            page_size, hkv = int(k.shape[1]), int(k.shape[2])
        else:
            hkv, page_size = int(k.shape[1]), int(k.shape[2])
        max_pages = int(bt.shape[1])
        k_len = max_pages * page_size if ext.max_seq_len is None else int(ext.max_seq_len)
        paging = dict(page_size=page_size, max_pages=max_pages, num_pages=pages)
    else:
        hkv, k_len = int(k.shape[1]), int(k.shape[2])
    scale = FlashDecodingDescriptor.default_scale(d) if ext.scale is None else float(ext.scale)
    desc = FlashDecodingDescriptor(
        b, hq, hkv, k_len, d, scale, element, kv_element=None if kv is element else kv,
        window=ext.window, sink_tokens=int(ext.sink_tokens), soft_cap=ext.soft_cap,
        k_scale=ext.k_scale, v_scale=ext.v_scale, **paging)
    pref = PlanPreference.BATCH_INVARIANT if ext.batch_invariant else PlanPreference.DEFAULT
    return desc, pref


def _ref(t: torch.Tensor, writable: bool = False) -> TensorRef:
    cls = TensorMut if writable else TensorRef
    return cls(int(t.data_ptr()), tuple(t.shape), tuple(int(s) for s in t.stride()),
               dtype=_dtype_name(t))


def _check_devices(q: torch.Tensor, named) -> None:
    if q.device.type != "cuda":
        raise InvalidPointer(f"q is on {q.device}; flashdecoding runs on CUDA tensors")
    for name, t in named:
        if t.device != q.device:
            raise InvalidPointer(f"{name} is on {t.device} but q is on {q.device}; every tensor "
                                 "of a call lives on q's GPU")


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
           lse: Optional[torch.Tensor], ext: Extensions) -> None:
    """Writes the decode of (q, k, v) into ``out`` (and ``lse`` when given) on torch's
    current stream of q's device. A refused call raises before anything is written."""
    desc, pref = describe(q, k, v, ext)
    named = [("k", k), ("v", v), ("out", out)] + ([("lse", lse)] if lse is not None else [])
    _check_devices(q, named + list(ext.tensors()))
    plan = plan_for(desc, pref)
    extras = dict(lse=None if lse is None else _ref(lse, writable=True),
                  seq_lens=_opt_ref(ext.seq_lens), sink_logits=_opt_ref(ext.sink_logits),
                  alibi_slopes=_opt_ref(ext.alibi_slopes), k_scales=_opt_ref(ext.k_scales),
                  v_scales=_opt_ref(ext.v_scales))
    if ext.block_table is None:
        args = FlashDecodingArgs(_ref(q), _ref(k), _ref(v), _ref(out, writable=True), **extras)
    else:
        args = FlashDecodingPagedArgs(_ref(q), _ref(k), _ref(v), _ref(out, writable=True),
                                      _ref(ext.block_table), kv_layout=ext.kv_layout, **extras)
    with torch.cuda.device(q.device):
        stream = torch.cuda.current_stream(q.device).cuda_stream
        nbytes = plan.workspace_size()
        if nbytes:
            # From torch's caching allocator on this stream: freed when this function
            # returns, reused only by work ordered after the launch on the same stream.
            scratch = torch.empty(nbytes, dtype=torch.uint8, device=q.device)
            workspace = Workspace(scratch.data_ptr(), nbytes, owner=scratch)
        else:
            workspace = Workspace.none()
        plan.run(stream, workspace, args)


def _opt_ref(t: Optional[torch.Tensor]) -> Optional[TensorRef]:
    return None if t is None else _ref(t)
