// The merge kernels: the num_splits partial states of a (batch, query head)
// row (normalised output, log2-sum-exp) combined with the log-sum-exp rule into
// y (and lse). Lane l holds columns 4l .. 4l + 3 of each 128-column block.
//
// A warp folds a run of splits batch by batch: it loads a batch at once (one
// round trip), takes the batch's max, then sums the weighted outputs in split
// order, so the bits do not depend on timing.
//   decode_merge_kernel       one warp per row, every split in order: up to 16
//                             splits (one batch), and batch-invariant mode
//                             (whose bits must not depend on the split count)
//   decode_merge_wide_kernel  one CTA of 8 warps per row, each folding a
//                             contiguous eighth of a long split list, then the
//                             warps combined in warp order: 8 round trips in
//                             parallel instead of in a row
// A NaN partial (a paged CTA that saw a bad page id or length) makes the row NaN.
#pragma once

#include <cuda_runtime.h>

#include "../kernel_params.h"
#include "ptx.cuh"
#include "score_mods.cuh"

namespace fd {

constexpr int kMergeRowsPerCta = 4;  // one warp per row
constexpr int kMergeThreads = kMergeRowsPerCta * 32;
constexpr int kWideMergeWarps = 8;
constexpr int kWideMergeThreads = kWideMergeWarps * 32;
// Split lists longer than this go to the wide merge (outside batch-invariant mode).
constexpr int kNarrowMergeSplits = 16;

// A row's merge state: max (log2), sum of weights, weighted outputs.
template <int NV>
struct MergeState {
  float m = -INFINITY, d = 0.f;
  bool nan_seen = false;
  float4 acc[NV];
  __device__ __forceinline__ MergeState() {
#pragma unroll
    for (int g = 0; g < NV; ++g) acc[g] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
};

template <int DPAD>
constexpr int merge_groups() {
  return (DPAD + 127) / 128;  // float4 column groups per lane
}

// Folds splits [i_begin, i_end) of one row into st, in split order.
template <int DPAD>
__device__ __forceinline__ void fold_splits(MergeState<merge_groups<DPAD>()>& st, const float* lse,
                                            const float* po, int i_begin, int i_end, int lane) {
  constexpr int NV = merge_groups<DPAD>();
  constexpr int kBatch = NV == 1 ? 16 : 8;  // splits loaded at once
  for (int i0 = i_begin; i0 < i_end; i0 += kBatch) {
    float li[kBatch];
    float4 oi[kBatch][NV];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int i = i0 + k;
      li[k] = i < i_end ? lse[i] : -INFINITY;
#pragma unroll
      for (int g = 0; g < NV; ++g) {
        const int col = (g * 32 + lane) * 4;
        oi[k][g] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i < i_end && col < DPAD)
          oi[k][g] = *reinterpret_cast<const float4*>(po + static_cast<int64_t>(i) * DPAD + col);
      }
    }
    float mb = st.m;
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      mb = fmaxf(mb, li[k]);
      st.nan_seen |= li[k] != li[k];
    }
    if (mb == -INFINITY) continue;  // nothing in this batch or before it
    const float rescale = exp2f(st.m - mb);  // exp2(-inf) = 0 for the first batch
    st.d *= rescale;
#pragma unroll
    for (int g = 0; g < NV; ++g) {
      st.acc[g].x *= rescale;
      st.acc[g].y *= rescale;
      st.acc[g].z *= rescale;
      st.acc[g].w *= rescale;
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const float f = exp2f(li[k] - mb);  // 0 for an empty split
      st.d += f;
#pragma unroll
      for (int g = 0; g < NV; ++g) {
        st.acc[g].x += f * oi[k][g].x;
        st.acc[g].y += f * oi[k][g].y;
        st.acc[g].z += f * oi[k][g].z;
        st.acc[g].w += f * oi[k][g].w;
      }
    }
    st.m = mb;
  }
}

// The sink logit joins the denominator only; then y (this lane's columns of
// every group) and, from lane 0, lse.
template <typename T, int DPAD>
__device__ __forceinline__ void finish_row(MergeState<merge_groups<DPAD>()>& st, const float* sinks,
                                           int h, T* yr, float* lse_out, int head_dim, int lane) {
  constexpr int NV = merge_groups<DPAD>();
  float base = st.m;
  if (sinks != nullptr) {
    const float sink = sinks[h] * kLog2e;
    base = fmaxf(st.m, sink);
    if (base != -INFINITY) {
      const float f = exp2f(st.m - base);
      st.d = st.d * f + exp2f(sink - base);
#pragma unroll
      for (int g = 0; g < NV; ++g) {
        st.acc[g].x *= f;
        st.acc[g].y *= f;
        st.acc[g].z *= f;
        st.acc[g].w *= f;
      }
    }
  }
  const float nan = __int_as_float(0x7fc00000);
  const float inv = st.d > 0.f ? 1.f / st.d : 0.f;
#pragma unroll
  for (int g = 0; g < NV; ++g) {
    const int col = (g * 32 + lane) * 4;
    const float a4[4] = {st.acc[g].x, st.acc[g].y, st.acc[g].z, st.acc[g].w};
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (col < DPAD && col + e < head_dim)
        yr[col + e] = ptx::from_float<T>(st.nan_seen ? nan : a4[e] * inv);
  }
  if (lane == 0 && lse_out != nullptr)
    *lse_out = st.nan_seen ? nan : st.d > 0.f ? (base + log2f(st.d)) * kLn2 : -INFINITY;
}

// Where a row's inputs and outputs are, read from the parameters before the
// PDL wait (ptx::pin) so their constant cache misses overlap it.
template <typename T, int DPAD>
struct MergeRow {
  int h, ns, head_dim;
  const float* lse;
  const float* po;
  T* yr;
  const float* sinks;
  float* lse_out;
  __device__ __forceinline__ MergeRow(const DecodeArgs& a, int64_t row) {
    const fd_decode_params& c = a.call;
    const LaunchParams& lp = a.launch;
    const int num_heads = ptx::pin(c.num_heads);
    const int b = static_cast<int>(row / num_heads);
    h = static_cast<int>(row - static_cast<int64_t>(b) * num_heads);
    ns = ptx::pin(lp.num_splits);
    head_dim = ptx::pin(c.head_dim);
    lse = ptx::pin(lp.partial_lse + row * ns);
    po = ptx::pin(lp.partial_o + row * ns * DPAD);
    yr = ptx::pin(static_cast<T*>(c.y) + b * c.y_stride_b + h * c.y_stride_h);
    sinks = ptx::pin(c.sinks);
    lse_out = ptx::pin(c.lse != nullptr ? c.lse + b * c.lse_stride_b + h * c.lse_stride_h : nullptr);
  }
};

// The next kernel in the stream may be scheduled: before the wait (the
// default, see decide_launch) its CTAs take the split CTAs' places as they
// leave, and start their prefetch then, not after this merge.
__device__ __forceinline__ void merge_dependency_wait(const LaunchParams& lp) {
  const bool early_trigger = ptx::pin(lp.merge_early_trigger) != 0;
  if (early_trigger) ptx::launch_dependents();
  ptx::grid_dependency_wait();  // the split kernel's partials are complete
  if (!early_trigger) ptx::launch_dependents();
}

template <typename T, int DPAD>
__global__ void __launch_bounds__(kMergeThreads) decode_merge_kernel(const DecodeArgs a) {
  static_assert(DPAD % 4 == 0, "float4 column groups");
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t rows = static_cast<int64_t>(ptx::pin(a.call.batch_size)) * a.call.num_heads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMergeRowsPerCta + warp;
  if (row >= rows) return;  // the last CTA's spare warps
  const MergeRow<T, DPAD> r(a, row);
  merge_dependency_wait(a.launch);
  MergeState<merge_groups<DPAD>()> st;
  fold_splits<DPAD>(st, r.lse, r.po, 0, r.ns, lane);
  finish_row<T, DPAD>(st, r.sinks, r.h, r.yr, r.lse_out, r.head_dim, lane);
}

template <typename T, int DPAD>
__global__ void __launch_bounds__(kWideMergeThreads) decode_merge_wide_kernel(const DecodeArgs a) {
  constexpr int NV = merge_groups<DPAD>();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const MergeRow<T, DPAD> r(a, blockIdx.x);
  merge_dependency_wait(a.launch);
  // Warp w folds splits [w * per, (w + 1) * per).
  const int per = (r.ns + kWideMergeWarps - 1) / kWideMergeWarps;
  const int i0 = min(r.ns, warp * per), i1 = min(r.ns, i0 + per);
  MergeState<NV> st;
  fold_splits<DPAD>(st, r.lse, r.po, i0, i1, lane);

  __shared__ float sm_m[kWideMergeWarps], sm_d[kWideMergeWarps];
  __shared__ int sm_nan[kWideMergeWarps];
  __shared__ float4 sm_acc[kWideMergeWarps][NV * 32];
  if (lane == 0) {
    sm_m[warp] = st.m;
    sm_d[warp] = st.d;
    sm_nan[warp] = st.nan_seen ? 1 : 0;
  }
#pragma unroll
  for (int g = 0; g < NV; ++g) sm_acc[warp][g * 32 + lane] = st.acc[g];
  __syncthreads();
  if (warp != 0) return;
  // Warp 0 combines the warps' states in warp order, rescaled to their max.
  MergeState<NV> all;
#pragma unroll
  for (int w = 0; w < kWideMergeWarps; ++w) {
    all.m = fmaxf(all.m, sm_m[w]);
    all.nan_seen |= sm_nan[w] != 0;
  }
  if (all.m != -INFINITY) {
#pragma unroll
    for (int w = 0; w < kWideMergeWarps; ++w) {
      const float f = sm_m[w] == -INFINITY ? 0.f : exp2f(sm_m[w] - all.m);
      all.d += sm_d[w] * f;
#pragma unroll
      for (int g = 0; g < NV; ++g) {
        const float4 v = sm_acc[w][g * 32 + lane];
        all.acc[g].x += v.x * f;
        all.acc[g].y += v.y * f;
        all.acc[g].z += v.z * f;
        all.acc[g].w += v.w * f;
      }
    }
  }
  finish_row<T, DPAD>(all, r.sinks, r.h, r.yr, r.lse_out, r.head_dim, lane);
}

}  // namespace fd
