#include "split_policy.h"

#include <algorithm>

#include "kernel_table.h"

namespace fd {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Merged splits always go through the workspace in batch-invariant mode, so a
// sequence takes the same arithmetic path whatever the batch's longest length.
bool needs_merge(const Problem& p, int num_splits) {
  return num_splits > 1 || (batch_invariant(p) && p.c.k_len > 0);
}

int64_t units_of(const Problem& p) {
  return static_cast<int64_t>(p.c.batch_size) * p.c.num_kv_heads * head_blocks(p);
}

// Fewest splits that keep every chunk within kMaxChunkKeys.
int64_t accuracy_splits(const Problem& p) { return ceil_div(p.c.k_len, kMaxChunkKeys); }

}  // namespace

int max_splits(const Problem& p) {
  if (p.c.k_len <= 0) return 1;
  if (batch_invariant(p)) return static_cast<int>(ceil_div(p.c.k_len, kInvariantChunk));
  // What choose_splits may pick on any GPU: no chunk under kMinChunk keys, and
  // (few units: one split per SM's share) at most kMaxSplitCtas CTAs.
  int64_t s = std::min<int64_t>(ceil_div(p.c.k_len, kMinChunk),
                                std::max<int64_t>(1, ceil_div(kMaxSplitCtas, units_of(p))));
  s = std::max<int64_t>(s, accuracy_splits(p));
  return static_cast<int>(std::max<int64_t>(s, 1));
}

SplitChoice choose_splits(const Problem& p, int num_sms, int ctas_per_sm) {
  SplitChoice best;
  if (p.c.k_len <= 0) return best;
  if (batch_invariant(p)) {
    best.chunk_len = kInvariantChunk;
    best.num_splits = static_cast<int>(ceil_div(p.c.k_len, kInvariantChunk));
    return best;
  }
  // Measured on H100 (docs/RESULTS.md): HBM streams best with long-running
  // CTAs filling every SM, and an SM given two CTAs while others have one makes
  // the whole launch wait for it. One CTA per SM is what a launch asks for, not
  // what it gets: the block scheduler may still pair two on one SM next to the
  // previous kernel's CTAs (32/32 D128 B2 K4096: 128 CTAs 57 us, padded to one
  // per SM 50 us). So where the units are fewer than half the SMs and an SM
  // holds two CTAs, the split aims at two per SM (256 CTAs: 50 us), leaving
  // nothing to pair; otherwise at one per SM. At most 16 splits (more cost the
  // merge more than they gain) unless the units are so few that 16 would
  // leave SMs idle (B = 1 with one to eight KV heads on 132 SMs): then up to
  // one CTA per SM for a 16-bit cache, and the two per SM of the rest for an
  // fp8 one, which issues twice the instructions per byte and needs the
  // second CTA's warps to keep HBM busy (H200, docs/RESULTS.md: 32/8 fp8 B1
  // K32768 39.4 -> 29.8 us, while 16-bit 64/8 B1 K32768 and 8/1 B1 K1048576
  // lost 4-5% at two per SM). Never a chunk longer than kMaxChunkKeys.
  const int64_t units = units_of(p);
  const int64_t sms = std::max(num_sms, 1);
  const int64_t per_sm = ctas_per_sm >= 2 && 2 * units <= sms ? 2 : 1;
  const int64_t few_units_per_sm = kv_elem_bytes(p) == 1 ? per_sm : 1;
  const int64_t cap = std::max<int64_t>(kPolicyMaxSplits, few_units_per_sm * sms / units);
  int64_t s = std::max<int64_t>(1, std::min<int64_t>(per_sm * sms / units, cap));
  s = std::min<int64_t>(s, max_splits(p));
  s = std::max<int64_t>(s, accuracy_splits(p));
  return split_into(p, static_cast<int>(s));
}

SplitChoice split_into(const Problem& p, int splits) {
  SplitChoice c;
  const int64_t k_len = p.c.k_len;
  if (k_len <= 0) return c;
  int64_t chunk = round_up(ceil_div(k_len, std::max(splits, 1)), kMinChunk);
  // One split of a k_len within 63 of INT32_MAX (a broadcast cache) would round
  // past what an int holds; a chunk of k_len keys covers it just the same.
  if (chunk > INT32_MAX) chunk = k_len;
  c.chunk_len = static_cast<int>(chunk);
  c.num_splits = static_cast<int>(ceil_div(k_len, chunk));
  return c;
}

WorkspaceLayout workspace_layout(const Problem& p, int num_splits) {
  WorkspaceLayout w;
  if (!needs_merge(p, num_splits)) return w;
  const size_t rows = static_cast<size_t>(p.c.batch_size) * static_cast<size_t>(p.c.num_heads) *
                      static_cast<size_t>(num_splits);
  const int cell = cell_of(p);
  const size_t d = static_cast<size_t>(cell >= 0 ? kernel_cell(cell).head_dim : 0);
  auto align = [](size_t x) { return (x + 255) / 256 * 256; };
  w.partial_o_offset = 0;
  w.partial_lse_offset = align(rows * d * sizeof(float));
  w.bytes = w.partial_lse_offset + align(rows * sizeof(float));
  return w;
}

}  // namespace fd
