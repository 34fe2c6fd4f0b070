/*
 * C99 host test of libflashdecoding's C ABI.
 *
 * Host part (no GPU needed): version, status strings, error messages, workspace
 * sizes, every refusal with its status in the validation order
 * problem -> workspace -> pointers -> launch, agreement of the host-only checks
 * with the run functions, the size-versioned params struct, the extension
 * fields the header documents (each one accepted), the kernel table; the 0.2
 * features (paged KV, fp8 KV, sink tokens, merge_states, cell info) in
 * host_features.c. Pointer-level cases use fake, never dereferenced, addresses.
 *
 * GPU part (gpu_*.c): every documented feature against a double-precision
 * reference when a device is present; otherwise it says that it skips them,
 * and with FD_REQUIRE_GPU=1 (a GPU machine's check) a missing device fails.
 *
 * Prints "N passed, M failed" last; exits non-zero on any failure.
 */
#if !defined(_WIN32)
#  define _POSIX_C_SOURCE 200809L
#endif

#include "fd_test.h"

#include <flashdecoding/flashdecoding.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(FD_TEST_HAVE_THREADS)
#  include <pthread.h>
#endif

/* ---- one call, as the plain entry points take it --------------------------- */

typedef struct call {
  int32_t dtype;
  const void* q;
  const void* k;
  const void* v;
  void* y;
  void* ws;
  size_t ws_bytes;
  int32_t B, H, Hkv, K, D;
  int64_t q_sb, q_sh;
  int64_t k_sb, k_sh, k_sk;
  int64_t v_sb, v_sh, v_sk;
  int64_t y_sb, y_sh;
  float scale;
} call_t;

#define FAKE_Q ((const void*)(uintptr_t)0x00010000u)
#define FAKE_Y ((void*)(uintptr_t)0x00100000u)
#define FAKE_K ((const void*)(uintptr_t)0x01000000u)
#define FAKE_V ((const void*)(uintptr_t)0x04000000u)
#define FAKE_WS ((void*)(uintptr_t)0x08000000u)
#define FAKE_OTHER ((const void*)(uintptr_t)0x50000000u)

/* A fake address `bytes` away from p (integer arithmetic: never dereferenced). */
static const void* cp(const void* p, int64_t bytes) {
  return (const void*)(uintptr_t)((uintptr_t)p + (uintptr_t)bytes);
}

/* A valid problem that needs a split (B=2, H_q=32, H_kv=8, K=8192, D=128),
 * contiguous HND layout, fake pointers with disjoint ranges, exact workspace. */
static call_t base_call(int32_t dtype) {
  call_t c;
  memset(&c, 0, sizeof c);
  c.dtype = dtype;
  c.B = 2;
  c.H = 32;
  c.Hkv = 8;
  c.K = 8192;
  c.D = 128;
  c.q_sh = c.D;
  c.q_sb = (int64_t)c.H * c.D;
  c.k_sk = c.D;
  c.k_sh = (int64_t)c.K * c.D;
  c.k_sb = (int64_t)c.Hkv * c.k_sh;
  c.v_sk = c.k_sk;
  c.v_sh = c.k_sh;
  c.v_sb = c.k_sb;
  c.y_sh = c.D;
  c.y_sb = (int64_t)c.H * c.D;
  c.scale = 0.08838834764831845f;
  c.q = FAKE_Q; /* 16 KiB */
  c.y = FAKE_Y; /* 16 KiB */
  c.k = FAKE_K; /* 32 MiB */
  c.v = FAKE_V; /* 32 MiB */
  c.ws_bytes = fd_flash_decoding_workspace_size(c.B, c.H, c.Hkv, c.K, c.D);
  c.ws = c.ws_bytes ? FAKE_WS : NULL;
  return c;
}

/* Bytes from the first to one past the last element of a [B, H, D] tensor. */
static int64_t span_bytes_bhd(int32_t B, int32_t H, int32_t D, int64_t sb, int64_t sh) {
  return 2 * ((B - 1) * sb + (H - 1) * sh + D);
}

static int do_check(const call_t* c) {
  return fd_flash_decoding_check(c->dtype, c->q, c->k, c->v, c->y, c->ws, c->ws_bytes, c->B,
                                 c->H, c->Hkv, c->K, c->D, c->q_sb, c->q_sh, c->k_sb, c->k_sh,
                                 c->k_sk, c->v_sb, c->v_sh, c->v_sk, c->y_sb, c->y_sh, c->scale);
}

static int do_run(const call_t* c) {
  if (c->dtype == FD_DTYPE_BF16) {
    return fd_flash_decoding_bf16_run(c->q, c->k, c->v, c->y, c->ws, c->ws_bytes, c->B, c->H,
                                      c->Hkv, c->K, c->D, c->q_sb, c->q_sh, c->k_sb, c->k_sh,
                                      c->k_sk, c->v_sb, c->v_sh, c->v_sk, c->y_sb, c->y_sh,
                                      c->scale, NULL);
  }
  return fd_flash_decoding_f16_run(c->q, c->k, c->v, c->y, c->ws, c->ws_bytes, c->B, c->H,
                                   c->Hkv, c->K, c->D, c->q_sb, c->q_sh, c->k_sb, c->k_sh,
                                   c->k_sk, c->v_sb, c->v_sh, c->v_sk, c->y_sb, c->y_sh,
                                   c->scale, NULL);
}

static void to_params(const call_t* c, fd_decode_params* p) {
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->dtype = c->dtype;
  p->q = c->q;
  p->k = c->k;
  p->v = c->v;
  p->y = c->y;
  p->workspace = c->ws;
  p->workspace_bytes = c->ws_bytes;
  p->batch_size = c->B;
  p->num_heads = c->H;
  p->num_kv_heads = c->Hkv;
  p->k_len = c->K;
  p->head_dim = c->D;
  p->scale = c->scale;
  p->q_stride_b = c->q_sb;
  p->q_stride_h = c->q_sh;
  p->k_stride_b = c->k_sb;
  p->k_stride_h = c->k_sh;
  p->k_stride_k = c->k_sk;
  p->v_stride_b = c->v_sb;
  p->v_stride_h = c->v_sh;
  p->v_stride_k = c->v_sk;
  p->y_stride_b = c->y_sb;
  p->y_stride_h = c->y_sh;
  p->stream = NULL;
}

/* Every entry point that sees this call must answer `expected`:
 * fd_flash_decoding_check, fd_decode_check, and (when that cannot launch on
 * fake pointers: a refusal, or no GPU) the run function and fd_decode, which
 * give CUDA_ERROR instead of SUCCESS without a device. */
static void expect_call(const char* what, const call_t* c, int expected, const char* names) {
  fd_decode_params p;
  int run_expected = expected == FD_STATUS_SUCCESS ? FD_STATUS_CUDA_ERROR : expected;
  expect_status(what, "fd_flash_decoding_check", do_check(c), expected, names);
  to_params(c, &p);
  expect_status(what, "fd_decode_check", fd_decode_check(&p), expected, names);
  if (expected != FD_STATUS_SUCCESS || !g_have_gpu) {
    if (c->dtype == FD_DTYPE_F16 || c->dtype == FD_DTYPE_BF16) {
      expect_status(what, c->dtype == FD_DTYPE_F16 ? "fd_flash_decoding_f16_run"
                                                    : "fd_flash_decoding_bf16_run",
                    do_run(c), run_expected, expected == FD_STATUS_SUCCESS ? NULL : names);
    }
    expect_status(what, "fd_decode", fd_decode(&p), run_expected,
                  expected == FD_STATUS_SUCCESS ? NULL : names);
  }
}

/* A problem-level refusal: fd_flash_decoding_check_problem agrees and the
 * workspace size is 0. */
static void expect_problem(const char* what, const call_t* c, int expected, const char* names) {
  int s = fd_flash_decoding_check_problem(c->dtype, c->B, c->H, c->Hkv, c->K, c->D, c->scale);
  expect_status(what, "fd_flash_decoding_check_problem", s, expected, names);
  /* The size query has no scale argument, so only extent refusals show there. */
  if (expected != FD_STATUS_SUCCESS && isfinite(c->scale)) {
    size_t ws = fd_flash_decoding_workspace_size(c->B, c->H, c->Hkv, c->K, c->D);
    CHECK(ws == 0, "%s: fd_flash_decoding_workspace_size = %lu for a refused problem, expected 0",
          what, (unsigned long)ws);
  }
  expect_call(what, c, expected, names);
}

/* ---- version, status strings ---------------------------------------------- */

static void test_version(void) {
  CHECK(FD_VERSION == FD_VERSION_MAJOR * 10000 + FD_VERSION_MINOR * 100 + FD_VERSION_PATCH,
        "FD_VERSION %d != MAJOR*10000+MINOR*100+PATCH", FD_VERSION);
  CHECK(fd_get_version() == FD_VERSION, "fd_get_version() = %d, header says %d",
        fd_get_version(), FD_VERSION);
  CHECK(FD_VERSION_MINOR < 100 && FD_VERSION_PATCH < 100, "version fields out of range");
  CHECK(FD_VERSION_MAJOR == 0 && FD_VERSION_MINOR == 2, "header version %d.%d, expected 0.2",
        FD_VERSION_MAJOR, FD_VERSION_MINOR);
  CHECK(FD_FLASH_DECODING_MAX_HEAD_DIM == 256, "FD_FLASH_DECODING_MAX_HEAD_DIM = %d",
        FD_FLASH_DECODING_MAX_HEAD_DIM);
  CHECK(FD_MAX_PAGE_SIZE == 256, "FD_MAX_PAGE_SIZE = %d", FD_MAX_PAGE_SIZE);
  CHECK(FD_DTYPE_F16 == 1 && FD_DTYPE_BF16 == 2 && FD_DTYPE_F32 == 3 && FD_DTYPE_F64 == 4 &&
            FD_DTYPE_FP8_E4M3 == 5 && FD_DTYPE_FP8_E5M2 == 6,
        "fd_dtype numbering changed");
  CHECK(FD_FLAG_BATCH_INVARIANT == 1u, "FD_FLAG_BATCH_INVARIANT = %u", FD_FLAG_BATCH_INVARIANT);
}

static void test_status_strings(void) {
  int codes[] = {FD_STATUS_SUCCESS,        FD_STATUS_INVALID_PROBLEM,
                 FD_STATUS_UNSUPPORTED,    FD_STATUS_WORKSPACE_TOO_SMALL,
                 FD_STATUS_INVALID_POINTER, FD_STATUS_CUDA_ERROR};
  int unknown[] = {-1, 6, 7, 100, 1000, INT_MAX, INT_MIN};
  const char* seen[6];
  size_t i, j;
  CHECK(FD_STATUS_SUCCESS == 0 && FD_STATUS_INVALID_PROBLEM == 1 && FD_STATUS_UNSUPPORTED == 2 &&
            FD_STATUS_WORKSPACE_TOO_SMALL == 3 && FD_STATUS_INVALID_POINTER == 4 &&
            FD_STATUS_CUDA_ERROR == 5,
        "status numbering changed");
  for (i = 0; i < 6; ++i) {
    const char* s = fd_status_string(codes[i]);
    seen[i] = s;
    CHECK(s != NULL && s[0] != '\0', "fd_status_string(%d) is NULL or empty", codes[i]);
    for (j = 0; s != NULL && j < i; ++j) {
      CHECK(seen[j] == NULL || strcmp(seen[j], s) != 0,
            "fd_status_string(%d) == fd_status_string(%d) = \"%s\"", codes[i], codes[j], s);
    }
  }
  for (i = 0; i < sizeof unknown / sizeof unknown[0]; ++i) {
    const char* s = fd_status_string(unknown[i]);
    CHECK(s != NULL && s[0] != '\0', "fd_status_string(%d) (unknown code) is NULL or empty",
          unknown[i]);
  }
  CHECK(fd_last_error_message() != NULL, "fd_last_error_message() is NULL");
}

/* ---- workspace sizes --------------------------------------------------------- */

static void test_workspace_sizes(void) {
  size_t w;
  int32_t ks[] = {1, 7, 255, 256, 257, 1000, 4096, 33000};
  size_t i;
  w = fd_flash_decoding_workspace_size(1, 32, 8, 8192, 128);
  CHECK(w > 0, "workspace for B=1 Hq=32 Hkv=8 K=8192 D=128 is 0; a split problem needs one");
  CHECK(fd_flash_decoding_workspace_size(2, 32, 8, 8192, 128) > 0,
        "workspace for B=2 Hq=32 Hkv=8 K=8192 D=128 is 0");
  CHECK(fd_flash_decoding_workspace_size(1, 32, 8, 0, 128) == 0, "workspace for k_len=0 != 0");
  CHECK(fd_flash_decoding_workspace_size(7, 8, 8, 0, 72) == 0, "workspace for k_len=0 != 0");
  CHECK(fd_flash_decoding_workspace_size(1, 32, 8, -1, 128) == 0, "workspace for k_len<0 != 0");
  CHECK(fd_flash_decoding_workspace_size(1, 32, 5, 128, 128) == 0,
        "workspace for Hq %% Hkv != 0 is not 0");
  CHECK(fd_flash_decoding_workspace_size(1, 32, 8, 8192, 257) == 0,
        "workspace for head_dim=257 is not 0");
  CHECK(fd_flash_decoding_workspace_size(1, 16, 8, 8192, 256) > 0,
        "workspace for B=1 Hq=16 Hkv=8 K=8192 D=256 is 0; a split problem needs one");
  CHECK(fd_flash_decoding_workspace_size(1, 32, 8, 8192, 129) > 0,
        "workspace for head_dim=129 (the 160 bucket) is 0");
  CHECK(fd_flash_decoding_workspace_size(0, 32, 8, 8192, 128) == 0,
        "workspace for batch_size=0 is not 0");
  /* Deterministic: the same answer twice, and no GPU needed (it runs here). */
  for (i = 0; i < sizeof ks / sizeof ks[0]; ++i) {
    size_t a = fd_flash_decoding_workspace_size(3, 28, 4, ks[i], 72);
    size_t b = fd_flash_decoding_workspace_size(3, 28, 4, ks[i], 72);
    CHECK(a == b, "workspace size not deterministic for k_len=%d", (int)ks[i]);
  }
  /* Huge extents must not wrap to a small number: either refused (0) or at
   * least as large as a very conservative lower bound is NOT required; only
   * that it does not crash and stays stable. */
  {
    size_t a = fd_flash_decoding_workspace_size(INT32_MAX, INT32_MAX, 1, INT32_MAX, 128);
    size_t b = fd_flash_decoding_workspace_size(INT32_MAX, INT32_MAX, 1, INT32_MAX, 128);
    CHECK(a == b, "workspace size for huge extents not stable");
  }
  /* fd_decode_workspace_size agrees; *bytes untouched on refusal. */
  {
    call_t c = base_call(FD_DTYPE_F16);
    fd_decode_params p;
    size_t bytes = 12345;
    int s;
    to_params(&c, &p);
    s = fd_decode_workspace_size(&p, &bytes);
    CHECK(s == FD_STATUS_SUCCESS, "fd_decode_workspace_size(valid) = %d (%s)", s, last_msg());
    CHECK(bytes == c.ws_bytes, "fd_decode_workspace_size %lu != fd_flash_decoding_workspace_size %lu",
          (unsigned long)bytes, (unsigned long)c.ws_bytes);
    p.num_kv_heads = 5;
    bytes = 12345;
    s = fd_decode_workspace_size(&p, &bytes);
    expect_status("fd_decode_workspace_size with num_kv_heads=5", "fd_decode_workspace_size", s,
                  FD_STATUS_INVALID_PROBLEM, "num_kv_heads");
    CHECK(bytes == 12345, "fd_decode_workspace_size wrote *bytes on refusal");
    p.num_kv_heads = 8;
    p.k_len = 0;
    s = fd_decode_workspace_size(&p, &bytes);
    CHECK(s == FD_STATUS_SUCCESS && bytes == 0, "fd_decode_workspace_size(k_len=0) = %d, %lu",
          s, (unsigned long)bytes);
  }
}

/* ---- refusals in the problem stage ------------------------------------------ */

static void test_problem_refusals(int32_t dtype) {
  call_t c;
  char what[160];
  const char* tag = dtype == FD_DTYPE_F16 ? "f16" : "bf16";

#define CASE(desc) (snprintf(what, sizeof what, "[%s] %s", tag, desc), what)

  c = base_call(dtype);
  expect_problem(CASE("valid split problem"), &c, FD_STATUS_SUCCESS, NULL);

  c = base_call(dtype); c.B = 0;
  expect_problem(CASE("batch_size=0"), &c, FD_STATUS_INVALID_PROBLEM, "batch_size");
  c = base_call(dtype); c.B = -1;
  expect_problem(CASE("batch_size=-1"), &c, FD_STATUS_INVALID_PROBLEM, "batch_size");
  c = base_call(dtype); c.H = 0;
  expect_problem(CASE("num_heads=0"), &c, FD_STATUS_INVALID_PROBLEM, "num_heads");
  c = base_call(dtype); c.H = -32;
  expect_problem(CASE("num_heads=-32"), &c, FD_STATUS_INVALID_PROBLEM, "num_heads");
  c = base_call(dtype); c.Hkv = 0;
  expect_problem(CASE("num_kv_heads=0"), &c, FD_STATUS_INVALID_PROBLEM, "num_kv_heads");
  c = base_call(dtype); c.Hkv = -8;
  expect_problem(CASE("num_kv_heads=-8"), &c, FD_STATUS_INVALID_PROBLEM, "num_kv_heads");
  c = base_call(dtype); c.K = -1;
  expect_problem(CASE("k_len=-1"), &c, FD_STATUS_INVALID_PROBLEM, "k_len");
  {
    const char* m;
    c = base_call(dtype); c.K = -77;
    expect_problem(CASE("k_len=-77"), &c, FD_STATUS_INVALID_PROBLEM, "k_len");
    (void)do_check(&c);
    m = last_msg();
    CHECK(strstr(m, "-77") != NULL, "message for k_len=-77 does not give the value: \"%s\"", m);
  }
  c = base_call(dtype); c.D = 0;
  expect_problem(CASE("head_dim=0"), &c, FD_STATUS_INVALID_PROBLEM, "head_dim");
  c = base_call(dtype); c.D = -128;
  expect_problem(CASE("head_dim=-128"), &c, FD_STATUS_INVALID_PROBLEM, "head_dim");

  c = base_call(dtype); c.Hkv = 5;
  expect_problem(CASE("num_heads=32 % num_kv_heads=5"), &c, FD_STATUS_INVALID_PROBLEM,
                 "num_kv_heads");
  c = base_call(dtype); c.Hkv = 64;
  c.k_sb = (int64_t)c.Hkv * c.k_sh; c.v_sb = c.k_sb;
  expect_problem(CASE("num_kv_heads=64 > num_heads=32"), &c, FD_STATUS_INVALID_PROBLEM,
                 "num_kv_heads");

  c = base_call(dtype); c.D = 257;
  expect_problem(CASE("head_dim=257"), &c, FD_STATUS_UNSUPPORTED, "head_dim");
  {
    const char* m;
    (void)do_check(&c);
    m = last_msg();
    CHECK(fd_test_mentions_number(m, 257) && fd_test_mentions_number(m, 256),
          "message for head_dim=257 lacks the value or the limit 256: \"%s\"", m);
  }
  c = base_call(dtype); c.D = 1000;
  expect_problem(CASE("head_dim=1000"), &c, FD_STATUS_UNSUPPORTED, "head_dim");
  c = base_call(dtype); c.D = INT32_MAX;
  expect_problem(CASE("head_dim=INT32_MAX"), &c, FD_STATUS_UNSUPPORTED, "head_dim");

  c = base_call(dtype); c.scale = (float)NAN;
  expect_problem(CASE("scale=NaN"), &c, FD_STATUS_INVALID_PROBLEM, "scale");
  c = base_call(dtype); c.scale = (float)INFINITY;
  expect_problem(CASE("scale=+inf"), &c, FD_STATUS_INVALID_PROBLEM, "scale");
  c = base_call(dtype); c.scale = -(float)INFINITY;
  expect_problem(CASE("scale=-inf"), &c, FD_STATUS_INVALID_PROBLEM, "scale");

  /* Accepted edge problems. */
  c = base_call(dtype); c.K = 0; c.k_sh = c.v_sh = 0; c.k_sb = c.v_sb = 0;
  c.ws = NULL; c.ws_bytes = 0;
  expect_problem(CASE("k_len=0, no workspace"), &c, FD_STATUS_SUCCESS, NULL);
  c = base_call(dtype); c.scale = 0.0f;
  expect_problem(CASE("scale=0"), &c, FD_STATUS_SUCCESS, NULL);
  c = base_call(dtype); c.scale = -0.5f;
  expect_problem(CASE("scale=-0.5"), &c, FD_STATUS_SUCCESS, NULL);
  c = base_call(dtype); c.Hkv = 1; c.k_sb = c.k_sh; c.v_sb = c.v_sh;
  c.ws_bytes = fd_flash_decoding_workspace_size(c.B, c.H, c.Hkv, c.K, c.D);
  c.ws = c.ws_bytes ? FAKE_WS : NULL;
  expect_problem(CASE("MQA 32/1"), &c, FD_STATUS_SUCCESS, NULL);
  {
    int32_t dims[] = {1, 7, 64, 72, 80, 96, 127, 128, 129, 136, 160, 161, 192, 200, 255, 256};
    size_t i;
    for (i = 0; i < sizeof dims / sizeof dims[0]; ++i) {
      char d[64];
      c = base_call(dtype);
      c.D = dims[i];
      c.q_sh = c.y_sh = c.D; c.q_sb = c.y_sb = (int64_t)c.H * c.D;
      c.k_sk = c.v_sk = c.D; c.k_sh = c.v_sh = (int64_t)c.K * c.D;
      c.k_sb = c.v_sb = (int64_t)c.Hkv * c.k_sh;
      c.ws_bytes = fd_flash_decoding_workspace_size(c.B, c.H, c.Hkv, c.K, c.D);
      c.ws = c.ws_bytes ? FAKE_WS : NULL;
      snprintf(d, sizeof d, "head_dim=%d", (int)dims[i]);
      expect_problem(CASE(d), &c, FD_STATUS_SUCCESS, NULL);
    }
  }
#undef CASE
}

/* ---- strides, overflow, y overlapping itself --------------------------------- */

static void test_stride_refusals(int32_t dtype) {
  call_t c;
  char what[160];
  const char* tag = dtype == FD_DTYPE_F16 ? "f16" : "bf16";
  struct { const char* name; size_t off; } strides[] = {
    {"q_stride_b", offsetof(call_t, q_sb)}, {"q_stride_h", offsetof(call_t, q_sh)},
    {"k_stride_b", offsetof(call_t, k_sb)}, {"k_stride_h", offsetof(call_t, k_sh)},
    {"k_stride_k", offsetof(call_t, k_sk)}, {"v_stride_b", offsetof(call_t, v_sb)},
    {"v_stride_h", offsetof(call_t, v_sh)}, {"v_stride_k", offsetof(call_t, v_sk)},
    {"y_stride_b", offsetof(call_t, y_sb)}, {"y_stride_h", offsetof(call_t, y_sh)},
  };
  size_t i;

#define CASE(desc) (snprintf(what, sizeof what, "[%s] %s", tag, desc), what)
#define STRIDE(cc, i) (*(int64_t*)((char*)&(cc) + strides[i].off))

  for (i = 0; i < sizeof strides / sizeof strides[0]; ++i) {
    char d[96];
    c = base_call(dtype);
    STRIDE(c, i) = -STRIDE(c, i);
    snprintf(d, sizeof d, "%s negative", strides[i].name);
    expect_call(CASE(d), &c, FD_STATUS_INVALID_PROBLEM, strides[i].name);
    CHECK(fd_flash_decoding_check_problem(c.dtype, c.B, c.H, c.Hkv, c.K, c.D, c.scale) ==
              FD_STATUS_SUCCESS,
          "%s: fd_flash_decoding_check_problem (no strides) refused", what);
    c = base_call(dtype);
    STRIDE(c, i) = -1;
    snprintf(d, sizeof d, "%s = -1", strides[i].name);
    expect_call(CASE(d), &c, FD_STATUS_INVALID_PROBLEM, strides[i].name);
  }

  /* Byte counts that overflow. */
  c = base_call(dtype); c.k_sb = (int64_t)1 << 62;
  expect_call(CASE("k_stride_b=2^62, B=2: byte offsets overflow"), &c, FD_STATUS_INVALID_PROBLEM,
              "k_stride_b|k");
  c = base_call(dtype); c.k_sk = (int64_t)1 << 61;
  expect_call(CASE("k_stride_k=2^61, K=8192: byte offsets overflow"), &c,
              FD_STATUS_INVALID_PROBLEM, "k_stride_k|k");
  c = base_call(dtype); c.v_sh = INT64_MAX;
  expect_call(CASE("v_stride_h=INT64_MAX"), &c, FD_STATUS_INVALID_PROBLEM, "v_stride_h|v");
  c = base_call(dtype); c.q_sb = INT64_MAX / 2 + 1;
  expect_call(CASE("q_stride_b=INT64_MAX/2+1"), &c, FD_STATUS_INVALID_PROBLEM, "q_stride_b|q");
  c = base_call(dtype); c.y_sb = (int64_t)1 << 62;
  expect_call(CASE("y_stride_b=2^62"), &c, FD_STATUS_INVALID_PROBLEM, "y_stride_b|y");
  c = base_call(dtype); c.K = INT32_MAX; c.k_sk = (int64_t)1 << 40; c.v_sk = c.k_sk;
  c.k_sh = c.v_sh = c.k_sb = c.v_sb = 0;
  c.ws_bytes = fd_flash_decoding_workspace_size(c.B, c.H, c.Hkv, c.K, c.D);
  c.ws = c.ws_bytes ? FAKE_WS : NULL;
  expect_call(CASE("k_len=INT32_MAX x k_stride_k=2^40"), &c, FD_STATUS_INVALID_PROBLEM,
              "k_stride_k|k_len|k");

  /* y rows that overlap each other. */
  c = base_call(dtype); c.y_sh = c.D / 2;
  expect_call(CASE("y_stride_h=64 < head_dim=128, num_heads=32"), &c, FD_STATUS_INVALID_PROBLEM,
              "y_stride_h");
  c = base_call(dtype); c.y_sh = 0;
  expect_call(CASE("y_stride_h=0, num_heads=32"), &c, FD_STATUS_INVALID_PROBLEM, "y_stride_h");
  c = base_call(dtype); c.y_sb = 0;
  expect_call(CASE("y_stride_b=0, batch_size=2"), &c, FD_STATUS_INVALID_PROBLEM, "y_stride_b");
  c = base_call(dtype); c.y_sb = c.D; c.y_sh = c.D;
  expect_call(CASE("y_stride_b=y_stride_h=head_dim: y[1,0] is y[0,1]"), &c,
              FD_STATUS_INVALID_PROBLEM, "y_stride_b|y_stride_h");

  /* Strides that are fine. */
  c = base_call(dtype); c.y_sb = c.D; c.y_sh = (int64_t)c.B * c.D;
  expect_call(CASE("y in [H, B, D] order"), &c, FD_STATUS_SUCCESS, NULL);
  c = base_call(dtype); c.B = 1; c.y_sb = 0; c.q_sb = 0;
  c.ws_bytes = fd_flash_decoding_workspace_size(c.B, c.H, c.Hkv, c.K, c.D);
  c.ws = c.ws_bytes ? FAKE_WS : NULL;
  expect_call(CASE("batch_size=1 with y_stride_b=q_stride_b=0"), &c, FD_STATUS_SUCCESS, NULL);
  c = base_call(dtype); c.H = 1; c.Hkv = 1; c.y_sh = 0; c.q_sh = 0; c.k_sb = c.k_sh;
  c.v_sb = c.v_sh;
  c.ws_bytes = fd_flash_decoding_workspace_size(c.B, c.H, c.Hkv, c.K, c.D);
  c.ws = c.ws_bytes ? FAKE_WS : NULL;
  expect_call(CASE("num_heads=1 with y_stride_h=0"), &c, FD_STATUS_SUCCESS, NULL);
  c = base_call(dtype); c.k_sk = 0; c.v_sk = 0; c.k_sb = 0; c.v_sb = 0;
  expect_call(CASE("k/v broadcast with stride 0"), &c, FD_STATUS_SUCCESS, NULL);
  c = base_call(dtype); c.q_sh = 0; c.q_sb = 0;
  expect_call(CASE("q broadcast with stride 0"), &c, FD_STATUS_SUCCESS, NULL);
  c = base_call(dtype);
  c.k_sh = c.D; c.k_sk = (int64_t)c.Hkv * c.D; c.k_sb = (int64_t)c.K * c.k_sk;
  c.v_sh = c.k_sh; c.v_sk = c.k_sk; c.v_sb = c.k_sb;
  expect_call(CASE("NHD k/v cache"), &c, FD_STATUS_SUCCESS, NULL);
  c = base_call(dtype); c.q_sh = c.D + 1; c.q_sb = 32 * (int64_t)(c.D + 1) + 3;
  c.k_sk = c.D + 1; c.k_sh = (int64_t)c.K * (c.D + 1) + 5; c.k_sb = 8 * c.k_sh + 7;
  c.v_sk = c.D + 3; c.v_sh = (int64_t)c.K * (c.D + 3) + 1; c.v_sb = 8 * c.v_sh + 1;
  c.y_sh = c.D + 1; c.y_sb = 32 * (int64_t)(c.D + 1) + 1;
  expect_call(CASE("odd (padded) strides everywhere"), &c, FD_STATUS_SUCCESS, NULL);
#undef STRIDE
#undef CASE
}

/* ---- workspace stage ------------------------------------------------------- */

static void test_workspace_refusals(int32_t dtype) {
  call_t c;
  char what[160];
  const char* tag = dtype == FD_DTYPE_F16 ? "f16" : "bf16";
  size_t need;
#define CASE(desc) (snprintf(what, sizeof what, "[%s] %s", tag, desc), what)

  c = base_call(dtype);
  need = c.ws_bytes;
  if (!CHECK(need > 0, "base problem needs no workspace; workspace refusals cannot be tested")) {
    return;
  }
  c.ws_bytes = need - 1;
  expect_call(CASE("workspace one byte short"), &c, FD_STATUS_WORKSPACE_TOO_SMALL, NULL);
  {
    const char* m;
    (void)do_check(&c);
    m = last_msg();
    CHECK(fd_test_mentions_number(m, (unsigned long long)need),
          "%s: message does not give the needed %lu bytes: \"%s\"", what, (unsigned long)need, m);
    CHECK(fd_test_mentions_number(m, (unsigned long long)(need - 1)),
          "%s: message does not give the %lu bytes got: \"%s\"", what, (unsigned long)(need - 1),
          m);
  }
  c = base_call(dtype); c.ws = NULL; c.ws_bytes = 0;
  expect_call(CASE("no workspace for a split problem"), &c, FD_STATUS_WORKSPACE_TOO_SMALL, NULL);
  c = base_call(dtype); c.ws_bytes = need * 4 + 4096;
  expect_call(CASE("larger workspace than needed"), &c, FD_STATUS_SUCCESS, NULL);
  c = base_call(dtype); c.ws = NULL;
  expect_call(CASE("workspace NULL with enough bytes"), &c, FD_STATUS_INVALID_POINTER,
              "workspace");
  c = base_call(dtype); c.ws = (void*)(uintptr_t)cp(FAKE_WS, 1);
  expect_call(CASE("workspace at an odd address"), &c, FD_STATUS_INVALID_POINTER, "workspace");
#undef CASE
}

/* ---- pointer stage ------------------------------------------------------------ */

static void test_pointer_refusals(int32_t dtype) {
  call_t c;
  char what[160];
  const char* tag = dtype == FD_DTYPE_F16 ? "f16" : "bf16";
  int64_t q_bytes, k_bytes, v_bytes;
#define CASE(desc) (snprintf(what, sizeof what, "[%s] %s", tag, desc), what)

  c = base_call(dtype);
  q_bytes = span_bytes_bhd(c.B, c.H, c.D, c.q_sb, c.q_sh);
  k_bytes = 2 * ((c.B - 1) * c.k_sb + (c.Hkv - 1) * c.k_sh + (int64_t)(c.K - 1) * c.k_sk + c.D);
  v_bytes = k_bytes;

  c = base_call(dtype); c.q = NULL;
  expect_call(CASE("q NULL"), &c, FD_STATUS_INVALID_POINTER, "q");
  c = base_call(dtype); c.k = NULL;
  expect_call(CASE("k NULL"), &c, FD_STATUS_INVALID_POINTER, "k");
  c = base_call(dtype); c.v = NULL;
  expect_call(CASE("v NULL"), &c, FD_STATUS_INVALID_POINTER, "v");
  c = base_call(dtype); c.y = NULL;
  expect_call(CASE("y NULL"), &c, FD_STATUS_INVALID_POINTER, "y");

  c = base_call(dtype); c.q = cp(FAKE_Q, 1);
  expect_call(CASE("q at an odd address"), &c, FD_STATUS_INVALID_POINTER, "q");
  c = base_call(dtype); c.k = cp(FAKE_K, 1);
  expect_call(CASE("k at an odd address"), &c, FD_STATUS_INVALID_POINTER, "k");
  c = base_call(dtype); c.v = cp(FAKE_V, 3);
  expect_call(CASE("v at an odd address"), &c, FD_STATUS_INVALID_POINTER, "v");
  c = base_call(dtype); c.y = (void*)(uintptr_t)cp(FAKE_Y, 1);
  expect_call(CASE("y at an odd address"), &c, FD_STATUS_INVALID_POINTER, "y");

  c = base_call(dtype); c.y = (void*)(uintptr_t)FAKE_Q;
  expect_call(CASE("y == q"), &c, FD_STATUS_INVALID_POINTER, "y,q");
  /* Overlaps by 16 bytes, keeping y 16-byte aligned so that only the overlap is wrong. */
  c = base_call(dtype); c.y = (void*)(uintptr_t)cp(FAKE_Q, q_bytes - 16);
  expect_call(CASE("y starts in q's last 16 bytes"), &c, FD_STATUS_INVALID_POINTER, "y,q");
  c = base_call(dtype); c.y = (void*)(uintptr_t)cp(FAKE_Q, -q_bytes + 16);
  expect_call(CASE("y ends in q's first 16 bytes"), &c, FD_STATUS_INVALID_POINTER, "y,q");
  c = base_call(dtype); c.y = (void*)(uintptr_t)cp(FAKE_K, k_bytes / 2);
  expect_call(CASE("y inside k"), &c, FD_STATUS_INVALID_POINTER, "y,k");
  c = base_call(dtype); c.y = (void*)(uintptr_t)cp(FAKE_V, v_bytes - 16);
  expect_call(CASE("y over v's last 16 bytes"), &c, FD_STATUS_INVALID_POINTER, "y,v");

  c = base_call(dtype); c.y = (void*)(uintptr_t)cp(FAKE_Q, q_bytes);
  expect_call(CASE("y right after q"), &c, FD_STATUS_SUCCESS, NULL);
  c = base_call(dtype); c.y = (void*)(uintptr_t)cp(FAKE_Q, -q_bytes);
  expect_call(CASE("y right before q"), &c, FD_STATUS_SUCCESS, NULL);
  c = base_call(dtype); c.y = (void*)(uintptr_t)cp(FAKE_V, v_bytes);
  expect_call(CASE("y right after v"), &c, FD_STATUS_SUCCESS, NULL);
  c = base_call(dtype); c.k = FAKE_V; c.q = FAKE_V;
  expect_call(CASE("inputs q, k, v sharing memory"), &c, FD_STATUS_SUCCESS, NULL);
#undef CASE
}

/* ---- validation order ------------------------------------------------------------ */

static void test_order(int32_t dtype) {
  call_t c;
  char what[160];
  const char* tag = dtype == FD_DTYPE_F16 ? "f16" : "bf16";
#define CASE(desc) (snprintf(what, sizeof what, "[%s] %s", tag, desc), what)

  c = base_call(dtype); c.Hkv = 5; c.ws_bytes = 1; c.q = NULL; c.y = (void*)(uintptr_t)FAKE_K;
  expect_call(CASE("order: bad divisibility + small workspace + NULL q + overlap"), &c,
              FD_STATUS_INVALID_PROBLEM, "num_kv_heads");
  c = base_call(dtype); c.D = 257; c.q = NULL; c.ws_bytes = 0; c.ws = NULL;
  expect_call(CASE("order: head_dim=257 + NULL q"), &c, FD_STATUS_UNSUPPORTED, "head_dim");
  c = base_call(dtype); c.k_sk = -1; c.y = NULL; c.ws_bytes = 1;
  expect_call(CASE("order: negative k_stride_k + small workspace + NULL y"), &c,
              FD_STATUS_INVALID_PROBLEM, "k_stride_k");
  c = base_call(dtype); c.y_sh = 1; c.y = NULL;
  expect_call(CASE("order: overlapping y rows + NULL y"), &c, FD_STATUS_INVALID_PROBLEM,
              "y_stride_h");
  c = base_call(dtype); c.scale = (float)NAN; c.ws_bytes = 0; c.ws = NULL;
  expect_call(CASE("order: NaN scale + no workspace"), &c, FD_STATUS_INVALID_PROBLEM, "scale");
  c = base_call(dtype); c.ws_bytes = 0; c.ws = NULL; c.q = NULL; c.k = cp(FAKE_K, 1);
  c.y = (void*)(uintptr_t)FAKE_V;
  expect_call(CASE("order: no workspace + NULL q + odd k + y over v"), &c,
              FD_STATUS_WORKSPACE_TOO_SMALL, NULL);
#undef CASE
}

/* ---- dtypes --------------------------------------------------------------------- */

static void test_dtypes(void) {
  call_t c;
  int32_t unsupported[] = {FD_DTYPE_F32, FD_DTYPE_F64, FD_DTYPE_FP8_E4M3, FD_DTYPE_FP8_E5M2};
  int32_t invalid[] = {0, 7, 99, -1};
  size_t i;
  for (i = 0; i < sizeof unsupported / sizeof unsupported[0]; ++i) {
    char what[96];
    int s;
    c = base_call(FD_DTYPE_F16);
    c.dtype = unsupported[i];
    snprintf(what, sizeof what, "dtype=%d", (int)unsupported[i]);
    expect_call(what, &c, FD_STATUS_UNSUPPORTED, "dtype");
    s = fd_flash_decoding_check_problem(c.dtype, c.B, c.H, c.Hkv, c.K, c.D, c.scale);
    expect_status(what, "fd_flash_decoding_check_problem", s, FD_STATUS_UNSUPPORTED, "dtype");
  }
  for (i = 0; i < sizeof invalid / sizeof invalid[0]; ++i) {
    fd_decode_params p;
    int s1, s2;
    c = base_call(FD_DTYPE_F16);
    c.dtype = invalid[i];
    s1 = do_check(&c);
    CHECK(s1 == FD_STATUS_INVALID_PROBLEM || s1 == FD_STATUS_UNSUPPORTED,
          "fd_flash_decoding_check with unknown dtype %d = %d", (int)invalid[i], s1);
    CHECK(fd_test_names(last_msg(), "dtype"), "unknown dtype message does not name dtype: \"%s\"",
          g_msg);
    to_params(&c, &p);
    s2 = fd_decode_check(&p);
    CHECK(s2 == s1, "fd_decode_check with unknown dtype %d = %d, fd_flash_decoding_check = %d",
          (int)invalid[i], s2, s1);
  }
}

/* ---- the size-versioned struct ------------------------------------------------ */

static void test_params_struct(void) {
  call_t c = base_call(FD_DTYPE_BF16);
  fd_decode_params p;
  size_t garbage[] = {0, 1, 4, sizeof(size_t), offsetof(fd_decode_params, batch_size),
                      (size_t)1 << 62, (size_t)-1};
  size_t i;
  int s;

  for (i = 0; i < sizeof garbage / sizeof garbage[0]; ++i) {
    char what[96];
    to_params(&c, &p);
    p.struct_size = garbage[i];
    snprintf(what, sizeof what, "struct_size=%lu", (unsigned long)garbage[i]);
    expect_status(what, "fd_decode_check", fd_decode_check(&p), FD_STATUS_INVALID_PROBLEM,
                  garbage[i] <= sizeof(size_t) || garbage[i] > sizeof p ? "struct_size" : NULL);
    expect_status(what, "fd_decode", fd_decode(&p), FD_STATUS_INVALID_PROBLEM, NULL);
    {
      size_t bytes = 777;
      s = fd_decode_workspace_size(&p, &bytes);
      expect_status(what, "fd_decode_workspace_size", s, FD_STATUS_INVALID_PROBLEM, NULL);
      CHECK(bytes == 777, "%s: fd_decode_workspace_size wrote *bytes on refusal", what);
    }
  }

  /* NULL params: refused, no crash. */
  s = fd_decode_check(NULL);
  CHECK(s == FD_STATUS_INVALID_PROBLEM || s == FD_STATUS_INVALID_POINTER,
        "fd_decode_check(NULL) = %d", s);
  s = fd_decode(NULL);
  CHECK(s == FD_STATUS_INVALID_PROBLEM || s == FD_STATUS_INVALID_POINTER, "fd_decode(NULL) = %d",
        s);
  {
    size_t bytes = 0;
    s = fd_decode_workspace_size(NULL, &bytes);
    CHECK(s == FD_STATUS_INVALID_PROBLEM || s == FD_STATUS_INVALID_POINTER,
          "fd_decode_workspace_size(NULL, &bytes) = %d", s);
    to_params(&c, &p);
    s = fd_decode_workspace_size(&p, NULL);
    CHECK(s == FD_STATUS_INVALID_PROBLEM || s == FD_STATUS_INVALID_POINTER,
          "fd_decode_workspace_size(&params, NULL) = %d", s);
  }

  /* Old callers: the oldest struct a caller can have compiled ends with
   * `stream`; one that stops short of it is refused. Bytes past struct_size
   * are never read: here every one of them holds 0xA5 (non-NULL pointers,
   * huge strides, negative counts) and the call is still the plain decode.
   * Sizes: 0.0's (through `stream`), a cut before block_table, 0.1's (through
   * v_scale, unpadded and padded: the 0.2 fields read as zero), the whole. */
  to_params(&c, &p);
  p.struct_size = offsetof(fd_decode_params, stream);
  expect_status("struct_size=offsetof(stream)", "fd_decode_check", fd_decode_check(&p),
                FD_STATUS_INVALID_PROBLEM, "struct_size");
  {
    size_t olds[] = {offsetof(fd_decode_params, stream) + sizeof(void*),
                     offsetof(fd_decode_params, block_table),
                     offsetof(fd_decode_params, v_scale) + sizeof(float),
                     offsetof(fd_decode_params, k_stride_page), sizeof p};
    int32_t full_cell = -1;
    to_params(&c, &p);
    s = fd_decode_cell(&p, &full_cell);
    CHECK(s == FD_STATUS_SUCCESS, "fd_decode_cell(valid bf16 D=128) = %d (%s)", s, last_msg());
    for (i = 0; i < sizeof olds / sizeof olds[0]; ++i) {
      char what[128];
      int32_t cell = -1;
      to_params(&c, &p);
      p.struct_size = olds[i];
      if (olds[i] < sizeof p) memset((char*)&p + olds[i], 0xA5, sizeof p - olds[i]);
      snprintf(what, sizeof what, "old caller, struct_size=%lu, 0xA5 in every byte past it",
               (unsigned long)olds[i]);
      expect_status(what, "fd_decode_check", fd_decode_check(&p), FD_STATUS_SUCCESS, NULL);
      {
        size_t bytes = 0;
        s = fd_decode_workspace_size(&p, &bytes);
        CHECK(s == FD_STATUS_SUCCESS && bytes == c.ws_bytes,
              "%s: fd_decode_workspace_size = %d, %lu (expected %lu)", what, s,
              (unsigned long)bytes, (unsigned long)c.ws_bytes);
      }
      s = fd_decode_cell(&p, &cell);
      CHECK(s == FD_STATUS_SUCCESS && cell == full_cell,
            "%s: fd_decode_cell = %d, cell %d (the full struct runs cell %d)", what, s, (int)cell,
            (int)full_cell);
      if (!g_have_gpu) {
        expect_status(what, "fd_decode (no GPU)", fd_decode(&p), FD_STATUS_CUDA_ERROR, NULL);
      }
    }
  }

  /* The 0.2 fields: read at the full size (each one set alone is honoured or
   * refused, the field named), ignored by a caller whose struct ends before
   * them (0.1's size: the same values are never seen). */
  {
    struct { const char* name; int which; int status; } f02[] = {
      {"k_stride_page", 0, FD_STATUS_INVALID_PROBLEM}, /* set without a block table */
      {"v_stride_page", 1, FD_STATUS_INVALID_PROBLEM},
      {"max_pages", 2, FD_STATUS_INVALID_PROBLEM},
      {"num_pages", 3, FD_STATUS_INVALID_PROBLEM},
      {"k_scales", 4, FD_STATUS_UNSUPPORTED},          /* a scale with a 16-bit cache */
      {"v_scales", 5, FD_STATUS_UNSUPPORTED},
      {"sink_tokens", 6, FD_STATUS_INVALID_PROBLEM},   /* -1 */
    };
    size_t v01 = offsetof(fd_decode_params, k_stride_page);
    for (i = 0; i < sizeof f02 / sizeof f02[0]; ++i) {
      char what[128];
      to_params(&c, &p);
      switch (f02[i].which) {
        case 0: p.k_stride_page = 16 * 8 * 128; break;
        case 1: p.v_stride_page = 16 * 8 * 128; break;
        case 2: p.max_pages = 512; break;
        case 3: p.num_pages = 1024; break;
        case 4: p.k_scales = (const float*)(uintptr_t)0x60005000u; break;
        case 5: p.v_scales = (const float*)(uintptr_t)0x60006000u; break;
        default: p.sink_tokens = -1; break;
      }
      snprintf(what, sizeof what, "0.2 field %s set, full struct", f02[i].name);
      expect_status(what, "fd_decode_check", fd_decode_check(&p), f02[i].status, f02[i].name);
      expect_status(what, "fd_decode", fd_decode(&p), f02[i].status, f02[i].name);
      p.struct_size = v01;
      snprintf(what, sizeof what, "0.2 field %s set past a 0.1 struct_size=%lu", f02[i].name,
               (unsigned long)v01);
      expect_status(what, "fd_decode_check", fd_decode_check(&p), FD_STATUS_SUCCESS, NULL);
    }
  }

  /* window_size: 0 is off, 1 a one-key window (valid), below 0 nonsense. */
  to_params(&c, &p);
  p.window_size = 1;
  expect_status("window_size=1", "fd_decode_check", fd_decode_check(&p), FD_STATUS_SUCCESS, NULL);
  to_params(&c, &p);
  p.window_size = -1;
  expect_status("window_size=-1", "fd_decode_check", fd_decode_check(&p),
                FD_STATUS_INVALID_PROBLEM, "window_size");
  to_params(&c, &p);
  p.window_size = INT32_MIN;
  expect_status("window_size=INT32_MIN", "fd_decode_check", fd_decode_check(&p),
                FD_STATUS_INVALID_PROBLEM, "window_size");

  /* A newer caller (bigger struct): a zero tail is "everything new off"; a set
   * byte in it is a field this library cannot honour, never ignored. */
  {
    struct { fd_decode_params p; unsigned char tail[32]; } big;
    fd_decode_params* bp = &big.p;
    memset(&big, 0, sizeof big);
    to_params(&c, bp);
    bp->struct_size = sizeof big;
    expect_status("newer caller, zero tail", "fd_decode_check", fd_decode_check(bp),
                  FD_STATUS_SUCCESS, NULL);
    big.tail[5] = 1;
    expect_status("newer caller with a set unknown field", "fd_decode_check", fd_decode_check(bp),
                  FD_STATUS_UNSUPPORTED, "struct_size");
    expect_status("newer caller with a set unknown field", "fd_decode", fd_decode(bp),
                  FD_STATUS_UNSUPPORTED, "struct_size");
  }

  /* Every documented extension field, alone and all together: accepted by the
   * host checks (SUCCESS, nothing less), and fd_decode gets past them to the
   * launch (CUDA_ERROR without a device). The GPU cases check the results. */
  {
    struct { const char* name; int which; } feats[] = {
      {"lse", 0}, {"seq_lens", 1}, {"window_size", 2}, {"sinks", 3},
      {"alibi_slopes", 4}, {"logits_soft_cap", 5}, {"flags=batch_invariant", 6},
      {"sink_tokens under a window", 7}, {"sink_tokens without a window", 8},
      {"kv_dtype = dtype", 9}, {"everything at once", 10},
    };
    for (i = 0; i < sizeof feats / sizeof feats[0]; ++i) {
      char what[128];
      int all = feats[i].which == 10;
      to_params(&c, &p);
      if (all || feats[i].which == 0) {
        p.lse = (float*)(uintptr_t)0x60000000u; p.lse_stride_b = 32; p.lse_stride_h = 1;
      }
      if (all || feats[i].which == 1) p.seq_lens = (const int32_t*)(uintptr_t)0x60001000u;
      if (all || feats[i].which == 2 || feats[i].which == 7) p.window_size = 101;
      if (all || feats[i].which == 3) p.sinks = (const float*)(uintptr_t)0x60003000u;
      if (all || feats[i].which == 4) p.alibi_slopes = (const float*)(uintptr_t)0x60004000u;
      if (all || feats[i].which == 5) p.logits_soft_cap = 30.0f;
      if (all || feats[i].which == 6) p.flags = FD_FLAG_BATCH_INVARIANT;
      if (all || feats[i].which == 7 || feats[i].which == 8) p.sink_tokens = 4;
      if (all || feats[i].which == 9) p.kv_dtype = p.dtype;
      snprintf(what, sizeof what, "extension %s", feats[i].name);
      expect_status(what, "fd_decode_check", fd_decode_check(&p), FD_STATUS_SUCCESS, NULL);
      {
        size_t bytes = 0;
        s = fd_decode_workspace_size(&p, &bytes);
        CHECK(s == FD_STATUS_SUCCESS && bytes > 0, "%s: fd_decode_workspace_size = %d, %lu", what,
              s, (unsigned long)bytes);
      }
      if (!g_have_gpu) { /* never launch on fake pointers */
        expect_status(what, "fd_decode (no GPU)", fd_decode(&p), FD_STATUS_CUDA_ERROR, NULL);
      }
    }
    /* Flag bits the header does not define are refused, never ignored. */
    {
      uint32_t unknown[] = {0x2u, 0x80000000u, 0xffffffffu};
      for (i = 0; i < sizeof unknown / sizeof unknown[0]; ++i) {
        char what[64];
        to_params(&c, &p);
        p.flags = unknown[i];
        snprintf(what, sizeof what, "flags=0x%x", (unsigned)unknown[i]);
        expect_status(what, "fd_decode_check", fd_decode_check(&p), FD_STATUS_UNSUPPORTED,
                      "flags");
        expect_status(what, "fd_decode", fd_decode(&p), FD_STATUS_UNSUPPORTED, "flags");
      }
    }
  }

  /* Bad values of the extension fields: refused, the field named. */
  {
    struct { const char* what; int which; int status; const char* name; } bad[] = {
      {"logits_soft_cap=-1", 0, FD_STATUS_INVALID_PROBLEM, "logits_soft_cap"},
      {"logits_soft_cap=NaN", 1, FD_STATUS_INVALID_PROBLEM, "logits_soft_cap"},
      {"lse_stride_b=-1", 2, FD_STATUS_INVALID_PROBLEM, "lse_stride_b"},
      {"lse_stride_h=0 (heads share one entry)", 3, FD_STATUS_INVALID_PROBLEM, "lse_stride_h"},
      {"lse misaligned", 4, FD_STATUS_INVALID_POINTER, "lse"},
      {"lse over y", 5, FD_STATUS_INVALID_POINTER, "lse,y"},
      {"sinks misaligned", 6, FD_STATUS_INVALID_POINTER, "sinks"},
      {"alibi_slopes misaligned", 7, FD_STATUS_INVALID_POINTER, "alibi_slopes"},
      {"seq_lens misaligned", 8, FD_STATUS_INVALID_POINTER, "seq_lens"},
      {"logits_soft_cap=+inf", 9, FD_STATUS_INVALID_PROBLEM, "logits_soft_cap"},
      {"sink_tokens=-1", 10, FD_STATUS_INVALID_PROBLEM, "sink_tokens"},
      {"sink_tokens=INT32_MIN under a window", 11, FD_STATUS_INVALID_PROBLEM, "sink_tokens"},
      {"lse over seq_lens", 12, FD_STATUS_INVALID_POINTER, "lse,seq_lens"},
      {"y over sinks", 13, FD_STATUS_INVALID_POINTER, "y,sinks"},
      {"y over alibi_slopes", 14, FD_STATUS_INVALID_POINTER, "y,alibi_slopes"},
      {"lse over q", 15, FD_STATUS_INVALID_POINTER, "lse,q"},
    };
    for (i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
      to_params(&c, &p);
      p.lse = (float*)(uintptr_t)0x60000000u;
      p.lse_stride_b = c.H;
      p.lse_stride_h = 1;
      switch (bad[i].which) {
        case 0: p.logits_soft_cap = -1.0f; break;
        case 1: p.logits_soft_cap = (float)NAN; break;
        case 2: p.lse_stride_b = -1; break;
        case 3: p.lse_stride_h = 0; p.lse_stride_b = 1; break;
        case 4: p.lse = (float*)(uintptr_t)0x60000002u; break;
        case 5: p.lse = (float*)p.y; break;
        case 6: p.sinks = (const float*)(uintptr_t)0x60003002u; break;
        case 7: p.alibi_slopes = (const float*)(uintptr_t)0x60004002u; break;
        case 8: p.seq_lens = (const int32_t*)(uintptr_t)0x60001002u; break;
        case 9: p.logits_soft_cap = (float)INFINITY; break;
        case 10: p.sink_tokens = -1; break;
        case 11: p.sink_tokens = INT32_MIN; p.window_size = 16; break;
        case 12: p.seq_lens = (const int32_t*)(uintptr_t)0x60000000u; break;
        case 13: p.sinks = (const float*)p.y; p.lse = NULL; p.lse_stride_b = 0; break;
        case 14: p.alibi_slopes = (const float*)cp(p.y, 64); p.lse = NULL; p.lse_stride_b = 0;
                 break;
        default: p.lse = (float*)(uintptr_t)cp(p.q, 4); break;
      }
      expect_status(bad[i].what, "fd_decode_check", fd_decode_check(&p), bad[i].status,
                    bad[i].name);
      expect_status(bad[i].what, "fd_decode", fd_decode(&p), bad[i].status, bad[i].name);
    }
  }

  /* The struct goes through the same problem rules. */
  to_params(&c, &p);
  p.num_kv_heads = 5;
  expect_status("params: num_kv_heads=5", "fd_decode_check", fd_decode_check(&p),
                FD_STATUS_INVALID_PROBLEM, "num_kv_heads");
  to_params(&c, &p);
  p.head_dim = 200; /* rows of 256 elements */
  p.q_stride_h = p.y_stride_h = 256;
  p.q_stride_b = p.y_stride_b = 32 * 256;
  p.k_stride_k = p.v_stride_k = 256;
  CHECK(fd_decode_workspace_size(&p, &p.workspace_bytes) == FD_STATUS_SUCCESS &&
            p.workspace_bytes > c.ws_bytes,
        "head_dim=200 (the 256 bucket) needs %lu workspace bytes, D=128 %lu",
        (unsigned long)p.workspace_bytes, (unsigned long)c.ws_bytes);
  expect_status("params: head_dim=200", "fd_decode_check", fd_decode_check(&p),
                FD_STATUS_SUCCESS, NULL);
  to_params(&c, &p);
  p.head_dim = 257;
  expect_status("params: head_dim=257", "fd_decode_check", fd_decode_check(&p),
                FD_STATUS_UNSUPPORTED, "head_dim");
}

/* ---- the kernel table --------------------------------------------------------- */

static const int32_t k_buckets16[] = {64, 80, 96, 128, 160, 192, 256};
static const int32_t k_buckets8[] = {64, 96, 128, 160, 192, 256};

static int is_fp8_dtype(int32_t d) { return d == FD_DTYPE_FP8_E4M3 || d == FD_DTYPE_FP8_E5M2; }

/* The smallest bucket >= d among the cells of (q_dtype, kv_dtype, paged); 0 if none. */
static int32_t smallest_bucket(int32_t q_dtype, int32_t kv_dtype, int32_t paged, int32_t d) {
  int32_t n = fd_kernel_cell_count(), i, best = 0;
  for (i = 0; i < n; ++i) {
    fd_kernel_cell_info info = FD_KERNEL_CELL_INFO_INIT;
    if (fd_kernel_cell_info_get(i, &info) != FD_STATUS_SUCCESS) continue;
    if (info.kv_dtype != kv_dtype || info.paged != paged || info.head_dim < d) continue;
    if (info.q_dtype != 0 && info.q_dtype != q_dtype) continue;
    if (best == 0 || info.head_dim < best) best = info.head_dim;
  }
  return best;
}

static void test_cell_info_struct_size(void) {
  fd_kernel_cell_info full = FD_KERNEL_CELL_INFO_INIT;
  unsigned char buf[sizeof(fd_kernel_cell_info) + 32];
  size_t sizes[] = {offsetof(fd_kernel_cell_info, q_dtype) + sizeof(int32_t),
                    offsetof(fd_kernel_cell_info, head_dim),
                    offsetof(fd_kernel_cell_info, name), sizeof(fd_kernel_cell_info),
                    sizeof(fd_kernel_cell_info) + 16};
  size_t bad_sizes[] = {0, 1, sizeof(size_t), offsetof(fd_kernel_cell_info, q_dtype) + 3,
                        (size_t)1 << 40};
  size_t i, j;
  int s;
  s = fd_kernel_cell_info_get(0, &full);
  if (!CHECK(s == FD_STATUS_SUCCESS, "fd_kernel_cell_info_get(0) = %d (%s)", s, last_msg())) return;
  for (i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
    size_t sz = sizes[i], limit = sz < sizeof full ? sz : sizeof full;
    long past = 0;
    memset(buf, 0xCC, sizeof buf);
    memcpy(buf, &sz, sizeof sz);
    s = fd_kernel_cell_info_get(0, (fd_kernel_cell_info*)(void*)buf);
    CHECK(s == FD_STATUS_SUCCESS, "fd_kernel_cell_info_get, struct_size=%lu: %d (%s)",
          (unsigned long)sz, s, last_msg());
    for (j = sz; j < sizeof buf; ++j) past += buf[j] != 0xCC;
    CHECK(past == 0, "fd_kernel_cell_info_get, struct_size=%lu wrote %ld bytes past it",
          (unsigned long)sz, past);
    /* The fields that fit are the full struct's (struct_size stays the caller's). */
    CHECK(memcmp(buf + sizeof(size_t), (const unsigned char*)&full + sizeof(size_t),
                 limit - sizeof(size_t)) == 0,
          "fd_kernel_cell_info_get, struct_size=%lu: fields differ from a full-size call",
          (unsigned long)sz);
    {
      size_t got;
      memcpy(&got, buf, sizeof got);
      CHECK(got == sz, "fd_kernel_cell_info_get changed struct_size %lu to %lu",
            (unsigned long)sz, (unsigned long)got);
    }
  }
  for (i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; ++i) {
    size_t sz = bad_sizes[i];
    long changed = 0;
    char what[96];
    memset(buf, 0xCC, sizeof buf);
    memcpy(buf, &sz, sizeof sz);
    snprintf(what, sizeof what, "fd_kernel_cell_info_get, struct_size=%lu", (unsigned long)sz);
    expect_status(what, "fd_kernel_cell_info_get",
                  fd_kernel_cell_info_get(0, (fd_kernel_cell_info*)(void*)buf),
                  FD_STATUS_INVALID_PROBLEM, "struct_size");
    for (j = sizeof sz; j < sizeof buf; ++j) changed += buf[j] != 0xCC;
    CHECK(changed == 0, "%s: refused but wrote %ld bytes", what, changed);
  }
  /* A bad index or a NULL struct: refused, nothing written. */
  {
    int32_t n = fd_kernel_cell_count();
    int32_t idx[] = {-1, n, INT32_MAX, INT32_MIN};
    for (i = 0; i < sizeof idx / sizeof idx[0]; ++i) {
      size_t sz = sizeof(fd_kernel_cell_info);
      long changed = 0;
      memset(buf, 0xCC, sizeof buf);
      memcpy(buf, &sz, sizeof sz);
      expect_status("fd_kernel_cell_info_get(bad index)", "fd_kernel_cell_info_get",
                    fd_kernel_cell_info_get(idx[i], (fd_kernel_cell_info*)(void*)buf),
                    FD_STATUS_INVALID_PROBLEM, "index");
      for (j = sizeof sz; j < sizeof buf; ++j) changed += buf[j] != 0xCC;
      CHECK(changed == 0, "fd_kernel_cell_info_get(%d) refused but wrote %ld bytes", (int)idx[i],
            changed);
    }
    expect_status("fd_kernel_cell_info_get(0, NULL)", "fd_kernel_cell_info_get",
                  fd_kernel_cell_info_get(0, NULL), FD_STATUS_INVALID_POINTER, "info");
  }
}

static void test_kernel_table(void) {
  int32_t n = fd_kernel_cell_count();
  int32_t i, d;
  fd_kernel_cell cell;
  int32_t dts[] = {FD_DTYPE_F16, FD_DTYPE_BF16};
  int32_t kv8[] = {FD_DTYPE_FP8_E4M3, FD_DTYPE_FP8_E5M2};
  int fp8_built = fd_test_build_has_fp8();
  int n16 = 0, n8 = 0;
  size_t t, b;
  int s;

  CHECK(n > 0 && n <= 256, "fd_kernel_cell_count() = %d", (int)n);
  for (i = 0; i < n; ++i) {
    fd_kernel_cell_info info = FD_KERNEL_CELL_INFO_INIT;
    int fp8, bucket_ok = 0;
    char want[64];
    memset(&cell, 0, sizeof cell);
    s = fd_kernel_cell_get(i, &cell);
    CHECK(s == FD_STATUS_SUCCESS, "fd_kernel_cell_get(%d) = %d", (int)i, s);
    s = fd_kernel_cell_info_get(i, &info);
    if (!CHECK(s == FD_STATUS_SUCCESS, "fd_kernel_cell_info_get(%d) = %d (%s)", (int)i, s,
               last_msg())) {
      continue;
    }
    CHECK(info.struct_size == sizeof info, "cell %d: info.struct_size changed to %lu", (int)i,
          (unsigned long)info.struct_size);
    CHECK(cell.name != NULL && info.name != NULL && strcmp(cell.name, info.name) == 0,
          "cell %d: fd_kernel_cell_get and _info_get name it differently", (int)i);
    CHECK(cell.head_dim == info.head_dim && cell.max_group_per_cta == info.max_group_per_cta &&
              cell.max_group_per_cta >= 1,
          "cell %d: head_dim %d/%d, max_group_per_cta %d/%d", (int)i, (int)cell.head_dim,
          (int)info.head_dim, (int)cell.max_group_per_cta, (int)info.max_group_per_cta);
    CHECK(info.paged == 0 || info.paged == 1, "cell %d: paged = %d", (int)i, (int)info.paged);
    fp8 = is_fp8_dtype(info.kv_dtype);
    if (fp8) {
      ++n8;
      CHECK(info.q_dtype == 0 && cell.dtype == info.kv_dtype && info.min_compute_capability == 89,
            "fp8 cell %d: q_dtype %d (0: either), fd_kernel_cell.dtype %d (the KV type %d), "
            "min cc %d (89)", (int)i, (int)info.q_dtype, (int)cell.dtype, (int)info.kv_dtype,
            (int)info.min_compute_capability);
      for (b = 0; b < sizeof k_buckets8 / sizeof k_buckets8[0]; ++b)
        bucket_ok |= info.head_dim == k_buckets8[b];
      snprintf(want, sizeof want, "fd::Fp8<%s>", info.kv_dtype == FD_DTYPE_FP8_E5M2 ? "true"
                                                                                    : "false");
    } else {
      ++n16;
      CHECK((info.q_dtype == FD_DTYPE_F16 || info.q_dtype == FD_DTYPE_BF16) &&
                info.kv_dtype == info.q_dtype && cell.dtype == info.q_dtype &&
                info.min_compute_capability == 80,
            "cell %d: q_dtype %d kv_dtype %d dtype %d min cc %d", (int)i, (int)info.q_dtype,
            (int)info.kv_dtype, (int)cell.dtype, (int)info.min_compute_capability);
      for (b = 0; b < sizeof k_buckets16 / sizeof k_buckets16[0]; ++b)
        bucket_ok |= info.head_dim == k_buckets16[b];
      snprintf(want, sizeof want, "fd::Identity<%s>",
               info.q_dtype == FD_DTYPE_BF16 ? "__nv_bfloat16" : "__half");
    }
    CHECK(bucket_ok, "cell %d: head_dim %d is not a documented bucket", (int)i,
          (int)info.head_dim);
    if (info.name != NULL) {
      char dim[16];
      snprintf(dim, sizeof dim, ", %d, ", (int)info.head_dim);
      CHECK(strncmp(info.name, "fd::decode_kernel<", 18) == 0 && strstr(info.name, want) &&
                strstr(info.name, dim) &&
                strstr(info.name, info.paged ? "fd::PagedKv>" : "fd::ContiguousKv>"),
            "cell %d: name \"%s\" (expected %s, bucket %d, %s)", (int)i, info.name, want,
            (int)info.head_dim, info.paged ? "PagedKv" : "ContiguousKv");
    }
  }
  /* Exactly the documented cells: 16-bit x 7 buckets x {contiguous, paged},
   * and fp8 x 6 buckets x 2 layouts in a build with an architecture >= 89. */
  CHECK(n16 == 2 * 7 * 2, "%d 16-bit cells, expected 28", n16);
  CHECK(n8 == (fp8_built ? 2 * 6 * 2 : 0), "%d fp8 cells, expected %d (architectures \"%s\")",
        n8, fp8_built ? 24 : 0, fd_compiled_architectures());
  for (t = 0; t < 2; ++t) {
    for (b = 0; b < sizeof k_buckets16 / sizeof k_buckets16[0]; ++b) {
      int32_t paged;
      for (paged = 0; paged < 2; ++paged) {
        CHECK(smallest_bucket(dts[t], dts[t], paged, k_buckets16[b]) == k_buckets16[b],
              "no cell for dtype %d, bucket %d, paged %d", (int)dts[t], (int)k_buckets16[b],
              (int)paged);
        if (fp8_built && b < sizeof k_buckets8 / sizeof k_buckets8[0]) {
          CHECK(smallest_bucket(dts[t], kv8[t], paged, k_buckets8[b]) == k_buckets8[b],
                "no fp8 cell for kv %d, bucket %d, paged %d", (int)kv8[t], (int)k_buckets8[b],
                (int)paged);
        }
      }
    }
  }
  s = fd_kernel_cell_get(-1, &cell);
  CHECK(s == FD_STATUS_INVALID_PROBLEM, "fd_kernel_cell_get(-1) = %d", s);
  s = fd_kernel_cell_get(n, &cell);
  CHECK(s == FD_STATUS_INVALID_PROBLEM, "fd_kernel_cell_get(count) = %d", s);
  expect_status("fd_kernel_cell_get(0, NULL)", "fd_kernel_cell_get", fd_kernel_cell_get(0, NULL),
                FD_STATUS_INVALID_POINTER, "cell");
  test_cell_info_struct_size();

  /* fd_kernel_cell_find: the contiguous cell of a dtype (16-bit, or the fp8 KV
   * type), the smallest bucket >= D, for every D in [1, 256]. */
  for (t = 0; t < 4; ++t) {
    int32_t dt = t < 2 ? dts[t] : kv8[t - 2];
    int32_t idx;
    int present = t < 2 || fp8_built;
    for (d = 1; d <= FD_FLASH_DECODING_MAX_HEAD_DIM; ++d) {
      int32_t best = t < 2 ? smallest_bucket(dt, dt, 0, d) : smallest_bucket(FD_DTYPE_F16, dt, 0, d);
      idx = -1;
      s = fd_kernel_cell_find(dt, d, &idx);
      if (!present) {
        if (d == 1 || d == FD_FLASH_DECODING_MAX_HEAD_DIM) {
          CHECK(s == FD_STATUS_UNSUPPORTED && idx == -1,
                "fd_kernel_cell_find(fp8 %d, D=%d) = %d in a build without fp8 cells", (int)dt,
                (int)d, s);
        }
        continue;
      }
      if (CHECK(s == FD_STATUS_SUCCESS && idx >= 0 && idx < n,
                "fd_kernel_cell_find(dtype %d, D=%d) = %d idx %d", (int)dt, (int)d, s, (int)idx)) {
        fd_kernel_cell_info info = FD_KERNEL_CELL_INFO_INIT;
        fd_kernel_cell_info_get(idx, &info);
        CHECK(info.kv_dtype == dt && info.paged == 0 && info.head_dim == best &&
                  (t >= 2 || info.q_dtype == dt),
              "D=%d of dtype %d maps to cell %d (kv %d, bucket %d, paged %d); smallest "
              "contiguous bucket >= D is %d", (int)d, (int)dt, (int)idx, (int)info.kv_dtype,
              (int)info.head_dim, (int)info.paged, (int)best);
      }
    }
    {
      int32_t dims_seen[][2] = {{72, 80}, {1, 64}, {129, 160}, {200, 256}};
      size_t k2;
      for (k2 = 0; t < 2 && k2 < sizeof dims_seen / sizeof dims_seen[0]; ++k2) {
        fd_kernel_cell_info info = FD_KERNEL_CELL_INFO_INIT;
        idx = -1;
        fd_kernel_cell_find(dt, dims_seen[k2][0], &idx);
        CHECK(idx >= 0 && fd_kernel_cell_info_get(idx, &info) == FD_STATUS_SUCCESS &&
                  info.head_dim == dims_seen[k2][1],
              "dtype %d: D=%d runs bucket %d, expected %d", (int)dt, (int)dims_seen[k2][0],
              (int)info.head_dim, (int)dims_seen[k2][1]);
      }
    }
    idx = 12345;
    s = fd_kernel_cell_find(dt, FD_FLASH_DECODING_MAX_HEAD_DIM + 1, &idx);
    expect_status("fd_kernel_cell_find(D=257)", "fd_kernel_cell_find", s, FD_STATUS_UNSUPPORTED,
                  "head_dim");
    CHECK(idx == 12345, "fd_kernel_cell_find(D=257) wrote *index");
    s = fd_kernel_cell_find(dt, 0, &idx);
    CHECK(s != FD_STATUS_SUCCESS && idx == 12345, "fd_kernel_cell_find(D=0) = %d", s);
    s = fd_kernel_cell_find(dt, -5, &idx);
    CHECK(s != FD_STATUS_SUCCESS && idx == 12345, "fd_kernel_cell_find(D=-5) = %d", s);
  }
  {
    int32_t idx = 777;
    int32_t no_cell[] = {FD_DTYPE_F32, FD_DTYPE_F64, 0, 7, -1};
    for (t = 0; t < sizeof no_cell / sizeof no_cell[0]; ++t) {
      s = fd_kernel_cell_find(no_cell[t], 64, &idx);
      CHECK(s == FD_STATUS_UNSUPPORTED && idx == 777, "fd_kernel_cell_find(dtype %d, 64) = %d",
            (int)no_cell[t], s);
    }
    expect_status("fd_kernel_cell_find(..., NULL)", "fd_kernel_cell_find",
                  fd_kernel_cell_find(FD_DTYPE_F16, 64, NULL), FD_STATUS_INVALID_POINTER, "index");
  }

  {
    const char* a = fd_compiled_architectures();
    CHECK(a != NULL && a[0] != '\0', "fd_compiled_architectures() is empty");
#if defined(FD_TEST_CUDA_ARCHITECTURES)
    /* Each number the build asked for appears in the list. */
    if (a != NULL) {
      const char* req = FD_TEST_CUDA_ARCHITECTURES;
      while (*req) {
        char tok[32];
        size_t n2 = 0;
        while (*req && (*req < '0' || *req > '9')) ++req;
        while (*req >= '0' && *req <= '9' && n2 < sizeof tok - 1) tok[n2++] = *req++;
        tok[n2] = '\0';
        if (n2 > 0) {
          CHECK(strstr(a, tok) != NULL, "fd_compiled_architectures() = \"%s\" lacks %s", a, tok);
        }
        while (*req && *req != ';' && *req != ',') ++req;
      }
    }
#endif
    printf("  compiled architectures: %s; %d kernel cells (%d fp8)\n", a ? a : "(null)", (int)n,
           n8);
  }
}

/* ---- messages are per thread --------------------------------------------------- */

#if defined(FD_TEST_HAVE_THREADS)
static int g_thread_fresh_empty = 0;
static int g_thread_names_head_dim = 0;

static void* thread_body(void* arg) {
  const char* m = fd_last_error_message();
  (void)arg;
  g_thread_fresh_empty = (m != NULL && m[0] == '\0');
  (void)fd_flash_decoding_check_problem(FD_DTYPE_F16, 1, 8, 8, 10, 300, 1.0f);
  g_thread_names_head_dim = fd_test_names(fd_last_error_message(), "head_dim");
  return NULL;
}
#endif

static void test_thread_local_message(void) {
#if defined(FD_TEST_HAVE_THREADS)
  pthread_t t;
  (void)fd_flash_decoding_check_problem(FD_DTYPE_F16, 1, 32, 5, 10, 64, 1.0f);
  CHECK(fd_test_names(last_msg(), "num_kv_heads"), "message: \"%s\"", g_msg);
  if (CHECK(pthread_create(&t, NULL, thread_body, NULL) == 0, "pthread_create failed")) {
    pthread_join(t, NULL);
    CHECK(g_thread_fresh_empty, "a fresh thread's fd_last_error_message() is not \"\"");
    CHECK(g_thread_names_head_dim, "the other thread's message does not name head_dim");
    CHECK(fd_test_names(last_msg(), "num_kv_heads") && !fd_test_names(g_msg, "head_dim"),
          "another thread's failure changed this thread's message: \"%s\"", g_msg);
  }
#else
  printf("  (threads unavailable: per-thread message not tested)\n");
#endif
}

/* ---- without a GPU ------------------------------------------------------------ */

static void test_no_gpu(void) {
  call_t c = base_call(FD_DTYPE_F16);
  fd_decode_params p;
  fd_launch_plan plan = FD_LAUNCH_PLAN_INIT;
  int s;
  s = do_run(&c);
  expect_status("valid f16 run without a GPU", "fd_flash_decoding_f16_run", s,
                FD_STATUS_CUDA_ERROR, NULL);
  c.dtype = FD_DTYPE_BF16;
  s = do_run(&c);
  expect_status("valid bf16 run without a GPU", "fd_flash_decoding_bf16_run", s,
                FD_STATUS_CUDA_ERROR, NULL);
  printf("  no-GPU message: \"%s\"\n", last_msg());
  to_params(&c, &p);
  s = fd_decode_plan(&p, &plan);
  expect_status("fd_decode_plan without a GPU", "fd_decode_plan", s, FD_STATUS_CUDA_ERROR, NULL);
  /* k_len == 0 still needs a device to write the zeros. */
  c.K = 0; c.k_sh = c.v_sh = c.k_sb = c.v_sb = 0; c.ws = NULL; c.ws_bytes = 0;
  s = do_run(&c);
  expect_status("k_len=0 run without a GPU", "fd_flash_decoding_bf16_run", s,
                FD_STATUS_CUDA_ERROR, NULL);
}

static int detect_gpu(void) {
  call_t c = base_call(FD_DTYPE_F16);
  fd_decode_params p;
  fd_launch_plan plan = FD_LAUNCH_PLAN_INIT;
  int s, rt;
  to_params(&c, &p);
  plan.struct_size = 0; /* not a plan size: refused before any device is asked */
  s = fd_decode_plan(&p, &plan);
  expect_status("fd_decode_plan, plan.struct_size=0", "fd_decode_plan", s,
                FD_STATUS_INVALID_PROBLEM, "struct_size");
  plan.struct_size = sizeof plan;
  s = fd_decode_plan(&p, &plan);
  CHECK(s == FD_STATUS_SUCCESS || s == FD_STATUS_CUDA_ERROR,
        "fd_decode_plan(valid) = %d (%s), expected SUCCESS (GPU) or CUDA_ERROR (none): \"%s\"", s,
        status_name(s), last_msg());
  rt = fd_test_gpu_device_count();
  if (rt >= 0) {
    CHECK((rt > 0) == (s == FD_STATUS_SUCCESS),
          "CUDA runtime sees %d device(s) but fd_decode_plan returned %d (%s): \"%s\"", rt, s,
          status_name(s), last_msg());
  } else if (s == FD_STATUS_SUCCESS) {
    CHECK(0, "a GPU is present but this test was built without the CUDA runtime");
  }
  return s == FD_STATUS_SUCCESS;
}

int main(void) {
  int32_t dts[] = {FD_DTYPE_F16, FD_DTYPE_BF16};
  size_t i;
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("flashdecoding C ABI test: header %d.%d.%d, library %d\n", FD_VERSION_MAJOR,
         FD_VERSION_MINOR, FD_VERSION_PATCH, fd_get_version());
  g_have_gpu = detect_gpu();
  printf("GPU: %s\n", g_have_gpu ? "present" : "none");

  printf("[host] f16/bf16 conversions, reference\n");
  fd_test_conversions();
  fd_test_reference_selftest();
  printf("[host] version and status strings\n");
  test_version();
  test_status_strings();
  printf("[host] workspace sizes\n");
  test_workspace_sizes();
  for (i = 0; i < 2; ++i) {
    printf("[host] refusals, %s\n", dts[i] == FD_DTYPE_F16 ? "f16" : "bf16");
    test_problem_refusals(dts[i]);
    test_stride_refusals(dts[i]);
    test_workspace_refusals(dts[i]);
    test_pointer_refusals(dts[i]);
    test_order(dts[i]);
  }
  printf("[host] dtypes\n");
  test_dtypes();
  printf("[host] fd_decode_params\n");
  test_params_struct();
  printf("[host] kernel table\n");
  test_kernel_table();
  printf("[host] paged KV, fp8 KV, sink tokens, merge_states, fd_decode_cell\n");
  fd_test_host_features();
  printf("[host] per-thread message\n");
  test_thread_local_message();

  if (g_have_gpu) {
    printf("[gpu] cases\n");
    fd_test_gpu_cases();
  } else {
    printf("[host] behaviour without a GPU\n");
    test_no_gpu();
    if (fd_test_env_flag("FD_REQUIRE_GPU")) {
      /* A GPU machine's check must not pass by skipping. */
      CHECK(0, "FD_REQUIRE_GPU is set but the GPU cases cannot run: %s",
            fd_test_gpu_device_count() < 0
                ? "this test was built without the CUDA runtime"
                : "no usable CUDA device (fd_decode_plan and the CUDA runtime see none)");
    } else {
      printf("GPU cases skipped: no CUDA device\n");
    }
  }

  printf("%ld passed, %ld failed\n", fd_test_passed, fd_test_failed);
  return fd_test_failed == 0 ? 0 : 1;
}
