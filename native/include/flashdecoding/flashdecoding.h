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
#define FD_VERSION_MINOR 2
#define FD_VERSION_PATCH 0
#define FD_VERSION (FD_VERSION_MAJOR * 10000 + FD_VERSION_MINOR * 100 + FD_VERSION_PATCH)

/* MAJOR*10000 + MINOR*100 + PATCH of the library actually loaded. */
FD_API int fd_get_version(void);

/* Largest head_dim the kernels accept (any head_dim 1..256 runs the smallest
 * compiled bucket that holds it, the tail masked). */
#define FD_FLASH_DECODING_MAX_HEAD_DIM 256

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

/* Largest page of a paged KV cache (page_size 1..FD_MAX_PAGE_SIZE). */
#define FD_MAX_PAGE_SIZE 256

/* Append-only. The caller sets struct_size = sizeof(fd_decode_params) as it was
 * compiled (FD_DECODE_PARAMS_INIT does, with everything else zero); the library
 * reads only the fields that fit and treats the missing tail as zero. Every
 * extension field is "off" when zero, so a zeroed struct is the plain decode.
 * A field set to something the kernels cannot honour is refused with
 * FD_STATUS_UNSUPPORTED and a message naming it; nothing is silently ignored.
 *
 * Logit of key j for query head h of a sequence of length L (natural units):
 *   x = scale * q.k_j;  x = cap * tanh(x / cap) if logits_soft_cap > 0;
 *   x += alibi_slopes[h] * (j - (L - 1)) if alibi_slopes;
 * then softmax over the attended keys: all of 0..L-1, or with window_size = W
 * the last W (j >= L - W) plus the sink tokens j < sink_tokens. A sink logit
 * (sinks[h]) adds exp(sinks[h]) (not scaled) to the denominator only, and lse
 * includes it.
 *
 * Two kinds of "sink", side by side:
 *   sink_tokens  StreamingLLM: the first n keys of each sequence stay attended
 *                under a sliding window (they are real keys with values).
 *   sinks        per-head learnable logits (gpt-oss): a virtual key with a
 *                logit and no value, which only absorbs probability mass. */
typedef struct fd_decode_params {
  size_t struct_size;
  int32_t dtype; /* fd_dtype of q and y (f16 or bf16); also of k and v unless kv_dtype */
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
  int32_t k_len; /* keys per sequence; the launch is sized for it (paged: see below) */
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

  /* Per-sequence lengths (device, int32[B]). Contiguous caches: each is clamped
   * into [0, k_len]. Paged caches: a length outside [0, k_len] makes that
   * sequence's y and lse NaN (the kernels never read past the block table). */
  const int32_t* seq_lens;

  /* Paged KV: with block_table set, k and v point at page pools. Entry i of
   * row b (block_table[b*block_table_stride_b + i], device int32) is the pool
   * index of sequence b's i-th page; pages may repeat and appear in any order.
   * Element d of key j of KV head h of sequence b lives at
   *   k + page*k_stride_page + h*k_stride_h + (j % page_size)*k_stride_k + d,
   *   page = block_table[b*block_table_stride_b + j / page_size]
   * (v likewise): NHD pages [pages, page_size, H_kv, D] have k_stride_k =
   * H_kv*D, k_stride_h = D; HND pages [pages, H_kv, page_size, D] have
   * k_stride_h = page_size*D, k_stride_k = D. k_stride_b and v_stride_b must be
   * 0, and k_len <= max_pages * page_size. A page id outside [0, num_pages)
   * among the pages a sequence's length needs makes that sequence's y and lse
   * NaN; the kernels never read outside the pools. */
  const int32_t* block_table;
  int64_t block_table_stride_b;
  int32_t page_size; /* keys per page, 1..FD_MAX_PAGE_SIZE */

  /* Sliding window: attend to the last window_size keys of each sequence
   * (its own last key included); 0 = off. */
  int32_t window_size;

  /* Attention sink logits: one per query head (device, f32[H_q]). */
  const float* sinks;

  /* ALiBi: one slope per query head (device, f32[H_q]). */
  const float* alibi_slopes;

  /* Soft-cap: logits -> cap * tanh(logits / cap); 0 = off. */
  float logits_soft_cap;

  /* fp8 KV cache: k and v stored as kv_dtype (FD_DTYPE_FP8_E4M3 or _E5M2; 0 or
   * dtype = the same type as q), dequantised as k = k_fp8 * k_scale and
   * v = v_fp8 * v_scale. Per-tensor scales here (0 = 1.0), or per KV head in
   * k_scales / v_scales below; setting both for one tensor is refused. Needs
   * compute capability 8.9 or newer (UNSUPPORTED naming the device otherwise). */
  int32_t kv_dtype;
  float k_scale;
  float v_scale;

  /* ---- appended in 0.2 ---- */

  /* Paged KV (see block_table): element stride between pages of each pool,
   * the block table's width (entries per sequence), and the pages in each pool. */
  int64_t k_stride_page;
  int64_t v_stride_page;
  int32_t max_pages;
  int32_t num_pages;

  /* fp8 KV: per-KV-head scales (device, f32[H_kv]); NULL = per tensor. */
  const float* k_scales;
  const float* v_scales;

  /* StreamingLLM sink tokens: under a window, keys 0..sink_tokens-1 of each
   * sequence stay attended. Without a window every key is attended already,
   * so it changes nothing. 0 = off. */
  int32_t sink_tokens;
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

/* ---- merging partial results --------------------------------------------- */

/* N partial results of the same queries over disjoint key sets, (y_i, lse_i),
 * combined into the exact result: m = max_i lse_i, w_i = exp(lse_i - m),
 * y = sum_i w_i y_i / sum_i w_i, lse = m + log(sum_i w_i). f32 math, natural
 * log (a base-2 LSE, as FlashInfer's, converts as lse * ln 2). A state with
 * lse = -inf (no keys) weighs nothing; when every state is -inf, y = 0 and
 * lse = -inf. A NaN lse makes that row's y and lse NaN. States are summed in
 * index order, so the bits do not depend on timing. Used for shared-prefix
 * (cascade) decoding and for splitting a long cache across calls or devices.
 *
 * Element (i, b, h, d) of the states lives at
 *   states[i*state_stride_n + b*state_stride_b + h*state_stride_h + d]
 * (strides in elements, D contiguous), lse_i at
 *   lse[i*lse_stride_n + b*lse_stride_b + h*lse_stride_h]. */
typedef struct fd_merge_params {
  size_t struct_size;
  int32_t dtype; /* of states and y: FD_DTYPE_F16, _BF16 or _F32 */
  int32_t num_states;
  int32_t batch_size;
  int32_t num_heads;
  int32_t head_dim; /* 1..FD_FLASH_DECODING_MAX_HEAD_DIM */
  int32_t reserved; /* 0 */
  const void* states;
  int64_t state_stride_n, state_stride_b, state_stride_h;
  const float* lse;
  int64_t lse_stride_n, lse_stride_b, lse_stride_h;
  void* y;
  int64_t y_stride_b, y_stride_h;
  float* lse_out; /* optional, f32 [B, H] */
  int64_t lse_out_stride_b, lse_out_stride_h;
  void* stream;
} fd_merge_params;

#ifndef __cplusplus
#define FD_MERGE_PARAMS_INIT {.struct_size = sizeof(fd_merge_params)}
#endif

/* Host-only check of a merge, as fd_merge_states would make it. */
FD_API int fd_merge_states_check(const fd_merge_params* params);

/* Runs the merge on params->stream (asynchronous, no allocation). */
FD_API int fd_merge_states(const fd_merge_params* params);

/* ---- the kernel table ---------------------------------------------------- */

/* One compiled kernel cell: element types x head_dim bucket x KV layout. A
 * problem runs the smallest bucket >= its head_dim with the tail masked.
 * dtype is the type q, k, v and y share for the 16-bit cells; for fp8 cells it
 * is the KV type (q and y are f16 or bf16, chosen per call). */
typedef struct fd_kernel_cell {
  int32_t dtype;          /* fd_dtype */
  int32_t head_dim;       /* bucket: 64, 80, 96, 128, 160, 192, 256 */
  int32_t max_group_per_cta; /* query heads of one KV head that share a CTA */
  const char* name;       /* canonical template expression, static storage */
} fd_kernel_cell;

FD_API int32_t fd_kernel_cell_count(void);

/* FD_STATUS_INVALID_PROBLEM for an index outside [0, count). */
FD_API int fd_kernel_cell_get(int32_t index, fd_kernel_cell* cell);

/* Index of the contiguous 16-bit cell a (dtype, head_dim) problem runs on, in
 * *index. Returns UNSUPPORTED (with a message) when no compiled cell serves it. */
FD_API int fd_kernel_cell_find(int32_t dtype, int32_t head_dim, int32_t* index);

/* Everything about a cell, append-only like fd_decode_params: the caller sets
 * struct_size (FD_KERNEL_CELL_INFO_INIT does) and no byte past it is written. */
typedef struct fd_kernel_cell_info {
  size_t struct_size;
  int32_t q_dtype;   /* f16 or bf16; 0 for fp8 cells, which take either */
  int32_t kv_dtype;  /* the type k and v are stored in */
  int32_t head_dim;  /* bucket */
  int32_t paged;     /* 1: reads page pools through a block table */
  int32_t max_group_per_cta;
  int32_t min_compute_capability; /* major*10 + minor: 80, or 89 for fp8 */
  const char* name;  /* as fd_kernel_cell.name */
} fd_kernel_cell_info;

#ifndef __cplusplus
#define FD_KERNEL_CELL_INFO_INIT {.struct_size = sizeof(fd_kernel_cell_info)}
#endif

FD_API int fd_kernel_cell_info_get(int32_t index, fd_kernel_cell_info* info);

/* Host-only: the index of the cell fd_decode(params) would run, in *index
 * (the problem rules are checked first; pointers are not). */
FD_API int fd_decode_cell(const fd_decode_params* params, int32_t* index);

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
  int32_t cluster_size;    /* always 1 (kept for the layout) */
  int32_t merge_kernel;    /* 1: partials go through the workspace to a merge kernel */
  int32_t ctas;            /* CTAs of the decode kernel's grid */
  int32_t warps_per_cta;
  int32_t ctas_per_sm;     /* at most this many share an SM (0: as many as fit) */
  int32_t vectorized;      /* 1: 16-byte asynchronous copies; 0: element loads */
} fd_launch_plan;

#ifndef __cplusplus
#define FD_LAUNCH_PLAN_INIT {.struct_size = sizeof(fd_launch_plan)}
#endif

FD_API int fd_decode_plan(const fd_decode_params* params, fd_launch_plan* plan);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FLASHDECODING_FLASHDECODING_H_ */
