/*
 * Host cases of the 0.2 features: paged KV, fp8 KV, sink tokens, merge_states
 * and fd_decode_cell. Each documented combination is accepted (SUCCESS, and
 * fd_decode gets past the checks to the launch: CUDA_ERROR without a device),
 * each bad field is refused with its status and a message naming it, and the
 * out-parameters of refused calls are left alone. Pointers are fake, never
 * dereferenced, addresses with disjoint ranges.
 */
#if !defined(_WIN32)
#  define _POSIX_C_SOURCE 200809L
#endif

#include "fd_test.h"

#include <flashdecoding/flashdecoding.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#define A(x) ((const void*)(uintptr_t)(x))
#define FAKE_Q 0x00010000u    /* 64 KiB */
#define FAKE_Y 0x00100000u    /* 1 MiB */
#define FAKE_K 0x01000000u    /* 16 MiB: 48 MiB up to v */
#define FAKE_V 0x04000000u    /* 64 MiB: 64 MiB up to the workspace */
#define FAKE_WS 0x08000000u   /* 128 MiB */
#define FAKE_LENS 0x60001000u
#define FAKE_TABLE 0x60002000u /* up to 1 MiB of block table */
#define FAKE_SCALES_K 0x61000000u
#define FAKE_SCALES_V 0x61001000u
#define FAKE_EXTRA 0x62000000u /* lse, sinks, alibi_slopes */

static const void* off(const void* p, int64_t bytes) {
  return (const void*)(uintptr_t)((uintptr_t)p + (uintptr_t)bytes);
}

/* Sizes the workspace for the call as it stands (0 when none is needed or the
 * problem is refused: the refusal is what the case is about). */
static void fit_workspace(fd_decode_params* p) {
  size_t bytes = 0;
  p->workspace = NULL;
  p->workspace_bytes = 0;
  if (fd_decode_workspace_size(p, &bytes) == FD_STATUS_SUCCESS && bytes > 0) {
    p->workspace = (void*)(uintptr_t)FAKE_WS;
    p->workspace_bytes = bytes;
  }
}

/* B=2, H_q=32, H_kv=8, D=128, k_len=8192, contiguous HND caches. */
static fd_decode_params contiguous_params(int32_t dtype) {
  fd_decode_params p = FD_DECODE_PARAMS_INIT;
  p.dtype = dtype;
  p.batch_size = 2;
  p.num_heads = 32;
  p.num_kv_heads = 8;
  p.k_len = 8192;
  p.head_dim = 128;
  p.scale = 0.08838834764831845f;
  p.q = A(FAKE_Q);
  p.y = (void*)(uintptr_t)FAKE_Y;
  p.k = A(FAKE_K);
  p.v = A(FAKE_V);
  p.q_stride_h = p.y_stride_h = 128;
  p.q_stride_b = p.y_stride_b = 32 * 128;
  p.k_stride_k = p.v_stride_k = 128;
  p.k_stride_h = p.v_stride_h = 8192 * 128;
  p.k_stride_b = p.v_stride_b = 8 * 8192 * 128;
  fit_workspace(&p);
  return p;
}

enum { POOL_NHD, POOL_HND };

/* Sets the paged fields: pools of num_pages pages of page_size keys, a block
 * table of max_pages entries per sequence (row stride max_pages). */
static void make_paged(fd_decode_params* p, int layout, int32_t page_size, int32_t max_pages,
                       int32_t num_pages) {
  int64_t hkv = p->num_kv_heads, d = p->head_dim, ps = page_size;
  p->block_table = (const int32_t*)(uintptr_t)FAKE_TABLE;
  p->block_table_stride_b = max_pages;
  p->page_size = page_size;
  p->max_pages = max_pages;
  p->num_pages = num_pages;
  p->k_stride_b = p->v_stride_b = 0;
  if (layout == POOL_NHD) { /* [pages, page_size, H_kv, D] */
    p->k_stride_k = p->v_stride_k = hkv * d;
    p->k_stride_h = p->v_stride_h = d;
  } else { /* [pages, H_kv, page_size, D] */
    p->k_stride_k = p->v_stride_k = d;
    p->k_stride_h = p->v_stride_h = ps * d;
  }
  p->k_stride_page = p->v_stride_page = ps * hkv * d;
  fit_workspace(p);
}

/* B=2, H_q=32, H_kv=8, D=128, k_len=8192 over 16-key pages: 512 entries per
 * row, 1024 pages in each pool (32 MiB for 16-bit elements). */
static fd_decode_params paged_params(int32_t dtype, int layout) {
  fd_decode_params p = contiguous_params(dtype);
  make_paged(&p, layout, 16, 512, 1024);
  return p;
}

/* What every entry point answers for this call. `problem_level`: the refusal
 * (or success) comes from the problem rules, which fd_decode_workspace_size
 * and fd_decode_cell apply too (and then leave their out-parameter alone). */
static void expect_params(const char* what, const fd_decode_params* p, int expected,
                          const char* names, int problem_level) {
  int run_expected = expected == FD_STATUS_SUCCESS ? FD_STATUS_CUDA_ERROR : expected;
  expect_status(what, "fd_decode_check", fd_decode_check(p), expected, names);
  if (expected != FD_STATUS_SUCCESS || !g_have_gpu) { /* never launch on fake pointers */
    expect_status(what, "fd_decode", fd_decode(p), run_expected,
                  expected == FD_STATUS_SUCCESS ? NULL : names);
  }
  if (problem_level) {
    size_t bytes = 4242;
    int32_t cell = -7;
    int s = fd_decode_workspace_size(p, &bytes);
    expect_status(what, "fd_decode_workspace_size", s, expected, names);
    if (expected != FD_STATUS_SUCCESS) {
      CHECK(bytes == 4242, "%s: fd_decode_workspace_size wrote *bytes on refusal", what);
    }
    s = fd_decode_cell(p, &cell);
    expect_status(what, "fd_decode_cell", s, expected, names);
    if (expected != FD_STATUS_SUCCESS) {
      CHECK(cell == -7, "%s: fd_decode_cell wrote *index on refusal", what);
    }
  }
}

static fd_kernel_cell_info cell_info_of(const fd_decode_params* p) {
  fd_kernel_cell_info info = FD_KERNEL_CELL_INFO_INIT;
  int32_t cell = -1;
  if (fd_decode_cell(p, &cell) != FD_STATUS_SUCCESS ||
      fd_kernel_cell_info_get(cell, &info) != FD_STATUS_SUCCESS) {
    memset(&info, 0, sizeof info);
  }
  return info;
}

/* All the extension fields at once (on fake pointers). */
static void set_all_extensions(fd_decode_params* p) {
  p->lse = (float*)(uintptr_t)FAKE_EXTRA;
  p->lse_stride_b = p->num_heads;
  p->lse_stride_h = 1;
  p->seq_lens = (const int32_t*)(uintptr_t)FAKE_LENS;
  p->window_size = 100;
  p->sink_tokens = 4;
  p->sinks = (const float*)(uintptr_t)(FAKE_EXTRA + 0x1000u);
  p->alibi_slopes = (const float*)(uintptr_t)(FAKE_EXTRA + 0x2000u);
  p->logits_soft_cap = 30.0f;
  p->flags = FD_FLAG_BATCH_INVARIANT;
  fit_workspace(p);
}

/* ---- paged KV --------------------------------------------------------------- */

static void test_paged(int32_t dtype) {
  fd_decode_params p;
  char what[160];
  const char* tag = dtype == FD_DTYPE_F16 ? "f16" : "bf16";
  size_t i;
#define CASE(desc) (snprintf(what, sizeof what, "[%s paged] %s", tag, desc), what)

  p = paged_params(dtype, POOL_NHD);
  expect_params(CASE("NHD pool, page 16"), &p, FD_STATUS_SUCCESS, NULL, 1);
  {
    fd_kernel_cell_info info = cell_info_of(&p);
    CHECK(info.paged == 1 && info.head_dim == 128 && info.q_dtype == dtype &&
              info.kv_dtype == dtype,
          "%s: fd_decode_cell runs paged=%d bucket %d q %d kv %d", what, (int)info.paged,
          (int)info.head_dim, (int)info.q_dtype, (int)info.kv_dtype);
  }
  p = paged_params(dtype, POOL_HND);
  expect_params(CASE("HND pool, page 16"), &p, FD_STATUS_SUCCESS, NULL, 1);
  /* One allocation [pages, 2, page_size, H_kv, D]: v is k + one half-page. */
  p = paged_params(dtype, POOL_NHD);
  p.k_stride_page = p.v_stride_page = 2 * 16 * 8 * 128;
  p.num_pages = 512;
  p.v = off(p.k, 2 * 16 * 8 * 128);
  expect_params(CASE("combined K/V pool"), &p, FD_STATUS_SUCCESS, NULL, 1);
  {
    struct { int32_t ps, max_pages, num_pages; } ok[] = {
      {1, 8192, 8192}, {3, 2731, 3000}, {17, 482, 600}, {64, 128, 256}, {256, 32, 64},
    };
    for (i = 0; i < sizeof ok / sizeof ok[0]; ++i) {
      char d[64];
      int layout;
      for (layout = POOL_NHD; layout <= POOL_HND; ++layout) {
        p = contiguous_params(dtype);
        make_paged(&p, layout, ok[i].ps, ok[i].max_pages, ok[i].num_pages);
        snprintf(d, sizeof d, "page_size=%d, %s", (int)ok[i].ps, layout ? "HND" : "NHD");
        expect_params(CASE(d), &p, FD_STATUS_SUCCESS, NULL, 1);
      }
    }
  }
  p = paged_params(dtype, POOL_NHD);
  p.page_size = 0;
  expect_params(CASE("page_size=0"), &p, FD_STATUS_INVALID_PROBLEM, "page_size", 1);
  p = paged_params(dtype, POOL_NHD);
  p.page_size = -16;
  expect_params(CASE("page_size=-16"), &p, FD_STATUS_INVALID_PROBLEM, "page_size", 1);
  p = paged_params(dtype, POOL_NHD);
  p.page_size = 257;
  expect_params(CASE("page_size=257"), &p, FD_STATUS_UNSUPPORTED, "page_size", 1);
  (void)fd_decode_check(&p);
  CHECK(fd_test_mentions_number(last_msg(), 257) && fd_test_mentions_number(g_msg, 256),
        "%s: message lacks the value or the limit 256: \"%s\"", what, g_msg);
  p = paged_params(dtype, POOL_NHD);
  p.max_pages = 0;
  expect_params(CASE("max_pages=0"), &p, FD_STATUS_INVALID_PROBLEM, "max_pages", 1);
  p = paged_params(dtype, POOL_NHD);
  p.max_pages = -1;
  expect_params(CASE("max_pages=-1"), &p, FD_STATUS_INVALID_PROBLEM, "max_pages", 1);
  p = paged_params(dtype, POOL_NHD);
  p.num_pages = 0;
  expect_params(CASE("num_pages=0"), &p, FD_STATUS_INVALID_PROBLEM, "num_pages", 1);
  p = paged_params(dtype, POOL_NHD);
  p.num_pages = -3;
  expect_params(CASE("num_pages=-3"), &p, FD_STATUS_INVALID_PROBLEM, "num_pages", 1);
  p = paged_params(dtype, POOL_NHD);
  p.k_stride_b = 8 * 8192 * 128;
  expect_params(CASE("k_stride_b != 0 with a block table"), &p, FD_STATUS_INVALID_PROBLEM,
                "k_stride_b", 1);
  p = paged_params(dtype, POOL_NHD);
  p.v_stride_b = 1;
  expect_params(CASE("v_stride_b != 0 with a block table"), &p, FD_STATUS_INVALID_PROBLEM,
                "v_stride_b", 1);
  p = paged_params(dtype, POOL_NHD);
  p.k_len = 512 * 16 + 1;
  expect_params(CASE("k_len = max_pages * page_size + 1"), &p, FD_STATUS_INVALID_PROBLEM,
                "k_len,max_pages,page_size", 1);
  p = contiguous_params(dtype);
  make_paged(&p, POOL_NHD, 17, 481, 600); /* 481 * 17 = 8177 < 8192 */
  expect_params(CASE("page_size=17, max_pages=481: 8177 keys < k_len"), &p,
                FD_STATUS_INVALID_PROBLEM, "k_len", 1);
  p = paged_params(dtype, POOL_NHD);
  p.k_len = 1000; /* a launch bound below the table's capacity */
  fit_workspace(&p);
  expect_params(CASE("k_len=1000 < capacity"), &p, FD_STATUS_SUCCESS, NULL, 1);
  p = paged_params(dtype, POOL_NHD);
  p.k_len = 0;
  fit_workspace(&p);
  expect_params(CASE("k_len=0"), &p, FD_STATUS_SUCCESS, NULL, 1);
  p = paged_params(dtype, POOL_NHD);
  p.seq_lens = (const int32_t*)(uintptr_t)FAKE_LENS;
  expect_params(CASE("seq_lens"), &p, FD_STATUS_SUCCESS, NULL, 1);
  p = paged_params(dtype, POOL_NHD);
  p.block_table_stride_b = 0; /* every sequence reads one row */
  expect_params(CASE("block_table_stride_b=0"), &p, FD_STATUS_SUCCESS, NULL, 1);
  p = paged_params(dtype, POOL_HND);
  set_all_extensions(&p);
  expect_params(CASE("every extension at once"), &p, FD_STATUS_SUCCESS, NULL, 1);

  /* Strides and spans. */
  p = paged_params(dtype, POOL_NHD);
  p.block_table_stride_b = -512;
  expect_params(CASE("block_table_stride_b=-512"), &p, FD_STATUS_INVALID_PROBLEM,
                "block_table_stride_b", 0);
  p = paged_params(dtype, POOL_NHD);
  p.k_stride_page = -1;
  expect_params(CASE("k_stride_page=-1"), &p, FD_STATUS_INVALID_PROBLEM, "k_stride_page", 0);
  p = paged_params(dtype, POOL_NHD);
  p.v_stride_page = -16384;
  expect_params(CASE("v_stride_page=-16384"), &p, FD_STATUS_INVALID_PROBLEM, "v_stride_page",
                0);
  p = paged_params(dtype, POOL_NHD);
  p.k_stride_page = (int64_t)1 << 62;
  expect_params(CASE("k_stride_page=2^62: the pool's bytes overflow"), &p,
                FD_STATUS_INVALID_PROBLEM, "k_stride_page|k", 0);
  p = paged_params(dtype, POOL_NHD);
  p.block_table_stride_b = (int64_t)1 << 62;
  expect_params(CASE("block_table_stride_b=2^62"), &p, FD_STATUS_INVALID_PROBLEM,
                "block_table_stride_b|block_table", 0);

  /* Pointers: the table's alignment, outputs over the table or a pool's last page. */
  p = paged_params(dtype, POOL_NHD);
  p.block_table = (const int32_t*)(uintptr_t)(FAKE_TABLE + 2);
  expect_params(CASE("block_table misaligned"), &p, FD_STATUS_INVALID_POINTER, "block_table", 0);
  p = paged_params(dtype, POOL_NHD);
  p.y = (void*)(uintptr_t)(FAKE_TABLE + 1024);
  expect_params(CASE("y over the block table"), &p, FD_STATUS_INVALID_POINTER, "y,block_table",
                0);
  p = paged_params(dtype, POOL_NHD);
  p.lse = (float*)(uintptr_t)FAKE_TABLE;
  p.lse_stride_b = 32;
  p.lse_stride_h = 1;
  expect_params(CASE("lse over the block table"), &p, FD_STATUS_INVALID_POINTER,
                "lse,block_table", 0);
  p = paged_params(dtype, POOL_NHD);
  p.y = (void*)(uintptr_t)off(p.k, (int64_t)2 * 1023 * 16 * 8 * 128); /* the last page */
  expect_params(CASE("y over the k pool's last page"), &p, FD_STATUS_INVALID_POINTER, "y,k", 0);
  p = paged_params(dtype, POOL_HND);
  p.y = (void*)(uintptr_t)off(p.v, (int64_t)2 * 1023 * 16 * 8 * 128);
  expect_params(CASE("y over the v pool's last page"), &p, FD_STATUS_INVALID_POINTER, "y,v", 0);
  p = paged_params(dtype, POOL_NHD);
  p.k = NULL;
  expect_params(CASE("k NULL"), &p, FD_STATUS_INVALID_POINTER, "k", 0);

  /* Paged fields without a block table: each one alone is refused, named. */
  {
    const char* fields[] = {"page_size", "max_pages", "num_pages", "block_table_stride_b",
                            "k_stride_page", "v_stride_page"};
    for (i = 0; i < sizeof fields / sizeof fields[0]; ++i) {
      char d[96], names[96];
      p = contiguous_params(dtype);
      switch (i) {
        case 0: p.page_size = 16; break;
        case 1: p.max_pages = 512; break;
        case 2: p.num_pages = 1024; break;
        case 3: p.block_table_stride_b = 512; break;
        case 4: p.k_stride_page = 16384; break;
        default: p.v_stride_page = 16384; break;
      }
      snprintf(d, sizeof d, "%s set without a block table", fields[i]);
      snprintf(names, sizeof names, "%s,block_table", fields[i]);
      expect_params(CASE(d), &p, FD_STATUS_INVALID_PROBLEM, names, 1);
    }
  }
#undef CASE
}

/* ---- fp8 KV -------------------------------------------------------------------- */

/* The fp8 call: the contiguous shape with one byte per KV element. */
static fd_decode_params fp8_params(int32_t dtype, int32_t kv_dtype) {
  fd_decode_params p = contiguous_params(dtype);
  p.kv_dtype = kv_dtype;
  fit_workspace(&p);
  return p;
}

static void test_fp8(int32_t dtype) {
  fd_decode_params p;
  char what[160];
  const char* tag = dtype == FD_DTYPE_F16 ? "f16" : "bf16";
  int32_t other = dtype == FD_DTYPE_F16 ? FD_DTYPE_BF16 : FD_DTYPE_F16;
  int32_t kvs[] = {FD_DTYPE_FP8_E4M3, FD_DTYPE_FP8_E5M2};
  int fp8 = fd_test_build_has_fp8();
  int ok = fp8 ? FD_STATUS_SUCCESS : FD_STATUS_UNSUPPORTED;
  const char* ok_names = fp8 ? NULL : "kv_dtype";
  size_t i, t;
#define CASE(desc) (snprintf(what, sizeof what, "[%s q, fp8 kv] %s", tag, desc), what)

  for (t = 0; t < 2; ++t) {
    const char* kn = kvs[t] == FD_DTYPE_FP8_E4M3 ? "e4m3" : "e5m2";
    char d[96];
    p = fp8_params(dtype, kvs[t]);
    snprintf(d, sizeof d, "%s, scales 0 (= 1)", kn);
    expect_params(CASE(d), &p, ok, ok_names, 1);
    if (fp8) {
      fd_kernel_cell_info info = cell_info_of(&p);
      CHECK(info.kv_dtype == kvs[t] && info.q_dtype == 0 && info.paged == 0 &&
                info.head_dim == 128 && info.min_compute_capability == 89,
            "%s: fd_decode_cell runs kv %d q %d paged %d bucket %d cc %d", what,
            (int)info.kv_dtype, (int)info.q_dtype, (int)info.paged, (int)info.head_dim,
            (int)info.min_compute_capability);
    }
    p = fp8_params(dtype, kvs[t]);
    p.k_scale = 0.5f;
    p.v_scale = 2.0f;
    snprintf(d, sizeof d, "%s, per-tensor scales", kn);
    expect_params(CASE(d), &p, ok, ok_names, 1);
    p = fp8_params(dtype, kvs[t]);
    p.k_scales = (const float*)(uintptr_t)FAKE_SCALES_K;
    p.v_scales = (const float*)(uintptr_t)FAKE_SCALES_V;
    snprintf(d, sizeof d, "%s, per-head scales", kn);
    expect_params(CASE(d), &p, ok, ok_names, 1);
    p = fp8_params(dtype, kvs[t]);
    p.k_scales = (const float*)(uintptr_t)FAKE_SCALES_K;
    p.v_scale = 3.0f;
    snprintf(d, sizeof d, "%s, per-head k, per-tensor v", kn);
    expect_params(CASE(d), &p, ok, ok_names, 1);
    p = fp8_params(dtype, kvs[t]);
    p.k = off(p.k, 1); /* one-byte elements: any address */
    p.v = off(p.v, 3);
    snprintf(d, sizeof d, "%s, k and v at odd addresses", kn);
    expect_params(CASE(d), &p, ok, ok_names, 0);
    p = fp8_params(dtype, kvs[t]);
    make_paged(&p, POOL_HND, 16, 512, 1024);
    p.k_scales = (const float*)(uintptr_t)FAKE_SCALES_K;
    snprintf(d, sizeof d, "%s, paged HND, per-head k scales", kn);
    expect_params(CASE(d), &p, ok, ok_names, 1);
    if (fp8) {
      fd_kernel_cell_info info = cell_info_of(&p);
      CHECK(info.kv_dtype == kvs[t] && info.paged == 1 && info.head_dim == 128,
            "%s: fd_decode_cell runs kv %d paged %d bucket %d", what, (int)info.kv_dtype,
            (int)info.paged, (int)info.head_dim);
    }
    p = fp8_params(dtype, kvs[t]);
    set_all_extensions(&p);
    p.k_scale = 0.25f;
    snprintf(d, sizeof d, "%s, every extension at once", kn);
    expect_params(CASE(d), &p, ok, ok_names, 1);
  }
  if (fp8) {
    /* head_dim runs the smallest fp8 bucket (multiples of 32: no 80). */
    int32_t dims[][2] = {{1, 64}, {72, 96}, {80, 96}, {129, 160}, {200, 256}, {256, 256}};
    for (i = 0; i < sizeof dims / sizeof dims[0]; ++i) {
      fd_kernel_cell_info info;
      p = fp8_params(dtype, FD_DTYPE_FP8_E4M3);
      p.head_dim = dims[i][0];
      p.q_stride_h = p.y_stride_h = 256;
      p.q_stride_b = p.y_stride_b = 32 * 256;
      info = cell_info_of(&p);
      CHECK(info.head_dim == dims[i][1] && info.kv_dtype == FD_DTYPE_FP8_E4M3,
            "[%s] fp8 head_dim=%d runs bucket %d, expected %d", tag, (int)dims[i][0],
            (int)info.head_dim, (int)dims[i][1]);
    }
  }

  /* The KV type itself. */
  {
    int32_t invalid[] = {7, 99, -1, INT32_MIN};
    for (i = 0; i < sizeof invalid / sizeof invalid[0]; ++i) {
      char d[64];
      p = fp8_params(dtype, invalid[i]);
      snprintf(d, sizeof d, "kv_dtype=%d (not an fd_dtype)", (int)invalid[i]);
      expect_params(CASE(d), &p, FD_STATUS_INVALID_PROBLEM, "kv_dtype", 1);
    }
  }
  p = fp8_params(dtype, FD_DTYPE_F32);
  expect_params(CASE("kv_dtype=f32"), &p, FD_STATUS_UNSUPPORTED, "kv_dtype", 1);
  p = fp8_params(dtype, FD_DTYPE_F64);
  expect_params(CASE("kv_dtype=f64"), &p, FD_STATUS_UNSUPPORTED, "kv_dtype", 1);
  p = fp8_params(dtype, other);
  expect_params(CASE("kv_dtype = the other 16-bit type"), &p, FD_STATUS_UNSUPPORTED, "kv_dtype",
                1);
  p = fp8_params(dtype, dtype);
  expect_params(CASE("kv_dtype = dtype"), &p, FD_STATUS_SUCCESS, NULL, 1);
  p = fp8_params(FD_DTYPE_FP8_E4M3, 0);
  expect_params(CASE("dtype=fp8_e4m3 (q and y cannot be fp8)"), &p, FD_STATUS_UNSUPPORTED,
                "dtype", 1);
  p = fp8_params(FD_DTYPE_FP8_E5M2, FD_DTYPE_FP8_E5M2);
  expect_params(CASE("dtype=kv_dtype=fp8_e5m2"), &p, FD_STATUS_UNSUPPORTED, "dtype", 1);

  /* Scales with a 16-bit cache: UNSUPPORTED, named. */
  {
    const char* names[] = {"k_scale", "v_scale", "k_scales", "v_scales"};
    int32_t kv;
    for (kv = 0; kv < 2; ++kv) { /* kv_dtype 0 and kv_dtype = dtype */
      for (i = 0; i < 4; ++i) {
        char d[96];
        p = fp8_params(dtype, kv ? dtype : 0);
        switch (i) {
          case 0: p.k_scale = 2.0f; break;
          case 1: p.v_scale = 0.5f; break;
          case 2: p.k_scales = (const float*)(uintptr_t)FAKE_SCALES_K; break;
          default: p.v_scales = (const float*)(uintptr_t)FAKE_SCALES_V; break;
        }
        snprintf(d, sizeof d, "%s with a 16-bit cache (kv_dtype %d)", names[i],
                 (int)p.kv_dtype);
        expect_params(CASE(d), &p, FD_STATUS_UNSUPPORTED, names[i], 1);
      }
    }
  }
  /* Bad scale values with an fp8 cache. */
  {
    struct { const char* what; int which; int status; const char* names; } bad[] = {
      {"k_scale=-1", 0, FD_STATUS_INVALID_PROBLEM, "k_scale"},
      {"k_scale=+inf", 1, FD_STATUS_INVALID_PROBLEM, "k_scale"},
      {"k_scale=NaN", 2, FD_STATUS_INVALID_PROBLEM, "k_scale"},
      {"v_scale=-0.5", 3, FD_STATUS_INVALID_PROBLEM, "v_scale"},
      {"v_scale=-inf", 4, FD_STATUS_INVALID_PROBLEM, "v_scale"},
      {"k_scale and k_scales both set", 5, FD_STATUS_INVALID_PROBLEM, "k_scale,k_scales"},
      {"v_scale and v_scales both set", 6, FD_STATUS_INVALID_PROBLEM, "v_scale,v_scales"},
    };
    for (i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
      p = fp8_params(dtype, FD_DTYPE_FP8_E4M3);
      switch (bad[i].which) {
        case 0: p.k_scale = -1.0f; break;
        case 1: p.k_scale = (float)INFINITY; break;
        case 2: p.k_scale = (float)NAN; break;
        case 3: p.v_scale = -0.5f; break;
        case 4: p.v_scale = -(float)INFINITY; break;
        case 5: p.k_scale = 2.0f; p.k_scales = (const float*)(uintptr_t)FAKE_SCALES_K; break;
        default: p.v_scale = 2.0f; p.v_scales = (const float*)(uintptr_t)FAKE_SCALES_V; break;
      }
      expect_params(CASE(bad[i].what), &p, bad[i].status, bad[i].names, 1);
    }
  }
  /* Pointers of the per-head scales. */
  if (fp8) {
    p = fp8_params(dtype, FD_DTYPE_FP8_E5M2);
    p.k_scales = (const float*)(uintptr_t)(FAKE_SCALES_K + 2);
    expect_params(CASE("k_scales misaligned"), &p, FD_STATUS_INVALID_POINTER, "k_scales", 0);
    p = fp8_params(dtype, FD_DTYPE_FP8_E5M2);
    p.v_scales = (const float*)(uintptr_t)(FAKE_SCALES_V + 1);
    expect_params(CASE("v_scales misaligned"), &p, FD_STATUS_INVALID_POINTER, "v_scales", 0);
    p = fp8_params(dtype, FD_DTYPE_FP8_E5M2);
    p.k_scales = (const float*)p.y;
    expect_params(CASE("y over k_scales"), &p, FD_STATUS_INVALID_POINTER, "y,k_scales", 0);
    p = fp8_params(dtype, FD_DTYPE_FP8_E5M2);
    p.lse = (float*)(uintptr_t)FAKE_SCALES_V;
    p.lse_stride_b = 32;
    p.lse_stride_h = 1;
    p.v_scales = (const float*)(uintptr_t)FAKE_SCALES_V;
    expect_params(CASE("lse over v_scales"), &p, FD_STATUS_INVALID_POINTER, "lse,v_scales", 0);
    /* An fp8 cache spans one byte per element: y right after the k cache's
     * fp8 bytes is fine, inside them is not. */
    p = fp8_params(dtype, FD_DTYPE_FP8_E4M3);
    p.y = (void*)(uintptr_t)off(p.k, (int64_t)2 * 8 * 8192 * 128);
    expect_params(CASE("y right after the fp8 k cache"), &p, FD_STATUS_SUCCESS, NULL, 0);
    p.y = (void*)(uintptr_t)off(p.k, (int64_t)2 * 8 * 8192 * 128 - 64);
    expect_params(CASE("y over the fp8 k cache's last 64 bytes"), &p, FD_STATUS_INVALID_POINTER,
                  "y,k", 0);
  }
#undef CASE
}

/* ---- sink tokens ------------------------------------------------------------ */

static void test_sink_tokens(void) {
  fd_decode_params p;
  int32_t ok[] = {1, 4, 8192, INT32_MAX};
  size_t i;
  for (i = 0; i < sizeof ok / sizeof ok[0]; ++i) {
    char what[96];
    p = contiguous_params(FD_DTYPE_BF16);
    p.sink_tokens = ok[i];
    p.window_size = 64;
    snprintf(what, sizeof what, "sink_tokens=%d under window_size=64", (int)ok[i]);
    expect_params(what, &p, FD_STATUS_SUCCESS, NULL, 1);
    p.window_size = 0;
    snprintf(what, sizeof what, "sink_tokens=%d without a window (changes nothing)", (int)ok[i]);
    expect_params(what, &p, FD_STATUS_SUCCESS, NULL, 1);
  }
  p = contiguous_params(FD_DTYPE_F16);
  p.sink_tokens = -4;
  p.window_size = 64;
  expect_params("sink_tokens=-4", &p, FD_STATUS_INVALID_PROBLEM, "sink_tokens", 1);
  p = paged_params(FD_DTYPE_F16, POOL_NHD);
  p.sink_tokens = 4;
  p.window_size = 1000;
  p.seq_lens = (const int32_t*)(uintptr_t)FAKE_LENS;
  expect_params("sink_tokens=4, window_size=1000, seq_lens, paged", &p, FD_STATUS_SUCCESS, NULL,
                1);
}

/* ---- fd_decode_cell ---------------------------------------------------------- */

static void test_decode_cell(void) {
  int32_t dims[][2] = {{1, 64}, {64, 64}, {65, 80}, {72, 80}, {81, 96}, {96, 96}, {127, 128},
                       {129, 160}, {160, 160}, {161, 192}, {193, 256}, {200, 256}, {256, 256}};
  int32_t dts[] = {FD_DTYPE_F16, FD_DTYPE_BF16};
  size_t i, t;
  int s;
  for (t = 0; t < 2; ++t) {
    for (i = 0; i < sizeof dims / sizeof dims[0]; ++i) {
      fd_decode_params p = contiguous_params(dts[t]);
      fd_kernel_cell_info info;
      int32_t found = -1, cell = -1;
      p.head_dim = dims[i][0];
      info = cell_info_of(&p);
      CHECK(info.head_dim == dims[i][1] && info.q_dtype == dts[t] && info.paged == 0,
            "fd_decode_cell(dtype %d, head_dim %d): bucket %d q %d paged %d, expected bucket %d",
            (int)dts[t], (int)dims[i][0], (int)info.head_dim, (int)info.q_dtype,
            (int)info.paged, (int)dims[i][1]);
      (void)fd_decode_cell(&p, &cell);
      (void)fd_kernel_cell_find(dts[t], dims[i][0], &found);
      CHECK(cell == found, "fd_decode_cell %d != fd_kernel_cell_find %d for dtype %d D=%d",
            (int)cell, (int)found, (int)dts[t], (int)dims[i][0]);
      make_paged(&p, POOL_NHD, 16, 512, 1024);
      info = cell_info_of(&p);
      CHECK(info.head_dim == dims[i][1] && info.paged == 1,
            "fd_decode_cell(paged, head_dim %d): bucket %d paged %d", (int)dims[i][0],
            (int)info.head_dim, (int)info.paged);
    }
  }
  {
    /* Host-only and problem rules only: pointers are not looked at. */
    fd_decode_params p = contiguous_params(FD_DTYPE_F16);
    int32_t cell = -1;
    p.q = NULL;
    p.y = NULL;
    p.workspace_bytes = 0;
    s = fd_decode_cell(&p, &cell);
    CHECK(s == FD_STATUS_SUCCESS && cell >= 0, "fd_decode_cell with NULL q, y = %d (%s)", s,
          last_msg());
    p = contiguous_params(FD_DTYPE_F16);
    expect_status("fd_decode_cell(params, NULL)", "fd_decode_cell", fd_decode_cell(&p, NULL),
                  FD_STATUS_INVALID_POINTER, "index");
    cell = 99;
    s = fd_decode_cell(NULL, &cell);
    CHECK((s == FD_STATUS_INVALID_POINTER || s == FD_STATUS_INVALID_PROBLEM) && cell == 99,
          "fd_decode_cell(NULL, &cell) = %d, cell %d", s, (int)cell);
    p.struct_size = 3;
    expect_status("fd_decode_cell, struct_size=3", "fd_decode_cell", fd_decode_cell(&p, &cell),
                  FD_STATUS_INVALID_PROBLEM, "struct_size");
    CHECK(cell == 99, "fd_decode_cell wrote *index on refusal");
  }
}

/* ---- merge_states ------------------------------------------------------------- */

/* N=2 states of B=2, H=8, D=128 f16, [N, B, H, D] contiguous; lse [N, B, H];
 * y [B, H, D]; lse_out [B, H]. */
static fd_merge_params merge_params(void) {
  fd_merge_params m = FD_MERGE_PARAMS_INIT;
  m.dtype = FD_DTYPE_F16;
  m.num_states = 2;
  m.batch_size = 2;
  m.num_heads = 8;
  m.head_dim = 128;
  m.states = A(FAKE_K);
  m.state_stride_h = 128;
  m.state_stride_b = 8 * 128;
  m.state_stride_n = 2 * 8 * 128;
  m.lse = (const float*)(uintptr_t)FAKE_EXTRA;
  m.lse_stride_h = 1;
  m.lse_stride_b = 8;
  m.lse_stride_n = 16;
  m.y = (void*)(uintptr_t)FAKE_Y;
  m.y_stride_h = 128;
  m.y_stride_b = 8 * 128;
  m.lse_out = (float*)(uintptr_t)(FAKE_EXTRA + 0x10000u);
  m.lse_out_stride_h = 1;
  m.lse_out_stride_b = 8;
  return m;
}

static void expect_merge(const char* what, const fd_merge_params* m, int expected,
                         const char* names) {
  expect_status(what, "fd_merge_states_check", fd_merge_states_check(m), expected, names);
  if (expected != FD_STATUS_SUCCESS) {
    expect_status(what, "fd_merge_states", fd_merge_states(m), expected, names);
  } else if (!g_have_gpu) {
    expect_status(what, "fd_merge_states (no GPU)", fd_merge_states(m), FD_STATUS_CUDA_ERROR,
                  NULL);
  }
}

static void test_merge_refusals(void) {
  fd_merge_params m;
  char what[128];
  size_t i;

  m = merge_params();
  expect_merge("merge: valid f16", &m, FD_STATUS_SUCCESS, NULL);
  m = merge_params();
  m.dtype = FD_DTYPE_BF16;
  expect_merge("merge: valid bf16", &m, FD_STATUS_SUCCESS, NULL);
  m = merge_params();
  m.dtype = FD_DTYPE_F32;
  expect_merge("merge: valid f32", &m, FD_STATUS_SUCCESS, NULL);
  m = merge_params();
  m.lse_out = NULL;
  m.lse_out_stride_b = m.lse_out_stride_h = 0;
  expect_merge("merge: no lse_out", &m, FD_STATUS_SUCCESS, NULL);
  m = merge_params();
  m.num_states = 1;
  expect_merge("merge: one state", &m, FD_STATUS_SUCCESS, NULL);
  m = merge_params();
  m.head_dim = 256;
  m.state_stride_h = m.y_stride_h = 256;
  m.state_stride_b = m.y_stride_b = 8 * 256;
  m.state_stride_n = 2 * 8 * 256;
  expect_merge("merge: head_dim=256", &m, FD_STATUS_SUCCESS, NULL);
  m = merge_params();
  m.head_dim = 7;
  expect_merge("merge: head_dim=7 (padded rows)", &m, FD_STATUS_SUCCESS, NULL);
  m = merge_params();
  m.state_stride_b = 0; /* inputs may broadcast */
  m.lse_stride_b = 0;
  expect_merge("merge: states broadcast over the batch", &m, FD_STATUS_SUCCESS, NULL);

  /* struct_size must be exactly sizeof (or larger with a zero tail). */
  {
    size_t bad[] = {0, 1, sizeof(size_t), sizeof(fd_merge_params) - 8,
                    sizeof(fd_merge_params) - 1, (size_t)1 << 40};
    struct { fd_merge_params m; unsigned char tail[16]; } big;
    for (i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
      m = merge_params();
      m.struct_size = bad[i];
      snprintf(what, sizeof what, "merge: struct_size=%lu", (unsigned long)bad[i]);
      expect_merge(what, &m, FD_STATUS_INVALID_PROBLEM, "struct_size");
    }
    memset(&big, 0, sizeof big);
    big.m = merge_params();
    big.m.struct_size = sizeof big;
    expect_merge("merge: newer caller, zero tail", &big.m, FD_STATUS_SUCCESS, NULL);
    big.tail[3] = 1;
    expect_merge("merge: newer caller, a set unknown field", &big.m, FD_STATUS_UNSUPPORTED,
                 "struct_size");
  }
  /* Element type and extents. */
  {
    int32_t invalid[] = {0, 7, -1, 1000};
    int32_t unsupported[] = {FD_DTYPE_F64, FD_DTYPE_FP8_E4M3, FD_DTYPE_FP8_E5M2};
    for (i = 0; i < sizeof invalid / sizeof invalid[0]; ++i) {
      m = merge_params();
      m.dtype = invalid[i];
      snprintf(what, sizeof what, "merge: dtype=%d", (int)invalid[i]);
      expect_merge(what, &m, FD_STATUS_INVALID_PROBLEM, "dtype");
    }
    for (i = 0; i < sizeof unsupported / sizeof unsupported[0]; ++i) {
      m = merge_params();
      m.dtype = unsupported[i];
      snprintf(what, sizeof what, "merge: dtype=%d", (int)unsupported[i]);
      expect_merge(what, &m, FD_STATUS_UNSUPPORTED, "dtype");
    }
  }
  {
    struct { const char* what; int which; int status; const char* names; } ext[] = {
      {"num_states=0", 0, FD_STATUS_INVALID_PROBLEM, "num_states"},
      {"num_states=-2", 1, FD_STATUS_INVALID_PROBLEM, "num_states"},
      {"batch_size=0", 2, FD_STATUS_INVALID_PROBLEM, "batch_size"},
      {"num_heads=0", 3, FD_STATUS_INVALID_PROBLEM, "num_heads"},
      {"head_dim=0", 4, FD_STATUS_INVALID_PROBLEM, "head_dim"},
      {"head_dim=-1", 5, FD_STATUS_INVALID_PROBLEM, "head_dim"},
      {"head_dim=257", 6, FD_STATUS_UNSUPPORTED, "head_dim"},
      {"reserved=1", 7, FD_STATUS_INVALID_PROBLEM, "reserved"},
      {"dtype=99 and states NULL: the problem first", 8, FD_STATUS_INVALID_PROBLEM, "dtype"},
    };
    for (i = 0; i < sizeof ext / sizeof ext[0]; ++i) {
      m = merge_params();
      switch (ext[i].which) {
        case 0: m.num_states = 0; break;
        case 1: m.num_states = -2; break;
        case 2: m.batch_size = 0; break;
        case 3: m.num_heads = 0; break;
        case 4: m.head_dim = 0; break;
        case 5: m.head_dim = -1; break;
        case 6: m.head_dim = 257; break;
        case 7: m.reserved = 1; break;
        default: m.dtype = 99; m.states = NULL; break;
      }
      snprintf(what, sizeof what, "merge: %s", ext[i].what);
      expect_merge(what, &m, ext[i].status, ext[i].names);
    }
    m = merge_params();
    m.head_dim = 257;
    (void)fd_merge_states_check(&m);
    CHECK(fd_test_mentions_number(last_msg(), 256), "merge head_dim=257: no limit 256: \"%s\"",
          g_msg);
  }
  /* Strides. */
  {
    const char* names[] = {"state_stride_n", "state_stride_b", "state_stride_h",
                           "lse_stride_n", "lse_stride_b", "lse_stride_h",
                           "y_stride_b", "y_stride_h", "lse_out_stride_b", "lse_out_stride_h"};
    for (i = 0; i < sizeof names / sizeof names[0]; ++i) {
      m = merge_params();
      switch (i) {
        case 0: m.state_stride_n = -1; break;
        case 1: m.state_stride_b = -1024; break;
        case 2: m.state_stride_h = -128; break;
        case 3: m.lse_stride_n = -16; break;
        case 4: m.lse_stride_b = -8; break;
        case 5: m.lse_stride_h = -1; break;
        case 6: m.y_stride_b = -1; break;
        case 7: m.y_stride_h = -128; break;
        case 8: m.lse_out_stride_b = -8; break;
        default: m.lse_out_stride_h = -1; break;
      }
      snprintf(what, sizeof what, "merge: %s negative", names[i]);
      expect_merge(what, &m, FD_STATUS_INVALID_PROBLEM, names[i]);
    }
    m = merge_params();
    m.y_stride_h = 0;
    expect_merge("merge: y_stride_h=0 (rows overlap)", &m, FD_STATUS_INVALID_PROBLEM,
                 "y_stride_h");
    m = merge_params();
    m.y_stride_h = 64;
    expect_merge("merge: y_stride_h=64 < head_dim=128", &m, FD_STATUS_INVALID_PROBLEM,
                 "y_stride_h");
    m = merge_params();
    m.lse_out_stride_h = 0;
    expect_merge("merge: lse_out_stride_h=0 (entries overlap)", &m, FD_STATUS_INVALID_PROBLEM,
                 "lse_out_stride_h");
    m = merge_params();
    m.state_stride_n = (int64_t)1 << 62;
    expect_merge("merge: state_stride_n=2^62 (bytes overflow)", &m, FD_STATUS_INVALID_PROBLEM,
                 "states|state_stride_n");
  }
  /* Pointers: NULL, alignment, outputs overlapping inputs or each other. */
  {
    struct { const char* what; int which; const char* names; } ptr[] = {
      {"states NULL", 0, "states"},
      {"lse NULL", 1, "lse"},
      {"y NULL", 2, "y"},
      {"states at an odd address", 3, "states"},
      {"f32 states 2-byte aligned", 4, "states"},
      {"lse misaligned", 5, "lse"},
      {"y at an odd address", 6, "y"},
      {"f32 y 2-byte aligned", 7, "y"},
      {"lse_out misaligned", 8, "lse_out"},
      {"y == states", 9, "y,states"},
      {"y over lse", 10, "y,lse"},
      {"lse_out over y", 11, "lse_out,y"},
      {"lse_out over lse", 12, "lse_out,lse"},
      {"lse_out over states' last 64 bytes", 13, "lse_out,states"},
    };
    for (i = 0; i < sizeof ptr / sizeof ptr[0]; ++i) {
      m = merge_params();
      switch (ptr[i].which) {
        case 0: m.states = NULL; break;
        case 1: m.lse = NULL; break;
        case 2: m.y = NULL; break;
        case 3: m.states = off(m.states, 1); break;
        case 4: m.dtype = FD_DTYPE_F32; m.states = off(m.states, 2); break;
        case 5: m.lse = (const float*)off(m.lse, 2); break;
        case 6: m.y = (void*)(uintptr_t)off(m.y, 1); break;
        case 7: m.dtype = FD_DTYPE_F32; m.y = (void*)(uintptr_t)off(m.y, 2); break;
        case 8: m.lse_out = (float*)(uintptr_t)off(m.lse_out, 2); break;
        case 9: m.y = (void*)(uintptr_t)m.states; break;
        case 10: m.y = (void*)(uintptr_t)m.lse; break;
        case 11: m.lse_out = (float*)(uintptr_t)off(m.y, 256); break;
        case 12: m.lse_out = (float*)(uintptr_t)off(m.lse, 32); break;
        default: m.lse_out = (float*)(uintptr_t)off(m.states, 2 * 2 * 2 * 8 * 128 - 64); break;
      }
      snprintf(what, sizeof what, "merge: %s", ptr[i].what);
      expect_merge(what, &m, FD_STATUS_INVALID_POINTER, ptr[i].names);
    }
    {
      int s = fd_merge_states_check(NULL);
      CHECK(s == FD_STATUS_INVALID_POINTER, "fd_merge_states_check(NULL) = %d", s);
      s = fd_merge_states(NULL);
      CHECK(s == FD_STATUS_INVALID_POINTER, "fd_merge_states(NULL) = %d", s);
    }
  }
}

void fd_test_host_features(void) {
  int32_t dts[] = {FD_DTYPE_F16, FD_DTYPE_BF16};
  size_t i;
  for (i = 0; i < 2; ++i) {
    test_paged(dts[i]);
    test_fp8(dts[i]);
  }
  test_sink_tokens();
  test_decode_cell();
  test_merge_refusals();
}
