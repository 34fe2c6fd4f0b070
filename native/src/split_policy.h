// How the K axis is cut: the largest split count any GPU may pick (this sizes
// the workspace, so it must not depend on the device), and the per-device
// choice made at run time. Host code only.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cta_shape.h"
#include "problem.h"

namespace fd {

constexpr int kInvariantChunk = 512;  // fixed chunk of batch-invariant mode
// Dynamic shared memory of a split CTA padded to one per SM: more than half of
// sm_90's 228 KB. The cells raise their limit to this, so padding up to it works.
constexpr int kOneCtaPerSmSmem = 116 * 1024;
// Most splits the run-time policy picks for parallelism where the units fill
// the GPU at that (32 measured slower: the merge's extra partials cost more
// than a fuller GPU gains; docs/RESULTS.md).
constexpr int kPolicyMaxSplits = 16;
// Most keys one split streams. A warp's f32 accumulators take one more term
// per 16-key tile; past about 2^13 terms per warp the rounding of a running
// sum drifts measurably (near k_len = 2^31, one split per 2^27 keys left y
// 18-28% low). Longer caches get more splits: up to 8 Mi keys nothing changes
// (16 splits of 2^19), k_len = 2^31 - 1 takes 4096.
constexpr int64_t kMaxChunkKeys = int64_t{1} << 19;
// The policy aims at one or two CTAs per SM; bounding splits by a GPU of this
// many SMs keeps the workspace small for large batches and device independent.
constexpr int64_t kMaxSplitCtas = 1024;

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
// needs no merge). The problem must have passed check_problem.
WorkspaceLayout workspace_layout(const Problem& p, int num_splits);

}  // namespace fd
