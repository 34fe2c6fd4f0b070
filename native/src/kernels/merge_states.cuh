// fd_merge_states: combines N partial attention results (y_i, lse_i) of the
// same queries over disjoint key sets. One warp per (batch, head) row; lane l
// holds columns l, l + 32, ... (head_dim <= 256: at most 8 per lane). The
// states are summed in index order, so the bits do not depend on timing.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "flashdecoding/flashdecoding.h"
#include "ptx.cuh"

namespace fd {

constexpr int kMergeStatesRowsPerCta = 4;
constexpr int kMergeStatesMaxColsPerLane = 8;  // 256 columns / 32 lanes

template <typename T>
__device__ __forceinline__ float load_state(const T* p) {
  if constexpr (std::is_same<T, float>::value)
    return *p;
  else
    return ptx::to_float(*p);
}
template <typename T>
__device__ __forceinline__ void store_state(T* p, float x) {
  if constexpr (std::is_same<T, float>::value)
    *p = x;
  else
    *p = ptx::from_float<T>(x);
}

template <typename T>
__global__ void __launch_bounds__(kMergeStatesRowsPerCta * 32)
    merge_states_kernel(const fd_merge_params p) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t rows = static_cast<int64_t>(p.batch_size) * p.num_heads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMergeStatesRowsPerCta + warp;
  if (row >= rows) return;
  const int b = static_cast<int>(row / p.num_heads);
  const int h = static_cast<int>(row - static_cast<int64_t>(b) * p.num_heads);
  const int n = p.num_states, d = p.head_dim;
  const float* lse = p.lse + b * p.lse_stride_b + h * p.lse_stride_h;
  const T* st = static_cast<const T*>(p.states) + b * p.state_stride_b + h * p.state_stride_h;

  // The largest lse (natural log), and whether any is NaN.
  float m = -INFINITY;
  bool nan_seen = false;
  for (int i = lane; i < n; i += 32) {
    const float x = lse[i * p.lse_stride_n];
    m = fmaxf(m, x);
    nan_seen |= x != x;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  nan_seen = __any_sync(0xffffffffu, nan_seen);

  float acc[kMergeStatesMaxColsPerLane];
#pragma unroll
  for (int j = 0; j < kMergeStatesMaxColsPerLane; ++j) acc[j] = 0.f;
  float den = 0.f;
  if (m != -INFINITY && !nan_seen) {
    for (int i = 0; i < n; ++i) {  // index order: bit-stable
      const float li = lse[i * p.lse_stride_n];
      if (li == -INFINITY) continue;  // no keys: weighs nothing
      const float w = expf(li - m);
      den += w;
      const T* yi = st + i * p.state_stride_n;
#pragma unroll
      for (int j = 0; j < kMergeStatesMaxColsPerLane; ++j) {
        const int col = lane + 32 * j;
        if (col < d) acc[j] += w * load_state(yi + col);
      }
    }
  }
  const float nan = __int_as_float(0x7fc00000);
  const float inv = den > 0.f ? 1.f / den : 0.f;
  T* y = static_cast<T*>(p.y) + b * p.y_stride_b + h * p.y_stride_h;
#pragma unroll
  for (int j = 0; j < kMergeStatesMaxColsPerLane; ++j) {
    const int col = lane + 32 * j;
    if (col < d) store_state(y + col, nan_seen ? nan : acc[j] * inv);
  }
  if (lane == 0 && p.lse_out != nullptr)
    p.lse_out[b * p.lse_out_stride_b + h * p.lse_out_stride_h] =
        nan_seen ? nan : den > 0.f ? m + logf(den) : -INFINITY;
}

}  // namespace fd
