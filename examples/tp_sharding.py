"""Head sharding of a Llama attention layer for tensor-parallel decode.

Pure functions on torch tensors, CPU or GPU, with no process group and no
flashdecoding in them: ``tp_decode.py`` runs them on N GPUs with NCCL and
flashdecoding, and the tests run the same functions on CPU with gloo and a float64
attention.

How the layer is split over N ranks (Megatron-style tensor parallelism):

* rank r owns KV heads [r*H_kv/N, (r+1)*H_kv/N) and the query heads that read them,
  so every GQA group stays on one rank and the attention needs no communication;
* q/k/v projections are column-parallel (each rank holds the rows of W_q, W_k, W_v
  of its heads), the output projection is row-parallel (each rank holds the columns
  of W_o of its heads) and one all-reduce (sum) of the [B, hidden] partial outputs
  combines the ranks;
* each rank's KV cache holds its heads only, contiguous [B, H_kv/N, K, D] or a page
  pool with a block table; the block table is the same on every rank (the scheduler
  decides pages per sequence, not per head).

Random weights and caches come from a counter-based generator: element i of a named
tensor is a hash of (seed, name, i). Any rank makes any slice without making the
rest, and the values do not depend on the device, the split or the generation order,
so the unsharded reference sees exactly the numbers the shards hold.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

#: Relative error bound (max |y - ref| / max |ref|) the project's tests use per dtype.
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1e-2}

#: Virtual length of the key axis of the generated KV history: the value of key j
#: does not depend on how long a cache is allocated, or on paged vs contiguous.
KV_VIRTUAL_LEN = 1 << 31

_CHUNK_ELEMENTS = 1 << 22  # elements hashed at once (bounds the int64 scratch)
_M32 = 0xFFFFFFFF


# --------------------------------------------------------------------------- shapes

def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


@dataclass(frozen=True)
class LayerShape:
    """A Llama attention layer: hidden size, query/KV heads, head_dim, RoPE base."""

    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 500000.0

    def __post_init__(self):
        for name in ("hidden", "num_heads", "num_kv_heads", "head_dim"):
            _positive(name, getattr(self, name))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if not self.rope_theta > 1.0:
            raise ValueError(f"rope_theta must be > 1, got {self.rope_theta}")

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA group)."""
        return self.num_heads // self.num_kv_heads

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)


@dataclass(frozen=True)
class HeadShard:
    """The heads rank ``rank`` of ``world_size`` owns: [q_start, q_stop) query heads
    and [kv_start, kv_stop) KV heads (global indices)."""

    rank: int
    world_size: int
    q_start: int
    q_stop: int
    kv_start: int
    kv_stop: int

    @property
    def num_heads(self) -> int:
        return self.q_stop - self.q_start

    @property
    def num_kv_heads(self) -> int:
        return self.kv_stop - self.kv_start


def shard_heads(shape: LayerShape, world_size: int, rank: int) -> HeadShard:
    """Rank ``rank``'s contiguous slice of heads. GQA groups are never split, so
    ``world_size`` must divide ``num_kv_heads``; anything else is refused."""
    _positive("world_size", world_size)
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int, got {type(rank).__name__}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside [0, world_size={world_size})")
    if shape.num_kv_heads % world_size:
        raise ValueError(
            f"world_size={world_size} does not divide num_kv_heads={shape.num_kv_heads}: "
            f"each rank takes whole KV heads with their {shape.group_size} query heads, "
            f"so the number of ranks must divide {shape.num_kv_heads}")
    per_rank = shape.num_kv_heads // world_size
    kv_start = rank * per_rank
    g = shape.group_size
    return HeadShard(rank, world_size, kv_start * g, (kv_start + per_rank) * g,
                     kv_start, kv_start + per_rank)


def all_shards(shape: LayerShape, world_size: int) -> List[HeadShard]:
    return [shard_heads(shape, world_size, r) for r in range(world_size)]


# --------------------------------------------------------------------------- generator

def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    # (h * c) mod 2**32 for 0 <= h < 2**32 in int64 without overflowing 63 bits.
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    # MurmurHash3's finaliser: a bijection of 32-bit words with full avalanche.
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _keys(seed: int, name: str) -> Tuple[int, int]:
    text = f"{int(seed)}:{name}".encode()
    return zlib.crc32(text), zlib.crc32(text + b"#")


def counter_uniform(index: torch.Tensor, seed: int, name: str) -> torch.Tensor:
    """float64 values of unit variance, uniform in (-sqrt 3, sqrt 3), one per int64
    ``index`` (>= 0): a pure function of (seed, name, index) on any device."""
    k1, k2 = _keys(seed, name)
    index = index.to(torch.int64)
    h = _fmix32((index & _M32) ^ k1)
    h = _fmix32(h ^ ((index >> 32) & _M32) ^ k2)
    u = (h.to(torch.float64) + 0.5) * (2.0 / 4294967296.0) - 1.0
    return u * math.sqrt(3.0)


def seeded_block(seed: int, name: str, full_shape: Sequence[int],
                 box: Sequence[Optional[Tuple[int, int]]], *, dtype: torch.dtype,
                 device, std: float = 1.0) -> torch.Tensor:
    """``full[box] * std`` of a virtual C-order tensor of ``full_shape`` whose element
    at linear index i is ``counter_uniform(i, seed, name)``. ``box`` holds a
    (start, stop) per axis, None for the whole axis."""
    full_shape = [int(n) for n in full_shape]
    if len(box) != len(full_shape):
        raise ValueError(f"box has {len(box)} axes, full_shape {len(full_shape)}")
    ranges = []
    for axis, (n, b) in enumerate(zip(full_shape, box)):
        start, stop = (0, n) if b is None else (int(b[0]), int(b[1]))
        if not 0 <= start <= stop <= n:
            raise ValueError(f"box axis {axis}: [{start}, {stop}) is outside [0, {n})")
        ranges.append((start, stop))
    strides, acc = [], 1
    for n in reversed(full_shape):
        strides.append(acc)
        acc *= n
    strides.reverse()
    if acc >= 1 << 63:
        raise ValueError(f"full_shape {full_shape} has more than 2**63 elements")
    sizes = [stop - start for start, stop in ranges]
    out = torch.empty(sizes, dtype=dtype, device=device)
    if out.numel() == 0:
        return out
    rest = torch.zeros((), dtype=torch.int64, device=device)
    for axis in range(1, len(sizes)):
        start, stop = ranges[axis]
        ar = torch.arange(start, stop, dtype=torch.int64, device=device) * strides[axis]
        rest = rest.unsqueeze(-1) + ar
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, math.prod(sizes[1:])))
    start0, stop0 = ranges[0]
    for r0 in range(start0, stop0, rows_per_chunk):
        r1 = min(stop0, r0 + rows_per_chunk)
        lead = torch.arange(r0, r1, dtype=torch.int64, device=device) * strides[0]
        index = lead.view([r1 - r0] + [1] * (len(sizes) - 1)) + rest
        out[r0 - start0:r1 - start0] = (counter_uniform(index, seed, name) * std).to(dtype)
    return out


# --------------------------------------------------------------------------- weights

@dataclass
class AttentionWeights:
    """One rank's projections (nn.Linear layout [out, in]): wq [H_q*D, hidden],
    wk and wv [H_kv*D, hidden] (column-parallel), wo [hidden, H_q*D] (row-parallel).
    Llama's attention projections have no bias."""

    wq: torch.Tensor
    wk: torch.Tensor
    wv: torch.Tensor
    wo: torch.Tensor

    def to(self, dtype: torch.dtype) -> "AttentionWeights":
        return AttentionWeights(self.wq.to(dtype), self.wk.to(dtype), self.wv.to(dtype),
                                self.wo.to(dtype))


def make_weights(shape: LayerShape, shard: HeadShard, seed: int, *, dtype: torch.dtype,
                 device) -> AttentionWeights:
    """The slice of the layer's random weights that ``shard`` owns, made directly
    (std 1/sqrt(fan_in), as nn.Linear's scale)."""
    d, hidden = shape.head_dim, shape.hidden
    q_rows = (shard.q_start * d, shard.q_stop * d)
    kv_rows = (shard.kv_start * d, shard.kv_stop * d)
    in_std, out_std = 1.0 / math.sqrt(hidden), 1.0 / math.sqrt(shape.num_heads * d)
    q_full, kv_full = (shape.num_heads * d, hidden), (shape.num_kv_heads * d, hidden)
    kw = dict(dtype=dtype, device=device)
    return AttentionWeights(
        wq=seeded_block(seed, "wq", q_full, (q_rows, None), std=in_std, **kw),
        wk=seeded_block(seed, "wk", kv_full, (kv_rows, None), std=in_std, **kw),
        wv=seeded_block(seed, "wv", kv_full, (kv_rows, None), std=in_std, **kw),
        wo=seeded_block(seed, "wo", (hidden, shape.num_heads * d), (None, q_rows), std=out_std,
                        **kw))


def shard_weights(full: AttentionWeights, shape: LayerShape, shard: HeadShard) -> AttentionWeights:
    """Cuts ``shard``'s weights out of the unsharded layer's (what loading a
    checkpoint onto rank r does)."""
    d = shape.head_dim
    q0, q1 = shard.q_start * d, shard.q_stop * d
    k0, k1 = shard.kv_start * d, shard.kv_stop * d
    return AttentionWeights(full.wq[q0:q1].contiguous(), full.wk[k0:k1].contiguous(),
                            full.wv[k0:k1].contiguous(), full.wo[:, q0:q1].contiguous())


def make_input(shape: LayerShape, batch: int, seed: int, *, dtype: torch.dtype,
               device) -> torch.Tensor:
    """The decode step's hidden states x [B, hidden] (the same on every rank)."""
    return seeded_block(seed, "x", (batch, shape.hidden), (None, None), dtype=dtype, device=device)


# --------------------------------------------------------------------------- KV cache

LAYOUTS = ("contiguous", "NHD", "HND")


@dataclass
class KvCache:
    """One rank's KV cache. ``layout`` "contiguous": k, v [B, H_kv, capacity, D];
    "NHD": page pools [pages, page_size, H_kv, D]; "HND": [pages, H_kv, page_size, D],
    with ``block_table`` int32 [B, max_pages] (the same on every rank). ``k_len``
    is the launch's length bound: every sequence length is <= it."""

    k: torch.Tensor
    v: torch.Tensor
    layout: str
    k_len: int
    block_table: Optional[torch.Tensor] = None
    page_size: int = 0

    @property
    def paged(self) -> bool:
        return self.block_table is not None

    @property
    def num_kv_heads(self) -> int:
        return self.k.shape[2] if self.layout == "NHD" else self.k.shape[1]

    def to(self, dtype: torch.dtype) -> "KvCache":
        return KvCache(self.k.to(dtype), self.v.to(dtype), self.layout, self.k_len,
                       self.block_table, self.page_size)


def make_seq_lens(batch: int, k_len: int, seed: int, *, ragged: bool, device) -> torch.Tensor:
    """int32 [B] sequence lengths after this step's token: all ``k_len``, or with
    ``ragged`` spread over [1, k_len] with the first at ``k_len`` (the bound is met)."""
    _positive("batch", batch)
    _positive("k_len", k_len)
    if not ragged:
        return torch.full((batch,), k_len, dtype=torch.int32, device=device)
    u = counter_uniform(torch.arange(batch, device=device), seed, "seq_lens")
    frac = (u / math.sqrt(3.0) + 1.0) / 2.0  # (0, 1)
    lens = (frac * k_len).floor().to(torch.int64).clamp(0, k_len - 1) + 1
    lens[0] = k_len
    return lens.to(torch.int32)


def make_block_table(batch: int, k_len: int, page_size: int, seed: int, *,
                     device) -> Tuple[torch.Tensor, int]:
    """(block_table int32 [B, ceil(k_len / page_size)], number of pages in the pool):
    every sequence gets its own pages in a shuffled order, so no sequence's pages are
    contiguous, and the pool keeps one sequence's worth of pages that no sequence
    uses (an engine's free list)."""
    _positive("page_size", page_size)
    max_pages = -(-k_len // page_size)
    used = batch * max_pages
    num_pages = used + max_pages
    keys = counter_uniform(torch.arange(num_pages, device=device), seed, "pages")
    order = torch.sort(keys, stable=True).indices[:used]
    return order.view(batch, max_pages).to(torch.int32), num_pages


def make_kv_cache(shape: LayerShape, shard: HeadShard, batch: int, k_len: int, seed: int, *,
                  dtype: torch.dtype, device, layout: str = "contiguous", page_size: int = 16,
                  block_table: Optional[torch.Tensor] = None,
                  num_pages: Optional[int] = None) -> KvCache:
    """``shard``'s part of a cache of ``batch`` sequences of up to ``k_len`` keys, filled
    with the layer's random history (position j of KV head h of sequence b has the
    same value whatever the split and layout). Paged layouts take ``block_table``
    and ``num_pages`` (the same on every rank) or make them from ``seed``; pages no
    sequence uses are NaN, so reading one shows in any comparison."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    _positive("batch", batch)
    _positive("k_len", k_len)
    h, d = shard.num_kv_heads, shape.head_dim
    if layout == "contiguous":
        capacity = k_len
    else:
        if not 1 <= page_size <= 256:
            raise ValueError(f"page_size must be in [1, 256], got {page_size}")
        if block_table is None:
            block_table, num_pages = make_block_table(batch, k_len, page_size, seed, device=device)
        elif num_pages is None:
            raise ValueError("num_pages is needed with a given block_table")
        capacity = block_table.shape[1] * page_size
    full = (batch, shape.num_kv_heads, KV_VIRTUAL_LEN, d)
    box = (None, (shard.kv_start, shard.kv_stop), (0, capacity), None)
    caches = []
    for name in ("k_cache", "v_cache"):
        hist = seeded_block(seed, name, full, box, dtype=dtype, device=device)
        if layout == "contiguous":
            caches.append(hist)
            continue
        max_pages = block_table.shape[1]
        pages = hist.view(batch, h, max_pages, page_size, d)
        nan = float("nan")
        if layout == "NHD":
            pool = torch.full((num_pages, page_size, h, d), nan, dtype=dtype, device=device)
            pool[block_table.long()] = pages.permute(0, 2, 3, 1, 4)
        else:
            pool = torch.full((num_pages, h, page_size, d), nan, dtype=dtype, device=device)
            pool[block_table.long()] = pages.permute(0, 2, 1, 3, 4)
        caches.append(pool)
    return KvCache(caches[0], caches[1], layout, k_len,
                   None if layout == "contiguous" else block_table,
                   0 if layout == "contiguous" else page_size)


def append_kv(cache: KvCache, k_new: torch.Tensor, v_new: torch.Tensor,
              positions: torch.Tensor) -> None:
    """Writes this step's keys and values [B, H_kv, D] at ``positions`` [B] (int64)."""
    b = torch.arange(k_new.shape[0], device=k_new.device)
    if cache.layout == "contiguous":
        cache.k[b, :, positions] = k_new
        cache.v[b, :, positions] = v_new
        return
    page = cache.block_table.long()[b, positions // cache.page_size]
    offset = positions % cache.page_size
    if cache.layout == "NHD":
        cache.k[page, offset] = k_new
        cache.v[page, offset] = v_new
    else:
        cache.k[page, :, offset] = k_new
        cache.v[page, :, offset] = v_new


def gather_contiguous(cache: KvCache) -> Tuple[torch.Tensor, torch.Tensor]:
    """The cache as contiguous k, v [B, H_kv, capacity, D] (a copy for paged layouts)."""
    if cache.layout == "contiguous":
        return cache.k, cache.v
    bt = cache.block_table.long()
    out = []
    for pool in (cache.k, cache.v):
        pages = pool[bt]  # NHD [B, P, ps, H, D]; HND [B, P, H, ps, D]
        if cache.layout == "NHD":
            pages = pages.permute(0, 3, 1, 2, 4)
        else:
            pages = pages.permute(0, 2, 1, 3, 4)
        b, h, p, ps, d = pages.shape
        out.append(pages.reshape(b, h, p * ps, d))
    return out[0], out[1]


def shard_kv_cache(full: KvCache, shard: HeadShard) -> KvCache:
    """Cuts ``shard``'s KV heads out of an unsharded cache (same layout, own memory;
    the block table is shared)."""
    s = slice(shard.kv_start, shard.kv_stop)
    if full.layout == "NHD":
        k, v = full.k[:, :, s], full.v[:, :, s]
    else:
        k, v = full.k[:, s], full.v[:, s]
    return KvCache(k.contiguous(), v.contiguous(), full.layout, full.k_len, full.block_table,
                   full.page_size)


# --------------------------------------------------------------------------- the layer

def rope_tables(positions: torch.Tensor, head_dim: int,
                theta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, D] in float64 for Llama's rotary embedding (rotate-half form)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64,
                                       device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, D] rotated by position; computed in float32 (float64 for float64 x)."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(work)
    c, s = cos.to(work)[:, None, :], sin.to(work)[:, None, :]
    half = x.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * c + rotated * s).to(x.dtype)


Attend = Callable[[torch.Tensor, KvCache, torch.Tensor], torch.Tensor]


@dataclass
class StepResult:
    """out [B, hidden] (combined over ranks when an all-reduce was given); y, q
    [B, H_q, D] and k_new, v_new [B, H_kv, D] of this rank's heads."""

    out: torch.Tensor
    y: torch.Tensor
    q: torch.Tensor
    k_new: torch.Tensor
    v_new: torch.Tensor


def layer_step(x: torch.Tensor, w: AttentionWeights, cache: KvCache, seq_lens: torch.Tensor,
               cos: torch.Tensor, sin: torch.Tensor, attend: Attend,
               all_reduce: Optional[Callable[[torch.Tensor], None]] = None) -> StepResult:
    """One decode step of the attention layer on one rank's heads: project, rotate,
    append the new token at position seq_lens - 1, attend, project out, all-reduce.
    Writing the same slot every call makes repeated steps give the same result."""
    b, d = x.shape[0], cos.shape[-1]
    q = (x @ w.wq.t()).view(b, -1, d)
    k_new = (x @ w.wk.t()).view(b, -1, d)
    v_new = (x @ w.wv.t()).view(b, -1, d)
    q, k_new = apply_rope(q, cos, sin), apply_rope(k_new, cos, sin)
    append_kv(cache, k_new, v_new, seq_lens.long() - 1)
    y = attend(q, cache, seq_lens)
    out = y.reshape(b, -1) @ w.wo.t()
    if all_reduce is not None:
        all_reduce(out)
    return StepResult(out, y, q, k_new, v_new)


# --------------------------------------------------------------------------- reference

def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        seq_lens: torch.Tensor, scale: float,
                        compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """softmax(scale * q . k^T) . v over each sequence's first seq_lens[b] keys, in
    ``compute_dtype``: q [B, H_q, D], k and v [B, H_kv, K, D]. An empty sequence gives 0."""
    b, hq, d = q.shape
    hkv, kcap = k.shape[1], k.shape[2]
    qg = q.to(compute_dtype).view(b, hkv, hq // hkv, d)
    logits = torch.einsum("bngd,bnkd->bngk", qg, k.to(compute_dtype)) * scale
    keep = torch.arange(kcap, device=q.device)[None, :] < seq_lens.to(q.device).long()[:, None]
    logits = logits.masked_fill(~keep[:, None, None, :], float("-inf"))
    p = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # all -inf rows: zeros
    # 0 * NaN is NaN: keys past a sequence's length must not reach y.
    vc = v.to(compute_dtype).masked_fill(~keep[:, None, :, None], 0.0)
    y = torch.einsum("bngk,bnkd->bngd", p, vc)
    return y.reshape(b, hq, d)


def torch_attention(scale: float, compute_dtype: torch.dtype = torch.float64) -> Attend:
    """An ``attend`` for layer_step in plain torch (any device), result in q's dtype."""

    def attend(q, cache, seq_lens):
        k, v = gather_contiguous(cache)
        return reference_attention(q, k, v, seq_lens, scale, compute_dtype).to(q.dtype)

    return attend


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max |y - ref| / max |ref| in float64 (the figure TOLERANCE bounds); NaN -> inf."""
    if y.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(y.shape)} vs {tuple(ref.shape)}")
    y64, r64 = y.detach().to(torch.float64), ref.detach().to(ref.device, torch.float64)
    y64 = y64.to(r64.device)
    if y64.numel() == 0:
        return 0.0
    if not bool(torch.isfinite(y64).all()):
        return math.inf
    return float((y64 - r64).abs().max() / max(float(r64.abs().max()), 1e-30))


def differing_heads(a: torch.Tensor, b: torch.Tensor) -> List[int]:
    """Heads (axis 1 of [B, H, D]) whose bits differ anywhere between a and b."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"cannot compare {tuple(a.shape)} {a.dtype} with "
                         f"{tuple(b.shape)} {b.dtype}")
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    diff = a.contiguous().view(as_int) != b.to(a.device).contiguous().view(as_int)
    return [int(h) for h in torch.nonzero(diff.any(dim=2).any(dim=0)).flatten()]
