// The device hooks of launch_plan.h on the CUDA runtime: device facts cached
// per device, the cluster occupancy query, the launch, and the tuning knobs.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>

#include "kernel_table.h"
#include "launch_plan.h"
#include "status.h"

namespace fd {
namespace {

constexpr int kMaxDevices = 64;
constexpr int kMaxCells = 16;

struct KernelFacts {
  int ctas_per_sm = 0;  // 0 = not asked yet
  int wide_ctas_per_sm = 0;  // of the wide split kernel; 0 = cannot run
  // Co-resident clusters of c CTAs (index c); -1 = not asked yet.
  int active_clusters[kMaxClusterSplits + 1] = {-1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                -1, -1, -1, -1, -1, -1, -1, -1};
};

struct DeviceFacts {
  bool known = false;
  int num_sms = 0;
  int cc = 0;
  int smem_per_sm = 0;
  int smem_per_block = 0;
  KernelFacts kernel[kMaxCells][2];  // [cell][vec]
};

std::mutex g_facts_mutex;
DeviceFacts g_facts[kMaxDevices];

int cuda_fail(cudaError_t e, const char* what) {
  return fail(FD_STATUS_CUDA_ERROR, "%s failed: %s (%s, CUDA error %d)", what,
              cudaGetErrorString(e), cudaGetErrorName(e), static_cast<int>(e));
}

// A measurement knob's value; `unset` when the variable is not set.
int env_int(const char* name, int unset = 0) {
  const char* s = std::getenv(name);
  return s != nullptr ? std::atoi(s) : unset;
}

}  // namespace

int query_device(int cell, bool vec, DeviceView* out) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return cuda_fail(e, "cudaGetDevice (is there a CUDA GPU and driver?)");
  if (dev < 0 || dev >= kMaxDevices)
    return fail(FD_STATUS_UNSUPPORTED, "device %d: at most %d devices are supported", dev,
                kMaxDevices);
  std::lock_guard<std::mutex> lock(g_facts_mutex);
  DeviceFacts& f = g_facts[dev];
  if (!f.known) {
    int major = 0, minor = 0, sms = 0, smem = 0, smem_block = 0;
    if ((e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev)) !=
            cudaSuccess ||
        (e = cudaDeviceGetAttribute(&smem_block, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                    dev)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev)) != cudaSuccess)
      return cuda_fail(e, "cudaDeviceGetAttribute");
    f.num_sms = sms;
    f.smem_per_sm = smem;
    f.smem_per_block = smem_block;
    f.cc = major * 10 + minor;
    f.known = true;
  }
  KernelFacts& k = f.kernel[cell][vec ? 1 : 0];
  if (k.ctas_per_sm == 0) {
    int n = 0, wide = 0;
    const int ce = kernel_cell(cell).prepare(vec, f.cc, &n, &wide);
    if (ce != cudaSuccess)
      return cuda_fail(static_cast<cudaError_t>(ce),
                       "preparing the decode kernel (is this GPU one of fd_compiled_architectures()?)");
    if (n <= 0)
      return fail(FD_STATUS_UNSUPPORTED, "the decode kernel %s cannot run on device %d",
                  kernel_cell(cell).name, dev);
    k.ctas_per_sm = n;
    k.wide_ctas_per_sm = wide > 0 ? wide : 0;
  }
  out->device = dev;
  out->num_sms = f.num_sms;
  out->cc = f.cc;
  out->smem_per_sm = f.smem_per_sm;
  out->smem_per_block = f.smem_per_block;
  out->ctas_per_sm = k.ctas_per_sm;
  out->wide_ctas_per_sm = k.wide_ctas_per_sm;
  return FD_STATUS_SUCCESS;
}

int device_active_clusters(const DeviceView& dev, int cell, bool vec, int splits) {
  if (splits < 1 || splits > kMaxClusterSplits) return 0;
  std::lock_guard<std::mutex> lock(g_facts_mutex);
  int& n = g_facts[dev.device].kernel[cell][vec ? 1 : 0].active_clusters[splits];
  if (n < 0) n = kernel_cell(cell).active_clusters(vec, splits);
  return n;
}

int launch_decode(const LaunchDecision& d, const DecodeParams& params, int head_blocks,
                  void* stream) {
  const bool pdl = d.dev.cc >= 90;  // programmatic dependent launch
  const int e = kernel_cell(d.cell).launch(params, head_blocks, d.vec, pdl, stream);
  if (e != cudaSuccess)
    return cuda_fail(static_cast<cudaError_t>(e), "launching the decode kernels");
  return FD_STATUS_SUCCESS;
}

// Measurement knobs (scripts/tune.sh), read once per process:
// FD_TUNE_SPLITS=n forces n splits (clamped to what the workspace holds);
// FD_TUNE_CLUSTER=1 reduces splits in a thread block cluster (sm_90) instead of
// the merge kernel: measured no faster on H100 (docs/RESULTS.md), so opt-in;
// FD_TUNE_ONE_CTA_PER_SM=1 pads every launch to one CTA per SM;
// FD_TUNE_MAX_CTAS_PER_SM=n caps split CTAs per SM at n instead of the
// wave rule of launch_plan.cpp;
// FD_TUNE_WIDE=0 never runs the wide split kernel, =1 only for D = 64 with
// nothing split, =2 also for every head_dim bucket with nothing split
// (default: D = 64 with nothing split, and one-wave grids it holds alone);
// FD_TUNE_EARLY_TRIGGER=0: the merge releases the next grid after its wait,
// not before it (and one-wave split grids are not padded for it);
// FD_TUNE_PREFETCH_KEYS=n prefetches n keys per CTA before the PDL wait;
// FD_TUNE_EVICT_FIRST=0 / 1: K/V copies never / always evict-first in L2.
int tune_forced_splits() {
  static const int n = env_int("FD_TUNE_SPLITS");
  return n;
}

bool tune_clusters_enabled() {
  static const bool on = env_int("FD_TUNE_CLUSTER") != 0;
  return on;
}

bool tune_one_cta_per_sm() {
  static const bool on = env_int("FD_TUNE_ONE_CTA_PER_SM") != 0;
  return on;
}

int tune_wide() {
  static const int n = env_int("FD_TUNE_WIDE", -1);
  return n;
}

int tune_early_trigger() {
  static const int n = env_int("FD_TUNE_EARLY_TRIGGER", -1);
  return n;
}

int tune_prefetch_keys() {
  static const int n = env_int("FD_TUNE_PREFETCH_KEYS", -1);
  return n;
}

int tune_kv_evict_first() {
  static const int n = env_int("FD_TUNE_EVICT_FIRST", -1);
  return n;
}

int tune_max_ctas_per_sm() {
  static const int n = env_int("FD_TUNE_MAX_CTAS_PER_SM");
  return n > 0 ? n : 0;
}

}  // namespace fd
