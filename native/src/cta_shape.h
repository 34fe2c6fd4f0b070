// The shape of a decode CTA, shared by the kernels and the host planner: how
// many keys a warp takes per step, how many warps a CTA has, how many query
// heads share one CTA. Plain constants, no CUDA types.
#pragma once

#include <cstdint>

namespace fd {

constexpr int kTileKeys = 16;        // keys one warp takes per step (one mma k-tile)
constexpr int kWarpsPerCta = 4;      // warps of the split kernel
constexpr int kWideWarpsPerCta = 8;  // warps of the wide split kernel (unsplit grids)
constexpr int kMaxGroupPerCta = 16;  // query rows of one mma tile
// CTAs of at most this many query heads can take the keys-as-M kernels
// (kv_element_km.cuh): the heads are the mma's N of 8.
constexpr int kKeysAsMMaxHeads = 8;
// Whole-tile page pools whose pages, one per warp of a CTA, hold at most this
// many K bytes per KV head together (4 warps: pages of 16 keys of D = 128 in
// 16 bits or of 32 fp8 keys; 8 warps: half that) can take kernels that warm
// their block-table lines in L1 (PagedTilesWarmKv, launch_plan.cpp).
constexpr int kTableWarmupStepBytes = 16384;
// Shared memory per warp of those kernels' block-table scratch (two windows
// of 32 table words), past the ring.
constexpr int kTableScratchBytesPerWarp = 256;
// Unsplit grids of more CTAs than the SMs hold at once, with per-sequence
// lengths, of at most this many sequences take them longest first (cta_order.cuh).
constexpr int kLongestFirstMaxBatch = 256;
// A split gives every warp of a CTA at least one tile.
constexpr int kMinChunk = kTileKeys * kWarpsPerCta;

}  // namespace fd
