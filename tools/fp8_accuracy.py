"""What an fp8 KV cache costs in accuracy (a measurement tool, not part of the
product). For Llama-3-8B's attention (32/8 heads, head_dim 128, B = 1) at
several cache lengths, a bf16 cache is quantised to e4m3 and e5m2 with one
scale per tensor (amax / the format's largest finite value) and decoded with
bf16 q. Two errors per row, both as ||y - ref|| / ||ref|| over every head
(relative L2) and max |y - ref| / max |ref|:

- format: against the float64 result of the original bf16 cache (what a user
  loses by storing the cache in fp8);
- kernel: against the float64 result of the dequantised fp8 cache (what the
  kernel adds; the bf16 row of the table is the same measure for the bf16
  cache).

Data: "random" q, k, v ~ N(0, 1); "needle" the same plus one key per KV head,
at 37% of the cache, aligned with the group's first query head so that it
takes about half of that head's softmax weight, with a V row of 3 x N(0, 1).

    FLASHDECODING_LIBRARY=build/libflashdecoding.so PYTHONPATH=python \\
        python3 tools/fp8_accuracy.py [--lens 1024,32768,131072] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys

HQ, HKV, D = 32, 8, 128
FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}


def reference(torch, q, k, v, scale):
    """float64 softmax(scale q k^T) v for q [B, Hq, D], k/v [B, Hkv, K, D]."""
    b, hq, d = q.shape
    hkv = k.shape[1]
    qd = q.double().reshape(b, hkv, hq // hkv, d)
    s = torch.einsum("bhgd,bhkd->bhgk", qd, k.double()) * scale
    w = torch.softmax(s, dim=-1)
    return torch.einsum("bhgk,bhkd->bhgd", w, v.double()).reshape(b, hq, d)


def errors(y, ref):
    y, ref = y.double(), ref.double()
    l2 = ((y - ref).norm() / ref.norm()).item()
    mx = ((y - ref).abs().max() / ref.abs().max()).item()
    return l2, mx


def make_cache(torch, g, k_len, data):
    q = torch.randn(1, HQ, D, generator=g, device="cuda")
    k = torch.randn(1, HKV, k_len, D, generator=g, device="cuda")
    v = torch.randn(1, HKV, k_len, D, generator=g, device="cuda")
    if data == "needle":
        pos = int(k_len * 0.37)
        group = HQ // HKV
        for h in range(HKV):
            qh = q[0, h * group]
            # score of the needle = ln(k_len) + 0.5: about the log-sum-exp of
            # the other keys' N(0, 1) scores, so it takes about half the weight.
            target = math.log(k_len) + 0.5
            k[0, h, pos] = qh * (target * math.sqrt(D) / qh.dot(qh).item())
            v[0, h, pos] = 3.0 * torch.randn(D, generator=g, device="cuda")
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lens", default="1024,32768,131072")
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch
    import flashdecoding as fd

    g = torch.Generator(device="cuda").manual_seed(3)
    scale = D ** -0.5
    rows = []
    print(f"{'data':7s} {'k_len':>7s} {'cache':5s} | {'format L2':>10s} {'format max':>10s} | "
          f"{'kernel L2':>10s} {'kernel max':>10s}")
    for data in ("random", "needle"):
        for k_len in (int(x) for x in a.lens.split(",")):
            q, k, v = make_cache(torch, g, k_len, data)
            ref = reference(torch, q, k, v, scale)
            y16 = fd.flash_decode(q, k, v, scale=scale)
            l2, mx = errors(y16, ref)
            rows.append(dict(data=data, k_len=k_len, cache="bf16", format_l2=0.0, format_max=0.0,
                             kernel_l2=l2, kernel_max=mx))
            print(f"{data:7s} {k_len:7d} {'bf16':5s} | {'-':>10s} {'-':>10s} | {l2:10.2e} {mx:10.2e}",
                  flush=True)
            for fmt, tdt in (("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)):
                ks = k.float().abs().max().item() / FP8_MAX[fmt]
                vs = v.float().abs().max().item() / FP8_MAX[fmt]
                k8 = (k.float() / ks).to(tdt)
                v8 = (v.float() / vs).to(tdt)
                y8 = fd.flash_decode(q, k8, v8, scale=scale, k_scale=ks, v_scale=vs)
                fl2, fmx = errors(y8, ref)
                deq = reference(torch, q, k8.double() * ks, v8.double() * vs, scale)
                kl2, kmx = errors(y8, deq)
                rows.append(dict(data=data, k_len=k_len, cache=fmt, format_l2=fl2, format_max=fmx,
                                 kernel_l2=kl2, kernel_max=kmx))
                print(f"{data:7s} {k_len:7d} {fmt:5s} | {fl2:10.2e} {fmx:10.2e} | {kl2:10.2e} "
                      f"{kmx:10.2e}", flush=True)
            del q, k, v
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
