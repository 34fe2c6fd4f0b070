// One decode call, whichever entry point it came through, and the host-only
// rules every entry point applies to it. Nothing here touches the GPU.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashdecoding/flashdecoding.h"

namespace fd {

// Everything a run needs, normalised: the plain run functions and fd_decode both
// fill one of these, so there is one set of rules and one launch path.
struct Problem {
  int32_t dtype = 0;
  uint32_t flags = 0;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* y = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int32_t batch_size = 0, num_heads = 0, num_kv_heads = 0, k_len = 0, head_dim = 0;
  float scale = 0.f;
  int64_t q_stride_b = 0, q_stride_h = 0;
  int64_t k_stride_b = 0, k_stride_h = 0, k_stride_k = 0;
  int64_t v_stride_b = 0, v_stride_h = 0, v_stride_k = 0;
  int64_t y_stride_b = 0, y_stride_h = 0;
  void* stream = nullptr;
  // Extensions (fd_decode_params); zero means off.
  float* lse = nullptr;
  int64_t lse_stride_b = 0, lse_stride_h = 0;
  const int32_t* seq_lens = nullptr;
  const int32_t* block_table = nullptr;
  int64_t block_table_stride_b = 0;
  int32_t page_size = 0;
  int32_t window_size = 0;
  const float* sinks = nullptr;
  const float* alibi_slopes = nullptr;
  float logits_soft_cap = 0.f;
  int32_t kv_dtype = 0;
  float k_scale = 0.f, v_scale = 0.f;
};

// Reads a caller's fd_decode_params of any struct_size (the missing tail stays
// at its "off" default). Refuses a struct_size that cannot be a params struct.
int problem_from_params(const fd_decode_params* params, Problem* out);

// Problem-level rules: dtype, extents, divisibility, head_dim, scale, extension
// fields. No strides, no pointers.
int check_problem(const Problem& p);

// Strides: non-negative, byte spans that fit in 64 bits, y (and lse) rows that
// do not overlap each other.
int check_strides(const Problem& p);

// Workspace bytes for this problem on any GPU; the problem must have passed
// check_problem.
size_t workspace_bytes_needed(const Problem& p);

int check_workspace(const Problem& p);

// NULL, alignment, and y/lse overlapping an input. Strides must have passed.
int check_pointers(const Problem& p);

// All of the above in the documented order.
int check_all(const Problem& p);

}  // namespace fd
