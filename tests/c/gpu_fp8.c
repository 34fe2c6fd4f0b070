/*
 * GPU cases of fp8 KV caches (e4m3, e5m2) with f16 / bf16 queries. The cache
 * is made of random fp8 bit patterns; the reference reads their exact values
 * (fd_test_fp8_*_to_float) times the scales, so the error measured is the
 * kernel's, held to the bounds of the 16-bit caches. Contiguous and paged
 * caches, per-tensor / per-head / mixed scales, head_dim 64..256, a long
 * cache, K = 0, with the extensions; y and lse poisoned and checked, repeats
 * bit-identical. Below compute capability 8.9 the call must be refused with
 * UNSUPPORTED naming the device, writing nothing.
 */
#include "fd_test.h"
#include "gpu_support.h"

#include <flashdecoding/flashdecoding.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(FD_TEST_HAVE_CUDART)

#include "gpu_paged.h"

enum { SCALES_NONE, SCALES_TENSOR, SCALES_HEAD, SCALES_MIXED };

typedef struct f8case {
  int32_t kv;                  /* FD_DTYPE_FP8_E4M3 or _E5M2 */
  int32_t B, H, Hkv, K, D;     /* paged: K is sequence 0's length */
  int scales;
  int paged;                   /* 0: contiguous HND cache */
  int32_t P;
  int layout;
  int ext;                     /* seq_lens, window + sink tokens, sinks, ALiBi, soft-cap */
} f8case;

/* How the call must end on this device and build. */
enum { FP8_RUNS, FP8_REFUSED_BY_DEVICE, FP8_NO_CELLS };

static void gpu_fp8_case(int32_t dtype, const f8case* c, int mode) {
  tensor q, y, kc, vc;
  paged_kv pk;
  int32_t lens[8], b, i;
  int32_t k_len = c->K;
  void* ws = NULL;
  size_t need = 0;
  float* dlse = NULL;
  float* dks = NULL;
  float* dvs = NULL;
  float* dsinks = NULL;
  float* dalibi = NULL;
  int32_t* dlens = NULL;
  float ks_f[16], vs_f[16], sinks_f[64], alibi_f[64];
  double ks_d[16], vs_d[16], sinks_d[64], alibi_d[64];
  float* lse_h = NULL;
  double* lse_ref = NULL;
  uint16_t *y1 = NULL, *y2 = NULL;
  double* yref = NULL;
  unsigned char* mask = NULL;
  uint64_t rng = 0xF8ull + 17ull * (uint64_t)c->D + (uint64_t)c->K + (uint64_t)c->kv;
  fd_decode_params p = FD_DECODE_PARAMS_INIT;
  fd_ref_problem rp;
  fd_ref_ext ext;
  char what[220];
  float scale = (float)(1.0 / sqrt((double)c->D));
  int64_t nbh = (int64_t)c->B * c->H;
  int st;
  const char* sname[] = {"scales 0", "per-tensor scales", "per-head scales",
                         "per-head k + per-tensor v"};

  memset(&q, 0, sizeof q); memset(&y, 0, sizeof y);
  memset(&kc, 0, sizeof kc); memset(&vc, 0, sizeof vc);
  memset(&pk, 0, sizeof pk);
  memset(&rp, 0, sizeof rp);
  memset(&ext, 0, sizeof ext);
  for (b = 0; b < c->B; ++b) {
    /* Paged: sequence 0 long, the others shorter; contiguous + ext: ragged. */
    static const int32_t frac[8] = {8, 5, 1, 7, 3, 0, 6, 2};
    lens[b] = b == 0 ? c->K : c->K * frac[b % 8] / 8 + (b % 3);
    if (lens[b] > c->K) lens[b] = c->K;
  }
  snprintf(what, sizeof what, "[%s q, %s kv] B=%d Hq=%d Hkv=%d K=%d D=%d %s%s%s",
           dtype == FD_DTYPE_BF16 ? "bf16" : "f16",
           c->kv == FD_DTYPE_FP8_E5M2 ? "e5m2" : "e4m3", (int)c->B, (int)c->H, (int)c->Hkv,
           (int)c->K, (int)c->D, sname[c->scales], c->paged ? " paged" : "",
           c->ext ? " +seq_lens+window+sink_tokens+sinks+alibi+soft_cap" : "");
  if (!tensor_make(&q, nbh * c->D, 0, dtype, &rng, 2.0) ||
      !tensor_make(&y, nbh * c->D, 0, dtype, NULL, 0.0) ||
      !CUDA_OK(cudaMalloc((void**)&dlse, (size_t)nbh * sizeof(float)))) {
    goto done;
  }
  p.dtype = dtype;
  p.kv_dtype = c->kv;
  p.q = q.dev; p.y = y.dev;
  p.batch_size = c->B; p.num_heads = c->H; p.num_kv_heads = c->Hkv; p.head_dim = c->D;
  p.scale = scale;
  p.q_stride_b = p.y_stride_b = (int64_t)c->H * c->D;
  p.q_stride_h = p.y_stride_h = c->D;
  p.lse = dlse; p.lse_stride_b = c->H; p.lse_stride_h = 1;
  rp.batch_size = c->B; rp.num_heads = c->H; rp.num_kv_heads = c->Hkv; rp.head_dim = c->D;
  rp.scale = (double)scale;
  rp.q_stride_b = rp.y_stride_b = p.q_stride_b;
  rp.q_stride_h = rp.y_stride_h = p.q_stride_h;
  if (c->paged) {
    int32_t max_pages = (c->K + c->P - 1) / c->P;
    if (!paged_kv_make(&pk, c->kv, c->layout, c->B, c->Hkv, c->D, c->P, max_pages, 2, lens, 1,
                       &rng)) {
      goto done;
    }
    k_len = max_pages * c->P;
    paged_kv_params(&pk, &p);
    paged_kv_ref(&pk, &rp, &ext);
  } else {
    int64_t n = (int64_t)c->B * c->Hkv * c->K * c->D;
    if (!tensor_make(&kc, n, 0, c->kv, &rng, 2.0) || !tensor_make(&vc, n, 0, c->kv, &rng, 2.0)) {
      goto done;
    }
    p.k = kc.dev; p.v = vc.dev;
    p.k_stride_k = p.v_stride_k = rp.k_stride_k = rp.v_stride_k = c->D;
    p.k_stride_h = p.v_stride_h = rp.k_stride_h = rp.v_stride_h = (int64_t)c->K * c->D;
    p.k_stride_b = p.v_stride_b = rp.k_stride_b = rp.v_stride_b = (int64_t)c->Hkv * c->K * c->D;
    if (c->ext) {
      dlens = (int32_t*)device_copy(lens, (size_t)c->B * sizeof(int32_t));
      if (!dlens) goto done;
      p.seq_lens = dlens;
      ext.seq_lens = lens;
    }
  }
  p.k_len = rp.k_len = k_len;
  for (i = 0; i < 16; ++i) {
    ks_f[i] = 0.25f * (float)(i % 5 + 1);
    vs_f[i] = 2.0f / (float)(i % 3 + 1);
    ks_d[i] = ks_f[i];
    vs_d[i] = vs_f[i];
  }
  for (i = 0; i < 64; ++i) {
    sinks_f[i] = 0.25f * (float)(i % 9) - 1.0f;
    alibi_f[i] = (float)pow(2.0, -8.0 * (i + 1) / (double)c->H);
    sinks_d[i] = sinks_f[i];
    alibi_d[i] = alibi_f[i];
  }
  dks = (float*)device_copy(ks_f, sizeof ks_f);
  dvs = (float*)device_copy(vs_f, sizeof vs_f);
  dsinks = (float*)device_copy(sinks_f, sizeof sinks_f);
  dalibi = (float*)device_copy(alibi_f, sizeof alibi_f);
  if (!dks || !dvs || !dsinks || !dalibi) goto done;
  switch (c->scales) {
    case SCALES_TENSOR:
      p.k_scale = 0.5f; p.v_scale = 1.5f; ext.k_scale = 0.5; ext.v_scale = 1.5;
      break;
    case SCALES_HEAD:
      p.k_scales = dks; p.v_scales = dvs; ext.k_scales = ks_d; ext.v_scales = vs_d;
      break;
    case SCALES_MIXED:
      p.k_scales = dks; ext.k_scales = ks_d; p.v_scale = 0.75f; ext.v_scale = 0.75;
      break;
    default: break;
  }
  if (c->ext) {
    p.window_size = ext.window_size = 300;
    p.sink_tokens = ext.sink_tokens = 4;
    p.sinks = dsinks; ext.sinks = sinks_d;
    p.alibi_slopes = dalibi; ext.alibi = alibi_d;
    p.logits_soft_cap = 15.0f; ext.soft_cap = 15.0;
  }
  if (mode == FP8_NO_CELLS) {
    /* A build for architectures below 8.9 only: no fp8 cell, said on the host. */
    st = fd_decode_check(&p);
    CHECK(st == FD_STATUS_UNSUPPORTED && fd_test_names(fd_last_error_message(), "kv_dtype"),
          "%s without fp8 cells: fd_decode_check = %d (%s), expected UNSUPPORTED naming kv_dtype",
          what, st, fd_last_error_message());
    goto done;
  }
  st = fd_decode_workspace_size(&p, &need);
  if (!CHECK(st == FD_STATUS_SUCCESS, "%s: fd_decode_workspace_size = %d (%s)", what, st,
             fd_last_error_message())) {
    goto done;
  }
  if (need && !CUDA_OK(cudaMalloc(&ws, need))) { ws = NULL; goto done; }
  if (need && !CUDA_OK(cudaMemset(ws, 0xFF, need))) goto done;
  p.workspace = ws;
  p.workspace_bytes = need;
  y1 = (uint16_t*)malloc(tensor_bytes(&y));
  y2 = (uint16_t*)malloc(tensor_bytes(&y));
  yref = (double*)calloc((size_t)y.n, sizeof(double));
  lse_h = (float*)malloc((size_t)nbh * sizeof(float));
  lse_ref = (double*)malloc((size_t)nbh * sizeof(double));
  mask = rows_mask(c->B, c->H, c->D, p.y_stride_b, p.y_stride_h, y.n, 0);
  if (!CHECK(y1 && y2 && yref && lse_h && lse_ref && mask, "host allocation")) goto done;
  if (!poison(&y, NULL)) goto done;
  if (mode == FP8_REFUSED_BY_DEVICE) {
    /* Below sm_89: refused, the device named, nothing written. */
    int cc = fd_test_device_cc();
    char sm[16];
    st = fd_decode(&p);
    snprintf(sm, sizeof sm, "sm_%d", cc);
    CHECK(st == FD_STATUS_UNSUPPORTED && strstr(fd_last_error_message(), sm) != NULL,
          "%s on %s: fd_decode = %d (%s), expected UNSUPPORTED naming %s", what, sm, st,
          fd_last_error_message(), sm);
    if (download(&y, y1, NULL)) {
      int64_t changed = 0;
      for (i = 0; i < (int32_t)y.n; ++i) changed += y1[i] != 0xFFFFu;
      CHECK(changed == 0, "%s: the refused call wrote %ld elements of y", what, (long)changed);
    }
    goto done;
  }
  {
    fd_launch_plan plan = FD_LAUNCH_PLAN_INIT;
    fd_kernel_cell_info info = FD_KERNEL_CELL_INFO_INIT;
    st = fd_decode_plan(&p, &plan);
    if (CHECK(st == FD_STATUS_SUCCESS, "%s: fd_decode_plan = %d (%s)", what, st,
              fd_last_error_message())) {
      CHECK(fd_kernel_cell_info_get(plan.cell_index, &info) == FD_STATUS_SUCCESS &&
                info.kv_dtype == c->kv && info.paged == c->paged && info.head_dim >= c->D,
            "%s: plan runs cell %d (kv %d, paged %d, bucket %d)", what, (int)plan.cell_index,
            (int)info.kv_dtype, (int)info.paged, (int)info.head_dim);
    }
  }
  fd_reference_decode(&rp, q.d, c->paged ? paged_kv_k(&pk) : kc.d,
                      c->paged ? paged_kv_v(&pk) : vc.d, &ext, yref, lse_ref, c->H, 1);
  for (i = 0; i < 2; ++i) {
    if (i > 0 && !poison(&y, NULL)) goto done;
    if (!CUDA_OK(cudaMemset(dlse, 0xFF, (size_t)nbh * sizeof(float)))) goto done;
    st = fd_decode(&p);
    if (!CHECK(st == FD_STATUS_SUCCESS, "%s: fd_decode = %d (%s)", what, st,
               fd_last_error_message())) {
      goto done;
    }
    if (!download(&y, i == 0 ? y1 : y2, NULL) ||
        !CUDA_OK(cudaMemcpy(lse_h, dlse, (size_t)nbh * sizeof(float), cudaMemcpyDeviceToHost))) {
      goto done;
    }
    if (i == 0) {
      compare(what, dtype, y1, yref, mask, y.n, y_tolerance(dtype));
      compare_lse(what, lse_h, lse_ref, nbh);
    }
  }
  CHECK(memcmp(y1, y2, tensor_bytes(&y)) == 0, "%s: repeated run not bit-identical", what);
done:
  if (ws) cudaFree(ws);
  if (dlse) cudaFree(dlse);
  if (dks) cudaFree(dks);
  if (dvs) cudaFree(dvs);
  if (dsinks) cudaFree(dsinks);
  if (dalibi) cudaFree(dalibi);
  if (dlens) cudaFree(dlens);
  paged_kv_free(&pk);
  tensor_free(&q); tensor_free(&y); tensor_free(&kc); tensor_free(&vc);
  free(y1); free(y2); free(yref); free(lse_h); free(lse_ref); free(mask);
}

void fd_test_gpu_fp8(int32_t dtype) {
  const int32_t E4 = FD_DTYPE_FP8_E4M3, E5 = FD_DTYPE_FP8_E5M2;
  f8case cases[] = {
    {E4, 2, 16, 4, 1000, 128, SCALES_TENSOR, 0, 0, 0, 0},
    {E5, 2, 16, 4, 1000, 128, SCALES_HEAD, 0, 0, 0, 0},
    {E4, 3, 8, 8, 257, 72, SCALES_NONE, 0, 0, 0, 0},     /* 72: not whole 16-byte rows */
    {E5, 3, 8, 8, 257, 7, SCALES_TENSOR, 0, 0, 0, 0},
    {E5, 1, 16, 8, 4096, 256, SCALES_MIXED, 0, 0, 0, 0},
    {E4, 2, 8, 2, 333, 160, SCALES_HEAD, 0, 0, 0, 0},
    {E5, 2, 8, 2, 333, 192, SCALES_NONE, 0, 0, 0, 0},
    {E4, 1, 8, 1, 33000, 128, SCALES_TENSOR, 0, 0, 0, 0}, /* long: many splits */
    {E5, 1, 8, 1, 33000, 64, SCALES_HEAD, 0, 0, 0, 0},
    {E4, 4, 32, 8, 0, 128, SCALES_NONE, 0, 0, 0, 0},
    {E4, 3, 8, 2, 5000, 64, SCALES_HEAD, 0, 0, 0, 1},
    {E5, 3, 8, 2, 2000, 256, SCALES_MIXED, 0, 0, 0, 1},
    {E4, 4, 16, 4, 3000, 128, SCALES_HEAD, 1, 16, POOL_NHD, 0},
    {E5, 3, 8, 8, 500, 64, SCALES_TENSOR, 1, 1, POOL_HND, 0},
    {E4, 3, 8, 2, 700, 96, SCALES_NONE, 1, 17, POOL_HND, 1},
    {E5, 2, 16, 8, 2000, 256, SCALES_MIXED, 1, 64, POOL_COMBINED, 1},
  };
  size_t i;
  int cc = fd_test_device_cc();
  int32_t idx = -1;
  int have_cells = fd_kernel_cell_find(E4, 128, &idx) == FD_STATUS_SUCCESS;
  int mode = cc >= 89 ? FP8_RUNS : have_cells ? FP8_REFUSED_BY_DEVICE : FP8_NO_CELLS;
  /* A build that runs on an sm_89+ device carries the fp8 cells (they are
   * compiled for every architecture >= 89 of the list): a missing cell there
   * is a failure, not a skip. */
  if (cc >= 89) {
    CHECK(have_cells, "device sm_%d runs fp8 KV but the library has no fp8 cell "
          "(architectures %s)", cc, fd_compiled_architectures());
  }
  for (i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    /* FD_TEST_QUICK=1 (the sanitizer runs): without the caches over 8192 keys. */
    if (!fd_test_env_flag("FD_TEST_QUICK") || cases[i].K <= 8192) {
      gpu_fp8_case(dtype, &cases[i], mode);
    }
  }
}

#else

/* ISO C needs a declaration in every translation unit. */
typedef int fd_test_gpu_fp8_unused;

#endif
