/* A paged KV cache on the device with its host copy, for the GPU cases of
 * paged 16-bit and fp8 caches (gpu_paged.c, gpu_fp8.c). */
#ifndef FD_TEST_GPU_PAGED_H_
#define FD_TEST_GPU_PAGED_H_

#if defined(FD_TEST_HAVE_CUDART)

#include <flashdecoding/flashdecoding.h>

#include "gpu_support.h"

enum {
  POOL_NHD,      /* [pages, page_size, H_kv, D] (vLLM) */
  POOL_HND,      /* [pages, H_kv, page_size, D] */
  POOL_COMBINED  /* [pages, 2, page_size, H_kv, D]: K and V halves of one allocation */
};

typedef struct paged_kv {
  int32_t B, Hkv, D, P, max_pages, num_pages, layout;
  int64_t k_sh, k_sk, k_sp;  /* strides of both pools, in elements */
  int64_t v_offset;          /* elements from the K pool's start to the V pool's */
  int32_t* table;            /* host [B][max_pages] (row stride max_pages) */
  int32_t* lens;             /* host [B] */
  tensor kv;                 /* both pools in one allocation */
  int32_t* dtable;           /* device copies */
  int32_t* dlens;
} paged_kv;

/* Pools of random KV (element type kv_dtype) and a block table for these
 * lengths: shuffled page ids, extra_pages unused pages in the pool,
 * share_prefix: sequence 1 reads all but its last page from sequence 0's.
 * Table entries past the pages a sequence needs hold garbage (-1, ids past the
 * pool, INT32_MAX). 0 after a failed CHECK. */
int paged_kv_make(paged_kv* pk, int32_t kv_dtype, int layout, int32_t B, int32_t Hkv, int32_t D,
                  int32_t P, int32_t max_pages, int32_t extra_pages, const int32_t* lens,
                  int share_prefix, uint64_t* rng);
void paged_kv_free(paged_kv* pk);
/* Copies table and lens (as changed on the host) to the device. */
int paged_kv_upload_meta(paged_kv* pk, void* stream);
/* The k, v, strides, block table, page and seq_lens fields of a call. */
void paged_kv_params(const paged_kv* pk, fd_decode_params* p);
/* The same for the reference (strides, the paged fields of ext, seq_lens). */
void paged_kv_ref(const paged_kv* pk, fd_ref_problem* rp, fd_ref_ext* ext);
/* Host values of the pools, as the reference reads them. */
const double* paged_kv_k(const paged_kv* pk);
const double* paged_kv_v(const paged_kv* pk);

#endif /* FD_TEST_HAVE_CUDART */

#endif /* FD_TEST_GPU_PAGED_H_ */
