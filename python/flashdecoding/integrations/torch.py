"""flashdecoding as PyTorch custom ops (``torch.library``, namespace ``flashdecoding``).

Importing this module registers four ops (``register()`` does it again harmlessly):

* ``torch.ops.flashdecoding.decode(q, k, v, ...) -> y``
* ``torch.ops.flashdecoding.decode_lse(q, k, v, ...) -> (y, lse)``
* ``torch.ops.flashdecoding.decode_out(q, k, v, out, ...) -> ()`` writes into ``out``
* ``torch.ops.flashdecoding.decode_out_lse(q, k, v, out, lse, ...) -> ()`` writes
  into ``out`` and ``lse``.

The schemas mark ``out`` and ``lse`` as mutated. Pass them positionally: PyTorch's
in-place bookkeeping (the autograd ``ADInplaceOrView`` key) finds a mutated tensor
by its position, and a mutated argument that is optional or given by name makes
PyTorch 2.11 fail with an ``IndexError`` before the op runs. Hence two ops with
required buffers rather than one with an optional ``lse``.

q [B, H_q, D] f16/bf16; k, v [B, H_kv, K, D] (or page pools with a ``block_table``);
y [B, H_q, D] like q; lse f32 [B, H_q] (natural log of the softmax denominator). The
optional arguments are ``flashdecoding.flash_decode``'s: ``scale``, ``seq_lens``,
``window``, ``sink_tokens``, ``sink_logits``, ``alibi_slopes``, ``soft_cap``,
``block_table``, ``kv_layout``, ``max_seq_len``, ``batch_invariant``, and for fp8
caches ``k_scale``/``v_scale`` (floats, per tensor) or ``k_scales``/``v_scales``
(f32 [H_kv] tensors, per KV head). Pass them by name.

The ops have fake (meta) implementations, so ``torch.compile(fullgraph=True)``
traces through them without a graph break. The CUDA implementation takes y, lse and
the workspace from torch's caching allocator and launches on torch's current stream
without waiting for the GPU, so a call can be captured with ``torch.cuda.graph``.
``decode()`` below is the convenience front: ``flash_decode``'s keywords, with a float
or a tensor for each fp8 scale, ``out=``/``lse=`` buffers and ``return_lse``.
"""
from __future__ import annotations

import threading
from typing import Optional

import torch

if not hasattr(torch.library, "custom_op"):
    raise ImportError("flashdecoding.integrations.torch needs PyTorch >= 2.4 "
                      f"(torch.library.custom_op); this is torch {torch.__version__}")

from ..errors import InvalidPointer, InvalidProblem  # noqa: E402
from ._torch_launch import Extensions, check_call, launch  # noqa: E402

NAMESPACE = "flashdecoding"
OPS = ("decode", "decode_lse", "decode_out", "decode_out_lse")

# Every argument is positional-or-keyword: torch.library's custom_op takes no
# keyword-only tensors. Callers pass the optional ones by name.
_OPTIONAL = (
    "float? scale=None, Tensor? seq_lens=None, int? window=None, int sink_tokens=0, "
    "Tensor? sink_logits=None, Tensor? alibi_slopes=None, float? soft_cap=None, "
    "Tensor? block_table=None, str kv_layout=\"NHD\", int? max_seq_len=None, "
    "float? k_scale=None, float? v_scale=None, Tensor? k_scales=None, Tensor? v_scales=None, "
    "bool batch_invariant=False")

SCHEMAS = {
    "decode": f"(Tensor q, Tensor k, Tensor v, {_OPTIONAL}) -> Tensor",
    "decode_lse": f"(Tensor q, Tensor k, Tensor v, {_OPTIONAL}) -> (Tensor, Tensor)",
    "decode_out": f"(Tensor q, Tensor k, Tensor v, Tensor(a!) out, {_OPTIONAL}) -> ()",
    "decode_out_lse": f"(Tensor q, Tensor k, Tensor v, Tensor(a!) out, Tensor(b!) lse, "
                      f"{_OPTIONAL}) -> ()",
}

_lock = threading.Lock()
_registered = False


# ---------------------------------------------------------------------- implementations

def _outputs_like(q: torch.Tensor, with_lse: bool):
    y = torch.empty(tuple(q.shape), dtype=q.dtype, device=q.device)
    lse = (torch.empty(tuple(q.shape[:2]), dtype=torch.float32, device=q.device)
           if with_lse else None)
    return y, lse


def _decode_cuda(q, k, v, *args, **kwargs):
    ext = Extensions(*args, **kwargs)
    check_call(q, k, v, ext)  # refuse a malformed call before allocating its outputs
    y, _ = _outputs_like(q, False)
    launch(q, k, v, y, None, ext)
    return y


def _decode_lse_cuda(q, k, v, *args, **kwargs):
    ext = Extensions(*args, **kwargs)
    check_call(q, k, v, ext)
    y, lse = _outputs_like(q, True)
    launch(q, k, v, y, lse, ext)
    return y, lse


def _decode_out_cuda(q, k, v, out, *args, **kwargs):
    launch(q, k, v, out, None, Extensions(*args, **kwargs))


def _decode_out_lse_cuda(q, k, v, out, lse, *args, **kwargs):
    launch(q, k, v, out, lse, Extensions(*args, **kwargs))


def _refuse_cpu(q, *args, **kwargs):
    raise InvalidPointer(f"q is on {q.device}; flashdecoding runs on CUDA tensors")


# Fake implementations: the output shapes and dtypes from the inputs' shapes alone,
# with the checks that need no data (ranks, dtypes, arguments that exclude each other).

def _decode_fake(q, k, v, *args, **kwargs):
    check_call(q, k, v, Extensions(*args, **kwargs))
    return q.new_empty(tuple(q.shape))


def _decode_lse_fake(q, k, v, *args, **kwargs):
    check_call(q, k, v, Extensions(*args, **kwargs))
    return q.new_empty(tuple(q.shape)), q.new_empty(tuple(q.shape[:2]), dtype=torch.float32)


def _check_out_buffers(q, out, lse):
    if tuple(out.shape) != tuple(q.shape) or out.dtype != q.dtype:
        raise InvalidProblem(f"out: expected {q.dtype} {tuple(q.shape)}, got {out.dtype} "
                             f"{tuple(out.shape)}")
    if lse is not None and (tuple(lse.shape) != tuple(q.shape[:2]) or lse.dtype != torch.float32):
        raise InvalidProblem(f"lse: expected torch.float32 {tuple(q.shape[:2])}, got "
                             f"{lse.dtype} {tuple(lse.shape)}")


def _decode_out_fake(q, k, v, out, *args, **kwargs):
    check_call(q, k, v, Extensions(*args, **kwargs))
    _check_out_buffers(q, out, None)


def _decode_out_lse_fake(q, k, v, out, lse, *args, **kwargs):
    check_call(q, k, v, Extensions(*args, **kwargs))
    _check_out_buffers(q, out, lse)


_IMPLEMENTATIONS = {
    "decode": (_decode_cuda, _decode_fake, ()),
    "decode_lse": (_decode_lse_cuda, _decode_lse_fake, ()),
    "decode_out": (_decode_out_cuda, _decode_out_fake, ("out",)),
    "decode_out_lse": (_decode_out_lse_cuda, _decode_out_lse_fake, ("out", "lse")),
}


# ---------------------------------------------------------------------- registration

def _is_defined(name: str) -> bool:
    try:
        getattr(getattr(torch.ops, NAMESPACE), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def register():
    """Defines the ops of ``OPS`` in ``torch.ops.flashdecoding`` unless they exist (a
    second call, or a re-imported module, changes nothing) and returns the
    ``torch.ops.flashdecoding`` namespace."""
    global _registered
    with _lock:
        if not _registered:
            for name in OPS:
                if _is_defined(name):
                    continue
                real, fake, mutated = _IMPLEMENTATIONS[name]
                op = torch.library.custom_op(f"{NAMESPACE}::{name}", real, mutates_args=mutated,
                                             device_types="cuda", schema=SCHEMAS[name])
                op.register_fake(fake)
                op.register_kernel("cpu", _refuse_cpu)
            _registered = True
    return getattr(torch.ops, NAMESPACE)


def is_registered() -> bool:
    """Whether every op of this module exists in ``torch.ops.flashdecoding``."""
    return all(_is_defined(name) for name in OPS)


# ---------------------------------------------------------------------- front

def decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
           scale: Optional[float] = None, out: Optional[torch.Tensor] = None,
           lse: Optional[torch.Tensor] = None, seq_lens: Optional[torch.Tensor] = None,
           window: Optional[int] = None, sink_tokens: int = 0,
           sink_logits: Optional[torch.Tensor] = None,
           alibi_slopes: Optional[torch.Tensor] = None, soft_cap: Optional[float] = None,
           batch_invariant: bool = False, return_lse: bool = False,
           block_table: Optional[torch.Tensor] = None, kv_layout: str = "NHD",
           max_seq_len: Optional[int] = None, k_scale=None, v_scale=None):
    """``flashdecoding.flash_decode`` through the torch ops: the same keywords, torch
    tensors only. ``k_scale``/``v_scale``: a float (per tensor) or an f32 [H_kv]
    tensor (per KV head). ``out``/``lse`` given: written in place (``decode_out`` or
    ``decode_out_lse``).
    Returns y, or (y, lse) when ``return_lse`` (or ``lse``) is given."""
    ops = torch.ops.flashdecoding  # registered at import; register() locks (not traceable)
    k_scales = k_scale if isinstance(k_scale, torch.Tensor) else None
    v_scales = v_scale if isinstance(v_scale, torch.Tensor) else None
    optional = dict(
        scale=scale, seq_lens=seq_lens, window=window, sink_tokens=sink_tokens,
        sink_logits=sink_logits, alibi_slopes=alibi_slopes, soft_cap=soft_cap,
        block_table=block_table, kv_layout=kv_layout, max_seq_len=max_seq_len,
        k_scale=None if k_scales is not None else k_scale,
        v_scale=None if v_scales is not None else v_scale,
        k_scales=k_scales, v_scales=v_scales, batch_invariant=batch_invariant)
    want_lse = return_lse or lse is not None
    if out is None and lse is None:
        if want_lse:
            return ops.decode_lse(q, k, v, **optional)
        return ops.decode(q, k, v, **optional)
    if out is None:
        out = q.new_empty(tuple(q.shape))
    if want_lse and lse is None:
        lse = q.new_empty(tuple(q.shape[:2]), dtype=torch.float32)
    if lse is None:
        ops.decode_out(q, k, v, out, **optional)
    else:
        ops.decode_out_lse(q, k, v, out, lse, **optional)
    return (out, lse) if want_lse else out


register()
