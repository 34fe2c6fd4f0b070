// Kernel cell bf16 x head_dim bucket 64 (one translation unit per cell).
#include "launch_cell.cuh"

namespace fd {
int prepare_bf16_d64(bool vec, int cc, int* ctas_per_sm, int* wide_ctas_per_sm) {
  return prepare_cell<__nv_bfloat16, 64>(vec, cc, ctas_per_sm, wide_ctas_per_sm);
}
int active_clusters_bf16_d64(bool vec, int cluster) {
  return active_clusters_cell<__nv_bfloat16, 64>(vec, cluster);
}
int launch_bf16_d64(const DecodeParams& p, int head_blocks, bool vec, bool pdl, void* stream) {
  return launch_cell<__nv_bfloat16, 64>(p, head_blocks, vec, pdl, stream);
}
}  // namespace fd
