// Traits of a decode kernel: its CTA shape (warps, ring stages), the layout of
// a K or V tile in shared memory, and the shared memory a CTA needs. Sized from
// the head-dim bucket and the bytes of one stored KV element, so a 1-byte fp8
// cache and a 2-byte f16 cache share the code.
#pragma once

#include <cstddef>

#include "../cta_shape.h"

namespace fd {

// A tile of kTileKeys rows of ROW_BYTES each (one row = one key's head_dim
// elements), addressed in 16-byte chunks.
//
// Rows that are a multiple of 128 bytes are stored unpadded with their chunks
// permuted, chunk c of row r at c ^ (r & 7): a warp's 16-byte copies land on
// whole 128-byte lines and the 8 rows an ldmatrix reads hit distinct banks. A
// 16-byte row pad misaligns the copies (1.6x the L2 requests, 3-5% slower
// streams at D = 128, docs/RESULTS.md). Other rows keep the pad: an odd number
// of chunks per row also spreads 8 rows over distinct banks, and rounding
// 80- and 96-element rows up to 128 and permuting was 6.6% slower at 32/8 D96
// B4 K4096 while 2.5-3% faster at B32 (docs/RESULTS.md).
template <int ROW_BYTES>
struct TileLayout {
  static_assert(ROW_BYTES % 16 == 0, "rows are whole 16-byte chunks");
  static constexpr bool kSwizzle = ROW_BYTES % 128 == 0;
  static constexpr int kChunks = ROW_BYTES / 16;
  static constexpr int kRowStride = kSwizzle ? ROW_BYTES : ROW_BYTES + 16;  // bytes
  static constexpr int kTileBytes = kTileKeys * kRowStride;
  static constexpr int kStageBytes = 2 * kTileBytes;  // the K tile, then the V tile

  // Byte offset of 16-byte chunk `chunk` of tile row `row`.
  static __device__ __forceinline__ int chunk_offset(int row, int chunk) {
    return row * kRowStride + (kSwizzle ? (chunk ^ (row & 7)) : chunk) * 16;
  }
};

// DPAD: the head-dim bucket; KV_BYTES: bytes of one stored K/V element;
// WARPS, STAGES: the CTA's warps and each warp's cp.async ring depth.
template <int DPAD, int KV_BYTES, int WARPS, int STAGES>
struct KernelTraits {
  static constexpr int kDpad = DPAD;
  static constexpr int kWarps = WARPS;
  static constexpr int kThreads = WARPS * 32;
  static constexpr int kStages = STAGES;
  static constexpr int kKvBytes = KV_BYTES;
  static constexpr int kElemsPerChunk = 16 / KV_BYTES;
  using Tile = TileLayout<DPAD * KV_BYTES>;

  // The epilogue reuses the ring: per warp and query row its max, sum and DPAD
  // outputs (rows kOutStride floats apart: 8 floats of padding keep the warps'
  // stores of 8 rows at once off one bank).
  static constexpr int kOutStride = DPAD + 8;
  static constexpr size_t kEpilogueBytes =
      sizeof(float) * (2 * WARPS * kMaxGroupPerCta + WARPS * kMaxGroupPerCta * kOutStride);
  static constexpr size_t kRingBytes = size_t{1} * WARPS * STAGES * Tile::kStageBytes;
  static constexpr size_t kSmemBytes = kRingBytes > kEpilogueBytes ? kRingBytes : kEpilogueBytes;
};

// Ring depth of the vectorised kernels: enough tiles in flight per SM to cover
// HBM latency (Little's law: ~19 bytes per cycle per SM on an H200 times ~2000
// cycles), within the shared memory of the smallest GPU the cell must run on.
// 16-bit D <= 128: three stages (two 8 KB tiles per warp in flight at D = 128);
// from D = 160 a stage is 10-16 KB per warp and two already hold more than an
// SM's share, while three would not fit sm_80 at D = 256. fp8 tiles are half
// the bytes: one stage more.
template <int DPAD, int KV_BYTES>
constexpr int vec_stages() {
  return (DPAD <= 128 ? 3 : 2) + (KV_BYTES == 1 ? 1 : 0);
}

// The ring of kernels that take their tiles in pairs (Elem::kPairTiles,
// mainloop.cuh): two tiles being read, two landing, two being loaded.
constexpr int kPairStages = 6;

}  // namespace fd
