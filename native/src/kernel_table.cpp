#include "kernel_table.h"

#include "flashdecoding/flashdecoding.h"
#include "split_policy.h"

namespace fd {
namespace {

#define FD_CELL(DTYPE, D, TAG, TYPENAME)                                          \
  KernelCell {                                                                    \
    DTYPE, D, "fd::decode_split_kernel<" TYPENAME ", " #D ">", &prepare_##TAG,      \
        &active_clusters_##TAG, &launch_##TAG                                     \
  }

const KernelCell kCells[] = {
    FD_CELL(FD_DTYPE_F16, 64, f16_d64, "__half"),
    FD_CELL(FD_DTYPE_F16, 80, f16_d80, "__half"),
    FD_CELL(FD_DTYPE_F16, 96, f16_d96, "__half"),
    FD_CELL(FD_DTYPE_F16, 128, f16_d128, "__half"),
    FD_CELL(FD_DTYPE_BF16, 64, bf16_d64, "__nv_bfloat16"),
    FD_CELL(FD_DTYPE_BF16, 80, bf16_d80, "__nv_bfloat16"),
    FD_CELL(FD_DTYPE_BF16, 96, bf16_d96, "__nv_bfloat16"),
    FD_CELL(FD_DTYPE_BF16, 128, bf16_d128, "__nv_bfloat16"),
};
#undef FD_CELL

}  // namespace

int kernel_cell_count() { return static_cast<int>(sizeof(kCells) / sizeof(kCells[0])); }

const KernelCell& kernel_cell(int index) { return kCells[index]; }

int find_kernel_cell(int32_t dtype, int32_t head_dim) {
  const int bucket = head_dim_bucket(head_dim);
  for (int i = 0; i < kernel_cell_count(); ++i)
    if (kCells[i].dtype == dtype && kCells[i].head_dim == bucket) return i;
  return -1;
}

}  // namespace fd
