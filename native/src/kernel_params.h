// The POD both decode kernels read: filled on the host from a checked Problem
// and a SplitChoice, passed by value. No CUDA types, so host code includes it.
#pragma once

#include <cstdint>

namespace fd {

struct DecodeParams {
  const void* q;
  const void* k;
  const void* v;
  void* y;
  int64_t q_stride_b, q_stride_h;
  int64_t k_stride_b, k_stride_h, k_stride_k;
  int64_t v_stride_b, v_stride_h, v_stride_k;
  int64_t y_stride_b, y_stride_h;
  int32_t batch_size, num_heads, num_kv_heads, k_len, head_dim;
  int32_t group_size;  // num_heads / num_kv_heads

  // scale * log2(e): the kernels work in base 2 (exp2 is one instruction).
  float scale;
  float scale_log2;

  int32_t num_splits;
  int32_t chunk_len;
  // num_splits > 1 or merge_always: partials go to the workspace and the merge
  // kernel writes y; else the split kernel writes y itself.
  int32_t write_partials;
  // The num_splits CTAs of a unit form one cluster and reduce through
  // distributed shared memory (sm_90+); no workspace, no merge kernel.
  int32_t cluster_reduce;
  // Host side only: > 0 pads the split kernel's dynamic shared memory to this
  // many bytes, so that fewer of its CTAs share an SM.
  int32_t pad_smem_bytes;
  // Host side only: launch the wide (kWideWarpsPerCta) split kernel.
  int32_t wide_cta;
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
  float* partial_o;    // [B*H_q][num_splits][bucket D]
  float* partial_lse;  // [B*H_q][num_splits], log2 units

  // Extensions (off when null / zero / -1).
  float* lse;
  int64_t lse_stride_b, lse_stride_h;
  const int32_t* seq_lens;
  int32_t window_size;  // 0 = off
  const float* sinks;
  const float* alibi_slopes;
  float logits_soft_cap;
  int32_t has_logit_mods;  // soft-cap or ALiBi: the slow score path
};

}  // namespace fd
