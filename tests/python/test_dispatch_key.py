"""DispatchKey: rules, stable hash (test vectors), names, and resolution against
the loaded library's kernel table."""
from __future__ import annotations

import dataclasses

import pytest

import flashdecoding as fd
from flashdecoding.dispatch_key import arch_runs, fnv1a_64, parse_architectures
from conftest import HAS_GPU, run_python

K = fd.DispatchKey(fd.SmArch.SM90, fd.DType.BF16, 128, gqa_ratio=4)


def key(**change):
    return dataclasses.replace(K, **change)


def library_buckets(kv=None, paged=None):
    """Buckets read straight from the C table (independent of the package's cell cache)."""
    import ctypes

    from flashdecoding import _capi, _native

    lib = _native.lib()
    out = set()
    for i in range(lib.fd_kernel_cell_count()):
        info = _capi.FdKernelCellInfo.new()
        assert lib.fd_kernel_cell_info_get(i, ctypes.byref(info)) == 0
        if (kv is None or info.kv_dtype == int(kv)) and (paged is None or bool(info.paged) == paged):
            out.add(info.head_dim)
    return sorted(out)


# ---------------------------------------------------------------- one dtype enum

def test_dtype_is_the_element_kind_enum():
    assert fd.DType is fd.ElementKind
    assert [int(e) for e in fd.ElementKind] == [1, 2, 3, 4, 5, 6]
    assert fd.DType.FP8_E4M3.itemsize == 1 and fd.DType.FP8_E5M2.itemsize == 1
    assert fd.DType.FP8_E4M3.is_fp8 and not fd.DType.BF16.is_fp8


# ---------------------------------------------------------------- hash

@pytest.mark.parametrize("data, expected", [
    # published FNV-1a 64 vectors
    (b"", 0xCBF29CE484222325),
    (b"a", 0xAF63DC4C8601EC8C),
    (b"foobar", 0x85944171F73967E8),
])
def test_fnv1a_64_published_vectors(data, expected):
    assert fnv1a_64(data) == expected


@pytest.mark.parametrize("k, canonical, expected", [
    (fd.DispatchKey(fd.SmArch.SM90, fd.DType.BF16, 128, gqa_ratio=4),
     "fdkey/v2;arch=sm90;dtype=bf16;head_dim=128;causal=0;varlen=0;sliding_window=none;alibi=0;"
     "sink=0;paged=0;gqa_ratio=4", 0x7BAAD89980010A85),
    (fd.DispatchKey(fd.SmArch.SM80, fd.DType.F16, 64),
     "fdkey/v2;arch=sm80;dtype=f16;head_dim=64;causal=0;varlen=0;sliding_window=none;alibi=0;"
     "sink=0;paged=0;gqa_ratio=1", 0xF6E57F956D7460FA),
    (fd.DispatchKey(fd.SmArch.SM89, fd.DType.FP8_E4M3, 256, causal=True, varlen=True,
                    sliding_window=4096, alibi=True, sink=4, paged=True, gqa_ratio=8),
     "fdkey/v2;arch=sm89;dtype=fp8_e4m3;head_dim=256;causal=1;varlen=1;sliding_window=4096;"
     "alibi=1;sink=4;paged=1;gqa_ratio=8", 0x02EA36CE5F85EBB9),
])
def test_stable_hash_vectors(k, canonical, expected):
    assert k.canonical() == canonical
    assert k.stable_hash() == expected
    assert 0 <= k.stable_hash() < 2 ** 64


def test_hash_is_the_same_in_another_process_with_another_hash_seed():
    code = ("import flashdecoding as fd\n"
            "print(fd.DispatchKey(fd.SmArch.SM90, fd.DType.BF16, 128, gqa_ratio=4).stable_hash())")
    for seed in ("0", "12345"):
        r = run_python(code, env={"PYTHONHASHSEED": seed})
        assert r.returncode == 0, r.stderr
        assert int(r.stdout) == 0x7BAAD89980010A85


def test_every_field_and_value_changes_the_hash():
    changes = [dict(arch=fd.SmArch.SM80), dict(dtype=fd.DType.F16), dict(head_dim=64),
               dict(causal=True), dict(varlen=True), dict(sliding_window=1),
               dict(sliding_window=4096), dict(alibi=True), dict(sink=1), dict(sink=4),
               dict(paged=True), dict(gqa_ratio=8), dict(dtype=fd.DType.FP8_E5M2)]
    hashes = {key(**c).stable_hash() for c in changes} | {K.stable_hash()}
    assert len(hashes) == len(changes) + 1


# ---------------------------------------------------------------- rules

def test_buckets_come_from_the_library():
    from flashdecoding.dispatch_key import HEAD_DIM_BUCKETS

    assert list(HEAD_DIM_BUCKETS) == library_buckets()
    assert {160, 192, 256} <= set(HEAD_DIM_BUCKETS) and 512 not in HEAD_DIM_BUCKETS
    assert list(fd.head_dim_buckets("fp8_e4m3", paged=True)) == \
        library_buckets(fd.DType.FP8_E4M3, True)


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("dtype", [fd.DType.F16, fd.DType.BF16])
def test_every_library_bucket_validates(dtype, paged):
    buckets = library_buckets(dtype, paged)
    assert buckets
    for d in buckets:
        key(dtype=dtype, head_dim=d, paged=paged).validate_fwd()


@pytest.mark.parametrize("d", [160, 192, 256])
def test_wide_buckets_validate(d):
    key(head_dim=d).validate_fwd()
    key(head_dim=d, paged=True).validate_paged()


@pytest.mark.parametrize("d", [0, 1, 32, 72, 100, 127, 129, 200, 257, 512])
def test_head_dim_outside_buckets_refused(d):
    with pytest.raises(fd.DispatchError, match=f"head_dim {d} is not a kernel bucket"):
        key(head_dim=d).validate_fwd()


def test_fp8_buckets_are_the_fp8_cells():
    fp8 = library_buckets(fd.DType.FP8_E4M3, False)
    if not fp8:
        pytest.skip("this build has no fp8 cells")
    for d in library_buckets():
        k = key(dtype=fd.DType.FP8_E4M3, head_dim=d)
        if d in fp8:
            k.validate_fwd()
        else:  # e.g. 80: the 16-bit cells have it, fp8 ones do not
            with pytest.raises(fd.DispatchError, match="fp8_e4m3 contiguous cells"):
                k.validate_fwd()


@pytest.mark.parametrize("arch", [fd.SmArch.SM80, fd.SmArch.SM86, fd.SmArch.SM87])
@pytest.mark.parametrize("dtype", [fd.DType.FP8_E4M3, fd.DType.FP8_E5M2])
def test_fp8_before_sm89_refused(arch, dtype):
    with pytest.raises(fd.DispatchError, match="needs SM89 or newer"):
        key(arch=arch, dtype=dtype).validate_fwd()


@pytest.mark.parametrize("arch", [fd.SmArch.SM89, fd.SmArch.SM90, fd.SmArch.SM100])
def test_fp8_from_sm89_forward_ok(arch):
    if not library_buckets(fd.DType.FP8_E5M2):
        pytest.skip("this build has no fp8 cells")
    key(arch=arch, dtype=fd.DType.FP8_E5M2).validate_fwd()


@pytest.mark.parametrize("dtype", [fd.DType.F32, fd.DType.F64])
def test_wide_floats_have_no_kernel(dtype):
    with pytest.raises(fd.DispatchError, match="has no decode kernel"):
        key(dtype=dtype).validate_fwd()
    with pytest.raises(fd.DispatchError, match="has no decode kernel"):
        key(dtype=dtype).kernel_name()


def test_fp8_backward_refused():
    with pytest.raises(fd.DispatchError, match="no backward"):
        key(dtype=fd.DType.FP8_E4M3).validate_bwd()


def test_paged_backward_refused():
    with pytest.raises(fd.DispatchError, match="paged KV has no backward"):
        key(paged=True).validate_bwd()


def test_head_dim_256_backward_needs_big_shared_memory():
    key(head_dim=256, arch=fd.SmArch.SM80).validate_bwd()
    key(head_dim=256, arch=fd.SmArch.SM90).validate_bwd()
    with pytest.raises(fd.DispatchError, match="99 KB"):
        key(head_dim=256, arch=fd.SmArch.SM89).validate_bwd()


def test_backward_repeats_forward_rules():
    with pytest.raises(fd.DispatchError, match="kernel bucket"):
        key(head_dim=72).validate_bwd()
    key().validate_bwd()


def test_validate_paged():
    key(paged=True).validate_paged()
    key(paged=True, sliding_window=128, sink=4, varlen=True).validate_paged()
    with pytest.raises(fd.DispatchError, match="not paged"):
        key().validate_paged()
    with pytest.raises(fd.DispatchError, match="kernel bucket of bf16 paged cells"):
        key(paged=True, head_dim=48).validate_paged()


def test_sliding_window_is_an_optional_size():
    key(sliding_window=None).validate_fwd()
    key(sliding_window=1).validate_fwd()
    key(sliding_window=2 ** 31 - 1).validate_fwd()
    for bad in (0, -4, 2 ** 31):
        with pytest.raises(fd.DispatchError, match=f"sliding_window {bad} must be >= 1"):
            key(sliding_window=bad).validate_fwd()
    for wrong in (True, False, 4.0, "128"):
        with pytest.raises(fd.DispatchError, match="sliding_window must be None"):
            key(sliding_window=wrong).validate_fwd()


def test_sink_is_a_number_of_tokens():
    key(sink=0).validate_fwd()
    key(sink=4, sliding_window=1024).validate_fwd()
    key(sink=4).validate_fwd()  # without a window every key is attended: accepted, as in C
    with pytest.raises(fd.DispatchError, match="sink -1 must be >= 0"):
        key(sink=-1).validate_fwd()
    for wrong in (True, 4.0, None):
        with pytest.raises(fd.DispatchError, match="sink must be an int"):
            key(sink=wrong).validate_fwd()


@pytest.mark.parametrize("bad", [dict(gqa_ratio=0), dict(gqa_ratio=-2)])
def test_gqa_ratio_must_be_positive(bad):
    with pytest.raises(fd.DispatchError, match="gqa_ratio"):
        key(**bad).validate_fwd()


@pytest.mark.parametrize("bad", [dict(arch=90), dict(dtype="bf16"), dict(dtype=2), dict(causal=1),
                                 dict(paged=1), dict(head_dim=128.0), dict(gqa_ratio=True)])
def test_wrong_field_types_refused(bad):
    with pytest.raises(fd.DispatchError):
        key(**bad).validate_fwd()


def test_smarch_from_cc():
    assert fd.SmArch.from_cc(9, 0) is fd.SmArch.SM90
    assert fd.SmArch.from_cc(8, 6) is fd.SmArch.SM86
    assert fd.SmArch.SM89.cc == (8, 9)
    with pytest.raises(fd.DispatchError, match="sm_75"):
        fd.SmArch.from_cc(7, 5)


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("dtype, element", [
    (fd.DType.F16, "fd::Identity<__half>"), (fd.DType.BF16, "fd::Identity<__nv_bfloat16>"),
    (fd.DType.FP8_E4M3, "fd::Fp8<false>"), (fd.DType.FP8_E5M2, "fd::Fp8<true>")])
@pytest.mark.parametrize("paged, source", [(False, "fd::ContiguousKv"), (True, "fd::PagedKv")])
def test_kernel_name(dtype, element, paged, source):
    assert key(dtype=dtype, head_dim=96, paged=paged).kernel_name() == \
        f"fd::decode_kernel<{element}, 96, {source}>"


def test_kernel_names_match_every_cell_of_the_library():
    cells = fd.kernel_cells()
    assert len(cells) >= 28, "the library has too few kernel cells"
    for cell in cells:
        k = fd.DispatchKey(fd.SmArch.SM90, cell.kv_element, cell.head_dim, paged=cell.paged)
        assert k.kernel_name() == cell.name


def test_window_sink_and_features_do_not_change_the_kernel_name():
    base = key().kernel_name()
    for change in (dict(sliding_window=256), dict(sink=4), dict(alibi=True), dict(varlen=True),
                   dict(gqa_ratio=8), dict(causal=True), dict(arch=fd.SmArch.SM80)):
        assert key(**change).kernel_name() == base


# ---------------------------------------------------------------- architectures

def test_parse_architectures():
    assert parse_architectures("80,86,89,90a,ptx90") == [
        (80, "", False), (86, "", False), (89, "", False), (90, "a", False), (90, "", True)]
    assert parse_architectures("90a,ptx90a") == [(90, "a", False), (90, "a", True)]


def test_arch_runs():
    cubins = parse_architectures("80,90a")
    assert arch_runs(fd.SmArch.SM80, cubins)
    assert arch_runs(fd.SmArch.SM86, cubins)      # same major, newer minor
    assert not arch_runs(fd.SmArch.SM89, parse_architectures("90a"))
    assert arch_runs(fd.SmArch.SM90, cubins)
    assert not arch_runs(fd.SmArch.SM100, cubins)  # 'a' cubins are exact
    assert arch_runs(fd.SmArch.SM120, parse_architectures("80,ptx90"))  # PTX runs forward
    assert not arch_runs(fd.SmArch.SM100, parse_architectures("ptx90a"))


def test_arch_sku_runs_on():
    sku = fd.ArchSku(min_arch=fd.SmArch.SM89, compiled="80,89,90a")
    assert sku.runs_on(fd.SmArch.SM89) and sku.runs_on(fd.SmArch.SM90)
    assert not sku.runs_on(fd.SmArch.SM80)       # below the cell's minimum
    assert not sku.runs_on(fd.SmArch.SM100)      # no code for it


# ---------------------------------------------------------------- resolution

def _compiled_key(**change):
    arch = fd.dispatch_key.highest_compiled_arch()
    assert arch is not None
    base = dict(arch=arch, dtype=fd.DType.BF16, head_dim=128, gqa_ratio=4)
    base.update(change)
    return fd.DispatchKey(**base)


def test_resolve_to_a_compiled_cell_with_the_seed_fields():
    sku = _compiled_key().resolve()
    assert sku.name == "fd::decode_kernel<fd::Identity<__nv_bfloat16>, 128, fd::ContiguousKv>"
    assert sku.head_dim == 128 and sku.element is fd.ElementKind.BF16 and sku.aux_element is None
    assert sku.category is fd.OpCategory.ATTENTION and sku.op is fd.AttentionKind.DECODE
    assert sku.layout is fd.KvLayout.CONTIGUOUS and sku.epilogue is fd.Epilogue.NONE
    assert sku.backend is fd.BackendKind.BESPOKE
    assert sku.arch == fd.ArchSku(min_arch=fd.SmArch.SM80, compiled=fd.compiled_architectures())
    g = sku.precision_guarantee
    assert g.math_precision is fd.MathPrecision.F32 and g.accumulator is fd.ElementKind.F32
    assert g.bit_stable_on_same_hardware and g.deterministic


@pytest.mark.parametrize("d", [160, 192, 256])
def test_resolve_wide_head_dims_contiguous_and_paged(d):
    for paged in (False, True):
        sku = _compiled_key(head_dim=d, paged=paged).resolve()
        assert sku.head_dim == d and sku.paged is paged
        assert sku.name == _compiled_key(head_dim=d, paged=paged).kernel_name()


def test_resolve_refuses_a_head_dim_no_cell_has():
    with pytest.raises(fd.DispatchError, match="head_dim 512 is not a kernel bucket"):
        _compiled_key(head_dim=512).resolve()


@pytest.mark.parametrize("dtype", [fd.DType.FP8_E4M3, fd.DType.FP8_E5M2])
@pytest.mark.parametrize("paged", [False, True])
def test_resolve_fp8_to_its_cell(dtype, paged):
    arch = fd.dispatch_key.highest_compiled_arch()
    if arch < fd.SmArch.SM89 or not library_buckets(dtype, paged):
        pytest.skip("fp8 keys need SM89+ and fp8 cells")
    sku = _compiled_key(dtype=dtype, paged=paged).resolve()
    assert sku.aux_element is dtype and sku.element is None  # either query type
    assert sku.kv_element is dtype and sku.min_compute_capability == 89
    assert sku.name == f"fd::decode_kernel<fd::Fp8<{'true' if dtype is fd.DType.FP8_E5M2 else 'false'}>, " \
                       f"128, fd::{'PagedKv' if paged else 'ContiguousKv'}>"


def test_resolve_with_every_feature_asks_the_library():
    sku = _compiled_key(varlen=True, sliding_window=512, sink=4, alibi=True, paged=True).resolve()
    assert sku.paged


def test_resolve_asks_the_library_about_features():
    # 2^21 query heads per KV head: valid for the key's rules, refused by the library
    with pytest.raises(fd.DispatchError, match="the library refuses") as info:
        _compiled_key(gqa_ratio=2 ** 21).resolve()
    assert "query heads per KV head" in str(info.value)
    assert info.value.status == fd.Unsupported.status


def _pretend_compiled(monkeypatch, text):
    """resolve() sees ``text`` as the library's list of compiled architectures."""
    monkeypatch.setattr(fd.dispatch_key, "compiled_architectures_text", lambda: text)
    monkeypatch.setattr(fd.dispatch_key, "compiled_architectures",
                        lambda: parse_architectures(text))


@pytest.mark.parametrize("compiled, arch", [
    ("80,86", fd.SmArch.SM90),        # cubins of an older major only
    ("90a", fd.SmArch.SM100),         # an arch-specific cubin runs on that arch alone
    ("ptx90a", fd.SmArch.SM100),      # and so does its PTX
    ("89", fd.SmArch.SM86),           # a cubin never runs on a lower minor
    ("100,ptx100", fd.SmArch.SM90),   # nor does newer PTX
])
def test_resolve_refuses_an_architecture_not_compiled(monkeypatch, compiled, arch):
    _pretend_compiled(monkeypatch, compiled)
    with pytest.raises(fd.DispatchError) as info:
        fd.DispatchKey(arch=arch, dtype=fd.DType.BF16, head_dim=128, gqa_ratio=4).resolve()
    assert str(info.value) == (f"this library carries no code that runs on {arch.name} "
                               f"(compiled: {compiled})")


@pytest.mark.parametrize("compiled, arch", [
    ("80", fd.SmArch.SM86),           # same major, higher minor
    ("ptx80", fd.SmArch.SM120),       # PTX runs on anything newer
    ("80,90a", fd.SmArch.SM90),
])
def test_resolve_passes_the_architecture_check_where_the_code_runs(monkeypatch, compiled, arch):
    _pretend_compiled(monkeypatch, compiled)
    try:
        fd.DispatchKey(arch=arch, dtype=fd.DType.BF16, head_dim=128, gqa_ratio=4).resolve()
    except fd.DispatchError as e:  # a later step (the loaded library) may refuse; not this one
        assert "carries no code" not in str(e)


def test_plan_dispatch_key_names_the_bucket_and_resolves_to_its_sku():
    desc = fd.FlashDecodingDescriptor.new_gqa(3, 12, 3, 77, 72, fd.ElementKind.F16)
    plan = fd.FlashDecodingPlan.select(None, desc)
    k = plan.dispatch_key()
    assert k.head_dim == 80  # D = 72 runs the 80 cell with the tail masked
    assert k.gqa_ratio == 4 and k.dtype is fd.DType.F16
    assert k.sliding_window is None and k.sink == 0 and not k.paged
    assert k.kernel_name() == plan.sku().name
    if HAS_GPU:
        major, minor = fd.cuda.compute_capability()
        assert int(k.arch) == major * 10 + minor
    else:
        assert k.arch is fd.dispatch_key.highest_compiled_arch()
    assert k.resolve() == plan.sku()


def test_plan_dispatch_key_carries_window_sink_paged_and_fp8():
    desc = fd.FlashDecodingDescriptor.new_paged(2, 16, 8, 200, 16, 8, 20, fd.ElementKind.BF16)
    desc = desc.with_window(64, sink_tokens=4)
    plan = fd.FlashDecodingPlan.select(None, desc)
    k = plan.dispatch_key()
    assert (k.sliding_window, k.sink, k.paged, k.head_dim, k.gqa_ratio) == (64, 4, True, 256, 2)
    assert k.kernel_name() == plan.sku().name
    assert "sliding_window=64;alibi=0;sink=4;paged=1" in k.canonical()
    if library_buckets(fd.DType.FP8_E4M3, True) and k.arch >= fd.SmArch.SM89:
        plan8 = fd.FlashDecodingPlan.select(None, desc.with_kv(fd.ElementKind.FP8_E4M3))
        k8 = plan8.dispatch_key()
        assert k8.dtype is fd.DType.FP8_E4M3 and k8.kernel_name() == plan8.sku().name
        assert k8.resolve().index == plan8.sku().index
