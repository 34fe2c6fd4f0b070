/* Double-precision reference decode. */
#include "fd_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    int32_t len = (ext && ext->seq_lens) ? ext->seq_lens[b] : p->k_len;
    int32_t lo = 0;
    if (ext && ext->window_size > 0 && len - ext->window_size > 0) {
      lo = len - ext->window_size;
    }
    for (h = 0; h < p->num_heads; ++h) {
      int32_t kvh = h / group;
      const double* qr = q + b * p->q_stride_b + h * p->q_stride_h;
      double* yr = y + b * p->y_stride_b + h * p->y_stride_h;
      double m = -INFINITY, l = 0.0;
      int has_sink = ext && ext->sinks;
      for (d = 0; d < D; ++d) acc[d] = 0.0;
      for (j = lo; j < len; ++j) {
        const double* kr = k + b * p->k_stride_b + kvh * p->k_stride_h + (int64_t)j * p->k_stride_k;
        double dot = 0.0, logit;
        for (d = 0; d < D; ++d) dot += qr[d] * kr[d];
        logit = p->scale * dot;
        if (ext && ext->soft_cap > 0.0) logit = ext->soft_cap * tanh(logit / ext->soft_cap);
        if (ext && ext->alibi) logit += ext->alibi[h] * (double)(j - (len - 1));
        s[j] = logit;
        if (logit > m) m = logit;
      }
      if (has_sink && ext->sinks[h] > m) m = ext->sinks[h];
      for (j = lo; j < len; ++j) {
        const double* vr = v + b * p->v_stride_b + kvh * p->v_stride_h + (int64_t)j * p->v_stride_k;
        double w = exp(s[j] - m);
        l += w;
        for (d = 0; d < D; ++d) acc[d] += w * vr[d];
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
  }
}
