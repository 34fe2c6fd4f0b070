"""Do two builds of the library give the same bits? For a change meant to keep
the arithmetic (a faster epilogue, a new launch policy that keeps the split):
runs the same cases through each library in its own process and compares y
and lse bit for bit.

    python3 tests/gpu/compare_builds.py OLD/libflashdecoding.so NEW/libflashdecoding.so
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

# B, Hq, Hkv, K, D, extras: split and unsplit, GQA/MHA/MQA, odd head_dim (scalar
# path), sinks + lse, and a large batch.
CASES = [(1, 32, 8, 8192, 128, ""), (1, 32, 8, 512, 128, ""), (3, 8, 8, 1000, 72, ""),
         (2, 16, 1, 4097, 64, ""), (4, 12, 4, 33, 7, ""), (64, 32, 8, 256, 128, ""),
         (32, 16, 16, 1024, 64, ""), (2, 32, 8, 3000, 128, "sinks"), (1, 64, 8, 20000, 96, "")]


def run_cases(out_dir: str) -> None:
    import numpy as np
    import torch

    import ctypes

    import flashdecoding as fd
    from flashdecoding import _capi, _native

    lib = _native.lib()
    for i, (b, hq, hkv, k_len, d, extra) in enumerate(CASES):
        g = torch.Generator(device="cuda").manual_seed(1234 + i)
        q = torch.randn(b, hq, d, generator=g, device="cuda").to(torch.bfloat16)
        k = torch.randn(b, hkv, k_len, d, generator=g, device="cuda").to(torch.bfloat16)
        v = torch.randn(b, hkv, k_len, d, generator=g, device="cuda").to(torch.bfloat16)
        y = torch.full((b, hq, d), float("nan"), device="cuda", dtype=torch.bfloat16)
        lse = torch.full((b, hq), float("nan"), device="cuda", dtype=torch.float32)
        sinks = torch.randn(hq, generator=g, device="cuda") if extra == "sinks" else None
        p = _capi.FdDecodeParams()
        p.struct_size = ctypes.sizeof(p)
        p.dtype = int(fd.ElementKind.BF16)
        p.q, p.k, p.v, p.y = q.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr()
        p.batch_size, p.num_heads, p.num_kv_heads, p.k_len, p.head_dim = b, hq, hkv, k_len, d
        p.q_stride_b, p.q_stride_h = hq * d, d
        p.k_stride_b = p.v_stride_b = hkv * k_len * d
        p.k_stride_h = p.v_stride_h = k_len * d
        p.k_stride_k = p.v_stride_k = d
        p.y_stride_b, p.y_stride_h = hq * d, d
        p.scale = d ** -0.5
        f32p = ctypes.POINTER(ctypes.c_float)
        p.lse, p.lse_stride_b, p.lse_stride_h = ctypes.cast(lse.data_ptr(), f32p), hq, 1
        if sinks is not None:
            p.sinks = ctypes.cast(sinks.data_ptr(), f32p)
        need = ctypes.c_size_t(0)
        assert lib.fd_decode_workspace_size(ctypes.byref(p), ctypes.byref(need)) == 0
        ws = torch.empty(max(need.value, 1), dtype=torch.uint8, device="cuda")
        p.workspace, p.workspace_bytes = ws.data_ptr(), need.value
        st = lib.fd_decode(ctypes.byref(p))
        assert st == 0, (CASES[i], st, _native.last_error_message())
        torch.cuda.synchronize()
        np.save(os.path.join(out_dir, f"y{i}.npy"), y.view(torch.int16).cpu().numpy())
        np.save(os.path.join(out_dir, f"lse{i}.npy"), lse.view(torch.int32).cpu().numpy())


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--run":
        run_cases(sys.argv[2])
        return 0
    import numpy as np

    libs = sys.argv[1:3]
    dirs = []
    for lib in libs:
        d = tempfile.mkdtemp()
        env = dict(os.environ, FLASHDECODING_LIBRARY=os.path.abspath(lib))
        subprocess.run([sys.executable, __file__, "--run", d], env=env, check=True)
        dirs.append(d)
    bad = 0
    for i, case in enumerate(CASES):
        for name in ("y", "lse"):
            a = np.load(os.path.join(dirs[0], f"{name}{i}.npy"))
            b = np.load(os.path.join(dirs[1], f"{name}{i}.npy"))
            same = np.array_equal(a, b)
            bad += not same
            print(f"{str(case):40s} {name:4s} {'same bits' if same else 'DIFFERENT'}")
    print("compare_builds:", "OK" if bad == 0 else f"{bad} outputs differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
