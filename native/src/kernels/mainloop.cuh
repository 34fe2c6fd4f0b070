// The mainloop of a decode CTA: each warp streams its 16-key tiles of K and V
// (dealt round robin: tile t = warp + j * WARPS) through its own cp.async ring
// in shared memory, computes S = Q K^T and O += P V on the tensor cores, and
// keeps an online softmax state per query row. The query rows of the CTA (up to
// 16 heads of one KV head's group) are the 16 rows of the mma's A, so each K/V
// element is read from HBM once for the whole group. Element parts with
// kPairTiles, given a ring of kPairStages, take two tiles per softmax step.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../kernel_params.h"
#include "kv_element.cuh"
#include "ptx.cuh"
#include "score_mods.cuh"
#include "tile_copy.cuh"
#include "traits.cuh"

namespace fd {

// One warp's softmax state of a thread's two rows r, log2 units: rows gid
// (r = 0) and gid + 8 (r = 1), or with the keys as M heads 2t + r.
template <int NT>
struct RowState {
  float m[2] = {-INFINITY, -INFINITY};  // running max
  float l[2] = {0.f, 0.f};              // this lane's part of the running sums
  float o[NT][4];                        // unnormalised outputs (C fragments)
  __device__ __forceinline__ RowState() {
#pragma unroll
    for (int n = 0; n < NT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  }
};

// What the mainloop needs to know of the CTA beyond the parts' own state.
struct CtaRows {
  int b, hq0, nh, seq_len;
  int gid, tid, lane, warp;
};

// Scores of one tile in log2 units, keys past the tile's interval masked.
// Both tests are uniform over the warp and taken once per tile, not per
// element: the plain scale and no mask are the path of nearly every tile.
template <class Elem>
__device__ __forceinline__ void tile_scores(float (&s)[2][4], const typename Elem::State& st,
                                            const fd_decode_params& c, const LaunchParams& lp,
                                            bool logit_mods, const CtaRows& cr, int key0,
                                            int key_end) {
  if constexpr (Elem::kKeysAsM) {  // s[0][e]: key gid + 8 (e >> 1), head 2t + (e & 1)
    if (!logit_mods) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[0][e] = Elem::log2_score(st, s[0][e], e & 1);
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + cr.gid + 8 * (e >> 1);
        s[0][e] = modified_logit(Elem::logit(st, s[0][e], e & 1), c, lp.soft_cap_inv,
                                 2 * cr.tid + (e & 1), cr.nh, cr.hq0, key, cr.seq_len) *
                  kLog2e;
      }
    }
    if (key0 + kTileKeys <= key_end) return;
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (key0 + cr.gid + 8 * (e >> 1) >= key_end) s[0][e] = -INFINITY;
    return;
  }
  if (!logit_mods) {
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = Elem::log2_score(st, s[n][e], e >> 1);
  } else {
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + n * 8 + cr.tid * 2 + (e & 1);
        s[n][e] = modified_logit(Elem::logit(st, s[n][e], e >> 1), c, lp.soft_cap_inv,
                                 cr.gid + (e >> 1) * 8, cr.nh, cr.hq0, key, cr.seq_len) *
                  kLog2e;
      }
  }
  if (key0 + kTileKeys <= key_end) return;
#pragma unroll
  for (int n = 0; n < 2; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (key0 + n * 8 + cr.tid * 2 + (e & 1) >= key_end) s[n][e] = -INFINITY;
}

// Online softmax with the keys as M over TILES tiles at once (s[t]: the four
// scores s[0][e] of tile t, keys gid, gid + 8 of heads 2t', 2t' + 1): one max,
// one rescale of the state and one sum for all of them; the maxima and sums
// run across the 8 lanes of one t'. The tiles' scores become their weights.
template <int NT, int TILES>
__device__ __forceinline__ void online_softmax_km(float* const (&s)[TILES], RowState<NT>& rs) {
  float mx[2] = {fmaxf(s[0][0], s[0][2]), fmaxf(s[0][1], s[0][3])};
#pragma unroll
  for (int t = 1; t < TILES; ++t) {
    mx[0] = fmaxf(mx[0], fmaxf(s[t][0], s[t][2]));
    mx[1] = fmaxf(mx[1], fmaxf(s[t][1], s[t][3]));
  }
  float alpha[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 4));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 8));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 16));
    const float m_new = fmaxf(rs.m[r], mx[r]);
    const float base = m_new == -INFINITY ? 0.f : m_new;
    alpha[r] = ptx::exp2_ftz(rs.m[r] - base);
    rs.m[r] = m_new;
    mx[r] = base;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e)
#pragma unroll
    for (int t = 0; t < TILES; ++t) s[t][e] = ptx::exp2_ftz(s[t][e] - mx[e & 1]);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = s[0][r] + s[0][2 + r];
#pragma unroll
    for (int t = 1; t < TILES; ++t) sum = sum + (s[t][r] + s[t][2 + r]);
    rs.l[r] = rs.l[r] * alpha[r] + sum;
  }
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    rs.o[n][0] *= alpha[0];
    rs.o[n][1] *= alpha[1];
    rs.o[n][2] *= alpha[0];
    rs.o[n][3] *= alpha[1];
  }
}

// Online softmax over one tile's scores (rows gid: e = 0, 1 and gid + 8: e = 2,
// 3): s becomes the tile's weights, the state is rescaled to the new max.
// With the keys as M (KM), s[0] holds keys gid, gid + 8 of heads 2t, 2t + 1
// (online_softmax_km).
template <int NT, bool KM>
__device__ __forceinline__ void online_softmax(float (&s)[2][4], RowState<NT>& rs) {
  if constexpr (KM) {
    float* const tiles[1] = {s[0]};
    online_softmax_km<NT, 1>(tiles, rs);
    return;
  }
  float mx[2] = {fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1])),
                 fmaxf(fmaxf(s[0][2], s[0][3]), fmaxf(s[1][2], s[1][3]))};
  float alpha[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    const float m_new = fmaxf(rs.m[r], mx[r]);
    const float base = m_new == -INFINITY ? 0.f : m_new;  // no keys yet: keep 0 * finite
    alpha[r] = ptx::exp2_ftz(rs.m[r] - base);
    rs.m[r] = m_new;
    mx[r] = base;
  }
#pragma unroll
  for (int n = 0; n < 2; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] = ptx::exp2_ftz(s[n][e] - mx[e >> 1]);
  rs.l[0] = rs.l[0] * alpha[0] + (s[0][0] + s[0][1]) + (s[1][0] + s[1][1]);
  rs.l[1] = rs.l[1] * alpha[1] + (s[0][2] + s[0][3]) + (s[1][2] + s[1][3]);
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    rs.o[n][0] *= alpha[0];
    rs.o[n][1] *= alpha[0];
    rs.o[n][2] *= alpha[1];
    rs.o[n][3] *= alpha[1];
  }
}

// Streams this warp's tiles of `span` and returns its softmax state.
// VEC: 16-byte cp.async ring of STAGES slots; otherwise one slot, element loads.
template <class Elem, class Tr, bool VEC, class Source>
__device__ __forceinline__ void run_mainloop(RowState<Elem::template acc_tiles<Tr::kDpad>()>& rs,
                                             unsigned char* smem,
                                             Source& src, typename Elem::State& st,
                                             const fd_decode_params& c, const LaunchParams& lp,
                                             const KeySpan& span, const CtaRows& cr,
                                             bool logit_mods) {
  constexpr int DPAD = Tr::kDpad, WARPS = Tr::kWarps, STAGES = Tr::kStages;
  constexpr int KSTEPS = DPAD / 16;  // QK^T reduction steps over head_dim
  constexpr int NT = Elem::template acc_tiles<DPAD>();  // output tiles of PV
  using Tile = typename Tr::Tile;
  static_assert(DPAD % 16 == 0, "head_dim buckets are multiples of 16");
  static_assert(STAGES >= 2 || !VEC, "the cp.async ring needs two stages");
  const int warp = cr.warp, lane = cr.lane;
  // Which of the span's tiles this warp takes. Round robin (tile warp + j *
  // WARPS) keeps the CTA's copies in flight one contiguous stretch, 1-5% faster
  // than a contiguous range per warp on contiguous caches (docs/RESULTS.md).
  // Whole-tile page pools (Source::kWarpRanges) may instead deal each warp a
  // contiguous range of tiles (LaunchParams::warp_ranges, where the host
  // measured it faster: a warp then meets a new block-table line once per 32
  // of its own tiles at page 16, where round robin crosses one every 32 / WARPS).
  const bool ranges = Source::kWarpRanges && lp.warp_ranges != 0;
  const int range_tiles = span.tiles / WARPS, range_extra = span.tiles - range_tiles * WARPS;
  const int my_tiles = ranges ? range_tiles + (warp < range_extra ? 1 : 0)
                       : span.tiles > warp ? (span.tiles - warp + WARPS - 1) / WARPS
                                           : 0;
  const int first_tile = ranges ? warp * range_tiles + min(warp, range_extra) : warp;
  const int tile_step = ranges ? 1 : WARPS;

  // The ring's base stays in a per-thread register (ptx::pin): as a uniform
  // register, ptxas 13.0 gave the contiguous kernels' evict-first copies
  // descriptor registers nothing writes (LDGSTS desc[UR1]: an illegal
  // instruction at run time), in some builds of every bucket. The pin costs
  // padded tiles (D = 80, 96) 3% more loop instructions. tools/sass_check.py
  // checks every build for such instructions.
  unsigned char* ring = ptx::pin(smem + warp * STAGES * Tile::kStageBytes);
  auto tile_of = [&](int j) { return first_tile + j * tile_step; };
  const bool evict_first = VEC && lp.kv_evict_first != 0;
  const uint64_t policy = ptx::make_evict_first_policy();
  const int head_dim = c.head_dim;
  // Tile j of this warp is loaded once, in order; a paged source looks up
  // tile j + 1's pages while tile j streams (fetch), a contiguous one has
  // nothing to look up.
  auto fetch = [&](int j) {
    if (j < my_tiles) src.fetch(span.key0(tile_of(j)), span.end(tile_of(j)), lane);
  };
  auto load = [&](int j) {
    src.take(span.key0(tile_of(j)), span.end(tile_of(j)), lane);
    unsigned char* sk = ring + (j % STAGES) * Tile::kStageBytes;
    if constexpr (VEC) {
      if (evict_first)
        copy_tile_vec<Tr, true>(sk, sk + Tile::kTileBytes, src, c, head_dim, lane, policy);
      else
        copy_tile_vec<Tr, false>(sk, sk + Tile::kTileBytes, src, c, head_dim, lane, policy);
    } else {
      copy_tile_elems<Tr>(sk, sk + Tile::kTileBytes, src, c, head_dim, lane);
    }
    fetch(j + 1);
  };
  // Block-table lines warmed in L1 (sources with kWarmsTable: the host picks
  // them, LaunchShape::table_warmup). At page 16 a warp's tiles are WARPS table
  // entries apart, so a 128-byte line holds the entries of its next 4 (8-warp
  // CTAs) or 8 tiles, and the CTA's warps all ask for each new line at about
  // the same time: the lookup made one tile ahead then waits on L2 (Nsight
  // Compute, docs/RESULTS.md). Lane i copies the entry of the warp's tile
  // j + i through L1 (a window of 32 tiles) 16 tiles before the window's
  // first; window 0 in the loop's first step, after the prologue's copies.
  // The words land in a scratch nothing reads (two windows of 32 words per
  // warp past the kernel's ring and epilogue, which the launch adds to the
  // dynamic shared memory): only the L1 lines matter.
  constexpr bool kWarmTable = VEC && Source::kWarmsTable;
  uint32_t* table_scratch = reinterpret_cast<uint32_t*>(smem + Tr::kSmemBytes) +
                            warp * (kTableScratchBytesPerWarp / 4);
  auto warm = [&](int j) {  // the window of this warp's tiles j .. j + 31
    if (j + lane < my_tiles)
      src.warm_entry(span.key0(tile_of(j + lane)), table_scratch + ((j >> 5) & 1) * 32 + lane);
  };
  // Window 0 at the loop's first step j = 0, window m at step 32 m - 16.
  auto warm_due = [&](int j) { return kWarmTable && (j == 0 || (j & 31) == 16); };
  auto warm_window = [&](int j) { return j == 0 ? 0 : j + 16; };

  // Kernels that take tiles in pairs (Elem::kPairTiles with a ring of
  // kPairStages) load STAGES - 2 tiles ahead; the others STAGES - 1.
  constexpr bool kPairs = VEC && Elem::kPairTiles && STAGES >= kPairStages;
  constexpr int kAhead = kPairs ? STAGES - 2 : STAGES - 1;
  fetch(0);
  if constexpr (VEC) {
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      if (j < my_tiles) load(j);
      ptx::cp_async_commit();
    }
  }

  // Query rows of this CTA as mma A fragments (rows >= nh and columns >= D are 0),
  // read after the first K/V copies are on their way so both latencies overlap.
  uint32_t qf[KSTEPS][4];
  if constexpr (Elem::kFp8) {
    Elem::template q_elements<KSTEPS>(qf, st, c, lp, cr.b, cr.hq0, cr.nh, cr.gid, cr.tid);
  } else if constexpr (VEC && !Elem::kKeysAsM) {
    // Staged through this warp's last ring slot, which the prologue left
    // empty and the loop's first step refills.
    if (lp.q_vec)
      Elem::template q_staged<Tr, KSTEPS>(qf, ring + (STAGES - 1) * Tile::kStageBytes, c, cr.b,
                                          cr.hq0, cr.nh, lane);
    else
      Elem::template q_elements<KSTEPS>(qf, c, cr.b, cr.hq0, cr.nh, cr.gid, cr.tid);
  } else {
    Elem::template q_elements<KSTEPS>(qf, c, cr.b, cr.hq0, cr.nh, cr.gid, cr.tid);
  }

  int j0 = 0;  // the first tile the one-tile loop below takes
  if constexpr (kPairs) {
    // Tiles j and j + 1 from slots j % STAGES and (j + 1) % STAGES. Before
    // the wait the tiles up to j + STAGES - 3 are committed, one group each:
    // at most STAGES - 4 may still be in flight. The slots of tiles j - 2 and
    // j - 1 (the previous pair) are then free for tiles j + STAGES - 2 and
    // j + STAGES - 1; the second is loaded after the first tile's scores, so a
    // paged source's lookup of it (fetched by the first load) has a tile's
    // mma to land.
    for (; j0 + 1 < my_tiles; j0 += 2) {
      const int j = j0;
      ptx::cp_async_wait<STAGES - 4>();
      __syncwarp();
      if (j + STAGES - 2 < my_tiles) load(j + STAGES - 2);
      if (warm_due(j)) warm(warm_window(j));
      ptx::cp_async_commit();
      const unsigned char* ska = ring + (j % STAGES) * Tile::kStageBytes;
      const unsigned char* skb = ring + ((j + 1) % STAGES) * Tile::kStageBytes;
      const int ta = tile_of(j), tb = tile_of(j + 1);
      float sa[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
      float sb[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
      Elem::template qk<Tr, KSTEPS>(sa, qf, ska, lane);
      if (j + STAGES - 1 < my_tiles) load(j + STAGES - 1);
      ptx::cp_async_commit();
      Elem::template qk<Tr, KSTEPS>(sb, qf, skb, lane);
      tile_scores<Elem>(sa, st, c, lp, logit_mods, cr, span.key0(ta), span.end(ta));
      tile_scores<Elem>(sb, st, c, lp, logit_mods, cr, span.key0(tb), span.end(tb));
      float* const pair[2] = {sa[0], sb[0]};
      online_softmax_km<NT, 2>(pair, rs);
      Elem::template pv<Tr, NT>(rs.o, sa, ska + Tile::kTileBytes, lane);
      Elem::template pv<Tr, NT>(rs.o, sb, skb + Tile::kTileBytes, lane);
    }
    // An odd last tile: every group but empty ones has landed once it is in.
    if (j0 < my_tiles) ptx::cp_async_wait<0>();
  }

  for (int j = j0; j < my_tiles; ++j) {
    if constexpr (kPairs) {
      // Only the odd last tile of a pair loop comes here: it is in (above).
      __syncwarp();
    } else if constexpr (VEC) {
      ptx::cp_async_wait<STAGES - 2>();
      __syncwarp();
      // Refill the slot every lane finished reading in the previous step.
      if (j + STAGES - 1 < my_tiles) load(j + STAGES - 1);
      if (warm_due(j)) warm(warm_window(j));
      ptx::cp_async_commit();
    } else {
      load(j);
      __syncwarp();
    }
    const unsigned char* sk = ring + (j % STAGES) * Tile::kStageBytes;
    const unsigned char* sv = sk + Tile::kTileBytes;
    const int t = tile_of(j);

    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    Elem::template qk<Tr, KSTEPS>(s, qf, sk, lane);
    tile_scores<Elem>(s, st, c, lp, logit_mods, cr, span.key0(t), span.end(t));
    online_softmax<NT, Elem::kKeysAsM>(s, rs);
    Elem::template pv<Tr, NT>(rs.o, s, sv, lane);
    if constexpr (!VEC) __syncwarp();  // the next synchronous load reuses the slot
  }
  if constexpr (VEC) ptx::cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if constexpr (Elem::kKeysAsM) {
      rs.l[r] += __shfl_xor_sync(0xffffffffu, rs.l[r], 4);
      rs.l[r] += __shfl_xor_sync(0xffffffffu, rs.l[r], 8);
      rs.l[r] += __shfl_xor_sync(0xffffffffu, rs.l[r], 16);
    } else {
      rs.l[r] += __shfl_xor_sync(0xffffffffu, rs.l[r], 1);
      rs.l[r] += __shfl_xor_sync(0xffffffffu, rs.l[r], 2);
    }
  }
}

}  // namespace fd
