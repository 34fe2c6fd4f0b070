#include "launch_plan.h"

#include <cstdint>

#include "kernel_table.h"
#include "status.h"

namespace fd {
namespace {

// 16-byte cp.async needs 8-element rows on 16-byte boundaries everywhere.
bool can_vectorise(const Problem& p) {
  auto al16 = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  return p.head_dim % 8 == 0 && al16(p.k) && al16(p.v) && p.k_stride_b % 8 == 0 &&
         p.k_stride_h % 8 == 0 && p.k_stride_k % 8 == 0 && p.v_stride_b % 8 == 0 &&
         p.v_stride_h % 8 == 0 && p.v_stride_k % 8 == 0;
}

// K and V bytes one call reads (the work that hides a grid-to-grid handoff).
// Only compared with thresholds, so it saturates: a broadcast cache (strides
// 0) may describe more bytes than an int64 holds.
int64_t kv_bytes(const Problem& p) {
  constexpr double kElemBytes = 2;  // f16 and bf16, the only cells
  const double bytes = 2 * kElemBytes * p.batch_size * static_cast<double>(p.num_kv_heads) *
                       static_cast<double>(p.k_len) * p.head_dim;
  return bytes >= 9.0e18 ? INT64_MAX : static_cast<int64_t>(bytes);
}

// A call of at most this many KV bytes (about 1.4 us of HBM time, less than
// its launch latencies) lets the next grid share its SMs (see decide_launch).
#ifndef FD_SHORT_CALL_KV_BYTES
#define FD_SHORT_CALL_KV_BYTES (4 << 20)
#endif
constexpr int64_t kShortCallKvBytes = FD_SHORT_CALL_KV_BYTES;

// Keys per CTA prefetched into L2 before the PDL wait (see decide_launch).
constexpr int kPrefetchKeys = 32;

// How many split CTAs an SM should hold (0: as many as fit). Measured on H100
// and H200 (docs/RESULTS.md) with D = 64, where four fit: four per SM is never
// best; three is best for 2048 CTAs on 132 SMs (5.2 waves), but 512 CTAs run
// 5% (H100) to 13% (H200) faster at two per SM (1.94 waves) than at three
// (1.29 waves, the last one 29% full: too few CTAs left to keep HBM busy).
// So: at most three, and fewer while the last wave would be under half full
// in a launch of under four waves; failing that, the count with the fullest
// waves. A grid that fits one CTA per SM is left alone; one wave of a few per
// SM (the split policy's two) gets exactly that many, so no SM takes more.
int ctas_per_sm_cap(int64_t ctas, int num_sms, int fit) {
  constexpr int kMostUseful = 3;
  if (fit <= 1 || num_sms <= 0 || ctas <= num_sms) return 0;
  const int64_t one_wave = (ctas + num_sms - 1) / num_sms;
  if (one_wave <= kMostUseful) return one_wave < fit ? static_cast<int>(one_wave) : 0;
  const int top = fit < kMostUseful ? fit : kMostUseful;
  int best = top;
  double best_fill = -1.0;
  for (int c = top; c >= 1; --c) {
    const double waves = static_cast<double>(ctas) / (static_cast<double>(c) * num_sms);
    const double whole = static_cast<double>(static_cast<int64_t>(waves));
    const double last = waves - whole;  // fill of the last wave, 0 when all are full
    if (waves >= 4.0 || last == 0.0 || last >= 0.5) {
      best = c;
      break;
    }
    const double fill = waves / (whole + 1.0);  // used slots over all slots of the launch
    if (fill > best_fill) {
      best_fill = fill;
      best = c;
    }
  }
  return best == fit ? 0 : best;
}

// Dynamic shared memory that keeps an SM from holding more than
// max_ctas_per_sm split CTAs (0: no padding). One per SM is 116 KB, as the
// cluster occupancy query assumes; more: just over 1 / (cap + 1) of the SM's
// shared memory, less the 1 KB the runtime reserves per CTA. Never more than
// a CTA may opt in to (the cells raise their limit to that, or 116 KB).
int smem_pad_bytes(const LaunchDecision& d) {
  const int cap = d.max_ctas_per_sm;
  if (cap <= 0) return 0;
  int pad = cap == 1 ? kOneCtaPerSmSmem
                     : (d.dev.smem_per_sm > 0 ? d.dev.smem_per_sm / (cap + 1) - 1024 + 128 : 0);
  if (d.dev.smem_per_block > 0 && pad > d.dev.smem_per_block) pad = d.dev.smem_per_block;
  return pad;
}

}  // namespace

int decide_launch(const Problem& p, bool full_checks, LaunchDecision* out) {
  int st = full_checks ? check_all(p) : check_problem(p);
  if (st == FD_STATUS_SUCCESS && !full_checks) st = check_strides(p);
  if (st != FD_STATUS_SUCCESS) return st;
  LaunchDecision& d = *out;
  d = LaunchDecision{};
  d.cell = find_kernel_cell(p.dtype, p.head_dim);
  if (d.cell < 0)
    return fail(FD_STATUS_UNSUPPORTED, "no kernel cell serves dtype %d with head_dim = %d",
                p.dtype, p.head_dim);
  d.vec = can_vectorise(p);
  st = query_device(d.cell, d.vec, &d.dev);
  if (st != FD_STATUS_SUCCESS) return st;

  d.split = choose_splits(p, d.dev.num_sms, d.dev.ctas_per_sm);
  const int forced = tune_forced_splits();
  if (forced > 0 && p.k_len > 0 && !batch_invariant(p)) {
    d.split = split_into(p, forced < max_splits(p) ? forced : max_splits(p));
  }
  // Opt-in: a split small enough for one thread block cluster reduces on chip
  // (no merge launch, no workspace traffic), only when every unit's cluster is
  // resident at once. Batch-invariant mode keeps the merge.
  const int s = d.split.num_splits;
  const int64_t units = static_cast<int64_t>(p.batch_size) * p.num_kv_heads * head_blocks(p);
  d.cluster_reduce = !batch_invariant(p) && tune_clusters_enabled() && d.dev.cc >= 90 &&
                     s >= 2 && s <= kMaxClusterSplits &&
                     units <= device_active_clusters(d.dev, d.cell, d.vec, s);
  d.write_partials = workspace_layout(p, s).bytes > 0 && !d.cluster_reduce;
  const int tuned_cap = tune_max_ctas_per_sm();
  d.max_ctas_per_sm = d.cluster_reduce || tune_one_cta_per_sm() ? 1
                      : tuned_cap > 0                           ? tuned_cap
                      : d.vec ? ctas_per_sm_cap(units * s, d.dev.num_sms, d.dev.ctas_per_sm)
                              : 0;  // the scalar-load kernel hides latency with many CTAs
  // The wide kernel (8 warps per CTA instead of 4) runs grids with nothing
  // split where it puts more loads in flight per SM (H100, docs/RESULTS.md):
  // - D = 64 (two wide CTAs, 16 warps per SM): 4% faster on 16/16 D64 B32
  //   K1024, while D = 128 grids of several waves lose 0-2%;
  // - D = 128 grids of one wave (one CTA per SM either way, 8 warps instead
  //   of 4): 1.4-1.6% faster on 32/8 B16 K4096 and 32/32 B4 K4096. Not split
  //   grids (32/8 B1 K4096 13% slower: fewer keys per warp), not D = 96 (1.6%
  //   slower), and not short calls, whose next grid gains more from sharing
  //   the SMs early (see below).
  // Batch-invariant mode keeps one kernel whatever the batch.
  const int wide_rule = tune_wide();
  const bool one_wave = units * s <= d.dev.num_sms;
  const int bucket = head_dim_bucket(p.head_dim);
  const bool wide_one_wave = one_wave && bucket == 128 && d.dev.wide_ctas_per_sm == 1 &&
                             kv_bytes(p) > kShortCallKvBytes && wide_rule != 1;
  d.wide = d.vec && d.dev.wide_ctas_per_sm > 0 && !batch_invariant(p) && !d.cluster_reduce &&
           s == 1 && wide_rule != 0 && (wide_rule == 2 || bucket == 64 || wide_one_wave);
  if (d.wide) d.max_ctas_per_sm = 0;
  // The merge releases the next grid before its wait, so that grid's CTAs
  // start (and prefetch) as this call's CTAs leave, not after the merge: 1-6%
  // on split rows (H100, docs/RESULTS.md). A split grid of at most one CTA
  // per SM would then share its SMs with the next grid's CTAs, which the
  // block scheduler pairs on some SMs; padded to one per SM it cannot, unless
  // the call is so short that the early prefetch matters more (K = 512).
  d.merge_early_trigger = d.write_partials && tune_early_trigger() != 0;
  if (d.merge_early_trigger && d.vec && !d.wide && d.max_ctas_per_sm == 0 &&
      d.dev.ctas_per_sm > 1 && one_wave && kv_bytes(p) > kShortCallKvBytes)
    d.max_ctas_per_sm = 1;
  // Keys each CTA prefetches into L2 before its PDL wait (H100,
  // docs/RESULTS.md). Back to back, 32 beat none on every split row and beat
  // 16 and 64. With a non-PDL kernel between calls (scripts/isolation_probe.py)
  // it still helps one-wave split grids, but costs K = 512 0.3-0.55 us and a
  // two-wave D = 64 grid 2.6%: CTAs of later waves find the wait already over.
  // 128 in one-wave grids was 1-2% faster back to back, 5-8% slower isolated.
  const int forced_prefetch = tune_prefetch_keys();
  d.prefetch_keys = !d.vec ? 0 : forced_prefetch >= 0 ? forced_prefetch : kPrefetchKeys;
  // Evict-first K/V lines (H100, docs/RESULTS.md): 1-3.5% faster on every
  // row that streams tens of MB or more, split or not; but 3% slower on
  // K = 512, whose lines the pre-wait prefetch has just brought in.
  const int forced_evict = tune_kv_evict_first();
  d.kv_evict_first = d.vec && (forced_evict >= 0 ? forced_evict != 0
                                                 : kv_bytes(p) > kShortCallKvBytes);
  return FD_STATUS_SUCCESS;
}

DecodeParams make_decode_params(const Problem& p, const LaunchDecision& dec) {
  DecodeParams d = {};
  d.q = p.q;
  d.k = p.k;
  d.v = p.v;
  d.y = p.y;
  d.q_stride_b = p.q_stride_b;
  d.q_stride_h = p.q_stride_h;
  d.k_stride_b = p.k_stride_b;
  d.k_stride_h = p.k_stride_h;
  d.k_stride_k = p.k_stride_k;
  d.v_stride_b = p.v_stride_b;
  d.v_stride_h = p.v_stride_h;
  d.v_stride_k = p.v_stride_k;
  d.y_stride_b = p.y_stride_b;
  d.y_stride_h = p.y_stride_h;
  d.batch_size = p.batch_size;
  d.num_heads = p.num_heads;
  d.num_kv_heads = p.num_kv_heads;
  d.k_len = p.k_len;
  d.head_dim = p.head_dim;
  d.group_size = p.num_heads / p.num_kv_heads;
  d.scale = p.scale;
  d.scale_log2 = p.scale * 1.4426950408889634f;
  d.num_splits = dec.split.num_splits;
  d.chunk_len = dec.split.chunk_len;
  d.cluster_reduce = dec.cluster_reduce ? 1 : 0;
  d.write_partials = dec.write_partials ? 1 : 0;
  d.pad_smem_bytes = smem_pad_bytes(dec);
  d.wide_cta = dec.wide ? 1 : 0;
  d.merge_early_trigger = dec.merge_early_trigger ? 1 : 0;
  d.prefetch_keys = dec.prefetch_keys;
  d.kv_evict_first = dec.kv_evict_first ? 1 : 0;
  d.q_vec = p.head_dim % 8 == 0 && reinterpret_cast<uintptr_t>(p.q) % 16 == 0 &&
            p.q_stride_b % 8 == 0 && p.q_stride_h % 8 == 0;
  if (dec.write_partials) {
    const WorkspaceLayout w = workspace_layout(p, dec.split.num_splits);
    const uintptr_t ws = reinterpret_cast<uintptr_t>(p.workspace);
    d.partial_o = reinterpret_cast<float*>(ws + w.partial_o_offset);
    d.partial_lse = reinterpret_cast<float*>(ws + w.partial_lse_offset);
  }
  d.lse = p.lse;
  d.lse_stride_b = p.lse_stride_b;
  d.lse_stride_h = p.lse_stride_h;
  d.seq_lens = p.seq_lens;
  d.window_size = p.window_size;
  d.sinks = p.sinks;
  d.alibi_slopes = p.alibi_slopes;
  d.logits_soft_cap = p.logits_soft_cap;
  d.has_logit_mods = (p.logits_soft_cap > 0.f || p.alibi_slopes != nullptr) ? 1 : 0;
  return d;
}

int run_problem(const Problem& p) {
  LaunchDecision dec;
  const int st = decide_launch(p, true, &dec);
  if (st != FD_STATUS_SUCCESS) return st;
  const int lst = launch_decode(dec, make_decode_params(p, dec), head_blocks(p), p.stream);
  if (lst == FD_STATUS_SUCCESS) clear_error();
  return lst;
}

int plan_problem(const Problem& p, fd_launch_plan* plan) {
  LaunchDecision dec;
  const int st = decide_launch(p, false, &dec);
  if (st != FD_STATUS_SUCCESS) return st;
  plan->cell_index = dec.cell;
  plan->num_splits = dec.split.num_splits;
  plan->chunk_len = dec.split.chunk_len;
  const int g = p.num_heads / p.num_kv_heads;
  plan->heads_per_cta = g < kMaxGroupPerCta ? g : kMaxGroupPerCta;
  plan->num_sms = dec.dev.num_sms;
  plan->device_cc = dec.dev.cc;
  plan->cluster_size = dec.cluster_reduce ? dec.split.num_splits : 1;
  plan->merge_kernel = dec.write_partials ? 1 : 0;
  return FD_STATUS_SUCCESS;
}

}  // namespace fd
