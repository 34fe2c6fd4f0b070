"""Run one decode method on one shape a few times, for a profiler to watch
(ncu / compute-sanitizer): python tools/profile_shape.py METHOD B Hq Hkv K D
METHOD: flashdecoding | sdpa-cudnn | sdpa-flash. Measurement aid only."""
import math
import sys

import torch


def main():
    method = sys.argv[1]
    B, Hq, Hkv, K, D = (int(x) for x in sys.argv[2:7])
    q = torch.randn(B, Hq, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, Hkv, K, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, Hkv, K, D, device="cuda", dtype=torch.bfloat16)
    if method == "flashdecoding":
        import flashdecoding as fd
        y = torch.empty_like(q)
        for _ in range(3):
            fd.flash_decode(q, k, v, out=y)
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backend = {"sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
                   "sdpa-flash": SDPBackend.FLASH_ATTENTION}[method]
        with sdpa_kernel(backend):
            for _ in range(3):
                torch.nn.functional.scaled_dot_product_attention(
                    q[:, :, None], k, v, scale=1 / math.sqrt(D), enable_gqa=True)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
