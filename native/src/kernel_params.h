// What every decode kernel reads, passed by value: the caller's call as one
// fd_decode_params (normalised: a missing tail is zero) and the launch the
// host planner chose for it. No CUDA types, so host code includes it.
#pragma once

#include <cstdint>

#include "flashdecoding/flashdecoding.h"

namespace fd {

// The planner's choices and the values derived from the call once on the host.
struct LaunchParams {
  int32_t group_size;  // num_heads / num_kv_heads
  // scale * log2(e): the kernels work in base 2 (exp2 is one instruction).
  float scale_log2;
  int32_t num_splits;
  int32_t chunk_len;  // keys per split
  // Partials go to the workspace and the merge kernel writes y (num_splits > 1,
  // or batch-invariant mode); else the split kernel writes y itself.
  int32_t write_partials;
  // The merge kernel lets the next grid in the stream launch before it waits
  // for the split kernel (PDL), so that grid's prefetch overlaps this call.
  int32_t merge_early_trigger;
  // Keys per CTA whose K/V rows the split kernel prefetches into L2 before its
  // PDL wait (0: none).
  int32_t prefetch_keys;
  // The split kernel's K/V copies ask L2 to evict their lines first: a stream
  // read once then leaves the lines that are read again (the partials the
  // merge reads, the caller's data) in L2, and the partials' write-back to HBM
  // stops interrupting the stream. Off for short calls (see decide_launch).
  int32_t kv_evict_first;
  // q's rows are 16-byte aligned and head_dim % 8 == 0: the vectorised split
  // kernel loads q in 16-byte pieces.
  int32_t q_vec;
  // Soft-cap or ALiBi: the slow score path.
  int32_t has_logit_mods;
  // 1 / logits_soft_cap (0 without a soft-cap): the cap's division as a product.
  float soft_cap_inv;
  // fp8 cells: q and y are bf16 (else f16).
  int32_t q_bf16;
  // The caller's per-tensor fp8 scales with 0 read as 1.
  float k_scale, v_scale;
  // CTA x of an unsplit grid takes the sequence of the (x / H_kv)-th longest
  // length instead of sequence x / H_kv (cta_order.cuh): on a grid of several
  // waves the long sequences start first, so no long CTA runs alone at the end.
  int32_t longest_first;
  // Whole-tile paged kernels: each warp streams a contiguous range of the
  // CTA's tiles instead of every WARPS-th tile (mainloop.cuh).
  int32_t warp_ranges;
  float* partial_o;    // [B*H_q][num_splits][bucket D]
  float* partial_lse;  // [B*H_q][num_splits], log2 units
};

struct DecodeArgs {
  fd_decode_params call;
  LaunchParams launch;
};

}  // namespace fd
