// The merge kernel: one warp per (batch, query head) combines the num_splits
// partial states (normalised output, log2-sum-exp) with the log-sum-exp rule
// and writes y (and lse). Lane l holds columns 4l .. 4l + 3 of each 128-column
// block. A warp loads a batch of splits at once (one round trip), takes their
// max, then sums the weighted outputs in split order, so the bits do not
// depend on timing; longer split lists go batch by batch with one rescale in
// between. A NaN partial (a paged CTA that saw a bad page id or length) makes
// the row NaN.
#pragma once

#include <cuda_runtime.h>

#include "../kernel_params.h"
#include "ptx.cuh"
#include "score_mods.cuh"

namespace fd {

constexpr int kMergeRowsPerCta = 4;  // one warp per row
constexpr int kMergeThreads = kMergeRowsPerCta * 32;

template <typename T, int DPAD>
__global__ void __launch_bounds__(kMergeThreads) decode_merge_kernel(const DecodeArgs a) {
  constexpr int NV = (DPAD + 127) / 128;        // float4 column groups per lane
  constexpr int kBatch = NV == 1 ? 16 : 8;      // splits loaded at once
  static_assert(DPAD % 4 == 0, "float4 column groups");
  const fd_decode_params& c = a.call;
  const LaunchParams& lp = a.launch;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  // Everything taken from the parameters is read before the wait (ptx::pin).
  const int num_heads = ptx::pin(c.num_heads);
  const int64_t rows = static_cast<int64_t>(ptx::pin(c.batch_size)) * num_heads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMergeRowsPerCta + warp;
  if (row >= rows) return;  // the last CTA's spare warps
  const int b = static_cast<int>(row / num_heads);
  const int h = static_cast<int>(row - static_cast<int64_t>(b) * num_heads);
  const int ns = ptx::pin(lp.num_splits);
  const int head_dim = ptx::pin(c.head_dim);
  const float* lse = ptx::pin(lp.partial_lse + row * ns);
  const float* po = ptx::pin(lp.partial_o + row * ns * DPAD);
  T* yr = ptx::pin(static_cast<T*>(c.y) + b * c.y_stride_b + h * c.y_stride_h);
  const float* sinks = ptx::pin(c.sinks);
  float* lse_out =
      ptx::pin(c.lse != nullptr ? c.lse + b * c.lse_stride_b + h * c.lse_stride_h : nullptr);

  // The next kernel in the stream may be scheduled: before the wait (the
  // default, see decide_launch) its CTAs take the split CTAs' places as they
  // leave, and start their prefetch then, not after this merge.
  const bool early_trigger = ptx::pin(lp.merge_early_trigger) != 0;
  if (early_trigger) ptx::launch_dependents();
  ptx::grid_dependency_wait();  // the split kernel's partials are complete
  if (!early_trigger) ptx::launch_dependents();

  // Running state over the batches: max, sum of weights, weighted outputs.
  float m = -INFINITY, d = 0.f;
  bool nan_seen = false;
  float4 acc[NV];
#pragma unroll
  for (int g = 0; g < NV; ++g) acc[g] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int i0 = 0; i0 < ns; i0 += kBatch) {
    float li[kBatch];
    float4 oi[kBatch][NV];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int i = i0 + k;
      li[k] = i < ns ? lse[i] : -INFINITY;
#pragma unroll
      for (int g = 0; g < NV; ++g) {
        const int col = (g * 32 + lane) * 4;
        oi[k][g] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i < ns && col < DPAD)
          oi[k][g] = *reinterpret_cast<const float4*>(po + static_cast<int64_t>(i) * DPAD + col);
      }
    }
    float mb = m;
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      mb = fmaxf(mb, li[k]);
      nan_seen |= li[k] != li[k];
    }
    if (mb == -INFINITY) continue;  // nothing in this batch or before it
    const float rescale = exp2f(m - mb);  // exp2(-inf) = 0 for the first batch
    d *= rescale;
#pragma unroll
    for (int g = 0; g < NV; ++g) {
      acc[g].x *= rescale;
      acc[g].y *= rescale;
      acc[g].z *= rescale;
      acc[g].w *= rescale;
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const float f = exp2f(li[k] - mb);  // 0 for an empty split
      d += f;
#pragma unroll
      for (int g = 0; g < NV; ++g) {
        acc[g].x += f * oi[k][g].x;
        acc[g].y += f * oi[k][g].y;
        acc[g].z += f * oi[k][g].z;
        acc[g].w += f * oi[k][g].w;
      }
    }
    m = mb;
  }

  // The sink joins the denominator only; then normalise.
  float base = m;
  if (sinks != nullptr) {
    const float sink = sinks[h] * kLog2e;
    base = fmaxf(m, sink);
    if (base != -INFINITY) {
      const float f = exp2f(m - base);
      d = d * f + exp2f(sink - base);
#pragma unroll
      for (int g = 0; g < NV; ++g) {
        acc[g].x *= f;
        acc[g].y *= f;
        acc[g].z *= f;
        acc[g].w *= f;
      }
    }
  }
  const float nan = __int_as_float(0x7fc00000);
  const float inv = d > 0.f ? 1.f / d : 0.f;
#pragma unroll
  for (int g = 0; g < NV; ++g) {
    const int col = (g * 32 + lane) * 4;
    const float a4[4] = {acc[g].x, acc[g].y, acc[g].z, acc[g].w};
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (col < DPAD && col + e < head_dim)
        yr[col + e] = ptx::from_float<T>(nan_seen ? nan : a4[e] * inv);
  }
  if (lane == 0 && lse_out != nullptr)
    *lse_out = nan_seen ? nan : d > 0.f ? (base + log2f(d)) * kLn2 : -INFINITY;
}

}  // namespace fd
