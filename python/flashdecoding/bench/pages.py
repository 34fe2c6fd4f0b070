"""Page tables for the paged rows and for FlashInfer: which pages of each
sequence hold attended keys, where each lands in the pool, the block table
flashdecoding reads and FlashInfer's (indptr, indices, last_page_len).

Pure numpy (no torch): the CPU tests check every mapping.  The pool itself is
gathered on the GPU from these indices (data.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .shapes import attended_ranges


@dataclass
class PagePlan:
    """A pool of ``num_pages`` pages of ``page_size`` keys for B sequences.

    ``source[s]`` is the page that pool slot ``s`` holds, numbered ``b *
    pages_per_seq + j`` (page j of sequence b in the cache's own order);
    ``pool_index[b, j]`` is the slot of that page (-1 past the sequence's end).
    Pages of a sequence with no attended key (before a window) all point at one
    zero page, ``dummy``, so the pool holds only what a call reads.
    """

    page_size: int
    pages_per_seq: int
    lengths: tuple
    source: np.ndarray
    pool_index: np.ndarray
    dummy: Optional[int]

    @property
    def num_live(self) -> int:
        return int(self.source.size)

    @property
    def num_pages(self) -> int:
        return self.num_live + (self.dummy is not None)

    def pages_of(self, b: int) -> int:
        return -(-self.lengths[b] // self.page_size)

    def block_table(self, max_pages: int) -> np.ndarray:
        """int32 [B, max_pages]: row b lists sequence b's pages, then zeros."""
        need = max((self.pages_of(b) for b in range(len(self.lengths))), default=0)
        if max_pages < need:
            raise ValueError(f"max_pages {max_pages} < {need} pages of the longest sequence")
        table = np.zeros((len(self.lengths), max_pages), dtype=np.int32)
        for b in range(len(self.lengths)):
            n = self.pages_of(b)
            table[b, :n] = self.pool_index[b, :n]
        return table

    def flashinfer_arrays(self):
        """(indptr [B+1], indices [sum of pages], last_page_len [B]), int32."""
        counts = [self.pages_of(b) for b in range(len(self.lengths))]
        indptr = np.zeros(len(counts) + 1, dtype=np.int32)
        indptr[1:] = np.cumsum(counts)
        indices = np.concatenate(
            [self.pool_index[b, :n] for b, n in enumerate(counts)] or [np.zeros(0)]
        ).astype(np.int32)
        last = np.array([length - (n - 1) * self.page_size if n else 0
                         for length, n in zip(self.lengths, counts)], dtype=np.int32)
        return indptr, indices, last


def plan_pages(lengths: Sequence[int], k_len: int, page_size: int, window: int = 0,
               sink_tokens: int = 0, shuffle_seed: Optional[int] = None) -> PagePlan:
    """Pages for sequences of ``lengths`` keys (each <= ``k_len``).  With
    ``shuffle_seed`` the pool order is a seeded permutation (an engine's pool
    after some churn); without, pages lie in order."""
    if page_size < 1:
        raise ValueError(f"page_size {page_size} < 1")
    lengths = tuple(int(x) for x in lengths)
    if any(not 0 <= x <= k_len for x in lengths):
        raise ValueError(f"lengths outside [0, {k_len}]")
    per_seq = max(1, -(-k_len // page_size))
    start = np.arange(per_seq, dtype=np.int64) * page_size
    end = start + page_size
    exists = np.zeros((len(lengths), per_seq), dtype=bool)
    live = np.zeros_like(exists)
    for b, length in enumerate(lengths):
        exists[b, :-(-length // page_size)] = True  # ceil(length / page_size) pages
        for lo, hi in attended_ranges(length, window, sink_tokens):
            live[b] |= (start < hi) & (end > lo)
    live &= exists
    source = np.flatnonzero(live.ravel()).astype(np.int64)
    slot = np.arange(source.size, dtype=np.int64)
    if shuffle_seed is not None:
        slot = np.random.default_rng(shuffle_seed).permutation(source.size)
    pool_source = np.empty_like(source)
    pool_source[slot] = source                     # slot[i] holds the i-th live page
    pool_index = np.full(exists.shape, -1, dtype=np.int64)
    pool_index.ravel()[source] = slot
    dead = exists & ~live
    dummy = None
    if dead.any():
        dummy = int(source.size)
        pool_index[dead] = dummy
    return PagePlan(page_size=page_size, pages_per_seq=per_seq, lengths=lengths,
                    source=pool_source, pool_index=pool_index, dummy=dummy)
