// From a checked Problem to a launch decision and kernel parameters. Pure host
// code: what it needs from the GPU comes through the device hooks at the end,
// implemented by launch.cpp with the CUDA runtime (and by the fuzzer's fake
// device in tests/fuzz), so the same decisions are tested without a GPU.
#pragma once

#include <cstdint>

#include "flashdecoding/flashdecoding.h"
#include "kernel_params.h"
#include "kernel_table.h"
#include "problem.h"
#include "split_policy.h"

namespace fd {

// What planning needs to know about the current device and one cell on it.
struct DeviceView {
  int device = 0;
  int num_sms = 0;
  int cc = 0;              // major * 10 + minor
  int smem_per_sm = 0;     // bytes of shared memory one SM has
  int smem_per_block = 0;  // most dynamic shared memory one CTA may opt in to
  CellFacts cell;          // the chosen cell's kernels (vec or not) on this device
};

struct LaunchDecision {
  int cell = -1;
  bool vec = false;  // 16-byte cp.async loads
  DeviceView dev;
  SplitChoice split;
  bool write_partials = false;  // splits go through the workspace to the merge kernel
  int max_ctas_per_sm = 0;  // > 0: pad shared memory so an SM holds at most this many
  bool wide = false;        // the wide (kWideWarpsPerCta) split kernel
  bool keys_as_m = false;   // the keys-as-M kernels (kv_element_km.cuh)
  bool merge_early_trigger = false;  // the merge releases the next grid before its wait
  int prefetch_keys = 0;  // per CTA, into L2 before the PDL wait
  bool kv_evict_first = false;  // K/V copies under an evict-first L2 policy
  bool table_warmup = false;    // whole tiles: the kernels that warm block-table lines
  bool longest_first = false;   // CTAs take the sequences longest first (cta_order.cuh)
  bool warp_ranges = false;     // whole tiles: a contiguous range of tiles per warp
};

// Checks (all rules with full_checks, else problem + strides) and decides.
int decide_launch(const Problem& p, bool full_checks, LaunchDecision* out);

DecodeArgs make_decode_args(const Problem& p, const LaunchDecision& d);
LaunchShape make_launch_shape(const Problem& p, const LaunchDecision& d);

// Whether every tile of a paged problem split into chunks of chunk_len keys
// lies in one page (the launch then takes the PagedTilesKv kernels).
bool whole_tile_pages(const Problem& p, int chunk_len);

// Validates, decides and launches. Returns a status; on failure nothing ran.
int run_problem(const Problem& p);

// The plan run_problem would follow on the current device, without launching.
int plan_problem(const Problem& p, fd_launch_plan* plan);

// ---- device hooks --------------------------------------------------------
// Facts of the current device for one cell's kernels (a status).
int query_device(int cell, bool vec, DeviceView* out);
// Launches decode (+ merge); a status, with the message set on failure.
int launch_decode(const LaunchDecision& d, const DecodeArgs& args, const LaunchShape& shape,
                  void* stream);

}  // namespace fd
