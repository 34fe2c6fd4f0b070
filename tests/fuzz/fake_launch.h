// Host-only stand-in for native/src/launch.cpp and the kernel cells, for the
// libFuzzer target: everything up to the launch is the library's own code
// (check_all, find_kernel_cell, choose_splits, workspace_layout); the device is
// a fake one the fuzzer describes, and a "launch" records what would run.
#pragma once

#include <cstdint>

#include "kernel_params.h"

namespace fdfuzz {

// Shared memory of every fake device: sm_90's, so the padding path runs.
constexpr int kFakeSmemPerSm = 228 * 1024;
constexpr int kFakeSmemPerBlock = 227 * 1024;

// The fake current device, set by the fuzzer before each call.
struct FakeDevice {
  int num_sms = 132;
  int cc = 90;
  int ctas_per_sm = 1;   // what a cell's prepare reports (>= 1)
  int wide_ctas_per_sm = 1;  // ... for the wide split kernel (0: cannot run)
  int max_cluster = 8;       // largest cluster size the device places (>= 1)
  int active_clusters = 16;  // clusters of a size <= max_cluster co-resident at once
  bool clusters_enabled = false;  // launch.cpp's FD_TUNE_CLUSTER knob
  int forced_splits = 0;          // launch.cpp's FD_TUNE_SPLITS knob
};
extern FakeDevice g_device;

// What the last fake launch saw.
struct LaunchRecord {
  long launches = 0;  // incremented by every fake launch
  const char* cell = nullptr;
  fd::DecodeParams params{};
  int head_blocks = 0;
  bool vec = false;
  bool pdl = false;
  void* stream = nullptr;
};
extern LaunchRecord g_launch;

}  // namespace fdfuzz
