// KV elements: how a stored K/V element becomes a tensor-core operand, and
// everything that follows from it (how q is loaded to match, how a raw score
// becomes a log2 logit, which output column an accumulator holds, how y is
// stored).
//
//   Identity<T>  q, k, v, y all T (f16 or bf16): K and V tiles go to the mma
//                as they are (ldmatrix, ldmatrix.trans).
//   Fp8<E5M2>    k, v in fp8 (e4m3 or e5m2), q and y f16 or bf16 (chosen per
//                call): tiles are converted to f16 in registers (exact), the
//                products run in f16 with f32 accumulators (P rounded to f16
//                once), k_scale joins the score scale and v_scale the output
//                normalisation.
//
// Fragments (m16n8k16): thread (gid = lane / 4, t = lane % 4) holds rows gid
// and gid + 8 of A and C, column pair 2t of C.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../kernel_params.h"
#include "ptx.cuh"
#include "traits.cuh"

namespace fd {

template <typename T>
__device__ __forceinline__ uint32_t pack_bits(T lo, T hi) {
  uint16_t a, b;
  memcpy(&a, &lo, 2);
  memcpy(&b, &hi, 2);
  return static_cast<uint32_t>(a) | (static_cast<uint32_t>(b) << 16);
}

// P goes into P.V as hi + lo halves: one rounding of P to bf16 alone costs up
// to 2^-9 of relative error, which an output with cancellation magnifies; the
// second mma is nearly free in a kernel bound by HBM.
template <typename M>
__device__ __forceinline__ void p_fragments(const float (&s)[2][4], uint32_t (&a_hi)[4],
                                            uint32_t (&a_lo)[4]) {
  ptx::split_pack<M>(s[0][0], s[0][1], a_hi[0], a_lo[0]);
  ptx::split_pack<M>(s[0][2], s[0][3], a_hi[1], a_lo[1]);
  ptx::split_pack<M>(s[1][0], s[1][1], a_hi[2], a_lo[2]);
  ptx::split_pack<M>(s[1][2], s[1][3], a_hi[3], a_lo[3]);
}

// s += t: the second accumulator chain of a tile's scores (see Identity::qk).
__device__ __forceinline__ void add_chain(float (&s)[2][4], const float (&t)[2][4]) {
#pragma unroll
  for (int n = 0; n < 2; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] += t[n][e];
}

template <typename T>
struct Identity {
  static constexpr int kKvBytes = 2;
  static constexpr bool kFp8 = false;
  static constexpr bool kKeysAsM = false;  // heads as M (kv_element_km.cuh: keys)
  static constexpr bool kPairTiles = false;  // one tile per softmax step (mainloop.cuh)
  template <int DPAD>
  static constexpr int acc_tiles() {  // 8-column output tiles per thread
    return DPAD / 8;
  }
  using Mma = ptx::Mma<T>;
  using Out = T;

  // Per CTA: nothing beyond the launch's scale.
  struct State {
    float scale_log2, scale;
  };
  __device__ __forceinline__ static State state(const fd_decode_params& c, const LaunchParams& lp,
                                                int) {
    return State{ptx::pin(lp.scale_log2), c.scale};
  }
  __device__ __forceinline__ static void head_scales(State&, const fd_decode_params&,
                                                     const LaunchParams&, int) {}

  // Query rows hq0 .. hq0 + nh - 1 as A fragments, one element at a time (any
  // head_dim, stride or alignment); rows >= nh and columns >= D are 0.
  template <int KSTEPS>
  __device__ __forceinline__ static void q_elements(uint32_t (&qf)[KSTEPS][4],
                                                    const fd_decode_params& c, int b, int hq0,
                                                    int nh, int gid, int tid) {
    const T* qb = static_cast<const T*>(c.q) + b * c.q_stride_b;
    const T zero = ptx::from_float<T>(0.f);
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = gid + (i & 1) * 8;
        const int col = ks * 16 + tid * 2 + (i >> 1) * 8;
        const T* qr = qb + (hq0 + row) * c.q_stride_h;
        const bool rv = row < nh;
        const T lo_v = rv && col < c.head_dim ? qr[col] : zero;
        const T hi_v = rv && col + 1 < c.head_dim ? qr[col + 1] : zero;
        qf[ks][i] = pack_bits(lo_v, hi_v);
      }
  }

  // The same from 16-byte loads staged through `sq` (a free ring slot of this
  // warp) and ldmatrix. The element loads are 64 two-byte loads per thread, up
  // to 8 rows per warp instruction: measured 0.5-1.6% slower on split and
  // D = 64 rows, and on one H100 1 us slower at K = 512 (docs/RESULTS.md).
  template <class Tr, int KSTEPS>
  __device__ __forceinline__ static void q_staged(uint32_t (&qf)[KSTEPS][4], unsigned char* sq,
                                                  const fd_decode_params& c, int b, int hq0,
                                                  int nh, int lane) {
    using Tile = typename Tr::Tile;
    const T* qb = static_cast<const T*>(c.q) + b * c.q_stride_b + hq0 * c.q_stride_h;
    constexpr int kChunks = Tr::kDpad / 8;
    constexpr int kPerLane = (kMaxGroupPerCta * kChunks + 31) / 32;
    const int head_dim = c.head_dim;
    const int64_t q_stride_h = c.q_stride_h;
    uint4 qv[kPerLane];
#pragma unroll
    for (int it = 0; it < kPerLane; ++it) {  // every load first: one latency
      const int i = lane + it * 32, row = i / kChunks, cc = i % kChunks;
      qv[it] = make_uint4(0u, 0u, 0u, 0u);
      if (row < nh && cc * 8 < head_dim)
        qv[it] = *reinterpret_cast<const uint4*>(qb + row * q_stride_h + cc * 8);
    }
#pragma unroll
    for (int it = 0; it < kPerLane; ++it) {
      const int i = lane + it * 32, row = i / kChunks, cc = i % kChunks;
      if (row < kMaxGroupPerCta) *reinterpret_cast<uint4*>(sq + Tile::chunk_offset(row, cc)) = qv[it];
    }
    __syncwarp();
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks)
      ptx::ldmatrix_x4(qf[ks], sq + Tile::chunk_offset((lane & 7) + ((lane >> 3) & 1) * 8,
                                                       ks * 2 + (lane >> 4)));
    __syncwarp();
  }

  // S = Q K^T for one 16-key tile: two 8-key column tiles. From D = 80 on,
  // the even and the odd k-steps accumulate apart and are added at the end:
  // two dependent mma chains of KSTEPS / 2 instead of one of KSTEPS, which a
  // warp alone on its scheduler otherwise waits out tile after tile (H200,
  // docs/RESULTS.md: 32/32 D96 B4 K4096 71.4 -> 60.0 us, fp8 rows 3-6%
  // faster); at D = 64 the 8 adds cost more than the shorter chain saves (3.8%
  // slower on 64/8 D64 B16 K8192).
  template <class Tr, int KSTEPS>
  __device__ __forceinline__ static void qk(float (&s)[2][4], const uint32_t (&qf)[KSTEPS][4],
                                            const unsigned char* sk, int lane) {
    using Tile = typename Tr::Tile;
    constexpr bool kTwoChains = KSTEPS > 4;
    float t[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      uint32_t kb[4];
      ptx::ldmatrix_x4(kb, sk + Tile::chunk_offset((lane >> 4) * 8 + (lane & 7),
                                                   ks * 2 + ((lane >> 3) & 1)));
      float (&d)[2][4] = kTwoChains && (ks & 1) ? t : s;
      Mma::run(d[0], qf[ks], kb[0], kb[1]);
      Mma::run(d[1], qf[ks], kb[2], kb[3]);
    }
    if constexpr (kTwoChains) add_chain(s, t);
  }

  // O += P V for one tile; P's accumulator layout is already the A layout.
  template <class Tr, int NT>
  __device__ __forceinline__ static void pv(float (&o)[NT][4], const float (&s)[2][4],
                                            const unsigned char* sv, int lane) {
    using Tile = typename Tr::Tile;
    uint32_t a_hi[4], a_lo[4];
    p_fragments<T>(s, a_hi, a_lo);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t vb[4];
      ptx::ldmatrix_x4_trans(vb, sv + Tile::chunk_offset(((lane >> 3) & 1) * 8 + (lane & 7),
                                                         np * 2 + (lane >> 4)));
      Mma::run(o[2 * np], a_hi, vb[0], vb[1]);
      Mma::run(o[2 * np + 1], a_hi, vb[2], vb[3]);
      Mma::run(o[2 * np], a_lo, vb[0], vb[1]);
      Mma::run(o[2 * np + 1], a_lo, vb[2], vb[3]);
    }
  }

  // A raw score of row gid + 8 * r as a log2 logit (no modifiers) ...
  __device__ __forceinline__ static float log2_score(const State& st, float s, int) {
    return s * st.scale_log2;
  }
  // ... and as a natural-units logit for the modifiers.
  __device__ __forceinline__ static float logit(const State& st, float s, int) {
    return s * st.scale;
  }

  // This thread's outputs of row gid + 8 * r into a row of floats, at their columns.
  template <int NT>
  __device__ __forceinline__ static void store_row(float* dst, const float (&o)[NT][4], int r,
                                                   int tid) {
#pragma unroll
    for (int n = 0; n < NT; ++n)
      *reinterpret_cast<float2*>(&dst[n * 8 + tid * 2]) = make_float2(o[n][2 * r], o[n][2 * r + 1]);
  }

  // The value an output column's weighted sum stands for (no dequantisation).
  __device__ __forceinline__ static float4 dequant_out(const State&, float4 acc) { return acc; }

  __device__ __forceinline__ static void store_y(void* y, int64_t i, float x, const LaunchParams&) {
    static_cast<T*>(y)[i] = ptx::from_float<T>(x);
  }
};

template <bool E5M2>
struct Fp8 {
  static constexpr int kKvBytes = 1;
  static constexpr bool kFp8 = true;
  static constexpr bool kKeysAsM = false;
  static constexpr bool kPairTiles = false;
  template <int DPAD>
  static constexpr int acc_tiles() {
    return DPAD / 8;
  }
  using Mma = ptx::Mma<__half>;

  struct State {
    float score_log2, score;  // scale (log2 / natural) times k_scale
    float v_scale;
    float q_inv[2];  // 2^-shift of rows gid and gid + 8 (see q_elements)
  };
  // From the launch's per-tensor scales; the per-head ones are device data,
  // read by head_scales() after the PDL wait.
  __device__ __forceinline__ static State state(const fd_decode_params& c, const LaunchParams& lp,
                                                int) {
    return State{lp.scale_log2 * lp.k_scale, c.scale * lp.k_scale, lp.v_scale, {1.f, 1.f}};
  }
  __device__ __forceinline__ static void head_scales(State& st, const fd_decode_params& c,
                                                     const LaunchParams& lp, int kvh) {
    if (c.k_scales != nullptr) {
      const float ks = c.k_scales[kvh];
      st.score_log2 = lp.scale_log2 * ks;
      st.score = c.scale * ks;
    }
    if (c.v_scales != nullptr) st.v_scale = c.v_scales[kvh];
  }

  __device__ __forceinline__ static float q_value(uint16_t bits, bool bf16) {
    return bf16 ? __uint_as_float(static_cast<uint32_t>(bits) << 16)
                : __half2float(__ushort_as_half(bits));
  }

  // One query row as this thread's f16 pairs, in the k order the K fragments
  // below imply: pairs[ks][i] holds physical columns 16 ks + 4t + 2i, +1, the
  // row scaled by the power of two that brings its largest |q| into
  // [2^14, 2^15), so a bf16 q keeps its precision in f16 (bf16's 8 mantissa
  // bits fit f16's 11; only elements over 2^28 times smaller than the row's
  // largest lose bits). Returns the inverse scale, which the score takes back
  // in f32. Columns >= D and a row that is not valid are 0.
  //
  // Every load is unconditional (a column past the row reads the row's last
  // element, a row that is not valid reads `row`, which must be a q row) and
  // the bits stay in registers for the second pass: one load latency per row.
  // Loads behind `if (col < head_dim)` compiled to a branch around each load
  // and its use, one round trip per element (docs/RESULTS.md: fp8 start-up).
  // All lanes of the warp must call it (shuffles over the row's 4 lanes).
  template <int KSTEPS>
  __device__ __forceinline__ static float q_row_pairs(uint32_t (&pairs)[KSTEPS][2],
                                                      const unsigned char* row, bool valid,
                                                      int head_dim, int tid, bool bf16) {
    const uint16_t* q16 = reinterpret_cast<const uint16_t*>(row);
    uint16_t bits[KSTEPS][4];
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int col = ks * 16 + tid * 4 + j;
        const uint16_t v = q16[col < head_dim ? col : head_dim - 1];
        bits[ks][j] = valid && col < head_dim ? v : uint16_t{0};
      }
    float mx = 0.f;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks)
#pragma unroll
      for (int j = 0; j < 4; ++j) mx = fmaxf(mx, fabsf(q_value(bits[ks][j], bf16)));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    int shift = 0;
    if (mx > 0.f && mx <= 3.4e38f) {
      const int e = static_cast<int>((__float_as_uint(mx) >> 23) & 0xffu) - 127;
      shift = min(max(14 - e, -126), 64);
    }
    const float q_scale = __uint_as_float(static_cast<uint32_t>(shift + 127) << 23);
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks)
#pragma unroll
      for (int i = 0; i < 2; ++i)
        pairs[ks][i] = ptx::Mma<__half>::pack(q_value(bits[ks][2 * i], bf16) * q_scale,
                                              q_value(bits[ks][2 * i + 1], bf16) * q_scale);
    return __uint_as_float(static_cast<uint32_t>(127 - shift) << 23);
  }

  // Query rows as f16 A fragments whose k index is permuted to match the K
  // fragments below: logical columns 2t, 2t+1 / 2t+8, 2t+9 of k-step ks hold
  // physical columns 16ks + 4t + {0,1} / {2,3} (q_row_pairs); rows gid and
  // gid + 8 are A's rows gid and gid + 8.
  template <int KSTEPS>
  __device__ __forceinline__ static void q_elements(uint32_t (&qf)[KSTEPS][4], State& st,
                                                    const fd_decode_params& c,
                                                    const LaunchParams& lp, int b, int hq0,
                                                    int nh, int gid, int tid) {
    const bool bf16 = lp.q_bf16 != 0;
    const unsigned char* qb = static_cast<const unsigned char*>(c.q) + b * c.q_stride_b * 2;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      uint32_t pairs[KSTEPS][2] = {};
      st.q_inv[r] = 1.f;
      if (8 * r < nh) {  // CTA-uniform: the upper rows only for groups over 8
        const int row = gid + 8 * r;
        const bool rv = row < nh;
        st.q_inv[r] = q_row_pairs<KSTEPS>(pairs, qb + (hq0 + (rv ? row : 0)) * c.q_stride_h * 2,
                                          rv, c.head_dim, tid, bf16);
      }
#pragma unroll
      for (int ks = 0; ks < KSTEPS; ++ks) {
        qf[ks][r] = pairs[ks][0];
        qf[ks][2 + r] = pairs[ks][1];
      }
    }
  }

  // S = Q K^T for one tile. One ldmatrix.x4 reads 16 keys x 32 fp8 columns:
  // matrices (keys 0-7 | 8-15) x (chunk 2kp | 2kp + 1); a thread's 4 bytes of
  // a matrix are columns 4t .. 4t + 3 of key gid, i.e. both B registers of
  // one k-step after conversion (the permutation q_elements matches). From
  // D = 96 on, even and odd k-steps accumulate apart, as in Identity::qk.
  template <class Tr, int KSTEPS>
  __device__ __forceinline__ static void qk(float (&s)[2][4], const uint32_t (&qf)[KSTEPS][4],
                                            const unsigned char* sk, int lane) {
    using Tile = typename Tr::Tile;
    static_assert(KSTEPS % 2 == 0, "fp8 buckets are multiples of 32");
    constexpr bool kTwoChains = KSTEPS > 4;
    float t[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kp = 0; kp < KSTEPS / 2; ++kp) {
      uint32_t r[4];
      ptx::ldmatrix_x4(r, sk + Tile::chunk_offset((lane & 7) + ((lane >> 3) & 1) * 8,
                                                  2 * kp + (lane >> 4)));
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int ks = 2 * kp + h;
        float (&d)[2][4] = kTwoChains && h ? t : s;
        uint32_t b[4];
        ptx::fp8x4_to_f16x2x2<E5M2>(r[2 * h], b[0], b[1]);
        ptx::fp8x4_to_f16x2x2<E5M2>(r[2 * h + 1], b[2], b[3]);
        Mma::run(d[0], qf[ks], b[0], b[1]);
        Mma::run(d[1], qf[ks], b[2], b[3]);
      }
    }
    if constexpr (kTwoChains) add_chain(s, t);
  }

  // O += P V for one tile. ldmatrix.trans of fp8 bytes as 16-bit pairs gives
  // a thread, per 8x8 matrix, keys 2t and 2t+1 at columns 2gid and 2gid+1;
  // one byte permute regroups them by column, so each register yields the B
  // registers of two 8-column n-tiles: the even and the odd columns of a
  // 16-column chunk. n-tile 2c + parity holds columns 16c + 2j + parity.
  template <class Tr, int NT>
  __device__ __forceinline__ static void pv(float (&o)[NT][4], const float (&s)[2][4],
                                            const unsigned char* sv, int lane) {
    using Tile = typename Tr::Tile;
    static_assert(NT % 4 == 0, "fp8 buckets are multiples of 32");
    // P in f16 once: its rounding (2^-12 of each weight) is at the level of an
    // f16 y's own rounding and 8x below a bf16 y's, so the second (lo) mma of
    // the 16-bit path buys nothing here, and this path issues twice the
    // instructions per byte that one does.
    uint32_t a[4];
    a[0] = Mma::pack(s[0][0], s[0][1]);
    a[1] = Mma::pack(s[0][2], s[0][3]);
    a[2] = Mma::pack(s[1][0], s[1][1]);
    a[3] = Mma::pack(s[1][2], s[1][3]);
#pragma unroll
    for (int cp = 0; cp < NT / 4; ++cp) {
      uint32_t r[4];
      ptx::ldmatrix_x4_trans(r, sv + Tile::chunk_offset((lane & 7) + ((lane >> 3) & 1) * 8,
                                                        2 * cp + (lane >> 4)));
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int ch = 2 * cp + h;
        uint32_t b0[2], b1[2];  // [parity]
        ptx::fp8x4_alternate_to_f16x2x2<E5M2>(r[2 * h], b0[0], b0[1]);
        ptx::fp8x4_alternate_to_f16x2x2<E5M2>(r[2 * h + 1], b1[0], b1[1]);
#pragma unroll
        for (int parity = 0; parity < 2; ++parity) Mma::run(o[2 * ch + parity], a, b0[parity], b1[parity]);
      }
    }
  }

  __device__ __forceinline__ static float log2_score(const State& st, float s, int r) {
    return s * st.q_inv[r] * st.score_log2;
  }
  __device__ __forceinline__ static float logit(const State& st, float s, int r) {
    return s * st.q_inv[r] * st.score;
  }

  // Columns 16c + 4t .. 16c + 4t + 3 of row gid + 8r: n-tiles 2c (even) and 2c + 1 (odd).
  template <int NT>
  __device__ __forceinline__ static void store_row(float* dst, const float (&o)[NT][4], int r,
                                                   int tid) {
#pragma unroll
    for (int ch = 0; ch < NT / 2; ++ch)
      *reinterpret_cast<float4*>(&dst[ch * 16 + tid * 4]) =
          make_float4(o[2 * ch][2 * r], o[2 * ch + 1][2 * r], o[2 * ch][2 * r + 1],
                      o[2 * ch + 1][2 * r + 1]);
  }

  __device__ __forceinline__ static float4 dequant_out(const State& st, float4 acc) {
    return make_float4(acc.x * st.v_scale, acc.y * st.v_scale, acc.z * st.v_scale,
                       acc.w * st.v_scale);
  }

  __device__ __forceinline__ static void store_y(void* y, int64_t i, float x, const LaunchParams& lp) {
    if (lp.q_bf16)
      static_cast<__nv_bfloat16*>(y)[i] = __float2bfloat16_rn(x);
    else
      static_cast<__half*>(y)[i] = __float2half_rn(x);
  }
};

}  // namespace fd
