/*
 * GPU cases of the C ABI test: both dtypes on MHA / GQA / MQA shapes and
 * several layouts against the double-precision reference, outputs poisoned with
 * NaN (0xFFFF) first and checked fully written (and nothing written outside the
 * rows), repeated runs bit-identical, fd_decode equal to the plain run, CUDA-graph
 * capture, refused runs leaving y untouched, and the extension fields the
 * library says it supports.
 *
 * Device memory comes from the CUDA runtime (cuda_runtime_api.h is C-clean);
 * the library carries its own runtime, both work on the device's primary context.
 */
#include "fd_test.h"

#include <flashdecoding/flashdecoding.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(FD_TEST_HAVE_CUDART)

#include <cuda_runtime_api.h>

int fd_test_gpu_device_count(void) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

static int cuda_ok(cudaError_t e, const char* what, const char* file, int line) {
  return fd_test_check(e == cudaSuccess, file, line, "%s: CUDA error %d: %s", what, (int)e,
                       cudaGetErrorString(e));
}
#define CUDA_OK(expr) cuda_ok((expr), #expr, __FILE__, __LINE__)

/* ---- layouts -------------------------------------------------------------- */

enum {
  L_CONTIG,    /* q, y [B, H, D]; k, v [B, H_kv, K, D] (HND) */
  L_NHD_PAD,   /* k, v [B, K, H_kv, D+8]; q, y rows padded, batch gaps */
  L_ODD,       /* odd strides everywhere (rows only 2-byte aligned) */
  L_Y_HBD,     /* y stored [H, B, D], q [H, B, D] too */
  L_BROADCAST, /* q, k, v batch stride 0: every batch reads batch 0 */
  L_KV_SLICE   /* k, v a slice of a bigger cache: K of max_len 2K+3 used, head stride padded */
};

typedef struct gcase {
  int32_t B, H, Hkv, K, D;
  int layout;
  double scale;     /* < 0: 1/sqrt(D) */
  int use_stream;   /* run on a created stream instead of the default one */
  int elem_offset;  /* q, k, v, y start this many elements into their buffers */
} gcase;

typedef struct strides_t {
  int64_t q_sb, q_sh, k_sb, k_sh, k_sk, v_sb, v_sh, v_sk, y_sb, y_sh;
} strides_t;

static void make_strides(const gcase* g, strides_t* s) {
  int64_t B = g->B, H = g->H, Hkv = g->Hkv, K = g->K, D = g->D;
  memset(s, 0, sizeof *s);
  switch (g->layout) {
    case L_NHD_PAD: {
      int64_t P = D + 8;
      s->k_sh = P; s->k_sk = Hkv * P; s->k_sb = K * Hkv * P + 8;
      s->v_sh = P; s->v_sk = Hkv * P; s->v_sb = K * Hkv * P + 16;
      s->q_sh = P; s->q_sb = H * P + 16;
      s->y_sh = P; s->y_sb = H * P + 8;
      break;
    }
    case L_ODD: {
      int64_t P = D + 1;
      s->q_sh = P; s->q_sb = H * P + 3;
      s->k_sk = P; s->k_sh = K * P + 5; s->k_sb = Hkv * s->k_sh + 7;
      s->v_sk = D + 3; s->v_sh = K * (D + 3) + 1; s->v_sb = Hkv * s->v_sh + 1;
      s->y_sh = P; s->y_sb = H * P + 1;
      break;
    }
    case L_Y_HBD:
      s->q_sb = D; s->q_sh = B * D;
      s->k_sk = D; s->k_sh = K * D; s->k_sb = Hkv * K * D;
      s->v_sk = D; s->v_sh = K * D; s->v_sb = Hkv * K * D;
      s->y_sb = D; s->y_sh = B * D;
      break;
    case L_BROADCAST:
      s->q_sb = 0; s->q_sh = D;
      s->k_sk = D; s->k_sh = K * D; s->k_sb = 0;
      s->v_sk = D; s->v_sh = K * D; s->v_sb = 0;
      s->y_sh = D; s->y_sb = H * D;
      break;
    case L_KV_SLICE: {
      int64_t max_len = 2 * K + 3;
      s->k_sk = D; s->k_sh = max_len * D + 8; s->k_sb = Hkv * s->k_sh;
      s->v_sk = D; s->v_sh = max_len * D + 8; s->v_sb = Hkv * s->v_sh;
      s->q_sh = D; s->q_sb = H * D;
      s->y_sh = D; s->y_sb = H * D;
      break;
    }
    default:
      s->q_sh = D; s->q_sb = H * D;
      s->k_sk = D; s->k_sh = K * D; s->k_sb = Hkv * K * D;
      s->v_sk = D; s->v_sh = K * D; s->v_sb = Hkv * K * D;
      s->y_sh = D; s->y_sb = H * D;
      break;
  }
}

/* Elements from the first to one past the last of a strided tensor. */
static int64_t extent(int64_t B, int64_t H, int64_t K, int64_t D, int64_t sb, int64_t sh,
                      int64_t sk) {
  return (B - 1) * sb + (H - 1) * sh + (K > 0 ? (K - 1) * sk : 0) + D;
}

/* ---- tensors -------------------------------------------------------------------- */

typedef struct tensor {
  int64_t n;       /* elements, offset included */
  uint16_t* h;     /* host bits */
  double* d;       /* host values (exactly the rounded bits), NULL for outputs */
  void* base;      /* device allocation */
  void* dev;       /* first element (base + offset) */
} tensor;

static uint16_t to_bits(int32_t dtype, double x) {
  return dtype == FD_DTYPE_BF16 ? fd_test_f32_to_bf16((float)x) : fd_test_f32_to_f16((float)x);
}

static double from_bits(int32_t dtype, uint16_t b) {
  return dtype == FD_DTYPE_BF16 ? (double)fd_test_bf16_to_f32(b) : (double)fd_test_f16_to_f32(b);
}

static void tensor_free(tensor* t) {
  free(t->h);
  free(t->d);
  if (t->base) cudaFree(t->base);
  memset(t, 0, sizeof *t);
}

/* n elements starting `offset` elements into a fresh device buffer. With rng,
 * filled with amp * uniform values (rounded to dtype) and uploaded. */
static int tensor_make(tensor* t, int64_t n, int offset, int32_t dtype, uint64_t* rng, double amp) {
  int64_t i;
  memset(t, 0, sizeof *t);
  if (n < 1) n = 1;
  t->n = n + offset;
  t->h = (uint16_t*)malloc((size_t)t->n * sizeof(uint16_t));
  if (rng) t->d = (double*)malloc((size_t)t->n * sizeof(double));
  if (!CHECK(t->h != NULL && (rng == NULL || t->d != NULL), "host allocation of %ld elements",
             (long)t->n)) {
    tensor_free(t);
    return 0;
  }
  if (!CUDA_OK(cudaMalloc(&t->base, (size_t)t->n * sizeof(uint16_t) + 64))) {
    t->base = NULL;
    tensor_free(t);
    return 0;
  }
  t->dev = (char*)t->base + (size_t)offset * sizeof(uint16_t);
  if (rng) {
    for (i = 0; i < t->n; ++i) {
      t->h[i] = to_bits(dtype, amp * fd_test_uniform(rng));
      t->d[i] = from_bits(dtype, t->h[i]);
    }
    if (!CUDA_OK(cudaMemcpy(t->base, t->h, (size_t)t->n * sizeof(uint16_t),
                            cudaMemcpyHostToDevice))) {
      tensor_free(t);
      return 0;
    }
  }
  return 1;
}

/* ---- running ------------------------------------------------------------------- */

static int run_plain(int32_t dtype, const tensor* q, const tensor* k, const tensor* v, tensor* y,
                     void* ws, size_t ws_bytes, const gcase* g, const strides_t* s, float scale,
                     void* stream) {
  if (dtype == FD_DTYPE_BF16) {
    return fd_flash_decoding_bf16_run(q->dev, k->dev, v->dev, y->dev, ws, ws_bytes, g->B, g->H,
                                      g->Hkv, g->K, g->D, s->q_sb, s->q_sh, s->k_sb, s->k_sh,
                                      s->k_sk, s->v_sb, s->v_sh, s->v_sk, s->y_sb, s->y_sh, scale,
                                      stream);
  }
  return fd_flash_decoding_f16_run(q->dev, k->dev, v->dev, y->dev, ws, ws_bytes, g->B, g->H,
                                   g->Hkv, g->K, g->D, s->q_sb, s->q_sh, s->k_sb, s->k_sh,
                                   s->k_sk, s->v_sb, s->v_sh, s->v_sk, s->y_sb, s->y_sh, scale,
                                   stream);
}

static void fill_params(fd_decode_params* p, int32_t dtype, const tensor* q, const tensor* k,
                        const tensor* v, tensor* y, void* ws, size_t ws_bytes, const gcase* g,
                        const strides_t* s, float scale, void* stream) {
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->dtype = dtype;
  p->q = q->dev; p->k = k->dev; p->v = v->dev; p->y = y->dev;
  p->workspace = ws; p->workspace_bytes = ws_bytes;
  p->batch_size = g->B; p->num_heads = g->H; p->num_kv_heads = g->Hkv;
  p->k_len = g->K; p->head_dim = g->D; p->scale = scale;
  p->q_stride_b = s->q_sb; p->q_stride_h = s->q_sh;
  p->k_stride_b = s->k_sb; p->k_stride_h = s->k_sh; p->k_stride_k = s->k_sk;
  p->v_stride_b = s->v_sb; p->v_stride_h = s->v_sh; p->v_stride_k = s->v_sk;
  p->y_stride_b = s->y_sb; p->y_stride_h = s->y_sh;
  p->stream = stream;
}

static int sync_stream(void* stream, const char* what) {
  cudaError_t e = stream ? cudaStreamSynchronize((cudaStream_t)stream) : cudaDeviceSynchronize();
  return CHECK(e == cudaSuccess, "%s: synchronize: %s", what, cudaGetErrorString(e));
}

static int poison(tensor* y, void* stream) {
  return CUDA_OK(cudaMemsetAsync(y->base, 0xFF, (size_t)y->n * sizeof(uint16_t),
                                 (cudaStream_t)stream));
}

static int download(tensor* y, uint16_t* dst, void* stream) {
  if (!CUDA_OK(cudaMemcpyAsync(dst, y->base, (size_t)y->n * sizeof(uint16_t),
                               cudaMemcpyDeviceToHost, (cudaStream_t)stream))) {
    return 0;
  }
  return sync_stream(stream, "download");
}

/* Compares y (bits, over the whole buffer) with the reference: rows written and
 * finite, everything else still 0xFFFF, relative L2 error within tol. */
static void compare(const char* what, int32_t dtype, const uint16_t* yb, const double* yref,
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

static unsigned char* row_mask(const gcase* g, const strides_t* s, int64_t n, int offset) {
  unsigned char* m = (unsigned char*)calloc((size_t)n, 1);
  int64_t b, h, d;
  if (m == NULL) return NULL;
  for (b = 0; b < g->B; ++b)
    for (h = 0; h < g->H; ++h)
      for (d = 0; d < g->D; ++d) m[offset + b * s->y_sb + h * s->y_sh + d] = 1;
  return m;
}

static uint64_t g_seed = 1;

static void gpu_case(int32_t dtype, const gcase* g) {
  strides_t s;
  tensor q, k, v, y;
  void* ws = NULL;
  size_t ws_bytes;
  cudaStream_t stream = NULL;
  uint16_t *y1 = NULL, *y2 = NULL;
  double* yref = NULL;
  unsigned char* mask = NULL;
  float scale;
  char what[200];
  int st;
  uint64_t rng = 0x1234567ull + 7919ull * (g_seed++);
  int64_t nq, nk, nv, ny;
  double tol = dtype == FD_DTYPE_BF16 ? 1e-2 : 2e-3;
  fd_ref_problem rp;
  const char* lname[] = {"contig", "nhd-pad", "odd", "y-hbd", "broadcast", "kv-slice"};

  snprintf(what, sizeof what, "[%s] B=%d Hq=%d Hkv=%d K=%d D=%d %s%s%s",
           dtype == FD_DTYPE_BF16 ? "bf16" : "f16", (int)g->B, (int)g->H, (int)g->Hkv, (int)g->K,
           (int)g->D, lname[g->layout], g->use_stream ? " stream" : "",
           g->elem_offset ? " +offset" : "");
  make_strides(g, &s);
  scale = g->scale < 0 ? (float)(1.0 / sqrt((double)g->D)) : (float)g->scale;
  nq = extent(g->B, g->H, 1, g->D, s.q_sb, s.q_sh, 0);
  nk = extent(g->B, g->Hkv, g->K, g->D, s.k_sb, s.k_sh, s.k_sk);
  nv = extent(g->B, g->Hkv, g->K, g->D, s.v_sb, s.v_sh, s.v_sk);
  ny = extent(g->B, g->H, 1, g->D, s.y_sb, s.y_sh, 0);
  memset(&q, 0, sizeof q); memset(&k, 0, sizeof k); memset(&v, 0, sizeof v);
  memset(&y, 0, sizeof y);
  if (!tensor_make(&q, nq, g->elem_offset, dtype, &rng, 2.0) ||
      !tensor_make(&k, nk, g->elem_offset, dtype, &rng, 1.0) ||
      !tensor_make(&v, nv, g->elem_offset, dtype, &rng, 1.0) ||
      !tensor_make(&y, ny, g->elem_offset, dtype, NULL, 0.0)) {
    goto done;
  }
  ws_bytes = fd_flash_decoding_workspace_size(g->B, g->H, g->Hkv, g->K, g->D);
  if (g->K == 0) CHECK(ws_bytes == 0, "%s: workspace %lu for k_len=0", what, (unsigned long)ws_bytes);
  if (ws_bytes > 0) {
    if (!CUDA_OK(cudaMalloc(&ws, ws_bytes))) { ws = NULL; goto done; }
    if (!CUDA_OK(cudaMemset(ws, 0xFF, ws_bytes))) goto done;
  }
  if (g->elem_offset) {
    /* Pointers only 2-byte aligned: the library may refuse them (INVALID_POINTER,
     * "misalignment for the loads you use"); what it accepts must be right. */
    st = fd_flash_decoding_check(dtype, q.dev, k.dev, v.dev, y.dev, ws, ws_bytes, g->B, g->H,
                                 g->Hkv, g->K, g->D, s.q_sb, s.q_sh, s.k_sb, s.k_sh, s.k_sk,
                                 s.v_sb, s.v_sh, s.v_sk, s.y_sb, s.y_sh, scale);
    if (st != FD_STATUS_SUCCESS) {
      CHECK(st == FD_STATUS_INVALID_POINTER, "%s: 2-byte aligned pointers refused with %d: %s",
            what, st, fd_last_error_message());
      printf("  %s: refused (INVALID_POINTER): %s\n", what, fd_last_error_message());
      goto done;
    }
  }
  if (g->use_stream && !CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking))) {
    stream = NULL;
    goto done;
  }
  y1 = (uint16_t*)malloc((size_t)y.n * sizeof(uint16_t));
  y2 = (uint16_t*)malloc((size_t)y.n * sizeof(uint16_t));
  yref = (double*)calloc((size_t)y.n, sizeof(double));
  mask = row_mask(g, &s, y.n, g->elem_offset);
  if (!CHECK(y1 && y2 && yref && mask, "%s: host allocation", what)) goto done;

  rp.batch_size = g->B; rp.num_heads = g->H; rp.num_kv_heads = g->Hkv; rp.k_len = g->K;
  rp.head_dim = g->D;
  rp.q_stride_b = s.q_sb; rp.q_stride_h = s.q_sh;
  rp.k_stride_b = s.k_sb; rp.k_stride_h = s.k_sh; rp.k_stride_k = s.k_sk;
  rp.v_stride_b = s.v_sb; rp.v_stride_h = s.v_sh; rp.v_stride_k = s.v_sk;
  rp.y_stride_b = s.y_sb; rp.y_stride_h = s.y_sh;
  rp.scale = (double)scale;
  fd_reference_decode(&rp, q.d + g->elem_offset, k.d + g->elem_offset, v.d + g->elem_offset,
                      NULL, yref + g->elem_offset, NULL, 0, 0);

  /* The plan agrees with the kernel table. */
  {
    fd_decode_params p;
    fd_launch_plan plan;
    int32_t idx = -1;
    fill_params(&p, dtype, &q, &k, &v, &y, ws, ws_bytes, g, &s, scale, stream);
    memset(&plan, 0, sizeof plan);
    plan.struct_size = sizeof plan;
    st = fd_decode_plan(&p, &plan);
    if (CHECK(st == FD_STATUS_SUCCESS, "%s: fd_decode_plan = %d: %s", what, st,
              fd_last_error_message())) {
      fd_kernel_cell_find(dtype, g->D, &idx);
      CHECK(plan.cell_index == idx, "%s: plan cell %d, fd_kernel_cell_find %d", what,
            (int)plan.cell_index, (int)idx);
      CHECK(plan.num_splits >= 1 && plan.heads_per_cta >= 1 && plan.num_sms > 0 &&
                plan.device_cc >= 50,
            "%s: implausible plan splits=%d heads_per_cta=%d sms=%d cc=%d", what,
            (int)plan.num_splits, (int)plan.heads_per_cta, (int)plan.num_sms,
            (int)plan.device_cc);
      if (g->K > 0) {
        CHECK(plan.chunk_len >= 1 &&
                  (int64_t)plan.num_splits * plan.chunk_len >= (int64_t)g->K,
              "%s: plan splits=%d x chunk=%d does not cover K=%d", what, (int)plan.num_splits,
              (int)plan.chunk_len, (int)g->K);
      }
      if (plan.num_splits > 1) {
        CHECK(ws_bytes > 0, "%s: plan splits %d ways but the workspace size is 0", what,
              (int)plan.num_splits);
      }
    }
  }

  /* Run 1. */
  if (!poison(&y, stream)) goto done;
  st = run_plain(dtype, &q, &k, &v, &y, ws, ws_bytes, g, &s, scale, stream);
  if (!CHECK(st == FD_STATUS_SUCCESS, "%s: run = %d (%s)", what, st, fd_last_error_message())) {
    goto done;
  }
  if (!download(&y, y1, stream)) goto done;
  compare(what, dtype, y1, yref, mask, y.n, tol);

  /* Run 2: same bits. */
  if (!poison(&y, stream)) goto done;
  st = run_plain(dtype, &q, &k, &v, &y, ws, ws_bytes, g, &s, scale, stream);
  CHECK(st == FD_STATUS_SUCCESS, "%s: second run = %d", what, st);
  if (!download(&y, y2, stream)) goto done;
  CHECK(memcmp(y1, y2, (size_t)y.n * sizeof(uint16_t)) == 0, "%s: repeated run not bit-identical",
        what);

  /* fd_decode with the same call: same bits. */
  {
    fd_decode_params p;
    fill_params(&p, dtype, &q, &k, &v, &y, ws, ws_bytes, g, &s, scale, stream);
    if (!poison(&y, stream)) goto done;
    st = fd_decode(&p);
    CHECK(st == FD_STATUS_SUCCESS, "%s: fd_decode = %d (%s)", what, st, fd_last_error_message());
    if (!download(&y, y2, stream)) goto done;
    CHECK(memcmp(y1, y2, (size_t)y.n * sizeof(uint16_t)) == 0,
          "%s: fd_decode differs from the plain run", what);
  }
done:
  if (stream) cudaStreamDestroy(stream);
  if (ws) cudaFree(ws);
  tensor_free(&q); tensor_free(&k); tensor_free(&v); tensor_free(&y);
  free(y1); free(y2); free(yref); free(mask);
}

/* A run captured in a CUDA graph and replayed gives the same bits. */
static void gpu_graph_case(int32_t dtype) {
  gcase g = {1, 32, 8, 4096, 128, L_CONTIG, -1.0, 1, 0};
  strides_t s;
  tensor q, k, v, y;
  void* ws = NULL;
  size_t ws_bytes;
  cudaStream_t stream = NULL;
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  uint16_t *y1 = NULL, *y2 = NULL;
  uint64_t rng = 99;
  float scale = (float)(1.0 / sqrt(128.0));
  int st;
  const char* what = dtype == FD_DTYPE_BF16 ? "[bf16] graph capture" : "[f16] graph capture";
  make_strides(&g, &s);
  memset(&q, 0, sizeof q); memset(&k, 0, sizeof k); memset(&v, 0, sizeof v);
  memset(&y, 0, sizeof y);
  if (!tensor_make(&q, extent(1, 32, 1, 128, s.q_sb, s.q_sh, 0), 0, dtype, &rng, 2.0) ||
      !tensor_make(&k, extent(1, 8, 4096, 128, s.k_sb, s.k_sh, s.k_sk), 0, dtype, &rng, 1.0) ||
      !tensor_make(&v, extent(1, 8, 4096, 128, s.v_sb, s.v_sh, s.v_sk), 0, dtype, &rng, 1.0) ||
      !tensor_make(&y, extent(1, 32, 1, 128, s.y_sb, s.y_sh, 0), 0, dtype, NULL, 0.0)) {
    goto done;
  }
  ws_bytes = fd_flash_decoding_workspace_size(1, 32, 8, 4096, 128);
  if (ws_bytes && !CUDA_OK(cudaMalloc(&ws, ws_bytes))) { ws = NULL; goto done; }
  if (!CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking))) { stream = NULL; goto done; }
  y1 = (uint16_t*)malloc((size_t)y.n * sizeof(uint16_t));
  y2 = (uint16_t*)malloc((size_t)y.n * sizeof(uint16_t));
  if (!CHECK(y1 && y2, "host allocation")) goto done;
  if (!poison(&y, stream)) goto done;
  st = run_plain(dtype, &q, &k, &v, &y, ws, ws_bytes, &g, &s, scale, stream);
  if (!CHECK(st == FD_STATUS_SUCCESS, "%s: eager run = %d", what, st)) goto done;
  if (!download(&y, y1, stream)) goto done;
  if (!poison(&y, stream) || !sync_stream(stream, what)) goto done;
  if (!CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal))) goto done;
  st = run_plain(dtype, &q, &k, &v, &y, ws, ws_bytes, &g, &s, scale, stream);
  {
    cudaError_t e = cudaStreamEndCapture(stream, &graph);
    CHECK(st == FD_STATUS_SUCCESS, "%s: run under capture = %d (%s)", what, st,
          fd_last_error_message());
    if (!CHECK(e == cudaSuccess && graph != NULL, "%s: end capture: %s", what,
               cudaGetErrorString(e))) {
      graph = NULL;
      goto done;
    }
  }
  if (st != FD_STATUS_SUCCESS) goto done;
  if (!CUDA_OK(cudaGraphInstantiate(&exec, graph, 0))) { exec = NULL; goto done; }
  if (!CUDA_OK(cudaGraphLaunch(exec, stream))) goto done;
  if (!download(&y, y2, stream)) goto done;
  CHECK(memcmp(y1, y2, (size_t)y.n * sizeof(uint16_t)) == 0,
        "%s: graph replay differs from the eager run", what);
done:
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  if (stream) cudaStreamDestroy(stream);
  if (ws) cudaFree(ws);
  tensor_free(&q); tensor_free(&k); tensor_free(&v); tensor_free(&y);
  free(y1); free(y2);
}

/* Refused runs on real buffers write nothing: y (and q, for y == q) unchanged. */
static void gpu_refusals_leave_y(int32_t dtype) {
  gcase g = {1, 32, 8, 4096, 128, L_CONTIG, -1.0, 0, 0};
  strides_t s;
  tensor q, k, v, y;
  void* ws = NULL;
  size_t need;
  uint64_t rng = 4242;
  float scale = 0.125f;
  uint16_t* back = NULL;
  int st;
  const char* tag = dtype == FD_DTYPE_BF16 ? "bf16" : "f16";
  make_strides(&g, &s);
  memset(&q, 0, sizeof q); memset(&k, 0, sizeof k); memset(&v, 0, sizeof v);
  memset(&y, 0, sizeof y);
  if (!tensor_make(&q, extent(1, 32, 1, 128, s.q_sb, s.q_sh, 0), 0, dtype, &rng, 2.0) ||
      !tensor_make(&k, extent(1, 8, 4096, 128, s.k_sb, s.k_sh, s.k_sk), 0, dtype, &rng, 1.0) ||
      !tensor_make(&v, extent(1, 8, 4096, 128, s.v_sb, s.v_sh, s.v_sk), 0, dtype, &rng, 1.0) ||
      !tensor_make(&y, extent(1, 32, 1, 128, s.y_sb, s.y_sh, 0), 0, dtype, &rng, 1.0)) {
    goto done;
  }
  need = fd_flash_decoding_workspace_size(1, 32, 8, 4096, 128);
  if (!CHECK(need > 0, "[%s] split problem needs no workspace", tag)) goto done;
  if (!CUDA_OK(cudaMalloc(&ws, need))) { ws = NULL; goto done; }
  back = (uint16_t*)malloc((size_t)y.n * sizeof(uint16_t));
  if (!CHECK(back != NULL, "host allocation")) goto done;

  st = run_plain(dtype, &q, &k, &v, &y, ws, need - 1, &g, &s, scale, NULL);
  CHECK(st == FD_STATUS_WORKSPACE_TOO_SMALL, "[%s] short workspace on device = %d", tag, st);
  {
    gcase bad = g;
    bad.Hkv = 5;
    st = run_plain(dtype, &q, &k, &v, &y, ws, need, &bad, &s, scale, NULL);
    CHECK(st == FD_STATUS_INVALID_PROBLEM, "[%s] num_kv_heads=5 on device = %d", tag, st);
    bad = g;
    bad.K = -1;
    st = run_plain(dtype, &q, &k, &v, &y, ws, need, &bad, &s, scale, NULL);
    CHECK(st == FD_STATUS_INVALID_PROBLEM, "[%s] k_len=-1 on device = %d", tag, st);
  }
  {
    strides_t bs = s;
    bs.y_sh = 1;
    st = run_plain(dtype, &q, &k, &v, &y, ws, need, &g, &bs, scale, NULL);
    CHECK(st == FD_STATUS_INVALID_PROBLEM, "[%s] y_stride_h=1 on device = %d", tag, st);
  }
  st = run_plain(dtype, &q, &k, &v, &y, ws, need, &g, &s, (float)NAN, NULL);
  CHECK(st == FD_STATUS_INVALID_PROBLEM, "[%s] NaN scale on device = %d", tag, st);
  {
    tensor alias = q; /* y == q */
    st = run_plain(dtype, &q, &k, &v, &alias, ws, need, &g, &s, scale, NULL);
    CHECK(st == FD_STATUS_INVALID_POINTER, "[%s] y == q on device = %d", tag, st);
  }
  if (!CUDA_OK(cudaDeviceSynchronize())) goto done;
  if (CUDA_OK(cudaMemcpy(back, y.base, (size_t)y.n * sizeof(uint16_t), cudaMemcpyDeviceToHost))) {
    CHECK(memcmp(back, y.h, (size_t)y.n * sizeof(uint16_t)) == 0,
          "[%s] a refused run changed y", tag);
  }
  free(back);
  back = (uint16_t*)malloc((size_t)q.n * sizeof(uint16_t));
  if (back && CUDA_OK(cudaMemcpy(back, q.base, (size_t)q.n * sizeof(uint16_t),
                                 cudaMemcpyDeviceToHost))) {
    CHECK(memcmp(back, q.h, (size_t)q.n * sizeof(uint16_t)) == 0,
          "[%s] a refused run (y == q) changed q", tag);
  }
done:
  free(back);
  if (ws) cudaFree(ws);
  tensor_free(&q); tensor_free(&k); tensor_free(&v); tensor_free(&y);
}

/* Extension fields the library accepts must be honoured ("nothing is silently
 * ignored"): each one alone (and seq_lens with a window) against the reference,
 * LSE output alongside where its value does not depend on an unstated
 * convention. A field the library refuses must be refused as UNSUPPORTED. */
enum { X_LSE, X_SEQ_LENS, X_WINDOW, X_WINDOW0, X_SEQ_WINDOW, X_SINKS, X_ALIBI, X_SOFTCAP, X_COUNT };

static void gpu_extensions(int32_t dtype, int32_t K) {
  gcase g = {3, 8, 2, 0, 64, L_CONTIG, -1.0, 0, 0};
  strides_t s;
  tensor q, k, v, y;
  void* ws = NULL;
  size_t ws_bytes;
  float* dlse = NULL;
  int32_t* dlens = NULL;
  float* dsinks = NULL;
  float* dalibi = NULL;
  int32_t lens[3];
  float sinks_f[8], alibi_f[8];
  double sinks_d[8], alibi_d[8];
  float lse_h[24];
  double lse_ref[24];
  uint16_t* yb = NULL;
  double* yref = NULL;
  unsigned char* mask = NULL;
  uint64_t rng = 777;
  float scale = 0.125f;
  fd_decode_params p;
  fd_ref_problem rp;
  int st, x, i;
  const char* tag = dtype == FD_DTYPE_BF16 ? "bf16" : "f16";
  const char* xname[X_COUNT] = {"lse", "seq_lens", "window_size=38", "window_size=1",
                                "seq_lens+window_size=21", "sinks", "alibi_slopes",
                                "logits_soft_cap"};
  double tol = dtype == FD_DTYPE_BF16 ? 1e-2 : 2e-3;
  g.K = K;
  lens[0] = K; lens[1] = 0; lens[2] = K > 0 ? K / 2 + 1 : 0; /* each in [0, k_len] */
  for (i = 0; i < 8; ++i) {
    sinks_f[i] = 0.75f * (float)i - 2.0f;
    alibi_f[i] = (float)pow(2.0, -8.0 * (i + 1) / 8.0) * 4.0f;
    sinks_d[i] = (double)sinks_f[i];
    alibi_d[i] = (double)alibi_f[i];
  }
  make_strides(&g, &s);
  memset(&q, 0, sizeof q); memset(&k, 0, sizeof k); memset(&v, 0, sizeof v);
  memset(&y, 0, sizeof y);
  if (!tensor_make(&q, extent(3, 8, 1, 64, s.q_sb, s.q_sh, 0), 0, dtype, &rng, 2.0) ||
      !tensor_make(&k, extent(3, 2, K, 64, s.k_sb, s.k_sh, s.k_sk), 0, dtype, &rng, 1.0) ||
      !tensor_make(&v, extent(3, 2, K, 64, s.v_sb, s.v_sh, s.v_sk), 0, dtype, &rng, 1.0) ||
      !tensor_make(&y, extent(3, 8, 1, 64, s.y_sb, s.y_sh, 0), 0, dtype, NULL, 0.0)) {
    goto done;
  }
  ws_bytes = fd_flash_decoding_workspace_size(3, 8, 2, K, 64);
  if (ws_bytes && !CUDA_OK(cudaMalloc(&ws, ws_bytes))) { ws = NULL; goto done; }
  if (!CUDA_OK(cudaMalloc((void**)&dlse, sizeof lse_h))) { dlse = NULL; goto done; }
  if (!CUDA_OK(cudaMalloc((void**)&dlens, sizeof lens))) { dlens = NULL; goto done; }
  if (!CUDA_OK(cudaMalloc((void**)&dsinks, sizeof sinks_f))) { dsinks = NULL; goto done; }
  if (!CUDA_OK(cudaMalloc((void**)&dalibi, sizeof alibi_f))) { dalibi = NULL; goto done; }
  if (!CUDA_OK(cudaMemcpy(dlens, lens, sizeof lens, cudaMemcpyHostToDevice)) ||
      !CUDA_OK(cudaMemcpy(dsinks, sinks_f, sizeof sinks_f, cudaMemcpyHostToDevice)) ||
      !CUDA_OK(cudaMemcpy(dalibi, alibi_f, sizeof alibi_f, cudaMemcpyHostToDevice))) {
    goto done;
  }
  yb = (uint16_t*)malloc((size_t)y.n * sizeof(uint16_t));
  yref = (double*)calloc((size_t)y.n, sizeof(double));
  mask = row_mask(&g, &s, y.n, 0);
  if (!CHECK(yb && yref && mask, "host allocation")) goto done;
  rp.batch_size = 3; rp.num_heads = 8; rp.num_kv_heads = 2; rp.k_len = K; rp.head_dim = 64;
  rp.q_stride_b = s.q_sb; rp.q_stride_h = s.q_sh;
  rp.k_stride_b = s.k_sb; rp.k_stride_h = s.k_sh; rp.k_stride_k = s.k_sk;
  rp.v_stride_b = s.v_sb; rp.v_stride_h = s.v_sh; rp.v_stride_k = s.v_sk;
  rp.y_stride_b = s.y_sb; rp.y_stride_h = s.y_sh;

  for (x = 0; x < X_COUNT; ++x) {
    fd_ref_ext ext;
    int lse_on, lse_cmp;
    char what[128];
    float sc = x == X_SOFTCAP ? 0.5f : scale;
    snprintf(what, sizeof what, "[%s] K=%d extension %s", tag, (int)K, xname[x]);
    memset(&ext, 0, sizeof ext);
    fill_params(&p, dtype, &q, &k, &v, &y, ws, ws_bytes, &g, &s, sc, NULL);
    p.lse = dlse; p.lse_stride_b = 8; p.lse_stride_h = 1;
    lse_on = fd_decode_check(&p) == FD_STATUS_SUCCESS;
    if (!lse_on) {
      p.lse = NULL; p.lse_stride_b = p.lse_stride_h = 0;
      if (x == X_LSE) {
        printf("  %s: unsupported, GPU check skipped\n", what);
        continue;
      }
    }
    switch (x) {
      case X_SEQ_LENS: p.seq_lens = dlens; ext.seq_lens = lens; break;
      case X_WINDOW: p.window_size = 38; ext.window_size = 38; break;
      case X_WINDOW0: p.window_size = 1; ext.window_size = 1; break;
      case X_SEQ_WINDOW:
        p.seq_lens = dlens; ext.seq_lens = lens; p.window_size = 21; ext.window_size = 21;
        break;
      case X_SINKS: p.sinks = dsinks; ext.sinks = sinks_d; break;
      case X_ALIBI: p.alibi_slopes = dalibi; ext.alibi = alibi_d; break;
      case X_SOFTCAP: p.logits_soft_cap = 2.0f; ext.soft_cap = 2.0; break;
      default: break;
    }
    /* The LSE's value with a sink or ALiBi depends on conventions the header
     * leaves open (sink in the denominator? bias relative to which key?). */
    lse_cmp = lse_on && x != X_SINKS && x != X_ALIBI;
    st = fd_decode_check(&p);
    if (st != FD_STATUS_SUCCESS) {
      CHECK(st == FD_STATUS_UNSUPPORTED, "%s: refused with %d (%s)", what, st,
            fd_last_error_message());
      printf("  %s: unsupported, GPU check skipped\n", what);
      continue;
    }
    rp.scale = (double)sc;
    for (i = 0; i < (int)y.n; ++i) yref[i] = 0.0;
    fd_reference_decode(&rp, q.d, k.d, v.d, &ext, yref, lse_ref, 8, 1);
    if (!poison(&y, NULL)) goto done;
    if (!CUDA_OK(cudaMemset(dlse, 0xFF, sizeof lse_h))) goto done;
    st = fd_decode(&p);
    if (!CHECK(st == FD_STATUS_SUCCESS, "%s: fd_decode = %d (%s)", what, st,
               fd_last_error_message())) {
      continue;
    }
    if (!download(&y, yb, NULL)) goto done;
    compare(what, dtype, yb, yref, mask, y.n, tol);
    if (lse_cmp) {
      if (!CUDA_OK(cudaMemcpy(lse_h, dlse, sizeof lse_h, cudaMemcpyDeviceToHost))) goto done;
      for (i = 0; i < 24; ++i) {
        if (isinf(lse_ref[i])) {
          CHECK(isinf(lse_h[i]) && lse_h[i] < 0, "%s: lse[%d] = %g, expected -inf", what, i,
                (double)lse_h[i]);
        } else {
          CHECK(fabs((double)lse_h[i] - lse_ref[i]) <= 1e-3 * (1.0 + fabs(lse_ref[i])),
                "%s: lse[%d] = %.6f, reference %.6f", what, i, (double)lse_h[i], lse_ref[i]);
        }
      }
    }
  }
done:
  if (ws) cudaFree(ws);
  if (dlse) cudaFree(dlse);
  if (dlens) cudaFree(dlens);
  if (dsinks) cudaFree(dsinks);
  if (dalibi) cudaFree(dalibi);
  tensor_free(&q); tensor_free(&k); tensor_free(&v); tensor_free(&y);
  free(yb); free(yref); free(mask);
}

void fd_test_gpu_cases(void) {
  int32_t dts[] = {FD_DTYPE_F16, FD_DTYPE_BF16};
  int32_t heads[][2] = {{8, 8}, {32, 8}, {8, 1}};
  int32_t batches[] = {2, 1, 3};
  int32_t klens[] = {0, 1, 257, 4096};
  int32_t dims[] = {64, 72, 128};
  gcase extra[] = {
    {1, 32, 8, 257, 72, L_NHD_PAD, -1.0, 1, 0},
    {7, 8, 8, 257, 7, L_ODD, -1.0, 0, 0},
    {3, 28, 4, 1000, 80, L_ODD, -1.0, 1, 0},
    {3, 8, 1, 1000, 1, L_CONTIG, -1.0, 0, 0},
    {3, 32, 8, 255, 96, L_Y_HBD, -1.0, 0, 0},
    {4, 8, 2, 256, 64, L_BROADCAST, -1.0, 0, 0},
    {2, 8, 2, 700, 128, L_KV_SLICE, -1.0, 1, 0},
    {2, 8, 8, 300, 64, L_CONTIG, 0.0, 0, 0},     /* scale 0: mean of v */
    {1, 8, 8, 300, 64, L_CONTIG, 4.0, 0, 0},     /* peaked softmax */
    {1, 32, 8, 33000, 128, L_CONTIG, -1.0, 1, 0},
    {8, 28, 4, 7, 128, L_CONTIG, -1.0, 0, 0},
    {2, 8, 2, 257, 64, L_CONTIG, -1.0, 0, 1},    /* 2-byte aligned pointers */
  };
  size_t t, hh, kk, dd, e;
  for (t = 0; t < 2; ++t) {
    for (hh = 0; hh < 3; ++hh)
      for (kk = 0; kk < 4; ++kk)
        for (dd = 0; dd < 3; ++dd) {
          gcase g;
          memset(&g, 0, sizeof g);
          g.B = batches[hh]; g.H = heads[hh][0]; g.Hkv = heads[hh][1];
          g.K = klens[kk]; g.D = dims[dd]; g.layout = L_CONTIG; g.scale = -1.0;
          g.use_stream = (int)((kk + dd) & 1);
          gpu_case(dts[t], &g);
        }
    for (e = 0; e < sizeof extra / sizeof extra[0]; ++e) gpu_case(dts[t], &extra[e]);
    gpu_graph_case(dts[t]);
    gpu_refusals_leave_y(dts[t]);
    gpu_extensions(dts[t], 300);
    gpu_extensions(dts[t], 5000); /* split: the merge must apply them too */
    gpu_extensions(dts[t], 0);
  }
}

#else /* !FD_TEST_HAVE_CUDART */

int fd_test_gpu_device_count(void) { return -1; }

void fd_test_gpu_cases(void) {
  CHECK(0, "a GPU is present but the test was built without the CUDA runtime");
}

#endif
