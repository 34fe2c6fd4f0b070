// Thin wrappers over the PTX the decode kernels use: asynchronous 16-byte copies
// global -> shared, ldmatrix, m16n8k16 tensor-core mma with f32 accumulators,
// fp8 -> f16 conversion, and grid-dependency control for programmatic
// dependent launch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

namespace fd {
namespace ptx {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1 (the KV cache is read once).
// src_bytes == 0 zero-fills the destination without reading src.
// PREFETCH (0, 128 or 256) adds an L2 prefetch-size hint, so that one miss
// fetches a longer DRAM burst. HINT: the copy carries the L2 eviction policy
// `policy` (make_evict_first_policy).
#define FD_CP_ASYNC_16(QUALIFIERS)                                                         \
  asm volatile("cp.async.cg.shared.global" QUALIFIERS " [%0], [%1], 16, %2;\n" ::"r"(dst), \
               "l"(gmem), "r"(src_bytes))
#define FD_CP_ASYNC_16_HINT(QUALIFIERS)                                              \
  asm volatile("cp.async.cg.shared.global.L2::cache_hint" QUALIFIERS                 \
               " [%0], [%1], 16, %2, %3;\n" ::"r"(dst),                              \
               "l"(gmem), "r"(src_bytes), "l"(policy))
template <int PREFETCH, bool HINT = false>
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes,
                                            uint64_t policy = 0) {
  constexpr int kPrefetch = PREFETCH;
  const uint32_t dst = smem_addr(smem);
  if constexpr (HINT) {
    if constexpr (kPrefetch == 256) FD_CP_ASYNC_16_HINT(".L2::256B");
    else if constexpr (kPrefetch == 128) FD_CP_ASYNC_16_HINT(".L2::128B");
    else FD_CP_ASYNC_16_HINT("");
  } else {
    (void)policy;
    if constexpr (kPrefetch == 256) FD_CP_ASYNC_16(".L2::256B");
    else if constexpr (kPrefetch == 128) FD_CP_ASYNC_16(".L2::128B");
    else FD_CP_ASYNC_16("");
  }
}
#undef FD_CP_ASYNC_16
#undef FD_CP_ASYNC_16_HINT

// 4 bytes global -> shared through L1 (.ca): the line the word lies in stays
// in L1, so later loads of its other words hit there.
__device__ __forceinline__ void cp_async_ca_4(void* smem, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(smem)), "l"(gmem)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// An L2 policy under which the lines a load brings in are the first to go.
__device__ __forceinline__ uint64_t make_evict_first_policy() {
  uint64_t policy = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("createpolicy.fractional.L2::evict_first.b64 %0;\n" : "=l"(policy));
#endif
  return policy;
}


template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}

// The transpose of an 8x8 matrix of 16-bit elements held as mma fragments
// (thread l: row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 in one register).
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

template <typename T>
struct Mma;

template <>
struct Mma<__half> {
  // d = a(16x16, row) * b(16x8, col) + d, f32 accumulate.
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t bits) {
    return __half22float2(*reinterpret_cast<const __half2*>(&bits));
  }
};

template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t bits) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bits));
  }
};

// Splits a pair of f32 probabilities into a rounded pair and the rounded
// remainder, so hi + lo carries about twice the element type's mantissa.
template <typename T>
__device__ __forceinline__ void split_pack(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  hi = Mma<T>::pack(x0, x1);
  const float2 h = Mma<T>::unpack(hi);
  lo = Mma<T>::pack(x0 - h.x, x1 - h.y);
}

// Pins a value (typically a kernel parameter) in a register at this point of
// the program: called before grid_dependency_wait(), the parameter's constant
// cache miss (each launch has a fresh parameter bank) overlaps the wait for
// the previous grid instead of stalling the critical path after it.
__device__ __forceinline__ int pin(int v) {
  asm volatile("mov.b32 %0, %0;" : "+r"(v));
  return v;
}
__device__ __forceinline__ float pin(float v) {
  asm volatile("mov.b32 %0, %0;" : "+f"(v));
  return v;
}
template <typename P>
__device__ __forceinline__ P* pin(P* v) {
  uint64_t u = reinterpret_cast<uint64_t>(v);
  asm volatile("mov.b64 %0, %0;" : "+l"(u));
  return reinterpret_cast<P*>(u);
}

// Asks L2 to fetch [src, src + bytes) from HBM (sm_90+; src 16-byte aligned,
// bytes a multiple of 16). A hint: it returns nothing to the thread, and L2 is
// the GPU's point of coherence, so it may be issued before
// grid_dependency_wait() even for bytes the previous grid is still writing.
__device__ __forceinline__ void prefetch_l2(const void* src, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
#endif
}

// Programmatic dependent launch (sm_90+): wait until the grids this one depends
// on have finished and their writes are visible. A no-op before sm_90 and when
// the launch did not ask for programmatic serialisation.
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the grid that depends on this one (launched with PDL) be scheduled now;
// it still waits in grid_dependency_wait() until this grid has finished.
__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Four fp8 values (bytes 0-3 of `quad`) as two f16x2: bytes 0, 1 in `lo`,
// bytes 2, 3 in `hi`, the lower byte in the lower half. Exact: every e4m3 and
// e5m2 value is an f16 value. sm_89+. The halves of `quad` go to the
// conversions as 16-bit registers, so no shift extracts the upper pair. An
// e5m2 byte is the upper byte of the f16 of the same value (same exponent
// bias, the mantissa's low 8 bits zero): a byte permute per pair, no
// conversion instruction.
template <bool E5M2>
__device__ __forceinline__ void fp8x4_to_f16x2x2(uint32_t quad, uint32_t& lo, uint32_t& hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  if constexpr (E5M2) {
    asm("prmt.b32 %0, %1, 0, 0x1404;\n" : "=r"(lo) : "r"(quad));  // {b1, 0, b0, 0}
    asm("prmt.b32 %0, %1, 0, 0x3424;\n" : "=r"(hi) : "r"(quad));  // {b3, 0, b2, 0}
  } else
    asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\ncvt.rn.f16x2.e4m3x2 %0, l;\n"
        "cvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
        : "=r"(lo), "=r"(hi) : "r"(quad));
#else
  (void)quad;
  lo = hi = 0;
  __trap();  // fp8 cells are compiled for sm_89 and newer only
#endif
}

// 2^x with results below 2^-126 flushed to 0: the hardware's ex2 alone.
// exp2f gives the same bits for every x >= -126 and adds a range test and two
// scalings per call to produce the subnormal results, which a softmax weight
// that small (below 2^-126 of the row's largest) never needs.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// 1 / x to about 1 ulp, subnormal inputs and results flushed: the hardware's
// rcp alone (1 / inf = 0, 1 / 0 = inf).
__device__ __forceinline__ float rcp_ftz(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Byte permute: result byte i is byte (sel >> 4i) & 7 of the pair {b:a}.
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

// Four fp8 values as two f16x2 by alternate bytes: bytes 0, 2 in `lo`, bytes
// 1, 3 in `hi`, the lower byte in the lower half (ldmatrix.trans of fp8 bytes
// as 16-bit pairs leaves two keys of one column in bytes 0 and 2). For e5m2
// the regrouping and the conversion are one byte permute per pair.
template <bool E5M2>
__device__ __forceinline__ void fp8x4_alternate_to_f16x2x2(uint32_t quad, uint32_t& lo,
                                                           uint32_t& hi) {
  if constexpr (E5M2) {
    lo = prmt(quad, 0u, 0x2404u);  // {b2, 0, b0, 0}
    hi = prmt(quad, 0u, 0x3414u);  // {b3, 0, b1, 0}
  } else {
    fp8x4_to_f16x2x2<false>(prmt(quad, 0u, 0x3120u), lo, hi);
  }
}

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

}  // namespace ptx
}  // namespace fd
