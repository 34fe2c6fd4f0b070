"""The keys one query token attends, from a transformers attention mask, as
flashdecoding's per-sequence lengths and block table.

For a single query token the mask row is all there is to know: the set of cache
slots it attends. The set need not be a prefix -- left padding masks the first
slots, a sliding-window cache that has wrapped around holds its keys out of order
-- and the softmax does not depend on the order of its keys (rotary positions are
already in k). So each sequence's attended slots are listed in a block table of
one-key pages over the cache itself, with the count as its length: every mask is
honoured exactly, with no copy of the cache and nothing read back to the host, so
the step stays capturable in a CUDA graph.

The cache [B, H_kv, S, D] is seen as a pool of one-key pages in the HND layout
[pages, H_kv, 1, D]: page ``b * P + j`` is slot j of sequence b, where
P = stride_b / stride_s (H_kv * S for a contiguous cache).
"""
from __future__ import annotations

import weakref
from typing import Optional, Tuple

import torch

INT32_MAX = 2 ** 31 - 1


def attended_slots(mask: torch.Tensor, batch: int, slots: int) -> Optional[torch.Tensor]:
    """bool [B, S]: the slots the (single) query of each sequence attends.

    ``mask`` is transformers' 4D mask [B or 1, 1, q_len, >= S], boolean (True
    attends). Returns None for a mask this cannot read exactly: an additive float
    mask (its values may carry a bias), a head dimension other than 1, a shape that
    does not broadcast to the batch, or no tensor at all (flex attention's BlockMask).
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.dtype != torch.bool:
        return None
    if mask.shape[1] != 1 or mask.shape[0] not in (1, batch) or mask.shape[-1] < slots:
        return None
    row = mask[:, 0, -1, :slots]
    return row.expand(batch, slots)


def lengths_and_table(attended: torch.Tensor,
                      pages_per_seq: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(seq_lens int32 [B], block_table int32 [B, S]): each sequence's attended slot
    count, and its attended slots first (in slot order) as page ids b * P + slot.
    Entries past a sequence's length are valid page ids that are never read."""
    batch, slots = attended.shape
    seq_lens = attended.sum(dim=-1, dtype=torch.int32)
    # A stable sort of "not attended" puts the attended slots first, in order.
    order = torch.argsort((~attended).to(torch.uint8), dim=-1, stable=True)
    base = torch.arange(batch, device=attended.device, dtype=torch.int64) * pages_per_seq
    table = (order + base[:, None]).to(torch.int32)
    return seq_lens, table


def one_key_pages(cache: torch.Tensor) -> Optional[Tuple[torch.Tensor, int]]:
    """(pool, P): ``cache`` [B, H_kv, S, D] viewed as a pool of one-key pages
    [pages, H_kv, 1, D] (HND) and its pages per sequence P; None when its strides
    cannot be read that way (D not contiguous, the batch stride not a multiple of
    the slot stride, or more pages than an int32 holds)."""
    if cache.dim() != 4:
        return None
    batch, heads, slots, dim = cache.shape
    sb, sh, ss, sd = cache.stride()
    if batch == 0 or slots == 0 or (dim > 1 and sd != 1) or ss <= 0:
        return None
    if batch > 1 and (sb <= 0 or sb % ss):
        return None
    per_seq = sb // ss if batch > 1 else slots
    pages = (batch - 1) * per_seq + slots
    if pages > INT32_MAX:
        return None
    if min(sb, sh, sd) < 0:
        return None
    # The pool must not reach past the last element the cache itself spans.
    last = sum((n - 1) * s for n, s in zip(cache.shape, cache.stride()))
    if (pages - 1) * ss + (heads - 1) * sh + (dim - 1) > last:
        return None
    # (No storage offset given: the view starts where the cache does; reading the
    # offset would stop torch.compile's tracing.)
    pool = cache.as_strided((pages, heads, 1, dim), (ss, sh, ss, 1))
    return pool, per_seq


class TableMemo:
    """Lengths and tables per mask object: every layer of one forward gets the same
    mask tensor, so its table is built once per step (per mask: hybrid models have
    a full and a sliding one). An entry holds a weak reference to its mask and the
    mask's version counter, so a new or modified mask is never served a stale table.
    """

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self._entries = {}

    def get(self, mask: torch.Tensor, attended: torch.Tensor, pages_per_seq: int):
        key = (id(mask), pages_per_seq, tuple(attended.shape))
        hit = self._entries.get(key)
        if hit is not None and hit[0]() is mask and hit[1] == mask._version:
            return hit[2]
        value = lengths_and_table(attended, pages_per_seq)
        if len(self._entries) >= self.capacity:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (weakref.ref(mask), mask._version, value)
        return value

    def clear(self) -> None:
        self._entries.clear()
