/*
 * GPU cases of paged KV caches against the reference that gathers the pages
 * itself: page sizes 1, 3, 16, 17, 64 and 256; NHD, HND and combined K/V
 * pools; shuffled page ids, pages shared between sequences (a common
 * prefix), unused table entries holding garbage; lengths 0, 1, P-1, P, P+1
 * and long (split); with the extensions; y and lse poisoned and checked fully
 * written, repeats bit-identical. A page id outside the pool or a length
 * outside [0, k_len] makes exactly that sequence's row NaN. One CUDA graph,
 * captured once, replayed while lengths grow and pages are appended on the
 * device, is right at every step.
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

static int32_t pages_for(int32_t len, int32_t P) { return len > 0 ? (len + P - 1) / P : 0; }

static uint32_t rand_below(uint64_t* rng, uint32_t n) {
  return (uint32_t)((fd_test_uniform(rng) + 1.0) * 0.5 * (double)n) % n;
}

void paged_kv_free(paged_kv* pk) {
  free(pk->table);
  free(pk->lens);
  tensor_free(&pk->kv);
  if (pk->dtable) cudaFree(pk->dtable);
  if (pk->dlens) cudaFree(pk->dlens);
  memset(pk, 0, sizeof *pk);
}

int paged_kv_upload_meta(paged_kv* pk, void* stream) {
  return CUDA_OK(cudaMemcpyAsync(pk->dtable, pk->table,
                                 (size_t)pk->B * (size_t)pk->max_pages * sizeof(int32_t),
                                 cudaMemcpyHostToDevice, (cudaStream_t)stream)) &&
         CUDA_OK(cudaMemcpyAsync(pk->dlens, pk->lens, (size_t)pk->B * sizeof(int32_t),
                                 cudaMemcpyHostToDevice, (cudaStream_t)stream));
}

int paged_kv_make(paged_kv* pk, int32_t kv_dtype, int layout, int32_t B, int32_t Hkv, int32_t D,
                  int32_t P, int32_t max_pages, int32_t extra_pages, const int32_t* lens,
                  int share_prefix, uint64_t* rng) {
  int32_t b, i, shared = 0, need = 0, next = 0;
  int32_t* perm = NULL;
  int64_t page_elems = (int64_t)P * Hkv * D;
  memset(pk, 0, sizeof *pk);
  pk->B = B; pk->Hkv = Hkv; pk->D = D; pk->P = P; pk->max_pages = max_pages;
  pk->layout = layout;
  for (b = 0; b < B; ++b) need += pages_for(lens[b], P);
  if (share_prefix && B > 1) {
    /* Sequence 1 reads all but its last page from sequence 0's table. */
    shared = pages_for(lens[1], P) - 1;
    if (shared > pages_for(lens[0], P)) shared = pages_for(lens[0], P);
    if (shared < 0) shared = 0;
  }
  pk->num_pages = need - shared + extra_pages;
  if (pk->num_pages < 1) pk->num_pages = 1;
  pk->table = (int32_t*)malloc((size_t)B * (size_t)max_pages * sizeof(int32_t));
  pk->lens = (int32_t*)malloc((size_t)B * sizeof(int32_t));
  perm = (int32_t*)malloc((size_t)pk->num_pages * sizeof(int32_t));
  if (!CHECK(pk->table && pk->lens && perm, "host allocation")) {
    free(perm);
    paged_kv_free(pk);
    return 0;
  }
  /* Page ids in shuffled order (Fisher-Yates). */
  for (i = 0; i < pk->num_pages; ++i) perm[i] = i;
  for (i = pk->num_pages - 1; i > 0; --i) {
    int32_t j = (int32_t)rand_below(rng, (uint32_t)i + 1u), tmp = perm[i];
    perm[i] = perm[j];
    perm[j] = tmp;
  }
  for (b = 0; b < B; ++b) {
    int32_t np = pages_for(lens[b], P);
    pk->lens[b] = lens[b];
    for (i = 0; i < max_pages; ++i) {
      int32_t* e = &pk->table[b * max_pages + i];
      if (i < np) {
        *e = (b == 1 && i < shared) ? pk->table[i] : perm[next++];
      } else {
        /* Entries past the pages a sequence needs are never read: garbage. */
        *e = (i % 3 == 0) ? -1 : (i % 3 == 1) ? pk->num_pages + 7 : INT32_MAX;
      }
    }
  }
  free(perm);
  switch (layout) {
    case POOL_HND: /* [pages, H_kv, P, D] */
      pk->k_sh = (int64_t)P * D; pk->k_sk = D; pk->k_sp = page_elems;
      pk->v_offset = (int64_t)pk->num_pages * page_elems;
      break;
    case POOL_COMBINED: /* [pages, 2, P, H_kv, D]: k and v halves of each page */
      pk->k_sh = D; pk->k_sk = (int64_t)Hkv * D; pk->k_sp = 2 * page_elems;
      pk->v_offset = page_elems;
      break;
    default: /* NHD [pages, P, H_kv, D] */
      pk->k_sh = D; pk->k_sk = (int64_t)Hkv * D; pk->k_sp = page_elems;
      pk->v_offset = (int64_t)pk->num_pages * page_elems;
      break;
  }
  if (!tensor_make(&pk->kv, 2 * (int64_t)pk->num_pages * page_elems, 0, kv_dtype, rng, 1.0)) {
    paged_kv_free(pk);
    return 0;
  }
  pk->dtable = (int32_t*)device_copy(pk->table, (size_t)B * (size_t)max_pages * sizeof(int32_t));
  pk->dlens = (int32_t*)device_copy(pk->lens, (size_t)B * sizeof(int32_t));
  if (!pk->dtable || !pk->dlens) {
    paged_kv_free(pk);
    return 0;
  }
  return 1;
}

void paged_kv_params(const paged_kv* pk, fd_decode_params* p) {
  p->k = pk->kv.dev;
  p->v = (const char*)pk->kv.dev + pk->v_offset * pk->kv.esize;
  p->k_stride_b = p->v_stride_b = 0;
  p->k_stride_h = p->v_stride_h = pk->k_sh;
  p->k_stride_k = p->v_stride_k = pk->k_sk;
  p->k_stride_page = p->v_stride_page = pk->k_sp;
  p->block_table = pk->dtable;
  p->block_table_stride_b = pk->max_pages;
  p->page_size = pk->P;
  p->max_pages = pk->max_pages;
  p->num_pages = pk->num_pages;
  p->seq_lens = pk->dlens;
}

void paged_kv_ref(const paged_kv* pk, fd_ref_problem* rp, fd_ref_ext* ext) {
  rp->k_stride_b = rp->v_stride_b = 0;
  rp->k_stride_h = rp->v_stride_h = pk->k_sh;
  rp->k_stride_k = rp->v_stride_k = pk->k_sk;
  ext->block_table = pk->table;
  ext->block_table_stride_b = pk->max_pages;
  ext->page_size = pk->P;
  ext->num_pages = pk->num_pages;
  ext->k_stride_page = ext->v_stride_page = pk->k_sp;
  ext->seq_lens = pk->lens;
}

const double* paged_kv_k(const paged_kv* pk) { return pk->kv.d; }
const double* paged_kv_v(const paged_kv* pk) { return pk->kv.d + pk->v_offset; }

/* ---- the gather against the reference ---------------------------------------- */

typedef struct pcase {
  int32_t P;
  int layout;
  int32_t B, H, Hkv, D;
  int32_t long_len;  /* sequence 0's length (the others: P+1, P, P-1, 1, 0) */
  int tight;         /* k_len = the longest length (else the table's capacity) */
  int ext;           /* window + sink tokens + sinks + ALiBi + soft-cap (+ batch invariant) */
} pcase;

static const char* layout_name(int layout) {
  return layout == POOL_HND ? "HND" : layout == POOL_COMBINED ? "combined" : "NHD";
}

static void gpu_paged_case(int32_t dtype, const pcase* c) {
  paged_kv pk;
  tensor q, y;
  int32_t lens[8], b, i;
  int32_t max_pages = (c->long_len + c->P - 1) / c->P + 1; /* one spare entry */
  int32_t k_len = 0;
  void* ws = NULL;
  size_t need = 0;
  float* dlse = NULL;
  float* lse_h = NULL;
  double* lse_ref = NULL;
  float* dsinks = NULL;
  float* dalibi = NULL;
  float sinks_f[64], alibi_f[64];
  double sinks_d[64], alibi_d[64];
  uint16_t *y1 = NULL, *y2 = NULL;
  double* yref = NULL;
  unsigned char* mask = NULL;
  uint64_t rng = 0xC0FFEEull + 131ull * (uint64_t)c->P + (uint64_t)c->layout + 7ull * c->D;
  fd_decode_params p = FD_DECODE_PARAMS_INIT;
  fd_ref_problem rp;
  fd_ref_ext ext;
  char what[200];
  float scale = (float)(1.0 / sqrt((double)c->D));
  int st;
  int64_t nbh = (int64_t)c->B * c->H;
  {
    int32_t pattern[6];
    pattern[0] = c->long_len; pattern[1] = c->P + 1; pattern[2] = c->P;
    pattern[3] = c->P - 1; pattern[4] = 1; pattern[5] = 0;
    for (b = 0; b < c->B; ++b) {
      lens[b] = pattern[b % 6];
      if (lens[b] > k_len) k_len = lens[b];
    }
  }
  if (!c->tight) k_len = max_pages * c->P;
  snprintf(what, sizeof what, "[%s paged] P=%d %s B=%d Hq=%d Hkv=%d D=%d long=%d k_len=%d%s",
           dtype == FD_DTYPE_BF16 ? "bf16" : "f16", (int)c->P, layout_name(c->layout), (int)c->B,
           (int)c->H, (int)c->Hkv, (int)c->D, (int)c->long_len, (int)k_len,
           c->ext ? " +window+sink_tokens+sinks+alibi+soft_cap+invariant" : "");
  memset(&pk, 0, sizeof pk);
  memset(&q, 0, sizeof q);
  memset(&y, 0, sizeof y);
  if (!paged_kv_make(&pk, dtype, c->layout, c->B, c->Hkv, c->D, c->P, max_pages, 3, lens, 1,
                     &rng) ||
      !tensor_make(&q, nbh * c->D, 0, dtype, &rng, 2.0) ||
      !tensor_make(&y, nbh * c->D, 0, dtype, NULL, 0.0)) {
    goto done;
  }
  for (i = 0; i < c->H && i < 64; ++i) {
    sinks_f[i] = 0.5f * (float)(i % 7) - 1.0f;
    alibi_f[i] = (float)pow(2.0, -8.0 * (i + 1) / (double)c->H);
    sinks_d[i] = sinks_f[i];
    alibi_d[i] = alibi_f[i];
  }
  dsinks = (float*)device_copy(sinks_f, sizeof sinks_f);
  dalibi = (float*)device_copy(alibi_f, sizeof alibi_f);
  if (!dsinks || !dalibi || !CUDA_OK(cudaMalloc((void**)&dlse, (size_t)nbh * sizeof(float)))) {
    goto done;
  }
  p.dtype = dtype;
  p.q = q.dev;
  p.y = y.dev;
  p.batch_size = c->B; p.num_heads = c->H; p.num_kv_heads = c->Hkv;
  p.k_len = k_len; p.head_dim = c->D; p.scale = scale;
  p.q_stride_b = (int64_t)c->H * c->D; p.q_stride_h = c->D;
  p.y_stride_b = (int64_t)c->H * c->D; p.y_stride_h = c->D;
  p.lse = dlse; p.lse_stride_b = c->H; p.lse_stride_h = 1;
  paged_kv_params(&pk, &p);
  memset(&rp, 0, sizeof rp);
  memset(&ext, 0, sizeof ext);
  rp.batch_size = c->B; rp.num_heads = c->H; rp.num_kv_heads = c->Hkv; rp.k_len = k_len;
  rp.head_dim = c->D; rp.scale = (double)scale;
  rp.q_stride_b = p.q_stride_b; rp.q_stride_h = p.q_stride_h;
  rp.y_stride_b = p.y_stride_b; rp.y_stride_h = p.y_stride_h;
  paged_kv_ref(&pk, &rp, &ext);
  if (c->ext) {
    p.window_size = ext.window_size = 37;
    p.sink_tokens = ext.sink_tokens = 4;
    p.sinks = dsinks; ext.sinks = sinks_d;
    p.alibi_slopes = dalibi; ext.alibi = alibi_d;
    p.logits_soft_cap = 20.0f; ext.soft_cap = 20.0;
    p.flags = FD_FLAG_BATCH_INVARIANT;
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
  {
    fd_launch_plan plan = FD_LAUNCH_PLAN_INIT;
    fd_kernel_cell_info info = FD_KERNEL_CELL_INFO_INIT;
    st = fd_decode_plan(&p, &plan);
    if (CHECK(st == FD_STATUS_SUCCESS, "%s: fd_decode_plan = %d (%s)", what, st,
              fd_last_error_message())) {
      CHECK(fd_kernel_cell_info_get(plan.cell_index, &info) == FD_STATUS_SUCCESS &&
                info.paged == 1 && info.kv_dtype == dtype && info.head_dim >= c->D,
            "%s: plan runs cell %d (paged %d, kv %d, bucket %d)", what, (int)plan.cell_index,
            (int)info.paged, (int)info.kv_dtype, (int)info.head_dim);
    }
  }
  y1 = (uint16_t*)malloc(tensor_bytes(&y));
  y2 = (uint16_t*)malloc(tensor_bytes(&y));
  yref = (double*)calloc((size_t)y.n, sizeof(double));
  lse_h = (float*)malloc((size_t)nbh * sizeof(float));
  lse_ref = (double*)malloc((size_t)nbh * sizeof(double));
  mask = rows_mask(c->B, c->H, c->D, p.y_stride_b, p.y_stride_h, y.n, 0);
  if (!CHECK(y1 && y2 && yref && lse_h && lse_ref && mask, "host allocation")) goto done;
  fd_reference_decode(&rp, q.d, paged_kv_k(&pk), paged_kv_v(&pk), &ext, yref, lse_ref, c->H, 1);
  for (i = 0; i < 2; ++i) {
    if (!poison(&y, NULL) || !CUDA_OK(cudaMemset(dlse, 0xFF, (size_t)nbh * sizeof(float)))) {
      goto done;
    }
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
  if (dsinks) cudaFree(dsinks);
  if (dalibi) cudaFree(dalibi);
  paged_kv_free(&pk);
  tensor_free(&q); tensor_free(&y);
  free(y1); free(y2); free(yref); free(lse_h); free(lse_ref); free(mask);
}

/* ---- device data the host cannot check ------------------------------------------ */

/* Rows: 0 fine; 1 a page id == num_pages among its pages; 2 a page id -1 in
 * its last needed entry; 3 a length k_len + 1; 4 a length -1; 5 length 0 with
 * garbage in entry 0 (no page needed: a valid empty row). Exactly rows 1-4
 * are NaN (y and lse), the others right; y and lse are poisoned with a finite
 * pattern first, so a NaN is the kernel's. */
static void gpu_paged_bad_rows(int32_t dtype, int32_t len) {
  enum { B = 6, H = 8, HKV = 2, D = 64, P = 16 };
  paged_kv pk;
  tensor q, y;
  int32_t lens[B];
  int32_t max_pages = (len + P - 1) / P;
  int32_t k_len = max_pages * P, b, i;
  void* ws = NULL;
  size_t need = 0;
  float* dlse = NULL;
  float lse_h[B * H];
  double lse_ref[B * H];
  uint16_t* yb = NULL;
  double* yref = NULL;
  uint64_t rng = 99991 + (uint64_t)len;
  fd_decode_params p = FD_DECODE_PARAMS_INIT;
  fd_ref_problem rp;
  fd_ref_ext ext;
  char what[128];
  int st;
  for (b = 0; b < B; ++b) lens[b] = b == 5 ? 0 : len;
  snprintf(what, sizeof what, "[%s paged] bad page ids and lengths, length %d",
           dtype == FD_DTYPE_BF16 ? "bf16" : "f16", (int)len);
  memset(&pk, 0, sizeof pk);
  memset(&q, 0, sizeof q);
  memset(&y, 0, sizeof y);
  if (!paged_kv_make(&pk, dtype, POOL_NHD, B, HKV, D, P, max_pages, 0, lens, 0, &rng) ||
      !tensor_make(&q, B * H * D, 0, dtype, &rng, 2.0) ||
      !tensor_make(&y, B * H * D, 0, dtype, NULL, 0.0) ||
      !CUDA_OK(cudaMalloc((void**)&dlse, sizeof lse_h))) {
    goto done;
  }
  pk.table[1 * max_pages + (max_pages > 1 ? 1 : 0)] = pk.num_pages;
  pk.table[2 * max_pages + max_pages - 1] = -1;
  pk.lens[3] = k_len + 1;
  pk.lens[4] = -1;
  pk.table[5 * max_pages + 0] = -100;
  if (!paged_kv_upload_meta(&pk, NULL)) goto done;
  p.dtype = dtype;
  p.q = q.dev; p.y = y.dev;
  p.batch_size = B; p.num_heads = H; p.num_kv_heads = HKV; p.k_len = k_len; p.head_dim = D;
  p.scale = 0.125f;
  p.q_stride_b = p.y_stride_b = H * D;
  p.q_stride_h = p.y_stride_h = D;
  p.lse = dlse; p.lse_stride_b = H; p.lse_stride_h = 1;
  paged_kv_params(&pk, &p);
  st = fd_decode_workspace_size(&p, &need);
  if (!CHECK(st == FD_STATUS_SUCCESS, "%s: workspace size %d", what, st)) goto done;
  if (need && !CUDA_OK(cudaMalloc(&ws, need))) { ws = NULL; goto done; }
  if (need && !CUDA_OK(cudaMemset(ws, 0xFF, need))) goto done;
  p.workspace = ws;
  p.workspace_bytes = need;
  memset(&rp, 0, sizeof rp);
  memset(&ext, 0, sizeof ext);
  rp.batch_size = B; rp.num_heads = H; rp.num_kv_heads = HKV; rp.k_len = k_len; rp.head_dim = D;
  rp.scale = 0.125;
  rp.q_stride_b = rp.y_stride_b = H * D;
  rp.q_stride_h = rp.y_stride_h = D;
  paged_kv_ref(&pk, &rp, &ext);
  yb = (uint16_t*)malloc(tensor_bytes(&y));
  yref = (double*)calloc((size_t)y.n, sizeof(double));
  if (!CHECK(yb && yref, "host allocation")) goto done;
  fd_reference_decode(&rp, q.d, paged_kv_k(&pk), paged_kv_v(&pk), &ext, yref, lse_ref, H, 1);
  for (b = 0; b < B; ++b) {
    CHECK(fd_reference_row_is_nan(&rp, &ext, b) == (b >= 1 && b <= 4),
          "%s: the reference's NaN rows are not rows 1-4 (row %d)", what, (int)b);
  }
  /* A finite poison: 0x3C3C in every 16-bit element and float. */
  if (!CUDA_OK(cudaMemset(y.base, 0x3C, tensor_bytes(&y))) ||
      !CUDA_OK(cudaMemset(dlse, 0x3C, sizeof lse_h))) {
    goto done;
  }
  st = fd_decode(&p);
  if (!CHECK(st == FD_STATUS_SUCCESS, "%s: fd_decode = %d (%s): device data is not a host "
             "refusal", what, st, fd_last_error_message())) {
    goto done;
  }
  if (!download(&y, yb, NULL) ||
      !CUDA_OK(cudaMemcpy(lse_h, dlse, sizeof lse_h, cudaMemcpyDeviceToHost))) {
    goto done;
  }
  for (b = 0; b < B; ++b) {
    int nan_row = b >= 1 && b <= 4;
    int64_t not_nan = 0, nonfinite = 0;
    double num = 0.0, den = 0.0;
    for (i = 0; i < H * D; ++i) {
      double g = from_bits(dtype, yb[b * H * D + i]), r = yref[b * H * D + i];
      if (nan_row) {
        not_nan += !isnan(g);
      } else if (!isfinite(g)) {
        ++nonfinite;
      } else {
        num += (g - r) * (g - r);
        den += r * r;
      }
    }
    if (nan_row) {
      CHECK(not_nan == 0, "%s: row %d must be NaN, %ld elements are not", what, (int)b,
            (long)not_nan);
      for (i = 0; i < H; ++i) {
        CHECK(isnan(lse_h[b * H + i]), "%s: lse[%d, %d] = %g must be NaN", what, (int)b, (int)i,
              (double)lse_h[b * H + i]);
      }
    } else {
      CHECK(nonfinite == 0, "%s: row %d has %ld non-finite elements", what, (int)b,
            (long)nonfinite);
      CHECK(den == 0.0 ? num == 0.0 : sqrt(num / den) <= y_tolerance(dtype),
            "%s: row %d relative error %.3e", what, (int)b, den > 0 ? sqrt(num / den) : num);
      compare_lse(what, lse_h + b * H, lse_ref + b * H, H);
    }
  }
done:
  if (ws) cudaFree(ws);
  if (dlse) cudaFree(dlse);
  paged_kv_free(&pk);
  tensor_free(&q); tensor_free(&y);
  free(yb); free(yref);
}

/* ---- one graph for every decode step ------------------------------------------- */

/* B=4 sequences in a table sized for 1024 keys each. The decode (with lse) is
 * captured once; each step writes the new keys' K/V into their pages, appends
 * a page to a sequence's table row when it needs one and raises seq_lens, all
 * on the device in stream order, then replays the graph and checks y and lse
 * against the reference of that step. */
static void gpu_paged_graph(int32_t dtype) {
  enum { B = 4, H = 16, HKV = 4, D = 128, P = 16, MAX_PAGES = 64, STEPS = 6 };
  const int32_t start[B] = {100, 1, 17, 500};
  const int32_t grow[B] = {37, 120, 64, 80};
  paged_kv pk;
  tensor q, y;
  int32_t lens[B], b, step, i;
  int32_t next_page;
  unsigned char* used = NULL;
  void* ws = NULL;
  size_t need = 0;
  float* dlse = NULL;
  float lse_h[B * H];
  double lse_ref[B * H];
  uint16_t* yb = NULL;
  double* yref = NULL;
  unsigned char* mask = NULL;
  uint64_t rng = 2024;
  cudaStream_t stream = NULL;
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  fd_decode_params p = FD_DECODE_PARAMS_INIT;
  fd_ref_problem rp;
  fd_ref_ext ext;
  const char* tag = dtype == FD_DTYPE_BF16 ? "bf16" : "f16";
  int st;
  size_t esize = 2;
  for (b = 0; b < B; ++b) lens[b] = start[b];
  memset(&pk, 0, sizeof pk);
  memset(&q, 0, sizeof q);
  memset(&y, 0, sizeof y);
  /* Room for every page the sequences will reach: extra pages in the pool,
   * handed out in pool order after the shuffled initial ones. */
  if (!paged_kv_make(&pk, dtype, POOL_NHD, B, HKV, D, P, MAX_PAGES, B * MAX_PAGES, lens, 0,
                     &rng) ||
      !tensor_make(&q, B * H * D, 0, dtype, &rng, 2.0) ||
      !tensor_make(&y, B * H * D, 0, dtype, NULL, 0.0) ||
      !CUDA_OK(cudaMalloc((void**)&dlse, sizeof lse_h)) ||
      !CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking))) {
    goto done;
  }
  /* Pages not in any table yet, handed out from the highest id down. */
  used = (unsigned char*)calloc((size_t)pk.num_pages, 1);
  if (!CHECK(used != NULL, "host allocation")) goto done;
  for (b = 0; b < B; ++b)
    for (i = 0; i < (lens[b] + P - 1) / P; ++i) used[pk.table[b * MAX_PAGES + i]] = 1;
  next_page = pk.num_pages - 1;
  p.dtype = dtype;
  p.q = q.dev; p.y = y.dev;
  p.batch_size = B; p.num_heads = H; p.num_kv_heads = HKV; p.k_len = MAX_PAGES * P;
  p.head_dim = D; p.scale = (float)(1.0 / sqrt((double)D));
  p.q_stride_b = p.y_stride_b = H * D;
  p.q_stride_h = p.y_stride_h = D;
  p.lse = dlse; p.lse_stride_b = H; p.lse_stride_h = 1;
  p.stream = stream;
  paged_kv_params(&pk, &p);
  st = fd_decode_workspace_size(&p, &need);
  if (!CHECK(st == FD_STATUS_SUCCESS, "[%s] paged graph: workspace size %d", tag, st)) goto done;
  if (need && !CUDA_OK(cudaMalloc(&ws, need))) { ws = NULL; goto done; }
  if (need && !CUDA_OK(cudaMemset(ws, 0xFF, need))) goto done;
  p.workspace = ws;
  p.workspace_bytes = need;
  memset(&rp, 0, sizeof rp);
  memset(&ext, 0, sizeof ext);
  rp.batch_size = B; rp.num_heads = H; rp.num_kv_heads = HKV; rp.k_len = MAX_PAGES * P;
  rp.head_dim = D; rp.scale = (double)p.scale;
  rp.q_stride_b = rp.y_stride_b = H * D;
  rp.q_stride_h = rp.y_stride_h = D;
  paged_kv_ref(&pk, &rp, &ext);
  yb = (uint16_t*)malloc(tensor_bytes(&y));
  yref = (double*)calloc((size_t)y.n, sizeof(double));
  mask = rows_mask(B, H, D, H * D, D, y.n, 0);
  if (!CHECK(yb && yref && mask, "host allocation")) goto done;

  /* An eager call first (the library prepares its kernels once), then the capture. */
  st = fd_decode(&p);
  if (!CHECK(st == FD_STATUS_SUCCESS, "[%s] paged graph: eager fd_decode = %d (%s)", tag, st,
             fd_last_error_message()) || !sync_stream(stream, "eager")) {
    goto done;
  }
  if (!CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal))) goto done;
  st = fd_decode(&p);
  {
    cudaError_t e = cudaStreamEndCapture(stream, &graph);
    CHECK(st == FD_STATUS_SUCCESS, "[%s] paged graph: fd_decode under capture = %d (%s)", tag, st,
          fd_last_error_message());
    if (!CHECK(e == cudaSuccess && graph != NULL, "[%s] end capture: %s", tag,
               cudaGetErrorString(e))) {
      graph = NULL;
      goto done;
    }
  }
  if (st != FD_STATUS_SUCCESS) goto done;
  if (!CUDA_OK(cudaGraphInstantiate(&exec, graph, 0))) { exec = NULL; goto done; }

  for (step = 0; step <= STEPS; ++step) {
    char what[96];
    snprintf(what, sizeof what, "[%s] paged graph step %d (lengths %d %d %d %d)", tag,
             (int)step, (int)pk.lens[0], (int)pk.lens[1], (int)pk.lens[2], (int)pk.lens[3]);
    if (step > 0) {
      for (b = 0; b < B; ++b) {
        int32_t old_len = pk.lens[b], new_len = old_len + grow[b], j;
        if (new_len > MAX_PAGES * P) new_len = MAX_PAGES * P;
        for (j = old_len; j < new_len; ++j) {
          int32_t entry = j / P;
          int64_t page, at;
          if (j % P == 0) { /* a new page for this sequence */
            while (next_page >= 0 && used[next_page]) --next_page;
            if (!CHECK(next_page >= 0, "[%s] paged graph: pool exhausted", tag)) goto done;
            used[next_page] = 1;
            pk.table[b * MAX_PAGES + entry] = next_page;
            if (!CUDA_OK(cudaMemcpyAsync(pk.dtable + b * MAX_PAGES + entry,
                                         pk.table + b * MAX_PAGES + entry, sizeof(int32_t),
                                         cudaMemcpyHostToDevice, stream))) {
              goto done;
            }
          }
          page = pk.table[b * MAX_PAGES + entry];
          /* The new key's K and V rows (all KV heads: contiguous in NHD pages). */
          at = page * pk.k_sp + (int64_t)(j % P) * pk.k_sk;
          for (i = 0; i < HKV * D; ++i) {
            int64_t kk = at + i, vv = pk.v_offset + at + i;
            pk.kv.h[kk] = to_bits(dtype, fd_test_uniform(&rng));
            pk.kv.d[kk] = from_bits(dtype, pk.kv.h[kk]);
            pk.kv.h[vv] = to_bits(dtype, fd_test_uniform(&rng));
            pk.kv.d[vv] = from_bits(dtype, pk.kv.h[vv]);
          }
          if (!CUDA_OK(cudaMemcpyAsync((char*)pk.kv.base + (size_t)at * esize, pk.kv.h + at,
                                       (size_t)HKV * D * esize, cudaMemcpyHostToDevice,
                                       stream)) ||
              !CUDA_OK(cudaMemcpyAsync((char*)pk.kv.base + (size_t)(pk.v_offset + at) * esize,
                                       pk.kv.h + pk.v_offset + at, (size_t)HKV * D * esize,
                                       cudaMemcpyHostToDevice, stream))) {
            goto done;
          }
        }
        pk.lens[b] = new_len;
      }
      if (!CUDA_OK(cudaMemcpyAsync(pk.dlens, pk.lens, sizeof lens, cudaMemcpyHostToDevice,
                                   stream))) {
        goto done;
      }
      snprintf(what, sizeof what, "[%s] paged graph step %d (lengths %d %d %d %d)", tag,
               (int)step, (int)pk.lens[0], (int)pk.lens[1], (int)pk.lens[2], (int)pk.lens[3]);
    }
    if (!poison(&y, stream) ||
        !CUDA_OK(cudaMemsetAsync(dlse, 0xFF, sizeof lse_h, stream)) ||
        !CUDA_OK(cudaGraphLaunch(exec, stream)) || !download(&y, yb, stream) ||
        !CUDA_OK(cudaMemcpy(lse_h, dlse, sizeof lse_h, cudaMemcpyDeviceToHost))) {
      goto done;
    }
    /* The host copies above are synchronous w.r.t. the stream's work by now. */
    for (i = 0; i < (int32_t)y.n; ++i) yref[i] = 0.0;
    fd_reference_decode(&rp, q.d, paged_kv_k(&pk), paged_kv_v(&pk), &ext, yref, lse_ref, H, 1);
    compare(what, dtype, yb, yref, mask, y.n, y_tolerance(dtype));
    compare_lse(what, lse_h, lse_ref, B * H);
  }
done:
  if (stream) cudaStreamSynchronize(stream);
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  if (stream) cudaStreamDestroy(stream);
  if (ws) cudaFree(ws);
  if (dlse) cudaFree(dlse);
  paged_kv_free(&pk);
  tensor_free(&q); tensor_free(&y);
  free(yb); free(yref); free(mask); free(used);
}

void fd_test_gpu_paged(int32_t dtype) {
  pcase cases[] = {
    {1, POOL_NHD, 4, 8, 2, 64, 300, 0, 0},
    {1, POOL_HND, 3, 8, 8, 128, 700, 1, 1},
    {3, POOL_HND, 5, 8, 8, 72, 500, 0, 0},
    {3, POOL_NHD, 6, 8, 1, 7, 250, 1, 1},
    {16, POOL_NHD, 6, 32, 8, 128, 4100, 0, 0},
    {16, POOL_HND, 6, 32, 8, 128, 4100, 1, 1},
    {16, POOL_COMBINED, 3, 8, 2, 128, 1500, 0, 0},
    {16, POOL_HND, 3, 16, 8, 256, 1000, 0, 1},
    {17, POOL_NHD, 4, 8, 1, 128, 2000, 0, 0},
    {17, POOL_HND, 5, 16, 4, 200, 900, 1, 1},
    {64, POOL_HND, 3, 8, 2, 64, 5000, 0, 0},
    {64, POOL_COMBINED, 6, 16, 2, 96, 3000, 1, 1},
    {256, POOL_NHD, 2, 16, 8, 128, 3000, 0, 0},
    {256, POOL_HND, 6, 8, 8, 200, 700, 1, 1},
  };
  size_t i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; ++i) gpu_paged_case(dtype, &cases[i]);
  gpu_paged_bad_rows(dtype, 100);
  gpu_paged_bad_rows(dtype, 3000); /* split: the merge keeps the NaN rows */
  gpu_paged_graph(dtype);
}

#else

/* ISO C needs a declaration in every translation unit. */
typedef int fd_test_gpu_paged_unused;

#endif
