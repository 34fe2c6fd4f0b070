// The launch of fd_merge_states' kernel (one instantiation per element type).
#include <cuda_runtime.h>

#include "kernels/merge_states.cuh"
#include "merge_states.h"
#include "status.h"

namespace fd {

int launch_merge_states(const fd_merge_params& p) {
  const int64_t rows = static_cast<int64_t>(p.batch_size) * p.num_heads;
  const dim3 grid(static_cast<unsigned>((rows + kMergeStatesRowsPerCta - 1) / kMergeStatesRowsPerCta));
  const dim3 block(kMergeStatesRowsPerCta * 32);
  cudaStream_t s = static_cast<cudaStream_t>(p.stream);
  switch (p.dtype) {
    case FD_DTYPE_F16: merge_states_kernel<__half><<<grid, block, 0, s>>>(p); break;
    case FD_DTYPE_BF16: merge_states_kernel<__nv_bfloat16><<<grid, block, 0, s>>>(p); break;
    default: merge_states_kernel<float><<<grid, block, 0, s>>>(p); break;
  }
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return fail(FD_STATUS_CUDA_ERROR, "launching the merge kernel failed: %s (%s, CUDA error %d)",
                cudaGetErrorString(e), cudaGetErrorName(e), static_cast<int>(e));
  return FD_STATUS_SUCCESS;
}

}  // namespace fd
