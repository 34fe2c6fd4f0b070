// The epilogue of a decode CTA: the warps' softmax states are combined in a
// fixed order through shared memory (bit-stable), then each row is written as
// y (and lse), or as a partial state (normalised output, log2-sum-exp) for the
// merge kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../kernel_params.h"
#include "mainloop.cuh"
#include "score_mods.cuh"

namespace fd {

// The final softmax normalisation of one output element from its (max, sum,
// unnormalised sum) in log2 units; joins the sink logit and writes y (and lse).
template <class Elem>
__device__ __forceinline__ void write_output(const fd_decode_params& c, const LaunchParams& lp,
                                             int b, int h, int col, float mall, float lsum,
                                             float acc) {
  const SinkJoined j = join_sink(mall, lsum, c.sinks, h);
  Elem::store_y(c.y, b * c.y_stride_b + h * c.y_stride_h + col,
                j.sum > 0.f ? acc * j.out_factor / j.sum : 0.f, lp);
  if (col == 0 && c.lse != nullptr)
    c.lse[b * c.lse_stride_b + h * c.lse_stride_h] =
        j.sum > 0.f ? (j.max + log2f(j.sum)) * kLn2 : -INFINITY;
}

// A row of a CTA whose source saw a page id or a length outside what the
// caller described: NaN everywhere it would write.
template <class Elem>
__device__ __forceinline__ void write_bad_row(const fd_decode_params& c, const LaunchParams& lp,
                                              int b, int h, int col, int64_t prow, int dpad,
                                              bool partials) {
  const float nan = __int_as_float(0x7fc00000);
  if (partials) {
    *reinterpret_cast<float4*>(&lp.partial_o[prow * dpad + col]) = make_float4(nan, nan, nan, nan);
    if (col == 0) lp.partial_lse[prow] = nan;
    return;
  }
  for (int e = 0; e < 4; ++e)
    if (col + e < c.head_dim) Elem::store_y(c.y, b * c.y_stride_b + h * c.y_stride_h + col + e, nan, lp);
  if (col == 0 && c.lse != nullptr) c.lse[b * c.lse_stride_b + h * c.lse_stride_h] = nan;
}

// Combines the warps' states and writes the CTA's rows. Each warp stores its
// max, sum and unscaled outputs per row; after one barrier each thread rescales
// the warps' pieces of its (row, 4 columns) to the row's max and sums them in
// warp order. (Scaling before the store cost a second barrier and a per-row
// pass before the sums could start.)
template <class Elem, class Tr, class Source>
__device__ __forceinline__ void run_epilogue(const RowState<Elem::template acc_tiles<Tr::kDpad>()>& rs,
                                             unsigned char* smem, const Source& src,
                                             const typename Elem::State& st,
                                             const fd_decode_params& c, const LaunchParams& lp,
                                             const CtaRows& cr, int split, int num_splits,
                                             int num_heads, bool write_partials,
                                             float* partial_o, float* partial_lse) {
  constexpr int DPAD = Tr::kDpad, WARPS = Tr::kWarps, NT = Elem::template acc_tiles<DPAD>();
  constexpr int OS = Tr::kOutStride;
  const int warp = cr.warp, gid = cr.gid, tid = cr.tid, nh = cr.nh;
  // Every warp is done with the ring the epilogue reuses (and a paged source
  // tells whether any warp saw a bad page id).
  bool bad = false;
  if constexpr (Source::kPaged)
    bad = __syncthreads_or(src.bad) != 0;
  else
    __syncthreads();
  float* sm_m = reinterpret_cast<float*>(smem);
  float* sm_l = sm_m + WARPS * kMaxGroupPerCta;
  float* sm_o = sm_l + WARPS * kMaxGroupPerCta;
  if constexpr (Elem::kKeysAsM) {
    // Thread (gid, t) holds heads 2t and 2t + 1 (every gid the same sums).
    if (gid == 0) {
      sm_m[warp * kMaxGroupPerCta + 2 * tid] = rs.m[0];
      sm_m[warp * kMaxGroupPerCta + 2 * tid + 1] = rs.m[1];
      sm_l[warp * kMaxGroupPerCta + 2 * tid] = rs.l[0];
      sm_l[warp * kMaxGroupPerCta + 2 * tid + 1] = rs.l[1];
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = 2 * tid + r;
      if (row < nh)
        Elem::template store_head<NT>(&sm_o[(warp * kMaxGroupPerCta + row) * OS], rs.o, r, gid);
    }
  } else {
    if (tid == 0) {
      sm_m[warp * kMaxGroupPerCta + gid] = rs.m[0];
      sm_m[warp * kMaxGroupPerCta + gid + 8] = rs.m[1];
      sm_l[warp * kMaxGroupPerCta + gid] = rs.l[0];
      sm_l[warp * kMaxGroupPerCta + gid + 8] = rs.l[1];
    }
    // Only the CTA's nh query rows are stored (GQA groups of 4 or 8 leave the
    // upper half of the mma tile empty).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = gid + r * 8;
      if (r * 8 >= nh) break;  // uniform over the CTA
      if (row < nh) Elem::template store_row<NT>(&sm_o[(warp * kMaxGroupPerCta + row) * OS], rs.o, r, tid);
    }
  }
  __syncthreads();

  const int64_t row_base = static_cast<int64_t>(cr.b) * num_heads;
  constexpr int C4 = DPAD / 4;
  const int nc = num_splits;
  for (int idx = threadIdx.x; idx < nh * C4; idx += Tr::kThreads) {
    const int row = idx / C4, col = (idx - row * C4) * 4;
    if (col >= c.head_dim) continue;
    const int h = cr.hq0 + row;
    const int64_t prow = (row_base + h) * nc + split;
    if (Source::kPaged && bad) {
      write_bad_row<Elem>(c, lp, cr.b, h, col, prow, DPAD, write_partials);
      continue;
    }
    // The row's state: the max over the warps, and the warps' sums and outputs
    // rescaled to it, in warp order (products rounded before the sums, so
    // the bits are those of scaling first).
    float mw[WARPS];
    float mall = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      mw[w] = sm_m[w * kMaxGroupPerCta + row];
      mall = fmaxf(mall, mw[w]);
    }
    float lsum = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      const float f = mw[w] == -INFINITY ? 0.f : exp2f(mw[w] - mall);
      lsum += mw[w] == -INFINITY ? 0.f : sm_l[w * kMaxGroupPerCta + row] * f;
      const float4 v = *reinterpret_cast<const float4*>(&sm_o[(w * kMaxGroupPerCta + row) * OS + col]);
      acc.x += __fmul_rn(v.x, f);
      acc.y += __fmul_rn(v.y, f);
      acc.z += __fmul_rn(v.z, f);
      acc.w += __fmul_rn(v.w, f);
    }
    acc = Elem::dequant_out(st, acc);
    if (write_partials) {
      // Columns past head_dim hold zeros; the merge never reads them.
      const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
      *reinterpret_cast<float4*>(&partial_o[prow * DPAD + col]) =
          make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
      if (col == 0) partial_lse[prow] = lsum > 0.f ? mall + log2f(lsum) : -INFINITY;
    } else {
      const float a4[4] = {acc.x, acc.y, acc.z, acc.w};
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (col + e < c.head_dim) write_output<Elem>(c, lp, cr.b, h, col + e, mall, lsum, a4[e]);
    }
  }
}

}  // namespace fd
