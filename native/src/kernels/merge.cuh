// The merge kernel: one warp per (batch, query head) combines the num_splits
// partial states (normalised output, log2-sum-exp) with the log-sum-exp rule
// and writes y (and lse). Lane l holds columns 4l .. 4l + 3. A warp loads up
// to kMergeBatch splits at once (one round trip), takes their max, then sums
// the weighted outputs in split order, so the bits do not depend on timing;
// longer split lists go batch by batch with one rescale in between.
#pragma once

#include <cuda_runtime.h>

#include "../kernel_params.h"
#include "decode_split.cuh"
#include "ptx.cuh"

namespace fd {

constexpr int kMergeRowsPerCta = 4;  // one warp per row
constexpr int kMergeThreads = kMergeRowsPerCta * 32;
constexpr int kMergeBatch = 16;      // splits loaded at once (the policy picks <= 16)

template <typename T, int DPAD>
__global__ void __launch_bounds__(kMergeThreads) decode_merge_kernel(const DecodeParams p) {
  static_assert(DPAD % 4 == 0 && DPAD / 4 <= 32, "one float4 column group per lane");
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  // Everything taken from the parameters is read before the wait (ptx::pin).
  const int num_heads = ptx::pin(p.num_heads);
  const int64_t rows = static_cast<int64_t>(ptx::pin(p.batch_size)) * num_heads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMergeRowsPerCta + warp;
  if (row >= rows) return;  // the last CTA's spare warps
  const int b = static_cast<int>(row / num_heads);
  const int h = static_cast<int>(row - static_cast<int64_t>(b) * num_heads);
  const int ns = ptx::pin(p.num_splits);
  const int head_dim = ptx::pin(p.head_dim);
  const float* lse = ptx::pin(p.partial_lse + row * ns);
  const float* po = ptx::pin(p.partial_o + row * ns * DPAD);
  T* yr = ptx::pin(static_cast<T*>(p.y) + b * p.y_stride_b + h * p.y_stride_h);
  const float* sinks = ptx::pin(p.sinks);
  float* lse_out =
      ptx::pin(p.lse != nullptr ? p.lse + b * p.lse_stride_b + h * p.lse_stride_h : nullptr);
  const int col = lane * 4;
  const bool has_cols = col < DPAD;

  // The next kernel in the stream may be scheduled: before the wait (the
  // default, see decide_launch) its CTAs take the split CTAs' places as they
  // leave, and start their prefetch then, not after this merge.
  const bool early_trigger = ptx::pin(p.merge_early_trigger) != 0;
  if (early_trigger) ptx::launch_dependents();
  ptx::grid_dependency_wait();  // the split kernel's partials are complete
  if (!early_trigger) ptx::launch_dependents();

  // Running state over the batches: max, sum of weights, weighted outputs.
  float m = -INFINITY, d = 0.f;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int i0 = 0; i0 < ns; i0 += kMergeBatch) {
    float li[kMergeBatch];
    float4 oi[kMergeBatch];
#pragma unroll
    for (int k = 0; k < kMergeBatch; ++k) {
      const int i = i0 + k;
      li[k] = i < ns ? lse[i] : -INFINITY;
      oi[k] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (i < ns && has_cols)
        oi[k] = *reinterpret_cast<const float4*>(po + static_cast<int64_t>(i) * DPAD + col);
    }
    float mb = m;
#pragma unroll
    for (int k = 0; k < kMergeBatch; ++k) mb = fmaxf(mb, li[k]);
    if (mb == -INFINITY) continue;  // nothing in this batch or before it
    const float rescale = exp2f(m - mb);  // exp2(-inf) = 0 for the first batch
    d *= rescale;
    acc.x *= rescale;
    acc.y *= rescale;
    acc.z *= rescale;
    acc.w *= rescale;
#pragma unroll
    for (int k = 0; k < kMergeBatch; ++k) {
      const float f = exp2f(li[k] - mb);  // 0 for an empty split
      d += f;
      acc.x += f * oi[k].x;
      acc.y += f * oi[k].y;
      acc.z += f * oi[k].z;
      acc.w += f * oi[k].w;
    }
    m = mb;
  }

  // The sink joins the denominator only; then normalise.
  float base = m;
  if (sinks != nullptr) {
    const float sink = sinks[h] * kLog2e;
    base = fmaxf(m, sink);
    if (base != -INFINITY) {
      const float a = exp2f(m - base);
      d = d * a + exp2f(sink - base);
      acc.x *= a;
      acc.y *= a;
      acc.z *= a;
      acc.w *= a;
    }
  }
  const float inv = d > 0.f ? 1.f / d : 0.f;
  const float a4[4] = {acc.x, acc.y, acc.z, acc.w};
#pragma unroll
  for (int e = 0; e < 4; ++e)
    if (has_cols && col + e < head_dim) yr[col + e] = ptx::from_float<T>(a4[e] * inv);
  if (lane == 0 && lse_out != nullptr)
    *lse_out = d > 0.f ? (base + log2f(d)) * kLn2 : -INFINITY;
}

}  // namespace fd
