/* Device buffers and comparisons shared by the GPU cases (gpu_*.c). Only with
 * the CUDA runtime (FD_TEST_HAVE_CUDART); cuda_runtime_api.h is C-clean. */
#ifndef FD_TEST_GPU_SUPPORT_H_
#define FD_TEST_GPU_SUPPORT_H_

#if defined(FD_TEST_HAVE_CUDART)

#include <cuda_runtime_api.h>

#include <stddef.h>
#include <stdint.h>

#include "fd_test.h"

int cuda_ok(cudaError_t e, const char* what, const char* file, int line);
#define CUDA_OK(expr) cuda_ok((expr), #expr, __FILE__, __LINE__)

/* major * 10 + minor of the current device (0 when it cannot be asked). */
int fd_test_device_cc(void);

/* A device buffer with its host copy. Element types: f16, bf16 (2 bytes), fp8
 * e4m3 / e5m2 (1 byte). */
typedef struct tensor {
  int32_t dtype;
  int esize;       /* bytes per element */
  int64_t n;       /* elements, offset included */
  uint16_t* h;     /* host bits (16-bit tensors) */
  uint8_t* h8;     /* host bits (fp8 tensors) */
  double* d;       /* host values (exactly the stored bits), NULL for outputs */
  void* base;      /* device allocation */
  void* dev;       /* first element (base + offset) */
} tensor;

uint16_t to_bits(int32_t dtype, double x);
double from_bits(int32_t dtype, uint16_t b);
double fp8_value(int32_t kv_dtype, uint8_t b);

/* n elements starting `offset` elements into a fresh device buffer. With rng,
 * filled with values of magnitude <= amp (16-bit: amp * uniform, rounded;
 * fp8: random bit patterns of finite values within amp) and uploaded. */
int tensor_make(tensor* t, int64_t n, int offset, int32_t dtype, uint64_t* rng, double amp);
void tensor_free(tensor* t);
size_t tensor_bytes(const tensor* t);

/* A device copy of host data (int32 or f32 arrays); NULL after a failed CHECK. */
void* device_copy(const void* host, size_t bytes);

int sync_stream(void* stream, const char* what);
/* Every byte of the buffer 0xFF (NaN in f16 / bf16 / f32). */
int poison(tensor* y, void* stream);
/* The whole buffer back to host memory (tensor_bytes(y) bytes at dst). */
int download(tensor* y, void* dst, void* stream);

/* Elements from the first to one past the last of a strided tensor. */
int64_t extent(int64_t B, int64_t H, int64_t K, int64_t D, int64_t sb, int64_t sh, int64_t sk);

/* y's rows [B, H, D] at offset + b*y_sb + h*y_sh (1) among n elements (0). */
unsigned char* rows_mask(int32_t B, int32_t H, int32_t D, int64_t y_sb, int64_t y_sh, int64_t n,
                         int offset);

/* Compares y (bits, over the whole buffer) with the reference: rows written and
 * finite, everything else still 0xFFFF, relative L2 error within tol. */
void compare(const char* what, int32_t dtype, const uint16_t* yb, const double* yref,
             const unsigned char* mask, int64_t n, double tol);

/* lse[i] against ref[i] for i < n: -inf and NaN exactly, else within
 * 1e-3 * (1 + |ref|). */
void compare_lse(const char* what, const float* got, const double* ref, int64_t n);

/* The tolerance on y's relative L2 error for an output type. */
double y_tolerance(int32_t dtype);

/* The GPU case groups in their own files, run by fd_test_gpu_cases(). */
void fd_test_gpu_paged(int32_t dtype);
void fd_test_gpu_fp8(int32_t dtype);
void fd_test_gpu_merge(int32_t dtype);

#endif /* FD_TEST_HAVE_CUDART */

#endif /* FD_TEST_GPU_SUPPORT_H_ */
