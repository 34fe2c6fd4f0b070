// The split kernel: one CTA per (batch, KV head, block of <= 16 query heads of
// its group, K chunk). Each of its 4 warps streams 16-key tiles of K and V
// through its own cp.async ring in shared memory and runs both products on the
// tensor cores (m16n8k16: the group's query rows are the 16 rows of A, so each
// K/V element is read from HBM once for the whole group). The warps' softmax
// states are combined in a fixed order at the end, so results are bit-stable.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../kernel_params.h"
#include "../split_policy.h"
#include "ptx.cuh"

namespace fd {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// P as hi + lo halves in the PV product (see below); FD_SPLIT_P=0 measures
// what the second mma costs.
#ifndef FD_SPLIT_P
#define FD_SPLIT_P 1
#endif
constexpr bool kSplitP = FD_SPLIT_P != 0;

// q staged through shared memory with 16-byte loads where its rows allow
// (DecodeParams::q_vec); FD_STAGE_Q=0 measures the element loads everywhere.
#ifndef FD_STAGE_Q
#define FD_STAGE_Q 1
#endif
constexpr bool kStageQ = FD_STAGE_Q != 0;

#ifndef FD_SMEM_SWIZZLE
#define FD_SMEM_SWIZZLE 1
#endif

template <int DPAD, int WARPS = kWarpsPerCta>
struct SplitSmem {
  // K/V tile rows in shared memory. D = 64 and 128 rows (a multiple of 128
  // bytes) are stored unpadded with their 16-byte chunks permuted, chunk c of
  // row r at c ^ (r & 7): a warp's 16-byte copies land on whole 128-byte lines
  // and the 8 rows an ldmatrix reads hit distinct banks. A 16-byte row pad
  // (FD_SMEM_SWIZZLE=0) misaligns the copies: 1.6x the L2 requests, 3-5%
  // slower streams. D = 80 and 96 keep the pad: rounding their rows up to 128
  // elements and permuting was 2.5-3% faster at B32 but 6.6% slower at 32/8 D96
  // B4 K4096 (docs/RESULTS.md).
  static constexpr bool kSwizzle = FD_SMEM_SWIZZLE != 0 && DPAD % 64 == 0;
  static constexpr int kRowStride = kSwizzle ? DPAD : DPAD + 8;
  // Element offset of 8-element chunk `chunk` of tile row `row`.
  static __device__ __forceinline__ int chunk_offset(int row, int chunk) {
    return row * kRowStride + (kSwizzle ? (chunk ^ (row & 7)) : chunk) * 8;
  }
  static constexpr int kTileElems = kTileKeys * kRowStride;
  static constexpr int kStageElems = 2 * kTileElems;  // K tile then V tile
  // Epilogue reuses the ring: per warp and row its max, sum and DPAD outputs
  // (rows kOutStride apart: 8 floats of padding keep the warps' stores of 8 rows
  // at once off one bank).
  static constexpr int kOutStride = DPAD + 8;
  static constexpr size_t kWarpStateFloats =
      2 * WARPS * kMaxGroupPerCta + WARPS * kMaxGroupPerCta * kOutStride;
  static constexpr size_t kEpilogueBytes = sizeof(float) * kWarpStateFloats;
  __host__ __device__ static constexpr size_t bytes(int stages) {
    const size_t ring = size_t{2} * WARPS * stages * kStageElems;
    return ring > kEpilogueBytes ? ring : kEpilogueBytes;
  }
  // Cluster mode: past the ring, what the cluster's CTAs push to the CTA that
  // finishes a row (row r goes to rank r % nc, as its slot r / nc): per source
  // rank and slot the source's max, sum and unnormalised outputs. nc slots of
  // ceil(nh / nc) rows never exceed nh + nc - 1.
  static constexpr int kRecvRows = kMaxGroupPerCta + kMaxClusterSplits - 1;
  __host__ __device__ static constexpr size_t recv_offset(int stages) {
    return (bytes(stages) + 15) / 16 * 16;
  }
  static constexpr size_t cluster_bytes(int stages) {
    return recv_offset(stages) + sizeof(float) * kRecvRows * (DPAD + 2);
  }
};

// Copies one 16-key tile of K and V (rows key0..key0+15, keys >= key_end and
// columns >= head_dim zero-filled) into shared memory.
// VEC: 16-byte cp.async (needs head_dim % 8 == 0, 16-byte aligned rows);
// otherwise element loads, for any head_dim, stride or alignment.
// EVICT_FIRST: the copies carry an evict-first L2 policy (see
// DecodeParams::kv_evict_first).
template <typename T, int DPAD, bool VEC, bool EVICT_FIRST = false>
__device__ __forceinline__ void load_kv_tile(T* sk, T* sv, const T* kbase, const T* vbase,
                                             int64_t k_stride, int64_t v_stride, int key0,
                                             int key_end, int head_dim, int lane,
                                             uint64_t policy = 0) {
  if constexpr (VEC) {
    // L2 prefetch hint: with the swizzled layout a warp's copies already cover
    // whole lines and no hint measured 0-1% faster (fewer L2 requests); the
    // padded layout (D = 80, 96) streams better with 256-byte bursts.
    constexpr int kPrefetch = SplitSmem<DPAD>::kSwizzle ? 0 : 256;
    constexpr int kChunks = DPAD / 8;
    static_assert(kTileKeys * kChunks % 32 == 0, "whole warp-wide copy steps");
    // K and V rows interleaved: measured 1.5-3% faster than all K rows, then all
    // V rows (docs/RESULTS.md).
#pragma unroll
    for (int it = 0; it < kTileKeys * kChunks / 32; ++it) {
      const int i = lane + it * 32;
      const int row = i / kChunks, c = i % kChunks;
      const int key = key0 + row;
      const bool ok = key < key_end && c * 8 < head_dim;
      const T* ks = ok ? kbase + key * k_stride + c * 8 : kbase;
      const T* vs = ok ? vbase + key * v_stride + c * 8 : vbase;
      const int off = SplitSmem<DPAD>::chunk_offset(row, c);
      ptx::cp_async_16<kPrefetch, EVICT_FIRST>(sk + off, ks, ok ? 16 : 0, policy);
      ptx::cp_async_16<kPrefetch, EVICT_FIRST>(sv + off, vs, ok ? 16 : 0, policy);
    }
  } else {
    const T zero = ptx::from_float<T>(0.f);
    for (int i = lane; i < kTileKeys * DPAD; i += 32) {
      const int row = i / DPAD, c = i % DPAD;
      const int key = key0 + row;
      const bool ok = key < key_end && c < head_dim;
      const int off = SplitSmem<DPAD>::chunk_offset(row, c / 8) + c % 8;
      sk[off] = ok ? kbase[key * k_stride + c] : zero;
      sv[off] = ok ? vbase[key * v_stride + c] : zero;
    }
  }
}

// Final softmax normalisation of one output element from its (max, sum,
// unnormalised sum) in log2 units; adds the sink and writes y (and lse).
template <typename T>
__device__ __forceinline__ void write_output(const DecodeParams& p, int b, int h, int col,
                                             float mall, float lsum, float acc) {
  float mt = mall, lt = lsum, a = 1.f;
  if (p.sinks != nullptr) {  // the sink joins the denominator only
    const float sk = p.sinks[h] * kLog2e;
    const float mn = fmaxf(mall, sk);
    a = mall == -INFINITY ? 0.f : exp2f(mall - mn);
    lt = lsum * a + exp2f(sk - mn);
    mt = mn;
  }
  T* yr = static_cast<T*>(p.y) + b * p.y_stride_b + h * p.y_stride_h;
  yr[col] = ptx::from_float<T>(lt > 0.f ? acc * a / lt : 0.f);
  if (col == 0 && p.lse != nullptr)
    p.lse[b * p.lse_stride_b + h * p.lse_stride_h] = lt > 0.f ? (mt + log2f(lt)) * kLn2 : -INFINITY;
}

template <typename T>
__device__ __forceinline__ uint32_t pack_bits(T lo, T hi) {
  uint16_t a, b;
  memcpy(&a, &lo, 2);
  memcpy(&b, &hi, 2);
  return static_cast<uint32_t>(a) | (static_cast<uint32_t>(b) << 16);
}

// Prefetches into L2 the first p.prefetch_keys K/V rows of a CTA's chunk while
// it waits for the previous grid in the stream (PDL): that wait (~0.75 us) and
// the first tiles' HBM latency overlap instead of adding up. One bulk prefetch
// per row (per-sector prefetches and dummy 256-byte loads measured slower).
// Only kernel parameters are read: seq_lens may still be being written, so
// with it only split 0 prefetches (a chunk past a sequence's end would cost
// reads nothing uses).
template <typename T, int THREADS>
__device__ __forceinline__ void prefetch_first_rows(const DecodeParams& p, const T* kbase,
                                                    const T* vbase, int split, int chunk_len,
                                                    bool has_seq_lens) {
  const int keys = p.prefetch_keys;
  if (keys <= 0 || (has_seq_lens && split != 0)) return;
  const int k_len = p.k_len;
  const int chunk0 = split * chunk_len;  // < k_len: the splits cover K, none empty
  int begin = chunk0;
  if (!has_seq_lens && p.window_size > 0) begin = max(begin, k_len - p.window_size);
  // chunk0 + chunk_len may pass INT32_MAX on the last split; k_len - chunk0 cannot.
  const int end = min(chunk0 + min(chunk_len, k_len - chunk0), begin + min(keys, k_len - begin));
  const uint32_t row_bytes = static_cast<uint32_t>(p.head_dim) * sizeof(T);
  for (int i = threadIdx.x; i < 2 * (end - begin); i += THREADS) {
    const int key = begin + (i >> 1);
    ptx::prefetch_l2((i & 1) ? vbase + key * p.v_stride_k : kbase + key * p.k_stride_k, row_bytes);
  }
}

// Query rows hq0 .. hq0 + nh - 1 as mma A fragments, one element at a time
// (any head_dim, stride or alignment); rows >= nh and columns >= D are 0.
template <typename T, int KSTEPS>
__device__ __forceinline__ void load_q_fragments(uint32_t (&qf)[KSTEPS][4], const DecodeParams& p,
                                                 int b, int hq0, int nh, int gid, int tid) {
  const T* qb = static_cast<const T*>(p.q) + b * p.q_stride_b;
  const T zero = ptx::from_float<T>(0.f);
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = gid + (i & 1) * 8;
      const int col = ks * 16 + tid * 2 + (i >> 1) * 8;
      const T* qr = qb + (hq0 + row) * p.q_stride_h;
      const bool rv = row < nh;
      const T lo_v = rv && col < p.head_dim ? qr[col] : zero;
      const T hi_v = rv && col + 1 < p.head_dim ? qr[col + 1] : zero;
      qf[ks][i] = pack_bits(lo_v, hi_v);
    }
}

template <typename T, int DPAD, bool VEC, int STAGES, int WARPS>
__global__ void __launch_bounds__(WARPS * 32)
    decode_split_kernel(const DecodeParams p) {
  using Mma = ptx::Mma<T>;
  using S = SplitSmem<DPAD, WARPS>;
  constexpr int kThreads = WARPS * 32;
  constexpr int KSTEPS = DPAD / 16;  // QK^T reduction steps over head_dim
  constexpr int NT = DPAD / 8;       // 8-column output tiles of PV
  static_assert(DPAD % 16 == 0, "head_dim buckets are multiples of 16");
  static_assert(STAGES >= 2 || !VEC, "the cp.async ring needs two stages");

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gid = lane >> 2, tid = lane & 3;  // mma fragment row group / column pair
  const int b = blockIdx.x / p.num_kv_heads;
  const int kvh = blockIdx.x - b * p.num_kv_heads;
  const int split = blockIdx.y;
  const int hq0 = kvh * p.group_size + blockIdx.z * kMaxGroupPerCta;
  const int nh = min(kMaxGroupPerCta, p.group_size - static_cast<int>(blockIdx.z) * kMaxGroupPerCta);

  // Cluster mode: count this CTA in as started; a CTA pushes into the others'
  // shared memory only once all of the cluster's CTAs have.
  const bool cluster_reduce = p.cluster_reduce != 0;
  if (cluster_reduce) ptx::cluster_arrive_relaxed();
  // Parameters used right after the wait or on every tile are read before it
  // (ptx::pin), so their constant cache misses overlap the wait.
  const int32_t* seq_lens = ptx::pin(p.seq_lens);
  const int k_len = ptx::pin(p.k_len), window_size = ptx::pin(p.window_size);
  const int chunk_len = ptx::pin(p.chunk_len);
  const T* kbase = ptx::pin(static_cast<const T*>(p.k) + b * p.k_stride_b + kvh * p.k_stride_h);
  const T* vbase = ptx::pin(static_cast<const T*>(p.v) + b * p.v_stride_b + kvh * p.v_stride_h);
  const float scale_log2 = ptx::pin(p.scale_log2);
  const bool logit_mods = ptx::pin(p.has_logit_mods) != 0;
  const bool write_partials = ptx::pin(p.write_partials) != 0;
  const int num_splits = ptx::pin(p.num_splits), num_heads = ptx::pin(p.num_heads);
  float* partial_o = ptx::pin(p.partial_o);
  float* partial_lse = ptx::pin(p.partial_lse);
  if constexpr (VEC)
    prefetch_first_rows<T, kThreads>(p, kbase, vbase, split, chunk_len, seq_lens != nullptr);
  // Inputs may be produced by the previous kernel in the stream (PDL); the
  // merge may be scheduled as soon as every CTA of this grid is running.
  ptx::grid_dependency_wait();
  ptx::launch_dependents();

  int seq_len = k_len;
  if (seq_lens != nullptr) seq_len = min(max(seq_lens[b], 0), k_len);
  const int lo = window_size > 0 ? max(0, seq_len - window_size) : 0;
  const int chunk0 = split * chunk_len;
  const int key_begin = max(chunk0, lo);
  // Written so that no sum passes INT32_MAX (k_len may be close to it).
  const int key_end = chunk0 >= seq_len ? chunk0 : chunk0 + min(chunk_len, seq_len - chunk0);
  const int n_tiles = key_end > key_begin ? (key_end - key_begin + kTileKeys - 1) / kTileKeys : 0;
  const int my_tiles = n_tiles > warp ? (n_tiles - warp + WARPS - 1) / WARPS : 0;

  T* ring = smem + warp * STAGES * S::kStageElems;
  // Tiles dealt round robin, so the CTA's copies in flight are one contiguous
  // stretch (1-5% faster than a contiguous quarter per warp, docs/RESULTS.md).
  auto tile_key0 = [&](int j) { return key_begin + (warp + j * WARPS) * kTileKeys; };
  const bool evict_first = VEC && p.kv_evict_first != 0;
  const uint64_t policy = ptx::make_evict_first_policy();
  auto load = [&](int j) {
    T* sk = ring + (j % STAGES) * S::kStageElems;
    if (evict_first)
      load_kv_tile<T, DPAD, VEC, true>(sk, sk + S::kTileElems, kbase, vbase, p.k_stride_k,
                                       p.v_stride_k, tile_key0(j), key_end, p.head_dim, lane,
                                       policy);
    else
      load_kv_tile<T, DPAD, VEC>(sk, sk + S::kTileElems, kbase, vbase, p.k_stride_k, p.v_stride_k,
                                 tile_key0(j), key_end, p.head_dim, lane);
  };

  float m[2] = {-INFINITY, -INFINITY};  // running max of rows gid, gid+8 (log2 units)
  float l[2] = {0.f, 0.f};              // this lane's part of the running sums
  float o[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  if constexpr (VEC) {
#pragma unroll
    for (int j = 0; j < STAGES - 1; ++j) {
      if (j < my_tiles) load(j);
      ptx::cp_async_commit();
    }
  }

  // Query rows of this CTA as mma A fragments (rows >= nh and columns >= D are 0),
  // read after the first K/V copies are on their way so both latencies overlap.
  uint32_t qf[KSTEPS][4];
  if constexpr (VEC && STAGES >= 3 && kStageQ) {
    if (p.q_vec) {
      // 16-byte loads staged through this warp's last ring slot, which the
      // prologue left empty and the loop's first step refills, then ldmatrix.
      // The element loads below are 64 two-byte loads per thread, up to 8
      // rows per warp instruction: measured 0.5-1.6% slower on split and
      // D = 64 rows, and on one H100 1 us slower at K = 512 (docs/RESULTS.md).
      T* sq = ring + (STAGES - 1) * S::kStageElems;
      const T* qb = static_cast<const T*>(p.q) + b * p.q_stride_b + hq0 * p.q_stride_h;
      constexpr int kChunks = DPAD / 8;
      constexpr int kPerLane = (kMaxGroupPerCta * kChunks + 31) / 32;
      const int head_dim = p.head_dim;
      const int64_t q_stride_h = p.q_stride_h;
      uint4 qv[kPerLane];
#pragma unroll
      for (int it = 0; it < kPerLane; ++it) {  // every load first: one latency
        const int i = lane + it * 32, row = i / kChunks, c = i % kChunks;
        qv[it] = make_uint4(0u, 0u, 0u, 0u);
        if (row < nh && c * 8 < head_dim)
          qv[it] = *reinterpret_cast<const uint4*>(qb + row * q_stride_h + c * 8);
      }
#pragma unroll
      for (int it = 0; it < kPerLane; ++it) {
        const int i = lane + it * 32, row = i / kChunks, c = i % kChunks;
        if (row < kMaxGroupPerCta) *reinterpret_cast<uint4*>(sq + S::chunk_offset(row, c)) = qv[it];
      }
      __syncwarp();
#pragma unroll
      for (int ks = 0; ks < KSTEPS; ++ks)
        ptx::ldmatrix_x4(qf[ks], sq + S::chunk_offset((lane & 7) + ((lane >> 3) & 1) * 8, ks * 2 + (lane >> 4)));
      __syncwarp();
    } else {
      load_q_fragments<T, KSTEPS>(qf, p, b, hq0, nh, gid, tid);
    }
  } else {
    load_q_fragments<T, KSTEPS>(qf, p, b, hq0, nh, gid, tid);
  }

  for (int j = 0; j < my_tiles; ++j) {
    if constexpr (VEC) {
      ptx::cp_async_wait<STAGES - 2>();
      __syncwarp();
      // Refill the slot every lane finished reading in the previous step.
      if (j + STAGES - 1 < my_tiles) load(j + STAGES - 1);
      ptx::cp_async_commit();

    } else {
      load(j);
      __syncwarp();
    }
    const T* sk = ring + (j % STAGES) * S::kStageElems;
    const T* sv = sk + S::kTileElems;
    const int key0 = tile_key0(j);

    // S = Q K^T for 16 keys: two 8-key column tiles.
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      uint32_t kb[4];
      ptx::ldmatrix_x4(kb, sk + S::chunk_offset((lane >> 4) * 8 + (lane & 7), ks * 2 + ((lane >> 3) & 1)));
      Mma::run(s[0], qf[ks], kb[0], kb[1]);
      Mma::run(s[1], qf[ks], kb[2], kb[3]);
    }

    // Scores in log2 units, keys past the end masked.
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + n * 8 + tid * 2 + (e & 1);
        float x;
        if (!logit_mods) {
          x = s[n][e] * scale_log2;
        } else {
          float logit = s[n][e] * p.scale;
          if (p.logits_soft_cap > 0.f)
            logit = p.logits_soft_cap * tanhf(logit / p.logits_soft_cap);
          const int row = gid + (e >> 1) * 8;
          if (p.alibi_slopes != nullptr && row < nh)
            logit += p.alibi_slopes[hq0 + row] * static_cast<float>(key - (seq_len - 1));
          x = logit * kLog2e;
        }
        s[n][e] = key < key_end ? x : -INFINITY;
      }

    // Online softmax, rows gid (e = 0, 1) and gid + 8 (e = 2, 3).
    float mx[2] = {fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1])),
                   fmaxf(fmaxf(s[0][2], s[0][3]), fmaxf(s[1][2], s[1][3]))};
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m[r], mx[r]);
      const float base = m_new == -INFINITY ? 0.f : m_new;  // no keys yet: keep 0 * finite
      alpha[r] = exp2f(m[r] - base);
      m[r] = m_new;
      mx[r] = base;
    }
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = exp2f(s[n][e] - mx[e >> 1]);
    l[0] = l[0] * alpha[0] + (s[0][0] + s[0][1]) + (s[1][0] + s[1][1]);
    l[1] = l[1] * alpha[1] + (s[0][2] + s[0][3]) + (s[1][2] + s[1][3]);
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      o[n][0] *= alpha[0];
      o[n][1] *= alpha[0];
      o[n][2] *= alpha[1];
      o[n][3] *= alpha[1];
    }

    // O += P V: P's accumulator layout is already the A layout of the next mma.
    // P goes in as hi + lo halves: one rounding of P to bf16 alone costs up to
    // 2^-9 of relative error, which an output with cancellation magnifies; the
    // second mma is nearly free in a kernel bound by HBM.
    uint32_t a_hi[4], a_lo[4];
    ptx::split_pack<T>(s[0][0], s[0][1], a_hi[0], a_lo[0]);
    ptx::split_pack<T>(s[0][2], s[0][3], a_hi[1], a_lo[1]);
    ptx::split_pack<T>(s[1][0], s[1][1], a_hi[2], a_lo[2]);
    ptx::split_pack<T>(s[1][2], s[1][3], a_hi[3], a_lo[3]);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t vb[4];
      ptx::ldmatrix_x4_trans(vb, sv + S::chunk_offset(((lane >> 3) & 1) * 8 + (lane & 7), np * 2 + (lane >> 4)));
      Mma::run(o[2 * np], a_hi, vb[0], vb[1]);
      Mma::run(o[2 * np + 1], a_hi, vb[2], vb[3]);
      if constexpr (kSplitP) {
        Mma::run(o[2 * np], a_lo, vb[0], vb[1]);
        Mma::run(o[2 * np + 1], a_lo, vb[2], vb[3]);
      }
    }
    if constexpr (!VEC) __syncwarp();  // the next synchronous load reuses the slot
  }
  if constexpr (VEC) ptx::cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }

  // Combine the warps in a fixed order through shared memory: each warp stores
  // its max, sum and unscaled outputs per row; after one barrier, each thread
  // rescales the warps' pieces of its (row, 4 columns) to the row's max and
  // sums them in warp order. (Scaling before the store cost a second barrier
  // and a per-row pass before the sums could start.)
  constexpr int OS = S::kOutStride;
  __syncthreads();  // every warp is done with the ring the epilogue reuses
  float* sm_m = reinterpret_cast<float*>(smem_raw);
  float* sm_l = sm_m + WARPS * kMaxGroupPerCta;
  float* sm_o = sm_l + WARPS * kMaxGroupPerCta;
  if (tid == 0) {
    sm_m[warp * kMaxGroupPerCta + gid] = m[0];
    sm_m[warp * kMaxGroupPerCta + gid + 8] = m[1];
    sm_l[warp * kMaxGroupPerCta + gid] = l[0];
    sm_l[warp * kMaxGroupPerCta + gid + 8] = l[1];
  }
  // Only the CTA's nh query rows are stored (GQA groups of 4 or 8 leave the
  // upper half of the mma tile empty).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = gid + r * 8;
    if (r * 8 >= nh) break;  // uniform over the CTA
    if (row < nh) {
#pragma unroll
      for (int n = 0; n < NT; ++n)
        *reinterpret_cast<float2*>(&sm_o[(warp * kMaxGroupPerCta + row) * OS + n * 8 + tid * 2]) =
            make_float2(o[n][2 * r], o[n][2 * r + 1]);
    }
  }
  __syncthreads();

  const int64_t row_base = static_cast<int64_t>(b) * num_heads;
  constexpr int C4 = DPAD / 4;
  // Cluster mode: rank, cluster size and where pushed states land.
  float* recv_o = reinterpret_cast<float*>(smem_raw + S::recv_offset(STAGES));
  float* recv_m = recv_o + S::kRecvRows * DPAD;
  float* recv_l = recv_m + S::kRecvRows;
  const int nc = num_splits, rank = split;  // a cluster spans a unit's splits
  const int slots = (nh + nc - 1) / nc;
  if (cluster_reduce) ptx::cluster_wait();  // every CTA of the cluster has started
  for (int idx = threadIdx.x; idx < nh * C4; idx += kThreads) {
    const int row = idx / C4, col = (idx - row * C4) * 4;
    if (col >= p.head_dim) continue;
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
    const int h = hq0 + row;
    if (write_partials) {
      const int64_t prow = (row_base + h) * nc + split;
      // Columns past head_dim hold zeros; the merge never reads them.
      const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
      *reinterpret_cast<float4*>(&partial_o[prow * DPAD + col]) =
          make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
      if (col == 0) partial_lse[prow] = lsum > 0.f ? mall + log2f(lsum) : -INFINITY;
    } else if (cluster_reduce) {
      const int owner = row % nc, rrow = rank * slots + row / nc;
      ptx::st_cluster_f4(ptx::cluster_map(recv_o + rrow * DPAD + col, owner), acc);
      if (col == 0) {
        ptx::st_cluster_f(ptx::cluster_map(recv_m + rrow, owner), mall);
        ptx::st_cluster_f(ptx::cluster_map(recv_l + rrow, owner), lsum);
      }
    } else {
      const float a4[4] = {acc.x, acc.y, acc.z, acc.w};
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (col + e < p.head_dim) write_output<T>(p, b, h, col + e, mall, lsum, a4[e]);
    }
  }

  // Cluster mode: the num_splits CTAs of one (batch, KV head, head block) are a
  // thread block cluster. Each has pushed its state for row r into the shared
  // memory of rank r % nc; after one cluster barrier every CTA finishes its rows
  // from its own shared memory, sources in rank order (bit-stable), and may
  // leave at once: nothing reads another CTA's memory after the barrier.
  if (cluster_reduce) {
    ptx::cluster_arrive();
    ptx::cluster_wait();
    const int my_rows = rank < nh ? (nh - rank + nc - 1) / nc : 0;
    for (int idx = threadIdx.x; idx < my_rows * DPAD; idx += kThreads) {
      const int k = idx / DPAD, col = idx - k * DPAD;
      if (col >= p.head_dim) continue;
      float mc[kMaxClusterSplits], lc[kMaxClusterSplits], oc[kMaxClusterSplits];
#pragma unroll
      for (int c = 0; c < kMaxClusterSplits; ++c) {  // all loads first: one latency
        const int rr = c * slots + k;
        mc[c] = c < nc ? recv_m[rr] : -INFINITY;
        lc[c] = c < nc ? recv_l[rr] : 0.f;
        oc[c] = c < nc ? recv_o[rr * DPAD + col] : 0.f;
      }
      float mall = -INFINITY;
#pragma unroll
      for (int c = 0; c < kMaxClusterSplits; ++c) mall = fmaxf(mall, mc[c]);
      float lsum = 0.f, acc = 0.f;
#pragma unroll
      for (int c = 0; c < kMaxClusterSplits; ++c) {
        if (mc[c] == -INFINITY) continue;  // also every rank >= nc
        const float f = exp2f(mc[c] - mall);
        lsum += lc[c] * f;
        acc += oc[c] * f;
      }
      write_output<T>(p, b, hq0 + rank + k * nc, col, mall, lsum, acc);
    }
  }
}

}  // namespace fd
