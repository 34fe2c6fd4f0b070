"""CPU tests of the benchmark (the flashdecoding.bench package).

Everything here runs without a GPU: the grids, row naming, byte counting, page
tables, the bar and its text in docs/PERFORMANCE.md, the ceiling's max rule,
the read kernel's geometry and source, the report (table, JSON, CSV), argument
parsing, and a whole run driven through fake device modules.  The pieces that
use torch (the reference, the page pools, the replicas) run on CPU tensors.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from flashdecoding.bench import bar as br
from flashdecoding.bench import ceiling as cl
from flashdecoding.bench import cli
from flashdecoding.bench import compare as cmp
from flashdecoding.bench import grids as gr
from flashdecoding.bench import meta
from flashdecoding.bench import pages as pg
from flashdecoding.bench import progress as prog
from flashdecoding.bench import read_kernel as rk
from flashdecoding.bench import report as rpt
from flashdecoding.bench import runner
from flashdecoding.bench import shapes as shp
from flashdecoding.bench import stats as st
from flashdecoding.bench import support
from flashdecoding.bench.shapes import Case, Shape

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30

try:
    import torch
    HAVE_TORCH = True
except Exception:
    HAVE_TORCH = False
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs torch (not installed here)")


def _case(label):
    """The zoo / perf case with exactly this label."""
    for _, c in gr.select("all", "both"):
        if c.label() == label:
            return c
    raise KeyError(label)


# ------------------------------------------------------------------ shapes, bytes

# The perf grid: (Hq, Hkv, D, B, K, floor µs at a 3049 GB/s read ceiling).
PERF_ROWS = [
    (32, 8, 128, 1, 8192, 11.0), (32, 32, 128, 1, 8192, 44.0),
    (64, 8, 128, 1, 32768, 44.0), (32, 8, 128, 16, 4096, 88.1),
    (32, 8, 128, 64, 2048, 176.4), (32, 8, 128, 128, 1024, 176.8),
    (32, 32, 128, 32, 2048, 352.3), (8, 1, 128, 8, 16384, 22.0),
    (16, 16, 64, 32, 1024, 44.1), (32, 8, 128, 1, 512, 0.7),
]


def test_perf_grid_rows_and_floors():
    grid = gr.perf_grid()
    assert len(grid) == 10
    for c, (hq, hkv, d, b, k, floor) in zip(grid, PERF_ROWS):
        s = c.shape
        assert (s.Hq, s.Hkv, s.D, s.B, s.K, c.dtype) == (hq, hkv, d, b, k, "bf16")
        assert c.plain and not c.name
        assert round(shp.floor_us(c.problem_bytes(), 3049.0), 1) == pytest.approx(floor, abs=0.051)
    assert grid[-1].shape == gr.LATENCY_SHAPE
    assert gr.LATENCY_SHAPE.label() == "32/8 D128 B1 K512"


def test_problem_bytes_formula():
    c = Case(Shape(B=3, Hq=12, Hkv=4, K=100, D=64), dtype="f16")
    assert c.kv_read_bytes() == 2 * 3 * 4 * 100 * 64 * 2 == c.kv_alloc_bytes()
    assert c.problem_bytes() == 2 * 3 * 4 * 100 * 64 * 2 + 2 * 3 * 12 * 64 * 2
    assert shp.gbps_of(2000, 1.0) == pytest.approx(2000.0 / 1e-6 / 1e9)
    with pytest.raises(ValueError):
        shp.floor_us(10, 0)
    with pytest.raises(ValueError):
        shp.gbps_of(10, 0.0)


def test_fp8_counts_one_byte_per_element():
    base = Case(Shape(16, 32, 8, 4096, 128))
    fp8 = base.replace(kv="e4m3")
    assert fp8.kv_read_bytes() * 2 == base.kv_read_bytes()
    assert fp8.kv_bytes_16bit() == base.kv_read_bytes()
    assert fp8.qy_bytes() == base.qy_bytes()                    # q and y stay bf16
    assert fp8.problem_bytes() == base.problem_bytes() - base.kv_read_bytes() // 2
    assert fp8.kv_alloc_bytes() * 2 == base.kv_alloc_bytes()


@pytest.mark.parametrize("length,window,sinks,expect", [
    (100, 0, 0, [(0, 100)]), (100, 100, 4, [(0, 100)]), (100, 150, 4, [(0, 100)]),
    (100, 30, 0, [(70, 100)]), (100, 30, 4, [(0, 4), (70, 100)]),
    (33, 30, 4, [(0, 3), (3, 33)]),             # sinks run into the window: no key twice
    (0, 30, 4, []), (5, 0, 0, [(0, 5)]),
])
def test_attended_ranges(length, window, sinks, expect):
    assert shp.attended_ranges(length, window, sinks) == expect
    keys = set()
    for lo, hi in expect:
        keys |= set(range(lo, hi))
    assert shp.attended_keys(length, window, sinks) == len(keys)


def test_bytes_of_window_sink_and_ragged_rows():
    s = Shape(16, 32, 8, 16384, 128)
    win = Case(s, window=4096)
    sink = win.replace(sink_tokens=4)
    per_key = 2 * 8 * 128 * 2
    assert win.kv_read_bytes() == 16 * 4096 * per_key
    assert sink.kv_read_bytes() == 16 * 4100 * per_key
    ragged = Case(Shape(4, 32, 8, 1000, 128), seq_lens=(10, 1000, 0, 333))
    assert ragged.kv_read_bytes() == (10 + 1000 + 0 + 333) * per_key
    assert ragged.kv_alloc_bytes() == 4 * 1000 * per_key
    assert ragged.max_seq_len == 1000


@pytest.mark.parametrize("text,expect", [
    ("1,32,8,512,128", (1, 32, 8, 512, 128)),
    (" 4, 8 ,1, 1000, 64 ", (4, 8, 1, 1000, 64)),
    ("2x16x16x257x72", (2, 16, 16, 257, 72)),
])
def test_parse_shape(text, expect):
    s = shp.parse_shape(text)
    assert (s.B, s.Hq, s.Hkv, s.K, s.D) == expect


@pytest.mark.parametrize("text", ["1,32,8,512", "1,32,8,512,128,1", "a,b,c,d,e",
                                  "1,32,7,512,128", "0,32,8,512,128", "1,32,8,0,128",
                                  "1,32,8,512,", "1.5,32,8,512,128"])
def test_parse_shape_rejects(text):
    with pytest.raises(ValueError):
        shp.parse_shape(text)


@pytest.mark.parametrize("kw,msg", [
    ({"dtype": "f32"}, "dtype"), ({"kv": "int8"}, "kv"), ({"page_size": 257}, "page_size"),
    ({"table_keys": 8192}, "needs page_size"), ({"page_size": 16, "table_keys": 100}, "table_keys"),
    ({"seq_lens": (1, 2)}, "seq_lens"), ({"seq_lens": (1, 2, 3, 5000)}, "outside"),
    ({"window": -1}, ">= 0"), ({"sink_tokens": 4}, "window"),
])
def test_case_rejects(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Case(Shape(4, 8, 8, 4096, 64), **kw)


def test_paged_table_sizes():
    s = Shape(64, 32, 8, 8192, 128)
    lens = gr.ragged_lengths(64, 256, 8192)
    exact = Case(s, seq_lens=lens, page_size=16)
    cap = exact.replace(table_keys=gr.CAPACITY_KEYS)
    assert exact.max_pages == 8192 // 16 and exact.max_seq_len == 8192
    assert cap.max_pages == 32768 // 16 and cap.max_seq_len == 32768
    p1 = Case(Shape(16, 32, 8, 4096, 128), page_size=1)
    assert p1.max_pages == 4096 and p1.max_seq_len == 4096
    assert Case(Shape(2, 8, 8, 100, 64), page_size=16).max_pages == 7
    assert Case(Shape(2, 8, 8, 100, 64)).max_pages == 0


def test_ragged_lengths():
    lens = gr.ragged_lengths(64, 256, 8192)
    assert len(lens) == 64 and min(lens) == 256 and max(lens) == 8192
    assert sorted(lens) == [256 + round(7936 * i / 63) for i in range(64)]
    assert list(lens) != sorted(lens)
    # neighbours differ: the order interleaves short and long sequences
    assert sum(abs(a - b) for a, b in zip(lens, lens[1:])) / 63 > 2000
    assert gr.ragged_lengths(1, 5, 9) == (9,)
    with pytest.raises(ValueError):
        gr.ragged_lengths(4, 10, 5)


# ------------------------------------------------------------------ grids, naming

ZOO_MODELS = [
    "Qwen2.5-7B 28/4 D128 B1 K32768", "Qwen2.5-7B 28/4 D128 B32 K4096",
    "Llama-3-8B high batch 32/8 D128 B256 K512", "Llama-3-8B high batch 32/8 D128 B8 K16384",
    "Llama-3-70B TP8 8/1 D128 B32 K8192", "Phi-3-mini 32/32 D96 B4 K4096",
    "Phi-3-mini 32/32 D96 B16 K2048", "gpt-oss-20b 64/8 D64 B16 K8192",
    "gpt-oss-20b 64/8 D64 B16 K8192 window 128 + sink logits",
    "long context 32/8 D128 B1 K262144", "long context 8/1 D128 B1 K1048576",
    "ragged batch 32/8 D128 B64 K8192 lengths 256-8192",
]
ZOO_EXTRAS = [
    "Llama-3-8B 32/8 D128 B16 K4096 bf16", "Llama-3-8B 32/8 D128 B16 K4096 paged P16 bf16",
    "Llama-3-8B 32/8 D128 B16 K4096 paged P1 bf16", "Llama-3-8B 32/8 D128 B64 K2048 bf16",
    "Llama-3-8B 32/8 D128 B64 K2048 paged P16 bf16", "Llama-3-8B 32/8 D128 B64 K2048 paged P1 bf16",
    "ragged batch 32/8 D128 B64 K8192 lengths 256-8192 paged P16 bf16",
    "ragged batch 32/8 D128 B64 K8192 lengths 256-8192 paged P16 table 32k bf16",
    "Llama-3-8B 32/8 D128 B16 K4096 fp8 e4m3 q bf16", "Llama-3-8B 32/8 D128 B1 K32768 bf16",
    "Llama-3-8B 32/8 D128 B1 K32768 fp8 e4m3 q bf16", "Llama-3-8B 32/8 D128 B64 K2048 fp8 e4m3 q bf16",
    "Gemma-2-9B 16/8 D256 B1 K8192 bf16", "Gemma-2-9B 16/8 D256 B16 K4096 bf16",
    "Gemma-2-9B 16/8 D256 B64 K2048 bf16", "MHA D256 32/32 D256 B8 K4096 bf16",
    "Gemma-2-9B 16/8 D256 B1 K8192 soft-cap 50 bf16",
    "Gemma-2-9B 16/8 D256 B16 K4096 soft-cap 50 bf16",
    "StreamingLLM 32/8 D128 B16 K16384 window 4096 bf16",
    "StreamingLLM 32/8 D128 B16 K16384 window 4096 + 4 sink tokens bf16",
]


def test_zoo_rows_are_named_after_their_models():
    labels = [c.label() for c in gr.zoo_grid()]
    expect = ([f"{m} bf16" for m in ZOO_MODELS] + [f"{m} f16" for m in ZOO_MODELS]
              + ZOO_EXTRAS)
    assert labels == expect
    assert len(set(labels)) == len(labels)              # every label names one row
    assert all(c.name for c in gr.zoo_grid())


def test_zoo_extras_follow_the_first_dtype():
    zoo = gr.zoo_grid(("f16",))
    assert {c.dtype for c in zoo} == {"f16"}
    assert len(zoo) == len(ZOO_MODELS) + len(ZOO_EXTRAS)
    assert "Llama-3-8B 32/8 D128 B1 K32768 fp8 e4m3 q f16" in [c.label() for c in zoo]
    with pytest.raises(ValueError):
        gr.zoo_grid(())


def test_zoo_row_features():
    c = _case("gpt-oss-20b 64/8 D64 B16 K8192 window 128 + sink logits bf16")
    assert (c.window, c.sink_logits, c.sink_tokens) == (128, True, 0)
    assert c.kv_read_bytes() == 16 * 128 * 2 * 8 * 64 * 2
    c = _case("StreamingLLM 32/8 D128 B16 K16384 window 4096 + 4 sink tokens bf16")
    assert (c.window, c.sink_tokens) == (gr.STREAMING_WINDOW, 4)
    c = _case("ragged batch 32/8 D128 B64 K8192 lengths 256-8192 paged P16 table 32k bf16")
    assert c.ragged and c.page_size == 16 and c.table_keys == 32768
    assert _case("Llama-3-8B 32/8 D128 B64 K2048 fp8 e4m3 q bf16").kv == "e4m3"
    g = _case("Gemma-2-9B 16/8 D256 B16 K4096 soft-cap 50 bf16")
    assert g.soft_cap == 50.0 and not g.plain
    assert g.kv_read_bytes() == _case("Gemma-2-9B 16/8 D256 B16 K4096 bf16").kv_read_bytes()
    assert g.as_dict()["soft_cap"] == 50.0
    with pytest.raises(ValueError, match="soft_cap"):
        g.replace(soft_cap=-1.0)


def test_every_zoo_baseline_is_in_the_zoo():
    zoo = gr.zoo_grid()
    keys = {c.key() for c in zoo}
    kinds = set()
    for c in zoo:
        found = gr.baseline_of(c)
        if found is None:
            continue
        base, kind = found
        kinds.add(kind)
        assert base.key() in keys, (c.label(), base.label())
    assert kinds == {"exact table", "contiguous", "bf16 KV", "window only", "no soft-cap",
                     "bf16"}


def test_baseline_of():
    s = Shape(16, 32, 8, 4096, 128)
    c = Case(s)
    assert gr.baseline_of(c) is None
    assert gr.baseline_of(c.replace(page_size=16)) == (c, "contiguous")
    assert gr.baseline_of(c.replace(page_size=16, table_keys=32768)) == \
        (c.replace(page_size=16), "exact table")
    assert gr.baseline_of(c.replace(kv="e4m3")) == (c, "bf16 KV")
    assert gr.baseline_of(c.replace(dtype="f16")) == (c, "bf16")
    assert gr.baseline_of(c.replace(soft_cap=50.0)) == (c, "no soft-cap")
    w = c.replace(window=100)
    assert gr.baseline_of(w.replace(sink_tokens=4)) == (w, "window only")


def test_select_grids_and_dtypes():
    perf = gr.select("perf")
    assert [g for g, _ in perf] == ["perf"] * 10
    zoo = gr.select("zoo")
    both = gr.select("all")
    assert both == perf + zoo
    assert {c.dtype for _, c in gr.select("perf", "both")} == {"bf16", "f16"}
    assert len(gr.select("perf", "both")) == 20
    assert {c.dtype for _, c in gr.select("all", "f16")} == {"f16"}
    assert gr.dtypes_for("zoo", None) == ("bf16", "f16")
    assert gr.dtypes_for("perf", None) == ("bf16",)
    with pytest.raises(ValueError):
        gr.select("big")
    custom = gr.custom([Shape(1, 8, 8, 64, 64)], None)
    assert custom == [("custom", Case(Shape(1, 8, 8, 64, 64)))]


def test_shared_rows_are_measured_once():
    sel = gr.select("all")
    uniq = runner.unique_cases(sel)
    # the zoo's contiguous Llama-3-8B B16 K4096 and B64 K2048 are perf-grid rows too
    assert len(sel) - len(uniq) == 2
    assert len({c.key() for c in uniq}) == len(uniq)


# ------------------------------------------------------------------ replicas

def test_replica_plan():
    assert shp.replica_plan(2 << 20, GIB, 4 * GIB) == 512
    assert shp.replica_plan(GIB, GIB, 4 * GIB) == 2
    assert shp.replica_plan(3 * GIB, GIB, 4 * GIB) == 2
    assert shp.replica_plan(1 << 20, GIB, 64 << 20) == 64
    # read half of what a replica holds (ragged rows): the budget counts what is held
    assert shp.replica_plan(1 << 20, GIB, 64 << 20, alloc_per_replica=2 << 20) == 32
    for c in gr.perf_grid():
        r = shp.replicas_for(c, GIB, 4 * GIB)
        assert r >= 2 and r * c.kv_read_bytes() >= GIB and r * c.kv_alloc_bytes() <= 4 * GIB


def test_window_rows_replicas_are_shifted_views():
    c = _case("gpt-oss-20b 64/8 D64 B16 K8192 window 128 + sink logits bf16")
    assert shp.replica_shift(c) == 128
    r = shp.replicas_for(c, GIB, 4 * GIB)
    assert r * c.kv_read_bytes() >= GIB                      # 1 GiB read per pass ...
    assert shp.replica_alloc_bytes(c, r) <= 4 * GIB          # ... in under 4 GiB
    assert shp.replica_alloc_bytes(c, r) == \
        c.kv_alloc_bytes() // 8192 * (8192 + (r - 1) * 128)
    s = _case("StreamingLLM 32/8 D128 B16 K16384 window 4096 + 4 sink tokens bf16")
    assert shp.replica_shift(s) == 4112                      # 4100 rounded up to 16
    assert shp.replica_shift(gr.perf_grid()[0]) == 0


def test_calls_per_graph():
    for R in (2, 3, 16, 512, 3000):
        for floor in (0.5, 11.0, 352.0):
            n = shp.calls_per_graph(R, floor)
            assert n % R == 0 and n >= 16 and n >= R
    assert shp.calls_per_graph(2, 352.0) == 16
    assert shp.calls_per_graph(512, 0.7) == 512
    assert shp.calls_per_graph(16, 22.0) == 48


def test_replicas_shrink_to_free_memory():
    args = cli.parse_args(["--grid", "perf"])
    c = Case(Shape(B=1, Hq=8, Hkv=8, K=4096, D=128))      # 16 MiB of KV
    assert runner.replicas_for(c, args, 1 << 40, ["flashdecoding"]) == 64
    # 3 GiB free holds 64 replicas, but not 64 more as FlashInfer's page pools
    assert runner.replicas_for(c, args, 3 * GIB, ["flashdecoding"]) == 64
    assert 2 < runner.replicas_for(c, args, 3 * GIB, ["fi-cc"]) < 64
    assert runner.replicas_for(c, args, 1, ["flashdecoding"]) == 2


# ------------------------------------------------------------------ page tables

def _check_plan(plan, lengths, k_len, P, window=0, sinks=0):
    per_seq = -(-k_len // P)
    assert plan.pages_per_seq == per_seq
    # every slot holds one page, every live page sits in one slot
    assert sorted(plan.source.tolist()) == sorted(set(plan.source.tolist()))
    for slot, src in enumerate(plan.source.tolist()):
        b, j = divmod(src, per_seq)
        assert plan.pool_index[b, j] == slot
    for b, L in enumerate(lengths):
        n = -(-L // P)
        assert plan.pages_of(b) == n
        assert (plan.pool_index[b, n:] == -1).all()
        ranges = shp.attended_ranges(L, window, sinks)
        for j in range(n):
            live = any(j * P < hi and (j + 1) * P > lo for lo, hi in ranges)
            if live:
                assert plan.source[plan.pool_index[b, j]] == b * per_seq + j
            else:
                assert plan.pool_index[b, j] == plan.dummy is not None


@pytest.mark.parametrize("P", [1, 3, 16, 17])
@pytest.mark.parametrize("shuffle", [None, 7])
def test_plan_pages_full_attention(P, shuffle):
    lengths = (0, 1, P - 1 or 1, P, P + 1, 100)
    plan = pg.plan_pages(lengths, 100, P, shuffle_seed=shuffle)
    _check_plan(plan, lengths, 100, P)
    assert plan.dummy is None
    assert plan.num_live == sum(-(-L // P) for L in lengths) == plan.num_pages
    if shuffle is not None and plan.num_live > 8:
        assert plan.source.tolist() != sorted(plan.source.tolist())
    indptr, indices, last = plan.flashinfer_arrays()
    assert indptr.tolist() == [0] + np.cumsum([-(-L // P) for L in lengths]).tolist()
    for b, L in enumerate(lengths):
        pages = indices[indptr[b]:indptr[b + 1]]
        assert pages.tolist() == plan.pool_index[b, :-(-L // P)].tolist()
        assert last[b] == (L - (len(pages) - 1) * P if L else 0)
        assert 0 < last[b] <= P or L == 0


def test_plan_pages_window_uses_one_dummy_page():
    lengths = (200, 64, 150)
    plan = pg.plan_pages(lengths, 200, 16, window=40, sink_tokens=4, shuffle_seed=3)
    _check_plan(plan, lengths, 200, 16, window=40, sinks=4)
    assert plan.dummy == plan.num_live and plan.num_pages == plan.num_live + 1
    # sequence 0: keys 0..3 and 160..199 -> pages 0, 10, 11, 12 live
    live0 = [j for j in range(13) if plan.pool_index[0, j] != plan.dummy]
    assert live0 == [0, 10, 11, 12]


def test_block_table():
    lengths = (5, 40, 16)
    plan = pg.plan_pages(lengths, 40, 16, shuffle_seed=1)
    t = plan.block_table(8)
    assert t.shape == (3, 8) and t.dtype == np.int32
    assert t[0].tolist() == [plan.pool_index[0, 0]] + [0] * 7
    assert t[1, :3].tolist() == plan.pool_index[1, :3].tolist() and (t[1, 3:] == 0).all()
    with pytest.raises(ValueError, match="max_pages"):
        plan.block_table(2)
    with pytest.raises(ValueError):
        pg.plan_pages((41,), 40, 16)


@needs_torch
@pytest.mark.parametrize("dtype", ["bf16", "e4m3"])
def test_pool_gathers_the_pages_of_the_cache(dtype):
    from flashdecoding.bench import data as dm
    from flashdecoding.bench.gpu import torch_kv_dtype
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 37, 8, generator=g).to(torch_kv_dtype(dtype))
    lengths = (37, 5, 20)
    plan = pg.plan_pages(lengths, 37, 16, shuffle_seed=5)
    pool = dm.pool_from(x, plan)
    assert pool.shape == (plan.num_pages, 2, 16, 8) and pool.dtype == x.dtype
    raw, praw = x.view(torch.uint8 if dtype == "e4m3" else torch.int16), \
        pool.view(torch.uint8 if dtype == "e4m3" else torch.int16)
    for b, L in enumerate(lengths):
        for t in range(L):
            page, off = divmod(t, 16)
            assert torch.equal(praw[plan.pool_index[b, page], :, off], raw[b, :, t])


@needs_torch
def test_case_data_on_cpu_window_replicas_and_fp8():
    from flashdecoding.bench import data as dm
    c = Case(Shape(2, 4, 2, 64, 16), window=16, sink_tokens=2)
    d = dm.CaseData(c, 3, seed=0, device="cpu")
    assert d.shift == 32 and d.k_buf.shape == (2, 2, 64 + 2 * 32, 16)
    for r in range(3):
        assert d.k[r].shape == (2, 2, 64, 16)
        assert torch.equal(d.k[r][:, :, 0], d.k_buf[:, :, r * 32])
    # the attended keys of two replicas are different bytes
    w0, w1 = d.k[0][:, :, 48:], d.k[1][:, :, 48:]
    assert not torch.equal(w0, w1)
    f = dm.CaseData(Case(Shape(2, 4, 2, 64, 16), kv="e4m3"), 2, seed=0, device="cpu")
    assert f.k[0].dtype == torch.float8_e4m3fn and f.q.dtype == torch.bfloat16
    assert (f.k_scale, f.v_scale) == (dm.FP8_K_SCALE, dm.FP8_V_SCALE)
    # dequantised k is about unit variance: stored / k_scale
    assert 0.7 < float((f.k[0].float() * f.k_scale).std()) < 1.3
    pools = f.pools(16, shuffle=True)
    assert pools.block_table.shape == (2, 4) and pools.k[0].dtype == torch.float8_e4m3fn
    assert f.pools(16, shuffle=True) is pools
    f.release()


# ------------------------------------------------------------------ reference (torch, CPU)

def _naive(q, k, v, scale, lengths, window, sinks, sink_logits, k_scale, v_scale):
    B, Hq, D = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    out = np.zeros((B, Hq, D))
    for b in range(B):
        keys = [j for lo, hi in shp.attended_ranges(lengths[b], window, sinks)
                for j in range(lo, hi)]
        for h in range(Hq):
            kk = k[b, h // g].double().numpy()[keys] * k_scale
            vv = v[b, h // g].double().numpy()[keys] * v_scale
            x = kk @ q[b, h].double().numpy() * scale
            extra = [] if sink_logits is None else [float(sink_logits[h])]
            m = max(list(x) + extra) if len(x) or extra else 0.0
            p = np.exp(x - m)
            den = p.sum() + sum(math.exp(e - m) for e in extra)
            out[b, h] = (p @ vv) / den if den > 0 else 0.0
    return out


@needs_torch
@pytest.mark.parametrize("kw", [
    {}, {"lengths": [33, 0, 7]}, {"window": 8, "sink_tokens": 3},
    {"window": 5, "sink_logits": True, "lengths": [33, 2, 20]},
    {"k_scale": 0.5, "v_scale": 2.0},
])
def test_reference_against_a_float64_loop(kw):
    from flashdecoding.bench import gpu
    g = torch.Generator().manual_seed(1)
    B, Hq, Hkv, K, D = 3, 8, 2, 33, 16
    q = torch.randn(B, Hq, D, generator=g).to(torch.bfloat16)
    k = torch.randn(B, Hkv, K, D, generator=g)
    v = torch.randn(B, Hkv, K, D, generator=g)
    kw = dict(kw)
    sl = torch.randn(Hq, generator=g) if kw.pop("sink_logits", False) else None
    lengths = kw.pop("lengths", [K] * B)
    ref = gpu.reference(q, k, v, 0.25, lengths=lengths, sink_logits=sl, chunk_bytes=1, **kw)
    exp = _naive(q, k, v, 0.25, lengths, kw.get("window", 0), kw.get("sink_tokens", 0), sl,
                 kw.get("k_scale", 1.0), kw.get("v_scale", 1.0))
    assert np.abs(ref.double().numpy() - exp).max() < 1e-5
    bad = ref.clone()
    bad[0, 0, 0] = float("nan")
    assert gpu.rel_err(bad, ref) == math.inf
    assert gpu.rel_err(ref, ref) == 0.0


@needs_torch
def test_device_modules_import_and_name_every_method():
    from flashdecoding.bench import gpu, methods
    assert set(gpu.TORCH_DTYPE) == set(shp.Q_DTYPES)
    assert gpu.torch_kv_dtype("e4m3") is torch.float8_e4m3fn
    with pytest.raises(ValueError, match="unknown method"):
        methods.prepare("cublas", None)
    with pytest.raises(methods.Unsupported, match="paged"):
        methods.prepare("sdpa-cudnn", SimpleNamespace(case=Case(Shape(1, 8, 8, 64, 64),
                                                                page_size=16)))
    with pytest.raises(methods.Unsupported, match="sink tokens"):
        methods.prepare("fi-tc", SimpleNamespace(case=_case(
            "StreamingLLM 32/8 D128 B16 K16384 window 4096 + 4 sink tokens bf16")))


# ------------------------------------------------------------------ who runs what

def test_refusals():
    plain = Case(Shape(16, 32, 8, 4096, 128))
    assert all(support.refusal(m, plain) is None for m in st.METHODS)
    paged = plain.replace(page_size=16)
    assert "paged" in support.refusal("sdpa-cudnn", paged)
    assert support.refusal("fi-tc", paged) is None
    assert "fp8" in support.refusal("sdpa-flash", plain.replace(kv="e4m3"))
    sinks = _case("gpt-oss-20b 64/8 D64 B16 K8192 window 128 + sink logits bf16")
    assert support.refusal("fi-tc", sinks) is None
    assert "sink logits" in support.refusal("fi-cc", sinks)
    stream = _case("StreamingLLM 32/8 D128 B16 K16384 window 4096 + 4 sink tokens bf16")
    assert "sink tokens" in support.refusal("fi-tc", stream)
    assert support.refusal(st.OURS, stream) is None
    phi3 = _case("Phi-3-mini 32/32 D96 B4 K4096 bf16")
    assert "head_dim 96" in support.refusal("fi-tc", phi3)
    assert support.refusal("fi-cc", phi3) is None
    gemma = _case("Gemma-2-9B 16/8 D256 B16 K4096 bf16")
    assert support.refusal("fi-tc", gemma) is None
    capped = _case("Gemma-2-9B 16/8 D256 B16 K4096 soft-cap 50 bf16")
    assert "soft-cap" in support.refusal("sdpa-cudnn", capped)
    assert support.refusal("fi-cc", capped) is None and support.refusal("fi-tc", capped) is None
    assert support.flashinfer_page_size(plain) == 16
    assert support.flashinfer_page_size(plain.replace(page_size=1)) == 1
    assert support.flashinfer_window_left(sinks) == 127
    assert support.flashinfer_window_left(plain) == -1


def test_ours_options():
    assert support.ours_options(Case(Shape(1, 8, 8, 64, 64))) == {}
    c = _case("ragged batch 32/8 D128 B64 K8192 lengths 256-8192 paged P16 table 32k bf16")
    assert support.ours_options(c) == {"kv_layout": "HND", "max_seq_len": 32768}
    e = c.replace(table_keys=0)
    assert support.ours_options(e)["max_seq_len"] == 8192
    f = _case("Llama-3-8B 32/8 D128 B1 K32768 fp8 e4m3 q bf16")
    assert support.ours_options(f, 0.5, 1.0) == {"k_scale": 0.5, "v_scale": 1.0}
    s = _case("StreamingLLM 32/8 D128 B16 K16384 window 4096 + 4 sink tokens bf16")
    assert support.ours_options(s) == {"window": 4096, "sink_tokens": 4}
    g = _case("Gemma-2-9B 16/8 D256 B1 K8192 soft-cap 50 bf16")
    assert support.ours_options(g) == {"soft_cap": 50.0}


def test_ours_options_are_flash_decode_arguments():
    import inspect

    import flashdecoding as fd
    params = inspect.signature(fd.flash_decode).parameters
    passed = {"scale", "out", "workspace", "stream", "seq_lens", "block_table", "sink_logits",
              "batch_invariant"}
    for _, c in gr.select("all"):
        passed |= set(support.ours_options(c, 0.5, 1.0))
    assert passed <= set(params), passed - set(params)
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in passed)


# ------------------------------------------------------------------ stats

def ok(us, pct=50.0, gbps=1.0):
    return {"status": "ok", "us": us, "gbps": gbps, "pct": pct}


def test_geomean_and_median():
    assert st.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert st.geomean([None, 3.0]) == pytest.approx(3.0)
    assert st.geomean([]) is None
    with pytest.raises(ValueError):
        st.geomean([1.0, 0.0])
    assert st.median([5, 1, 3]) == 3
    assert st.median([1, 2, 3, 4]) == 2.5


def test_best_peer_ignores_ours_and_non_ok():
    res = {"flashdecoding": ok(1.0), "flashdecoding-bi": ok(0.5), "sdpa-flash": ok(9.0),
           "sdpa-cudnn": {"status": "FAILED", "us": None},
           "fi-cc": ok(7.0), "fi-tc": {"status": "n/a"}}
    assert st.best_peer(res)[0] == "fi-cc"
    assert st.ratio_to_best_peer(res) == pytest.approx(1 / 7)
    assert st.ratio_to_best_peer({"flashdecoding": ok(1.0)}) is None
    assert st.ratio_to_best_peer({"flashdecoding": {"status": "error"}, "fi-cc": ok(2)}) is None


def test_no_peer_can_run():
    un = {"status": "unsupported", "note": "x"}
    plain = Case(Shape(16, 32, 8, 4096, 128))
    every = {m: un for m in st.PEERS}
    assert support.no_peer_can_run(plain, {"flashdecoding": ok(1), **every})
    assert not support.no_peer_can_run(plain, {"flashdecoding": ok(1), **every,
                                               "fi-cc": {"status": "n/a"}})
    # a peer that was not run but could have been: the row has a peer it was not compared with
    assert not support.no_peer_can_run(plain, {"flashdecoding": ok(1), "sdpa-cudnn": un})
    assert not support.no_peer_can_run(plain, {"flashdecoding": ok(1)})
    paged = plain.replace(page_size=16)
    assert not support.no_peer_can_run(paged, {"flashdecoding": ok(1), "sdpa-cudnn": un})
    # StreamingLLM sink tokens: every peer refuses them by design
    stream = _case("StreamingLLM 32/8 D128 B16 K16384 window 4096 + 4 sink tokens bf16")
    assert support.no_peer_can_run(stream, {"flashdecoding": ok(1), "sdpa-cudnn": un})
    assert support.no_peer_can_run(stream, {"flashdecoding": ok(1)})


def test_row_meets_peer_tie_rule():
    tie, pct = br.TIE, br.TIE_PEER_PCT
    assert st.row_meets_peer({"flashdecoding": ok(101.0), "x": ok(100.0, pct=96.0)}, tie, pct)
    assert not st.row_meets_peer({"flashdecoding": ok(101.0), "x": ok(100.0, pct=90.0)}, tie, pct)
    assert not st.row_meets_peer({"flashdecoding": ok(103.0), "x": ok(100.0, pct=96.0)}, tie, pct)
    assert st.row_meets_peer({"flashdecoding": ok(99.0), "x": ok(100.0)}, tie, pct)
    assert st.row_meets_peer({"flashdecoding": ok(99.0)}, tie, pct) is None


def _row(case, results, grid="zoo"):
    return {"grid": grid, "case": case, "kv_bytes": case.kv_read_bytes(),
            "bytes": case.problem_bytes(), "touched_bytes": GIB, "results": results}


def test_compare_with_baselines():
    c = Case(Shape(16, 32, 8, 4096, 128))
    rows = [_row(c, {"flashdecoding": ok(100.0)}),
            _row(c.replace(page_size=16), {"flashdecoding": ok(102.0)}),
            _row(c.replace(kv="e4m3"), {"flashdecoding": ok(52.0)}),
            _row(c.replace(page_size=1), {"flashdecoding": {"status": "error"}}),
            _row(c.replace(dtype="f16", name="x"), {"flashdecoding": ok(99.0)}),
            _row(Case(Shape(1, 8, 8, 64, 64), dtype="f16"), {"flashdecoding": ok(9.0)})]
    st.compare_with_baselines(rows, gr.baseline_of)
    assert rows[0]["baseline"] is None
    assert rows[1]["baseline"]["ratio"] == pytest.approx(1.02)
    assert rows[1]["baseline"]["kind"] == "contiguous"
    assert rows[2]["baseline"]["ratio"] == pytest.approx(0.52)
    assert rows[2]["baseline"]["ours_us"] == 100.0
    assert rows[3]["baseline"]["ratio"] is None and not rows[3]["baseline"]["missing"]
    assert rows[4]["baseline"]["ratio"] == pytest.approx(0.99)
    assert rows[5]["baseline"]["missing"] and rows[5]["baseline"]["ratio"] is None


# ------------------------------------------------------------------ the bar

def _bar_rows(**over):
    """A run where every criterion passes; ``over`` replaces ours' µs (and pct) by label."""
    rows = []
    peer = ok(100.0, pct=90.0)

    def add(grid, case, us, pct=97.0, results=None):
        us, pct = over.get(case.label(), (us, pct))
        res = {"flashdecoding": ok(us, pct=pct), "sdpa-cudnn": dict(peer)}
        if results:
            res.update(results)
        rows.append(_row(case, res, grid))

    for c in gr.perf_grid():
        add("perf", c, 3.5 if c.shape == gr.LATENCY_SHAPE else 80.0)
    un = {"status": "unsupported", "note": "x"}
    for c in gr.zoo_grid():
        if c.fp8:
            add("zoo", c, 40.0, results={"sdpa-cudnn": un, "fi-tc": ok(100.0)})
        elif c.paged:
            add("zoo", c, 80.0 * (1.0 if c.page_size == 16 else 1.05)
                * (1.05 if c.table_keys else 1.0), results={"sdpa-cudnn": un, "fi-tc": ok(100.0)})
        elif c.sink_tokens:
            add("zoo", c, 80.0, results={"sdpa-cudnn": un})
        else:
            add("zoo", c, 80.0 if c.dtype == "bf16" else 79.0)
    st.compare_with_baselines(rows, gr.baseline_of)
    return rows


def test_bar_passes():
    bar = br.check_bar(_bar_rows())
    assert {k: bar[k]["pass"] for k, _ in br.CRITERIA} == {k: True for k, _ in br.CRITERIA}
    assert bar["all"] is True
    assert bar["geomean_perf"]["value"] == pytest.approx((0.8 ** 9 * 0.035) ** 0.1)
    assert bar["geomean_perf"]["n"] == bar["geomean_perf"]["of"] == 10
    # the zoo geomean is over its bf16 rows that a peer can run
    zoo_bf16 = [c for c in gr.zoo_grid() if c.dtype == "bf16" and not c.sink_tokens]
    assert bar["geomean_zoo"]["of"] == len(zoo_bf16)
    assert "no peer can run" in bar["rows_vs_best_peer"]["detail"]
    lines = br.bar_lines(bar)
    assert len(lines) == len(br.CRITERIA) + 1
    assert all(line.startswith("bar: ") for line in lines)
    assert lines[-1] == "bar: PASS overall"


@pytest.mark.parametrize("label,us,pct,criterion", [
    ("32/8 D128 B1 K512 bf16", 4.1, 20.0, "latency"),
    ("32/8 D128 B16 K4096 bf16", 80.0, 94.9, "big_kv_pct"),
    ("Llama-3-8B 32/8 D128 B16 K4096 paged P16 bf16", 82.5, 97.0, "paged"),   # 1.031x
    ("Llama-3-8B 32/8 D128 B64 K2048 paged P1 bf16", 86.5, 97.0, "paged"),    # 1.081x
    ("ragged batch 32/8 D128 B64 K8192 lengths 256-8192 paged P16 table 32k bf16", 88.5, 97.0,
     "paged_capacity"),                                                      # 1.106x
    ("Llama-3-8B 32/8 D128 B64 K2048 fp8 e4m3 q bf16", 44.5, 97.0, "fp8"),    # 0.556x
    ("Phi-3-mini 32/32 D96 B4 K4096 f16", 81.7, 97.0, "f16"),                 # 1.021x
    ("Qwen2.5-7B 28/4 D128 B1 K32768 bf16", 101.0, 80.0, "rows_vs_best_peer"),
])
def test_bar_fails_each_criterion(label, us, pct, criterion):
    bar = br.check_bar(_bar_rows(**{label: (us, pct)}))
    assert bar[criterion]["pass"] is False, bar[criterion]
    assert label in bar[criterion]["detail"]
    assert bar["all"] is False
    assert f"bar: FAIL       {br.TEXT[criterion]}" in "\n".join(br.bar_lines(bar))


def test_bar_geomeans():
    # ours at 0.86x of the peer on every perf row: over 0.85, and the rows still at the peer
    rows = [_row(c, {"flashdecoding": ok(86.0, pct=97.0), "p": ok(100.0, pct=90.0)}, "perf")
            for c in gr.perf_grid()]
    bar = br.check_bar(rows)
    assert bar["geomean_perf"]["pass"] is False and bar["geomean_perf"]["value"] == \
        pytest.approx(0.86)
    assert bar["rows_vs_best_peer"]["pass"] is True
    rows = [_row(c, {"flashdecoding": ok(87.9, pct=97.0), "p": ok(100.0)}, "zoo")
            for c in gr.zoo_grid(("bf16",)) if not c.sink_tokens]
    assert br.check_bar(rows)["geomean_zoo"]["pass"] is True
    rows[0]["results"]["p"] = {"status": "n/a", "note": "no flashinfer"}
    g = br.check_bar(rows)["geomean_zoo"]
    assert g["pass"] is None and g["n"] == g["of"] - 1          # a partial grid is not judged


def test_bar_not_judged_when_missing():
    rows = [_row(gr.perf_grid()[-1], {"flashdecoding": {"status": "FAILED"}, "p": ok(3.0)},
                 "perf")]
    bar = br.check_bar(rows)
    assert bar["rows_vs_best_peer"]["pass"] is None
    assert bar["latency"]["pass"] is None
    assert bar["paged"]["pass"] is None and "no such" in bar["paged"]["detail"]
    assert bar["all"] is None
    assert "bar: not judged overall" in br.bar_lines(bar)


def test_big_kv_threshold_is_decimal_128mb():
    s = Case(Shape(B=1, Hq=32, Hkv=32, K=8192, D=128))     # 128 MiB = 134.2 MB: counts
    assert s.kv_read_bytes() == 128 * 2**20 > br.BIG_KV_BYTES
    m = Case(Shape(B=8, Hq=8, Hkv=1, K=16384, D=128))      # 64 MiB: does not
    rows = [_row(m, {"flashdecoding": ok(30.0, pct=70.0), "p": ok(31.9)}, "perf")]
    assert br.check_bar(rows)["big_kv_pct"]["pass"] is None
    fp8 = _case("Llama-3-8B 32/8 D128 B1 K32768 fp8 e4m3 q bf16")   # 67 MB read, 134 MB 16-bit
    rows = [_row(fp8, {"flashdecoding": ok(30.0, pct=70.0)})]
    assert br.check_bar(rows)["big_kv_pct"]["pass"] is None        # what is read is counted
    assert fp8.kv_bytes_16bit() > br.BIG_KV_BYTES                  # the fp8 rule still applies


def _bar_section(text):
    m = re.search(r"^## The bar\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert m, "docs/PERFORMANCE.md has no '## The bar' section"
    return m.group(1)


def test_performance_doc_states_the_bar_the_bench_checks():
    doc = (ROOT / "docs" / "PERFORMANCE.md").read_text()
    section = " ".join(_bar_section(doc).split())
    for key, text in br.CRITERIA:
        assert text in section, f"docs/PERFORMANCE.md's bar lacks: {text}"
    # every file the page names is one of the repository's (a reader has nothing else)
    named = re.findall(r"`([\w./-]+\.(?:py|sh|cu|cuh|h|cpp|def|md))`|\]\(([^)#]+)\)", doc)
    assert named
    bases = (ROOT, ROOT / "docs", ROOT / "python" / "flashdecoding")
    for path in (a or b for a, b in named):
        assert not path.startswith("../"), f"docs/PERFORMANCE.md points outside: {path}"
        assert any((base / path).exists() for base in bases), \
            f"docs/PERFORMANCE.md names {path}, which the repository lacks"


# ------------------------------------------------------------------ the ceiling

def _measured(kernel_gbps=4700.0, torch_sum=3600.0, status="ok"):
    k = ({"status": "ok", "gbps": kernel_gbps} if status == "ok"
         else {"status": status, "note": "NVRTC not available: no libnvrtc"})
    return {"read_kernel": k, "torch_sum_gbps": torch_sum, "torch_copy_gbps": 4000.0,
            "bytes": GIB}


def test_ceiling_is_the_read_kernel_when_nothing_beats_it():
    rows = [_row(Case(Shape(16, 32, 8, 4096, 128)), {"flashdecoding": ok(1, gbps=4500.0)})]
    c = cl.final_ceiling(_measured(), rows, GIB)
    assert (c["gbps"], c["source"], c["lower_bound"], c["notes"]) == \
        (4700.0, "read kernel", False, [])
    assert c["best_method"] == {"gbps": 4500.0, "method": "flashdecoding",
                                "row": rows[0]["case"].label()}


def test_ceiling_never_below_the_best_method():
    rows = [_row(Case(Shape(16, 32, 8, 4096, 128)),
                 {"flashdecoding": ok(1, gbps=4500.0), "fi-tc": ok(1, gbps=4800.0)})]
    c = cl.final_ceiling(_measured(), rows, GIB)
    assert c["gbps"] == 4800.0 and c["source"] == "method"
    assert len(c["notes"]) == 1 and "fi-tc" in c["notes"][0] and "4800" in c["notes"][0]
    assert "read kernel 4700" in c["notes"][0]
    cl.apply_ceiling(rows, c["gbps"])
    assert rows[0]["results"]["fi-tc"]["pct"] == pytest.approx(100.0)
    assert rows[0]["results"]["flashdecoding"]["pct"] == pytest.approx(100 * 4500 / 4800)
    assert rows[0]["floor_us"] == pytest.approx(shp.floor_us(rows[0]["bytes"], 4800.0))


def test_ceiling_ignores_rows_that_may_sit_in_l2():
    rows = [_row(Case(Shape(1, 8, 8, 64, 64)), {"flashdecoding": ok(1, gbps=9000.0)})]
    rows[0]["touched_bytes"] = 64 << 20
    assert cl.final_ceiling(_measured(), rows, GIB)["gbps"] == 4700.0


def test_ceiling_without_the_read_kernel_is_a_lower_bound():
    c = cl.final_ceiling(_measured(status="unavailable"), [], GIB)
    assert c["gbps"] == 3600.0 and c["source"] == "torch sum" and c["lower_bound"]
    assert "lower bound" in c["notes"][0] and "no libnvrtc" in c["notes"][0]
    c = cl.final_ceiling(_measured(kernel_gbps=3000.0), [], GIB)
    assert c["source"] == "torch sum" and not c["lower_bound"]
    assert "torch's reduction" in c["notes"][0]
    with pytest.raises(ValueError):
        cl.final_ceiling({"read_kernel": {"status": "off"}}, [], GIB)


def test_measure_ceiling_falls_back_when_the_kernel_cannot_run():
    gpu = FakeGPU()

    class NoKernel:
        @staticmethod
        def measure(nbytes, repeats, warmup):
            raise rk.ReadKernelUnavailable("NVRTC not available: libnvrtc.so.13 not found")

    m = runner.measure_ceiling(GIB, 3, 1, gpu, NoKernel)
    assert m["read_kernel"]["status"] == "unavailable"
    assert "libnvrtc" in m["read_kernel"]["note"]
    assert runner.planning_gbps(m) == m["torch_sum_gbps"]
    m = runner.measure_ceiling(GIB, 3, 1, gpu, FakeReadKernel)
    assert m["read_kernel"]["gbps"] == 4800.0 and runner.planning_gbps(m) == 4800.0
    assert runner.measure_ceiling(GIB, 3, 1, gpu, NoKernel, use_kernel=False)[
        "read_kernel"]["status"] == "off"


# ------------------------------------------------------------------ the read kernel

def test_read_kernel_geometry():
    assert rk.TILE_BYTES == 8192 and rk.SMEM_BYTES == rk.WARPS * rk.STAGES * rk.TILE_BYTES
    assert rk.THREADS == 32 * rk.WARPS and rk.STAGES >= 2
    tiles, used = rk.tiles_of(GIB + 5000)
    assert used == GIB and tiles == GIB // 8192
    with pytest.raises(ValueError):
        rk.tiles_of(100)
    for n, ctas in ((131072, 264), (1000, 7), (5, 8)):
        ranges = rk.cta_ranges(n, ctas)
        seen = []
        for begin, end in ranges:
            per_warp = [rk.warp_tiles(begin, end, w) for w in range(rk.WARPS)]
            for w, t in enumerate(per_warp):
                # the kernel's count: (count - w + WARPS - 1) / WARPS when count > w
                count = end - begin
                assert len(t) == ((count - w + rk.WARPS - 1) // rk.WARPS if count > w else 0)
            seen += sorted(x for t in per_warp for x in t)
        assert seen == list(range(n))                       # every tile once, in CTA order
        sizes = [e - b for b, e in ranges]
        assert max(sizes) - min(sizes) <= 1                 # balanced: no tail wave
    words = rk.sampled_words_per_tile()
    assert len(words) == 32 and words == [16 * lane // 4 for lane in range(32)]


def test_read_kernel_source_matches_the_constants():
    src = rk.SOURCE
    for name in ("WARPS", "STAGES", "LANE_COPIES", "TILE_BYTES"):
        assert f"#define {name} {getattr(rk, name)}\n" in src
    assert f'extern "C" __global__' in src and f"{rk.KERNEL_NAME}(" in src
    assert "cp.async.cg.shared.global" in src and ", 16;" in src
    assert "cp.async.wait_group %0;" in src and "%(" not in src and "%%" not in src
    assert src.count("{") == src.count("}")
    assert rk.compile_options(9, 0) == [b"--gpu-architecture=sm_90", b"--std=c++17",
                                        b"-default-device"]
    assert rk.compile_options(8, 9, cubin=False)[0] == b"--gpu-architecture=compute_89"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc to compile the source")
def test_read_kernel_source_compiles(tmp_path):
    cu = tmp_path / "read.cu"
    cu.write_text(rk.SOURCE)
    r = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-ptx", "-o", str(tmp_path / "r.ptx"),
                        str(cu)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ptx = (tmp_path / "r.ptx").read_text()
    assert f".entry {rk.KERNEL_NAME}(" in ptx
    assert "cp.async.cg.shared.global.L2::256B" in ptx and "cp.async.wait_group 1" in ptx
    assert "atom.global.add.u64" in ptx


def _nvrtc_ok():
    try:
        from cuda.bindings import nvrtc
        return int(nvrtc.nvrtcVersion()[0]) == 0
    except Exception:
        return False


@pytest.mark.skipif(not _nvrtc_ok(), reason="needs NVRTC (libnvrtc) to compile at run time")
def test_read_kernel_compiles_with_nvrtc():
    image, kind = rk._nvrtc_compile(9, 0)
    assert kind in ("cubin", "ptx") and len(image) > 100


def test_read_kernel_refuses_old_gpus():
    with pytest.raises(rk.ReadKernelUnavailable, match="8.0"):
        rk.ReadKernel(0, 7, 5)


# ------------------------------------------------------------------ report

def fake_report(methods=None):
    methods = methods or list(st.METHODS)
    rows = []
    un = {"status": "unsupported", "note": "SDPA reads no paged KV cache"}
    for i, (grid, c) in enumerate(gr.select("all")):
        res = {}
        for j, m in enumerate(methods):
            us = shp.floor_us(c.problem_bytes(), 3000.0) * (1.1 + 0.1 * j + 0.001 * i)
            res[m] = {"status": "ok", "us": us, "gbps": shp.gbps_of(c.problem_bytes(), us),
                      "rel_err": 2e-3, "samples_us": [us] * 7}
            if m in st.SDPA_METHODS and support.sdpa_refusal(c):
                res[m] = dict(un, note=support.sdpa_refusal(c))
        rows.append({**_row(c, res, grid), "touched_bytes": GIB})
    rows[1]["results"]["sdpa-flash"] = {"status": "FAILED", "rel_err": 0.3,
                                        "note": "rel. error 3.000e-01 > 0.01 (not timed)"}
    rows[2]["results"]["fi-cc"] = {"status": "n/a", "note": "import flashinfer failed"}
    return rpt.build_report({"repeats": 15}, {"device": "NVIDIA H200", "sm_count": 132,
                                               "commit": "abc123" * 7, "dirty": False},
                            methods, _measured(kernel_gbps=3000.0, torch_sum=2800.0), rows,
                            GIB)


def test_format_table():
    rep = fake_report()
    text = rpt.format_table(rep)
    lines = text.splitlines()
    assert "NVIDIA H200" in lines[0] and "132 SMs" in lines[0] and "abc123abc123" in lines[0]
    assert "read ceiling 3000 GB/s from the read kernel" in text
    assert "torch sum 2800" in text and "torch copy 4000 (read+write)" in text
    assert "== perf grid (10 rows)" in text and "== model zoo (44 rows)" in text
    for _, c in gr.select("all"):
        assert c.label() in text
    assert "FAILED 3.0e-01" in text and "n/a" in text and "unsupported" in text
    assert text.count("geomean(ours / best peer), bf16 rows: ") == 2
    assert sum(line.startswith("bar: ") for line in lines) == len(br.CRITERIA) + 1
    # notes group one reason over many rows
    assert re.search(r"sdpa-cudnn: unsupported on \d+ rows: SDPA reads no paged KV cache", text)
    row0 = next(l for l in lines if l.startswith("32/8 D128 B1 K8192 bf16"))
    assert f"{1.1 / 1.2:5.2f} (sdpa-flash)" in row0
    fp8 = next(l for l in lines if l.startswith("Llama-3-8B 32/8 D128 B16 K4096 fp8"))
    assert re.search(r"\d\.\d\dx bf16 KV \([\d.]+ us\)", fp8)
    sink = next(l for l in lines if "+ 4 sink tokens" in l)
    assert "window only" in sink


def test_format_cell_and_baseline():
    assert rpt.format_cell({"status": "ok", "us": 20.6, "gbps": 1630.0, "pct": 53.4}) == \
        "   20.6  1630  53%"
    assert rpt.format_cell({"status": "FAILED", "rel_err": math.inf}) == "FAILED"
    assert rpt.format_cell({"status": "error"}) == "error"
    assert rpt.format_cell(None) == "-"
    assert rpt.format_baseline({"kind": "contiguous", "ratio": 1.013, "ours_us": 90.55}) == \
        "1.01x contiguous (90.5 us)"
    assert rpt.format_baseline({"kind": "bf16", "ratio": None, "ours_us": None}) == \
        "- (bf16: not measured)"
    assert rpt.format_baseline(None) == ""


def test_json_round_trip():
    rep = fake_report()
    data = json.loads(rpt.to_json(rep))
    assert data["meta"]["device"] == "NVIDIA H200"
    assert len(data["rows"]) == 54
    r0 = data["rows"][0]
    assert r0["case"]["B"] == 1 and r0["case"]["K"] == 8192 and r0["grid"] == "perf"
    assert r0["label"] == "32/8 D128 B1 K8192 bf16"
    assert r0["best_peer"] == "sdpa-flash"
    assert r0["ratio_to_best_peer"] == pytest.approx(1.1 / 1.2, rel=1e-3)
    assert data["ceiling"]["gbps"] == 3000.0
    assert data["bar"]["geomean_perf"]["value"] == pytest.approx(rep["bar"]["geomean_perf"]["value"])
    ragged = next(r for r in data["rows"] if r["case"]["seq_lens"])
    assert len(ragged["case"]["seq_lens"]) == 64
    assert rpt._jsonable(float("nan")) is None


def test_csv():
    rep = fake_report()
    rows = list(csv.DictReader(io.StringIO(rpt.to_csv(rep))))
    assert len(rows) == 54 * len(st.METHODS)
    ours = [r for r in rows if r["method"] == "flashdecoding"]
    assert all(r["ratio_to_best_peer"] for r in ours)
    assert {r["ratio_to_baseline"] != "" for r in ours} == {True, False}
    fp8 = [r for r in ours if r["kv_dtype"] == "e4m3"]
    assert len(fp8) == 3 and all(int(r["kv_bytes"]) * 2 == int(r["kv_bytes"]) * 2 for r in fp8)
    failed = [r for r in rows if r["status"] == "FAILED"]
    assert len(failed) == 1 and failed[0]["us"] == "" and "not timed" in failed[0]["note"]


def test_compare_two_runs(tmp_path):
    old = json.loads(rpt.to_json(fake_report()))
    new = json.loads(rpt.to_json(fake_report()))
    for row in new["rows"]:
        res = row["results"]["flashdecoding"]
        if row["label"] == "32/8 D128 B1 K512 bf16":
            res["us"] *= 1.05
        elif row["label"].startswith("Gemma"):
            res["us"] *= 0.9
    text = cmp.format_compare(old, new)
    assert re.search(r"32/8 D128 B1 K512 bf16 .* 1\.050  slower", text)
    assert re.search(r"Gemma-2-9B 16/8 D256 B1 K8192 bf16 .* 0\.900  faster", text)
    assert "slower by more than 1%: 32/8 D128 B1 K512 bf16" in text
    both, only = cmp.compare(old, new)
    assert len(both) == 54 and only == []
    (tmp_path / "a.json").write_text(json.dumps(old))
    (tmp_path / "b.json").write_text(json.dumps(new))
    assert cli.main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    (tmp_path / "c.json").write_text("[]")
    assert cli.main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 2


# ------------------------------------------------------------------ plot

def test_plot_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    from flashdecoding.bench import plot
    path = tmp_path / "m.png"
    assert plot.write_png(fake_report(), str(path)).startswith("matplotlib")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    from flashdecoding.bench import plot
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib fails
    with pytest.raises(plot.PlotUnavailable, match=r"flashdecoding\[bench\]"):
        plot.write_png(fake_report(), str(tmp_path / "x.png"))
    err = io.StringIO()
    cli.write_outputs(fake_report(), SimpleNamespace(json=None, csv=None,
                                                     png=str(tmp_path / "x.png")),
                      out=io.StringIO(), err=err)
    assert "no plot written" in err.getvalue() and "matplotlib" in err.getvalue()
    assert not (tmp_path / "x.png").exists()


def test_plot_data():
    from flashdecoding.bench import plot
    rep = fake_report()
    data = plot.plot_data(rep)
    assert list(data) == ["perf", "zoo"]
    labels, methods, pct = data["perf"]
    assert len(labels) == 10 and pct[1][methods.index("sdpa-flash")] is None
    assert pct[0][0] == pytest.approx(rep["rows"][0]["results"]["flashdecoding"]["pct"])


# ------------------------------------------------------------------ progress, meta

def test_progress_plain(monkeypatch):
    buf = io.StringIO()
    p = prog.progress(4, use_tqdm=False, stream=buf)
    p.set_description("32/8 D128 B1 K512 fi-cc")
    p.update()
    p.update()
    p.close()
    out = buf.getvalue()
    assert "2/4" in out and "fi-cc" in out
    monkeypatch.setitem(sys.modules, "tqdm", None)            # tqdm missing: the plain bar
    assert type(prog.progress(4, stream=buf)).__name__ == "_Plain"
    null = prog.progress(4, enabled=False, stream=buf)
    null.update()
    null.close()


def test_commit_info(tmp_path):
    info = meta.commit_info(repo=tmp_path, env={"FD_COMMIT": "deadbeef"})
    assert info == {"commit": "deadbeef", "dirty": None, "source": "FD_COMMIT"}
    assert meta.commit_info(repo=tmp_path, env={}, cwd=tmp_path)["commit"] is None
    assert meta.commit_info(repo=meta.REPO_ROOT, env={"FD_COMMIT": "feed"})["commit"] == "feed"
    # REPO_ROOT is the checkout the package was imported from; an installed package
    # (site-packages) has none, and its commit comes from FD_COMMIT or nowhere.
    checkout = Path(__file__).resolve().parents[2]
    if Path(meta.__file__).resolve().is_relative_to(checkout / "python"):
        assert meta.REPO_ROOT == checkout and (checkout / "pyproject.toml").is_file()
    else:
        assert meta.REPO_ROOT == Path(meta.__file__).resolve().parents[3]
    if (meta.REPO_ROOT / ".git").exists() and shutil.which("git"):
        info = meta.commit_info(env={})
        assert info["source"] == "git" and re.fullmatch(r"[0-9a-f]{40}", info["commit"])
    assert set(meta.host_info()) == {"python", "platform", "hostname"}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_commit_info_from_a_checkout_in_the_working_directory(tmp_path):
    # An installed package (no repository around it) run from a checkout takes
    # the checkout's commit; a working directory that is some other repository
    # does not count.
    site = tmp_path / "site"
    site.mkdir()
    other = tmp_path / "other"
    checkout = tmp_path / "checkout"
    for repo in (other, checkout):
        repo.mkdir()
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        (repo / "f.txt").write_text("x")
        subprocess.run(["git", "-C", str(repo), "add", "f.txt"], check=True)
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                        "commit", "-qm", "c"], check=True)
    (checkout / "python" / "flashdecoding" / "bench").mkdir(parents=True)
    sha = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], check=True,
                         capture_output=True, text=True).stdout.strip()
    info = meta.commit_info(repo=site, env={}, cwd=checkout)
    assert info == {"commit": sha, "dirty": False, "source": "git (working directory)"}
    assert meta.commit_info(repo=site, env={}, cwd=other)["commit"] is None
    assert meta.commit_info(repo=site, env={"FD_COMMIT": "abc"}, cwd=checkout)["commit"] == "abc"


# ------------------------------------------------------------------ argument parsing

def test_parse_args_defaults():
    a = cli.parse_args([])
    assert a.selection == gr.select("all") and len(a.selection) == 54
    assert a.methods == list(st.METHODS)
    assert a.repeats == 15 and a.warmup_replays == 3
    q = cli.parse_args(["--quick"])
    assert q.repeats == 7 and q.methods == ["flashdecoding", "sdpa-cudnn"]
    assert cli.parse_args(["--quick", "--methods", "all"]).methods == list(st.METHODS)


def test_parse_args_options():
    a = cli.parse_args(["--shape", "1,32,8,512,128", "--shape", "2,8,1,100,64",
                        "--dtype", "f16", "--methods", "peers,ours,fi-cc",
                        "--json", "x.json", "--png", "x.png", "--csv", "x.csv",
                        "--repeats", "9", "--require-bar", "--ceiling-gib", "2"])
    assert [c.label() for _, c in a.selection] == ["32/8 D128 B1 K512 f16", "8/1 D64 B2 K100 f16"]
    assert a.repeats == 9 and a.require_bar and a.ceiling_gib == 2.0
    assert a.methods == ["sdpa-flash", "sdpa-cudnn", "fi-cc", "fi-tc", "flashdecoding"]
    assert (a.json, a.png, a.csv) == ("x.json", "x.png", "x.csv")
    assert cli.parse_args(["--methods", "sdpa,fi"]).methods == \
        ["sdpa-flash", "sdpa-cudnn", "fi-cc", "fi-tc"]
    z = cli.parse_args(["--grid", "zoo", "--dtype", "bf16", "--only", "paged", "--only", "fp8"])
    labels = [c.label() for _, c in z.selection]
    assert len(labels) == 9 and all("paged" in l or "fp8" in l for l in labels)
    assert {g for g, _ in z.selection} == {"zoo"}


@pytest.mark.parametrize("argv", [["--shape", "1,2,3"], ["--methods", "cublas"],
                                  ["--dtype", "f32"], ["--repeats", "0"], ["--grid", "big"],
                                  ["--touch-gib", "-1"], ["--methods", ","],
                                  ["--only", "no such row"]])
def test_main_usage_errors_return_2(argv, capsys):
    assert cli.main(argv) == 2
    assert "usage" in capsys.readouterr().err


def test_main_help_returns_0(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--shape B,Hq,Hkv,K,D" in out and "--grid {perf,zoo,all}" in out


def test_list_needs_no_gpu(capsys):
    assert cli.main(["--list", "--grid", "zoo", "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "StreamingLLM 32/8 D128 B16 K16384 window 4096 + 4 sink tokens bf16" in out
    assert "(unsupported: sdpa-flash, sdpa-cudnn, fi-cc, fi-tc)" in out
    assert out.strip().splitlines()[-1].startswith("32 rows, 32 to measure")


def test_main_without_a_cuda_gpu_returns_2(capsys):
    if HAVE_TORCH and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    assert cli.main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert "needs PyTorch" in err or "needs a CUDA GPU" in err


def test_script_and_module_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    for cmd in ([sys.executable, str(ROOT / "scripts" / "bench.py"), "--help"],
                [sys.executable, "-m", "flashdecoding.bench", "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "flashdecoding bench" in r.stdout


# ------------------------------------------------------------------ a run with fake devices

class FakeOut:
    def __init__(self, err, us):
        self.err, self.us = err, us

    def clone(self):
        return self


class FakeGPU:
    def __init__(self):
        self.timed = []

    def sync(self):
        pass

    def bits_equal(self, a, b):
        return a is b

    def release_memory(self):
        pass

    def free_bytes(self):
        return 64 << 30

    def rel_err(self, out, ref):
        assert ref == "ref"
        return out.err

    def time_graph(self, calls, n_calls, repeats, warmup):
        assert n_calls % len(calls) == 0
        us = calls[0]().us
        self.timed.append(us)
        return [us * (1 + 0.001 * i) for i in range(repeats)]

    def torch_rates(self, nbytes, repeats, warmup):
        return {"bytes": nbytes, "torch_sum_gbps": 3600.0, "torch_copy_gbps": 4100.0}

    def device_info(self):
        return {"device": "NVIDIA H200", "sm_count": 132}


class FakeReadKernel:
    @staticmethod
    def measure(nbytes, repeats, warmup):
        return {"status": "ok", "gbps": 4800.0}


class FakeData:
    """data module: CaseData with fake tensors."""

    made = []

    class CaseData:
        def __init__(self, case, R, seed):
            self.case, self.R = case, R
            FakeData.made.append(case)

        def reference(self, r, gpu):
            return "ref"

        def release(self):
            pass


def make_fake_mt(behaviour, prepared=None):
    """behaviour(method, case) -> ("ok", err, us) | ("na",) | ("unsup",) | ("raise",) | ("boom",)."""
    mt = SimpleNamespace()

    class NotAvailable(Exception):
        pass

    class Unsupported(Exception):
        pass

    def prepare(name, data):
        if prepared is not None:
            prepared.append((name, data.case.label()))
        b = behaviour(name, data.case)
        if b[0] == "na":
            raise NotAvailable("no lib")
        if b[0] == "unsup":
            raise Unsupported("refuses it")
        if b[0] == "raise":
            raise RuntimeError("plan failed\nsecond line")
        out = FakeOut(b[1], b[2])
        calls = [(lambda: out)] * data.R
        if b[0] == "boom":
            def bad():
                raise RuntimeError("illegal memory access")
            calls = [bad] * data.R
        return SimpleNamespace(calls=calls, extra={"sku": "fake"},
                               poison=(lambda: None) if name in st.OURS_ALL else None)

    mt.NotAvailable, mt.Unsupported, mt.prepare = NotAvailable, Unsupported, prepare
    mt.versions = lambda: {"torch": "fake"}
    return mt


def test_run_case_statuses():
    args = cli.parse_args(["--quick", "--no-progress", "--methods", "all"])
    gpu = FakeGPU()
    table = {"flashdecoding": ("ok", 1e-3, 9.0), "sdpa-flash": ("ok", 0.5, 1.0),
             "sdpa-cudnn": ("unsup",), "fi-cc": ("na",), "fi-tc": ("raise",),
             "flashdecoding-bi": ("ok", 1e-3, 9.5)}
    mt = make_fake_mt(lambda m, c: table[m])
    meas = runner.run_case(Case(gr.LATENCY_SHAPE), args, 3000.0,
                           prog.progress(6, enabled=False), gpu, mt, FakeData)
    r = meas["results"]
    assert r["flashdecoding"]["status"] == "ok"
    assert r["flashdecoding"]["us"] == pytest.approx(9.0 * 1.003)           # median of 7
    assert r["flashdecoding"]["gbps"] == pytest.approx(
        shp.gbps_of(Case(gr.LATENCY_SHAPE).problem_bytes(), r["flashdecoding"]["us"]))
    assert r["flashdecoding"]["bit_identical_repeat"] is True
    assert r["flashdecoding"]["extra"] == {"sku": "fake"}
    assert r["sdpa-flash"]["status"] == "FAILED" and "not timed" in r["sdpa-flash"]["note"]
    assert gpu.timed == [9.0, 9.5]                      # the FAILED method was never timed
    assert r["sdpa-cudnn"]["status"] == "unsupported"
    assert r["fi-cc"]["status"] == "n/a"
    assert r["fi-tc"] == {"status": "error", "note": "prepare: RuntimeError: plan failed"}
    assert meas["replicas"] == 512 and meas["touched_bytes"] == GIB


def test_rows_no_peer_can_run_are_never_prepared():
    args = cli.parse_args(["--no-progress", "--grid", "zoo", "--only", "sink tokens"])
    prepared = []
    mt = make_fake_mt(lambda m, c: ("ok", 1e-3, 50.0), prepared)
    rows = runner.run_all(args.selection, args, 3000.0, prog.progress(9, enabled=False),
                          FakeGPU(), mt, FakeData)
    assert len(rows) == 1
    res = rows[0]["results"]
    assert {m for m, _ in prepared} == {"flashdecoding", "flashdecoding-bi"}
    for m in ("sdpa-flash", "sdpa-cudnn", "fi-cc", "fi-tc"):
        assert res[m]["status"] == "unsupported" and res[m]["note"]


def test_shared_rows_run_once_and_fill_both_grids():
    args = cli.parse_args(["--no-progress", "--methods", "ours", "--only", "32/8 D128 B16 K4096 bf16",
                           "--dtype", "bf16"])
    prepared = []
    FakeData.made.clear()
    mt = make_fake_mt(lambda m, c: ("ok", 1e-3, 90.0), prepared)
    rows = runner.run_all(args.selection, args, 3000.0, prog.progress(9, enabled=False),
                          FakeGPU(), mt, FakeData)
    assert [(r["grid"], r["case"].label()) for r in rows] == [
        ("perf", "32/8 D128 B16 K4096 bf16"), ("zoo", "Llama-3-8B 32/8 D128 B16 K4096 bf16")]
    assert len(prepared) == 1 and len(FakeData.made) == 1
    assert rows[0]["results"] is rows[1]["results"]


def test_input_failure_marks_every_method():
    args = cli.parse_args(["--quick", "--methods", "flashdecoding,fi-cc", "--grid", "perf"])

    class Broken:
        class CaseData:
            def __init__(self, *a):
                raise MemoryError("CUDA out of memory")

    meas = runner.run_case(Case(gr.LATENCY_SHAPE), args, 3000.0, prog.progress(2, enabled=False),
                           FakeGPU(), make_fake_mt(lambda m, c: ("ok", 0, 1)), Broken)
    assert {r["status"] for r in meas["results"].values()} == {"error"}
    assert "out of memory" in meas["results"]["fi-cc"]["note"]


def _fast_enough(method, case):
    """Ours passes the bar everywhere, peers at 100 us-equivalents."""
    floor = shp.floor_us(case.problem_bytes(), 4800.0)
    if method in st.OURS_ALL:
        f = 1.0
        if case.paged:
            f = 1.01 if not case.table_keys else 1.02
        if case.fp8:
            f = 1.0          # fp8 moves half the bytes: half the time of the 16-bit row
        return ("ok", 1e-3, max(floor * f * 1.02, 0.001 if case.shape != gr.LATENCY_SHAPE
                                else 3.9))
    return ("ok", 1e-3, floor * 1.3 + 5.0)


def test_whole_run_with_fake_devices(tmp_path):
    args = cli.parse_args(["--no-progress", "--require-bar", "--json", str(tmp_path / "r.json"),
                           "--csv", str(tmp_path / "r.csv")])
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(args, FakeGPU(), make_fake_mt(_fast_enough), FakeData, FakeReadKernel,
                   out=out, err=err)
    text = out.getvalue()
    assert "read ceiling 4800 GB/s from the read kernel" in text
    assert "bar: PASS overall" in text, "\n".join(l for l in text.splitlines() if "bar:" in l)
    assert code == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["bar"]["all"] is True and len(data["rows"]) == 54
    assert data["ceiling"]["source"] == "read kernel"
    assert data["settings"]["methods"] == list(st.METHODS)
    assert (tmp_path / "r.csv").read_text().startswith("grid,label,")
    assert f"wrote {tmp_path / 'r.json'}" in err.getvalue()


def test_quick_runs_cannot_pass_the_bar():
    # ours and cuDNN only: the paged, fp8 and window rows have a peer (FlashInfer) not run
    args = cli.parse_args(["--no-progress", "--quick", "--require-bar"])
    out = io.StringIO()
    code = cli.run(args, FakeGPU(), make_fake_mt(_fast_enough), FakeData, FakeReadKernel,
                   out=out, err=io.StringIO())
    text = out.getvalue()
    assert code == 3 and "bar: not judged overall" in text
    assert "bar: not judged geomean(ours / best peer) <= 0.88 over the zoo" in text
    assert "bar: PASS       geomean(ours / best peer) <= 0.85 over the perf grid" in text
    paged = next(l for l in text.splitlines() if l.startswith("Llama-3-8B 32/8 D128 B16 K4096 paged P16"))
    assert "unsupported |   -" in paged
    sink = next(l for l in text.splitlines() if "+ 4 sink tokens" in l)
    assert "no peer" in sink


def test_exit_codes(tmp_path):
    base = ["--no-progress", "--grid", "perf", "--methods", "ours,sdpa-cudnn"]

    def run(argv, behaviour):
        args = cli.parse_args(base + argv)
        return cli.run(args, FakeGPU(), make_fake_mt(behaviour), FakeData, FakeReadKernel,
                       out=io.StringIO(), err=io.StringIO())

    peer_fails = lambda m, c: ("ok", 0.5 if m == "sdpa-cudnn" else 1e-3, 10.0)   # noqa: E731
    assert run([], peer_fails) == 0                         # a peer's wrong answer is reported
    ours_fails = lambda m, c: ("ok", 0.5 if m == "flashdecoding" else 1e-3, 10.0)  # noqa: E731
    assert run([], ours_fails) == 1
    slow = lambda m, c: ("ok", 1e-3, 10.0 if m == "flashdecoding" else 5.0)   # noqa: E731
    assert run([], slow) == 0
    assert run(["--require-bar"], slow) == 3
    boom = lambda m, c: ("boom", 0, 1) if m == "flashdecoding" else ("ok", 1e-3, 5.0)  # noqa: E731
    assert run(["--require-bar"], boom) == 3                # an error is not judged: bar not met
