#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz/fuzz_host.cpp into tests/fuzz/corpus/.

The layout mirrors decode() in fuzz_host.cpp (little-endian; a short input reads
zeros for what is missing). Run it after changing that layout:
    python3 tests/fuzz/make_corpus.py
"""
import os
import struct

ENTRY = dict(check_problem=0, check=1, workspace_size=2, run_f16=3, run_bf16=4, decode_check=5,
             decode=6, decode_workspace_size=7, decode_plan=8, cells=9, misc=10, merge=11)
F16, BF16, F32, E4M3, E5M2 = 1, 2, 3, 5, 6
REL, EXACT, NULL_OUT, EXT_ZERO, ELEM_KERNEL = 1, 2, 4, 8, 16
SIZEOF_PARAMS = 312  # sizeof(fd_decode_params) on LP64; checked by the fuzzer's seeds only
SIZEOF_PARAMS_0_1 = 264  # the struct as 0.1 callers compiled it (ends with v_scale)
BASE, REGION = 1 << 40, 1 << 34


# The field types decode() reads, in order (struct codes, little-endian). The
# CPU test tests/python/test_fuzz_corpus.py checks this against fuzz_host.cpp.
FORMAT = ("<" + "BBHBBBBB"  # entry, pointer mode, SMs, cc, CTAs/SM, wide CTAs/SM, element-kernel CTAs/SM, unused
          + "iI"  # dtype, flags
          + "5QQ"  # q, k, v, y, workspace; workspace bytes
          + "5if"  # B, Hq, Hkv, K, D; scale
          + "10q"  # strides q b/h, k b/h/k, v b/h/k, y b/h
          + "QQi"  # stream, struct_size, cell index
          + "Qqq"  # lse, its strides
          + "QQqii"  # seq_lens, block_table, its stride, page_size, window
          + "QQfiff"  # sinks, alibi, soft cap, kv dtype, k scale, v scale
          + "qqiiQQi")  # page strides k/v, max pages, pool pages, k/v per-head scales, sink tokens


def seed(entry, *, mode=EXACT | EXT_ZERO, sms=132, cc=90, ctas=1, wide=1, elem=4, unused=0, dtype=F16,
         flags=0, ptrs=None, ws_bytes=1 << 30, b=1, hq=8, hkv=8, k=128, d=128, scale=0.125, strides=None,
         stream=0, struct_size=SIZEOF_PARAMS, index=0, ext=None, tail=b""):
    if ptrs is None:
        ptrs = [BASE + i * REGION for i in range(5)]
    if strides is None:
        strides = [hq * d, d, hkv * k * d, k * d, d, hkv * k * d, k * d, d, hq * d, d]
    e = dict(lse=0, lse_b=0, lse_h=0, seq=0, bt=0, bts=0, page=0, window=0, sinks=0, alibi=0,
             cap=0.0, kvd=0, ks=0.0, vs=0.0, ksp=0, vsp=0, maxp=0, nump=0, kss=0, vss=0, sinkt=0)
    e.update(ext or {})
    values = [ENTRY[entry], mode, sms - 1, cc - 50, ctas - 1, wide, elem - 1, unused, dtype, flags,
              *ptrs, ws_bytes, b, hq, hkv, k, d, scale, *strides, stream, struct_size, index,
              e["lse"], e["lse_b"], e["lse_h"], e["seq"], e["bt"], e["bts"], e["page"], e["window"],
              e["sinks"], e["alibi"], e["cap"], e["kvd"], e["ks"], e["vs"], e["ksp"], e["vsp"],
              e["maxp"], e["nump"], e["kss"], e["vss"], e["sinkt"]]
    return struct.pack(FORMAT, *values) + tail


SEEDS = {
    "mha_f16_check": seed("check", b=2, hq=8, hkv=8, k=1000, d=128),
    "gqa_bf16_run": seed("run_bf16", dtype=BF16, b=1, hq=32, hkv=8, k=4096, d=128),
    "gqa_f16_run_elem_kernel": seed("run_f16", mode=EXACT | EXT_ZERO | ELEM_KERNEL, b=1, hq=32,
                                    hkv=8, k=4096, d=256),
    "gqa_f16_run_d72": seed("run_f16", b=7, hq=4, hkv=4, k=257, d=72),
    "k_len0_decode": seed("decode", b=1, hq=8, hkv=8, k=0, d=128),
    "batch_invariant_decode": seed("decode", dtype=BF16, flags=1, b=5, hq=32, hkv=8, k=9000),
    "batch_invariant_k0": seed("decode_check", flags=1, b=2, hq=4, hkv=2, k=0, d=64),
    "huge_strides": seed("check", b=2, hq=8, hkv=2, k=64, d=64,
                         strides=[1 << 62, 64, 1 << 61, 1 << 40, 64, 0, 0, 64, 8 * 64, 64]),
    "stride_overflow": seed("run_f16", b=3, hq=2, hkv=1, k=2,
                            strides=[2 ** 62, 128, 2 ** 62, 2 ** 62, 2 ** 62, 0, 0, 128, 256, 128]),
    "overlap_relative": seed("check", mode=REL | EXACT | EXT_ZERO, ptrs=[0x10, 0x100000, 0x200000,
                                                                         0x40, 0x300000]),
    "workspace_near_top": seed("run_f16", b=1, hq=32, hkv=8, k=8192,
                               ptrs=[BASE, BASE + REGION, BASE + 2 * REGION, BASE + 3 * REGION,
                                     2 ** 64 - 4096]),
    "struct_size_small": seed("decode_check", mode=EXT_ZERO, struct_size=7),
    "struct_size_bigger_tail": seed("decode", struct_size=SIZEOF_PARAMS + 16, mode=EXT_ZERO,
                                    tail=b"\0" * 8 + b"\1"),
    "struct_size_0_1_caller": seed("decode", struct_size=SIZEOF_PARAMS_0_1, mode=0),
    "extensions_garbage": seed("decode_check", mode=EXACT,
                               ext=dict(lse=BASE + 6 * REGION, lse_b=8, lse_h=1, window=-3,
                                        cap=float("nan"), kvd=5, ks=1.0)),
    "workspace_size_extremes": seed("workspace_size", b=2 ** 31 - 1, hq=2 ** 31 - 1, hkv=1,
                                    k=2 ** 31 - 1, d=128),
    "group_huge": seed("check_problem", b=1, hq=2 ** 31 - 1, hkv=1, k=1, d=64),
    "decode_plan": seed("decode_plan", b=1, hq=32, hkv=8, k=4096),
    "decode_d256_split": seed("decode", b=2, hq=16, hkv=8, k=3000, d=256),
    "cells": seed("cells", dtype=BF16, d=72, index=3),
    "misc": seed("misc", index=-5, b=3, hq=6, hkv=3, k=129, d=40),
    # A broadcast cache (K/V strides 0) of k_len = INT32_MAX: one split per unit
    # (4096 units), whose 64-key-rounded chunk once wrapped to INT32_MIN; and 16
    # splits, whose last chunk end passes INT32_MAX.
    "k_len_int32_max_one_split": seed("run_f16", b=512, hq=8, hkv=8, k=2 ** 31 - 1, d=8,
                                      strides=[64, 8, 0, 0, 0, 0, 0, 0, 64, 8]),
    "k_len_int32_max_splits": seed("run_f16", b=1, hq=8, hkv=1, k=2 ** 31 - 1, d=8,
                                   strides=[64, 8, 0, 0, 0, 0, 0, 0, 64, 8]),
    # A broadcast cache describing more K/V bytes than an int64 holds: the
    # launch rules' byte count (kv_bytes) once overflowed on it.
    "kv_bytes_past_int64": seed("run_f16", b=65536, hq=1024, hkv=1024, k=2 ** 31 - 1, d=128,
                                strides=[131072, 128, 0, 0, 0, 0, 0, 0, 131072, 128]),
    # Paged KV: an NHD pool of 64 pages of 16 keys (8 KV heads, D = 128), a
    # 32-entry table per sequence; and the same with page size 1 and fp8.
    "paged_nhd_decode": seed("decode", mode=EXACT, b=4, hq=32, hkv=8, k=512, d=128,
                             strides=[32 * 128, 128, 0, 128, 8 * 128, 0, 128, 8 * 128, 32 * 128, 128],
                             ext=dict(seq=BASE + 5 * REGION, bt=BASE + 6 * REGION, bts=32, page=16,
                                      ksp=16 * 8 * 128, vsp=16 * 8 * 128, maxp=32, nump=64)),
    "paged_page1_fp8": seed("decode", mode=EXACT, b=2, hq=8, hkv=2, k=300, d=64,
                            strides=[8 * 64, 64, 0, 64, 2 * 64, 0, 64, 2 * 64, 8 * 64, 64],
                            ext=dict(bt=BASE + 6 * REGION, bts=300, page=1, ksp=2 * 64, vsp=2 * 64,
                                     maxp=300, nump=1000, kvd=E4M3, ks=0.5)),
    "paged_bad_fields": seed("decode_check", mode=EXACT, b=2, hq=8, hkv=2, k=300, d=64,
                             ext=dict(bt=BASE + 6 * REGION, bts=-1, page=257, maxp=0, nump=-4)),
    "fp8_per_head_scales": seed("decode", mode=EXACT, dtype=BF16, b=3, hq=16, hkv=4, k=2000, d=128,
                                ext=dict(kvd=E5M2, kss=BASE + 7 * REGION, vss=BASE + 8 * REGION)),
    "sink_tokens_window": seed("decode", mode=EXACT, b=2, hq=8, hkv=2, k=5000, d=128,
                               ext=dict(window=1024, sinkt=4, seq=BASE + 5 * REGION)),
    "merge_states": seed("merge", dtype=F32, index=3, b=2, hq=8, hkv=8, k=1, d=128,
                         strides=[8 * 128, 128, 2 * 8 * 128, 0, 0, 2 * 8, 8, 1, 8 * 128, 128]),
}


def main():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(here, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(here, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {here}")


if __name__ == "__main__":
    main()
