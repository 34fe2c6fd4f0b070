// The merge kernel: one CTA per (batch, query head) combines the num_splits
// partial states (normalised output, log2-sum-exp) with the log-sum-exp rule
// and writes y (and lse). Every reduction runs in a fixed order, so the bits
// do not depend on timing. All loads of a step are independent, so a long
// split list costs a few L2 round trips, not one per split.
#pragma once

#include <cuda_runtime.h>

#include "../kernel_params.h"
#include "decode_split.cuh"
#include "ptx.cuh"

namespace fd {

constexpr int kMergeWarps = 8;
constexpr int kMergeThreads = kMergeWarps * 32;

template <typename T, int DPAD>
__global__ void __launch_bounds__(kMergeThreads) decode_merge_kernel(const DecodeParams p) {
  static_assert(DPAD % 4 == 0 && DPAD / 4 <= 32, "one float4 column group per lane");
  __shared__ float warp_m[kMergeWarps], warp_d[kMergeWarps];
  __shared__ __align__(16) float part[kMergeWarps][DPAD];

  // Everything taken from the parameters is read before the wait (ptx::pin).
  const int64_t row = blockIdx.x;
  const int num_heads = ptx::pin(p.num_heads);
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
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const bool has_cols = lane * 4 < DPAD;

  ptx::grid_dependency_wait();  // the split kernel's partials are complete
  ptx::launch_dependents();     // let the next kernel in the stream get ready

  // Warp w folds splits w, w + 8, ... into one running state (max, sum, sum of
  // weighted outputs), lane l holding columns 4l .. 4l + 3. Loads of later
  // splits do not wait on earlier ones, so a few splits cost one round trip.
  float m = -INFINITY, d = 0.f;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
  for (int i = warp; i < ns; i += kMergeWarps) {
    const float li = lse[i];
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
    if (has_cols) o = *reinterpret_cast<const float4*>(po + static_cast<int64_t>(i) * DPAD + lane * 4);
    if (li == -INFINITY) continue;  // an empty split adds nothing
    const float mn = fmaxf(m, li);
    const float f_old = exp2f(m - mn), f_new = exp2f(li - mn);  // exp2(-inf) = 0
    d = d * f_old + f_new;
    acc.x = acc.x * f_old + f_new * o.x;
    acc.y = acc.y * f_old + f_new * o.y;
    acc.z = acc.z * f_old + f_new * o.z;
    acc.w = acc.w * f_old + f_new * o.w;
    m = mn;
  }
  if (lane == 0) {
    warp_m[warp] = m;
    warp_d[warp] = d;
  }
  if (has_cols) *reinterpret_cast<float4*>(&part[warp][lane * 4]) = acc;
  __syncthreads();

  // Warps 0..7 in order, then the sink, then normalise.
  float mall = -INFINITY;
#pragma unroll
  for (int w = 0; w < kMergeWarps; ++w) mall = fmaxf(mall, warp_m[w]);
  float sink = -INFINITY;
  if (sinks != nullptr) {
    sink = sinks[h] * kLog2e;
    mall = fmaxf(mall, sink);
  }
  const float base = mall == -INFINITY ? 0.f : mall;
  float f[kMergeWarps];
  float den = 0.f;
#pragma unroll
  for (int w = 0; w < kMergeWarps; ++w) {
    f[w] = exp2f(warp_m[w] - base);
    den += warp_d[w] * f[w];
  }
  if (sinks != nullptr) den += exp2f(sink - base);
  const int col = threadIdx.x;
  if (col < head_dim) {
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kMergeWarps; ++w) sum += part[w][col] * f[w];
    yr[col] = ptx::from_float<T>(den > 0.f ? sum / den : 0.f);
  }
  if (col == 0 && lse_out != nullptr)
    *lse_out = den > 0.f ? (base + log2f(den)) * kLn2 : -INFINITY;
}

}  // namespace fd
