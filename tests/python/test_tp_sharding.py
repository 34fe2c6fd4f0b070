"""Tensor-parallel head sharding (examples/tp_sharding.py, examples/tp_decode.py) on CPU:
the head split, the counter-based weights and caches, the paged layouts, and a
sharded Llama attention layer whose all-reduced output equals the unsharded layer's,
in float64 with a torch attention in place of the GPU kernel: serially, over a gloo
process group of two ranks spawned with torch.multiprocessing, and through the example
itself under torchrun."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                        "examples")
sys.path.insert(0, os.path.abspath(EXAMPLES))
import tp_sharding as tp  # noqa: E402

F64 = torch.float64
SMALL = tp.LayerShape(hidden=48, num_heads=8, num_kv_heads=4, head_dim=8, rope_theta=10000.0)
LAYOUTS = [("contiguous", 0), ("NHD", 4), ("HND", 5)]


def bits_equal(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(
        (a.contiguous().view(torch.uint8) == b.contiguous().view(torch.uint8)).all())


# --------------------------------------------------------------------------- the split

@pytest.mark.parametrize("hq,hkv,n", [(32, 8, 1), (32, 8, 2), (32, 8, 4), (32, 8, 8),
                                      (8, 8, 4), (6, 3, 3), (16, 1, 1), (64, 8, 8)])
def test_shards_cover_every_head_once_with_whole_groups(hq, hkv, n):
    shape = tp.LayerShape(hidden=64, num_heads=hq, num_kv_heads=hkv, head_dim=4)
    shards = tp.all_shards(shape, n)
    g = hq // hkv
    assert [s.rank for s in shards] == list(range(n))
    assert shards[0].q_start == 0 and shards[-1].q_stop == hq
    assert shards[0].kv_start == 0 and shards[-1].kv_stop == hkv
    for a, b in zip(shards, shards[1:]):
        assert a.q_stop == b.q_start and a.kv_stop == b.kv_start
    for s in shards:
        assert s.num_heads == hq // n and s.num_kv_heads == hkv // n
        for h in range(s.q_start, s.q_stop):  # a query head's KV head lives on its rank
            assert s.kv_start <= h // g < s.kv_stop
            assert (h - s.q_start) // g == h // g - s.kv_start  # same GQA map locally


@pytest.mark.parametrize("n,words", [(3, ["world_size=3", "num_kv_heads=4"]),
                                     (8, ["world_size=8", "num_kv_heads=4"]),
                                     (0, ["world_size", ">= 1", "0"])])
def test_shard_heads_refuses_a_world_that_splits_groups(n, words):
    with pytest.raises(ValueError) as info:
        tp.shard_heads(SMALL, n, 0)
    for w in words:
        assert w in str(info.value)


def test_shard_heads_refuses_bad_ranks_and_shapes():
    with pytest.raises(ValueError, match=r"rank=2 is outside \[0, world_size=2\)"):
        tp.shard_heads(SMALL, 2, 2)
    with pytest.raises(ValueError, match="rank=-1"):
        tp.shard_heads(SMALL, 2, -1)
    with pytest.raises(TypeError, match="rank must be an int"):
        tp.shard_heads(SMALL, 2, True)
    with pytest.raises(ValueError, match="num_heads=6 is not a multiple of num_kv_heads=4"):
        tp.LayerShape(hidden=8, num_heads=6, num_kv_heads=4, head_dim=8)
    with pytest.raises(ValueError, match="head_dim=7 must be even"):
        tp.LayerShape(hidden=8, num_heads=4, num_kv_heads=4, head_dim=7)
    with pytest.raises(ValueError, match="hidden must be >= 1, got 0"):
        tp.LayerShape(hidden=0, num_heads=4, num_kv_heads=4, head_dim=8)


# --------------------------------------------------------------------------- generator

def test_counter_values_are_a_function_of_the_index_alone(monkeypatch):
    full = tp.seeded_block(7, "w", (6, 5, 9), (None, None, None), dtype=F64, device="cpu")
    box = ((1, 4), (2, 5), (3, 9))
    part = tp.seeded_block(7, "w", (6, 5, 9), box, dtype=F64, device="cpu")
    assert bits_equal(part, full[1:4, 2:5, 3:9].contiguous())
    monkeypatch.setattr(tp, "_CHUNK_ELEMENTS", 7)  # many chunks: same numbers
    assert bits_equal(tp.seeded_block(7, "w", (6, 5, 9), box, dtype=F64, device="cpu"), part)
    flat = tp.counter_uniform(torch.arange(6 * 5 * 9), 7, "w")
    assert bits_equal(flat.view(6, 5, 9), full)
    # another seed or name gives other numbers
    for seed, name in ((8, "w"), (7, "v")):
        other = tp.seeded_block(seed, name, (6, 5, 9), (None,) * 3, dtype=F64, device="cpu")
        assert not torch.equal(other, full)
    # indices past 2**32 are not aliases of small ones
    big = tp.counter_uniform(torch.tensor([5, 5 + (1 << 32), 5 + (1 << 40)]), 7, "w")
    assert len(set(big.tolist())) == 3


def test_counter_values_have_unit_variance():
    u = tp.counter_uniform(torch.arange(1 << 20), 0, "stats")
    assert float(u.abs().max()) < math.sqrt(3.0)
    assert abs(float(u.mean())) < 5e-3
    assert abs(float(u.std()) - 1.0) < 5e-3
    hist = torch.histc(u, bins=8, min=-math.sqrt(3.0), max=math.sqrt(3.0))
    assert float((hist / u.numel() - 1 / 8).abs().max()) < 2e-3  # uniform
    lag = float((u[1:] * u[:-1]).mean())
    assert abs(lag) < 5e-3  # neighbours uncorrelated


@pytest.mark.parametrize("n", [1, 2, 4])
def test_rank_weights_are_slices_of_the_unsharded_weights(n):
    full = tp.make_weights(SMALL, tp.shard_heads(SMALL, 1, 0), 3, dtype=torch.bfloat16,
                           device="cpu")
    assert full.wq.shape == (64, 48) and full.wk.shape == (32, 48) and full.wo.shape == (48, 64)
    for shard in tp.all_shards(SMALL, n):
        mine = tp.make_weights(SMALL, shard, 3, dtype=torch.bfloat16, device="cpu")
        cut = tp.shard_weights(full, SMALL, shard)
        for name in ("wq", "wk", "wv", "wo"):
            assert bits_equal(getattr(mine, name), getattr(cut, name)), name
    # std 1/sqrt(fan_in)
    big = tp.make_weights(tp.LayerShape(512, 8, 8, 64), tp.HeadShard(0, 1, 0, 8, 0, 8), 0,
                          dtype=F64, device="cpu")
    assert abs(float(big.wq.std()) * math.sqrt(512) - 1) < 0.01
    assert abs(float(big.wo.std()) * math.sqrt(512) - 1) < 0.01


# --------------------------------------------------------------------------- KV caches

@pytest.mark.parametrize("layout,page_size", LAYOUTS[1:])
def test_paged_caches_hold_the_contiguous_history(layout, page_size):
    batch, k_len = 3, 13
    for shard in tp.all_shards(SMALL, 2) + [tp.shard_heads(SMALL, 1, 0)]:
        flat = tp.make_kv_cache(SMALL, shard, batch, k_len, 5, dtype=F64, device="cpu")
        paged = tp.make_kv_cache(SMALL, shard, batch, k_len, 5, dtype=F64, device="cpu",
                                 layout=layout, page_size=page_size)
        max_pages = -(-k_len // page_size)
        bt = paged.block_table
        assert bt.dtype == torch.int32 and bt.shape == (batch, max_pages)
        assert len(set(bt.flatten().tolist())) == bt.numel()  # no page shared
        num_pages = paged.k.shape[0]
        assert int(bt.max()) < num_pages and int(bt.min()) >= 0
        for got, want in zip(tp.gather_contiguous(paged), (flat.k, flat.v)):
            assert bits_equal(got[:, :, :k_len].contiguous(), want)
        unused = sorted(set(range(num_pages)) - set(bt.flatten().tolist()))
        assert unused and bool(torch.isnan(paged.k[unused]).all())
        assert not bool(torch.isnan(paged.k[bt.long().flatten()]).any())
        assert paged.num_kv_heads == shard.num_kv_heads


@pytest.mark.parametrize("layout,page_size", LAYOUTS)
def test_rank_caches_are_slices_of_the_unsharded_cache(layout, page_size):
    full = tp.make_kv_cache(SMALL, tp.shard_heads(SMALL, 1, 0), 2, 11, 9, dtype=torch.float16,
                            device="cpu", layout=layout, page_size=page_size or 16)
    for shard in tp.all_shards(SMALL, 4):
        mine = tp.make_kv_cache(SMALL, shard, 2, 11, 9, dtype=torch.float16, device="cpu",
                                layout=layout, page_size=page_size or 16)
        cut = tp.shard_kv_cache(full, shard)
        assert bits_equal(mine.k, cut.k) and bits_equal(mine.v, cut.v)
        if layout != "contiguous":
            assert torch.equal(mine.block_table, full.block_table)  # one table for all ranks


@pytest.mark.parametrize("layout,page_size", LAYOUTS)
def test_append_writes_only_each_sequences_new_slot(layout, page_size):
    shard = tp.shard_heads(SMALL, 2, 1)
    cache = tp.make_kv_cache(SMALL, shard, 3, 10, 1, dtype=F64, device="cpu", layout=layout,
                             page_size=page_size or 16)
    before = [t.clone() for t in tp.gather_contiguous(cache)]
    pools = (cache.k.clone(), cache.v.clone())
    positions = torch.tensor([9, 0, 4])
    k_new = torch.randn(3, shard.num_kv_heads, SMALL.head_dim, dtype=F64)
    v_new = torch.randn(3, shard.num_kv_heads, SMALL.head_dim, dtype=F64)
    tp.append_kv(cache, k_new, v_new, positions)
    after = tp.gather_contiguous(cache)
    for old, new, written in zip(before, after, (k_new, v_new)):
        for b, pos in enumerate(positions.tolist()):
            assert torch.equal(new[b, :, pos], written[b])
            keep = [j for j in range(old.shape[2]) if j != pos]
            assert bits_equal(new[b][:, keep].contiguous(), old[b][:, keep].contiguous())
    if layout != "contiguous":  # nothing outside the sequences' pages moved
        unused = sorted(set(range(cache.k.shape[0])) - set(cache.block_table.flatten().tolist()))
        assert bits_equal(cache.k[unused], pools[0][unused])


def test_seq_lens_reach_the_bound_and_stay_in_range():
    lens = tp.make_seq_lens(64, 100, 3, ragged=True, device="cpu")
    assert lens.dtype == torch.int32 and int(lens[0]) == 100
    assert int(lens.min()) >= 1 and int(lens.max()) == 100 and len(set(lens.tolist())) > 10
    assert torch.equal(tp.make_seq_lens(4, 7, 3, ragged=False, device="cpu"),
                       torch.full((4,), 7, dtype=torch.int32))


# --------------------------------------------------------------------------- attention

def naive_attention(q, k, v, lens, scale):
    """Loop-by-loop float64 decode attention over each sequence's first lens[b] keys."""
    b_, hq, d = q.shape
    g = hq // k.shape[1]
    y = np.zeros((b_, hq, d))
    for b in range(b_):
        n = int(lens[b])
        for h in range(hq):
            if n == 0:
                continue
            s = [scale * float(np.dot(q[b, h], k[b, h // g, j])) for j in range(n)]
            m = max(s)
            w = [math.exp(x - m) for x in s]
            y[b, h] = sum(wj * v[b, h // g, j] for j, wj in enumerate(w)) / sum(w)
    return y


def test_reference_attention_matches_loops_and_the_package_reference():
    from flashdecoding import reference

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(4, 6, 8, generator=gen, dtype=F64)
    k = torch.randn(4, 3, 9, 8, generator=gen, dtype=F64)
    v = torch.randn(4, 3, 9, 8, generator=gen, dtype=F64)
    lens = torch.tensor([9, 1, 0, 5], dtype=torch.int32)
    v_poisoned = v.clone()
    v_poisoned[3, :, 5:] = float("nan")  # keys past a length never reach y
    got = tp.reference_attention(q, k, v_poisoned, lens, 0.3)
    want = naive_attention(q.numpy(), k.numpy(), v.numpy(), lens, 0.3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-13)
    assert bool((got[2] == 0).all())
    full = tp.reference_attention(q, k, v, torch.full((4,), 9), 1 / math.sqrt(8))
    np.testing.assert_allclose(full.numpy(), reference.decode(q.numpy(), k.numpy(), v.numpy()),
                               rtol=1e-12, atol=1e-13)


def test_rope_rotates_pairs_by_position():
    pos = torch.tensor([0, 1, 7])
    cos, sin = tp.rope_tables(pos, 4, 100.0)
    x = torch.randn(3, 2, 4, dtype=F64)
    y = tp.apply_rope(x, cos, sin)
    assert torch.equal(y[0], x[0])  # position 0 is the identity
    for b, p in enumerate(pos.tolist()):
        for i, freq in enumerate((1.0, 0.1)):  # theta ** (-2i / D)
            a, c = x[b, :, i], x[b, :, i + 2]
            ang = p * freq
            torch.testing.assert_close(y[b, :, i], a * math.cos(ang) - c * math.sin(ang))
            torch.testing.assert_close(y[b, :, i + 2], c * math.cos(ang) + a * math.sin(ang))
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1))  # a rotation


# --------------------------------------------------------------------------- the layer

def build_layer(shard, batch, k_len, layout, page_size, seed=11, dtype=F64):
    x = tp.make_input(SMALL, batch, seed, dtype=dtype, device="cpu")
    w = tp.make_weights(SMALL, shard, seed, dtype=dtype, device="cpu")
    lens = tp.make_seq_lens(batch, k_len, seed, ragged=True, device="cpu")
    cache = tp.make_kv_cache(SMALL, shard, batch, k_len, seed, dtype=dtype, device="cpu",
                             layout=layout, page_size=page_size or 16)
    cos, sin = tp.rope_tables(lens.long() - 1, SMALL.head_dim, SMALL.rope_theta)
    return x, w, cache, lens, cos, sin


def unsharded_step(batch, k_len, layout, page_size, seed=11):
    x, w, cache, lens, cos, sin = build_layer(tp.shard_heads(SMALL, 1, 0), batch, k_len, layout,
                                              page_size, seed)
    return tp.layer_step(x, w, cache, lens, cos, sin, tp.torch_attention(SMALL.scale))


def test_unsharded_layer_matches_a_direct_computation():
    """The layer step against the same maths written out head by head, loop by loop."""
    batch, k_len = 3, 12
    x, w, cache, lens, cos, sin = build_layer(tp.shard_heads(SMALL, 1, 0), batch, k_len,
                                              "contiguous", 0)
    k_hist, v_hist = cache.k.clone(), cache.v.clone()
    got = tp.layer_step(x, w, cache, lens, cos, sin, tp.torch_attention(SMALL.scale))
    d, hq, hkv = SMALL.head_dim, SMALL.num_heads, SMALL.num_kv_heads
    out = torch.zeros(batch, SMALL.hidden, dtype=F64)
    for b in range(batch):
        n = int(lens[b])
        pos = n - 1
        inv = [SMALL.rope_theta ** (-2 * i / d) for i in range(d // 2)]

        def rot(vec):
            r = vec.clone()
            for i, f in enumerate(inv):
                a, c = vec[i], vec[i + d // 2]
                r[i] = a * math.cos(pos * f) - c * math.sin(pos * f)
                r[i + d // 2] = c * math.cos(pos * f) + a * math.sin(pos * f)
            return r

        ys = []
        for h in range(hq):
            kv = h // (hq // hkv)
            qh = rot(w.wq[h * d:(h + 1) * d] @ x[b])
            keys = k_hist[b, kv, :n].clone()
            vals = v_hist[b, kv, :n].clone()
            keys[pos] = rot(w.wk[kv * d:(kv + 1) * d] @ x[b])
            vals[pos] = w.wv[kv * d:(kv + 1) * d] @ x[b]
            p = torch.softmax(keys @ qh * SMALL.scale, dim=0)
            ys.append(p @ vals)
        out[b] = w.wo @ torch.cat(ys)
    assert tp.relative_error(got.out, out) < 1e-12


@pytest.mark.parametrize("layout,page_size", LAYOUTS)
@pytest.mark.parametrize("n", [2, 4])
def test_serial_shards_sum_to_the_unsharded_layer(layout, page_size, n):
    batch, k_len = 3, 14
    want = unsharded_step(batch, k_len, layout, page_size)
    total = None
    for shard in tp.all_shards(SMALL, n):
        x, w, cache, lens, cos, sin = build_layer(shard, batch, k_len, layout, page_size)
        part = tp.layer_step(x, w, cache, lens, cos, sin, tp.torch_attention(SMALL.scale))
        assert tp.relative_error(part.y, want.y[:, shard.q_start:shard.q_stop]) < 1e-13
        assert tp.relative_error(part.out, want.out) > 0.05  # one rank's part is not the sum
        total = part.out if total is None else total + part.out
    assert tp.relative_error(total, want.out) < 1e-12


def _gloo_worker(rank, world_size, init_file, out_dir):
    """One rank: its shard of the layer in float64, combined with a gloo all-reduce."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        shard = tp.shard_heads(SMALL, world_size, rank)
        saved = {}
        for layout, page_size in LAYOUTS:
            x, w, cache, lens, cos, sin = build_layer(shard, 3, 14, layout, page_size)
            alone = tp.layer_step(x, w, cache, lens, cos, sin, tp.torch_attention(SMALL.scale))
            res = tp.layer_step(x, w, cache, lens, cos, sin, tp.torch_attention(SMALL.scale),
                                all_reduce=dist.all_reduce)
            saved[layout] = {"out": res.out, "partial": alone.out, "y": res.y,
                             "q_start": shard.q_start, "q_stop": shard.q_stop}
        torch.save(saved, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed without gloo")
def test_two_gloo_ranks_all_reduce_to_the_unsharded_layer(tmp_path):
    import torch.multiprocessing as mp

    world_size = 2
    mp.spawn(_gloo_worker, args=(world_size, str(tmp_path / "init"), str(tmp_path)),
             nprocs=world_size, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    for layout, page_size in LAYOUTS:
        want = unsharded_step(3, 14, layout, page_size)
        outs = [r[layout]["out"] for r in ranks]
        assert bits_equal(outs[0], outs[1])  # every rank holds the same combined output
        assert tp.relative_error(outs[0], want.out) < 1e-12, layout
        covered = []
        for r in ranks:
            s = r[layout]
            assert tp.relative_error(s["partial"], want.out) > 0.05
            assert tp.relative_error(s["y"], want.y[:, s["q_start"]:s["q_stop"]]) < 1e-13
            covered += list(range(s["q_start"], s["q_stop"]))
        assert covered == list(range(SMALL.num_heads))


# --------------------------------------------------------------------------- the example

def _example_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.pop("LOCAL_RANK", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


EXAMPLE_ARGS = ["--device", "cpu", "--check", "--hidden", "128", "--heads", "8", "--kv-heads",
                "4", "--head-dim", "16", "--batch", "3", "--k-len", "40", "--steps", "2",
                "--warmup", "0", "--ragged"]


def run_example(nproc, extra, tmp_path, tag):
    script = os.path.join(EXAMPLES, "tp_decode.py")
    json_path, dump_path = tmp_path / f"{tag}.json", tmp_path / f"{tag}.pt"
    files = ["--json", str(json_path), "--dump", str(dump_path)]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", script]
    else:
        cmd = [sys.executable, script]
    proc = subprocess.run(cmd + EXAMPLE_ARGS + extra + files, env=_example_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check: passed" in proc.stdout
    return json.loads(json_path.read_text()), torch.load(dump_path)


@pytest.mark.parametrize("extra", [[], ["--paged", "--page-size", "6", "--kv-layout", "HND"]],
                         ids=["contiguous", "paged"])
def test_example_on_two_cpu_ranks_matches_one_process(extra, tmp_path):
    one, one_dump = run_example(0, extra, tmp_path, "one")
    two, two_dump = run_example(2, extra, tmp_path, "two")
    assert one["world_size"] == 1 and two["world_size"] == 2
    for result in (one, two):
        (row,) = result["rows"]
        assert row["check"]["passed"] and row["check"]["out_vs_float64"] <= 1e-2
        assert row["step_us_eager"] > 0 and row["attn_us_eager"] > 0
    assert one["rows"][0]["check"]["out_vs_unsharded"] == 0.0  # one rank is the unsharded run
    a, b = one_dump["configs"][0], two_dump["configs"][0]
    assert tp.relative_error(b["out"], a["out"]) <= tp.TOLERANCE[torch.bfloat16]
    assert tp.relative_error(b["y_invariant"], a["y_invariant"]) <= tp.TOLERANCE[torch.bfloat16]


def test_example_refuses_a_world_size_that_splits_kv_heads(monkeypatch, capsys):
    import tp_decode

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    assert tp_decode.main(EXAMPLE_ARGS) == 2
    err = capsys.readouterr().err
    assert "world_size=3 does not divide num_kv_heads=4" in err
    assert not dist.is_initialized()  # refused before any process group started


def test_importing_flashdecoding_loads_no_torch():
    """Ranks import the package before choosing a device; it must not pull torch in."""
    code = ("import sys, flashdecoding; "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'torch'); "
            "assert not loaded, loaded")
    proc = subprocess.run([sys.executable, "-c", code], env=_example_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
