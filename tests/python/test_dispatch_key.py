"""DispatchKey: rules, stable hash (test vectors), names, and resolution against
the loaded library's kernel table."""
from __future__ import annotations

import dataclasses

import pytest

import flashdecoding as fd
from flashdecoding.dispatch_key import (HEAD_DIM_BUCKETS, arch_runs, fnv1a_64,
                                        parse_architectures)
from conftest import HAS_GPU, run_python

K = fd.DispatchKey(fd.SmArch.SM90, fd.DType.BF16, 128, gqa_ratio=4)


def key(**change):
    return dataclasses.replace(K, **change)


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
     "fdkey/v1;arch=sm90;dtype=bf16;head_dim=128;causal=0;varlen=0;sliding_window=0;alibi=0;"
     "sink=0;paged=0;gqa_ratio=4", 0xE07F7BC9153689BC),
    (fd.DispatchKey(fd.SmArch.SM80, fd.DType.F16, 64),
     "fdkey/v1;arch=sm80;dtype=f16;head_dim=64;causal=0;varlen=0;sliding_window=0;alibi=0;"
     "sink=0;paged=0;gqa_ratio=1", 0x1B33B1C44A171D87),
    (fd.DispatchKey(fd.SmArch.SM89, fd.DType.FP8_E4M3, 256, causal=True, varlen=True,
                    sliding_window=True, alibi=True, sink=True, paged=True, gqa_ratio=8),
     "fdkey/v1;arch=sm89;dtype=fp8_e4m3;head_dim=256;causal=1;varlen=1;sliding_window=1;"
     "alibi=1;sink=1;paged=1;gqa_ratio=8", 0xB5A295ACE0EEF3BB),
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
        assert int(r.stdout) == 0xE07F7BC9153689BC


def test_every_field_changes_the_hash():
    changes = [dict(arch=fd.SmArch.SM80), dict(dtype=fd.DType.F16), dict(head_dim=64),
               dict(causal=True), dict(varlen=True), dict(sliding_window=True),
               dict(alibi=True), dict(sink=True), dict(paged=True), dict(gqa_ratio=8)]
    hashes = {key(**c).stable_hash() for c in changes} | {K.stable_hash()}
    assert len(hashes) == len(changes) + 1


# ---------------------------------------------------------------- rules

@pytest.mark.parametrize("d", HEAD_DIM_BUCKETS)
def test_buckets_validate(d):
    key(head_dim=d).validate_fwd()


@pytest.mark.parametrize("d", [0, 1, 32, 72, 100, 127, 129, 160, 512])
def test_head_dim_outside_buckets_refused(d):
    with pytest.raises(fd.DispatchError, match=f"head_dim {d} is not a kernel bucket"):
        key(head_dim=d).validate_fwd()


@pytest.mark.parametrize("arch", [fd.SmArch.SM80, fd.SmArch.SM86, fd.SmArch.SM87])
@pytest.mark.parametrize("dtype", [fd.DType.FP8_E4M3, fd.DType.FP8_E5M2])
def test_fp8_before_sm89_refused(arch, dtype):
    with pytest.raises(fd.DispatchError, match="needs SM89"):
        key(arch=arch, dtype=dtype).validate_fwd()


@pytest.mark.parametrize("arch", [fd.SmArch.SM89, fd.SmArch.SM90, fd.SmArch.SM100])
def test_fp8_from_sm89_forward_ok(arch):
    key(arch=arch, dtype=fd.DType.FP8_E5M2).validate_fwd()


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
    with pytest.raises(fd.DispatchError, match="not paged"):
        key().validate_paged()
    with pytest.raises(fd.DispatchError, match="kernel bucket"):
        key(paged=True, head_dim=48).validate_paged()


@pytest.mark.parametrize("bad", [dict(gqa_ratio=0), dict(gqa_ratio=-2)])
def test_gqa_ratio_must_be_positive(bad):
    with pytest.raises(fd.DispatchError, match="gqa_ratio"):
        key(**bad).validate_fwd()


@pytest.mark.parametrize("bad", [dict(arch=90), dict(dtype="bf16"), dict(causal=1),
                                 dict(head_dim=128.0), dict(gqa_ratio=True)])
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

@pytest.mark.parametrize("dtype, ctype", [(fd.DType.F16, "__half"), (fd.DType.BF16, "__nv_bfloat16"),
                                          (fd.DType.FP8_E4M3, "__nv_fp8_e4m3"),
                                          (fd.DType.FP8_E5M2, "__nv_fp8_e5m2")])
def test_kernel_name(dtype, ctype):
    assert key(dtype=dtype, head_dim=96).kernel_name() == f"fd::decode_split_kernel<{ctype}, 96>"


def test_kernel_names_match_every_cell_of_the_library():
    cells = fd.kernel_cells()
    assert cells, "the library has no kernel cells"
    for cell in cells:
        k = fd.DispatchKey(fd.SmArch.SM90, fd.DType(int(cell.element)), cell.head_dim)
        assert k.kernel_name() == cell.name


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


# ---------------------------------------------------------------- resolution

def _compiled_key(**change):
    arch = fd.dispatch_key.highest_compiled_arch()
    assert arch is not None
    base = dict(arch=arch, dtype=fd.DType.BF16, head_dim=128, gqa_ratio=4)
    base.update(change)
    return fd.DispatchKey(**base)


def test_resolve_to_a_compiled_cell():
    sku = _compiled_key().resolve()
    assert sku.name == "fd::decode_split_kernel<__nv_bfloat16, 128>"
    assert sku.head_dim == 128 and sku.element is fd.ElementKind.BF16


def test_resolve_refuses_uncompiled_head_dim_with_library_reason():
    with pytest.raises(fd.DispatchError, match="no kernel cell") as info:
        _compiled_key(head_dim=256).resolve()
    assert info.value.status == 2


def test_resolve_refuses_fp8_with_library_reason():
    arch = fd.dispatch_key.highest_compiled_arch()
    if arch < fd.SmArch.SM89:
        pytest.skip("fp8 keys need SM89+")
    with pytest.raises(fd.DispatchError, match="no kernel cell"):
        _compiled_key(dtype=fd.DType.FP8_E4M3).resolve()


def test_resolve_asks_the_library_about_features():
    with pytest.raises(fd.DispatchError, match="paged KV is not supported"):
        _compiled_key(paged=True).resolve()


def test_resolve_refuses_an_architecture_not_compiled():
    compiled = fd.dispatch_key.compiled_architectures()
    missing = [a for a in fd.SmArch if not arch_runs(a, compiled)]
    if not missing:
        pytest.skip("the library runs on every known architecture")
    with pytest.raises(fd.DispatchError, match="carries no code"):
        _compiled_key(arch=missing[0]).resolve()


def test_plan_dispatch_key_names_the_bucket_and_resolves_to_its_sku():
    desc = fd.FlashDecodingDescriptor.new_gqa(3, 12, 3, 77, 72, fd.ElementKind.F16)
    plan = fd.FlashDecodingPlan.select(None, desc)
    k = plan.dispatch_key()
    assert k.head_dim == 80  # D = 72 runs the 80 cell with the tail masked
    assert k.gqa_ratio == 4 and k.dtype is fd.DType.F16
    assert k.kernel_name() == plan.sku().name
    if HAS_GPU:
        major, minor = fd.cuda.compute_capability()
        assert int(k.arch) == major * 10 + minor
    else:
        assert k.arch is fd.dispatch_key.highest_compiled_arch()
    assert k.resolve() == plan.sku()
