// Score modifiers, in one place: which keys a query attends to (the sequence's
// length, a sliding window, StreamingLLM sink tokens), how a raw score becomes
// a logit (scale, soft-cap, ALiBi), and how a per-head sink logit joins the
// softmax denominator.
#pragma once

#include <cuda_runtime.h>

#include "../cta_shape.h"
#include "flashdecoding/flashdecoding.h"
#include "ptx.cuh"

namespace fd {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// The keys one CTA attends to: its chunk [chunk0, chunk0 + chunk_len) of the
// attended set of a sequence of length L. With a window W the attended set is
// [0, sink) u [L - W, L) (the sink tokens first), else [0, L): at most two
// intervals, A = [a0, a1) and B = [b0, b1), streamed as one run of tiles, A's
// first. Without sink tokens A is empty and B is [max(chunk0, L - W), chunk end).
struct KeySpan {
  int a0 = 0, a1 = 0, a_tiles = 0;
  int b0 = 0, b1 = 0;
  int tiles = 0;  // a_tiles + B's tiles

  // All arithmetic stays below INT32_MAX: L <= k_len, and chunk0 < k_len.
  __device__ __forceinline__ KeySpan(int seq_len, int window, int sink, int chunk0,
                                     int chunk_len) {
    int lo = window > 0 ? max(0, seq_len - window) : 0;
    if (lo <= sink) lo = 0;  // the window reaches the sinks: one interval
    const int chunk_end = chunk0 >= seq_len ? chunk0 : chunk0 + min(chunk_len, seq_len - chunk0);
    if (lo > 0 && sink > 0) {
      a0 = chunk0;
      a1 = max(chunk0, min(chunk_end, sink));
      a_tiles = (a1 - a0 + kTileKeys - 1) / kTileKeys;
    }
    b0 = max(chunk0, lo);
    b1 = chunk_end;
    const int b_tiles = b1 > b0 ? (b1 - b0 + kTileKeys - 1) / kTileKeys : 0;
    tiles = a_tiles + b_tiles;
  }
  // First key of the CTA's tile t, and the end of the interval it lies in.
  __device__ __forceinline__ int key0(int t) const {
    return (t < a_tiles ? a0 : b0 - a_tiles * kTileKeys) + t * kTileKeys;
  }
  __device__ __forceinline__ int end(int t) const { return t < a_tiles ? a1 : b1; }
};

// tanh(x) = 1 - 2 / (e^2x + 1) from the hardware's ex2 and rcp: within about
// 4e-7 of tanh (absolute; ex2 and rcp are each good to about 2^-22 relative),
// exactly -1 / 1 once e^2x under- or overflows, NaN for NaN. tanhf's range
// split and polynomial, after an IEEE division by the cap, took about three
// times the instructions on every score of a soft-capped model's every tile.
__device__ __forceinline__ float tanh_fast(float x) {
  const float e = ptx::exp2_ftz(x * (2.f * kLog2e));
  return 1.f - 2.f * ptx::rcp_ftz(e + 1.f);
}

// The logit of a raw score under soft-cap (cap * tanh(logit / cap), the
// division as a product with cap_inv = 1 / cap) and ALiBi, natural units, for
// query row `row` of the CTA (head hq0 + row; rows >= nh are padding) at key
// `key` of a sequence of length seq_len. The slope is read per score (an L1
// hit): held in registers across the tile loop it made the 8-warp 16-bit
// kernels spill.
__device__ __forceinline__ float modified_logit(float logit, const fd_decode_params& c,
                                                float cap_inv, int row, int nh, int hq0,
                                                int key, int seq_len) {
  if (c.logits_soft_cap > 0.f) logit = c.logits_soft_cap * tanh_fast(logit * cap_inv);
  if (c.alibi_slopes != nullptr && row < nh)
    logit += c.alibi_slopes[hq0 + row] * static_cast<float>(key - (seq_len - 1));
  return logit;
}

// A row's softmax state (max in log2 units, sum of weights) with the sink
// logit of its head joined to the denominator: returns the scaled sum and
// max, and the factor the row's weighted outputs take.
struct SinkJoined {
  float max, sum, out_factor;
};
__device__ __forceinline__ SinkJoined join_sink(float mall, float lsum, const float* sinks,
                                                int h) {
  SinkJoined r{mall, lsum, 1.f};
  if (sinks != nullptr) {
    const float sk = sinks[h] * kLog2e;
    const float mn = fmaxf(mall, sk);
    r.out_factor = mall == -INFINITY ? 0.f : exp2f(mall - mn);
    r.sum = lsum * r.out_factor + exp2f(sk - mn);
    r.max = mn;
  }
  return r;
}

}  // namespace fd
