"""Times builds of the library against each other, in one run (a measurement
tool, not part of the product): each library in its own process, the same
shapes, the method of the benchmark (CUDA-graph replays over rotated KV
replicas touching >= 1 GiB, CUDA events, median of repeats), every call
checked against a float32 reference first.

    python3 tools/ab_time.py --lib old=OLD.so --lib new=NEW.so \
        --shape 1,32,8,8192,128 --shape 16,32,8,4096,128:paged16 --shape 16,32,8,4096,128:e4m3

A shape is B,Hq,Hkv,K,D with optional suffixes joined by ':': pagedN (a page
pool of page size N, NHD, pages shuffled), e4m3 / e5m2 (fp8 KV, bf16 q),
ragged (per-sequence lengths spread from K/32 to K), lens (per-sequence lengths,
all K: equal lengths passed as device data, as an engine passes them), f16 (q and
KV f16), capN (logit soft-cap N, as Gemma-2's 50), alibi (ALiBi slopes of a
2^(-8h/Hq) series), hnd (the page pool [pages, Hkv, N, D] instead of NHD), nhd
(a contiguous cache [B, K, Hkv, D] instead of [B, Hkv, K, D]), ordered (the
block table lists the pool's pages in order instead of shuffled), sep (a
one-element kernel after every call, its own time subtracted: each call starts
after the previous one has finished, as between two layers of a model, instead
of overlapping it).
--env NAME:VAR=VALUE sets an environment variable for library NAME's process
only: the FD_TUNE_* knobs of a tuning build (-DFD_ENABLE_TUNING=ON), so one build
runs under two names, e.g. --lib off=T.so --lib on=T.so --env
off:FD_TUNE_WARP_RANGES=0 --env on:FD_TUNE_WARP_RANGES=1.
A library that refuses a shape (an older build) reports it and goes on.
Prints one line per shape: us per call for each library and the ratio to the
first; --json writes everything."""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE_0_1 = 264  # fd_decode_params as 0.1 callers compiled it


def parse_shape(text):
    head, *mods = text.split(":")
    b, hq, hkv, k, d = (int(x) for x in head.split(","))
    spec = dict(B=b, Hq=hq, Hkv=hkv, K=k, D=d, page=0, kv=None, ragged=False, dtype="bf16",
                cap=0.0, alibi=False, hnd=False, nhd=False, ordered=False, sep=False,
                lens=False)
    for m in mods:
        if m.startswith("paged"):
            spec["page"] = int(m[5:])
        elif m in ("e4m3", "e5m2"):
            spec["kv"] = m
        elif m == "ragged":
            spec["ragged"] = True
        elif m == "f16":
            spec["dtype"] = "f16"
        elif m.startswith("cap"):
            spec["cap"] = float(m[3:])
        elif m in ("alibi", "hnd", "nhd", "ordered", "sep", "lens"):
            spec[m] = True
        else:
            raise SystemExit(f"unknown shape suffix {m!r} in {text!r}")
    return spec


def time_one(spec, repeats):
    """In the child process: build inputs, check, time. Returns a dict."""
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "gpu"))
    import fdparams as F

    tdt = torch.float16 if spec["dtype"] == "f16" else torch.bfloat16
    B, Hq, Hkv, K, D, P = spec["B"], spec["Hq"], spec["Hkv"], spec["K"], spec["D"], spec["page"]
    kvt = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}.get(spec["kv"], tdt)
    elem = 1 if spec["kv"] else 2
    kv_bytes = 2 * B * Hkv * K * D * elem
    R = max(2, math.ceil((1 << 30) / max(kv_bytes, 1)))
    free = torch.cuda.mem_get_info()[0]
    while R > 2 and R * kv_bytes * 1.3 > 0.7 * free:
        R -= 1
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, Hq, D, generator=g, device="cuda").to(tdt)
    y = torch.empty(B, Hq, D, device="cuda", dtype=tdt)
    slopes = None
    if spec["alibi"]:
        slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / Hq) for h in range(Hq)], device="cuda")
    lens = None
    if spec["ragged"]:
        lo = max(1, K // 32)
        lens = torch.linspace(lo, K, B, device="cuda").round().to(torch.int32)
    elif spec["lens"]:
        lens = torch.full((B,), K, dtype=torch.int32, device="cuda")
    reps = []
    for _ in range(R):
        if P:
            mp = -(-K // P)
            pages = B * mp
            # The pool as [pages, P, Hkv, D] (NHD) or a permuted view of an HND pool.
            shape = (pages, Hkv, P, D) if spec["hnd"] else (pages, P, Hkv, D)
            kp = torch.randn(*shape, generator=g, device="cuda").to(kvt)
            vp = torch.randn(*shape, generator=g, device="cuda").to(kvt)
            if spec["hnd"]:
                kp, vp = kp.transpose(1, 2), vp.transpose(1, 2)
            order = (torch.arange(pages, device="cuda") if spec["ordered"] else
                     torch.randperm(pages, generator=g, device="cuda"))
            table = order.to(torch.int32).reshape(B, mp)
            reps.append((kp, vp, table, mp, pages))
        else:
            # [B, Hkv, K, D], or a [B, K, Hkv, D] (NHD) cache viewed as one.
            shape = (B, K, Hkv, D) if spec["nhd"] else (B, Hkv, K, D)
            k = torch.randn(*shape, generator=g, device="cuda").to(kvt)
            v = torch.randn(*shape, generator=g, device="cuda").to(kvt)
            if spec["nhd"]:
                k, v = k.transpose(1, 2), v.transpose(1, 2)
            reps.append((k, v))
    scale = D ** -0.5
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

    def params(r):
        p = F.new_params(dtype=F.F16 if tdt == torch.float16 else F.BF16, q=q.data_ptr(),
                         y=y.data_ptr(), batch_size=B, num_heads=Hq, num_kv_heads=Hkv, k_len=K,
                         head_dim=D, scale=scale, q_stride_b=Hq * D, q_stride_h=D,
                         y_stride_b=Hq * D, y_stride_h=D)
        if P:
            kp, vp, table, mp, pages = reps[r]
            p.k, p.v = kp.data_ptr(), vp.data_ptr()
            p.k_stride_h = p.v_stride_h = kp.stride(2)
            p.k_stride_k = p.v_stride_k = kp.stride(1)
            p.k_stride_page = p.v_stride_page = kp.stride(0)
            p.block_table, p.block_table_stride_b = table.data_ptr(), mp
            p.page_size, p.max_pages, p.num_pages = P, mp, pages
        else:
            k, v = reps[r]
            p.k, p.v = k.data_ptr(), v.data_ptr()
            p.k_stride_b = p.v_stride_b = k.stride(0)
            p.k_stride_h = p.v_stride_h = k.stride(1)
            p.k_stride_k = p.v_stride_k = k.stride(2)
        if spec["kv"]:
            p.kv_dtype = F.FP8_E4M3 if spec["kv"] == "e4m3" else F.FP8_E5M2
        if lens is not None:
            p.seq_lens = lens.data_ptr()
        p.logits_soft_cap = spec["cap"]
        if slopes is not None:
            p.alibi_slopes = slopes.data_ptr()
        if not (P or spec["kv"]):
            p.struct_size = SIZE_0_1  # an older build runs these too
        st, need = F.workspace_size(p)
        if st != 0:
            raise RuntimeError(f"refused: {F.last_error()}")
        p.workspace, p.workspace_bytes = ws.data_ptr(), min(need, ws.numel())
        return p

    ps = [params(r) for r in range(R)]
    # Check replica 0 against a float32 reference.
    st, msg = F.decode(ps[0])
    if st != 0:
        raise RuntimeError(f"status {st}: {msg}")
    torch.cuda.synchronize()
    if P:
        kp, vp, table, mp, pages = reps[0]
        idx = table.long()
        kd = kp.float()[idx].reshape(B, mp * P, Hkv, D)[:, :K].permute(0, 2, 1, 3)
        vd = vp.float()[idx].reshape(B, mp * P, Hkv, D)[:, :K].permute(0, 2, 1, 3)
    else:
        kd, vd = reps[0][0].float(), reps[0][1].float()
    gq = Hq // Hkv
    s = torch.einsum("bhgd,bhkd->bhgk", q.float().reshape(B, Hkv, gq, D), kd) * scale
    if spec["cap"] > 0:
        s = spec["cap"] * torch.tanh(s / spec["cap"])
    if slopes is not None:
        last = (lens if lens is not None else torch.full((B,), K, device="cuda")) - 1
        dist = torch.arange(K, device="cuda").reshape(1, K) - last.reshape(B, 1)
        s = s + slopes.reshape(1, Hkv, gq, 1) * dist.reshape(B, 1, 1, K).float()
    if lens is not None:
        mask = torch.arange(K, device="cuda").reshape(1, 1, 1, K) >= lens.reshape(B, 1, 1, 1)
        s = s.masked_fill(mask, -math.inf)
    ref = torch.einsum("bhgk,bhkd->bhgd", torch.softmax(s, -1), vd).reshape(B, Hq, D)
    err = ((y.float() - ref).norm() / ref.norm()).item()
    tol = 2e-3 if tdt == torch.float16 else 1e-2
    if not err <= tol:
        raise RuntimeError(f"rel err {err:.3e} > {tol}")
    lib = F.lib
    n_calls = R * max(1, math.ceil(64 / R))
    stream = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    import ctypes
    for p in ps:
        p.stream = stream.cuda_stream
    with torch.cuda.stream(stream):
        for p in ps[:2]:
            if lib.fd_decode(ctypes.byref(p)) != 0:
                raise RuntimeError(f"warm-up: {F.last_error()}")
    torch.cuda.synchronize()
    failed = []
    sep = torch.zeros(1, device="cuda")
    with torch.cuda.graph(graph, stream=stream):
        for j in range(n_calls):
            if lib.fd_decode(ctypes.byref(ps[j % R])) != 0:
                failed.append(F.last_error())
            if spec["sep"]:
                sep.add_(1.0)
    if failed:
        raise RuntimeError(f"capture: {failed[0]}")

    def replay_us(g):
        samples = []
        with torch.cuda.stream(stream):  # replay() launches on the current stream
            for _ in range(3):
                g.replay()
            torch.cuda.synchronize()
            for _ in range(repeats):
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                g.replay()
                e1.record()
                e1.synchronize()
                samples.append(e0.elapsed_time(e1) * 1e3 / n_calls)
        return samples

    samples = replay_us(graph)
    if spec["sep"]:  # less the separators' own time
        alone = torch.cuda.CUDAGraph()
        with torch.cuda.graph(alone, stream=stream):
            for j in range(n_calls):
                sep.add_(1.0)
        sep_us = statistics.median(replay_us(alone))
        samples = [t - sep_us for t in samples]
    us = statistics.median(samples)
    read = kv_bytes if lens is None else int(kv_bytes * lens.float().mean().item() / K)
    return {"us": us, "gbps": (read + 2 * B * Hq * D * 2) / us / 1e3, "err": err,
            "spread": (max(samples) - min(samples)) / us, "replicas": R}


def child(lib, shapes, repeats, out):
    os.environ["FLASHDECODING_LIBRARY"] = lib
    res = []
    for text in shapes:
        try:
            res.append(time_one(parse_shape(text), repeats))
        except Exception as e:  # an older build, a refused shape: say so, go on
            res.append({"error": f"{type(e).__name__}: {e}"[:200]})
    with open(out, "w") as f:
        json.dump(res, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--shape", action="append", required=True)
    ap.add_argument("--env", action="append", default=[], metavar="NAME:VAR=VALUE",
                    help="an environment variable for library NAME's process only (a "
                         "tuning build's FD_TUNE_* knobs: one build timed both ways)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.shape, a.repeats, a.child[1])
        return 0
    libs = [tuple(x.split("=", 1)) for x in a.lib]
    for item in a.env:  # a misspelt --env would time the defaults under a knob's name
        lib_name, colon, assignment = item.partition(":")
        var = assignment.partition("=")[0]
        if not colon or "=" not in assignment or not var or lib_name not in {n for n, _ in libs}:
            ap.error(f"--env {item!r}: expected NAME:VAR=VALUE with NAME one of the --lib names")
    results = {}
    for name, path in libs:
        out = f"/tmp/ab_time_{os.getpid()}_{name}.json"
        cmd = [sys.executable, __file__, "--lib", a.lib[0], "--repeats", str(a.repeats),
               "--child", os.path.abspath(path), out]
        for s in a.shape:
            cmd += ["--shape", s]
        env = dict(os.environ)
        for item in a.env:
            lib_name, _, assignment = item.partition(":")
            var, _, value = assignment.partition("=")
            if lib_name == name:
                env[var] = value
        subprocess.run(cmd, check=False, env=env)
        try:
            results[name] = json.load(open(out))
        except (OSError, ValueError) as e:
            results[name] = [{"error": f"no result: {e}"}] * len(a.shape)
    names = [n for n, _ in libs]
    print("shape".ljust(34) + "".join(f"{n:>12s}" for n in names) + "   ratio to " + names[0])
    for i, s in enumerate(a.shape):
        row = [results[n][i] for n in names]
        cells = "".join(f"{r['us']:12.2f}" if "us" in r else f"{'err':>12s}" for r in row)
        base = row[0].get("us")
        ratios = " ".join(f"{r['us'] / base:.3f}" if "us" in r and base else "-" for r in row[1:])
        print(s.ljust(34) + cells + "   " + ratios)
        for n, r in zip(names, row):
            if "error" in r:
                print(f"    {n}: {r['error']}")
    if a.json:
        json.dump({"shapes": a.shape, "results": results}, open(a.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
