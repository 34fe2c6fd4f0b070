"""GPU tests of paged KV caches against the float64 reference, which gathers the
pages itself from the pool and the block table (flashdecoding.reference). Page
sizes {1, 3, 16, 17, 64, 256}; lengths {0, 1, P-1, P, P+1, long} in one batch;
shuffled and shared page ids; NHD and HND pools; each extension; a sequence with a
page id outside the pool or a bad length (NaN row, the others exact). Outputs are
NaN-poisoned before every run and repeats must be bit-identical. Skipped without
a GPU."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

import flashdecoding as fd
from flashdecoding import reference
from flashdecoding.cuda import DeviceBuffer
from device_arrays import TOL, host, nan_buf, bits
from conftest import gpu

pytestmark = gpu

F16, BF16 = fd.ElementKind.F16, fd.ElementKind.BF16
HQ, HKV, D = 8, 2, 128


def lengths_for(page):
    """{0, 1, P-1, P, P+1, long} for page size P."""
    return [0, 1, page - 1, page, page + 1, max(5 * page + 3, 300)]


def build_cache(rng, page, lens, element, layout, unused_entry=None):
    """Pools of shuffled pages holding the sequences' keys, the block table (one spare
    entry per row), with sequence 4 (P+1 keys) sharing its first page with sequence 5."""
    needed = [math.ceil(n / page) for n in lens]
    max_pages = max(needed) + 1
    num_pages = sum(needed) + 3
    perm = rng.permutation(num_pages).astype(np.int32)
    table = np.empty((len(lens), max_pages), np.int32)
    table[:] = rng.integers(0, num_pages, size=table.shape) if unused_entry is None else unused_entry
    at = 0
    for b, n in enumerate(needed):
        table[b, :n] = perm[at:at + n]
        at += n
    if len(lens) > 5 and needed[4] and needed[5]:
        table[4, 0] = table[5, 0]  # prefix sharing: one page in two sequences
    shape = (num_pages, page, HKV, D) if layout == "NHD" else (num_pages, HKV, page, D)
    return host(shape, element, rng), host(shape, element, rng), table


def run_paged(q, kp, vp, table, lens, element, layout, repeats=2, **kw):
    """flash_decode over device copies, NaN-poisoned outputs, twice; returns (y, lse)."""
    dq, dk, dv = (DeviceBuffer.from_numpy(a) for a in (q, kp, vp))
    dt = DeviceBuffer.from_numpy(table)
    dl = DeviceBuffer.from_numpy(np.asarray(lens, np.int32))
    extra = {name: DeviceBuffer.from_numpy(np.asarray(value, np.float32)) if isinstance(value, np.ndarray)
             else value for name, value in kw.items()}
    outs = []
    for _ in range(repeats):
        y = nan_buf(q.shape, element)
        lse = nan_buf(q.shape[:2])
        got = fd.flash_decode(dq, dk, dv, out=y, lse=lse, block_table=dt, seq_lens=dl,
                              kv_layout=layout, **extra)
        assert got is y
        outs.append((y.to_numpy(), lse.to_numpy()))
    for y, lse in outs[1:]:
        assert np.array_equal(bits(y), bits(outs[0][0])), "a repeat gave other bits"
        assert np.array_equal(bits(lse), bits(outs[0][1]))
    return outs[0]


def check(y, lse, ref_y, ref_lse, element):
    assert reference.relative_error(y, ref_y) <= TOL[element]
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=2e-3)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page", [1, 3, 16, 17, 64, 256])
def test_paged_matches_the_reference_for_every_length(page, layout):
    element = F16 if page % 2 else BF16
    rng = np.random.default_rng(page * 7 + (layout == "HND"))
    lens = lengths_for(page)
    kp, vp, table = build_cache(rng, page, lens, element, layout)
    q = host((len(lens), HQ, D), element, rng)
    y, lse = run_paged(q, kp, vp, table, lens, element, layout)
    ref_y, ref_lse = reference.decode_paged(q, kp, vp, table, D ** -0.5, seq_lens=lens,
                                            kv_layout=layout, return_lse=True)
    check(y, lse, ref_y, ref_lse, element)
    assert np.all(y[0].astype(np.float32) == 0) and np.all(lse[0] == -np.inf)  # length 0


EXTENSIONS = {
    "window": dict(window=20),
    "window_sink_tokens": dict(window=20, sink_tokens=4),
    "sink_logits": dict(sink_logits=np.linspace(-1.0, 2.0, HQ)),
    "alibi": dict(alibi_slopes=2.0 ** -np.arange(1, HQ + 1)),
    "soft_cap": dict(soft_cap=2.0),
    "batch_invariant": dict(batch_invariant=True),
    "everything": dict(window=40, sink_tokens=3, sink_logits=np.linspace(0.5, -0.5, HQ),
                       alibi_slopes=2.0 ** -np.arange(1, HQ + 1), soft_cap=5.0, scale=0.2),
}


def _reference_kwargs(kw):
    """The reference's arguments: the per-head arrays as the f32 values the GPU gets."""
    out = {k: (v.astype(np.float32).astype(np.float64) if isinstance(v, np.ndarray) else v)
           for k, v in kw.items()}
    out.pop("batch_invariant", None)
    return out


# Page 17 takes the per-key lookup; page 16 (but under a window, whose tiles
# start anywhere) the kernels for pools whose every tile lies in one page.
@pytest.mark.parametrize("page", [16, 17])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("name", sorted(EXTENSIONS))
def test_paged_with_each_extension(name, layout, page):
    element = BF16 if layout == "NHD" else F16
    rng = np.random.default_rng(zlib.crc32(f"{name}/{layout}/{page}".encode()))
    lens = lengths_for(page)
    kp, vp, table = build_cache(rng, page, lens, element, layout)
    q = host((len(lens), HQ, D), element, rng)
    kw = dict(EXTENSIONS[name])
    scale = kw.pop("scale", D ** -0.5)
    y, lse = run_paged(q, kp, vp, table, lens, element, layout, scale=scale, **kw)
    ref_y, ref_lse = reference.decode_paged(q, kp, vp, table, scale, seq_lens=lens,
                                            kv_layout=layout, return_lse=True,
                                            **_reference_kwargs(kw))
    check(y, lse, ref_y, ref_lse, element)


def test_paged_batch_invariant_bits_do_not_depend_on_the_batch():
    element, page, layout = F16, 16, "NHD"
    rng = np.random.default_rng(3)
    lens = lengths_for(page)
    kp, vp, table = build_cache(rng, page, lens, element, layout)
    q = host((len(lens), HQ, D), element, rng)
    y_all, _ = run_paged(q, kp, vp, table, lens, element, layout, batch_invariant=True)
    y_one, _ = run_paged(q[5:6], kp, vp, table[5:6], lens[5:6], element, layout,
                         batch_invariant=True)
    assert np.array_equal(bits(y_all[5:6]), bits(y_one))


def test_paged_equals_the_same_keys_in_a_contiguous_cache():
    """The page pool and a contiguous copy of the same keys give results within the
    tolerance of each other and of the reference."""
    element, page, layout = BF16, 64, "HND"
    rng = np.random.default_rng(4)
    lens = [200, 64, 129]
    kp, vp, table = build_cache(rng, page, lens, element, layout)
    q = host((3, HQ, D), element, rng)
    k_len = table.shape[1] * page
    kc = reference.gather_pages(kp, table, lens, k_len, layout).astype(element.numpy_dtype())
    vc = reference.gather_pages(vp, table, lens, k_len, layout).astype(element.numpy_dtype())
    y_paged, _ = run_paged(q, kp, vp, table, lens, element, layout)
    yc = fd.flash_decode(DeviceBuffer.from_numpy(q), DeviceBuffer.from_numpy(kc),
                         DeviceBuffer.from_numpy(vc),
                         seq_lens=DeviceBuffer.from_numpy(np.array(lens, np.int32))).to_numpy()
    ref = reference.decode(q, kc, vc, seq_lens=lens)
    assert reference.relative_error(y_paged, ref) <= TOL[element]
    assert reference.relative_error(yc, ref) <= TOL[element]


def test_bad_page_ids_and_lengths_give_nan_rows_and_the_rest_exact():
    element, page, layout = F16, 16, "NHD"
    rng = np.random.default_rng(5)
    lens = [40, 40, 40, 40, 40, 40]
    kp, vp, table = build_cache(rng, page, lens, element, layout, unused_entry=-1)
    num_pages = kp.shape[0]
    table[1, 1] = num_pages           # a needed page past the pool
    table[2, 0] = -5                  # a negative page id
    table[3, 2] = 2 ** 30             # the last needed page, far past the pool
    k_len = table.shape[1] * page
    bad_lens = list(lens)
    bad_lens[4] = k_len + 1           # longer than the launch's bound
    bad_lens[5] = -3                  # negative
    q = host((6, HQ, D), element, rng)
    y, lse = run_paged(q, kp, vp, table, bad_lens, element, layout)
    ref_y, ref_lse = reference.decode_paged(q, kp, vp, table, D ** -0.5, seq_lens=bad_lens,
                                            kv_layout=layout, return_lse=True)
    assert reference.bad_rows(table, bad_lens, k_len, num_pages, page).tolist() == \
        [False, True, True, True, True, True]
    assert np.all(np.isnan(y[1:].astype(np.float32))) and np.all(np.isnan(lse[1:]))
    check(y[:1], lse[:1], ref_y[:1], ref_lse[:1], element)  # unused entries of -1 are ignored


def test_one_page_per_key_with_a_long_sequence():
    """SGLang's token-level table: page size 1, a few thousand keys, split across CTAs."""
    element, layout = BF16, "NHD"
    rng = np.random.default_rng(6)
    lens = [3000, 1, 2500]
    kp, vp, table = build_cache(rng, 1, lens, element, layout)
    q = host((3, HQ, D), element, rng)
    y, lse = run_paged(q, kp, vp, table, lens, element, layout)
    ref_y, ref_lse = reference.decode_paged(q, kp, vp, table, D ** -0.5, seq_lens=lens,
                                            kv_layout=layout, return_lse=True)
    check(y, lse, ref_y, ref_lse, element)


def test_a_refused_paged_call_writes_nothing():
    element, page, layout = F16, 16, "NHD"
    rng = np.random.default_rng(7)
    kp, vp, table = build_cache(rng, page, [20, 30], element, layout)
    q = host((2, HQ, D), element, rng)
    dq, dk, dv = (DeviceBuffer.from_numpy(a) for a in (q, kp, vp))
    y = nan_buf((2, HQ, D), element)
    lse = nan_buf((2, HQ))
    before = (bits(y.to_numpy()), bits(lse.to_numpy()), bits(dk.to_numpy()))
    bad_table = DeviceBuffer.from_numpy(table.astype(np.float32))
    with pytest.raises(fd.InvalidProblem, match="block_table: expected int32"):
        fd.flash_decode(dq, dk, dv, out=y, lse=lse, block_table=bad_table)
    with pytest.raises(fd.InvalidProblem, match="k_len = .* exceeds max_pages"):
        fd.flash_decode(dq, dk, dv, out=y, lse=lse, block_table=DeviceBuffer.from_numpy(table),
                        max_seq_len=table.shape[1] * page + 1)
    after = (bits(y.to_numpy()), bits(lse.to_numpy()), bits(dk.to_numpy()))
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_paged_torch_pools_page_size_from_the_shape():
    torch = pytest.importorskip("torch", reason="PyTorch is not importable")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    element, page = BF16, 32
    rng = np.random.default_rng(8)
    lens = [100, 33, 64]
    for layout in ("NHD", "HND"):
        kp, vp, table = build_cache(rng, page, lens, element, layout)
        q = host((3, HQ, D), element, rng)
        tq, tk, tv = (torch.from_numpy(a.astype(np.float32)).to("cuda", torch.bfloat16)
                      for a in (q, kp, vp))
        y, lse = fd.flash_decode(tq, tk, tv, block_table=torch.from_numpy(table).cuda(),
                                 seq_lens=torch.tensor(lens, dtype=torch.int32, device="cuda"),
                                 kv_layout=layout, return_lse=True)
        assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16
        assert lse.dtype == torch.float32 and tuple(lse.shape) == (3, HQ)
        torch.cuda.synchronize()
        ref_y, ref_lse = reference.decode_paged(q, kp, vp, table, D ** -0.5, seq_lens=lens,
                                                kv_layout=layout, return_lse=True)
        check(y.float().cpu().numpy(), lse.cpu().numpy(), ref_y, ref_lse, element)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_whole_tile_pool_on_a_grid_that_fills_the_sms(layout):
    """One CTA per sequence and KV head on every SM (one wave that fills the GPU):
    the launch deals each warp a contiguous range of tiles (launch_plan.cpp), over
    ragged lengths down to 0 and a bad page id in one sequence."""
    element, page = BF16, 16
    rng = np.random.default_rng(9 + (layout == "HND"))
    probe = fd.FlashDecodingPlan.select(None, fd.FlashDecodingDescriptor.new_paged(
        1, HQ, HKV, D, page, 1, 1, element))
    num_sms = probe.launch_plan()["num_sms"]
    b = num_sms // HKV
    base = lengths_for(page) + [700, 1100]
    lens = [base[i % len(base)] for i in range(b)]
    kp, vp, table = build_cache(rng, page, lens, element, layout)
    table[3, 0] = kp.shape[0] + 7  # sequence 3 (P keys) meets a page past the pool
    desc = fd.FlashDecodingDescriptor.new_paged(b, HQ, HKV, D, page, table.shape[1],
                                                kp.shape[0], element)
    lp = fd.FlashDecodingPlan.select(None, desc).launch_plan()
    # The grid the tile ranges are for: one wave of at least 15/16 of the SMs.
    assert lp["num_splits"] == 1 and lp["ctas"] * 16 >= num_sms * 15 and lp["ctas"] <= num_sms
    q = host((b, HQ, D), element, rng)
    y, lse = run_paged(q, kp, vp, table, lens, element, layout)
    ref_y, ref_lse = reference.decode_paged(q, kp, vp, table, D ** -0.5, seq_lens=lens,
                                            kv_layout=layout, return_lse=True)
    good = np.ones(b, bool)
    good[3] = False
    assert np.all(np.isnan(y[3].astype(np.float32))) and np.all(np.isnan(lse[3]))
    check(y[good], lse[good], ref_y[good], ref_lse[good], element)
