// The merge kernel: one CTA per (batch, query head) combines the num_splits
// partial states (normalised output, log2-sum-exp) with the log-sum-exp rule,
// always in split order, and writes y (and lse).
#pragma once

#include <cuda_runtime.h>

#include "../kernel_params.h"
#include "decode_split.cuh"
#include "ptx.cuh"

namespace fd {

template <typename T, int DPAD>
__global__ void __launch_bounds__(DPAD) decode_merge_kernel(const DecodeParams p) {
  ptx::grid_dependency_wait();  // the split kernel's partials must be complete
  const int64_t row = blockIdx.x;
  const int b = static_cast<int>(row / p.num_heads);
  const int h = static_cast<int>(row - static_cast<int64_t>(b) * p.num_heads);
  const int ns = p.num_splits;
  const float* lse = p.partial_lse + row * ns;
  const float* po = p.partial_o + row * ns * DPAD;

  float mall = -INFINITY;
  for (int i = 0; i < ns; ++i) mall = fmaxf(mall, lse[i]);
  float sink = -INFINITY;
  if (p.sinks != nullptr) {
    sink = p.sinks[h] * kLog2e;
    mall = fmaxf(mall, sink);
  }
  const float base = mall == -INFINITY ? 0.f : mall;
  float den = 0.f;
  for (int i = 0; i < ns; ++i) den += exp2f(lse[i] - base);
  if (p.sinks != nullptr) den += exp2f(sink - base);

  const int col = threadIdx.x;
  if (col < p.head_dim) {
    float acc = 0.f;
    for (int i = 0; i < ns; ++i) acc += exp2f(lse[i] - base) * po[i * DPAD + col];
    T* yr = static_cast<T*>(p.y) + b * p.y_stride_b + h * p.y_stride_h;
    yr[col] = ptx::from_float<T>(den > 0.f ? acc / den : 0.f);
  }
  if (col == 0 && p.lse != nullptr)
    p.lse[b * p.lse_stride_b + h * p.lse_stride_h] =
        den > 0.f ? (base + log2f(den)) * kLn2 : -INFINITY;
}

}  // namespace fd
