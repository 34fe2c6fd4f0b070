// How the K axis is cut: the CTA shape constants of the decode kernels, the
// largest split count any GPU may pick (this sizes the workspace, so it must not
// depend on the device), and the per-device choice made at run time.
#pragma once

#include <cstddef>
#include <cstdint>

#include "problem.h"

namespace fd {

#ifndef FD_WARPS_PER_CTA
#define FD_WARPS_PER_CTA 4
#endif
constexpr int kWarpsPerCta = FD_WARPS_PER_CTA;
constexpr int kThreadsPerCta = kWarpsPerCta * 32;
// Warps of the wide split kernel, run instead when nothing is split and the
// head_dim bucket is 64 (launch_plan.cpp says why).
constexpr int kWideWarpsPerCta = 8;
constexpr int kTileKeys = 16;                       // keys one warp takes per step
constexpr int kMinChunk = kTileKeys * kWarpsPerCta;  // a split gives every warp a tile
constexpr int kMaxGroupPerCta = 16;                 // query rows of one mma tile
constexpr int kInvariantChunk = 512;                // fixed chunk of batch-invariant mode
// Dynamic shared memory of a split CTA padded to one per SM: more than half of
// sm_90's 228 KB (a cluster launch would otherwise pack its CTAs two to an SM
// on half the SMs). The cells raise their limit to this, so padding up to it works.
constexpr int kOneCtaPerSmSmem = 116 * 1024;
// Most splits the run-time policy picks (32 measured slower: the merge's extra
// partials cost more than a fuller GPU gains; docs/RESULTS.md).
constexpr int kPolicyMaxSplits = 16;
// Largest thread block cluster of split CTAs (sm_90's non-portable limit).
constexpr int kMaxClusterSplits = 16;
// The policy aims at one or two CTAs per SM; bounding splits by a GPU of this many SMs
// keeps the workspace small for large batches and device independent.
constexpr int64_t kMaxSplitCtas = 1024;

// Smallest compiled head_dim bucket that holds head_dim (0 if none).
int head_dim_bucket(int head_dim);

inline int head_blocks(const Problem& p) {
  const int g = p.num_heads / p.num_kv_heads;
  return (g + kMaxGroupPerCta - 1) / kMaxGroupPerCta;
}

inline bool batch_invariant(const Problem& p) {
  return (p.flags & FD_FLAG_BATCH_INVARIANT) != 0;
}

// Upper bound of num_splits over every GPU. 1 means the single-kernel path only.
int max_splits(const Problem& p);

struct SplitChoice {
  int num_splits = 1;  // 1: the split kernel writes y itself
  int chunk_len = 0;   // keys per split, a multiple of kMinChunk
};

// The split for a GPU with `num_sms` multiprocessors, each holding
// `ctas_per_sm` CTAs of the split kernel.
SplitChoice choose_splits(const Problem& p, int num_sms, int ctas_per_sm);

// K cut into (about) `splits` chunks of a multiple of kMinChunk keys; the
// chunk fits an int for every k_len >= 0.
SplitChoice split_into(const Problem& p, int splits);

// Layout of the workspace: per (b, h, split) an f32 row of bucket(D) partial
// outputs, then per (b, h, split) one f32 log2-sum-exp.
struct WorkspaceLayout {
  size_t partial_o_offset = 0;
  size_t partial_lse_offset = 0;
  size_t bytes = 0;
};

// Layout for `num_splits` splits (bytes == 0 when num_splits == 1 and the mode
// needs no merge).
WorkspaceLayout workspace_layout(const Problem& p, int num_splits);

}  // namespace fd
