// The library's own kernel table: one cell per (element type, head_dim bucket),
// each a split kernel + merge kernel compiled in its own translation unit.
#pragma once

#include <cstdint>

#include "kernel_params.h"

namespace fd {

struct KernelCell {
  int32_t dtype;     // fd_dtype
  int32_t head_dim;  // bucket
  const char* name;  // canonical template expression
  // Raises the kernels' shared-memory limits on the current device (compute
  // capability cc) and reports how many CTAs of the split kernel one SM holds,
  // and of the wide split kernel (vec only; 0 where it cannot run). cudaError_t.
  int (*prepare)(bool vec, int cc, int* ctas_per_sm, int* wide_ctas_per_sm);
  // Clusters of `cluster` split CTAs (one per SM) the device holds at once.
  int (*active_clusters)(bool vec, int cluster);
  // Launches split (+ merge when p.write_partials) on the stream; cudaError_t.
  int (*launch)(const DecodeParams& p, int head_blocks, bool vec, bool pdl, void* stream);
};

int kernel_cell_count();
const KernelCell& kernel_cell(int index);
// Index of the cell for (dtype, head_dim), or -1.
int find_kernel_cell(int32_t dtype, int32_t head_dim);

// Defined by the cell_*.cu translation units.
#define FD_DECLARE_CELL(TAG)                                                   \
  int prepare_##TAG(bool vec, int cc, int* ctas_per_sm, int* wide_ctas_per_sm); \
  int active_clusters_##TAG(bool vec, int cluster);                            \
  int launch_##TAG(const DecodeParams& p, int head_blocks, bool vec, bool pdl, \
                   void* stream);
FD_DECLARE_CELL(f16_d64)
FD_DECLARE_CELL(f16_d80)
FD_DECLARE_CELL(f16_d96)
FD_DECLARE_CELL(f16_d128)
FD_DECLARE_CELL(bf16_d64)
FD_DECLARE_CELL(bf16_d80)
FD_DECLARE_CELL(bf16_d96)
FD_DECLARE_CELL(bf16_d128)
#undef FD_DECLARE_CELL

}  // namespace fd
