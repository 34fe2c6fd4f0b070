// The decode kernel, composed from its parts: one CTA per (batch, KV head,
// block of <= 16 query heads of its group, K chunk).
//
//   traits.cuh      CTA shape, tile layout, shared memory
//   kv_source.cuh   where key j lives (contiguous strided, or paged)
//   kv_element.cuh  how a stored element becomes an mma operand (16-bit, fp8)
//   score_mods.cuh  attended keys (window, sink tokens), soft-cap, ALiBi, sinks
//   mainloop.cuh    the tile stream and the online softmax
//   epilogue.cuh    the warps' combine; y or partials for the merge
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../kernel_params.h"
#include "cta_order.cuh"
#include "epilogue.cuh"
#include "kv_element.cuh"
#include "kv_element_km.cuh"
#include "kv_source.cuh"
#include "mainloop.cuh"
#include "ptx.cuh"
#include "score_mods.cuh"
#include "tile_copy.cuh"
#include "traits.cuh"

namespace fd {

template <class Elem, int DPAD, class Source, bool VEC, int STAGES, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) decode_kernel(const DecodeArgs a) {
  using Tr = KernelTraits<DPAD, Elem::kKvBytes, WARPS, STAGES>;
  extern __shared__ __align__(16) unsigned char smem[];
  const fd_decode_params& c = a.call;
  const LaunchParams& lp = a.launch;

  CtaRows cr;
  cr.warp = threadIdx.x >> 5;
  cr.lane = threadIdx.x & 31;
  cr.gid = cr.lane >> 2;  // mma fragment row group
  cr.tid = cr.lane & 3;   // mma fragment column pair
  const int num_kv_heads = c.num_kv_heads;
  cr.b = blockIdx.x / num_kv_heads;
  const int kvh = blockIdx.x - cr.b * num_kv_heads;
  const int split = blockIdx.y;
  const int group = lp.group_size;
  cr.hq0 = kvh * group + blockIdx.z * kMaxGroupPerCta;
  cr.nh = min(kMaxGroupPerCta, group - static_cast<int>(blockIdx.z) * kMaxGroupPerCta);

  // Parameters used right after the wait or on every tile are read before it
  // (ptx::pin), so their constant cache misses overlap the wait.
  const int32_t* seq_lens = ptx::pin(c.seq_lens);
  const int k_len = ptx::pin(c.k_len), window_size = ptx::pin(c.window_size);
  const int sink_tokens = ptx::pin(c.sink_tokens);
  const int chunk_len = ptx::pin(lp.chunk_len);
  // Longest first (cta_order.cuh): the lengths are device data, so the CTA
  // learns its sequence only after the wait. The per-key paged kernels rank
  // first and prefetch nothing: their pre-wait prefetch loads table entries,
  // a round trip ahead of the rank's. The other sources prefetch the index
  // order's rows and table span before the wait and rank after it: with equal
  // lengths the order is the index order, and with unequal ones a prefetched
  // row is still read where its sequence reaches it, by the CTA that takes it.
  const bool longest_first = ptx::pin(lp.longest_first) != 0 && seq_lens != nullptr;
  constexpr bool kRankFirst = std::is_same_v<Source, PagedKv>;
  static_assert(Tr::kSmemBytes >= (kLongestFirstMaxBatch + 2) * sizeof(int),
                "the rank scratch lives in the ring");
  int ranked_len = 0;  // seq_lens[cr.b] as the rank read it: no second load after it
  if (kRankFirst && longest_first) {
    ptx::grid_dependency_wait();
    ptx::launch_dependents();
    cr.b = sequence_of_rank<Tr::kThreads>(seq_lens, c.batch_size, cr.b,
                                          reinterpret_cast<int*>(smem), &ranked_len);
  }
  Source src;
  src.template init<Elem::kKvBytes>(c, cr.b, kvh);
  typename Elem::State st = Elem::state(c, lp, kvh);
  const bool logit_mods = ptx::pin(lp.has_logit_mods) != 0;
  const bool write_partials = ptx::pin(lp.write_partials) != 0;
  const int num_splits = ptx::pin(lp.num_splits), num_heads = ptx::pin(c.num_heads);
  float* partial_o = ptx::pin(lp.partial_o);
  float* partial_lse = ptx::pin(lp.partial_lse);
  if (!(kRankFirst && longest_first)) {
    if constexpr (VEC) {
      // The chunk's keys bound what the CTA will look up (chunk0 < k_len, or
      // k_len = 0 and nothing to look up).
      const int chunk0 = split * chunk_len;
      if (threadIdx.x == 0) src.prefetch_table(chunk0, chunk0 + min(chunk_len, k_len - chunk0));
      prefetch_first_rows<Tr>(c, lp, src, split, chunk_len, seq_lens != nullptr);
    }
    // Inputs may be produced by the previous kernel in the stream (PDL); the
    // merge may be scheduled as soon as every CTA of this grid is running.
    ptx::grid_dependency_wait();
    ptx::launch_dependents();
    if (!kRankFirst && longest_first) {
      cr.b = sequence_of_rank<Tr::kThreads>(seq_lens, c.batch_size, cr.b,
                                            reinterpret_cast<int*>(smem), &ranked_len);
      src.template init<Elem::kKvBytes>(c, cr.b, kvh);
    }
  }
  Elem::head_scales(st, c, lp, kvh);  // device data: after the wait

  cr.seq_len = k_len;
  if (seq_lens != nullptr)
    cr.seq_len = src.length(longest_first ? ranked_len : seq_lens[cr.b], k_len);
  const KeySpan span(cr.seq_len, window_size, sink_tokens, split * chunk_len, chunk_len);

  RowState<Elem::template acc_tiles<DPAD>()> rs;
  run_mainloop<Elem, Tr, VEC>(rs, smem, src, st, c, lp, span, cr, logit_mods);
  run_epilogue<Elem, Tr>(rs, smem, src, st, c, lp, cr, split, num_splits, num_heads,
                         write_partials, partial_o, partial_lse);
}

}  // namespace fd
