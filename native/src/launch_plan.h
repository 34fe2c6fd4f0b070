// From a checked Problem to a launch decision and kernel parameters. Pure host
// code: what it needs from the GPU comes through the device hooks at the end,
// implemented by launch.cpp with the CUDA runtime (and by the fuzzer's fake
// device in tests/fuzz), so the same decisions are tested without a GPU.
#pragma once

#include <cstdint>

#include "flashdecoding/flashdecoding.h"
#include "kernel_params.h"
#include "problem.h"
#include "split_policy.h"

namespace fd {

// What planning needs to know about the current device.
struct DeviceView {
  int device = 0;
  int num_sms = 0;
  int cc = 0;           // major * 10 + minor
  int ctas_per_sm = 0;  // of the chosen cell's split kernel
  int wide_ctas_per_sm = 0;  // of its wide split kernel (0: cannot run here)
  int smem_per_sm = 0;  // bytes of shared memory one SM has
  int smem_per_block = 0;  // most dynamic shared memory one CTA may opt in to
};

struct LaunchDecision {
  int cell = -1;
  bool vec = false;  // 16-byte cp.async loads
  DeviceView dev;
  SplitChoice split;
  bool cluster_reduce = false;  // splits reduce in a thread block cluster
  bool write_partials = false;  // splits go through the workspace to the merge kernel
  int max_ctas_per_sm = 0;  // > 0: pad shared memory so an SM holds at most this many
  bool wide = false;        // the wide (kWideWarpsPerCta) split kernel
  bool merge_early_trigger = false;  // the merge releases the next grid before its wait
  int prefetch_keys = 0;  // per CTA, into L2 before the PDL wait
  bool kv_evict_first = false;  // K/V copies under an evict-first L2 policy
};

// Checks (all rules with full_checks, else problem + strides) and decides.
int decide_launch(const Problem& p, bool full_checks, LaunchDecision* out);

DecodeParams make_decode_params(const Problem& p, const LaunchDecision& d);

// Validates, decides and launches. Returns a status; on failure nothing ran.
int run_problem(const Problem& p);

// The plan run_problem would follow on the current device, without launching.
int plan_problem(const Problem& p, fd_launch_plan* plan);

// ---- device hooks --------------------------------------------------------
// Facts of the current device for one cell's split kernel (a status).
int query_device(int cell, bool vec, DeviceView* out);
// Clusters of `splits` CTAs of the cell's split kernel co-resident at once.
int device_active_clusters(const DeviceView& dev, int cell, bool vec, int splits);
// Launches split (+ merge); a status, with the message set on failure.
int launch_decode(const LaunchDecision& d, const DecodeParams& params, int head_blocks,
                  void* stream);
// Measurement knobs (scripts/tune.sh); the library's defaults without them.
int tune_forced_splits();
bool tune_clusters_enabled();
bool tune_one_cta_per_sm();
int tune_max_ctas_per_sm();
int tune_wide();  // -1: the library's rule; 0: never; 1: D = 64 unsplit only; 2: + every unsplit
int tune_early_trigger();  // 0: never; else every merge (the default)
int tune_prefetch_keys();  // >= 0: keys per CTA; -1: the library's rule
int tune_kv_evict_first();  // 0: never; 1: every vectorised call; -1: the library's rule

}  // namespace fd
