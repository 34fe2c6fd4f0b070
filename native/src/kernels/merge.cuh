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

// Block-wide reduction in a fixed order: lanes by a fixed xor tree, then warps
// 0..7 in turn. `op` is max or sum.
template <typename Op>
__device__ __forceinline__ float block_reduce(float x, float* scratch, Op op) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = op(x, __shfl_xor_sync(0xffffffffu, x, o));
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float r = scratch[0];
#pragma unroll
  for (int w = 1; w < kMergeWarps; ++w) r = op(r, scratch[w]);
  return r;
}

template <typename T, int DPAD>
__global__ void __launch_bounds__(kMergeThreads) decode_merge_kernel(const DecodeParams p) {
  static_assert(DPAD % 4 == 0 && DPAD / 4 <= 32, "one float4 column group per lane");
  __shared__ float scratch[kMergeWarps];
  __shared__ __align__(16) float part[kMergeWarps][DPAD];

  ptx::grid_dependency_wait();      // the split kernel's partials are complete
  ptx::launch_dependents();         // let the next kernel in the stream get ready

  const int64_t row = blockIdx.x;
  const int b = static_cast<int>(row / p.num_heads);
  const int h = static_cast<int>(row - static_cast<int64_t>(b) * p.num_heads);
  const int ns = p.num_splits;
  const float* lse = p.partial_lse + row * ns;
  const float* po = p.partial_o + row * ns * DPAD;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  float mx = -INFINITY;
  for (int i = threadIdx.x; i < ns; i += kMergeThreads) mx = fmaxf(mx, lse[i]);
  float mall = block_reduce(mx, scratch, [](float a, float c) { return fmaxf(a, c); });
  float sink = -INFINITY;
  if (p.sinks != nullptr) {
    sink = p.sinks[h] * kLog2e;
    mall = fmaxf(mall, sink);
  }
  const float base = mall == -INFINITY ? 0.f : mall;
  float part_den = 0.f;
  for (int i = threadIdx.x; i < ns; i += kMergeThreads) part_den += exp2f(lse[i] - base);
  float den = block_reduce(part_den, scratch, [](float a, float c) { return a + c; });
  if (p.sinks != nullptr) den += exp2f(sink - base);

  // Warp w takes splits w, w + 8, ...; lane l the columns 4l .. 4l + 3.
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  if (lane * 4 < DPAD) {
#pragma unroll 4
    for (int i = warp; i < ns; i += kMergeWarps) {
      const float w = exp2f(lse[i] - base);
      const float4 o = *reinterpret_cast<const float4*>(po + static_cast<int64_t>(i) * DPAD + lane * 4);
      acc.x += w * o.x;
      acc.y += w * o.y;
      acc.z += w * o.z;
      acc.w += w * o.w;
    }
    *reinterpret_cast<float4*>(&part[warp][lane * 4]) = acc;
  }
  __syncthreads();
  const int col = threadIdx.x;
  if (col < p.head_dim) {
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kMergeWarps; ++w) sum += part[w][col];
    T* yr = static_cast<T*>(p.y) + b * p.y_stride_b + h * p.y_stride_h;
    yr[col] = ptx::from_float<T>(den > 0.f ? sum / den : 0.f);
  }
  if (col == 0 && p.lse != nullptr)
    p.lse[b * p.lse_stride_b + h * p.lse_stride_h] =
        den > 0.f ? (base + log2f(den)) * kLn2 : -INFINITY;
}

}  // namespace fd
