/*
 * GPU cases of fd_merge_states. Decoding two halves of a cache (the second
 * half empty for some sequences, one sequence empty in both) and merging
 * equals the reference of the whole, y and lse, bit-stably; generated states
 * in f16 / bf16 / f32 with padded strides, -inf states, an all -inf row and a
 * NaN row match the double reference of the merge; outputs are poisoned and
 * nothing outside y's rows is written; a refused merge writes nothing.
 */
#include "fd_test.h"
#include "gpu_support.h"

#include <flashdecoding/flashdecoding.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(FD_TEST_HAVE_CUDART)

/* Two decodes of [0, K1) and [K1, K) into the states of a merge. */
static void gpu_merge_halves(int32_t dtype, int32_t K, int32_t K1, int32_t D) {
  enum { B = 3, H = 16, HKV = 4 };
  int32_t lens[B], lens_a[B], lens_b[B], b;
  tensor q, k, v, states, y;
  int32_t *dlens_a = NULL, *dlens_b = NULL;
  float *dlse = NULL, *dlse_out = NULL;
  void* ws = NULL;
  size_t ws_bytes = 0;
  float lse_out[B * H];
  double lse_ref[B * H];
  uint16_t *y1 = NULL, *y2 = NULL;
  double* yref = NULL;
  unsigned char* mask = NULL;
  uint64_t rng = 4711 + (uint64_t)D;
  fd_decode_params p = FD_DECODE_PARAMS_INIT;
  fd_merge_params m = FD_MERGE_PARAMS_INIT;
  fd_ref_problem rp;
  fd_ref_ext ext;
  char what[160];
  int st, half, run;
  int64_t sk = D, sh = (int64_t)K * D, sb = (int64_t)HKV * K * D;
  lens[0] = K; lens[1] = K1 / 2 + 1; lens[2] = 0;
  for (b = 0; b < B; ++b) {
    lens_a[b] = lens[b] < K1 ? lens[b] : K1;
    lens_b[b] = lens[b] > K1 ? lens[b] - K1 : 0;
  }
  snprintf(what, sizeof what, "[%s] merge of [0, %d) and [%d, %d), D=%d",
           dtype == FD_DTYPE_BF16 ? "bf16" : "f16", (int)K1, (int)K1, (int)K, (int)D);
  memset(&q, 0, sizeof q); memset(&k, 0, sizeof k); memset(&v, 0, sizeof v);
  memset(&states, 0, sizeof states); memset(&y, 0, sizeof y);
  if (!tensor_make(&q, (int64_t)B * H * D, 0, dtype, &rng, 2.0) ||
      !tensor_make(&k, (int64_t)B * HKV * K * D, 0, dtype, &rng, 1.0) ||
      !tensor_make(&v, (int64_t)B * HKV * K * D, 0, dtype, &rng, 1.0) ||
      !tensor_make(&states, 2 * (int64_t)B * H * D, 0, dtype, NULL, 0.0) ||
      !tensor_make(&y, (int64_t)B * H * D, 0, dtype, NULL, 0.0)) {
    goto done;
  }
  dlens_a = (int32_t*)device_copy(lens_a, sizeof lens_a);
  dlens_b = (int32_t*)device_copy(lens_b, sizeof lens_b);
  if (!dlens_a || !dlens_b || !CUDA_OK(cudaMalloc((void**)&dlse, 2 * sizeof lse_out)) ||
      !CUDA_OK(cudaMalloc((void**)&dlse_out, sizeof lse_out))) {
    goto done;
  }
  /* The two partial decodes, each into its slot of the states. */
  for (half = 0; half < 2; ++half) {
    size_t need = 0;
    fd_decode_params z = FD_DECODE_PARAMS_INIT;
    p = z;
    p.dtype = dtype;
    p.q = q.dev;
    p.k = (const uint16_t*)k.dev + (half ? (int64_t)K1 * sk : 0);
    p.v = (const uint16_t*)v.dev + (half ? (int64_t)K1 * sk : 0);
    p.y = (uint16_t*)states.dev + (int64_t)half * B * H * D;
    p.batch_size = B; p.num_heads = H; p.num_kv_heads = HKV;
    p.k_len = half ? K - K1 : K1;
    p.head_dim = D; p.scale = (float)(1.0 / sqrt((double)D));
    p.q_stride_b = p.y_stride_b = (int64_t)H * D;
    p.q_stride_h = p.y_stride_h = D;
    p.k_stride_b = p.v_stride_b = sb;
    p.k_stride_h = p.v_stride_h = sh;
    p.k_stride_k = p.v_stride_k = sk;
    p.seq_lens = half ? dlens_b : dlens_a;
    p.lse = dlse + half * B * H;
    p.lse_stride_b = H;
    p.lse_stride_h = 1;
    st = fd_decode_workspace_size(&p, &need);
    if (!CHECK(st == FD_STATUS_SUCCESS, "%s: workspace size %d", what, st)) goto done;
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
    st = fd_decode(&p);
    if (!CHECK(st == FD_STATUS_SUCCESS, "%s: decode of half %d = %d (%s)", what, half, st,
               fd_last_error_message())) {
      goto done;
    }
  }
  m.dtype = dtype;
  m.num_states = 2; m.batch_size = B; m.num_heads = H; m.head_dim = D;
  m.states = states.dev;
  m.state_stride_n = (int64_t)B * H * D; m.state_stride_b = (int64_t)H * D; m.state_stride_h = D;
  m.lse = dlse;
  m.lse_stride_n = B * H; m.lse_stride_b = H; m.lse_stride_h = 1;
  m.y = y.dev;
  m.y_stride_b = (int64_t)H * D; m.y_stride_h = D;
  m.lse_out = dlse_out;
  m.lse_out_stride_b = H; m.lse_out_stride_h = 1;
  y1 = (uint16_t*)malloc(tensor_bytes(&y));
  y2 = (uint16_t*)malloc(tensor_bytes(&y));
  yref = (double*)calloc((size_t)y.n, sizeof(double));
  mask = rows_mask(B, H, D, (int64_t)H * D, D, y.n, 0);
  if (!CHECK(y1 && y2 && yref && mask, "host allocation")) goto done;
  memset(&rp, 0, sizeof rp);
  memset(&ext, 0, sizeof ext);
  rp.batch_size = B; rp.num_heads = H; rp.num_kv_heads = HKV; rp.k_len = K; rp.head_dim = D;
  rp.q_stride_b = rp.y_stride_b = (int64_t)H * D;
  rp.q_stride_h = rp.y_stride_h = D;
  rp.k_stride_b = rp.v_stride_b = sb;
  rp.k_stride_h = rp.v_stride_h = sh;
  rp.k_stride_k = rp.v_stride_k = sk;
  rp.scale = (double)(float)(1.0 / sqrt((double)D));
  ext.seq_lens = lens;
  fd_reference_decode(&rp, q.d, k.d, v.d, &ext, yref, lse_ref, H, 1);
  for (run = 0; run < 2; ++run) {
    if (!poison(&y, NULL) || !CUDA_OK(cudaMemset(dlse_out, 0xFF, sizeof lse_out))) goto done;
    st = fd_merge_states(&m);
    if (!CHECK(st == FD_STATUS_SUCCESS, "%s: fd_merge_states = %d (%s)", what, st,
               fd_last_error_message())) {
      goto done;
    }
    if (!download(&y, run ? y2 : y1, NULL) ||
        !CUDA_OK(cudaMemcpy(lse_out, dlse_out, sizeof lse_out, cudaMemcpyDeviceToHost))) {
      goto done;
    }
    if (run == 0) {
      compare(what, dtype, y1, yref, mask, y.n, y_tolerance(dtype));
      compare_lse(what, lse_out, lse_ref, B * H);
    }
  }
  CHECK(memcmp(y1, y2, tensor_bytes(&y)) == 0, "%s: repeated merge not bit-identical", what);
done:
  if (ws) cudaFree(ws);
  if (dlens_a) cudaFree(dlens_a);
  if (dlens_b) cudaFree(dlens_b);
  if (dlse) cudaFree(dlse);
  if (dlse_out) cudaFree(dlse_out);
  tensor_free(&q); tensor_free(&k); tensor_free(&v); tensor_free(&states); tensor_free(&y);
  free(y1); free(y2); free(yref); free(mask);
}

/* ---- generated states ------------------------------------------------------- */

static size_t esize_of(int32_t dtype) { return dtype == FD_DTYPE_F32 ? 4 : 2; }

static double load_elem(int32_t dtype, const unsigned char* base, int64_t i) {
  if (dtype == FD_DTYPE_F32) {
    float f;
    memcpy(&f, base + i * 4, 4);
    return (double)f;
  } else {
    uint16_t h;
    memcpy(&h, base + i * 2, 2);
    return from_bits(dtype, h);
  }
}

static void store_elem(int32_t dtype, unsigned char* base, int64_t i, double x) {
  if (dtype == FD_DTYPE_F32) {
    float f = (float)x;
    memcpy(base + i * 4, &f, 4);
  } else {
    uint16_t h = to_bits(dtype, x);
    memcpy(base + i * 2, &h, 2);
  }
}

/* N=3 states of B=2, H=4, D=72 with padded strides. Rows (b, h): (0, 1) has
 * state 1 at -inf; (1, 0) all states -inf (y = 0, lse = -inf); (1, 3) a NaN
 * lse (the row NaN); the others finite lse in [-6, 6]. */
static void gpu_merge_generated(int32_t dtype) {
  enum { N = 3, B = 2, H = 4, D = 72 };
  const int64_t ssh = 80, ssb = H * 80 + 8, ssn = B * (H * 80 + 8) + 16; /* states */
  const int64_t lsh = 1, lsb = H + 1, lsn = B * (H + 1) + 3;            /* lse */
  const int64_t ysh = D + 8, ysb = H * (D + 8) + 4;                      /* y */
  const int64_t n_states = (N - 1) * ssn + (B - 1) * ssb + (H - 1) * ssh + D;
  const int64_t n_lse = (N - 1) * lsn + (B - 1) * lsb + (H - 1) * lsh + 1;
  const int64_t n_y = (B - 1) * ysb + (H - 1) * ysh + D;
  size_t es = esize_of(dtype);
  unsigned char *hs = NULL, *hy = NULL;
  float* hl = NULL;
  double *ds = NULL, *dl = NULL, *yref = NULL;
  double lo_ref[B * H];
  float lo[B * H];
  void *d_states = NULL, *d_y = NULL;
  float *d_lse = NULL, *d_lo = NULL;
  uint64_t rng = 8086 + (uint64_t)dtype;
  fd_merge_params m = FD_MERGE_PARAMS_INIT;
  fd_ref_merge r;
  char what[96];
  int64_t i, bad = 0, clobbered = 0;
  int st, b, h, d;
  double num = 0.0, den = 0.0;
  snprintf(what, sizeof what, "[%s] merge of generated states",
           dtype == FD_DTYPE_F32 ? "f32" : dtype == FD_DTYPE_BF16 ? "bf16" : "f16");
  hs = (unsigned char*)malloc((size_t)n_states * es);
  hy = (unsigned char*)malloc((size_t)n_y * es);
  hl = (float*)malloc((size_t)n_lse * sizeof(float));
  ds = (double*)calloc((size_t)n_states, sizeof(double));
  dl = (double*)calloc((size_t)n_lse, sizeof(double));
  yref = (double*)calloc((size_t)n_y, sizeof(double));
  if (!CHECK(hs && hy && hl && ds && dl && yref, "host allocation")) goto done;
  for (i = 0; i < n_states; ++i) {
    store_elem(dtype, hs, i, 3.0 * fd_test_uniform(&rng));
    ds[i] = load_elem(dtype, hs, i);
  }
  for (i = 0; i < n_lse; ++i) {
    hl[i] = (float)(6.0 * fd_test_uniform(&rng));
  }
  hl[1 * lsn + 0 * lsb + 1 * lsh] = -(float)INFINITY;
  for (i = 0; i < N; ++i) hl[i * lsn + 1 * lsb + 0 * lsh] = -(float)INFINITY;
  hl[2 * lsn + 1 * lsb + 3 * lsh] = (float)NAN;
  for (i = 0; i < n_lse; ++i) dl[i] = (double)hl[i];
  d_states = device_copy(hs, (size_t)n_states * es);
  d_lse = (float*)device_copy(hl, (size_t)n_lse * sizeof(float));
  if (!d_states || !d_lse || !CUDA_OK(cudaMalloc(&d_y, (size_t)n_y * es)) ||
      !CUDA_OK(cudaMalloc((void**)&d_lo, sizeof lo)) ||
      !CUDA_OK(cudaMemset(d_y, 0xFF, (size_t)n_y * es)) ||
      !CUDA_OK(cudaMemset(d_lo, 0xFF, sizeof lo))) {
    goto done;
  }
  m.dtype = dtype;
  m.num_states = N; m.batch_size = B; m.num_heads = H; m.head_dim = D;
  m.states = d_states;
  m.state_stride_n = ssn; m.state_stride_b = ssb; m.state_stride_h = ssh;
  m.lse = d_lse;
  m.lse_stride_n = lsn; m.lse_stride_b = lsb; m.lse_stride_h = lsh;
  m.y = d_y;
  m.y_stride_b = ysb; m.y_stride_h = ysh;
  m.lse_out = d_lo;
  m.lse_out_stride_b = H; m.lse_out_stride_h = 1;
  memset(&r, 0, sizeof r);
  r.num_states = N; r.batch_size = B; r.num_heads = H; r.head_dim = D;
  r.state_stride_n = ssn; r.state_stride_b = ssb; r.state_stride_h = ssh;
  r.lse_stride_n = lsn; r.lse_stride_b = lsb; r.lse_stride_h = lsh;
  r.y_stride_b = ysb; r.y_stride_h = ysh;
  r.lse_out_stride_b = H; r.lse_out_stride_h = 1;
  fd_reference_merge(&r, ds, dl, yref, lo_ref);
  st = fd_merge_states(&m);
  if (!CHECK(st == FD_STATUS_SUCCESS, "%s: fd_merge_states = %d (%s)", what, st,
             fd_last_error_message())) {
    goto done;
  }
  if (!CUDA_OK(cudaMemcpy(hy, d_y, (size_t)n_y * es, cudaMemcpyDeviceToHost)) ||
      !CUDA_OK(cudaMemcpy(lo, d_lo, sizeof lo, cudaMemcpyDeviceToHost))) {
    goto done;
  }
  {
    unsigned char* mask = rows_mask(B, H, D, ysb, ysh, n_y, 0);
    if (!CHECK(mask != NULL, "host allocation")) goto done;
    for (i = 0; i < n_y; ++i) {
      if (!mask[i]) {
        size_t j;
        for (j = 0; j < es; ++j) clobbered += hy[i * (int64_t)es + (int64_t)j] != 0xFF;
      }
    }
    free(mask);
  }
  for (b = 0; b < B; ++b) {
    for (h = 0; h < H; ++h) {
      for (d = 0; d < D; ++d) {
        int64_t at = b * ysb + h * ysh + d;
        double g = load_elem(dtype, hy, at), e = yref[at];
        if (isnan(e)) {
          bad += !isnan(g);
        } else if (!isfinite(g)) {
          ++bad;
        } else {
          num += (g - e) * (g - e);
          den += e * e;
        }
      }
    }
  }
  CHECK(clobbered == 0, "%s: %ld bytes outside y's rows were written", what, (long)clobbered);
  CHECK(bad == 0, "%s: %ld elements NaN where they should not be, or not NaN in the NaN row",
        what, (long)bad);
  CHECK(den > 0 && sqrt(num / den) <= (dtype == FD_DTYPE_F32 ? 1e-5 : y_tolerance(dtype)),
        "%s: relative error %.3e", what, den > 0 ? sqrt(num / den) : -1.0);
  CHECK(isnan(lo[1 * H + 3]) && isinf(lo[1 * H + 0]) && lo[1 * H + 0] < 0,
        "%s: lse_out of the NaN row %g, of the all -inf row %g", what, (double)lo[1 * H + 3],
        (double)lo[1 * H + 0]);
  {
    int all_zero = 1;
    for (d = 0; d < D; ++d) all_zero &= load_elem(dtype, hy, 1 * ysb + 0 * ysh + d) == 0.0;
    CHECK(all_zero, "%s: the all -inf row is not 0", what);
  }
  compare_lse(what, lo, lo_ref, B * H);
done:
  if (d_states) cudaFree(d_states);
  if (d_lse) cudaFree(d_lse);
  if (d_y) cudaFree(d_y);
  if (d_lo) cudaFree(d_lo);
  free(hs); free(hy); free(hl); free(ds); free(dl); free(yref);
}

/* Refused merges on real buffers leave y and lse_out as they were. */
static void gpu_merge_refusals(int32_t dtype) {
  enum { N = 2, B = 2, H = 4, D = 64 };
  uint16_t hs[N * B * H * D], hy[B * H * D], back[B * H * D];
  float hl[N * B * H], hlo[B * H], back_lo[B * H];
  uint16_t *d_states = NULL, *d_y = NULL;
  float *d_lse = NULL, *d_lo = NULL;
  uint64_t rng = 1234;
  int i, st;
  for (i = 0; i < N * B * H * D; ++i) hs[i] = to_bits(dtype, fd_test_uniform(&rng));
  for (i = 0; i < B * H * D; ++i) hy[i] = to_bits(dtype, 7.0);
  for (i = 0; i < N * B * H; ++i) hl[i] = (float)fd_test_uniform(&rng);
  for (i = 0; i < B * H; ++i) hlo[i] = 42.0f;
  d_states = (uint16_t*)device_copy(hs, sizeof hs);
  d_y = (uint16_t*)device_copy(hy, sizeof hy);
  d_lse = (float*)device_copy(hl, sizeof hl);
  d_lo = (float*)device_copy(hlo, sizeof hlo);
  if (d_states && d_y && d_lse && d_lo) {
    struct { const char* what; int which; int status; } bad[] = {
      {"num_states=0", 0, FD_STATUS_INVALID_PROBLEM},
      {"reserved=1", 1, FD_STATUS_INVALID_PROBLEM},
      {"head_dim=257", 2, FD_STATUS_UNSUPPORTED},
      {"y over states", 3, FD_STATUS_INVALID_POINTER},
      {"lse_out over lse", 4, FD_STATUS_INVALID_POINTER},
      {"y_stride_h=0", 5, FD_STATUS_INVALID_PROBLEM},
      {"dtype=f64", 6, FD_STATUS_UNSUPPORTED},
    };
    size_t k;
    for (k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
      fd_merge_params m = FD_MERGE_PARAMS_INIT;
      m.dtype = dtype;
      m.num_states = N; m.batch_size = B; m.num_heads = H; m.head_dim = D;
      m.states = d_states;
      m.state_stride_n = B * H * D; m.state_stride_b = H * D; m.state_stride_h = D;
      m.lse = d_lse;
      m.lse_stride_n = B * H; m.lse_stride_b = H; m.lse_stride_h = 1;
      m.y = d_y;
      m.y_stride_b = H * D; m.y_stride_h = D;
      m.lse_out = d_lo;
      m.lse_out_stride_b = H; m.lse_out_stride_h = 1;
      switch (bad[k].which) {
        case 0: m.num_states = 0; break;
        case 1: m.reserved = 1; break;
        case 2: m.head_dim = 257; break;
        case 3: m.states = d_y; m.state_stride_n = 0; break;
        case 4: m.lse_out = d_lse; break;
        case 5: m.y_stride_h = 0; break;
        default: m.dtype = FD_DTYPE_F64; break;
      }
      st = fd_merge_states(&m);
      CHECK(st == bad[k].status, "[%s] merge with %s on device = %d (%s)",
            dtype == FD_DTYPE_BF16 ? "bf16" : "f16", bad[k].what, st, fd_last_error_message());
    }
    if (CUDA_OK(cudaDeviceSynchronize()) &&
        CUDA_OK(cudaMemcpy(back, d_y, sizeof back, cudaMemcpyDeviceToHost)) &&
        CUDA_OK(cudaMemcpy(back_lo, d_lo, sizeof back_lo, cudaMemcpyDeviceToHost))) {
      CHECK(memcmp(back, hy, sizeof hy) == 0 && memcmp(back_lo, hlo, sizeof hlo) == 0,
            "a refused merge wrote y or lse_out");
    }
    if (CUDA_OK(cudaMemcpy(back_lo, d_lse, sizeof back_lo, cudaMemcpyDeviceToHost))) {
      CHECK(memcmp(back_lo, hl, sizeof back_lo) == 0, "a refused merge (lse_out over lse) wrote lse");
    }
  }
  if (d_states) cudaFree(d_states);
  if (d_y) cudaFree(d_y);
  if (d_lse) cudaFree(d_lse);
  if (d_lo) cudaFree(d_lo);
}

void fd_test_gpu_merge(int32_t dtype) {
  gpu_merge_halves(dtype, 3000, 1234, 128);
  gpu_merge_halves(dtype, 5000, 4096, 256);
  gpu_merge_halves(dtype, 700, 1, 72);
  gpu_merge_generated(dtype);
  if (dtype == FD_DTYPE_BF16) gpu_merge_generated(FD_DTYPE_F32);
  gpu_merge_refusals(dtype);
}

#else

/* ISO C needs a declaration in every translation unit. */
typedef int fd_test_gpu_merge_unused;

#endif
