// Host-only stand-in for native/src/launch.cpp and the kernel cells, for the
// libFuzzer target: everything up to the launch is the library's own code
// (check_all, the cell table, choose_splits, workspace_layout, decide_launch);
// the device is a fake one the fuzzer describes, and a "launch" records what
// would run.
#pragma once

#include <cstdint>

#include "kernel_params.h"
#include "kernel_table.h"

namespace fdfuzz {

// Shared memory of every fake device: sm_90's, so the padding path runs.
constexpr int kFakeSmemPerSm = 228 * 1024;
constexpr int kFakeSmemPerBlock = 227 * 1024;

// The fake current device, set by the fuzzer before each call.
struct FakeDevice {
  int num_sms = 132;
  int cc = 90;
  int ctas_per_sm = 1;       // what a cell's prepare reports (0: the kernel cannot run)
  int wide_ctas_per_sm = 1;  // ... for the wide split kernel (0: cannot run)
  int elem_ctas_per_sm = 4;  // ... for the element-load kernel
  // ... for the paired keys-as-M kernels of the fp8 D = 128 cells
  // (CellFacts::km_pairs); -1: as the plain 4-warp / 8-warp kernels.
  int pair_ctas_per_sm = -1;
  int wide_pair_ctas_per_sm = -1;
  // Whether the paged cells' PagedTilesWarmKv kernels fit with their
  // block-table scratch (CellFacts::table_warmup, wide_table_warmup), where
  // the cell has them.
  bool table_warmup = true;
};
extern FakeDevice g_device;

// What the last fake launch saw.
struct LaunchRecord {
  long launches = 0;  // incremented by every fake launch
  const char* cell = nullptr;
  fd::DecodeArgs args{};
  fd::LaunchShape shape{};
  void* stream = nullptr;
  long merges = 0;  // fake fd_merge_states launches
};
extern LaunchRecord g_launch;

}  // namespace fdfuzz
