// Host-side launch of one kernel cell (element type x head_dim bucket): the
// occupancy query that feeds the split policy, and the split + merge launches
// with programmatic dependent launch where the GPU has it. Each cell_*.cu file
// instantiates this for its cell, so cells compile in parallel.
#pragma once

#include <cuda_runtime.h>

#include "../kernel_params.h"
#include "../kernel_table.h"
#include "decode_split.cuh"
#include "merge.cuh"

namespace fd {

// cp.async ring depth: STAGES-1 tiles in flight per warp while one is computed.
#ifndef FD_STAGES
#define FD_STAGES 3
#endif
constexpr int kStages = FD_STAGES;

template <typename T, int DPAD, bool VEC>
constexpr auto split_kernel() {
  return &decode_split_kernel<T, DPAD, VEC, VEC ? kStages : 1>;
}

template <typename T, int DPAD, bool VEC>
constexpr size_t split_smem_bytes() {
  return SplitSmem<DPAD>::bytes(VEC ? kStages : 1);
}

// Largest cluster of split CTAs the cluster-reduce path may use.
constexpr int kMaxClusterSplits = 16;

template <typename T, int DPAD, bool VEC>
int prepare_split_kernel(int cc, int* ctas_per_sm, int* max_cluster) {
  auto kernel = split_kernel<T, DPAD, VEC>();
  const size_t smem = split_smem_bytes<T, DPAD, VEC>();
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(ctas_per_sm, kernel, kThreadsPerCta, smem);
  if (e != cudaSuccess) return e;
  *max_cluster = 1;
  if (cc < 90) return cudaSuccess;
  // Clusters beyond 8 CTAs are "non-portable": ask, then check the GPU can
  // place at least one such cluster with this kernel's shared memory.
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) !=
      cudaSuccess)
    (void)cudaGetLastError();
  for (int c = kMaxClusterSplits; c >= 2; c /= 2) {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    cfg.gridDim = dim3(1, static_cast<unsigned>(c), 1);
    cfg.blockDim = dim3(kThreadsPerCta);
    cfg.dynamicSmemBytes = smem;
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 1;
    attr[0].val.clusterDim.y = static_cast<unsigned>(c);
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) == cudaSuccess && clusters > 0) {
      *max_cluster = c;
      break;
    }
    (void)cudaGetLastError();  // a refused size leaves no error behind
  }
  return cudaSuccess;
}

template <typename T, int DPAD>
int prepare_cell(bool vec, int cc, int* ctas_per_sm, int* max_cluster) {
  return vec ? prepare_split_kernel<T, DPAD, true>(cc, ctas_per_sm, max_cluster)
             : prepare_split_kernel<T, DPAD, false>(cc, ctas_per_sm, max_cluster);
}

inline void set_pdl(cudaLaunchConfig_t& cfg, cudaLaunchAttribute* attr, bool pdl) {
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
}

inline void add_cluster(cudaLaunchConfig_t& cfg, cudaLaunchAttribute* attr, unsigned splits) {
  cudaLaunchAttribute& a = attr[cfg.numAttrs++];
  a.id = cudaLaunchAttributeClusterDimension;
  a.val.clusterDim.x = 1;
  a.val.clusterDim.y = splits;
  a.val.clusterDim.z = 1;
}

template <typename T, int DPAD, bool VEC>
cudaError_t launch_split(const DecodeParams& p, int head_blocks, bool pdl, cudaStream_t stream) {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[2];
  cfg.gridDim = dim3(static_cast<unsigned>(p.batch_size) * static_cast<unsigned>(p.num_kv_heads),
                     static_cast<unsigned>(p.num_splits), static_cast<unsigned>(head_blocks));
  cfg.blockDim = dim3(kThreadsPerCta);
  cfg.dynamicSmemBytes = split_smem_bytes<T, DPAD, VEC>();
  cfg.stream = stream;
  set_pdl(cfg, attr, pdl);
  if (p.cluster_reduce) add_cluster(cfg, attr, static_cast<unsigned>(p.num_splits));
  return cudaLaunchKernelEx(&cfg, split_kernel<T, DPAD, VEC>(), p);
}

template <typename T, int DPAD>
int launch_cell(const DecodeParams& p, int head_blocks, bool vec, bool pdl, void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t e = vec ? launch_split<T, DPAD, true>(p, head_blocks, pdl, stream)
                      : launch_split<T, DPAD, false>(p, head_blocks, pdl, stream);
  if (e != cudaSuccess || !p.write_partials) return e;
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[1];
  cfg.gridDim = dim3(static_cast<unsigned>(p.batch_size) * static_cast<unsigned>(p.num_heads));
  cfg.blockDim = dim3(kMergeThreads);
  cfg.stream = stream;
  set_pdl(cfg, attr, pdl);
  return cudaLaunchKernelEx(&cfg, &decode_merge_kernel<T, DPAD>, p);
}

}  // namespace fd
