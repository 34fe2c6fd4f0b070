"""Host-only tests of paged KV caches: the pool geometry read from NHD and HND pool
shapes, the paged args and descriptor, the params the library receives, and every
refusal of a host-side field, with its message. Made-up device addresses; the
launch is fd_decode_check (see test_extensions.py), so nothing is written."""
from __future__ import annotations

import pytest

import flashdecoding as fd
from flashdecoding import _capi
from conftest import addr

B, HQ, HKV, D = 3, 8, 2, 64
PAGE, PAGES, MAX_PAGES = 16, 40, 5


def ref(i, shape, dtype="float16", stride=None, offset=0):
    return fd.TensorRef(addr(i) + offset, shape, stride, dtype=dtype)


def pool_shape(layout, page=PAGE, pages=PAGES, hkv=HKV):
    return (pages, page, hkv, D) if layout == "NHD" else (pages, hkv, page, D)


def call(layout="NHD", page=PAGE, table_shape=(B, MAX_PAGES), **kwargs):
    q = ref(0, (B, HQ, D))
    k = ref(1, kwargs.pop("k_shape", pool_shape(layout, page)), kwargs.pop("k_dtype", "float16"),
            kwargs.pop("k_stride", None))
    v = ref(2, kwargs.pop("v_shape", pool_shape(layout, page)), kwargs.pop("k_dtype2", "float16"),
            kwargs.pop("v_stride", None))
    y = fd.TensorMut(addr(3), (B, HQ, D), dtype="float16")
    table = kwargs.pop("block_table", ref(4, table_shape, "int32"))
    return fd.flash_decode(q, k, v, out=y, block_table=table, kv_layout=layout,
                           workspace=(addr(9), 1 << 24), **kwargs)


@pytest.mark.parametrize("page", [1, 3, 16, 17, 64, 256])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_page_size_and_strides_come_from_the_pool_shape(launches, layout, page):
    call(layout, page, seq_lens=ref(5, (B,), "int32"))
    assert launches.statuses == [0]
    p = launches.calls[0]
    assert (p.page_size, p.max_pages, p.num_pages) == (page, MAX_PAGES, PAGES)
    assert p.k_len == MAX_PAGES * page  # max_seq_len defaults to the table's capacity
    assert p.k_stride_b == p.v_stride_b == 0
    assert p.k_stride_page == p.v_stride_page == page * HKV * D
    if layout == "NHD":
        assert (p.k_stride_h, p.k_stride_k) == (D, HKV * D)
    else:
        assert (p.k_stride_h, p.k_stride_k) == (page * D, D)
    assert (p.v_stride_h, p.v_stride_k) == (p.k_stride_h, p.k_stride_k)
    assert _capi.address_of(p.block_table) == addr(4) and p.block_table_stride_b == MAX_PAGES
    assert p.num_kv_heads == HKV


def test_a_combined_pool_is_expressed_by_strides(launches):
    """vLLM-style [pages, 2, page, H_kv, D]: k and v are views of one allocation."""
    whole = (PAGES, 2, PAGE, HKV, D)
    st = [2 * PAGE * HKV * D, PAGE * HKV * D, HKV * D, D, 1]
    kst = (st[0], st[2], st[3], st[4])
    q = ref(0, (B, HQ, D))
    k = fd.TensorRef(addr(1), pool_shape("NHD"), kst, dtype="float16")
    v = fd.TensorRef(addr(1) + st[1] * 2, pool_shape("NHD"), kst, dtype="float16")
    assert whole[0] * st[0] > 0
    fd.flash_decode(q, k, v, out=fd.TensorMut(addr(3), (B, HQ, D), dtype="float16"),
                    block_table=ref(4, (B, MAX_PAGES), "int32"), workspace=(addr(9), 1 << 24))
    p = launches.calls[0]
    assert launches.statuses == [0]
    assert p.k_stride_page == p.v_stride_page == 2 * PAGE * HKV * D
    assert p.v - p.k == PAGE * HKV * D * 2


def test_max_seq_len_bounds_the_launch(launches):
    call(max_seq_len=33)
    assert launches.calls[0].k_len == 33 and launches.statuses == [0]


def test_block_table_row_stride_is_free(launches):
    call(block_table=ref(4, (B, MAX_PAGES), "int32", stride=(64, 1)))
    assert launches.calls[0].block_table_stride_b == 64 and launches.statuses == [0]


def test_paged_extensions_reach_the_params(launches):
    call(seq_lens=ref(5, (B,), "int32"), window=20, sink_tokens=4,
         sink_logits=ref(6, (HQ,), "float32"), alibi_slopes=ref(7, (HQ,), "float32"),
         soft_cap=10.0, lse=fd.TensorMut(addr(8), (B, HQ), dtype="float32"), batch_invariant=True)
    p = launches.calls[0]
    assert launches.statuses == [0]
    assert (p.window_size, p.sink_tokens, p.logits_soft_cap, p.flags) == (20, 4, 10.0, 1)
    assert _capi.address_of(p.lse) == addr(8)


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(block_table=ref(4, (B, MAX_PAGES), "float32")), fd.InvalidProblem,
     "block_table: expected int32 [B, max_pages] = (3, 5), got float32 (3, 5)"),
    (dict(block_table=ref(4, (B, MAX_PAGES), "int64")), fd.InvalidProblem,
     "block_table: expected int32 [B, max_pages] = (3, 5), got int64 (3, 5)"),
    (dict(block_table=ref(4, (B + 1, MAX_PAGES), "int32")), fd.InvalidProblem,
     "block_table: expected int32 [B, max_pages] = (3, 5), got int32 (4, 5)"),
    (dict(block_table=ref(4, (B * MAX_PAGES,), "int32")), fd.InvalidProblem,
     "block_table: expected int32 [B, max_pages], got int32 (15,)"),
    (dict(block_table=ref(4, (B, MAX_PAGES), "int32", stride=(1, B))), fd.InvalidProblem,
     "block_table: expected a contiguous int32 [B, max_pages] array (stride 1 along max_pages)"),
    (dict(block_table=fd.TensorRef(0, (B, MAX_PAGES), dtype="int32")), fd.InvalidProblem,
     "page_size = 16 is set but block_table is NULL"),
    (dict(block_table=ref(4, (B, MAX_PAGES), "int32", offset=2)), fd.InvalidPointer,
     "block_table = 0x"),
    (dict(block_table=ref(3, (B, MAX_PAGES), "int32", offset=4)), fd.InvalidPointer,
     "overlaps block_table"),
    (dict(block_table=ref(4, (B, 0), "int32")), fd.InvalidProblem, "max_pages = 0 must be >= 1"),
    (dict(page=257), fd.Unsupported, "page_size = 257 exceeds the maximum 256"),
    (dict(page=0), fd.InvalidProblem, "page_size = 0 must be >= 1 with a block table"),
    (dict(k_shape=(0, PAGE, HKV, D), v_shape=(0, PAGE, HKV, D)), fd.InvalidProblem,
     "num_pages = 0 must be >= 1"),
    (dict(max_seq_len=MAX_PAGES * PAGE + 1), fd.InvalidProblem,
     "k_len = 81 exceeds max_pages * page_size = 5 * 16 = 80 keys"),
    (dict(max_seq_len=-1), fd.InvalidProblem, "k_len = -1 must be >= 0"),
    (dict(v_shape=(PAGES, PAGE + 1, HKV, D)), fd.InvalidProblem,
     "v: expected shape (40, 16, 2, 64), got (40, 17, 2, 64)"),
    (dict(k_shape=(PAGES, PAGE, 3, D), v_shape=(PAGES, PAGE, 3, D)), fd.InvalidProblem,
     "num_heads = 8 is not a multiple of num_kv_heads = 3"),
    (dict(k_shape=(PAGES, PAGE, HKV * D)), fd.InvalidProblem,
     "k: expected shape (pages, page_size, H_kv, D) or (pages, H_kv, page_size, D)"),
    (dict(k_stride=(PAGE * HKV * D * 2, HKV * D * 2, D * 2, 2)), fd.InvalidProblem,
     "k: the D axis stride must be 1"),
    (dict(k_stride=(-PAGE * HKV * D, HKV * D, D, 1)), fd.InvalidProblem,
     "k_stride_page = -2048 must be >= 0"),
    (dict(k_dtype="float32", k_dtype2="float32"), fd.Unsupported, "k has dtype float32"),
    (dict(layout="NDH"), ValueError, "kv_layout = 'NDH' must be 'NHD'"),
    (dict(seq_lens=ref(5, (B,), "int16")), fd.InvalidProblem,
     "seq_lens: expected int32 [B] = (3,), got int16 (3,)"),
])
def test_paged_refusals(launches, kwargs, exc, words):
    with pytest.raises(exc) as info:
        call(**kwargs)
    assert words in str(info.value)
    assert all(s != 0 for s in launches.statuses)  # nothing launched


# ---------------------------------------------------------------- the plan API

PAGED = fd.FlashDecodingDescriptor.new_paged(B, HQ, HKV, D, PAGE, MAX_PAGES, PAGES,
                                             fd.ElementKind.BF16)


def paged_args(layout="NHD", **extras):
    return fd.FlashDecodingPagedArgs(ref(0, (B, HQ, D), "bfloat16"),
                                     ref(1, PAGED.kv_shape(layout), "bfloat16"),
                                     ref(2, PAGED.kv_shape(layout), "bfloat16"),
                                     fd.TensorMut(addr(3), (B, HQ, D), dtype="bfloat16"),
                                     ref(4, (B, MAX_PAGES), "int32"), kv_layout=layout, **extras)


@pytest.mark.parametrize("layout", ["NHD", "HND", "hnd"])
def test_paged_args_through_the_plan(layout):
    plan = fd.FlashDecodingPlan.select(None, PAGED)
    assert plan.sku().paged and plan.sku().kv_element is fd.ElementKind.BF16
    args = paged_args(layout, seq_lens=ref(5, (B,), "int32"))
    assert plan.can_implement(args) is None
    assert args.kv_layout == layout.upper()


def test_paged_descriptor_with_contiguous_args_is_refused():
    plan = fd.FlashDecodingPlan.select(None, PAGED)
    args = fd.FlashDecodingArgs(ref(0, (B, HQ, D), "bfloat16"),
                                ref(1, (B, HKV, PAGED.k_len, D), "bfloat16"),
                                ref(2, (B, HKV, PAGED.k_len, D), "bfloat16"),
                                fd.TensorMut(addr(3), (B, HQ, D), dtype="bfloat16"))
    with pytest.raises(fd.InvalidProblem, match="the descriptor is paged .* FlashDecodingPagedArgs"):
        plan.can_implement(args)


def test_contiguous_descriptor_with_paged_args_is_refused():
    desc = fd.FlashDecodingDescriptor.new_gqa(B, HQ, HKV, 80, D, fd.ElementKind.BF16)
    plan = fd.FlashDecodingPlan.select(None, desc)
    with pytest.raises(fd.InvalidProblem, match="block_table given but the descriptor is not paged"):
        plan.can_implement(paged_args())


def test_paged_args_need_a_block_table_and_a_known_layout():
    with pytest.raises(TypeError, match="block_table"):
        fd.FlashDecodingPagedArgs(ref(0, (1,)), ref(1, (1,)), ref(2, (1,)),
                                  fd.TensorMut(addr(3), (1,)), None)
    with pytest.raises(ValueError, match="kv_layout"):
        fd.FlashDecodingPagedArgs(ref(0, (1,)), ref(1, (1,)), ref(2, (1,)),
                                  fd.TensorMut(addr(3), (1,)), ref(4, (1,)), kv_layout="NDH")


def test_paged_launch_plan_fields_need_a_gpu_or_report():
    plan = fd.FlashDecodingPlan.select(None, PAGED)
    try:
        lp = plan.launch_plan()
    except fd.CudaError:
        return  # no GPU here: the plan needs a device
    assert lp["cell_index"] == plan.sku().index
    assert {"ctas", "warps_per_cta", "ctas_per_sm", "vectorized"} <= set(lp)


def test_paged_dispatch_key_validates_and_resolves():
    plan = fd.FlashDecodingPlan.select(None, PAGED)
    k = plan.dispatch_key(paged_args(seq_lens=ref(5, (B,), "int32")))
    assert k.paged and k.varlen and not k.alibi
    k.validate_paged()
    assert k.resolve() == plan.sku()
