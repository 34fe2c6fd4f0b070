// Copies of K/V rows from a KV source into a warp's shared-memory tile, and
// the L2 prefetch of a CTA's first rows before its PDL wait.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../kernel_params.h"
#include "kv_source.cuh"
#include "ptx.cuh"
#include "traits.cuh"

namespace fd {

// The L2 prefetch hint of a K/V copy (bytes; 0: none). Rows of whole 128-byte
// lines (the swizzled layout) need none: a warp's copies cover whole lines,
// and no hint measured 0-1% faster. Padded rows (16-bit D = 80, 96, 160; fp8
// D = 64, 96, 160, 192) of a contiguous cache take none either: there the
// 256-byte hint made L2 serve 1.5x the sectors the kernel reads and cost up
// to 6% (H200, docs/RESULTS.md). Page pools keep it: in an NHD pool the 256
// bytes around a row hold other KV heads' rows of the same key, which other
// CTAs read next (without it fp8 D64 at page 16 was 5% slower, fp8 D96 4%,
// 16-bit D96 at page 1 3%).
template <class Tr, class Source>
constexpr int copy_l2_prefetch() {
  return Tr::Tile::kSwizzle || !Source::kPaged ? 0 : 256;
}

// One 16-key tile of K and V (the source's current tile) into sk / sv: rows
// past the tile's end and columns >= head_dim are zero-filled.
// Vectorised: 16-byte cp.async (head_dim * element bytes a multiple of 16,
// 16-byte aligned rows); K and V rows interleaved, measured 1.5-3% faster than
// all K rows, then all V rows (docs/RESULTS.md). EVICT_FIRST: the copies carry
// an evict-first L2 policy (LaunchParams::kv_evict_first).
template <class Tr, bool EVICT_FIRST, bool UNIFORM, bool FULL, class Source>
__device__ __forceinline__ void copy_rows_vec(unsigned char* sk, unsigned char* sv,
                                              const Source& src, const fd_decode_params& c,
                                              int head_dim, int lane, uint64_t policy) {
  using Tile = typename Tr::Tile;
  using E = typename KvStorage<Tr::kKvBytes>::type;
  constexpr int kPrefetch = copy_l2_prefetch<Tr, Source>();
  constexpr int kChunks = Tile::kChunks;
  constexpr int kCopies = kTileKeys * kChunks;
  constexpr int kSteps = (kCopies + 31) / 32;
#pragma unroll
  for (int it = 0; it < kSteps; ++it) {
    const int i = lane + it * 32;
    // Every lane takes part in row() (a paged source may shuffle); a lane past
    // the last copy of an uneven step asks for row 0 and copies nothing.
    const bool in_step = kCopies % 32 == 0 || i < kCopies;
    const int row = in_step ? i / kChunks : 0, ch = i % kChunks;
    const unsigned char* kr;
    const unsigned char* vr;
    const bool row_ok = UNIFORM ? src.template row_in_base<Tr::kKvBytes>(c, row, &kr, &vr)
                                : src.template row<Tr::kKvBytes>(c, row, &kr, &vr);
    if (!in_step) continue;
    const bool ok = FULL || (row_ok && ch * Tr::kElemsPerChunk < head_dim);
    const void* ks = ok ? reinterpret_cast<const E*>(kr) + ch * Tr::kElemsPerChunk
                        : static_cast<const void*>(src.k);
    const void* vs = ok ? reinterpret_cast<const E*>(vr) + ch * Tr::kElemsPerChunk
                        : static_cast<const void*>(src.v);
    const int off = Tile::chunk_offset(row, ch);
    ptx::cp_async_16<kPrefetch, EVICT_FIRST>(sk + off, ks, ok ? 16 : 0, policy);
    ptx::cp_async_16<kPrefetch, EVICT_FIRST>(sv + off, vs, ok ? 16 : 0, policy);
  }
}

// A full tile whose rows are one base apart: lane l takes copies l, l + 32,
// ... of the tile's row-major chunks, at addresses that advance by constants
// from the tile's first row instead of a 64-bit product per address (the same
// addresses, in about a third of the instructions). Where a row's chunks
// divide 32 (rows of 64, 128, 256 or 512 bytes) a lane keeps its chunk and
// steps 32 / chunks rows. Otherwise (80- and 96-element 16-bit rows: 10 and 12
// chunks; 160 and 192; fp8 96, 160, 192) step `it` moves it (32 * it) / chunks
// rows and (32 * it) % chunks chunks on, plus one row where its chunk wraps
// past the row's end (at most once: both parts are below a row); contiguous
// caches only: in page pools, where the copies keep the L2 hint, that loop
// measured 1.6-2% slower on fp8 D96 at page 16 (H200, docs/RESULTS.md).
template <class Tr, bool EVICT_FIRST, class Source>
__device__ __forceinline__ void copy_full_rows_vec(unsigned char* sk, unsigned char* sv,
                                                   const Source& src, const fd_decode_params& c,
                                                   int lane, uint64_t policy) {
  using Tile = typename Tr::Tile;
  constexpr int kPrefetch = copy_l2_prefetch<Tr, Source>();
  constexpr int kChunks = Tile::kChunks;
  static_assert(kTileKeys * kChunks % 32 == 0, "every lane copies in every step");
  constexpr int kSteps = kTileKeys * kChunks / 32;
  const int row0 = lane / kChunks, ch0 = lane % kChunks;
  const unsigned char* kr;
  const unsigned char* vr;
  src.template row_in_base<Tr::kKvBytes>(c, row0, &kr, &vr);
  kr += ch0 * 16;
  vr += ch0 * 16;
  const int64_t k_row = src.template k_row_bytes<Tr::kKvBytes>(c);
  const int64_t v_row = src.template v_row_bytes<Tr::kKvBytes>(c);
  if constexpr (32 % kChunks == 0) {
    constexpr int kRowsPerStep = 32 / kChunks;
    const int64_t k_step = kRowsPerStep * k_row, v_step = kRowsPerStep * v_row;
#pragma unroll
    for (int it = 0; it < kSteps; ++it) {
      const int off = Tile::chunk_offset(row0 + it * kRowsPerStep, ch0);
      ptx::cp_async_16<kPrefetch, EVICT_FIRST>(sk + off, kr, 16, policy);
      ptx::cp_async_16<kPrefetch, EVICT_FIRST>(sv + off, vr, 16, policy);
      kr += k_step;
      vr += v_step;
    }
  } else {
    static_assert(!Source::kPaged, "page pools take copy_rows_vec for such rows (copy_tile_vec)");
    // Where a lane's chunk wraps: back one row's chunks, on one row.
    const int64_t k_wrap = k_row - kChunks * 16, v_wrap = v_row - kChunks * 16;
#pragma unroll
    for (int it = 0; it < kSteps; ++it) {
      const int rows = (32 * it) / kChunks, chunks = (32 * it) % kChunks;
      const bool wraps = ch0 + chunks >= kChunks;
      const int row = row0 + rows + (wraps ? 1 : 0);
      const int ch = ch0 + chunks - (wraps ? kChunks : 0);
      const int64_t k_off = rows * k_row + chunks * 16 + (wraps ? k_wrap : 0);
      const int64_t v_off = rows * v_row + chunks * 16 + (wraps ? v_wrap : 0);
      const int off = Tile::chunk_offset(row, ch);
      ptx::cp_async_16<kPrefetch, EVICT_FIRST>(sk + off, kr + k_off, 16, policy);
      ptx::cp_async_16<kPrefetch, EVICT_FIRST>(sv + off, vr + v_off, 16, policy);
    }
  }
}

// One 16-key tile of K and V (the source's current tile) into sk / sv: rows
// past the tile's end and columns >= head_dim are zero-filled.
// Vectorised: 16-byte cp.async (head_dim * element bytes a multiple of 16,
// 16-byte aligned rows); K and V rows interleaved, measured 1.5-3% faster than
// all K rows, then all V rows (docs/RESULTS.md). EVICT_FIRST: the copies carry
// an evict-first L2 policy (LaunchParams::kv_evict_first). A tile whose rows
// are one base apart (always, for a contiguous cache) takes the copy loop
// without per-row lookups, and one that is also full (16 keys, every chunk
// of a row inside head_dim: nearly every tile) takes it without the bounds
// tests and zero fills; the choices are warp-uniform.
template <class Tr, bool EVICT_FIRST, class Source>
__device__ __forceinline__ void copy_tile_vec(unsigned char* sk, unsigned char* sv,
                                              const Source& src, const fd_decode_params& c,
                                              int head_dim, int lane, uint64_t policy) {
  if (src.rows_from_base()) {
    if (src.tile_full() && head_dim > Tr::kDpad - Tr::kElemsPerChunk) {
      if constexpr (32 % Tr::Tile::kChunks == 0 || !Source::kPaged)
        copy_full_rows_vec<Tr, EVICT_FIRST>(sk, sv, src, c, lane, policy);
      else
        copy_rows_vec<Tr, EVICT_FIRST, true, true>(sk, sv, src, c, head_dim, lane, policy);
    } else
      copy_rows_vec<Tr, EVICT_FIRST, true, false>(sk, sv, src, c, head_dim, lane, policy);
  } else {
    copy_rows_vec<Tr, EVICT_FIRST, false, false>(sk, sv, src, c, head_dim, lane, policy);
  }
}

// The same with element loads, for any head_dim, stride or alignment.
template <class Tr, class Source>
__device__ __forceinline__ void copy_tile_elems(unsigned char* sk, unsigned char* sv,
                                                const Source& src, const fd_decode_params& c,
                                                int head_dim, int lane) {
  using Tile = typename Tr::Tile;
  using E = typename KvStorage<Tr::kKvBytes>::type;
  constexpr int DPAD = Tr::kDpad;
  static_assert(kTileKeys * DPAD % 32 == 0, "every lane runs every step (row() shuffles)");
  for (int i = lane; i < kTileKeys * DPAD; i += 32) {
    const int row = i / DPAD, col = i % DPAD;
    const unsigned char* kr;
    const unsigned char* vr;
    const bool ok = src.template row<Tr::kKvBytes>(c, row, &kr, &vr) && col < head_dim;
    const int off = Tile::chunk_offset(row, col / Tr::kElemsPerChunk) +
                    (col % Tr::kElemsPerChunk) * Tr::kKvBytes;
    *reinterpret_cast<E*>(sk + off) = ok ? reinterpret_cast<const E*>(kr)[col] : E{0};
    *reinterpret_cast<E*>(sv + off) = ok ? reinterpret_cast<const E*>(vr)[col] : E{0};
  }
}

// Prefetches into L2 the first `keys` K/V rows of a CTA's chunk while it waits
// for the previous grid in the stream (PDL): that wait (~0.75 us) and the
// first tiles' HBM latency overlap instead of adding up. One bulk prefetch per
// row (per-sector prefetches and dummy 256-byte loads measured slower). Only
// kernel parameters are read: seq_lens may still be being written, so with it
// only split 0 prefetches (a chunk past a sequence's end would cost reads
// nothing uses).
template <class Tr, class Source>
__device__ __forceinline__ void prefetch_first_rows(const fd_decode_params& c,
                                                    const LaunchParams& lp, const Source& src,
                                                    int split, int chunk_len, bool has_seq_lens) {
  const int keys = lp.prefetch_keys;
  if (keys <= 0 || (has_seq_lens && split != 0)) return;
  const int k_len = c.k_len;
  const int chunk0 = split * chunk_len;  // < k_len: the splits cover K, none empty
  int begin = chunk0;
  if (!has_seq_lens && c.window_size > 0) begin = max(begin, k_len - c.window_size);
  // chunk0 + chunk_len may pass INT32_MAX on the last split; k_len - chunk0 cannot.
  const int end = min(chunk0 + min(chunk_len, k_len - chunk0), begin + min(keys, k_len - begin));
  const uint32_t row_bytes = static_cast<uint32_t>(c.head_dim) * Tr::kKvBytes;
  for (int i = threadIdx.x; i < 2 * (end - begin); i += Tr::kThreads) {
    const int key = begin + (i >> 1);
    const unsigned char* kr;
    const unsigned char* vr;
    if (src.template prefetch_row<Tr::kKvBytes>(c, key, &kr, &vr))
      ptx::prefetch_l2((i & 1) ? vr : kr, row_bytes);
  }
}

}  // namespace fd
