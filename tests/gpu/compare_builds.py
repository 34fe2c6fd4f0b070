"""Do two builds of the library give the same bits? For a change meant to keep
the arithmetic (a restructured kernel, a new launch policy that keeps the
split): runs the same cases through each library in its own process and
compares y and lse bit for bit.

    python3 tests/gpu/compare_builds.py OLD/libflashdecoding.so NEW/libflashdecoding.so

The cases are the correctness grid's contiguous cases (tests/gpu/grid_check.py,
quick size) plus every extension an older library also has (LSE, per-sequence
lengths, window, sink logits, ALiBi, soft-cap, batch invariance), so an older
library (whose fd_decode_params ends before the 0.2 fields) runs them too: the
params are passed with the struct_size that library was built with. fp8 cases
(e4m3 and e5m2 caches, f16 and bf16 queries, odd head_dims, strided queries,
per-tensor and per-head scales) run where both libraries take them (an older one
refuses them and they are left out, as `--no-fp8` leaves them out). Paged cases
(pages of 1 to 256 keys, NHD and HND pools, shuffled and shared page ids) need a
0.2 library."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile

SIZE_0_1 = 264  # sizeof(fd_decode_params) up to v_scale (0.1 callers)


def cases(fp8=True):
    out = []
    for B, (Hq, Hkv), K, D, dtype, strided in itertools.product(
            [1, 3], [(1, 1), (8, 8), (32, 8), (28, 4), (8, 1)], [0, 1, 257, 4096],
            [7, 72, 128], ["f16", "bf16"], [False, True]):
        out.append(dict(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, dtype=dtype, strided=strided, ext={}))
    for B, Hq, Hkv, K, D in [(1, 32, 8, 8192, 128), (1, 32, 8, 512, 128), (64, 32, 8, 256, 128),
                             (32, 16, 16, 1024, 64), (1, 64, 8, 20000, 96), (2, 16, 1, 4097, 64),
                             (16, 32, 8, 4096, 128), (4, 32, 32, 4096, 128)]:
        out.append(dict(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, dtype="bf16", strided=False, ext={}))
    # Full tiles of every bucket whose rows' chunks do not divide a warp's 32
    # copies (80, 96, 160 and 192 elements), MHA and GQA, on both dtypes.
    for i, (B, Hq, Hkv, K, D) in enumerate([(8, 32, 32, 2048, 80), (3, 32, 8, 1000, 80),
                                            (4, 32, 32, 4096, 96), (2, 28, 4, 3001, 96),
                                            (2, 16, 16, 1500, 160), (2, 16, 8, 1500, 192)]):
        out.append(dict(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, dtype=("bf16", "f16")[i % 2],
                        strided=False, ext={}))
    exts = [dict(sinks=1), dict(seq_lens=1), dict(window=300), dict(alibi=1), dict(cap=30.0),
            dict(bi=1), dict(seq_lens=1, window=257, sinks=1, alibi=1, cap=20.0, bi=1)]
    for ext, (B, Hq, Hkv, K, D) in itertools.product(exts, [(3, 32, 8, 9000, 128), (2, 8, 8, 700, 80)]):
        out.append(dict(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, dtype="bf16", strided=False, ext=ext))
    # Grids of several waves with per-sequence lengths, which take their
    # sequences longest first: the order must not change a bit.
    for ext, (B, Hq, Hkv, K, D) in [(dict(seq_lens=1), (64, 32, 8, 2100, 128)),
                                    (dict(seq_lens=1, bi=1, sinks=1), (200, 8, 2, 300, 64)),
                                    (dict(seq_lens=1), (256, 16, 2, 700, 96)),
                                    (dict(seq_lens=1), (300, 8, 1, 500, 128)),
                                    (dict(seq_lens=1, page=16, layout="HND"), (40, 16, 8, 1000, 64)),
                                    (dict(seq_lens=1, page=1, layout="NHD"), (48, 32, 8, 600, 128))]:
        out.append(dict(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, dtype="bf16", strided=False, ext=ext))
    # Page pools (shuffled page ids, one page shared by two sequences), NHD and
    # HND, the page sizes of both lookup paths; some with per-sequence lengths,
    # some with fp8 pools.
    for i, (P, layout, (B, Hq, Hkv, K, D)) in enumerate(itertools.product(
            [1, 16, 17, 32, 64, 256], ["NHD", "HND"],
            [(3, 32, 8, 4096, 128), (2, 32, 2, 1500, 256), (4, 8, 8, 700, 64)])):
        ext = dict(page=P, layout=layout, seq_lens=i % 2)
        if fp8 and i % 3 == 0:
            ext.update(kv=("e4m3", "e5m2")[i % 2], per_head=i % 4 == 0)
        out.append(dict(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, dtype=("bf16", "f16")[i % 5 == 0],
                        strided=False, ext=ext))
    for i, (P, (B, Hq, Hkv, K, D)) in enumerate(itertools.product(
            [16, 64], [(4, 32, 32, 2048, 80), (3, 32, 8, 2000, 96)])):
        ext = dict(page=P, layout=("NHD", "HND")[i % 2], seq_lens=i % 2)
        out.append(dict(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, dtype="bf16", strided=False, ext=ext))
    if fp8:
        for i, (B, Hq, Hkv, K, D) in enumerate([(4, 32, 8, 3000, 96), (2, 16, 8, 2000, 160),
                                                (2, 16, 8, 2000, 192)]):
            out.append(dict(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, dtype="bf16", strided=False,
                            ext=dict(kv=("e4m3", "e5m2")[i % 2], per_head=i == 0)))
        for i, (B, (Hq, Hkv), K, D, dtype, strided) in enumerate(itertools.product(
                [1, 3], [(1, 1), (8, 8), (32, 8), (28, 4), (32, 2), (8, 1)], [257, 4096],
                [7, 72, 128, 256], ["f16", "bf16"], [False, True])):
            out.append(dict(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, dtype=dtype, strided=strided,
                            ext=dict(kv=("e4m3", "e5m2")[i % 2], per_head=i % 3 == 0)))
    return out


def run_cases(out_dir: str, with_fp8: bool) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fdparams as F

    dt = {"f16": (torch.float16, F.F16), "bf16": (torch.bfloat16, F.BF16)}
    fp8 = {"e4m3": (torch.float8_e4m3fn, F.FP8_E4M3), "e5m2": (torch.float8_e5m2, F.FP8_E5M2)}
    for i, c in enumerate(cases(with_fp8)):
        g = torch.Generator(device="cuda").manual_seed(1234 + i)
        tdt, code = dt[c["dtype"]]
        B, Hq, Hkv, K, D = c["B"], c["Hq"], c["Hkv"], c["K"], c["D"]

        def rnd(*shape):
            return torch.randn(*shape, generator=g, device="cuda").to(tdt)

        e = c["ext"]
        kv_dt, kv_code = fp8.get(e.get("kv"), (tdt, None))

        def rnd_kv(*shape):
            x = torch.randn(*shape, generator=g, device="cuda")
            return (x * 2).to(kv_dt) if kv_code is not None else x.to(tdt)

        page = e.get("page", 0)
        if page:
            # Pools of shuffled pages; sequence 0's first page is also sequence 1's.
            max_pages = -(-K // page)
            num_pages = B * max_pages + 2
            pool = (num_pages, page, Hkv, D) if e["layout"] == "NHD" else (num_pages, Hkv, page, D)
            q, k, v = rnd(B, Hq, D), rnd_kv(*pool), rnd_kv(*pool)
            table = torch.randperm(num_pages, generator=g, device="cuda")[:B * max_pages]
            table = table.to(torch.int32).reshape(B, max_pages).contiguous()
            if B > 1:
                table[1, 0] = table[0, 0]
            y = torch.full((B, Hq, D), float("nan"), device="cuda", dtype=tdt)
        elif c["strided"]:
            q = rnd(B, Hq, D + 3)[:, :, :D]
            k = rnd_kv(B, K, Hkv, D).permute(0, 2, 1, 3)
            v = rnd_kv(B, Hkv, K + 5, D + 8)[:, :, 2:K + 2, :D]
            y = torch.full((B, Hq + 2, D + 1), float("nan"), device="cuda", dtype=tdt)[:, 1:Hq + 1, :D]
        else:
            q, k, v = rnd(B, Hq, D), rnd_kv(B, Hkv, K, D), rnd_kv(B, Hkv, K, D)
            y = torch.full((B, Hq, D), float("nan"), device="cuda", dtype=tdt)
        lse = torch.full((B, Hq), float("nan"), device="cuda", dtype=torch.float32)
        p = F.new_params(dtype=code, q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(),
                         y=y.data_ptr(), batch_size=B, num_heads=Hq, num_kv_heads=Hkv, k_len=K,
                         head_dim=D, scale=D ** -0.5,
                         q_stride_b=q.stride(0), q_stride_h=q.stride(1),
                         k_stride_b=k.stride(0), k_stride_h=k.stride(1), k_stride_k=k.stride(2),
                         v_stride_b=v.stride(0), v_stride_h=v.stride(1), v_stride_k=v.stride(2),
                         y_stride_b=y.stride(0), y_stride_h=y.stride(1),
                         lse=lse.data_ptr(), lse_stride_b=Hq, lse_stride_h=1)
        keep = []
        if page:
            s_page, s_h, s_k = (k.stride(0), k.stride(2), k.stride(1)) if e["layout"] == "NHD" \
                else (k.stride(0), k.stride(1), k.stride(2))
            p.k_stride_b = p.v_stride_b = 0
            p.k_stride_page = p.v_stride_page = s_page
            p.k_stride_h = p.v_stride_h = s_h
            p.k_stride_k = p.v_stride_k = s_k
            p.block_table, p.block_table_stride_b = table.data_ptr(), table.stride(0)
            p.page_size, p.max_pages, p.num_pages = page, table.shape[1], k.shape[0]
            keep.append(table)
        if kv_code is not None:
            p.kv_dtype = kv_code
            if e["per_head"]:
                keep += [torch.rand(Hkv, generator=g, device="cuda") + 0.25 for _ in range(2)]
                p.k_scales, p.v_scales = keep[-2].data_ptr(), keep[-1].data_ptr()
            else:
                p.k_scale, p.v_scale = 0.37, 1.9
        elif not page:
            p.struct_size = SIZE_0_1  # runs on a 0.1 library too
        if e.get("sinks"):
            keep.append(torch.randn(Hq, generator=g, device="cuda"))
            p.sinks = keep[-1].data_ptr()
        if e.get("alibi"):
            keep.append(torch.rand(Hq, generator=g, device="cuda") * 0.1)
            p.alibi_slopes = keep[-1].data_ptr()
        if e.get("seq_lens"):
            keep.append(torch.randint(0, K + 1, (B,), generator=g, device="cuda", dtype=torch.int32))
            p.seq_lens = keep[-1].data_ptr()
        p.window_size = e.get("window", 0)
        p.logits_soft_cap = e.get("cap", 0.0)
        p.flags = F.FLAG_BATCH_INVARIANT if e.get("bi") else 0
        st, need = F.workspace_size(p)
        if st != 0 and kv_code is not None:
            continue  # a library without fp8 caches: the comparison leaves the case out
        assert st == 0, (c, F.last_error())
        ws = torch.empty(max(need, 16), dtype=torch.uint8, device="cuda")
        p.workspace, p.workspace_bytes = ws.data_ptr(), need
        st, msg = F.decode(p)
        assert st == 0, (c, st, msg)
        torch.cuda.synchronize()
        np.save(os.path.join(out_dir, f"y{i}.npy"), y.contiguous().view(torch.int16).cpu().numpy())
        np.save(os.path.join(out_dir, f"lse{i}.npy"), lse.view(torch.int32).cpu().numpy())


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--run":
        run_cases(sys.argv[2], sys.argv[3] == "fp8")
        return 0
    import numpy as np

    with_fp8 = "--no-fp8" not in sys.argv
    libs = [a for a in sys.argv[1:] if a != "--no-fp8"][:2]
    dirs = []
    for lib in libs:
        d = tempfile.mkdtemp()
        env = dict(os.environ, FLASHDECODING_LIBRARY=os.path.abspath(lib))
        subprocess.run([sys.executable, __file__, "--run", d, "fp8" if with_fp8 else "-"],
                       env=env, check=True)
        dirs.append(d)
    bad = left_out = 0
    all_cases = cases(with_fp8)
    for i, case in enumerate(all_cases):
        if not all(os.path.exists(os.path.join(d, f"y{i}.npy")) for d in dirs):
            left_out += 1
            continue
        for name in ("y", "lse"):
            a = np.load(os.path.join(dirs[0], f"{name}{i}.npy"))
            b = np.load(os.path.join(dirs[1], f"{name}{i}.npy"))
            if not np.array_equal(a, b):
                bad += 1
                if bad <= 20:
                    print(f"DIFFERENT {name}: {case}")
    print(f"compare_builds: {len(all_cases) - left_out} cases, y and lse each: "
          + ("OK, same bits" if bad == 0 else f"{bad} outputs differ")
          + (f" ({left_out} fp8 cases left out: a library refuses fp8 caches)" if left_out else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
