/*
 * GPU cases of the C ABI test, contiguous caches: both dtypes on MHA / GQA /
 * MQA shapes, head_dim 1..256 and several layouts against the double-precision
 * reference, outputs poisoned with NaN (0xFFFF) first and checked fully written
 * (and nothing written outside the rows), repeated runs bit-identical,
 * fd_decode equal to the plain run, CUDA-graph capture, refused runs leaving y
 * and lse untouched, every documented extension field against the reference
 * (a refusal of one is a failure), and batch invariance. Paged caches are in
 * gpu_paged.c, fp8 caches in gpu_fp8.c, merge_states in gpu_merge.c.
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

#include "gpu_support.h"

int fd_test_gpu_device_count(void) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

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

static unsigned char* row_mask(const gcase* g, const strides_t* s, int64_t n, int offset) {
  return rows_mask(g->B, g->H, g->D, s->y_sb, s->y_sh, n, offset);
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
  double tol = y_tolerance(dtype);
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
        CHECK(ws_bytes > 0 && plan.merge_kernel == 1,
              "%s: plan splits %d ways but the workspace size is %lu, merge_kernel %d", what,
              (int)plan.num_splits, (unsigned long)ws_bytes, (int)plan.merge_kernel);
      }
      CHECK(plan.cluster_size == 1 && (plan.warps_per_cta == 4 || plan.warps_per_cta == 8) &&
                plan.ctas >= (g->K > 0 ? 1 : 0) && (plan.vectorized == 0 || plan.vectorized == 1) &&
                plan.ctas_per_sm >= 0,
            "%s: plan cluster_size=%d warps_per_cta=%d ctas=%d vectorized=%d ctas_per_sm=%d",
            what, (int)plan.cluster_size, (int)plan.warps_per_cta, (int)plan.ctas,
            (int)plan.vectorized, (int)plan.ctas_per_sm);
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
  if (ws_bytes && !CUDA_OK(cudaMemset(ws, 0xFF, ws_bytes))) goto done;
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

/* Refused runs on real buffers write nothing: y, lse (and q, for y == q)
 * unchanged, through the plain entry points and through fd_decode with each
 * kind of bad extension field. */
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
  {
    /* fd_decode with an lse output, each case one bad field. */
    struct { const char* what; int which; int status; } bad[] = {
      {"sink_tokens=-1", 0, FD_STATUS_INVALID_PROBLEM},
      {"page_size without a block table", 1, FD_STATUS_INVALID_PROBLEM},
      {"kv_dtype=7", 2, FD_STATUS_INVALID_PROBLEM},
      {"k_scale with a 16-bit cache", 3, FD_STATUS_UNSUPPORTED},
      {"head_dim=257", 4, FD_STATUS_UNSUPPORTED},
      {"unknown flag bit", 5, FD_STATUS_UNSUPPORTED},
      {"lse_stride_h=0", 6, FD_STATUS_INVALID_PROBLEM},
      {"workspace one byte short", 7, FD_STATUS_WORKSPACE_TOO_SMALL},
      {"block table with page_size 0", 8, FD_STATUS_INVALID_PROBLEM},
      {"window_size=-1", 9, FD_STATUS_INVALID_PROBLEM},
    };
    float lse_h[32], lse_back[32];
    float* dlse = NULL;
    int32_t* dtable = NULL;
    int32_t table[4] = {0, 1, 2, 3};
    size_t i;
    for (i = 0; i < 32; ++i) lse_h[i] = 1000.0f + (float)i;
    dlse = (float*)device_copy(lse_h, sizeof lse_h);
    dtable = (int32_t*)device_copy(table, sizeof table);
    for (i = 0; dlse && dtable && i < sizeof bad / sizeof bad[0]; ++i) {
      fd_decode_params p;
      fill_params(&p, dtype, &q, &k, &v, &y, ws, need, &g, &s, scale, NULL);
      p.lse = dlse;
      p.lse_stride_b = 32;
      p.lse_stride_h = 1;
      switch (bad[i].which) {
        case 0: p.sink_tokens = -1; p.window_size = 8; break;
        case 1: p.page_size = 16; break;
        case 2: p.kv_dtype = 7; break;
        case 3: p.k_scale = 2.0f; break;
        case 4: p.head_dim = 257; break;
        case 5: p.flags = 0x4u; break;
        case 6: p.lse_stride_h = 0; p.lse_stride_b = 0; break;
        case 7: p.workspace_bytes = need - 1; break;
        case 8: p.block_table = dtable; p.max_pages = 4; p.num_pages = 4; p.k_stride_b = 0;
                p.v_stride_b = 0; break;
        default: p.window_size = -1; break;
      }
      st = fd_decode(&p);
      CHECK(st == bad[i].status, "[%s] fd_decode with %s on device = %d (%s), expected %d", tag,
            bad[i].what, st, fd_last_error_message(), bad[i].status);
    }
    if (dlse && CUDA_OK(cudaDeviceSynchronize()) &&
        CUDA_OK(cudaMemcpy(lse_back, dlse, sizeof lse_back, cudaMemcpyDeviceToHost))) {
      CHECK(memcmp(lse_back, lse_h, sizeof lse_h) == 0, "[%s] a refused fd_decode changed lse",
            tag);
    }
    if (dlse) cudaFree(dlse);
    if (dtable) cudaFree(dtable);
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

/* Every documented extension field is honoured: each one alone (and the
 * combinations an engine uses) against the reference, y and lse. A refusal of
 * any of them is a failure. */
enum {
  X_LSE, X_SEQ_LENS, X_SEQ_CLAMP, X_WINDOW, X_WINDOW0, X_SEQ_WINDOW, X_SINK_TOKENS,
  X_SINK_TOKENS_NO_WINDOW, X_SINKS, X_ALIBI, X_SOFTCAP, X_BATCH_INVARIANT, X_ALL, X_COUNT
};

static void gpu_extensions(int32_t dtype, int32_t K, int32_t D) {
  gcase g = {3, 8, 2, 0, 0, L_CONTIG, -1.0, 0, 0};
  strides_t s;
  tensor q, k, v, y;
  void* ws = NULL;
  size_t ws_bytes = 0;
  float* dlse = NULL;
  int32_t* dlens = NULL;
  int32_t* dlens_clamp = NULL;
  float* dsinks = NULL;
  float* dalibi = NULL;
  int32_t lens[3], lens_clamp[3];
  float sinks_f[8], alibi_f[8];
  double sinks_d[8], alibi_d[8];
  float lse_h[24];
  double lse_ref[24];
  uint16_t* yb = NULL;
  double* yref = NULL;
  unsigned char* mask = NULL;
  uint64_t rng = 777 + (uint64_t)D;
  float scale = 0.125f;
  fd_decode_params p;
  fd_ref_problem rp;
  int st, x, i;
  const char* tag = dtype == FD_DTYPE_BF16 ? "bf16" : "f16";
  const char* xname[X_COUNT] = {
      "lse", "seq_lens", "seq_lens outside [0, k_len] (clamped)", "window_size=38",
      "window_size=1", "seq_lens+window_size=21", "window_size=21+sink_tokens=3",
      "sink_tokens=5 without a window", "sinks", "alibi_slopes", "logits_soft_cap",
      "batch_invariant", "all at once"};
  double tol = y_tolerance(dtype);
  g.K = K;
  g.D = D;
  lens[0] = K; lens[1] = 0; lens[2] = K > 0 ? K / 2 + 1 : 0; /* each in [0, k_len] */
  lens_clamp[0] = K + 100; lens_clamp[1] = -3; lens_clamp[2] = K > 0 ? K - 1 : 0;
  for (i = 0; i < 8; ++i) {
    sinks_f[i] = 0.75f * (float)i - 2.0f;
    alibi_f[i] = (float)pow(2.0, -8.0 * (i + 1) / 8.0) * 4.0f;
    sinks_d[i] = (double)sinks_f[i];
    alibi_d[i] = (double)alibi_f[i];
  }
  make_strides(&g, &s);
  memset(&q, 0, sizeof q); memset(&k, 0, sizeof k); memset(&v, 0, sizeof v);
  memset(&y, 0, sizeof y);
  if (!tensor_make(&q, extent(3, 8, 1, D, s.q_sb, s.q_sh, 0), 0, dtype, &rng, 2.0) ||
      !tensor_make(&k, extent(3, 2, K, D, s.k_sb, s.k_sh, s.k_sk), 0, dtype, &rng, 1.0) ||
      !tensor_make(&v, extent(3, 2, K, D, s.v_sb, s.v_sh, s.v_sk), 0, dtype, &rng, 1.0) ||
      !tensor_make(&y, extent(3, 8, 1, D, s.y_sb, s.y_sh, 0), 0, dtype, NULL, 0.0)) {
    goto done;
  }
  if (!CUDA_OK(cudaMalloc((void**)&dlse, sizeof lse_h))) { dlse = NULL; goto done; }
  dlens = (int32_t*)device_copy(lens, sizeof lens);
  dlens_clamp = (int32_t*)device_copy(lens_clamp, sizeof lens_clamp);
  dsinks = (float*)device_copy(sinks_f, sizeof sinks_f);
  dalibi = (float*)device_copy(alibi_f, sizeof alibi_f);
  if (!dlens || !dlens_clamp || !dsinks || !dalibi) goto done;
  yb = (uint16_t*)malloc((size_t)y.n * sizeof(uint16_t));
  yref = (double*)calloc((size_t)y.n, sizeof(double));
  mask = row_mask(&g, &s, y.n, 0);
  if (!CHECK(yb && yref && mask, "host allocation")) goto done;
  rp.batch_size = 3; rp.num_heads = 8; rp.num_kv_heads = 2; rp.k_len = K; rp.head_dim = D;
  rp.q_stride_b = s.q_sb; rp.q_stride_h = s.q_sh;
  rp.k_stride_b = s.k_sb; rp.k_stride_h = s.k_sh; rp.k_stride_k = s.k_sk;
  rp.v_stride_b = s.v_sb; rp.v_stride_h = s.v_sh; rp.v_stride_k = s.v_sk;
  rp.y_stride_b = s.y_sb; rp.y_stride_h = s.y_sh;

  for (x = 0; x < X_COUNT; ++x) {
    fd_ref_ext ext;
    char what[160];
    size_t need = 0;
    int all = x == X_ALL;
    float sc = (x == X_SOFTCAP || all) ? 0.5f : scale;
    snprintf(what, sizeof what, "[%s] K=%d D=%d extension %s", tag, (int)K, (int)D, xname[x]);
    memset(&ext, 0, sizeof ext);
    fill_params(&p, dtype, &q, &k, &v, &y, NULL, 0, &g, &s, sc, NULL);
    p.lse = dlse; p.lse_stride_b = 8; p.lse_stride_h = 1;
    if (x == X_SEQ_LENS || x == X_SEQ_WINDOW || x == X_SINK_TOKENS || all) {
      p.seq_lens = dlens; ext.seq_lens = lens;
    }
    if (x == X_SEQ_CLAMP) { p.seq_lens = dlens_clamp; ext.seq_lens = lens_clamp; }
    if (x == X_WINDOW) { p.window_size = 38; ext.window_size = 38; }
    if (x == X_WINDOW0) { p.window_size = 1; ext.window_size = 1; }
    if (x == X_SEQ_WINDOW || x == X_SINK_TOKENS || all) { p.window_size = 21; ext.window_size = 21; }
    if (x == X_SINK_TOKENS || all) { p.sink_tokens = 3; ext.sink_tokens = 3; }
    if (x == X_SINK_TOKENS_NO_WINDOW) { p.sink_tokens = 5; ext.sink_tokens = 5; }
    if (x == X_SINKS || all) { p.sinks = dsinks; ext.sinks = sinks_d; }
    if (x == X_ALIBI || all) { p.alibi_slopes = dalibi; ext.alibi = alibi_d; }
    if (x == X_SOFTCAP || all) { p.logits_soft_cap = 2.0f; ext.soft_cap = 2.0; }
    if (x == X_BATCH_INVARIANT || all) p.flags = FD_FLAG_BATCH_INVARIANT;
    st = fd_decode_workspace_size(&p, &need);
    if (!CHECK(st == FD_STATUS_SUCCESS, "%s: fd_decode_workspace_size = %d (%s)", what, st,
               fd_last_error_message())) {
      continue;
    }
    if (need > ws_bytes) {
      if (ws) cudaFree(ws);
      ws = NULL;
      ws_bytes = 0;
      if (!CUDA_OK(cudaMalloc(&ws, need))) { ws = NULL; goto done; }
      ws_bytes = need;
    }
    if (ws && !CUDA_OK(cudaMemset(ws, 0xFF, ws_bytes))) goto done;
    p.workspace = ws;
    p.workspace_bytes = ws_bytes;
    st = fd_decode_check(&p);
    if (!CHECK(st == FD_STATUS_SUCCESS, "%s: refused with %d (%s): a documented feature", what,
               st, fd_last_error_message())) {
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
    if (!CUDA_OK(cudaMemcpy(lse_h, dlse, sizeof lse_h, cudaMemcpyDeviceToHost))) goto done;
    compare_lse(what, lse_h, lse_ref, 24);
  }
done:
  if (ws) cudaFree(ws);
  if (dlse) cudaFree(dlse);
  if (dlens) cudaFree(dlens);
  if (dlens_clamp) cudaFree(dlens_clamp);
  if (dsinks) cudaFree(dsinks);
  if (dalibi) cudaFree(dalibi);
  tensor_free(&q); tensor_free(&k); tensor_free(&v); tensor_free(&y);
  free(yb); free(yref); free(mask);
}

/* FD_FLAG_BATCH_INVARIANT: each sequence of a batch of 5 (ragged lengths)
 * gives the same bits as the same sequence decoded alone (B = 1, pointers
 * into the batch's buffers), for y and lse; and the batch is right. */
static void gpu_batch_invariance(int32_t dtype) {
  gcase g = {5, 16, 4, 3000, 128, L_CONTIG, -1.0, 0, 0};
  strides_t s;
  tensor q, k, v, y, y1;
  void* ws = NULL;
  size_t need = 0, need1 = 0;
  int32_t lens[5] = {3000, 1, 2048, 513, 0};
  int32_t* dlens = NULL;
  float* dlse = NULL;
  float* dlse1 = NULL;
  float lse_h[5 * 16], lse1[16];
  double lse_ref[5 * 16];
  uint16_t *yb = NULL, *y1b = NULL;
  double* yref = NULL;
  unsigned char* mask = NULL;
  uint64_t rng = 31337;
  float scale = (float)(1.0 / sqrt(128.0));
  fd_decode_params p, p1;
  fd_ref_problem rp;
  fd_ref_ext ext;
  int st, b;
  const char* tag = dtype == FD_DTYPE_BF16 ? "bf16" : "f16";
  char what[128];
  make_strides(&g, &s);
  memset(&q, 0, sizeof q); memset(&k, 0, sizeof k); memset(&v, 0, sizeof v);
  memset(&y, 0, sizeof y); memset(&y1, 0, sizeof y1);
  if (!tensor_make(&q, extent(5, 16, 1, 128, s.q_sb, s.q_sh, 0), 0, dtype, &rng, 2.0) ||
      !tensor_make(&k, extent(5, 4, 3000, 128, s.k_sb, s.k_sh, s.k_sk), 0, dtype, &rng, 1.0) ||
      !tensor_make(&v, extent(5, 4, 3000, 128, s.v_sb, s.v_sh, s.v_sk), 0, dtype, &rng, 1.0) ||
      !tensor_make(&y, extent(5, 16, 1, 128, s.y_sb, s.y_sh, 0), 0, dtype, NULL, 0.0) ||
      !tensor_make(&y1, extent(1, 16, 1, 128, s.y_sb, s.y_sh, 0), 0, dtype, NULL, 0.0)) {
    goto done;
  }
  dlens = (int32_t*)device_copy(lens, sizeof lens);
  if (!dlens || !CUDA_OK(cudaMalloc((void**)&dlse, sizeof lse_h)) ||
      !CUDA_OK(cudaMalloc((void**)&dlse1, sizeof lse1))) {
    goto done;
  }
  fill_params(&p, dtype, &q, &k, &v, &y, NULL, 0, &g, &s, scale, NULL);
  p.flags = FD_FLAG_BATCH_INVARIANT;
  p.seq_lens = dlens;
  p.lse = dlse; p.lse_stride_b = 16; p.lse_stride_h = 1;
  p1 = p;
  p1.batch_size = 1;
  st = fd_decode_workspace_size(&p, &need);
  CHECK(st == FD_STATUS_SUCCESS && fd_decode_workspace_size(&p1, &need1) == FD_STATUS_SUCCESS,
        "[%s] batch invariance: workspace size %d (%s)", tag, st, fd_last_error_message());
  if (need1 > need) need = need1;
  if (need && !CUDA_OK(cudaMalloc(&ws, need))) { ws = NULL; goto done; }
  if (need && !CUDA_OK(cudaMemset(ws, 0xFF, need))) goto done;
  p.workspace = p1.workspace = ws;
  p.workspace_bytes = p1.workspace_bytes = need;
  yb = (uint16_t*)malloc(tensor_bytes(&y));
  y1b = (uint16_t*)malloc(tensor_bytes(&y1));
  yref = (double*)calloc((size_t)y.n, sizeof(double));
  mask = row_mask(&g, &s, y.n, 0);
  if (!CHECK(yb && y1b && yref && mask, "host allocation")) goto done;

  if (!poison(&y, NULL)) goto done;
  st = fd_decode(&p);
  if (!CHECK(st == FD_STATUS_SUCCESS, "[%s] batch-invariant B=5: %d (%s)", tag, st,
             fd_last_error_message())) {
    goto done;
  }
  if (!download(&y, yb, NULL) ||
      !CUDA_OK(cudaMemcpy(lse_h, dlse, sizeof lse_h, cudaMemcpyDeviceToHost))) {
    goto done;
  }
  memset(&rp, 0, sizeof rp);
  rp.batch_size = 5; rp.num_heads = 16; rp.num_kv_heads = 4; rp.k_len = 3000; rp.head_dim = 128;
  rp.q_stride_b = s.q_sb; rp.q_stride_h = s.q_sh;
  rp.k_stride_b = s.k_sb; rp.k_stride_h = s.k_sh; rp.k_stride_k = s.k_sk;
  rp.v_stride_b = s.v_sb; rp.v_stride_h = s.v_sh; rp.v_stride_k = s.v_sk;
  rp.y_stride_b = s.y_sb; rp.y_stride_h = s.y_sh;
  rp.scale = (double)scale;
  memset(&ext, 0, sizeof ext);
  ext.seq_lens = lens;
  fd_reference_decode(&rp, q.d, k.d, v.d, &ext, yref, lse_ref, 16, 1);
  snprintf(what, sizeof what, "[%s] batch-invariant B=5 ragged", tag);
  compare(what, dtype, yb, yref, mask, y.n, y_tolerance(dtype));
  compare_lse(what, lse_h, lse_ref, 5 * 16);
  for (b = 0; b < 5; ++b) {
    p1.q = (const uint16_t*)q.dev + b * s.q_sb;
    p1.k = (const uint16_t*)k.dev + b * s.k_sb;
    p1.v = (const uint16_t*)v.dev + b * s.v_sb;
    p1.y = y1.dev;
    p1.seq_lens = dlens + b;
    p1.lse = dlse1;
    if (!poison(&y1, NULL)) goto done;
    st = fd_decode(&p1);
    if (!CHECK(st == FD_STATUS_SUCCESS, "[%s] batch-invariant B=1 (sequence %d): %d (%s)", tag, b,
               st, fd_last_error_message())) {
      continue;
    }
    if (!download(&y1, y1b, NULL) ||
        !CUDA_OK(cudaMemcpy(lse1, dlse1, sizeof lse1, cudaMemcpyDeviceToHost))) {
      goto done;
    }
    CHECK(memcmp(y1b, yb + b * s.y_sb, 16 * 128 * sizeof(uint16_t)) == 0,
          "[%s] batch invariance: sequence %d (length %d) alone differs from its row in B=5", tag,
          b, (int)lens[b]);
    CHECK(memcmp(lse1, lse_h + b * 16, sizeof lse1) == 0,
          "[%s] batch invariance: sequence %d's lse alone differs from B=5", tag, b);
  }
done:
  if (ws) cudaFree(ws);
  if (dlens) cudaFree(dlens);
  if (dlse) cudaFree(dlse);
  if (dlse1) cudaFree(dlse1);
  tensor_free(&q); tensor_free(&k); tensor_free(&v); tensor_free(&y); tensor_free(&y1);
  free(yb); free(y1b); free(yref); free(mask);
}

void fd_test_gpu_cases(void) {
  int32_t dts[] = {FD_DTYPE_F16, FD_DTYPE_BF16};
  int32_t heads[][2] = {{8, 8}, {32, 8}, {8, 1}};
  int32_t batches[] = {2, 1, 3};
  int32_t klens[] = {0, 1, 257, 4096};
  int32_t dims[] = {64, 72, 128, 256};
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
    /* head_dim above 128: every bucket, tails masked, several layouts */
    {2, 16, 8, 1000, 136, L_CONTIG, -1.0, 0, 0},
    {3, 16, 8, 257, 160, L_NHD_PAD, -1.0, 1, 0},
    {2, 8, 1, 4096, 192, L_CONTIG, -1.0, 0, 0},
    {3, 8, 1, 257, 200, L_ODD, -1.0, 0, 0},
    {1, 16, 8, 8192, 256, L_CONTIG, -1.0, 1, 0},
    {2, 32, 32, 33, 256, L_KV_SLICE, -1.0, 0, 0},
    {4, 16, 8, 0, 256, L_CONTIG, -1.0, 0, 0},
    {2, 8, 2, 300, 255, L_Y_HBD, -1.0, 0, 0},
  };
  size_t t, hh, kk, dd, e;
  /* FD_TEST_QUICK=1 (the sanitizer runs): without the caches over 8192 keys. */
  int quick = fd_test_env_flag("FD_TEST_QUICK");
  for (t = 0; t < 2; ++t) {
    for (hh = 0; hh < 3; ++hh)
      for (kk = 0; kk < 4; ++kk)
        for (dd = 0; dd < 4; ++dd) {
          gcase g;
          memset(&g, 0, sizeof g);
          g.B = batches[hh]; g.H = heads[hh][0]; g.Hkv = heads[hh][1];
          g.K = klens[kk]; g.D = dims[dd]; g.layout = L_CONTIG; g.scale = -1.0;
          g.use_stream = (int)((kk + dd) & 1);
          gpu_case(dts[t], &g);
        }
    for (e = 0; e < sizeof extra / sizeof extra[0]; ++e) {
      if (!quick || extra[e].K <= 8192) gpu_case(dts[t], &extra[e]);
    }
    gpu_graph_case(dts[t]);
    gpu_refusals_leave_y(dts[t]);
    gpu_extensions(dts[t], 300, 64);
    gpu_extensions(dts[t], 5000, 128); /* split: the merge must apply them too */
    gpu_extensions(dts[t], 0, 64);
    gpu_extensions(dts[t], 2000, 256);
    gpu_batch_invariance(dts[t]);
    printf("  [%s] paged KV\n", dts[t] == FD_DTYPE_F16 ? "f16" : "bf16");
    fd_test_gpu_paged(dts[t]);
    printf("  [%s] fp8 KV\n", dts[t] == FD_DTYPE_F16 ? "f16" : "bf16");
    fd_test_gpu_fp8(dts[t]);
    printf("  [%s] merge_states\n", dts[t] == FD_DTYPE_F16 ? "f16" : "bf16");
    fd_test_gpu_merge(dts[t]);
  }
}

#else /* !FD_TEST_HAVE_CUDART */

int fd_test_gpu_device_count(void) { return -1; }

void fd_test_gpu_cases(void) {
  CHECK(0, "a GPU is present but the test was built without the CUDA runtime");
}

#endif
