// Do all SMs stream HBM equally fast? A measurement tool, not part of the
// library. One CTA per SM (shared memory padded so no SM takes two) copies its
// own contiguous region of HBM through a cp.async ring, the way a one-wave
// split grid of the decode kernel does, and records its SM id and how long it
// took (%globaltimer). Every launch reads far more than L2 holds; launch r
// gives CTA c region (c + r * 37) % n, so an SM that is slow in every launch
// is slow because of where it sits, not because of which bytes it reads.
//   build: nvcc -O3 -std=c++17 -arch=sm_90a tools/sm_spread_probe.cu -o sm_spread_probe
//   run:   ./sm_spread_probe [MiB per CTA = 2] [launches = 9]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda_check.h"

constexpr int kThreads = 128;
constexpr int kStageBytes = kThreads * 8 * 16;  // 16 KB: 8 copies of 16 B per thread
constexpr int kStages = 6;                      // 5 stages (80 KB) in flight
constexpr int kPadSmem = 120 * 1024;            // > half an SM: one CTA per SM

struct Stamp {
  unsigned long long t0, t1;
  unsigned smid, sum;
};

__device__ __forceinline__ unsigned long long globaltimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void __launch_bounds__(kThreads) stream_kernel(const uint4* src, size_t region_bytes,
                                                          int shift, Stamp* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int n = gridDim.x;
  const int region = (blockIdx.x + shift) % n;
  const unsigned char* base = reinterpret_cast<const unsigned char*>(src) + region * region_bytes;
  const int steps = static_cast<int>(region_bytes / kStageBytes);
  unsigned long long t0 = 0;
  if (threadIdx.x == 0) t0 = globaltimer();
  auto issue = [&](int s) {
    unsigned char* dst = smem + (s % kStages) * kStageBytes;
    const unsigned char* g = base + static_cast<size_t>(s) * kStageBytes;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int off = (i * kThreads + threadIdx.x) * 16;
      const uint32_t sa = static_cast<uint32_t>(__cvta_generic_to_shared(dst + off));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(g + off));
    }
  };
  unsigned sum = 0;
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < steps) issue(s);
    asm volatile("cp.async.commit_group;\n" ::);
  }
  for (int s = 0; s < steps; ++s) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 2));
    __syncthreads();
    sum += reinterpret_cast<const unsigned*>(smem + (s % kStages) * kStageBytes)[threadIdx.x];
    __syncthreads();  // the slot refilled next was read by everyone
    if (s + kStages - 1 < steps) issue(s + kStages - 1);
    asm volatile("cp.async.commit_group;\n" ::);
  }
  asm volatile("cp.async.wait_group 0;\n" ::);
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    out[blockIdx.x] = Stamp{t0, globaltimer(), smid, sum};
  }
}

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 2;
  const int launches = argc > 2 ? std::atoi(argv[2]) : 9;
  int dev = 0, sms = 0;
  CHECK(cudaGetDevice(&dev));
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const size_t region = mib << 20;
  uint4* src = nullptr;
  Stamp* stamps = nullptr;
  CHECK(cudaMalloc(&src, region * sms));
  CHECK(cudaMemset(src, 1, region * sms));
  CHECK(cudaMalloc(&stamps, sizeof(Stamp) * sms));
  CHECK(cudaFuncSetAttribute(stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kPadSmem));
  // Evict the buffer from L2 between launches: read a 256 MB scratch buffer.
  void* flush = nullptr;
  CHECK(cudaMalloc(&flush, 256u << 20));
  std::vector<std::vector<double>> us_by_sm(launches, std::vector<double>(sms, NAN));
  std::printf("%d CTAs, one per SM, %zu MiB each; per launch: slowest, mean, fastest CTA (us), GB/s\n",
              sms, mib);
  for (int r = 0; r < launches; ++r) {
    CHECK(cudaMemset(flush, r, 256u << 20));
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    CHECK(cudaEventRecord(e0));
    stream_kernel<<<sms, kThreads, kPadSmem>>>(src, region, (r * 37) % sms, stamps);
    CHECK(cudaEventRecord(e1));
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    std::vector<Stamp> h(sms);
    CHECK(cudaMemcpy(h.data(), stamps, sizeof(Stamp) * sms, cudaMemcpyDeviceToHost));
    double lo = 1e30, hi = 0, mean = 0;
    for (const Stamp& s : h) {
      const double us = (s.t1 - s.t0) * 1e-3;
      lo = std::min(lo, us);
      hi = std::max(hi, us);
      mean += us / sms;
      if (s.smid < static_cast<unsigned>(sms)) us_by_sm[r][s.smid] = us;
    }
    std::printf("launch %d: %8.2f %8.2f %8.2f   spread (max/mean) %.3f  %.0f GB/s\n", r, hi, mean,
                lo, hi / mean, region * sms / (ms * 1e-3) / 1e9);
  }
  // Is an SM's speed a property of the SM? Correlate its time across launches.
  auto corr = [&](const std::vector<double>& a, const std::vector<double>& b) {
    double ma = 0, mb = 0;
    for (int i = 0; i < sms; ++i) ma += a[i] / sms, mb += b[i] / sms;
    double sab = 0, saa = 0, sbb = 0;
    for (int i = 0; i < sms; ++i) {
      sab += (a[i] - ma) * (b[i] - mb);
      saa += (a[i] - ma) * (a[i] - ma);
      sbb += (b[i] - mb) * (b[i] - mb);
    }
    return sab / std::sqrt(saa * sbb);
  };
  double c = 0;
  int pairs = 0;
  for (int i = 1; i < launches; ++i)
    for (int j = 1; j < i; ++j) c += corr(us_by_sm[i], us_by_sm[j]), ++pairs;
  std::printf("mean correlation of per-SM times between launches (first launch left out): %.3f\n",
              pairs ? c / pairs : NAN);
  std::vector<std::pair<double, int>> mean_by_sm(sms);
  for (int s = 0; s < sms; ++s) {
    double m = 0;
    for (int r = 1; r < launches; ++r) m += us_by_sm[r][s] / (launches - 1);
    mean_by_sm[s] = {m, s};
  }
  std::sort(mean_by_sm.begin(), mean_by_sm.end());
  std::printf("per-SM mean time over launches 1..%d, fastest to slowest (smid:us):\n", launches - 1);
  for (int i = 0; i < sms; ++i)
    std::printf("%3d:%.1f%s", mean_by_sm[i].second, mean_by_sm[i].first, i % 8 == 7 ? "\n" : "  ");
  std::printf("\n");
  return 0;
}
