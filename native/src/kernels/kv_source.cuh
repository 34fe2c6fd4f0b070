// KV sources: where key j of (sequence b, KV head h) lives. A source hands the
// tile copies a byte address for each row of the 16-key tile being loaded.
//
//   ContiguousKv  k + b*k_stride_b + h*k_stride_h + j*k_stride_k (any strides)
//   PagedKv       a page pool and a block table: page = table[b][j / page_size],
//                 row j % page_size of that page
//   PagedTilesKv  the same for pools whose every 16-key tile lies in one page
//   PagedTilesWarmKv  PagedTilesKv that warms its block-table lines in L1
//
// Each presents the same interface to the mainloop:
//   length(raw)            a sequence's length from seq_lens[b] (device data)
//   fetch(key0, end, lane) start looking up the rows of the next tile to load
//   take(key0, end, lane)  that tile becomes the current one
//   row(c, r, &k, &v)      addresses of row r of the current tile; false past
//                          the tile's end
//   prefetch(...)          L2 prefetch of a CTA's first rows before the PDL wait
//   kWarmsTable, warm_entry(key0, dst)
//                          a source whose lookups read a block table can bring
//                          the table line of tile key0's entry into L1 ahead
//   bad                    a page id or a length outside what the caller
//                          described was seen: the CTA's rows become NaN
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../kernel_params.h"
#include "../cta_shape.h"
#include "../kv_layouts.h"
#include "ptx.cuh"

namespace fd {

// The integer type of one stored K/V element (bits only).
template <int KV_BYTES>
struct KvStorage {
  using type = typename std::conditional<KV_BYTES == 1, uint8_t, uint16_t>::type;
};

struct ContiguousKv {
  static constexpr bool kPaged = false;
  static constexpr bool kWarpRanges = false;  // tiles always dealt round robin (mainloop.cuh)
  static constexpr bool kWarmsTable = false;
  __device__ __forceinline__ void warm_entry(int, void*) const {}
  const unsigned char* k;  // this (sequence, KV head)'s first row
  const unsigned char* v;
  int key0 = 0, end = 0;   // the current tile
  bool bad = false;        // never: contiguous lengths are clamped

  template <int KV_BYTES>
  __device__ __forceinline__ void init(const fd_decode_params& c, int b, int kvh) {
    k = ptx::pin(static_cast<const unsigned char*>(c.k) +
                 (b * c.k_stride_b + kvh * c.k_stride_h) * KV_BYTES);
    v = ptx::pin(static_cast<const unsigned char*>(c.v) +
                 (b * c.v_stride_b + kvh * c.v_stride_h) * KV_BYTES);
  }
  // Contiguous lengths are clamped into [0, k_len] (the header's contract).
  __device__ __forceinline__ int length(int raw, int k_len) { return min(max(raw, 0), k_len); }

  // Nothing to look up ahead: a row's address is arithmetic.
  __device__ __forceinline__ void fetch(int, int, int) {}
  __device__ __forceinline__ void prefetch_table(int, int) const {}
  __device__ __forceinline__ void take(int key0_, int end_, int) {
    key0 = key0_;
    end = end_;
  }
  // The row strides are read from the kernel parameters where they are used,
  // and the arithmetic is done on element pointers (one shifted add per
  // address; byte arithmetic took twice the integer instructions per row).
  template <int KV_BYTES>
  __device__ __forceinline__ bool row(const fd_decode_params& c, int r, const unsigned char** kp,
                                      const unsigned char** vp) const {
    using E = typename KvStorage<KV_BYTES>::type;
    const int key = key0 + r;
    *kp = reinterpret_cast<const unsigned char*>(reinterpret_cast<const E*>(k) + key * c.k_stride_k);
    *vp = reinterpret_cast<const unsigned char*>(reinterpret_cast<const E*>(v) + key * c.v_stride_k);
    return key < end;
  }
  // Every tile's rows are one base apart.
  static constexpr bool rows_from_base() { return true; }
  // The current tile has all 16 keys.
  __device__ __forceinline__ bool tile_full() const { return key0 + kTileKeys <= end; }
  // Bytes from one row of a tile to the next.
  template <int KV_BYTES>
  __device__ __forceinline__ int64_t k_row_bytes(const fd_decode_params& c) const {
    return c.k_stride_k * KV_BYTES;
  }
  template <int KV_BYTES>
  __device__ __forceinline__ int64_t v_row_bytes(const fd_decode_params& c) const {
    return c.v_stride_k * KV_BYTES;
  }
  template <int KV_BYTES>
  __device__ __forceinline__ bool row_in_base(const fd_decode_params& c, int r,
                                              const unsigned char** kp,
                                              const unsigned char** vp) const {
    return row<KV_BYTES>(c, r, kp, vp);
  }
  // Row pointers of key `key` for the pre-wait prefetch (always inside k and v).
  template <int KV_BYTES>
  __device__ __forceinline__ bool prefetch_row(const fd_decode_params& c, int key,
                                               const unsigned char** kp,
                                               const unsigned char** vp) const {
    using E = typename KvStorage<KV_BYTES>::type;
    *kp = reinterpret_cast<const unsigned char*>(reinterpret_cast<const E*>(k) + key * c.k_stride_k);
    *vp = reinterpret_cast<const unsigned char*>(reinterpret_cast<const E*>(v) + key * c.v_stride_k);
    return true;
  }
};

// What both paged sources share: the pools, the sequence's block-table row,
// the length check and the pre-wait prefetch.
struct PagedPool {
  static constexpr bool kPaged = true;
  const unsigned char* k;  // pool base + this KV head's offset
  const unsigned char* v;
  int64_t k_page, v_page;  // bytes between pages
  int64_t k_row, v_row;    // bytes between rows of a page
  const int32_t* table;    // this sequence's block-table row
  int page_size, num_pages;
  int page_shift;  // log2(page_size) for a power of two, else -1
  bool bad = false;

  template <int KV_BYTES>
  __device__ __forceinline__ void init(const fd_decode_params& c, int b, int kvh) {
    k = ptx::pin(static_cast<const unsigned char*>(c.k) + kvh * c.k_stride_h * KV_BYTES);
    v = ptx::pin(static_cast<const unsigned char*>(c.v) + kvh * c.v_stride_h * KV_BYTES);
    k_page = c.k_stride_page * KV_BYTES;
    v_page = c.v_stride_page * KV_BYTES;
    k_row = c.k_stride_k * KV_BYTES;
    v_row = c.v_stride_k * KV_BYTES;
    table = ptx::pin(c.block_table + b * c.block_table_stride_b);
    page_size = ptx::pin(c.page_size);
    num_pages = ptx::pin(c.num_pages);
    page_shift = (page_size & (page_size - 1)) == 0 ? __ffs(page_size) - 1 : -1;
  }
  // Page index and in-page row of key `key` >= 0: a shift and a mask for the
  // power-of-two page sizes engines use; a division by a value known only at
  // run time (an instruction sequence, once per tile and lane) otherwise.
  __device__ __forceinline__ int page_of(int key, int* in_page) const {
    if (page_shift >= 0) {
      *in_page = key & (page_size - 1);
      return key >> page_shift;
    }
    const int i = key / page_size;
    *in_page = key - i * page_size;
    return i;
  }
  // A length outside [0, k_len] (k_len <= max_pages * page_size, checked on
  // the host) would index past the block table: the sequence reads nothing
  // and its rows become NaN.
  __device__ __forceinline__ int length(int raw, int k_len) {
    if (raw < 0 || raw > k_len) {
      bad = true;
      return 0;
    }
    return raw;
  }
  // Bytes from one row of a one-page tile to the next.
  template <int KV_BYTES>
  __device__ __forceinline__ int64_t k_row_bytes(const fd_decode_params&) const { return k_row; }
  template <int KV_BYTES>
  __device__ __forceinline__ int64_t v_row_bytes(const fd_decode_params&) const { return v_row; }
  // The pre-wait prefetch reads the block table before the previous grid has
  // finished (it may still be writing it): a stale id only costs a wasted
  // prefetch, and an id outside the pool is not prefetched.
  template <int KV_BYTES>
  __device__ __forceinline__ bool prefetch_row(const fd_decode_params&, int key,
                                               const unsigned char** kp,
                                               const unsigned char** vp) const {
    int sl;
    const int pg = table[page_of(key, &sl)];
    if (pg < 0 || pg >= num_pages) return false;
    *kp = k + static_cast<int64_t>(pg) * k_page + sl * k_row;
    *vp = v + static_cast<int64_t>(pg) * v_page + sl * v_row;
    return true;
  }
};

// Any page size, any tile alignment: each lane looks up one key of a tile.
struct PagedKv : PagedPool {
  static constexpr bool kWarmsTable = false;
  static constexpr bool kWarpRanges = false;
  __device__ __forceinline__ void warm_entry(int, void*) const {}
  __device__ __forceinline__ void prefetch_table(int, int) const {}
  // Lane l < 16 looks up key key0 + l of a tile: its page id and in-page row.
  int page = 0, slot = 0, key0 = 0, end = 0;
  int next_page = 0, next_slot = 0, next_key0 = 0, next_end = 0;
  bool one_page = false;    // the current tile lies in one page of the pool
  const unsigned char* tile_k = nullptr;  // ... and its first row there
  const unsigned char* tile_v = nullptr;

  // Issues the block-table load of lane (l & 15)'s key of the tile at key0_;
  // its result is first used by take() + row() one tile later, so the load's
  // latency hides behind a tile of compute.
  __device__ __forceinline__ void fetch(int key0_, int end_, int lane) {
    next_key0 = key0_;
    next_end = end_;
    const int key = key0_ + (lane & 15);
    next_page = -1;
    next_slot = 0;
    if (key < end_) next_page = table[page_of(key, &next_slot)];
  }
  // The tile fetched last (key0_, end_ are the same values) becomes current.
  // A tile whose 16 keys lie in one page (page sizes that are multiples of
  // 16, tiles 16-aligned as they are without a window) addresses its rows
  // from that page's base like a contiguous cache; others shuffle each row's
  // page and slot from the lane that looked it up.
  __device__ __forceinline__ void take(int, int, int lane) {
    key0 = next_key0;
    end = next_end;
    page = next_page;
    slot = next_slot;
    // A page id outside the pool among the keys the sequence needs.
    if (key0 + (lane & 15) < end && (page < 0 || page >= num_pages)) bad = true;
    const int page0 = __shfl_sync(0xffffffffu, page, 0);
    const int slot0 = __shfl_sync(0xffffffffu, slot, 0);
    one_page = slot0 + kTileKeys <= page_size && page0 >= 0 && page0 < num_pages;
    if (one_page) {
      tile_k = k + static_cast<int64_t>(page0) * k_page + slot0 * k_row;
      tile_v = v + static_cast<int64_t>(page0) * v_page + slot0 * v_row;
    }
  }
  // Whether the current tile lies in one page (then row_in_base), else each
  // row is looked up (row, which shuffles: every lane must call it together).
  __device__ __forceinline__ bool rows_from_base() const { return one_page; }
  // The current tile has all 16 keys.
  __device__ __forceinline__ bool tile_full() const { return key0 + kTileKeys <= end; }
  template <int KV_BYTES>
  __device__ __forceinline__ bool row_in_base(const fd_decode_params&, int r,
                                              const unsigned char** kp,
                                              const unsigned char** vp) const {
    *kp = tile_k + r * k_row;
    *vp = tile_v + r * v_row;
    return key0 + r < end;
  }
  template <int KV_BYTES>
  __device__ __forceinline__ bool row(const fd_decode_params&, int r, const unsigned char** kp,
                                      const unsigned char** vp) const {
    const int pg = __shfl_sync(0xffffffffu, page, r);
    const int sl = __shfl_sync(0xffffffffu, slot, r);
    const bool ok = key0 + r < end && pg >= 0 && pg < num_pages;
    const int64_t pgs = ok ? pg : 0;
    *kp = k + pgs * k_page + sl * k_row;
    *vp = v + pgs * v_page + sl * v_row;
    return ok;
  }
};

// A pool whose every tile lies in one page: a power-of-two page size of at
// least 16 keys and tiles that start at multiples of 16 (no window, chunks of
// whole tiles). The host picks it (LaunchShape::whole_tiles) for the
// vectorised kernels. A tile costs one block-table entry, loaded by every
// lane from the same address one tile ahead, and one base per pool: no
// per-lane ids, no shuffles, and no per-row path in the loop.
struct PagedTilesKv : PagedPool {
  // A contiguous range of tiles per warp where LaunchParams::warp_ranges asks.
  static constexpr bool kWarpRanges = true;
  int key0 = 0, end = 0;
  int next_page = 0, next_key0 = 0, next_end = 0;
  const unsigned char* tile_k = nullptr;  // the current tile's first row
  const unsigned char* tile_v = nullptr;

  __device__ __forceinline__ void fetch(int key0_, int end_, int) {
    next_key0 = key0_;
    next_end = end_;
    next_page = table[key0_ >> page_shift];
  }
  // L2 prefetch of the block-table entries of keys [key_begin, key_end) (a
  // CTA's chunk, before the PDL wait: L2 is the point of coherence, so entries
  // the previous grid is still writing cost only a wasted prefetch). The warps
  // step through a table line together, and without it each line's first
  // lookup waits on HBM. Only the 16-byte-aligned interior is prefetched, so
  // the request stays inside the table the caller described.
  __device__ __forceinline__ void prefetch_table(int key_begin, int key_end) const {
    if (key_end <= key_begin) return;
    const uintptr_t first = reinterpret_cast<uintptr_t>(table + (key_begin >> page_shift));
    const uintptr_t last = reinterpret_cast<uintptr_t>(table + ((key_end - 1) >> page_shift) + 1);
    const uintptr_t a = (first + 15) & ~uintptr_t{15}, b = last & ~uintptr_t{15};
    if (b > a) ptx::prefetch_l2(reinterpret_cast<const void*>(a), static_cast<uint32_t>(b - a));
  }
  // A page id outside the pool: the tile is taken as empty (its rows are
  // zero-filled, nothing is read) and the CTA's rows become NaN.
  __device__ __forceinline__ void take(int, int, int) {
    key0 = next_key0;
    end = next_end;
    const bool in_pool = static_cast<unsigned>(next_page) < static_cast<unsigned>(num_pages);
    if (!in_pool) {
      bad = true;
      end = key0;
    }
    const int64_t pg = in_pool ? next_page : 0;
    const int slot = key0 & (page_size - 1);
    tile_k = k + pg * k_page + slot * k_row;
    tile_v = v + pg * v_page + slot * v_row;
  }
  static constexpr bool kWarmsTable = false;
  __device__ __forceinline__ void warm_entry(int, void*) const {}
  static constexpr bool rows_from_base() { return true; }
  __device__ __forceinline__ bool tile_full() const { return key0 + kTileKeys <= end; }
  template <int KV_BYTES>
  __device__ __forceinline__ bool row_in_base(const fd_decode_params&, int r,
                                              const unsigned char** kp,
                                              const unsigned char** vp) const {
    *kp = tile_k + r * k_row;
    *vp = tile_v + r * v_row;
    return key0 + r < end;
  }
  // The same rows for the copy paths that ask per row (compiled, never taken).
  template <int KV_BYTES>
  __device__ __forceinline__ bool row(const fd_decode_params& c, int r, const unsigned char** kp,
                                      const unsigned char** vp) const {
    return row_in_base<KV_BYTES>(c, r, kp, vp);
  }
};

// PagedTilesKv whose warps warm their block-table lines in L1 ahead of the
// lookups (mainloop.cuh; the host picks it: LaunchShape::table_warmup). Its
// own kernels, so the PagedTilesKv ones carry no trace of it.
struct PagedTilesWarmKv : PagedTilesKv {
  // Brings the table line holding the entry of the tile at key0_ into L1: a
  // 4-byte asynchronous copy through L1 into `dst` (shared memory nothing
  // reads), so that the lookup fetch() makes later hits L1. key0_ lies in the
  // sequence, so the entry lies in the block-table row the caller described.
  static constexpr bool kWarmsTable = true;
  __device__ __forceinline__ void warm_entry(int key0_, void* dst) const {
    ptx::cp_async_ca_4(dst, table + (key0_ >> page_shift));
  }
};

}  // namespace fd
