#include "launch_plan.h"

#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "kernel_table.h"
#include "status.h"
#include "tuning.h"

namespace fd {
namespace {

// 16-byte cp.async needs whole 16-byte chunks per row on 16-byte boundaries.
bool can_vectorise(const Problem& pr) {
  const fd_decode_params& p = pr.c;
  const int64_t per_chunk = 16 / kv_elem_bytes(pr);
  auto al16 = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  auto whole = [per_chunk](int64_t stride) { return stride % per_chunk == 0; };
  return p.head_dim % per_chunk == 0 && al16(p.k) && al16(p.v) && whole(p.k_stride_b) &&
         whole(p.k_stride_h) && whole(p.k_stride_k) && whole(p.v_stride_b) &&
         whole(p.v_stride_h) && whole(p.v_stride_k) && whole(p.k_stride_page) &&
         whole(p.v_stride_page);
}

// K and V bytes one call reads at most (the work that hides a grid-to-grid
// handoff). Only compared with thresholds, so it saturates: a broadcast cache
// (strides 0) may describe more bytes than an int64 holds.
int64_t kv_bytes(const Problem& p) {
  const double bytes = 2.0 * kv_elem_bytes(p) * p.c.batch_size *
                       static_cast<double>(p.c.num_kv_heads) * static_cast<double>(p.c.k_len) *
                       p.c.head_dim;
  return bytes >= 9.0e18 ? INT64_MAX : static_cast<int64_t>(bytes);
}

// A call of at most this many KV bytes (about 1.4 us of HBM time, less than
// its launch latencies) lets the next grid share its SMs (see decide_launch).
constexpr int64_t kShortCallKvBytes = 4 << 20;

// Keys per CTA prefetched into L2 before the PDL wait (see decide_launch).
constexpr int kPrefetchKeys = 32;

// K and V bytes a split CTA streams from which the 8-warp kernel beats the
// 4-warp one on a one-wave grid (see decide_launch).
constexpr int64_t kWideSplitCtaKvBytes = int64_t{2} << 20;

// Fewest tiles per warp of a split for the warm-up: under it the lookups
// are few and the copies are a fixed cost in the prologue.
constexpr int kTableWarmupWarpTiles = 16;

// K and V bytes of a CTA at full length, per sequence of the batch, from which
// a grid takes its sequences longest first (see decide_launch).
constexpr int64_t kLongestFirstCtaBytesPerSequence = 16 << 10;

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
// max_ctas_per_sm split CTAs (0: no padding). One per SM is 116 KB; more: just
// over 1 / (cap + 1) of the SM's shared memory, less the 1 KB the runtime
// reserves per CTA. Never more than a CTA may opt in to.
int smem_pad_bytes(const LaunchDecision& d) {
  const int cap = d.max_ctas_per_sm;
  if (cap <= 0) return 0;
  int pad = cap == 1 ? kOneCtaPerSmSmem
                     : (d.dev.smem_per_sm > 0 ? d.dev.smem_per_sm / (cap + 1) - 1024 + 128 : 0);
  if (d.dev.smem_per_block > 0 && pad > d.dev.smem_per_block) pad = d.dev.smem_per_block;
  return pad;
}

const char* kv_name(int32_t kv_dtype) {
  return kv_dtype == FD_DTYPE_FP8_E4M3   ? "an fp8_e4m3 KV cache"
         : kv_dtype == FD_DTYPE_FP8_E5M2 ? "an fp8_e5m2 KV cache"
                                         : "the decode kernel";
}

}  // namespace

int decide_launch(const Problem& p, bool full_checks, LaunchDecision* out) {
  int st = full_checks ? check_all(p) : check_problem(p);
  if (st == FD_STATUS_SUCCESS && !full_checks) st = check_strides(p);
  if (st != FD_STATUS_SUCCESS) return st;
  const Tuning& tune = tuning();
  LaunchDecision& d = *out;
  d = LaunchDecision{};
  d.cell = cell_of(p);
  const KernelCell& cell = kernel_cell(d.cell);
  d.vec = can_vectorise(p);
  st = query_device(d.cell, d.vec, &d.dev);
  if (st != FD_STATUS_SUCCESS) return st;
  if (d.dev.cc < cell.min_cc)
    return fail(FD_STATUS_UNSUPPORTED,
                "%s needs compute capability %d.%d or newer%s; device %d is sm_%d",
                kv_name(cell.kv_dtype), cell.min_cc / 10, cell.min_cc % 10,
                cell.min_cc >= 89 ? " (the fp8 conversion instructions)" : "", d.dev.device,
                d.dev.cc);
  if (d.vec && d.dev.cell.ctas_per_sm <= 0) {
    // The vectorised kernel's ring does not fit this GPU's shared memory
    // (D = 256 on sm_86 / sm_89): the element-load kernel runs instead.
    d.vec = false;
    st = query_device(d.cell, d.vec, &d.dev);
    if (st != FD_STATUS_SUCCESS) return st;
  }
  if (d.dev.cell.ctas_per_sm <= 0)
    return fail(FD_STATUS_UNSUPPORTED, "the decode kernel %s cannot run on device %d (sm_%d)",
                cell.name, d.dev.device, d.dev.cc);

  // fp8 D = 128: the keys-as-M kernels on a contiguous cache or whole-tile
  // pages take their tiles in pairs from a deeper ring, and the plan is made
  // with their occupancy (CellFacts::km_pairs); where they cannot run, the
  // heads-as-M kernels do. Chunks are multiples of kMinChunk keys, so the
  // whole-tile test does not wait for the split.
  const bool fp8_cell = cell.kv_dtype == FD_DTYPE_FP8_E4M3 || cell.kv_dtype == FD_DTYPE_FP8_E5M2;
  const bool km_fits = d.vec && p.c.num_heads / p.c.num_kv_heads <= kKeysAsMMaxHeads;
  bool km_allowed = true;
  if (d.dev.cell.km_pairs && km_fits && tune.keys_as_m != 0 &&
      (!is_paged(p) || whole_tile_pages(p, kMinChunk))) {
    if (d.dev.cell.pair_ctas_per_sm > 0) {
      d.dev.cell.ctas_per_sm = d.dev.cell.pair_ctas_per_sm;
      d.dev.cell.wide_ctas_per_sm = d.dev.cell.wide_pair_ctas_per_sm;
    } else {
      km_allowed = false;
    }
  }
  d.split = choose_splits(p, d.dev.num_sms, d.dev.cell.ctas_per_sm);
  if (tune.splits > 0 && p.c.k_len > 0 && !batch_invariant(p))
    d.split = split_into(p, tune.splits < max_splits(p) ? tune.splits : max_splits(p));
  const int s = d.split.num_splits;
  const int64_t units = static_cast<int64_t>(p.c.batch_size) * p.c.num_kv_heads * head_blocks(p);
  d.write_partials = workspace_layout(p, s).bytes > 0;
  d.max_ctas_per_sm = tune.max_ctas_per_sm > 0 ? tune.max_ctas_per_sm
                      : d.vec ? ctas_per_sm_cap(units * s, d.dev.num_sms, d.dev.cell.ctas_per_sm)
                              : 0;  // the element-load kernel hides latency with many CTAs
  // The wide kernel (8 warps per CTA instead of 4) runs grids with nothing
  // split where it puts more loads in flight per SM (H100, docs/RESULTS.md):
  // - D = 64 (two wide CTAs, 16 warps per SM): 4% faster on 16/16 D64 B32
  //   K1024, while D = 128 grids of several waves lose 0-2%;
  // - D = 128 grids of one wave (one CTA per SM either way, 8 warps instead
  //   of 4): 1.4-1.6% faster on 32/8 B16 K4096 and 32/32 B4 K4096. Not split
  //   grids of short chunks (32/8 B1 K4096 13% slower: fewer keys per warp;
  //   long ones below), not D = 96 (1.6% slower), and not short calls, whose
  //   next grid gains more from sharing the SMs early (see below);
  // - 16-bit D = 128 split grids of one wave on a contiguous cache whose CTAs
  //   each stream at least kWideSplitCtaKvBytes (single sequences from about
  //   64k keys; H200, docs/RESULTS.md): 0.5-1.6% faster at 2-8 MiB per CTA, a
  //   tie at 1 MiB, and 1-17% slower under 512 KB, where the 8 warps' combine
  //   of the CTA's partial is a fixed cost that few tiles do not amortise.
  //   Not in page pools (0.3-1.8% slower at 2-8 MiB per CTA, page 16), nor
  //   fp8, whose split grids run two CTAs per SM.
  // Batch-invariant mode keeps one kernel whatever the batch.
  const bool one_wave = units * s <= d.dev.num_sms;
  const int bucket = cell.head_dim;
  const bool wide_one_wave = one_wave && bucket == 128 && d.dev.cell.wide_ctas_per_sm == 1 &&
                             kv_bytes(p) > kShortCallKvBytes && tune.wide != 1;
  const int64_t kv_bytes_per_cta =
      2 * kv_elem_bytes(p) * static_cast<int64_t>(d.split.chunk_len) * p.c.head_dim;
  const bool wide_long_splits = s > 1 && one_wave && bucket == 128 && kv_elem_bytes(p) == 2 &&
                                !is_paged(p) && d.dev.cell.wide_ctas_per_sm == 1 &&
                                kv_bytes_per_cta >= kWideSplitCtaKvBytes && tune.wide != 1;
  d.wide = d.vec && cell.wide && d.dev.cell.wide_ctas_per_sm > 0 && !batch_invariant(p) &&
           tune.wide != 0 &&
           ((s == 1 && (tune.wide == 2 || bucket == 64 || wide_one_wave)) || wide_long_splits);
  if (d.wide) d.max_ctas_per_sm = 0;
  // Keys as the mma's M (kv_element_km.cuh) halves the mma, accumulator and
  // score registers per tile of CTAs of up to 8 query heads. It pays where the
  // SM is issue-bound (H200, docs/RESULTS.md): every fp8 cell (2-3%) and the
  // 16-bit grids with nothing split (D = 96 MHA 6%, ragged paged 3%). 16-bit
  // split grids of few units, one CTA per SM, lose 2.4-4% with it (B = 1,
  // K = 512 to 32k; 8/1 B = 8): its transposes lengthen a per-tile chain that
  // no other CTA hides. Batch-invariant mode takes it whatever the split, so
  // that the kernel depends on neither the batch nor the cache length.
  d.keys_as_m = km_fits && km_allowed &&
                (tune.keys_as_m >= 0 ? tune.keys_as_m != 0
                                     : fp8_cell || s == 1 || batch_invariant(p));
  // The merge releases the next grid before its wait, so that grid's CTAs
  // start (and prefetch) as this call's CTAs leave, not after the merge: 1-6%
  // on split rows (H100, docs/RESULTS.md). A split grid of at most one CTA
  // per SM would then share its SMs with the next grid's CTAs, which the
  // block scheduler pairs on some SMs; padded to one per SM it cannot, unless
  // the call is so short that the early prefetch matters more (K = 512).
  d.merge_early_trigger = d.write_partials && tune.early_trigger != 0;
  if (d.merge_early_trigger && d.vec && !d.wide && d.max_ctas_per_sm == 0 &&
      d.dev.cell.ctas_per_sm > 1 && one_wave && kv_bytes(p) > kShortCallKvBytes)
    d.max_ctas_per_sm = 1;
  // Keys each CTA prefetches into L2 before its PDL wait (H100,
  // docs/RESULTS.md). Back to back, 32 beat none on every split row and beat
  // 16 and 64. With a non-PDL kernel between calls it still helps one-wave
  // split grids, but costs K = 512 0.3-0.55 us and a two-wave D = 64 grid
  // 2.6%: CTAs of later waves find the wait already over. 128 in one-wave
  // grids was 1-2% faster back to back, 5-8% slower isolated.
  d.prefetch_keys = !d.vec ? 0 : tune.prefetch_keys >= 0 ? tune.prefetch_keys : kPrefetchKeys;
  // Evict-first K/V lines (H100, docs/RESULTS.md): 1-3.5% faster on every
  // row that streams tens of MB or more, split or not; but 3% slower on
  // K = 512, whose lines the pre-wait prefetch has just brought in.
  d.kv_evict_first = d.vec && (tune.evict_first >= 0 ? tune.evict_first != 0
                                                     : kv_bytes(p) > kShortCallKvBytes);
  // Whole-tile pools of small pages: the kernels that warm their block-table
  // lines in L1 ahead of the lookups (PagedTilesWarmKv, mainloop.cuh), on
  // one-wave grids of one CTA per sequence and KV head, or of one sequence,
  // whose warps take 16 tiles or more, where the pages of one step of the
  // CTA's warps hold at most kTableWarmupStepBytes. H200 (docs/RESULTS.md):
  // 2-15% faster on D = 64, 96 and fp8 D = 128 pools of page 16, uniform,
  // ragged and isolated calls alike; single sequences of 32k-1M keys 0.2-2.4%
  // (16k keys: 0.987-1.004 of the time). The 8-warp 16-bit D = 128 kernels
  // (32 KB per step) gain 1% on uniform batches but lose 4-7% on ragged ones
  // and 5-10% on isolated calls of 40/8 B12 K6000; grids split over several
  // sequences lose up to 0.6%.
  const bool warm_room = d.wide ? d.dev.cell.wide_table_warmup : d.dev.cell.table_warmup;
  if (d.vec && whole_tile_pages(p, d.split.chunk_len) && warm_room) {
    const int warps = d.wide ? kWideWarpsPerCta : kWarpsPerCta;
    const int64_t page_bytes = static_cast<int64_t>(p.c.page_size) * p.c.head_dim * kv_elem_bytes(p);
    const bool rule = one_wave && (s == 1 || p.c.batch_size == 1) &&
                      warps * page_bytes <= kTableWarmupStepBytes &&
                      d.split.chunk_len >= kTileKeys * kTableWarmupWarpTiles * warps;
    d.table_warmup = tune.table_warmup >= 0 ? tune.table_warmup != 0 : rule;
  }
  // Longest sequences first (cta_order.cuh) where the per-sequence lengths may
  // differ and the grid is more CTAs than its SMs hold at once, so that CTAs
  // start one after another: unsplit (a split grid's CTAs are of equal chunks)
  // and without a window (whose sequences attend about as many keys each).
  // The rank costs every CTA a pass over the B lengths after the wait (and the
  // per-key paged kernels their prefetch before it), so only where a CTA's K
  // and V at full length are at least kLongestFirstCtaBytesPerSequence per
  // sequence of the batch. H200 (docs/RESULTS.md), lengths spread from K/32
  // to K: 32/8 B64 K8192 6% faster (isolated calls 8%, page 16 5%, fp8 10%),
  // B64 K4096 5%, 32/32 D96 B16 K2048 8%, 32/32 B32 K2048 2%, B64 K2048
  // page 16 4.5% and page 1 14.5%; equal lengths passed as data pay the rank:
  // B64 K2048 0.5-1.5% slower, B64 K8192 0.3%. Under the rule, grids of many
  // short CTAs lose 4-27% (B200 K2000, B128 K1024, B256 K512).
  const int resident_per_sm = d.wide                  ? d.dev.cell.wide_ctas_per_sm
                              : d.max_ctas_per_sm > 0 ? std::min(d.max_ctas_per_sm,
                                                                 d.dev.cell.ctas_per_sm)
                                                      : d.dev.cell.ctas_per_sm;
  const bool waves = units > static_cast<int64_t>(d.dev.num_sms) * resident_per_sm;
  const int64_t cta_bytes = 2 * kv_elem_bytes(p) * static_cast<int64_t>(p.c.k_len) * p.c.head_dim;
  // What the rank needs whatever the rule: lengths, and a batch its scratch holds.
  const bool rank_fits = p.c.seq_lens != nullptr && p.c.batch_size > 1 &&
                         p.c.batch_size <= kLongestFirstMaxBatch;
  const bool longest_first_rule = s == 1 && p.c.window_size == 0 && waves &&
                                  cta_bytes >= kLongestFirstCtaBytesPerSequence * p.c.batch_size;
  d.longest_first =
      rank_fits && (tune.longest_first >= 0 ? tune.longest_first != 0 : longest_first_rule);
  // A contiguous range of tiles per warp (mainloop.cuh) on whole-tile pools
  // whose grid is one wave of at least 15/16 of the SMs. H200 (docs/RESULTS.md,
  // page 16): 32/8 B16 K4096 (128 CTAs, 8 warps) 1.5-2% faster back to back,
  // 0-1.4% isolated; 132 and 4-warp 128-CTA grids even. Grids that leave more
  // SMs idle, whose CTAs must each stream faster, lose with it (96 CTAs 3-6%,
  // 112 1-2%, 120 0.6-1.3%), and grids of several waves 0.5-1.4%. Batch-
  // invariant mode keeps round robin: the rule depends on the batch.
  if (d.vec && whole_tile_pages(p, d.split.chunk_len) && !batch_invariant(p)) {
    const int64_t ctas = units * s;
    const bool rule = one_wave && ctas * 16 >= int64_t{d.dev.num_sms} * 15;
    d.warp_ranges = tune.warp_ranges >= 0 ? tune.warp_ranges != 0 : rule;
  }
  return FD_STATUS_SUCCESS;
}

DecodeArgs make_decode_args(const Problem& p, const LaunchDecision& dec) {
  DecodeArgs a = {};
  a.call = p.c;
  LaunchParams& l = a.launch;
  l.group_size = p.c.num_heads / p.c.num_kv_heads;
  l.scale_log2 = p.c.scale * 1.4426950408889634f;
  l.num_splits = dec.split.num_splits;
  l.chunk_len = dec.split.chunk_len;
  l.write_partials = dec.write_partials ? 1 : 0;
  l.merge_early_trigger = dec.merge_early_trigger ? 1 : 0;
  l.prefetch_keys = dec.prefetch_keys;
  l.kv_evict_first = dec.kv_evict_first ? 1 : 0;
  l.longest_first = dec.longest_first ? 1 : 0;
  l.warp_ranges = dec.warp_ranges ? 1 : 0;
  l.q_vec = p.c.head_dim % 8 == 0 && reinterpret_cast<uintptr_t>(p.c.q) % 16 == 0 &&
            p.c.q_stride_b % 8 == 0 && p.c.q_stride_h % 8 == 0;
  l.has_logit_mods = (p.c.logits_soft_cap > 0.f || p.c.alibi_slopes != nullptr) ? 1 : 0;
  // A subnormal cap's reciprocal overflows to inf, and a score of exactly 0
  // (a zero query row) would become 0 * inf = NaN; FLT_MAX keeps it 0, and
  // tanh saturates every other score either way, as it does for x / cap.
  l.soft_cap_inv =
      p.c.logits_soft_cap > 0.f ? std::min(1.f / p.c.logits_soft_cap, FLT_MAX) : 0.f;
  l.q_bf16 = p.c.dtype == FD_DTYPE_BF16 ? 1 : 0;
  l.k_scale = p.c.k_scale != 0.f ? p.c.k_scale : 1.f;
  l.v_scale = p.c.v_scale != 0.f ? p.c.v_scale : 1.f;
  if (dec.write_partials) {
    const WorkspaceLayout w = workspace_layout(p, dec.split.num_splits);
    const uintptr_t ws = reinterpret_cast<uintptr_t>(p.c.workspace);
    l.partial_o = reinterpret_cast<float*>(ws + w.partial_o_offset);
    l.partial_lse = reinterpret_cast<float*>(ws + w.partial_lse_offset);
  }
  return a;
}

// Every 16-key tile of every CTA lies in one page: a power-of-two page of at
// least 16 keys, and tiles that start at multiples of 16 (chunks are whole
// tiles; a window starts its tiles at an arbitrary key).
bool whole_tile_pages(const Problem& p, int chunk_len) {
  const int ps = p.c.page_size;
  return is_paged(p) && ps >= kTileKeys && (ps & (ps - 1)) == 0 && p.c.window_size == 0 &&
         chunk_len % kTileKeys == 0;
}

LaunchShape make_launch_shape(const Problem& p, const LaunchDecision& d) {
  LaunchShape s;
  s.vec = d.vec;
  s.whole_tiles = d.vec && whole_tile_pages(p, d.split.chunk_len);
  s.wide = d.wide;
  s.keys_as_m = d.keys_as_m;
  s.pdl = d.dev.cc >= 90;  // programmatic dependent launch
  s.head_blocks = head_blocks(p);
  s.pad_smem_bytes = smem_pad_bytes(d);
  s.smem_limit = d.dev.cell.smem_limit;
  s.table_warmup = d.table_warmup;
  return s;
}

int run_problem(const Problem& p) {
  LaunchDecision dec;
  const int st = decide_launch(p, true, &dec);
  if (st != FD_STATUS_SUCCESS) return st;
  const int lst =
      launch_decode(dec, make_decode_args(p, dec), make_launch_shape(p, dec), p.c.stream);
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
  const int g = p.c.num_heads / p.c.num_kv_heads;
  plan->heads_per_cta = g < kMaxGroupPerCta ? g : kMaxGroupPerCta;
  plan->num_sms = dec.dev.num_sms;
  plan->device_cc = dec.dev.cc;
  plan->cluster_size = 1;
  plan->merge_kernel = dec.write_partials ? 1 : 0;
  const int64_t ctas = static_cast<int64_t>(p.c.batch_size) * p.c.num_kv_heads *
                       head_blocks(p) * dec.split.num_splits;
  plan->ctas = ctas > INT32_MAX ? INT32_MAX : static_cast<int32_t>(ctas);
  plan->warps_per_cta = dec.wide ? kWideWarpsPerCta : kWarpsPerCta;
  plan->ctas_per_sm = dec.max_ctas_per_sm;
  plan->vectorized = dec.vec ? 1 : 0;
  return FD_STATUS_SUCCESS;
}

}  // namespace fd
