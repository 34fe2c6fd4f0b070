/* Double-precision references of the decode (every extension, paged gathers,
 * dequantisation scales, the NaN rows of bad device data) and of merge_states. */
#include "fd_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int is_paged(const fd_ref_ext* ext) { return ext != NULL && ext->block_table != NULL; }

/* The length batch b attends over (contiguous: clamped into [0, k_len]). */
static int32_t length_of(const fd_ref_problem* p, const fd_ref_ext* ext, int32_t b) {
  int32_t len = (ext && ext->seq_lens) ? ext->seq_lens[b] : p->k_len;
  if (!is_paged(ext)) {
    if (len < 0) len = 0;
    if (len > p->k_len) len = p->k_len;
  }
  return len;
}

int fd_reference_row_is_nan(const fd_ref_problem* p, const fd_ref_ext* ext, int32_t b) {
  int32_t len, pages, i;
  if (!is_paged(ext)) return 0;
  len = length_of(p, ext, b);
  if (len < 0 || len > p->k_len) return 1;
  pages = (len + ext->page_size - 1) / ext->page_size;
  for (i = 0; i < pages; ++i) {
    int32_t id = ext->block_table[b * ext->block_table_stride_b + i];
    if (id < 0 || id >= ext->num_pages) return 1;
  }
  return 0;
}

/* Offset of key j of KV head h of batch b in a cache with these strides. */
static int64_t key_offset(const fd_ref_ext* ext, int32_t b, int32_t h, int32_t j, int64_t sb,
                          int64_t sh, int64_t sk, int64_t spage) {
  if (is_paged(ext)) {
    int64_t page = ext->block_table[b * ext->block_table_stride_b + j / ext->page_size];
    return page * spage + h * sh + (int64_t)(j % ext->page_size) * sk;
  }
  return (int64_t)b * sb + h * sh + (int64_t)j * sk;
}

static int attended(const fd_ref_ext* ext, int32_t j, int32_t len) {
  if (ext == NULL || ext->window_size <= 0) return 1;
  return j >= len - ext->window_size || j < ext->sink_tokens;
}

void fd_reference_decode(const fd_ref_problem* p, const double* q, const double* k,
                         const double* v, const fd_ref_ext* ext, double* y, double* lse,
                         int64_t lse_stride_b, int64_t lse_stride_h) {
  int32_t group = p->num_heads / p->num_kv_heads;
  int32_t D = p->head_dim;
  double* s = (double*)malloc(sizeof(double) * (size_t)(p->k_len > 0 ? p->k_len : 1));
  double* acc = (double*)malloc(sizeof(double) * (size_t)D);
  int32_t b, h, j, d;
  if (s == NULL || acc == NULL) {
    CHECK(0, "reference: out of host memory");
    free(s);
    free(acc);
    return;
  }
  for (b = 0; b < p->batch_size; ++b) {
    int32_t len = length_of(p, ext, b);
    int nan_row = fd_reference_row_is_nan(p, ext, b);
    for (h = 0; h < p->num_heads; ++h) {
      int32_t kvh = h / group;
      const double* qr = q + b * p->q_stride_b + h * p->q_stride_h;
      double* yr = y + b * p->y_stride_b + h * p->y_stride_h;
      double m = -INFINITY, l = 0.0;
      int has_sink = ext && ext->sinks;
      double ks = 1.0, vs = 1.0;
      if (ext && ext->k_scales) ks = ext->k_scales[kvh];
      else if (ext && ext->k_scale != 0.0) ks = ext->k_scale;
      if (ext && ext->v_scales) vs = ext->v_scales[kvh];
      else if (ext && ext->v_scale != 0.0) vs = ext->v_scale;
      if (nan_row) {
        for (d = 0; d < D; ++d) yr[d] = NAN;
        if (lse != NULL) lse[b * lse_stride_b + h * lse_stride_h] = NAN;
        continue;
      }
      for (d = 0; d < D; ++d) acc[d] = 0.0;
      for (j = 0; j < len; ++j) {
        const double* kr;
        double dot = 0.0, logit;
        if (!attended(ext, j, len)) continue;
        kr = k + key_offset(ext, b, kvh, j, p->k_stride_b, p->k_stride_h, p->k_stride_k,
                            ext ? ext->k_stride_page : 0);
        for (d = 0; d < D; ++d) dot += qr[d] * (kr[d] * ks);
        logit = p->scale * dot;
        if (ext && ext->soft_cap > 0.0) logit = ext->soft_cap * tanh(logit / ext->soft_cap);
        if (ext && ext->alibi) logit += ext->alibi[h] * (double)(j - (len - 1));
        s[j] = logit;
        if (logit > m) m = logit;
      }
      if (has_sink && ext->sinks[h] > m) m = ext->sinks[h];
      for (j = 0; j < len; ++j) {
        const double* vr;
        double w;
        if (!attended(ext, j, len)) continue;
        vr = v + key_offset(ext, b, kvh, j, p->v_stride_b, p->v_stride_h, p->v_stride_k,
                            ext ? ext->v_stride_page : 0);
        w = exp(s[j] - m);
        l += w;
        for (d = 0; d < D; ++d) acc[d] += w * (vr[d] * vs);
      }
      if (has_sink) l += exp(ext->sinks[h] - m);
      for (d = 0; d < D; ++d) yr[d] = l > 0.0 ? acc[d] / l : 0.0;
      if (lse != NULL) {
        lse[b * lse_stride_b + h * lse_stride_h] = l > 0.0 ? m + log(l) : -INFINITY;
      }
    }
  }
  free(s);
  free(acc);
}

void fd_reference_merge(const fd_ref_merge* r, const double* states, const double* lse,
                        double* y, double* lse_out) {
  int32_t b, h, i, d;
  for (b = 0; b < r->batch_size; ++b) {
    for (h = 0; h < r->num_heads; ++h) {
      double* yr = y + b * r->y_stride_b + h * r->y_stride_h;
      double m = -INFINITY, l = 0.0, out;
      int nan = 0;
      for (i = 0; i < r->num_states; ++i) {
        double x = lse[i * r->lse_stride_n + b * r->lse_stride_b + h * r->lse_stride_h];
        if (isnan(x)) nan = 1;
        else if (x > m) m = x;
      }
      for (d = 0; d < r->head_dim; ++d) yr[d] = 0.0;
      if (nan) {
        for (d = 0; d < r->head_dim; ++d) yr[d] = NAN;
        out = NAN;
      } else if (m == -INFINITY) {
        out = -INFINITY;
      } else {
        for (i = 0; i < r->num_states; ++i) {
          double x = lse[i * r->lse_stride_n + b * r->lse_stride_b + h * r->lse_stride_h];
          const double* sr = states + i * r->state_stride_n + b * r->state_stride_b +
                             h * r->state_stride_h;
          double w = exp(x - m);
          l += w;
          for (d = 0; d < r->head_dim; ++d) yr[d] += w * sr[d];
        }
        for (d = 0; d < r->head_dim; ++d) yr[d] /= l;
        out = m + log(l);
      }
      if (lse_out != NULL) lse_out[b * r->lse_out_stride_b + h * r->lse_out_stride_h] = out;
    }
  }
}

/* The reference checked on cases with a closed-form answer, so a GPU mismatch
 * points at the library, not at the test. */
void fd_test_reference_selftest(void) {
  /* B=1, H=2, Hkv=1, K=3, D=2; contiguous. */
  fd_ref_problem p;
  double q[4] = {1.0, 0.0, 0.0, 1.0};
  double k[6] = {0.0, 0.0, log(3.0), 0.0, 0.0, 0.0};
  double v[6] = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0};
  double y[4], lse[2];
  fd_ref_ext ext;
  memset(&p, 0, sizeof p);
  p.batch_size = 1; p.num_heads = 2; p.num_kv_heads = 1; p.k_len = 3; p.head_dim = 2;
  p.q_stride_b = 4; p.q_stride_h = 2;
  p.k_stride_b = 6; p.k_stride_h = 6; p.k_stride_k = 2;
  p.v_stride_b = 6; p.v_stride_h = 6; p.v_stride_k = 2;
  p.y_stride_b = 4; p.y_stride_h = 2;
  p.scale = 1.0;
  fd_reference_decode(&p, q, k, v, NULL, y, lse, 2, 1);
  /* head 0: logits 0, ln3, 0 -> weights 1/5, 3/5, 1/5; head 1: all 0 -> 1/3 each. */
  CHECK(fabs(y[0] - (1.0 + 9.0 + 5.0) / 5.0) < 1e-12 && fabs(y[1] - (2.0 + 12.0 + 6.0) / 5.0) < 1e-12,
        "reference head 0: %g %g", y[0], y[1]);
  CHECK(fabs(y[2] - 3.0) < 1e-12 && fabs(y[3] - 4.0) < 1e-12, "reference head 1: %g %g", y[2], y[3]);
  CHECK(fabs(lse[0] - log(5.0)) < 1e-12 && fabs(lse[1] - log(3.0)) < 1e-12, "reference lse %g %g",
        lse[0], lse[1]);
  memset(&ext, 0, sizeof ext);
  ext.window_size = 1; /* only the last key */
  fd_reference_decode(&p, q, k, v, &ext, y, lse, 2, 1);
  CHECK(y[0] == 5.0 && y[1] == 6.0 && y[2] == 5.0 && lse[0] == 0.0, "reference window_size=1");
  {
    int32_t len0 = 0;
    double sink[2] = {0.0, 0.0};
    ext.window_size = 0;
    ext.seq_lens = &len0;
    fd_reference_decode(&p, q, k, v, &ext, y, lse, 2, 1);
    CHECK(y[0] == 0.0 && y[3] == 0.0 && isinf(lse[1]) && lse[1] < 0, "reference seq_len 0");
    ext.seq_lens = NULL;
    ext.sinks = sink; /* head 1: four equal logits, the sink takes a quarter */
    fd_reference_decode(&p, q, k, v, &ext, y, lse, 2, 1);
    CHECK(fabs(y[2] - 2.25) < 1e-12 && fabs(lse[1] - log(4.0)) < 1e-12, "reference sink: %g",
          y[2]);
    ext.sinks = NULL;
  }
  {
    /* Sink tokens under a one-key window: keys 0 and 2 attend. Head 1 (all
     * logits 0): the mean of v rows 0 and 2. Without a window they change nothing. */
    ext.window_size = 1;
    ext.sink_tokens = 1;
    fd_reference_decode(&p, q, k, v, &ext, y, lse, 2, 1);
    CHECK(fabs(y[2] - 3.0) < 1e-12 && fabs(y[3] - 4.0) < 1e-12 && fabs(lse[1] - log(2.0)) < 1e-12,
          "reference sink_tokens=1 window=1: %g %g", y[2], y[3]);
    ext.window_size = 0;
    ext.sink_tokens = 2;
    fd_reference_decode(&p, q, k, v, &ext, y, lse, 2, 1);
    CHECK(fabs(y[2] - 3.0) < 1e-12 && fabs(lse[1] - log(3.0)) < 1e-12,
          "reference sink_tokens without a window changed the result");
    ext.sink_tokens = 0;
  }
  {
    /* Per-KV-head scale 0.5 on v halves y; per-tensor scale 2 on k doubles the
     * logits of head 0 (logits 0, 2 ln3, 0 -> weights 1/11, 9/11, 1/11). */
    double half = 0.5;
    ext.v_scales = &half;
    ext.k_scale = 2.0;
    fd_reference_decode(&p, q, k, v, &ext, y, lse, 2, 1);
    CHECK(fabs(y[0] - 0.5 * (1.0 + 27.0 + 5.0) / 11.0) < 1e-12 && fabs(y[2] - 1.5) < 1e-12,
          "reference scales: %g %g", y[0], y[2]);
    ext.v_scales = NULL;
    ext.k_scale = 0.0;
  }
  {
    /* Paged: the same 3 keys in a pool of 4 pages of 2 keys, held in pages 3
     * and 1 (reverse order), give the contiguous answer; a bad page id among
     * the pages needed, or a length above k_len, makes the row NaN. */
    double pool_k[8 * 2], pool_v[8 * 2], yc[4], lc[2];
    int32_t table[4] = {3, 1, -5, 99}; /* entries 2, 3 unused: never read */
    int32_t len3 = 3, len4 = 4;
    int32_t i2;
    memset(pool_k, 0, sizeof pool_k);
    memset(pool_v, 0, sizeof pool_v);
    for (i2 = 0; i2 < 3; ++i2) {
      int32_t page = table[i2 / 2], row = i2 % 2;
      pool_k[(page * 2 + row) * 2 + 0] = k[i2 * 2 + 0];
      pool_k[(page * 2 + row) * 2 + 1] = k[i2 * 2 + 1];
      pool_v[(page * 2 + row) * 2 + 0] = v[i2 * 2 + 0];
      pool_v[(page * 2 + row) * 2 + 1] = v[i2 * 2 + 1];
    }
    fd_reference_decode(&p, q, k, v, NULL, yc, lc, 2, 1);
    memset(&ext, 0, sizeof ext);
    ext.block_table = table;
    ext.block_table_stride_b = 4;
    ext.page_size = 2;
    ext.num_pages = 4;
    ext.k_stride_page = 4;
    ext.v_stride_page = 4;
    ext.seq_lens = &len3;
    fd_reference_decode(&p, q, pool_k, pool_v, &ext, y, lse, 2, 1);
    CHECK(fabs(y[0] - yc[0]) < 1e-12 && fabs(y[1] - yc[1]) < 1e-12 && fabs(y[3] - yc[3]) < 1e-12 &&
              fabs(lse[0] - lc[0]) < 1e-12,
          "reference paged gather differs from contiguous: %g vs %g", y[0], yc[0]);
    table[1] = 4; /* == num_pages: outside the pool */
    fd_reference_decode(&p, q, pool_k, pool_v, &ext, y, lse, 2, 1);
    CHECK(isnan(y[0]) && isnan(y[3]) && isnan(lse[1]), "reference: bad page id must give NaN");
    table[1] = 1;
    ext.seq_lens = &len4; /* > k_len = 3 */
    fd_reference_decode(&p, q, pool_k, pool_v, &ext, y, lse, 2, 1);
    CHECK(isnan(y[0]) && isnan(lse[0]), "reference: a length above k_len must give NaN");
  }
  {
    /* Merge: two halves of head 0's keys give the whole; -inf weighs nothing;
     * all -inf gives 0 and -inf; NaN poisons. */
    fd_ref_merge r;
    double st[2 * 2], ls[2], ym[2], lo;
    memset(&r, 0, sizeof r);
    r.num_states = 2; r.batch_size = 1; r.num_heads = 1; r.head_dim = 2;
    r.state_stride_n = 2; r.lse_stride_n = 1;
    st[0] = 1.0; st[1] = 2.0; ls[0] = log(1.0);        /* key 0 alone: weight 1 */
    st[2] = (9.0 + 5.0) / 4.0; st[3] = (12.0 + 6.0) / 4.0; ls[1] = log(4.0); /* keys 1, 2 */
    fd_reference_merge(&r, st, ls, ym, &lo);
    CHECK(fabs(ym[0] - 3.0) < 1e-12 && fabs(ym[1] - 4.0) < 1e-12 && fabs(lo - log(5.0)) < 1e-12,
          "reference merge of halves: %g %g %g", ym[0], ym[1], lo);
    ls[1] = -INFINITY;
    fd_reference_merge(&r, st, ls, ym, &lo);
    CHECK(ym[0] == 1.0 && ym[1] == 2.0 && lo == 0.0, "reference merge with a -inf state");
    ls[0] = -INFINITY;
    fd_reference_merge(&r, st, ls, ym, &lo);
    CHECK(ym[0] == 0.0 && ym[1] == 0.0 && isinf(lo) && lo < 0, "reference merge, all -inf");
    ls[0] = NAN;
    fd_reference_merge(&r, st, ls, ym, &lo);
    CHECK(isnan(ym[0]) && isnan(lo), "reference merge with a NaN lse");
  }
}
