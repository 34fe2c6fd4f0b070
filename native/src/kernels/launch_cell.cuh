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
  return &decode_split_kernel<T, DPAD, VEC, VEC ? kStages : 1, kWarpsPerCta>;
}

template <typename T, int DPAD, bool VEC>
constexpr size_t split_smem_bytes() {
  return SplitSmem<DPAD>::bytes(VEC ? kStages : 1);
}

// The wide split kernel: kWideWarpsPerCta warps, vectorised loads, for grids
// with no split (DecodeParams::wide_cta); never padded.
template <typename T, int DPAD>
constexpr auto wide_split_kernel() {
  return &decode_split_kernel<T, DPAD, true, kStages, kWideWarpsPerCta>;
}

template <int DPAD>
constexpr size_t wide_smem_bytes() {
  return SplitSmem<DPAD, kWideWarpsPerCta>::bytes(kStages);
}

// A cluster launch also holds the states the other CTAs push (past the ring).
template <typename T, int DPAD, bool VEC>
constexpr size_t cluster_smem_bytes() {
  return SplitSmem<DPAD>::cluster_bytes(VEC ? kStages : 1);
}

template <typename T, int DPAD, bool VEC>
size_t launch_smem_bytes(int pad_bytes, bool cluster = false) {
  const size_t base =
      cluster ? cluster_smem_bytes<T, DPAD, VEC>() : split_smem_bytes<T, DPAD, VEC>();
  const size_t pad = pad_bytes > 0 ? static_cast<size_t>(pad_bytes) : 0;
  return pad > base && pad <= static_cast<size_t>(kOneCtaPerSmSmem) ? pad : base;
}

template <typename T, int DPAD, bool VEC>
int prepare_split_kernel(int cc, int* ctas_per_sm, int* wide_ctas_per_sm) {
  auto kernel = split_kernel<T, DPAD, VEC>();
  const size_t smem = split_smem_bytes<T, DPAD, VEC>();
  const size_t padded = launch_smem_bytes<T, DPAD, VEC>(kOneCtaPerSmSmem, true);
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(padded));
  if (e != cudaSuccess) {  // a GPU with less shared memory: pad up to what a CTA may have
    (void)cudaGetLastError();
    int dev = 0, optin = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
            cudaSuccess)
      optin = 0;
    (void)cudaGetLastError();
    const size_t limit = static_cast<size_t>(optin) > smem ? static_cast<size_t>(optin) : smem;
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(limit < padded ? limit : padded));
  }
  if (e != cudaSuccess) return e;
  *wide_ctas_per_sm = 0;
  if (VEC) {  // a GPU with too little shared memory for it simply never runs it
    if (cudaFuncSetAttribute(wide_split_kernel<T, DPAD>(),
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(wide_smem_bytes<DPAD>())) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(wide_ctas_per_sm,
                                                      wide_split_kernel<T, DPAD>(),
                                                      kWideWarpsPerCta * 32,
                                                      wide_smem_bytes<DPAD>()) != cudaSuccess) {
      (void)cudaGetLastError();
      *wide_ctas_per_sm = 0;
    }
  }
  if (cc >= 90 &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) !=
          cudaSuccess)
    (void)cudaGetLastError();  // then only portable sizes (<= 8) will fit
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(ctas_per_sm, kernel, kThreadsPerCta, smem);
}

// How many clusters of `cluster` split CTAs (one per SM) the GPU holds at once;
// 0 when it cannot place one. Never leaves an error behind.
template <typename T, int DPAD, bool VEC>
int active_split_clusters(int cluster) {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[1];
  cfg.gridDim = dim3(1, static_cast<unsigned>(cluster), 1);
  cfg.blockDim = dim3(kThreadsPerCta);
  cfg.dynamicSmemBytes = launch_smem_bytes<T, DPAD, VEC>(kOneCtaPerSmSmem, true);
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 1;
  attr[0].val.clusterDim.y = static_cast<unsigned>(cluster);
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int n = 0;
  if (cudaOccupancyMaxActiveClusters(&n, split_kernel<T, DPAD, VEC>(), &cfg) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

template <typename T, int DPAD>
int prepare_cell(bool vec, int cc, int* ctas_per_sm, int* wide_ctas_per_sm) {
  return vec ? prepare_split_kernel<T, DPAD, true>(cc, ctas_per_sm, wide_ctas_per_sm)
             : prepare_split_kernel<T, DPAD, false>(cc, ctas_per_sm, wide_ctas_per_sm);
}

template <typename T, int DPAD>
int active_clusters_cell(bool vec, int cluster) {
  return vec ? active_split_clusters<T, DPAD, true>(cluster)
             : active_split_clusters<T, DPAD, false>(cluster);
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
  cfg.stream = stream;
  set_pdl(cfg, attr, pdl);
  if (VEC && p.wide_cta) {
    cfg.blockDim = dim3(kWideWarpsPerCta * 32);
    cfg.dynamicSmemBytes = wide_smem_bytes<DPAD>();
    return cudaLaunchKernelEx(&cfg, wide_split_kernel<T, DPAD>(), p);
  }
  cfg.blockDim = dim3(kThreadsPerCta);
  cfg.dynamicSmemBytes = launch_smem_bytes<T, DPAD, VEC>(p.pad_smem_bytes, p.cluster_reduce != 0);
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
  const unsigned rows = static_cast<unsigned>(p.batch_size) * static_cast<unsigned>(p.num_heads);
  cfg.gridDim = dim3((rows + kMergeRowsPerCta - 1) / kMergeRowsPerCta);
  cfg.blockDim = dim3(kMergeThreads);
  cfg.stream = stream;
  set_pdl(cfg, attr, pdl);
  return cudaLaunchKernelEx(&cfg, &decode_merge_kernel<T, DPAD>, p);
}

}  // namespace fd
