// KV elements with the keys as the mma's M dimension, for CTAs of at most 8
// query heads (every GQA group of 8 or fewer, MQA to 8/1, MHA).
//
// The 16-bit and fp8 parts of kv_element.cuh put the CTA's query heads on
// the 16 rows of the mma's A: a group of 4 leaves 12 of them empty, and the
// outputs take DPAD / 2 accumulators per thread. Here S^T = K Q^T and
// O^T = V^T P^T: a 16-key tile is M, the (up to) 8 heads are N, so a tile
// takes half the mma, half the accumulators (and their rescale) and half the
// score registers. P^T reaches the B operand through movmatrix.
//
// Fragments (m16n8k16): thread (gid = lane / 4, t = lane % 4).
//   scores s[0][e]:  key gid + 8 (e >> 1), head 2t + (e & 1)
//   row state r:     head 2t + r (the softmax runs over keys: across gid)
//   outputs o[m][e]: head 2t + (e & 1), dims of M tile m (see store_head)
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../cta_shape.h"
#include "kv_element.cuh"
#include "ptx.cuh"
#include "traits.cuh"

namespace fd {

template <typename T>
struct IdentityKm : Identity<T> {
  static constexpr bool kKeysAsM = true;
  using Mma = ptx::Mma<T>;
  template <int DPAD>
  static constexpr int acc_tiles() {
    return DPAD / 16;
  }

  // Q^T as B fragments: qf[ks][0] = q[head gid][16 ks + 2t, +1], qf[ks][1] =
  // q[gid][16 ks + 2t + 8, +9]; heads >= nh and columns >= D are 0. Element
  // loads: the q of one CTA is 8 heads at most, read once per CTA while the
  // first K/V copies are in flight.
  template <int KSTEPS>
  __device__ __forceinline__ static void q_elements(uint32_t (&qf)[KSTEPS][4],
                                                    const fd_decode_params& c, int b, int hq0,
                                                    int nh, int gid, int tid) {
    const bool rv = gid < nh;
    const T* qr = static_cast<const T*>(c.q) + b * c.q_stride_b + (hq0 + (rv ? gid : 0)) * c.q_stride_h;
    const T zero = ptx::from_float<T>(0.f);
    const int head_dim = c.head_dim;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int col = ks * 16 + tid * 2 + i * 8;
        const T lo_v = rv && col < head_dim ? qr[col] : zero;
        const T hi_v = rv && col + 1 < head_dim ? qr[col + 1] : zero;
        qf[ks][i] = pack_bits(lo_v, hi_v);
      }
  }

  // S^T = K Q^T for one 16-key tile: one 16x8 accumulator, the even and the
  // odd k-steps in two chains from D = 80 on (as Identity::qk).
  template <class Tr, int KSTEPS>
  __device__ __forceinline__ static void qk(float (&s)[2][4], const uint32_t (&qf)[KSTEPS][4],
                                            const unsigned char* sk, int lane) {
    using Tile = typename Tr::Tile;
    constexpr bool kTwoChains = KSTEPS > 4;
    float t[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      // A = keys x dims: matrices (keys 0-7 | 8-15) x (chunk 2ks | 2ks + 1).
      uint32_t a[4];
      ptx::ldmatrix_x4(a, sk + Tile::chunk_offset((lane & 7) + ((lane >> 3) & 1) * 8,
                                                  ks * 2 + (lane >> 4)));
      float (&d)[4] = kTwoChains && (ks & 1) ? t : s[0];
      Mma::run(d, a, qf[ks][0], qf[ks][1]);
    }
    if constexpr (kTwoChains) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[0][e] += t[e];
    }
  }

  // O^T += V^T P^T for one tile. P goes in as hi + lo halves (see
  // p_fragments); each half is two 8x8 matrices (keys 0-7, 8-15) x heads,
  // transposed into B fragments. A = dims x keys: ldmatrix.trans of the V
  // tile, matrices (keys 0-7 | 8-15) x (chunk 2m | 2m + 1).
  template <class Tr, int NT>
  __device__ __forceinline__ static void pv(float (&o)[NT][4], const float (&s)[2][4],
                                            const unsigned char* sv, int lane) {
    using Tile = typename Tr::Tile;
    uint32_t hi0, lo0, hi1, lo1;
    ptx::split_pack<T>(s[0][0], s[0][1], hi0, lo0);
    ptx::split_pack<T>(s[0][2], s[0][3], hi1, lo1);
    const uint32_t bh0 = ptx::movmatrix_trans(hi0), bh1 = ptx::movmatrix_trans(hi1);
    const uint32_t bl0 = ptx::movmatrix_trans(lo0), bl1 = ptx::movmatrix_trans(lo1);
#pragma unroll
    for (int m = 0; m < NT; ++m) {
      uint32_t a[4];
      ptx::ldmatrix_x4_trans(a, sv + Tile::chunk_offset((lane & 7) + (lane >> 4) * 8,
                                                        2 * m + ((lane >> 3) & 1)));
      Mma::run(o[m], a, bh0, bh1);
      Mma::run(o[m], a, bl0, bl1);
    }
  }

  // This thread's outputs of head 2t + r into that head's row of floats: M
  // tile m holds dims 16m + gid and 16m + gid + 8.
  template <int NT>
  __device__ __forceinline__ static void store_head(float* dst, const float (&o)[NT][4], int r,
                                                    int gid) {
#pragma unroll
    for (int m = 0; m < NT; ++m) {
      dst[16 * m + gid] = o[m][r];
      dst[16 * m + gid + 8] = o[m][2 + r];
    }
  }
};

template <bool E5M2>
struct Fp8Km : Fp8<E5M2> {
  static constexpr bool kKeysAsM = true;
  // Two tiles per softmax step (mainloop.cuh) where the cell gives the kernel
  // a ring of kPairStages (launch_cell.cuh): two independent mma chains, and
  // one max, rescale and sum per 32 keys instead of 16.
  static constexpr bool kPairTiles = true;
  using Base = Fp8<E5M2>;
  using State = typename Base::State;
  using Mma = ptx::Mma<__half>;
  template <int DPAD>
  static constexpr int acc_tiles() {
    return DPAD / 16;
  }

  // Q^T as f16 B fragments in the k order the fp8 K fragments imply (as
  // Fp8::q_elements): qf[ks][0] holds physical columns 16 ks + 4t + {0, 1},
  // qf[ks][1] 16 ks + 4t + {2, 3} of head gid, scaled by the power of two that
  // brings the head's largest |q| into [2^14, 2^15). A score of head 2t + r is
  // scaled back by st.q_inv[r], fetched from that head's lanes.
  template <int KSTEPS>
  __device__ __forceinline__ static void q_elements(uint32_t (&qf)[KSTEPS][4], State& st,
                                                    const fd_decode_params& c,
                                                    const LaunchParams& lp, int b, int hq0,
                                                    int nh, int gid, int tid) {
    const bool rv = gid < nh;
    const unsigned char* qr = static_cast<const unsigned char*>(c.q) + b * c.q_stride_b * 2 +
                              (hq0 + (rv ? gid : 0)) * c.q_stride_h * 2;
    uint32_t pairs[KSTEPS][2];
    const float q_inv = Base::template q_row_pairs<KSTEPS>(pairs, qr, rv, c.head_dim, tid,
                                                           lp.q_bf16 != 0);
    st.q_inv[0] = __shfl_sync(0xffffffffu, q_inv, 8 * tid);      // head 2t: lane 4 (2t)
    st.q_inv[1] = __shfl_sync(0xffffffffu, q_inv, 8 * tid + 4);  // head 2t + 1
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      qf[ks][0] = pairs[ks][0];
      qf[ks][1] = pairs[ks][1];
    }
  }

  // S^T = K Q^T for one tile. One ldmatrix.x4 reads 16 keys x 32 fp8 columns
  // (matrices (keys 0-7 | 8-15) x (chunk 2kp | 2kp + 1)); a thread's 4 bytes
  // of a matrix, columns 4t .. 4t + 3 of key gid, are the A registers of
  // logical columns 2t, 2t + 1 and 2t + 8, 2t + 9 after conversion.
  template <class Tr, int KSTEPS>
  __device__ __forceinline__ static void qk(float (&s)[2][4], const uint32_t (&qf)[KSTEPS][4],
                                            const unsigned char* sk, int lane) {
    using Tile = typename Tr::Tile;
    static_assert(KSTEPS % 2 == 0, "fp8 buckets are multiples of 32");
    constexpr bool kTwoChains = KSTEPS > 4;
    float t[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int kp = 0; kp < KSTEPS / 2; ++kp) {
      uint32_t r[4];
      ptx::ldmatrix_x4(r, sk + Tile::chunk_offset((lane & 7) + ((lane >> 3) & 1) * 8,
                                                  2 * kp + (lane >> 4)));
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint32_t a[4];
        ptx::fp8x4_to_f16x2x2<E5M2>(r[2 * h], a[0], a[2]);      // keys 0-7
        ptx::fp8x4_to_f16x2x2<E5M2>(r[2 * h + 1], a[1], a[3]);  // keys 8-15
        float (&d)[4] = kTwoChains && h ? t : s[0];
        Mma::run(d, a, qf[2 * kp + h][0], qf[2 * kp + h][1]);
      }
    }
    if constexpr (kTwoChains) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[0][e] += t[e];
    }
  }

  // O^T += V^T P^T for one tile, P rounded to f16 once (as Fp8::pv). The
  // ldmatrix.trans of fp8 bytes as 16-bit pairs gives a thread, per 8x8
  // matrix, keys 2t and 2t + 1 of columns 2gid and 2gid + 1; a byte permute
  // regroups them by column: A rows gid and gid + 8 of M tile m are dims
  // 16m + 2gid and 16m + 2gid + 1.
  template <class Tr, int NT>
  __device__ __forceinline__ static void pv(float (&o)[NT][4], const float (&s)[2][4],
                                            const unsigned char* sv, int lane) {
    using Tile = typename Tr::Tile;
    static_assert(NT % 2 == 0, "fp8 buckets are multiples of 32");
    const uint32_t b0 = ptx::movmatrix_trans(Mma::pack(s[0][0], s[0][1]));
    const uint32_t b1 = ptx::movmatrix_trans(Mma::pack(s[0][2], s[0][3]));
#pragma unroll
    for (int cp = 0; cp < NT / 2; ++cp) {
      uint32_t r[4];
      ptx::ldmatrix_x4_trans(r, sv + Tile::chunk_offset((lane & 7) + ((lane >> 3) & 1) * 8,
                                                        2 * cp + (lane >> 4)));
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint32_t a[4];
        ptx::fp8x4_alternate_to_f16x2x2<E5M2>(r[2 * h], a[0], a[1]);
        ptx::fp8x4_alternate_to_f16x2x2<E5M2>(r[2 * h + 1], a[2], a[3]);
        Mma::run(o[2 * cp + h], a, b0, b1);
      }
    }
  }

  // This thread's outputs of head 2t + r: dims 16m + 2gid, 16m + 2gid + 1.
  template <int NT>
  __device__ __forceinline__ static void store_head(float* dst, const float (&o)[NT][4], int r,
                                                    int gid) {
#pragma unroll
    for (int m = 0; m < NT; ++m)
      *reinterpret_cast<float2*>(&dst[16 * m + 2 * gid]) = make_float2(o[m][r], o[m][2 + r]);
  }
};

// The keys-as-M part of an element part.
template <class Elem>
struct KeysAsMOf;
template <typename T>
struct KeysAsMOf<Identity<T>> {
  using type = IdentityKm<T>;
};
template <bool E5M2>
struct KeysAsMOf<Fp8<E5M2>> {
  using type = Fp8Km<E5M2>;
};

}  // namespace fd
