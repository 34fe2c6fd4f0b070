/*
 * flashdecoding: split-K attention decode (seq_q = 1) for NVIDIA GPUs.
 *
 * Plain C ABI. Includable from C99 and C++ without any CUDA header: streams are
 * `void*` (a cudaStream_t, NULL = the legacy default stream), element types are
 * named by `fd_dtype`, never by CUDA types.
 *
 *   q [B, H_q, D]   k, v [B, H_kv, K_len, D]   y [B, H_q, D]
 *   y[b,h] = softmax(scale * q[b,h] . k[b, h/g]^T) . v[b, h/g]     g = H_q / H_kv
 *
 * Strides are in elements. The D axis is contiguous; every other stride is free
 * (NHD or HND caches, padded rows, slices of bigger caches, stride 0 to broadcast
 * an input). Accumulation is f32. Same inputs on the same GPU give the same bits.
 *
 * Every entry point validates in this order before anything touches the GPU:
 * problem -> workspace -> pointers -> launch. A refused call writes nothing and
 * leaves a message for the calling thread in fd_last_error_message().
 */
#ifndef FLASHDECODING_FLASHDECODING_H_
#define FLASHDECODING_FLASHDECODING_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  if defined(FD_BUILDING_LIBRARY)
#    define FD_API __declspec(dllexport)
#  else
#    define FD_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) || defined(__clang__)
#  define FD_API __attribute__((visibility("default")))
#else
#  define FD_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- version ------------------------------------------------------------- */

#define FD_VERSION_MAJOR 0
#define FD_VERSION_MINOR 1
#define FD_VERSION_PATCH 0
#define FD_VERSION (FD_VERSION_MAJOR * 10000 + FD_VERSION_MINOR * 100 + FD_VERSION_PATCH)

/* MAJOR*10000 + MINOR*100 + PATCH of the library actually loaded. */
FD_API int fd_get_version(void);

/* Largest head_dim the kernels accept. */
#define FD_FLASH_DECODING_MAX_HEAD_DIM 128

/* ---- status -------------------------------------------------------------- */

/* Stable numbering; append-only. */
typedef enum fd_status {
  FD_STATUS_SUCCESS = 0,
  FD_STATUS_INVALID_PROBLEM = 1,     /* extents, divisibility, strides, overflow */
  FD_STATUS_UNSUPPORTED = 2,         /* valid, but not implemented (dtype, head_dim, feature) */
  FD_STATUS_WORKSPACE_TOO_SMALL = 3, /* fd_last_error_message() names needed and got */
  FD_STATUS_INVALID_POINTER = 4,     /* NULL, misaligned, y overlapping an input */
  FD_STATUS_CUDA_ERROR = 5           /* no device, launch failure, ... (message has the CUDA text) */
} fd_status;

/* A short constant description; never NULL, also for unknown codes. */
FD_API const char* fd_status_string(int status);

/* The calling thread's detail of its last failure ("" when none). It names the
 * argument, its value and the rule it broke. Valid until this thread's next call. */
FD_API const char* fd_last_error_message(void);

/* ---- element types ------------------------------------------------------- */

typedef enum fd_dtype {
  FD_DTYPE_F16 = 1,
  FD_DTYPE_BF16 = 2,
  FD_DTYPE_F32 = 3,      /* named so bindings can be refused with UNSUPPORTED */
  FD_DTYPE_F64 = 4,
  FD_DTYPE_FP8_E4M3 = 5,
  FD_DTYPE_FP8_E5M2 = 6
} fd_dtype;

/* ---- the plain decode ---------------------------------------------------- */

/* Workspace bytes the run functions need for this problem, on any GPU (it does
 * not look at the device). 0 when k_len == 0 or when no split is ever needed,
 * and 0 (with a message) for extents that fd_flash_decoding_check_problem()
 * refuses; dtype and scale do not change the size, so they are not asked. */
FD_API size_t fd_flash_decoding_workspace_size(int32_t batch_size, int32_t num_heads,
                                               int32_t num_kv_heads, int32_t k_len,
                                               int32_t head_dim);

/* Host-only check of a problem (no pointers): the problem rules of the run
 * functions, nothing else. */
FD_API int fd_flash_decoding_check_problem(int32_t dtype, int32_t batch_size,
                                           int32_t num_heads, int32_t num_kv_heads,
                                           int32_t k_len, int32_t head_dim, float scale);

/* Host-only check of a whole call: exactly what fd_flash_decoding_<dtype>_run
 * checks before it launches (problem, strides, workspace, pointers), so a binding
 * gets the very answer a run would give without a GPU. */
FD_API int fd_flash_decoding_check(int32_t dtype, const void* q, const void* k,
                                   const void* v, const void* y, const void* workspace,
                                   size_t workspace_bytes, int32_t batch_size,
                                   int32_t num_heads, int32_t num_kv_heads, int32_t k_len,
                                   int32_t head_dim, int64_t q_stride_b, int64_t q_stride_h,
                                   int64_t k_stride_b, int64_t k_stride_h, int64_t k_stride_k,
                                   int64_t v_stride_b, int64_t v_stride_h, int64_t v_stride_k,
                                   int64_t y_stride_b, int64_t y_stride_h, float scale);

/* Runs the decode on `stream`. Asynchronous: returns after the launch. No host
 * synchronisation and no allocation, so it can be captured in a CUDA graph.
 * The workspace belongs to the caller; two runs in flight at once need two. */
FD_API int fd_flash_decoding_f16_run(const void* q, const void* k, const void* v, void* y,
                                     void* workspace, size_t workspace_bytes,
                                     int32_t batch_size, int32_t num_heads,
                                     int32_t num_kv_heads, int32_t k_len, int32_t head_dim,
                                     int64_t q_stride_b, int64_t q_stride_h,
                                     int64_t k_stride_b, int64_t k_stride_h,
                                     int64_t k_stride_k, int64_t v_stride_b,
                                     int64_t v_stride_h, int64_t v_stride_k,
                                     int64_t y_stride_b, int64_t y_stride_h, float scale,
                                     void* stream);

FD_API int fd_flash_decoding_bf16_run(const void* q, const void* k, const void* v, void* y,
                                      void* workspace, size_t workspace_bytes,
                                      int32_t batch_size, int32_t num_heads,
                                      int32_t num_kv_heads, int32_t k_len, int32_t head_dim,
                                      int64_t q_stride_b, int64_t q_stride_h,
                                      int64_t k_stride_b, int64_t k_stride_h,
                                      int64_t k_stride_k, int64_t v_stride_b,
                                      int64_t v_stride_h, int64_t v_stride_k,
                                      int64_t y_stride_b, int64_t y_stride_h, float scale,
                                      void* stream);

/* ---- extended decode: one size-versioned struct -------------------------- */

/* Flags for fd_decode_params.flags. */
#define FD_FLAG_BATCH_INVARIANT 0x1u /* a sequence's bits do not depend on its batch */

/* Append-only. The caller sets struct_size = sizeof(fd_decode_params) as it was
 * compiled (FD_DECODE_PARAMS_INIT does, with everything else zero); the library
 * reads only the fields that fit and treats the missing tail as zero. Every
 * extension field is "off" when zero, so a zeroed struct is the plain decode.
 * A field set to something the kernels cannot honour yet is refused with
 * FD_STATUS_UNSUPPORTED and a message naming it; nothing is silently ignored.
 *
 * Logit of key j for query head h of a sequence of length L (natural units):
 *   x = scale * q.k_j;  x = cap * tanh(x / cap) if logits_soft_cap > 0;
 *   x += alibi_slopes[h] * (j - (L - 1)) if alibi_slopes;
 * then softmax over the attended keys, where a sink adds exp(sinks[h]) (not
 * scaled) to the denominator only, and lse includes it. */
typedef struct fd_decode_params {
  size_t struct_size;
  int32_t dtype; /* fd_dtype of q, k, v, y */
  uint32_t flags;

  const void* q;
  const void* k;
  const void* v;
  void* y;
  void* workspace;
  size_t workspace_bytes;

  int32_t batch_size;
  int32_t num_heads;
  int32_t num_kv_heads;
  int32_t k_len;
  int32_t head_dim;
  float scale;

  int64_t q_stride_b, q_stride_h;
  int64_t k_stride_b, k_stride_h, k_stride_k;
  int64_t v_stride_b, v_stride_h, v_stride_k;
  int64_t y_stride_b, y_stride_h;

  void* stream;

  /* LSE output: lse[b*lse_stride_b + h*lse_stride_h] = natural log of the
   * softmax denominator (including scale), f32; -inf for an empty sequence. */
  float* lse;
  int64_t lse_stride_b, lse_stride_h;

  /* Per-sequence lengths (device, int32[B], each in [0, k_len]; being device data
   * they are not checked on the host: the kernels clamp them into that range). */
  const int32_t* seq_lens;

  /* Paged KV: k/v point at the page pool, block_table (device, int32[B][..]). */
  const int32_t* block_table;
  int64_t block_table_stride_b;
  int32_t page_size;

  /* Sliding window: attend to the last window_size keys of each sequence
   * (its own last key included); 0 = off. */
  int32_t window_size;

  /* Attention sinks: one logit per query head (device, f32[H_q]). */
  const float* sinks;

  /* ALiBi: one slope per query head (device, f32[H_q]). */
  const float* alibi_slopes;

  /* Soft-cap: logits -> cap * tanh(logits / cap); 0 = off. */
  float logits_soft_cap;

  /* fp8 KV cache: k/v in kv_dtype with per-tensor scales; 0 = same as dtype. */
  int32_t kv_dtype;
  float k_scale;
  float v_scale;
} fd_decode_params;

/* A zeroed params struct with struct_size set, in C:
 *   fd_decode_params p = FD_DECODE_PARAMS_INIT;
 * (designated, so -Wextra stays quiet). In C++: fd_decode_params p{};
 * p.struct_size = sizeof p; */
#ifndef __cplusplus
#define FD_DECODE_PARAMS_INIT {.struct_size = sizeof(fd_decode_params)}
#endif

/* Workspace bytes for these params (any GPU). Returns a status; *bytes is
 * written only on success. */
FD_API int fd_decode_workspace_size(const fd_decode_params* params, size_t* bytes);

/* Host-only check of the whole call, as fd_decode would make it. */
FD_API int fd_decode_check(const fd_decode_params* params);

/* Runs the decode described by params. */
FD_API int fd_decode(const fd_decode_params* params);

/* ---- the kernel table ---------------------------------------------------- */

/* One compiled kernel cell: dtype x head_dim bucket. A problem runs the
 * smallest bucket >= its head_dim with the tail masked. */
typedef struct fd_kernel_cell {
  int32_t dtype;          /* fd_dtype */
  int32_t head_dim;       /* bucket: 64, 80, 96, 128 */
  int32_t max_group_per_cta; /* query heads of one KV head that share a CTA */
  const char* name;       /* canonical template expression, static storage */
} fd_kernel_cell;

FD_API int32_t fd_kernel_cell_count(void);

/* FD_STATUS_INVALID_PROBLEM for an index outside [0, count). */
FD_API int fd_kernel_cell_get(int32_t index, fd_kernel_cell* cell);

/* Index of the cell a (dtype, head_dim) problem runs on, in *index. Returns
 * UNSUPPORTED (with a message) when no compiled cell serves it. */
FD_API int fd_kernel_cell_find(int32_t dtype, int32_t head_dim, int32_t* index);

/* Compute capabilities this library carries machine code for, e.g. "80,86,89,90a",
 * plus "+ptx<cc>" where PTX is embedded. Static storage. */
FD_API const char* fd_compiled_architectures(void);

/* How a plan would run on the current device: split count and CTAs.
 * Needs a device; FD_STATUS_CUDA_ERROR without one. Append-only like
 * fd_decode_params: the caller sets struct_size (FD_LAUNCH_PLAN_INIT does) and
 * the library writes no byte past it, so an older caller's struct stays safe. */
typedef struct fd_launch_plan {
  size_t struct_size;
  int32_t cell_index;
  int32_t num_splits;      /* 1: one kernel writes y; >1: partials + merge */
  int32_t chunk_len;       /* keys per split */
  int32_t heads_per_cta;
  int32_t num_sms;
  int32_t device_cc;       /* major*10 + minor */
  int32_t cluster_size;    /* >1: the splits reduce on chip in one thread block cluster */
  int32_t merge_kernel;    /* 1: partials go through the workspace to a merge kernel */
} fd_launch_plan;

#ifndef __cplusplus
#define FD_LAUNCH_PLAN_INIT {.struct_size = sizeof(fd_launch_plan)}
#endif

FD_API int fd_decode_plan(const fd_decode_params* params, fd_launch_plan* plan);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FLASHDECODING_FLASHDECODING_H_ */
