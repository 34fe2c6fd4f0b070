// Kernel cell f16 x head_dim bucket 96 (one translation unit per cell).
#include "launch_cell.cuh"

namespace fd {
int prepare_f16_d96(bool vec, int cc, int* ctas_per_sm, int* wide_ctas_per_sm) {
  return prepare_cell<__half, 96>(vec, cc, ctas_per_sm, wide_ctas_per_sm);
}
int active_clusters_f16_d96(bool vec, int cluster) {
  return active_clusters_cell<__half, 96>(vec, cluster);
}
int launch_f16_d96(const DecodeParams& p, int head_blocks, bool vec, bool pdl, void* stream) {
  return launch_cell<__half, 96>(p, head_blocks, vec, pdl, stream);
}
}  // namespace fd
