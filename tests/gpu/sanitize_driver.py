"""A few decodes through the package for compute-sanitizer (scripts/sanitize.sh).

Every buffer is written before it is read (no poison needed: initcheck reports a
read of memory that was never written), the output is checked against the f64
reference, and the process exits non-zero on a wrong answer. Cases: the cluster
path, batch-invariant (merge through the workspace), odd head_dim 72 and 7,
K = 0, an NHD cache. The splits merge through the workspace by default; run with
FD_TUNE_CLUSTER=1 for the opt-in thread-block-cluster reduction on sm_90
(scripts/sanitize.sh does both)."""
import os
import sys

import numpy as np

import flashdecoding as fd
from flashdecoding import reference
from flashdecoding.cuda import DeviceBuffer, synchronize

TOL = {fd.ElementKind.F16: 2e-3, fd.ElementKind.BF16: 1e-2}

# (name, B, H_q, H_kv, K, D, element, preference, nhd)
CASES = [
    ("split_B1_H32", 1, 32, 8, 4096, 128, fd.ElementKind.F16, fd.PlanPreference.DEFAULT, False),
    ("batch_invariant", 2, 16, 4, 1500, 128, fd.ElementKind.BF16,
     fd.PlanPreference.BATCH_INVARIANT, False),
    ("d72", 3, 8, 2, 777, 72, fd.ElementKind.F16, fd.PlanPreference.DEFAULT, False),
    ("d7", 2, 4, 4, 300, 7, fd.ElementKind.BF16, fd.PlanPreference.DEFAULT, False),
    ("k0", 2, 8, 8, 0, 128, fd.ElementKind.F16, fd.PlanPreference.DEFAULT, False),
    ("nhd", 2, 16, 2, 1000, 64, fd.ElementKind.F16, fd.PlanPreference.DEFAULT, True),
]


def host(shape, element, rng):
    return rng.standard_normal(shape, dtype=np.float32).astype(element.numpy_dtype())


def main():
    rng = np.random.default_rng(0)
    failures = 0
    for name, b, hq, hkv, k_len, d, element, pref, nhd in CASES:
        desc = fd.FlashDecodingDescriptor.new_gqa(b, hq, hkv, k_len, d, element)
        plan = fd.FlashDecodingPlan.select(None, desc, pref)
        q = host(desc.q_shape(), element, rng)
        if nhd:  # [B, K, H_kv, D] in memory, viewed as [B, H_kv, K, D]
            k_mem, v_mem = (host((b, k_len, hkv, d), element, rng) for _ in range(2))
            k, v = k_mem.transpose(0, 2, 1, 3), v_mem.transpose(0, 2, 1, 3)
            st = (k_len * hkv * d, d, hkv * d, 1)
            kb, vb = DeviceBuffer.from_numpy(k_mem), DeviceBuffer.from_numpy(v_mem)
            kd, vd = kb.view(desc.kv_shape(), st), vb.view(desc.kv_shape(), st)
        else:
            k, v = host(desc.kv_shape(), element, rng), host(desc.kv_shape(), element, rng)
            kd, vd = DeviceBuffer.from_numpy(k), DeviceBuffer.from_numpy(v)
        qd = DeviceBuffer.from_numpy(q)
        yd = DeviceBuffer.from_numpy(np.zeros(desc.y_shape(), element.numpy_dtype()))
        ws = DeviceBuffer(max(plan.workspace_size(), 16))
        ws.fill_bytes(0)
        for _ in range(2):
            plan.run(None, fd.Workspace(ws.ptr, plan.workspace_size()),
                     fd.FlashDecodingArgs(qd, kd, vd, yd))
        synchronize()
        y = yd.to_numpy()
        err = reference.relative_error(y, reference.decode(q, np.asarray(k), np.asarray(v),
                                                           desc.scale))
        ok = err <= TOL[element]
        failures += not ok
        print(f"sanitize_driver: {name}: B={b} Hq={hq} Hkv={hkv} K={k_len} D={d} "
              f"{element.short_name} {pref.value} nhd={nhd} "
              f"cluster={os.environ.get('FD_TUNE_CLUSTER', '0')}: rel err {err:.2e} "
              f"{'OK' if ok else 'WRONG'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
