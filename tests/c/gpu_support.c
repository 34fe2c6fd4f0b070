/* Device buffers and comparisons shared by the GPU cases. */
#include "gpu_support.h"

#include <flashdecoding/flashdecoding.h>

#if defined(FD_TEST_HAVE_CUDART)

#include <math.h>
#include <stdlib.h>
#include <string.h>

int cuda_ok(cudaError_t e, const char* what, const char* file, int line) {
  return fd_test_check(e == cudaSuccess, file, line, "%s: CUDA error %d: %s", what, (int)e,
                       cudaGetErrorString(e));
}

int fd_test_device_cc(void) {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return major * 10 + minor;
}

uint16_t to_bits(int32_t dtype, double x) {
  return dtype == FD_DTYPE_BF16 ? fd_test_f32_to_bf16((float)x) : fd_test_f32_to_f16((float)x);
}

double from_bits(int32_t dtype, uint16_t b) {
  return dtype == FD_DTYPE_BF16 ? (double)fd_test_bf16_to_f32(b) : (double)fd_test_f16_to_f32(b);
}

double fp8_value(int32_t kv_dtype, uint8_t b) {
  return kv_dtype == FD_DTYPE_FP8_E5M2 ? (double)fd_test_fp8_e5m2_to_float(b)
                                       : (double)fd_test_fp8_e4m3_to_float(b);
}

static int is_fp8(int32_t dtype) {
  return dtype == FD_DTYPE_FP8_E4M3 || dtype == FD_DTYPE_FP8_E5M2;
}

size_t tensor_bytes(const tensor* t) { return (size_t)t->n * (size_t)t->esize; }

void tensor_free(tensor* t) {
  free(t->h);
  free(t->h8);
  free(t->d);
  if (t->base) cudaFree(t->base);
  memset(t, 0, sizeof *t);
}

int tensor_make(tensor* t, int64_t n, int offset, int32_t dtype, uint64_t* rng, double amp) {
  int64_t i;
  memset(t, 0, sizeof *t);
  if (n < 1) n = 1;
  t->dtype = dtype;
  t->esize = is_fp8(dtype) ? 1 : 2;
  t->n = n + offset;
  if (is_fp8(dtype)) t->h8 = (uint8_t*)malloc((size_t)t->n);
  else t->h = (uint16_t*)malloc((size_t)t->n * sizeof(uint16_t));
  if (rng) t->d = (double*)malloc((size_t)t->n * sizeof(double));
  if (!CHECK((t->h != NULL || t->h8 != NULL) && (rng == NULL || t->d != NULL),
             "host allocation of %ld elements", (long)t->n)) {
    tensor_free(t);
    return 0;
  }
  if (!CUDA_OK(cudaMalloc(&t->base, tensor_bytes(t) + 64))) {
    t->base = NULL;
    tensor_free(t);
    return 0;
  }
  t->dev = (char*)t->base + (size_t)offset * (size_t)t->esize;
  if (rng) {
    for (i = 0; i < t->n; ++i) {
      if (is_fp8(dtype)) {
        /* A random bit pattern, redrawn until finite and within amp. */
        uint8_t b;
        double x;
        do {
          b = (uint8_t)(((uint64_t)((fd_test_uniform(rng) + 1.0) * 128.0)) & 0xffu);
          x = fp8_value(dtype, b);
        } while (!isfinite(x) || fabs(x) > amp);
        t->h8[i] = b;
        t->d[i] = x;
      } else {
        t->h[i] = to_bits(dtype, amp * fd_test_uniform(rng));
        t->d[i] = from_bits(dtype, t->h[i]);
      }
    }
    if (!CUDA_OK(cudaMemcpy(t->base, t->h8 ? (void*)t->h8 : (void*)t->h, tensor_bytes(t),
                            cudaMemcpyHostToDevice))) {
      tensor_free(t);
      return 0;
    }
  }
  return 1;
}

void* device_copy(const void* host, size_t bytes) {
  void* d = NULL;
  if (!CUDA_OK(cudaMalloc(&d, bytes > 0 ? bytes : 4))) return NULL;
  if (bytes > 0 && !CUDA_OK(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice))) {
    cudaFree(d);
    return NULL;
  }
  return d;
}

int sync_stream(void* stream, const char* what) {
  cudaError_t e = stream ? cudaStreamSynchronize((cudaStream_t)stream) : cudaDeviceSynchronize();
  return CHECK(e == cudaSuccess, "%s: synchronize: %s", what, cudaGetErrorString(e));
}

int poison(tensor* y, void* stream) {
  return CUDA_OK(cudaMemsetAsync(y->base, 0xFF, tensor_bytes(y), (cudaStream_t)stream));
}

int download(tensor* y, void* dst, void* stream) {
  if (!CUDA_OK(cudaMemcpyAsync(dst, y->base, tensor_bytes(y), cudaMemcpyDeviceToHost,
                               (cudaStream_t)stream))) {
    return 0;
  }
  return sync_stream(stream, "download");
}

int64_t extent(int64_t B, int64_t H, int64_t K, int64_t D, int64_t sb, int64_t sh, int64_t sk) {
  return (B - 1) * sb + (H - 1) * sh + (K > 0 ? (K - 1) * sk : 0) + D;
}

unsigned char* rows_mask(int32_t B, int32_t H, int32_t D, int64_t y_sb, int64_t y_sh, int64_t n,
                         int offset) {
  unsigned char* m = (unsigned char*)calloc((size_t)n, 1);
  int64_t b, h, d;
  if (m == NULL) return NULL;
  for (b = 0; b < B; ++b)
    for (h = 0; h < H; ++h)
      for (d = 0; d < D; ++d) m[offset + b * y_sb + h * y_sh + d] = 1;
  return m;
}

void compare(const char* what, int32_t dtype, const uint16_t* yb, const double* yref,
             const unsigned char* mask, int64_t n, double tol) {
  int64_t i, unwritten = 0, clobbered = 0;
  double num = 0.0, den = 0.0;
  for (i = 0; i < n; ++i) {
    if (mask[i]) {
      double val = from_bits(dtype, yb[i]);
      if (!isfinite(val)) {
        ++unwritten;
        continue;
      }
      num += (val - yref[i]) * (val - yref[i]);
      den += yref[i] * yref[i];
    } else if (yb[i] != 0xFFFFu) {
      ++clobbered;
    }
  }
  CHECK(unwritten == 0, "%s: %ld output elements not written (still NaN) or not finite", what,
        (long)unwritten);
  CHECK(clobbered == 0, "%s: %ld elements outside y's rows were written", what, (long)clobbered);
  if (den == 0.0) {
    CHECK(num == 0.0, "%s: reference is all zeros, y is not (sum sq %g)", what, num);
  } else {
    double rel = sqrt(num / den);
    CHECK(rel <= tol, "%s: relative error %.3e > %.1e", what, rel, tol);
  }
}

void compare_lse(const char* what, const float* got, const double* ref, int64_t n) {
  int64_t i, bad = 0, first = -1;
  for (i = 0; i < n; ++i) {
    double g = (double)got[i];
    int ok;
    if (isnan(ref[i])) ok = isnan(g);
    else if (isinf(ref[i])) ok = isinf(g) && (g < 0) == (ref[i] < 0);
    else ok = isfinite(g) && fabs(g - ref[i]) <= 1e-3 * (1.0 + fabs(ref[i]));
    if (!ok) {
      if (first < 0) first = i;
      ++bad;
    }
  }
  CHECK(bad == 0, "%s: %ld lse entries wrong; first [%ld] = %.6g, reference %.6g", what,
        (long)bad, (long)first, first >= 0 ? (double)got[first] : 0.0,
        first >= 0 ? ref[first] : 0.0);
}

double y_tolerance(int32_t dtype) { return dtype == FD_DTYPE_BF16 ? 1e-2 : 2e-3; }

#else

/* ISO C needs a declaration in every translation unit. */
typedef int fd_test_gpu_support_unused;

#endif
