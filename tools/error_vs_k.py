"""Error of y and the LSE against the number of keys, from 2^20 keys up to
k_len = INT32_MAX (a measurement tool, not part of the product).

Two caches, both f16, B = 1, 8 query heads on 1 KV head, head_dim 8:

- broadcast: one K row and one V row for every key (strides 0). All scores
  are equal, so y is exactly the V row and lse is score + ln(k_len): what is
  left is the rounding of the running sums.
- random: q, k ~ N(0, 1) and v ~ N(1, 1) (a mean away from 0, so y is of
  order 1 and the error is not hidden by cancellation), one real cache of
  INT32_MAX keys (2 x 32 GiB); each smaller k_len reads its prefix. The
  reference is float64, computed on the GPU chunk by chunk and folded by
  log-sum-exp.

The error of y is max |y - ref| / max |ref| over the heads; of the LSE,
max |lse - ref|. Prints one line per (cache, k_len); --json writes them.

    FLASHDECODING_LIBRARY=build/libflashdecoding.so python3 tools/error_vs_k.py
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "gpu"))

HQ, D = 8, 8
INT32_MAX = 2 ** 31 - 1
REF_CHUNK = 1 << 24  # keys per float64 reference step


def lengths(lo_exp: int):
    ks = [2 ** e for e in range(lo_exp, 31)]
    return ks + [INT32_MAX]


def decode(F, torch, q, k, v, k_len, stride_k):
    y = torch.full((1, HQ, D), float("nan"), device="cuda", dtype=torch.float16)
    lse = torch.full((1, HQ), float("nan"), device="cuda", dtype=torch.float32)
    p = F.new_params(dtype=F.F16, q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), y=y.data_ptr(),
                     batch_size=1, num_heads=HQ, num_kv_heads=1, k_len=k_len, head_dim=D,
                     scale=D ** -0.5, q_stride_b=HQ * D, q_stride_h=D, y_stride_b=HQ * D,
                     y_stride_h=D, lse=lse.data_ptr(), lse_stride_b=HQ, lse_stride_h=1)
    p.k_stride_k = p.v_stride_k = stride_k
    st, need = F.workspace_size(p)
    if st != 0:
        raise RuntimeError(F.last_error())
    ws = torch.empty(max(need, 1), dtype=torch.uint8, device="cuda")
    p.workspace, p.workspace_bytes = ws.data_ptr(), need
    _, plan = F.plan(p)
    st, msg = F.decode(p)
    if st != 0:
        raise RuntimeError(msg)
    torch.cuda.synchronize()
    return y.double()[0], lse.double()[0], plan.num_splits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lo", type=int, default=20, help="smallest k_len is 2^LO")
    ap.add_argument("--caches", default="broadcast,random")
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch
    import fdparams as F

    g = torch.Generator(device="cuda").manual_seed(11)
    q = torch.randn(1, HQ, D, generator=g, device="cuda").half()
    scale = D ** -0.5
    rows = []
    ks = lengths(a.lo)
    if "broadcast" in a.caches:
        k1 = torch.randn(D, generator=g, device="cuda").half()
        v1 = torch.randn(D, generator=g, device="cuda").half()
        score = (q[0].double() @ k1.double()) * scale
        for k_len in ks:
            y, lse, splits = decode(F, torch, q, k1, v1, k_len, 0)
            ey = ((y - v1.double()).abs().max() / v1.double().abs().max()).item()
            el = (lse - (score + math.log(k_len))).abs().max().item()
            rows.append(dict(cache="broadcast", k_len=k_len, splits=splits, y_err=ey, lse_err=el))
            print(f"broadcast k_len={k_len:>10d} splits={splits:>5d}  y err {ey:.3e}  lse err {el:.3e}",
                  flush=True)
    if "random" in a.caches:
        n = ks[-1]
        k = torch.empty(n, D, device="cuda", dtype=torch.float16)
        v = torch.empty(n, D, device="cuda", dtype=torch.float16)
        step = 1 << 26
        for s in range(0, n, step):
            e = min(n, s + step)
            k[s:e] = torch.randn(e - s, D, generator=g, device="cuda").half()
            v[s:e] = (1.0 + torch.randn(e - s, D, generator=g, device="cuda")).half()
        qd = q[0].double()
        # Running float64 state over prefixes, recorded at each k_len.
        m = torch.full((HQ,), -math.inf, device="cuda", dtype=torch.float64)
        l = torch.zeros(HQ, device="cuda", dtype=torch.float64)
        o = torch.zeros(HQ, D, device="cuda", dtype=torch.float64)
        refs, done = {}, 0
        for k_len in ks:
            while done < k_len:
                e = min(k_len, done + REF_CHUNK)
                s = (k[done:e].double() @ qd.T) * scale  # [keys, HQ]
                mc = s.max(0).values
                mn = torch.maximum(m, mc)
                w = torch.exp(s - mn)
                alpha = torch.exp(m - mn)
                l = l * alpha + w.sum(0)
                o = o * alpha[:, None] + w.T @ v[done:e].double()
                m = mn
                done = e
            refs[k_len] = (o / l[:, None], m + torch.log(l))
        for k_len in ks:
            y, lse, splits = decode(F, torch, q, k, v, k_len, D)
            ry, rl = refs[k_len]
            ey = ((y - ry).abs().max() / ry.abs().max()).item()
            el = (lse - rl).abs().max().item()
            rows.append(dict(cache="random", k_len=k_len, splits=splits, y_err=ey, lse_err=el))
            print(f"random    k_len={k_len:>10d} splits={splits:>5d}  y err {ey:.3e}  lse err {el:.3e}",
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
