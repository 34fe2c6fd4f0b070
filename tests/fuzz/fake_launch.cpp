// Host-only stand-in for native/src/launch.cpp (the device hooks of
// launch_plan.h) and for the prepare_/launch_ entry points of the compiled
// kernel cells, so the libFuzzer target links the library's real host code,
// launch_plan.cpp included, without CUDA. Only the device is fake: its SM
// count, compute capability, occupancy, clusters and tuning knobs come from the
// fuzzer (fdfuzz::g_device), and a launch records its arguments in
// fdfuzz::g_launch for the fuzzer to check instead of running.
#include "fake_launch.h"

#include <cstdint>

#include "kernel_table.h"
#include "launch_plan.h"
#include "split_policy.h"
#include "status.h"

namespace fdfuzz {
FakeDevice g_device;
LaunchRecord g_launch;
}  // namespace fdfuzz

namespace fd {

#define FD_FAKE_CELL(TAG)                                                                 \
  int prepare_##TAG(bool vec, int, int* ctas_per_sm, int* wide_ctas_per_sm) {            \
    *ctas_per_sm = fdfuzz::g_device.ctas_per_sm;                                          \
    *wide_ctas_per_sm = vec ? fdfuzz::g_device.wide_ctas_per_sm : 0;                      \
    return 0; /* cudaSuccess */                                                           \
  }                                                                                       \
  int active_clusters_##TAG(bool, int cluster) {                                          \
    return cluster <= fdfuzz::g_device.max_cluster ? fdfuzz::g_device.active_clusters : 0; \
  }                                                                                       \
  int launch_##TAG(const DecodeParams& p, int head_blocks, bool vec, bool pdl, void* s) { \
    fdfuzz::LaunchRecord& r = fdfuzz::g_launch;                                           \
    ++r.launches;                                                                         \
    r.cell = #TAG;                                                                        \
    r.params = p;                                                                         \
    r.head_blocks = head_blocks;                                                          \
    r.vec = vec;                                                                          \
    r.pdl = pdl;                                                                          \
    r.stream = s;                                                                         \
    return 0;                                                                             \
  }
FD_FAKE_CELL(f16_d64)
FD_FAKE_CELL(f16_d80)
FD_FAKE_CELL(f16_d96)
FD_FAKE_CELL(f16_d128)
FD_FAKE_CELL(bf16_d64)
FD_FAKE_CELL(bf16_d80)
FD_FAKE_CELL(bf16_d96)
FD_FAKE_CELL(bf16_d128)
#undef FD_FAKE_CELL

// The device hooks of launch_plan.h, answered by the fuzzer's fake device.
int query_device(int cell, bool vec, DeviceView* out) {
  int n = 0, wide = 0;
  if (kernel_cell(cell).prepare(vec, fdfuzz::g_device.cc, &n, &wide) != 0)
    return fail(FD_STATUS_CUDA_ERROR, "fake prepare failed");
  if (n <= 0)
    return fail(FD_STATUS_UNSUPPORTED, "the decode kernel %s cannot run on the fake device",
                kernel_cell(cell).name);
  out->device = 0;
  out->num_sms = fdfuzz::g_device.num_sms;
  out->cc = fdfuzz::g_device.cc;
  out->ctas_per_sm = n;
  out->wide_ctas_per_sm = wide;
  out->smem_per_sm = fdfuzz::kFakeSmemPerSm;
  out->smem_per_block = fdfuzz::kFakeSmemPerBlock;
  return FD_STATUS_SUCCESS;
}

int device_active_clusters(const DeviceView&, int cell, bool vec, int splits) {
  return kernel_cell(cell).active_clusters(vec, splits);
}

int launch_decode(const LaunchDecision& d, const DecodeParams& params, int head_blocks,
                  void* stream) {
  if (kernel_cell(d.cell).launch(params, head_blocks, d.vec, d.dev.cc >= 90, stream) != 0)
    return fail(FD_STATUS_CUDA_ERROR, "fake launch failed");
  return FD_STATUS_SUCCESS;
}

int tune_forced_splits() { return fdfuzz::g_device.forced_splits; }
bool tune_clusters_enabled() { return fdfuzz::g_device.clusters_enabled; }
bool tune_one_cta_per_sm() { return false; }
int tune_max_ctas_per_sm() { return 0; }
int tune_wide() { return -1; }
int tune_early_trigger() { return -1; }
int tune_prefetch_keys() { return -1; }
int tune_kv_evict_first() { return -1; }

}  // namespace fd
