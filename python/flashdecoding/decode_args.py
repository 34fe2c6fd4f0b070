"""The tensors of one decode call: FlashDecodingArgs (contiguous caches) and
FlashDecodingPagedArgs (page pools and a block table), and the checks Python
makes of them against a descriptor before the C library sees them: shapes,
element types and the strides C cannot express (C reads the D axis, the
lengths, the per-head arrays and a block-table row as contiguous)."""
from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple

from .descriptor import FlashDecodingDescriptor, as_int64, check_kv_layout
from .errors import InvalidProblem, Unsupported
from .kinds import ElementKind, element_from_dtype
from .tensor import TensorMut, TensorRef, as_mut, as_ref

# Optional arrays: (name, element type, axes, contiguous axis), in the order they are checked.
_EXTRAS = (
    ("lse", "float32", ("B", "H_q"), None),
    ("seq_lens", "int32", ("B",), 0),
    ("sink_logits", "float32", ("H_q",), 0),
    ("alibi_slopes", "float32", ("H_q",), 0),
    ("k_scales", "float32", ("H_kv",), 0),
    ("v_scales", "float32", ("H_kv",), 0),
)


def _opt_ref(obj: Any) -> Optional[TensorRef]:
    return None if obj is None else as_ref(obj)


class FlashDecodingArgs:
    """The tensors of one call over a contiguous (strided) cache.

    q [B, H_q, D], k/v [B, H_kv, K, D] (TensorRef), y [B, H_q, D] (TensorMut), and
    the optional device arrays: ``lse`` f32 [B, H_q] (an output: the natural-log
    sum of the softmax weights), ``seq_lens`` int32 [B] (each sequence's length,
    clamped into [0, K]), ``sink_logits`` f32 [H_q] (per-head sink logits that join
    the softmax denominator), ``alibi_slopes`` f32 [H_q], and ``k_scales`` /
    ``v_scales`` f32 [H_kv] (per-KV-head fp8 scales). Arrays and addresses are
    wrapped as needed.
    """

    paged = False

    def __init__(self, q: Any, k: Any, v: Any, y: Any, *, lse: Any = None,
                 seq_lens: Any = None, sink_logits: Any = None, alibi_slopes: Any = None,
                 k_scales: Any = None, v_scales: Any = None):
        self.q: TensorRef = as_ref(q)
        self.k: TensorRef = as_ref(k)
        self.v: TensorRef = as_ref(v)
        self.y: TensorMut = as_mut(y)
        self.lse: Optional[TensorMut] = None if lse is None else as_mut(lse)
        self.seq_lens = _opt_ref(seq_lens)
        self.sink_logits = _opt_ref(sink_logits)
        self.alibi_slopes = _opt_ref(alibi_slopes)
        self.k_scales = _opt_ref(k_scales)
        self.v_scales = _opt_ref(v_scales)
        self.block_table: Optional[TensorRef] = None
        self.kv_layout = "NHD"

    def tensors(self) -> Iterator[Tuple[str, TensorRef]]:
        """(name, tensor) of every tensor given: q, k, v, y, then the optional ones."""
        yield from (("q", self.q), ("k", self.k), ("v", self.v), ("y", self.y))
        if self.block_table is not None:
            yield "block_table", self.block_table
        for name, *_rest in _EXTRAS:
            t = getattr(self, name)
            if t is not None:
                yield name, t

    def expected_kv_shape(self, desc: FlashDecodingDescriptor):
        return desc.kv_shape()


class FlashDecodingPagedArgs(FlashDecodingArgs):
    """The tensors of one call over a paged cache: ``k`` and ``v`` are page pools,
    NHD [pages, page_size, H_kv, D] (vLLM, FlashInfer NHD) or HND [pages, H_kv,
    page_size, D] (``kv_layout``), with any page / head / row strides (slices of a
    combined [pages, 2, ...] pool too); ``block_table`` int32 [B, max_pages] (row
    stride free, entries contiguous) holds each sequence's page ids, which may
    repeat and come in any order. The optional arrays are FlashDecodingArgs'.
    ``seq_lens`` of a paged cache: a length outside [0, K] makes that sequence's
    y and lse NaN (as does a page id outside the pool among the pages it needs).
    """

    paged = True

    def __init__(self, q: Any, k: Any, v: Any, y: Any, block_table: Any, *,
                 kv_layout: str = "NHD", **extras: Any):
        super().__init__(q, k, v, y, **extras)
        if block_table is None:
            raise TypeError("FlashDecodingPagedArgs needs a block_table")
        self.block_table = as_ref(block_table)
        self.kv_layout = check_kv_layout(kv_layout)

    def expected_kv_shape(self, desc: FlashDecodingDescriptor):
        return desc.kv_shape(self.kv_layout)

    def kv_strides(self, name: str) -> Tuple[int, int, int]:
        """(stride_page, stride_h, stride_k) of pool ``name`` ('k' or 'v') by layout."""
        s = getattr(self, name).stride
        return (s[0], s[2], s[1]) if self.kv_layout == "NHD" else (s[0], s[1], s[2])


# ---------------------------------------------------------------------- checks

def _dims(desc: FlashDecodingDescriptor):
    return {"B": desc.batch_size, "H_q": desc.num_heads, "H_kv": desc.num_kv_heads,
            "max_pages": desc.max_pages}


def _named_dtype(t: TensorRef) -> Optional[str]:
    if t.dtype_name is None:
        return None
    return str(t.dtype_name).lower().replace("torch.", "")


def _check_extra(name: str, t: TensorRef, dtype: str, axes, contiguous_axis,
                 desc: FlashDecodingDescriptor) -> None:
    sizes = _dims(desc)
    shape = tuple(sizes[a] for a in axes)
    got = _named_dtype(t)
    if (got is not None and got != dtype) or t.shape != shape:
        raise InvalidProblem(f"{name}: expected {dtype} [{', '.join(axes)}] = {shape}, got "
                             f"{got or 'an untyped array'} {t.shape}")
    if len(t.stride) != len(t.shape):
        raise InvalidProblem(f"{name}: {len(t.stride)} strides for {len(t.shape)} axes")
    if contiguous_axis is not None and shape[contiguous_axis] > 1 \
            and t.stride[contiguous_axis] != 1:
        raise InvalidProblem(f"{name}: expected a contiguous {dtype} [{', '.join(axes)}] array "
                             f"(stride 1 along {axes[contiguous_axis]}), got strides {t.stride}")
    for s in t.stride:
        as_int64(f"{name} stride", s)


def _check_main(name: str, t: TensorRef, expected_shape, desc: FlashDecodingDescriptor) -> None:
    is_kv = name in ("k", "v")
    want = desc.kv if is_kv else desc.element
    if t.dtype_name is not None:
        kind = t.element
        if is_kv and (kind is None or not (kind.is_half or kind.is_fp8)):
            raise Unsupported(f"{name} has dtype {t.dtype_name}; k and v must be float16, "
                              "bfloat16, float8_e4m3fn or float8_e5m2")
        if not is_kv and (kind is None or not kind.is_half):
            raise Unsupported(f"{name} has dtype {t.dtype_name}; q and y must be float16 or "
                              "bfloat16")
        if kind is not want:
            what = "KV element" if is_kv else "element"
            raise InvalidProblem(f"{name} has dtype {t.dtype_name} but the descriptor's {what} "
                                 f"is {want.short_name}")
    if t.shape != tuple(expected_shape):
        raise InvalidProblem(f"{name}: expected shape {tuple(expected_shape)}, got {t.shape}")
    if len(t.stride) != len(t.shape):
        raise InvalidProblem(f"{name}: {len(t.stride)} strides for {len(t.shape)} axes")
    if desc.head_dim > 1 and t.stride[-1] != 1:
        raise InvalidProblem(f"{name}: the D axis stride must be 1 (contiguous), "
                             f"got {t.stride[-1]}")
    for s in t.stride:
        as_int64(f"{name} stride", s)


def check_args(desc: FlashDecodingDescriptor, args: FlashDecodingArgs) -> None:
    """What Python checks before the C library: the kind of args for the
    descriptor's cache, each tensor's dtype and shape (named in the error), and the
    strides the C ABI has no field for."""
    if not isinstance(args, FlashDecodingArgs):
        raise TypeError(f"args must be FlashDecodingArgs or FlashDecodingPagedArgs, got "
                        f"{type(args).__name__}")
    if desc.paged and not args.paged:
        raise InvalidProblem(f"the descriptor is paged (page_size = {desc.page_size}): pass "
                             "FlashDecodingPagedArgs with the block table")
    if args.paged and not desc.paged:
        raise InvalidProblem("block_table given but the descriptor is not paged (page_size = 0): "
                             "describe the pool with FlashDecodingDescriptor.new_paged / "
                             "with_paging")
    expected = {"q": desc.q_shape(), "k": args.expected_kv_shape(desc),
                "v": args.expected_kv_shape(desc), "y": desc.y_shape()}
    for name in ("q", "k", "v", "y"):
        _check_main(name, getattr(args, name), expected[name], desc)
    if args.block_table is not None:
        _check_extra("block_table", args.block_table, "int32", ("B", "max_pages"), 1, desc)
    for name, dtype, axes, contiguous_axis in _EXTRAS:
        t = getattr(args, name)
        if t is not None:
            _check_extra(name, t, dtype, axes, contiguous_axis, desc)


def element_of(t: TensorRef) -> Optional[ElementKind]:
    """The tensor's ElementKind when its dtype is one (else None)."""
    return None if t.dtype_name is None else element_from_dtype(t.dtype_name)
