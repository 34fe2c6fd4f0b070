// The device hooks of launch_plan.h on the CUDA runtime: device facts cached
// per device and cell, and the launch. In a tuning build (FD_ENABLE_TUNING)
// also the measurement overrides of tuning.h, read from the environment.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>

#include "kernel_table.h"
#include "launch_plan.h"
#include "status.h"
#include "tuning.h"

namespace fd {
namespace {

constexpr int kMaxDevices = 64;
constexpr int kMaxCells = 128;

struct DeviceFacts {
  bool known = false;
  int num_sms = 0;
  int cc = 0;
  int smem_per_sm = 0;
  int smem_per_block = 0;
  bool cell_known[kMaxCells][2] = {};
  CellFacts cell[kMaxCells][2];  // [cell][vec]
};

std::mutex g_facts_mutex;
DeviceFacts g_facts[kMaxDevices];

int cuda_fail(cudaError_t e, const char* what) {
  return fail(FD_STATUS_CUDA_ERROR, "%s failed: %s (%s, CUDA error %d)", what,
              cudaGetErrorString(e), cudaGetErrorName(e), static_cast<int>(e));
}

}  // namespace

int query_device(int cell, bool vec, DeviceView* out) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return cuda_fail(e, "cudaGetDevice (is there a CUDA GPU and driver?)");
  if (dev < 0 || dev >= kMaxDevices)
    return fail(FD_STATUS_UNSUPPORTED, "device %d: at most %d devices are supported", dev,
                kMaxDevices);
  if (cell < 0 || cell >= kMaxCells || cell >= kernel_cell_count())
    return fail(FD_STATUS_UNSUPPORTED, "cell %d is not in the kernel table", cell);
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
  out->device = dev;
  out->num_sms = f.num_sms;
  out->cc = f.cc;
  out->smem_per_sm = f.smem_per_sm;
  out->smem_per_block = f.smem_per_block;
  out->cell = CellFacts{};
  // A cell the device cannot run (fp8 below sm_89) is not prepared: its
  // machine code may be missing from the library for this architecture.
  if (f.cc < kernel_cell(cell).min_cc) return FD_STATUS_SUCCESS;
  const int v = vec ? 1 : 0;
  if (!f.cell_known[cell][v]) {
    CellFacts facts;
    const int ce = kernel_cell(cell).prepare(vec, f.smem_per_block, kOneCtaPerSmSmem, &facts);
    if (ce != cudaSuccess) {
      (void)cudaGetLastError();
      return cuda_fail(static_cast<cudaError_t>(ce),
                       "preparing the decode kernel (is this GPU one of fd_compiled_architectures()?)");
    }
    f.cell[cell][v] = facts;
    f.cell_known[cell][v] = true;
  }
  out->cell = f.cell[cell][v];
  return FD_STATUS_SUCCESS;
}

int launch_decode(const LaunchDecision& d, const DecodeArgs& args, const LaunchShape& shape,
                  void* stream) {
  const int e = kernel_cell(d.cell).launch(args, shape, stream);
  if (e != cudaSuccess)
    return cuda_fail(static_cast<cudaError_t>(e), "launching the decode kernels");
  return FD_STATUS_SUCCESS;
}

#if defined(FD_ENABLE_TUNING)
namespace {
int env_int(const char* name, int unset) {
  const char* s = std::getenv(name);
  return s != nullptr ? std::atoi(s) : unset;
}
Tuning read_tuning() {
  Tuning t;
  t.splits = env_int("FD_TUNE_SPLITS", 0);
  t.max_ctas_per_sm = env_int("FD_TUNE_MAX_CTAS_PER_SM", 0);
  t.wide = env_int("FD_TUNE_WIDE", -1);
  t.early_trigger = env_int("FD_TUNE_EARLY_TRIGGER", -1);
  t.prefetch_keys = env_int("FD_TUNE_PREFETCH_KEYS", -1);
  t.evict_first = env_int("FD_TUNE_EVICT_FIRST", -1);
  t.keys_as_m = env_int("FD_TUNE_KEYS_AS_M", -1);
  t.table_warmup = env_int("FD_TUNE_TABLE_WARMUP", -1);
  t.longest_first = env_int("FD_TUNE_LONGEST_FIRST", -1);
  t.warp_ranges = env_int("FD_TUNE_WARP_RANGES", -1);
  return t;
}
}  // namespace
const Tuning& tuning() {
  static const Tuning t = read_tuning();
  return t;
}
#else
const Tuning& tuning() {
  static const Tuning t{};
  return t;
}
#endif

}  // namespace fd
