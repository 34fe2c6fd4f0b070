// Which way of streaming a KV cache through shared memory reaches the most HBM
// bandwidth? A measurement tool, not part of the library: every probe reads
// the same bytes the decode kernel reads for one (batch, KV head) unit per CTA
// (a K region and a V region of `keys` rows of 256 bytes), keeps a checksum so
// nothing is optimised away, and reports GB/s from CUDA events (median of
// several launches; each launch reads far more than L2 holds).
//   build: nvcc -O3 -std=c++17 -arch=sm_90a tools/stream_probe.cu -o stream_probe
//   run:   ./stream_probe [units] [keys]        (default 512 units x 2048 keys)
// "x10" probes time 10 launches back to back, with programmatic dependent
// launch as the library uses it and as a kernel that never waits would.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda_check.h"

constexpr int kRow = 256;  // bytes of one key row (D = 128, bf16)

__device__ __forceinline__ uint32_t sa(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
template <int HINT>
__device__ __forceinline__ void cp16(void* s, const void* g) {
  if constexpr (HINT == 256)
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(sa(s)), "l"(g));
  else if constexpr (HINT == 128)
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;\n" ::"r"(sa(s)), "l"(g));
  else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa(s)), "l"(g));
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

struct Args {
  const uint8_t* k;
  const uint8_t* v;
  int keys;            // rows per unit
  unsigned long long* sum;
};

constexpr int kTile16 = 16 * kRow;  // bytes of one 16-row tile

// One warp streams `n` 16-row tiles of K and V through its ring of STAGES
// slots (2 * kTile16 bytes each): tile j starts (first + j * step) tiles into
// kb and vb. ORDER 0 interleaves K and V rows (the library), 1 copies K rows,
// then V rows. Returns a checksum of a word per lane of every tile.
template <int STAGES, int HINT, int ORDER>
__device__ unsigned long long stream_warp_tiles(uint8_t* ring, const uint8_t* kb,
                                                const uint8_t* vb, int n, int first, int step,
                                                int lane) {
  auto load = [&](int j) {
    uint8_t* s = ring + (j % STAGES) * 2 * kTile16;
    const size_t off = static_cast<size_t>(first + j * step) * kTile16;
#pragma unroll
    for (int it = 0; it < kTile16 / 16 / 32; ++it) {
      const int i = (lane + it * 32) * 16;
      cp16<HINT>(s + i, kb + off + i);
      if (ORDER == 0) cp16<HINT>(s + kTile16 + i, vb + off + i);
    }
    if (ORDER != 0) {
#pragma unroll
      for (int it = 0; it < kTile16 / 16 / 32; ++it) {
        const int i = (lane + it * 32) * 16;
        cp16<HINT>(s + kTile16 + i, vb + off + i);
      }
    }
  };
  unsigned long long acc = 0;
#pragma unroll
  for (int j = 0; j < STAGES - 1; ++j) {
    if (j < n) load(j);
    commit();
  }
  for (int j = 0; j < n; ++j) {
    wait_group<STAGES - 2>();
    __syncwarp();
    if (j + STAGES - 1 < n) load(j + STAGES - 1);
    commit();
    const uint8_t* s = ring + (j % STAGES) * 2 * kTile16;
    acc += reinterpret_cast<const uint32_t*>(s)[lane * 32] +
           reinterpret_cast<const uint32_t*>(s + kTile16)[lane * 32];
    __syncwarp();
  }
  wait_group<0>();
  return acc;
}

// P1: the library's pattern. Each warp streams 16-row tiles of K and V through
// its own ring; warps take tiles round robin.
// PDL: 0 plain; 1 the library's use (let the next grid launch, then wait for
// this one's predecessor before any load); 2 let the next grid launch and never
// wait (consecutive launches overlap their ramps and tails).
template <int WARPS, int STAGES, int HINT, int ORDER, int PDL = 0>
__global__ void __launch_bounds__(WARPS * 32) per_warp_ring(Args a) {
  extern __shared__ __align__(16) uint8_t smem[];
  if (PDL == 1) asm volatile("griddepcontrol.wait;\n" ::: "memory");
  if (PDL >= 1) asm volatile("griddepcontrol.launch_dependents;\n" ::);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const size_t unit = static_cast<size_t>(blockIdx.x) * a.keys * kRow;
  const int n_tiles = a.keys / 16;
  const int mine = (n_tiles - warp + WARPS - 1) / WARPS;
  const unsigned long long acc = stream_warp_tiles<STAGES, HINT, ORDER>(
      smem + warp * STAGES * 2 * kTile16, a.k + unit, a.v + unit, mine, warp, WARPS, lane);
  atomicAdd(a.sum, acc);
}

// P5: a persistent grid balancing work at run time: each CTA takes items of
// ITEM rows (of one unit) from a global counter until none are left, each item
// streamed like P1 (the ring drains between items). a.sum[1] is the counter,
// zeroed before each launch.
template <int WARPS, int STAGES, int ITEM>
__global__ void __launch_bounds__(WARPS * 32) dynamic_items(Args a, int total_items) {
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ int item;
  constexpr int mine = (ITEM / 16 + WARPS - 1) / WARPS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int items_per_unit = a.keys / ITEM;
  unsigned long long acc = 0;
  for (;;) {
    __syncthreads();
    if (threadIdx.x == 0) item = static_cast<int>(atomicAdd(a.sum + 1, 1ull));
    __syncthreads();
    const int it = item;
    if (it >= total_items) break;
    const int unit = it / items_per_unit, chunk = it - unit * items_per_unit;
    const size_t base = (static_cast<size_t>(unit) * a.keys + static_cast<size_t>(chunk) * ITEM) * kRow;
    acc += stream_warp_tiles<STAGES, 256, 0>(smem + warp * STAGES * 2 * kTile16, a.k + base,
                                             a.v + base, mine, warp, WARPS, lane);
  }
  atomicAdd(a.sum, acc);
}

// P2: CTA-wide tiles of T rows (K tile then V tile), STAGES deep, one barrier
// per tile, as a 128-key flash kernel streams.
template <int THREADS, int T, int STAGES, int HINT>
__global__ void __launch_bounds__(THREADS) cta_tiles(Args a) {
  extern __shared__ __align__(16) uint8_t smem[];
  constexpr int kTile = T * kRow;
  const uint8_t* kb = a.k + static_cast<size_t>(blockIdx.x) * a.keys * kRow;
  const uint8_t* vb = a.v + static_cast<size_t>(blockIdx.x) * a.keys * kRow;
  const int n_tiles = a.keys / T;
  auto load = [&](int j) {
    uint8_t* s = smem + (j % STAGES) * 2 * kTile;
    const size_t off = static_cast<size_t>(j) * kTile;
#pragma unroll
    for (int i = threadIdx.x * 16; i < kTile; i += THREADS * 16) cp16<HINT>(s + i, kb + off + i);
#pragma unroll
    for (int i = threadIdx.x * 16; i < kTile; i += THREADS * 16)
      cp16<HINT>(s + kTile + i, vb + off + i);
  };
  unsigned long long acc = 0;
#pragma unroll
  for (int j = 0; j < STAGES - 1; ++j) {
    if (j < n_tiles) load(j);
    commit();
  }
  for (int j = 0; j < n_tiles; ++j) {
    wait_group<STAGES - 2>();
    __syncthreads();
    if (j + STAGES - 1 < n_tiles) load(j + STAGES - 1);
    commit();
    const uint8_t* s = smem + (j % STAGES) * 2 * kTile;
    acc += reinterpret_cast<const uint32_t*>(s)[(threadIdx.x * 16) % (kTile / 4)] +
           reinterpret_cast<const uint32_t*>(s + kTile)[(threadIdx.x * 16) % (kTile / 4)];
  }
  wait_group<0>();
  atomicAdd(a.sum, acc);
}

// P3: no shared memory: each thread keeps U 16-byte loads of K and of V in
// flight in registers (ld.global.nc with an L2 256-byte prefetch).
template <int THREADS, int U>
__global__ void __launch_bounds__(THREADS) registers(Args a) {
  const uint4* kb = reinterpret_cast<const uint4*>(a.k + static_cast<size_t>(blockIdx.x) * a.keys * kRow);
  const uint4* vb = reinterpret_cast<const uint4*>(a.v + static_cast<size_t>(blockIdx.x) * a.keys * kRow);
  const int n = a.keys * kRow / 16;
  unsigned long long acc = 0;
  for (int base = 0; base < n; base += THREADS * U) {
    uint4 x[U], y[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = base + u * THREADS + threadIdx.x;
      asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                   : "=r"(x[u].x), "=r"(x[u].y), "=r"(x[u].z), "=r"(x[u].w)
                   : "l"(kb + i));
      asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                   : "=r"(y[u].x), "=r"(y[u].y), "=r"(y[u].z), "=r"(y[u].w)
                   : "l"(vb + i));
    }
#pragma unroll
    for (int u = 0; u < U; ++u) acc += x[u].x ^ y[u].w;
  }
  atomicAdd(a.sum, acc);
}

// P4: TMA bulk copies. Lane 0 of each warp copies a 4 KB K chunk and a 4 KB V
// chunk per stage with one instruction each; an mbarrier per stage.
template <int WARPS, int STAGES, int CHUNK_ROWS>
__global__ void __launch_bounds__(WARPS * 32) bulk_copies(Args a) {
  extern __shared__ __align__(16) uint8_t smem[];
  constexpr int kChunk = CHUNK_ROWS * kRow;
  __shared__ __align__(8) uint64_t bar[WARPS][STAGES];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const uint8_t* kb = a.k + static_cast<size_t>(blockIdx.x) * a.keys * kRow;
  const uint8_t* vb = a.v + static_cast<size_t>(blockIdx.x) * a.keys * kRow;
  uint8_t* ring = smem + warp * STAGES * 2 * kChunk;
  const int n_chunks = a.keys / CHUNK_ROWS;
  const int mine = (n_chunks - warp + WARPS - 1) / WARPS;
  if (lane == 0)
    for (int s = 0; s < STAGES; ++s)
      asm volatile("mbarrier.init.shared.b64 [%0], 1;\n" ::"r"(sa(&bar[warp][s])));
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::);
  __syncwarp();
  auto load = [&](int j) {
    if (lane != 0) return;
    const int s = j % STAGES;
    uint8_t* dst = ring + s * 2 * kChunk;
    const size_t off = static_cast<size_t>(warp + j * WARPS) * kChunk;
    asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;\n" ::"r"(sa(&bar[warp][s])),
                 "r"(2 * kChunk));
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
            sa(dst)),
        "l"(kb + off), "r"(kChunk), "r"(sa(&bar[warp][s])));
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
            sa(dst + kChunk)),
        "l"(vb + off), "r"(kChunk), "r"(sa(&bar[warp][s])));
  };
  unsigned long long acc = 0;
  for (int j = 0; j < STAGES - 1 && j < mine; ++j) load(j);
  for (int j = 0; j < mine; ++j) {
    const int s = j % STAGES;
    const uint32_t parity = (j / STAGES) & 1;
    asm volatile(
        "{\n .reg .pred p;\n WAIT_%=:\n"
        " mbarrier.try_wait.parity.shared.b64 p, [%0], %1;\n"
        " @!p bra WAIT_%=;\n}\n" ::"r"(sa(&bar[warp][s])),
        "r"(parity));
    __syncwarp();
    if (j + STAGES - 1 < mine) load(j + STAGES - 1);
    const uint8_t* t = ring + s * 2 * kChunk;
    acc += reinterpret_cast<const uint32_t*>(t)[lane * 16] +
           reinterpret_cast<const uint32_t*>(t + kChunk)[lane * 16];
    __syncwarp();
  }
  atomicAdd(a.sum, acc);
}

// Pseudo-random bytes (a hash of the index), so no probe streams constant data.
__global__ void fill_random(uint32_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    p[i] = x;
  }
}

struct Probe {
  const char* name;
  const void* fn;
  int threads;
  size_t smem;
  int pdl = 0;  // launch with programmatic stream serialization
};

template <typename F>
Probe make(const char* name, F* fn, int threads, size_t smem, int pdl = 0) {
  return Probe{name, reinterpret_cast<const void*>(fn), threads, smem, pdl};
}

int main(int argc, char** argv) {
  const int units = argc > 1 ? std::atoi(argv[1]) : 512;
  const int keys = argc > 2 ? std::atoi(argv[2]) : 2048;
  const size_t bytes = static_cast<size_t>(units) * keys * kRow;
  uint8_t *k, *v;
  unsigned long long* sum;
  CHECK(cudaMalloc(&k, bytes));
  CHECK(cudaMalloc(&v, bytes));
  CHECK(cudaMalloc(&sum, 2 * sizeof(*sum)));
  fill_random<<<1024, 256>>>(reinterpret_cast<uint32_t*>(k), bytes / 4, 1u);
  fill_random<<<1024, 256>>>(reinterpret_cast<uint32_t*>(v), bytes / 4, 2u);
  CHECK(cudaDeviceSynchronize());
  int dev = 0, sms = 0;
  CHECK(cudaGetDevice(&dev));
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  constexpr int T16 = kTile16;
  const Probe probes[] = {
      make("P1 per-warp ring w4 s3 L2:256 interleaved (library)", per_warp_ring<4, 3, 256, 0>, 128, 2 * 4 * 3 * T16),
      make("P1 per-warp ring w4 s3 L2:256, padded to 1 CTA/SM", per_warp_ring<4, 3, 256, 0>, 128, 116 * 1024),
      make("P1 per-warp ring w4 s3 L2:256 K then V", per_warp_ring<4, 3, 256, 1>, 128, 2 * 4 * 3 * T16),
      make("P1 per-warp ring w4 s3 no hint", per_warp_ring<4, 3, 0, 0>, 128, 2 * 4 * 3 * T16),
      make("P1 per-warp ring w8 s3 L2:256", per_warp_ring<8, 3, 256, 0>, 256, 2 * 8 * 3 * T16),
      make("P1 per-warp ring w4 s2 L2:256", per_warp_ring<4, 2, 256, 0>, 128, 2 * 4 * 2 * T16),
      make("P2 CTA tiles 128 thr T64 s3 L2:256", cta_tiles<128, 64, 3, 256>, 128, 2 * 3 * 64 * kRow),
      make("P2 CTA tiles 128 thr T128 s2 L2:256", cta_tiles<128, 128, 2, 256>, 128, 2 * 2 * 128 * kRow),
      make("P2 CTA tiles 256 thr T64 s3 L2:256", cta_tiles<256, 64, 3, 256>, 256, 2 * 3 * 64 * kRow),
      make("P2 CTA tiles 128 thr T32 s4 L2:256", cta_tiles<128, 32, 4, 256>, 128, 2 * 4 * 32 * kRow),
      make("P3 registers 128 thr U4", registers<128, 4>, 128, 0),
      make("P3 registers 256 thr U4", registers<256, 4>, 256, 0),
      make("P3 registers 512 thr U2", registers<512, 2>, 512, 0),
      make("P4 bulk w4 s3 16-row chunks", bulk_copies<4, 3, 16>, 128, 2 * 4 * 3 * T16),
      make("P4 bulk w4 s3 32-row chunks", bulk_copies<4, 3, 32>, 128, 2 * 4 * 3 * 32 * kRow),
      make("P4 bulk w2 s4 32-row chunks", bulk_copies<2, 4, 32>, 64, 2 * 2 * 4 * 32 * kRow),
      make("P1 x10 back to back, PDL off", per_warp_ring<4, 3, 256, 0, 0>, 128, 2 * 4 * 3 * T16, 10),
      make("P1 x10 back to back, PDL, wait first (library)", per_warp_ring<4, 3, 256, 0, 1>, 128, 2 * 4 * 3 * T16, 11),
      make("P1 x10 back to back, PDL, no wait (overlap)", per_warp_ring<4, 3, 256, 0, 2>, 128, 2 * 4 * 3 * T16, 12),
  };
  std::printf("units %d x keys %d: %.1f MB of K+V per launch, %d SMs\n", units, keys,
              2.0 * bytes / 1e6, sms);
  Args a{k, v, keys, sum};
  void* params[] = {&a};
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  for (const Probe& p : probes) {
    CHECK(cudaFuncSetAttribute(p.fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(p.smem)));
    int per_sm = 0;
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, p.fn, p.threads, p.smem));
    std::vector<float> ms;
    const int reps = p.pdl >= 10 ? 10 : 1;  // launches per timed sample
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    cfg.gridDim = dim3(units);
    cfg.blockDim = dim3(p.threads);
    cfg.dynamicSmemBytes = p.smem;
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = p.pdl >= 11 ? 1 : 0;
    for (int r = 0; r < 12; ++r) {
      CHECK(cudaEventRecord(e0));
      for (int i = 0; i < reps; ++i) CHECK(cudaLaunchKernelExC(&cfg, p.fn, params));
      CHECK(cudaEventRecord(e1));
      CHECK(cudaEventSynchronize(e1));
      float t = 0;
      CHECK(cudaEventElapsedTime(&t, e0, e1));
      if (r >= 2) ms.push_back(t / reps);
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    std::printf("%-55s %2d CTA/SM %8.1f us %7.0f GB/s (best %7.0f)\n", p.name, per_sm, med * 1e3,
                2.0 * bytes / (med * 1e-3) / 1e9, 2.0 * bytes / (ms[0] * 1e-3) / 1e9);
  }
  // P5: persistent grids, items of ITEM rows handed out at run time.
  struct Dyn {
    const char* name;
    const void* fn;
    int item;
    int ctas_per_sm;
  };
  const Dyn dyn[] = {
      {"P5 dynamic items 256 rows, 2 CTA/SM", reinterpret_cast<const void*>(dynamic_items<4, 3, 256>), 256, 2},
      {"P5 dynamic items 512 rows, 2 CTA/SM", reinterpret_cast<const void*>(dynamic_items<4, 3, 512>), 512, 2},
      {"P5 dynamic items 1024 rows, 2 CTA/SM", reinterpret_cast<const void*>(dynamic_items<4, 3, 1024>), 1024, 2},
      {"P5 dynamic items 512 rows, 1 CTA/SM", reinterpret_cast<const void*>(dynamic_items<4, 3, 512>), 512, 1},
  };
  for (const Dyn& d : dyn) {
    if (keys % d.item != 0) continue;
    const size_t smem = 2 * 4 * 3 * T16;
    CHECK(cudaFuncSetAttribute(d.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    int total = units * (keys / d.item);
    void* dparams[] = {&a, &total};
    std::vector<float> ms;
    for (int r = 0; r < 12; ++r) {
      CHECK(cudaMemsetAsync(sum + 1, 0, sizeof(*sum)));
      CHECK(cudaEventRecord(e0));
      CHECK(cudaLaunchKernel(d.fn, dim3(d.ctas_per_sm * sms), dim3(128), dparams, smem, 0));
      CHECK(cudaEventRecord(e1));
      CHECK(cudaEventSynchronize(e1));
      float t = 0;
      CHECK(cudaEventElapsedTime(&t, e0, e1));
      if (r >= 2) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    std::printf("%-55s %2d CTA/SM %8.1f us %7.0f GB/s (best %7.0f)\n", d.name, d.ctas_per_sm,
                med * 1e3, 2.0 * bytes / (med * 1e-3) / 1e9, 2.0 * bytes / (ms[0] * 1e-3) / 1e9);
  }
  return 0;
}
