// The merge inside the split kernel: after a CTA has published its partial
// state, it counts itself in on its unit's counter; the CTA that arrives last
// merges the unit's splits and writes y. This saves the merge kernel's launch
// and, above all, its wait for the whole split grid to drain, which is most of
// the fixed cost of a short decode.
//
// The bits do not depend on which CTA arrives last: the last one reads every
// split back from L2 (its own too) and folds them in split order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../kernel_params.h"
#include "../split_policy.h"
#include "ptx.cuh"

namespace fd {

// True in every thread of the CTA that is the last of its unit's num_splits
// CTAs to arrive. Called by all threads after their partial stores.
__device__ __forceinline__ bool arrive_last(const DecodeParams& p, int unit) {
  __shared__ int is_last;
  __threadfence();  // release: this thread's partials are visible GPU-wide before the count
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long* counter = p.split_counters + unit;
    const unsigned long long base = static_cast<unsigned long long>(kSplitCounterTag) << 32;
    const unsigned ns = static_cast<unsigned>(p.num_splits);
    auto current = [&](unsigned long long c) {  // a count of this call, not a stale value
      return (c >> 32) == kSplitCounterTag && static_cast<unsigned>(c) < ns;
    };
    // One atomic in the usual case (the previous call left tag | 0). If the
    // counter held a stale value, this add landed on it; the loop then restarts
    // the count at this arrival, and every CTA whose add also hit the stale
    // value goes through the loop too, so each arrival counts once. (Only the
    // first call on a workspace, or after a change of layout, takes the loop.)
    const unsigned long long seen = atomicAdd(counter, 1ull);
    unsigned long long mine = seen + 1;
    if (!current(seen)) {
      for (;;) {
        const unsigned long long now = *reinterpret_cast<volatile unsigned long long*>(counter);
        const unsigned long long want = current(now) ? now + 1 : base + 1;
        if (atomicCAS(counter, now, want) == now) {
          mine = want;
          break;
        }
      }
    }
    const bool last = static_cast<unsigned>(mine) == ns;
    if (last) atomicExch(counter, base);  // every split is in: zero for the next call
    is_last = last;
  }
  __syncthreads();
  const bool last = is_last != 0;
  if (last) __threadfence();  // acquire: the other CTAs' partials before reading them
  return last;
}

// The last CTA of a unit: rows hq0 .. hq0 + nh - 1 of batch b, num_splits
// partials each, staged through shared memory (`smem_bytes` of it) in passes
// of as many rows as fit, folded in split order, written through write_out
// (normalisation, sink, lse).
template <int DPAD, int THREADS, typename WriteOut>
__device__ __forceinline__ void merge_unit_in_cta(const DecodeParams& p, unsigned char* smem_raw,
                                                  size_t smem_bytes, int b, int hq0, int nh,
                                                  WriteOut write_out) {
  constexpr int kLseFloats = kMaxGroupPerCta * kPolicyMaxSplits;
  const int ns = p.num_splits;
  const int64_t prow0 = (static_cast<int64_t>(b) * p.num_heads + hq0) * ns;
  float* s_lse = reinterpret_cast<float*>(smem_raw);  // [nh][ns]
  float* s_o = s_lse + kLseFloats;                     // [rows of a pass][ns][DPAD]
  // L2 reads (.cg): the lines were written by other SMs during this kernel.
  for (int i = threadIdx.x; i < nh * ns; i += THREADS) s_lse[i] = __ldcg(p.partial_lse + prow0 + i);
  const int row_floats = ns * DPAD;
  const int fit = static_cast<int>((smem_bytes / sizeof(float) - kLseFloats) / row_floats);
  const int rows_per_pass = fit < nh ? fit : nh;
  for (int r0 = 0; r0 < nh; r0 += rows_per_pass) {
    const int nr = nh - r0 < rows_per_pass ? nh - r0 : rows_per_pass;
    const float* src = p.partial_o + (prow0 + static_cast<int64_t>(r0) * ns) * DPAD;
    for (int i = threadIdx.x; i < nr * row_floats / 4; i += THREADS)
      ptx::cp_async_16(s_o + 4 * i, src + 4 * i, 16);
    ptx::cp_async_commit();
    ptx::cp_async_wait<0>();
    __syncthreads();
    for (int idx = threadIdx.x; idx < nr * DPAD; idx += THREADS) {
      const int row = idx / DPAD, col = idx - row * DPAD;
      if (col >= p.head_dim) continue;
      const float* lse = s_lse + (r0 + row) * ns;
      float mall = -INFINITY;
      for (int i = 0; i < ns; ++i) mall = fmaxf(mall, lse[i]);
      float den = 0.f, acc = 0.f;
      for (int i = 0; i < ns; ++i) {
        if (lse[i] == -INFINITY) continue;  // an empty split adds nothing
        const float f = exp2f(lse[i] - mall);
        den += f;
        acc += f * s_o[(row * ns + i) * DPAD + col];
      }
      write_out(hq0 + r0 + row, col, mall, den, acc);
    }
    __syncthreads();  // the next pass overwrites s_o
  }
}

}  // namespace fd
