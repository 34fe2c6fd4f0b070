"""Device correctness grid of issue 2: every (B, heads, K_len, D, dtype, layout)
against a float64 reference, outputs poisoned with NaN, repeats bit-identical.

usage: python tests/gpu/grid_check.py [--quick] [--json PATH]"""
import argparse
import itertools
import json
import math
import sys
import time

import torch

import fdc

TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def make_inputs(B, Hq, Hkv, K, D, dtype, strided, gen):
    dev = "cuda"
    def rnd(*shape):
        return torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32).to(dtype)
    if not strided:
        q, k, v = rnd(B, Hq, D), rnd(B, Hkv, K, D), rnd(B, Hkv, K, D)
        y = torch.empty(B, Hq, D, device=dev, dtype=dtype)
    else:
        q = rnd(B, Hq, D + 3)[:, :, :D]                       # padded rows
        k = rnd(B, K, Hkv, D).permute(0, 2, 1, 3)             # NHD cache
        v = rnd(B, Hkv, K + 5, D + 8)[:, :, 2:K + 2, :D]      # slice of a bigger cache
        y = torch.empty(B, Hq + 2, D + 1, device=dev, dtype=dtype)[:, 1:Hq + 1, :D]
        assert k.stride() != torch.empty(B, Hkv, K, D).stride() or K <= 1 or Hkv == 1
    return q, k, v, y


def reference(q, k, v, scale):
    B, Hq, D = q.shape
    Hkv, K = k.shape[1], k.shape[2]
    if K == 0:
        return torch.zeros(B, Hq, D, dtype=torch.float64, device=q.device)
    g = Hq // Hkv
    qd = q.double().reshape(B, Hkv, g, D)
    s = torch.einsum("bhgd,bhkd->bhgk", qd, k.double()) * scale
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhgk,bhkd->bhgd", p, v.double()).reshape(B, Hq, D)


def one_case(B, Hq, Hkv, K, D, dtype, strided, gen, ws):
    q, k, v, y = make_inputs(B, Hq, Hkv, K, D, dtype, strided, gen)
    scale = 1.0 / math.sqrt(D)
    need = fdc.workspace_size(B, Hq, Hkv, K, D)
    assert need <= ws.numel(), (need, ws.numel())
    outs = []
    for _ in range(2):
        y.fill_(float("nan"))
        st, msg = fdc.run(q, k, v, y, ws.data_ptr(), ws.numel(), scale)
        if st != 0:
            return {"ok": False, "why": f"status {st}: {msg}"}
        torch.cuda.synchronize()
        outs.append(y.clone())
    if not torch.isfinite(outs[0]).all():
        return {"ok": False, "why": "non-finite output (unwritten or NaN)"}
    if not torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16)):
        return {"ok": False, "why": "repeat not bit-identical"}
    ref = reference(q, k, v, scale)
    if K == 0:
        ok = bool((outs[0] == 0).all())
        return {"ok": ok, "err": 0.0, "why": "" if ok else "K=0 output not zero"}
    err = ((outs[0].double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()
    ok = err <= TOL[dtype]
    return {"ok": ok, "err": err, "why": "" if ok else f"rel err {err:.3e} > {TOL[dtype]}"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    Bs = [1, 3, 8]
    heads = [(1, 1), (8, 8), (32, 8), (28, 4), (8, 1)]
    Ks = [0, 1, 7, 255, 256, 257, 1000, 4096, 33000]
    Ds = [1, 7, 64, 72, 80, 96, 128]
    if a.quick:
        Bs, Ks, Ds = [1, 3], [0, 1, 257, 4096], [7, 72, 128]
    gen = torch.Generator(device="cuda").manual_seed(1234)
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    results, fails = [], 0
    t0 = time.time()
    for B, (Hq, Hkv), K, D, dtype, strided in itertools.product(
            Bs, heads, Ks, Ds, [torch.float16, torch.bfloat16], [False, True]):
        if B * Hkv * K * D > 8 * 8 * 33000 * 128:
            continue
        r = one_case(B, Hq, Hkv, K, D, dtype, strided, gen, ws)
        r.update(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, dtype=str(dtype).split(".")[-1], strided=strided)
        results.append(r)
        if not r["ok"]:
            fails += 1
            if fails <= 30:
                print("FAIL", r, flush=True)
    worst = {}
    for r in results:
        key = r["dtype"]
        worst[key] = max(worst.get(key, 0.0), r.get("err", 0.0))
    print(f"grid: {len(results)} cases, {fails} failed, worst rel err {worst}, "
          f"{time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f)
    print(f"{len(results) - fails} passed, {fails} failed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
