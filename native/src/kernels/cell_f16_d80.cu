// Kernel cell f16 x head_dim bucket 80 (one translation unit per cell).
#include "launch_cell.cuh"

namespace fd {
int prepare_f16_d80(bool vec, int cc, int* ctas_per_sm, int* wide_ctas_per_sm) {
  return prepare_cell<__half, 80>(vec, cc, ctas_per_sm, wide_ctas_per_sm);
}
int active_clusters_f16_d80(bool vec, int cluster) {
  return active_clusters_cell<__half, 80>(vec, cluster);
}
int launch_f16_d80(const DecodeParams& p, int head_blocks, bool vec, bool pdl, void* stream) {
  return launch_cell<__half, 80>(p, head_blocks, vec, pdl, stream);
}
}  // namespace fd
