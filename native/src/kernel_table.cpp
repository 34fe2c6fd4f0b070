#include "kernel_table.h"

#include "flashdecoding/flashdecoding.h"
#include "kv_layouts.h"

namespace fd {
namespace {

constexpr int32_t min_cc_of(int32_t kv_dtype) {
  return kv_dtype == FD_DTYPE_FP8_E4M3 || kv_dtype == FD_DTYPE_FP8_E5M2 ? 89 : 80;
}

#define FD_STR2(x) #x
#define FD_STR(x) FD_STR2(x)
#define FD_CELL(TAG, ELEM, QDT, KVDT, DPAD, SOURCE, WIDE)                                 \
  KernelCell{QDT, KVDT, DPAD, IsPagedSource<SOURCE>::value, WIDE != 0, min_cc_of(KVDT),     \
             "fd::decode_kernel<" FD_STR(ELEM) ", " #DPAD ", " FD_STR(SOURCE) ">",              \
             &prepare_##TAG, &launch_##TAG},
const KernelCell kCells[] = {
#include "cell_list.inc"
};
#undef FD_CELL

}  // namespace

int kernel_cell_count() { return static_cast<int>(sizeof(kCells) / sizeof(kCells[0])); }

const KernelCell& kernel_cell(int index) { return kCells[index]; }

int find_kernel_cell(int32_t dtype, int32_t kv_dtype, bool paged, int32_t head_dim) {
  int best = -1;
  for (int i = 0; i < kernel_cell_count(); ++i) {
    const KernelCell& c = kCells[i];
    if (c.kv_dtype != kv_dtype || c.paged != paged || c.head_dim < head_dim) continue;
    if (c.q_dtype != 0 && c.q_dtype != dtype) continue;
    if (best < 0 || c.head_dim < kCells[best].head_dim) best = i;
  }
  return best;
}

}  // namespace fd
