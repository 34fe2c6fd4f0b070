// Measurement overrides of the launch planner. The shipped library has none:
// tuning() returns the defaults below (the planner's own rules) and reads no
// environment variable. A build configured with -DFD_ENABLE_TUNING=ON (used by
// tools/tune.sh and tools/knob_ab.sh, never installed) reads FD_TUNE_*
// variables once per process instead (launch.cpp).
#pragma once

namespace fd {

struct Tuning {
  int splits = 0;           // > 0: force this many splits (clamped to the workspace's)
  int max_ctas_per_sm = 0;  // > 0: at most this many split CTAs per SM
  int wide = -1;            // -1: the planner's rule; 0: never; 1: D = 64 only; 2: every unsplit grid
  int early_trigger = -1;   // 0: the merge releases the next grid after its wait
  int prefetch_keys = -1;   // >= 0: keys per CTA prefetched before the PDL wait
  int evict_first = -1;     // 0 / 1: K/V copies never / always evict-first in L2
  int keys_as_m = -1;       // 0 / 1: never / always the keys-as-M kernels (where they can run)
  int table_warmup = -1;    // 0 / 1: never / always warm block-table lines (whole-tile pools)
  int longest_first = -1;   // 0 / 1: never / always longest sequences first (per-sequence lengths)
  int warp_ranges = -1;     // 0 / 1: never / always a tile range per warp (whole-tile pools)
};

const Tuning& tuning();

}  // namespace fd
