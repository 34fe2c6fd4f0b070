// Host-only stand-in for native/src/launch.cpp (the device hooks of
// launch_plan.h), for the launch of fd_merge_states, and for the prepare_ /
// launch_ entry points of the compiled kernel cells, so the libFuzzer target
// links the library's real host code, launch_plan.cpp included, without CUDA.
// Only the device is fake: its SM count, compute capability and occupancy
// come from the fuzzer (fdfuzz::g_device), and a launch records its arguments
// in fdfuzz::g_launch for the fuzzer to check instead of running.
#include "fake_launch.h"

#include <cstdint>
#include <cstring>

#include "cta_shape.h"
#include "kernel_table.h"
#include "launch_plan.h"
#include "merge_states.h"
#include "split_policy.h"
#include "status.h"
#include "tuning.h"

namespace fdfuzz {
FakeDevice g_device;
LaunchRecord g_launch;
}  // namespace fdfuzz

namespace fd {

// One fake prepare / launch pair per line of the cell list.
#define FD_CELL(TAG, ELEM, QDT, KVDT, DPAD, SOURCE, WIDE)                                   \
  int prepare_##TAG(bool vec, int, int pad_limit, CellFacts* out) {                        \
    *out = CellFacts{};                                                                     \
    out->ctas_per_sm = vec ? fdfuzz::g_device.ctas_per_sm : fdfuzz::g_device.elem_ctas_per_sm; \
    out->wide_ctas_per_sm = (WIDE) && vec ? fdfuzz::g_device.wide_ctas_per_sm : 0;          \
    out->smem_limit = pad_limit;                                                            \
    /* The paired keys-as-M kernels (fp8 D = 128): unless a fixed case sets their own     \
       occupancy, the plain kernels', so the fuzzer's checks hold on either path. */        \
    out->km_pairs = vec && ((KVDT) == FD_DTYPE_FP8_E4M3 || (KVDT) == FD_DTYPE_FP8_E5M2) &&  \
                    (DPAD) == 128;                                                          \
    const fdfuzz::FakeDevice& g = fdfuzz::g_device;                                         \
    out->pair_ctas_per_sm =                                                                 \
        !out->km_pairs ? 0 : g.pair_ctas_per_sm >= 0 ? g.pair_ctas_per_sm : out->ctas_per_sm; \
    out->wide_pair_ctas_per_sm = !out->km_pairs         ? 0                                 \
                                 : g.wide_pair_ctas_per_sm >= 0 ? g.wide_pair_ctas_per_sm   \
                                                                : out->wide_ctas_per_sm;    \
    /* The warm-table kernels: paged cells whose 16-key pages, one per warp, hold      \
       at most kTableWarmupStepBytes (launch_cell.cuh's warm_tables<W>()). */               \
    const int64_t page16_ = int64_t{kTileKeys} * (DPAD) *                                   \
        (((KVDT) == FD_DTYPE_FP8_E4M3 || (KVDT) == FD_DTYPE_FP8_E5M2) ? 1 : 2);             \
    const bool warm_ = vec && g.table_warmup && std::strstr(#TAG, "_paged") != nullptr;     \
    out->table_warmup = warm_ && kWarpsPerCta * page16_ <= kTableWarmupStepBytes;           \
    out->wide_table_warmup = warm_ && (WIDE) && out->wide_ctas_per_sm > 0 &&                \
                             kWideWarpsPerCta * page16_ <= kTableWarmupStepBytes;           \
    return 0; /* cudaSuccess */                                                             \
  }                                                                                         \
  int launch_##TAG(const DecodeArgs& a, const LaunchShape& s, void* stream) {               \
    fdfuzz::LaunchRecord& r = fdfuzz::g_launch;                                             \
    ++r.launches;                                                                           \
    r.cell = #TAG;                                                                          \
    r.args = a;                                                                             \
    r.shape = s;                                                                            \
    r.stream = stream;                                                                      \
    return 0;                                                                               \
  }
#include "kernels/cells.def"
#undef FD_CELL

// The device hooks of launch_plan.h, answered by the fuzzer's fake device.
int query_device(int cell, bool vec, DeviceView* out) {
  out->device = 0;
  out->num_sms = fdfuzz::g_device.num_sms;
  out->cc = fdfuzz::g_device.cc;
  out->smem_per_sm = fdfuzz::kFakeSmemPerSm;
  out->smem_per_block = fdfuzz::kFakeSmemPerBlock;
  out->cell = CellFacts{};
  if (out->cc < kernel_cell(cell).min_cc) return FD_STATUS_SUCCESS;
  if (kernel_cell(cell).prepare(vec, fdfuzz::kFakeSmemPerBlock, kOneCtaPerSmSmem, &out->cell) != 0)
    return fail(FD_STATUS_CUDA_ERROR, "fake prepare failed");
  return FD_STATUS_SUCCESS;
}

int launch_decode(const LaunchDecision& d, const DecodeArgs& args, const LaunchShape& shape,
                  void* stream) {
  if (kernel_cell(d.cell).launch(args, shape, stream) != 0)
    return fail(FD_STATUS_CUDA_ERROR, "fake launch failed");
  return FD_STATUS_SUCCESS;
}

int launch_merge_states(const fd_merge_params&) {
  ++fdfuzz::g_launch.merges;
  return FD_STATUS_SUCCESS;
}

const Tuning& tuning() {
  static const Tuning t{};
  return t;
}

}  // namespace fd
