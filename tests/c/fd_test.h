/* Shared pieces of the C99 test host for libflashdecoding. */
#ifndef FD_TEST_H_
#define FD_TEST_H_

#include <stddef.h>
#include <stdint.h>

/* ---- bookkeeping --------------------------------------------------------- */

extern long fd_test_passed;
extern long fd_test_failed;

#if defined(__GNUC__) || defined(__clang__)
#  define FD_TEST_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#  define FD_TEST_PRINTF(f, a)
#endif

/* Records one check; prints a FAIL line (with the formatted detail) when !ok.
 * Returns ok. */
int fd_test_check(int ok, const char* file, int line, const char* fmt, ...) FD_TEST_PRINTF(4, 5);

#define CHECK(cond, ...) fd_test_check((cond) ? 1 : 0, __FILE__, __LINE__, __VA_ARGS__)

/* 1 when `name` appears in msg as a whole identifier (not as part of a longer
 * one: "q" is not found in "q_stride_b"). */
int fd_test_names(const char* msg, const char* name);

/* Spec of names a message must mention: comma-separated groups, each a
 * '|'-separated list of alternatives; every group needs one alternative.
 * "y,q" = both y and q; "k_stride_b|k" = either. */
int fd_test_names_spec(const char* msg, const char* spec);

/* 1 when the decimal text of v appears in msg (not inside a longer number). */
int fd_test_mentions_number(const char* msg, unsigned long long v);

/* 1 when the environment variable is set to something other than "" or "0". */
int fd_test_env_flag(const char* name);

/* 1 when fd_compiled_architectures() names an architecture >= 89 (machine
 * code or PTX): the builds that carry the fp8 cells. */
int fd_test_build_has_fp8(void);

/* ---- status checks shared by the host cases ------------------------------- */

/* 1 when fd_decode can launch here (a device is present and usable). */
extern int g_have_gpu;

/* The calling thread's fd_last_error_message(), copied into g_msg. */
extern char g_msg[2048];
const char* last_msg(void);

const char* status_name(int s);

/* Checks one status and, for a refusal, that the thread's message names what
 * `names` asks for (see fd_test_names_spec; NULL = only non-empty). */
void expect_status(const char* what, const char* entry, int got, int expected,
                   const char* names);

/* ---- f16 / bf16 / fp8 on the host ------------------------------------------ */

uint16_t fd_test_f32_to_f16(float f);
float fd_test_f16_to_f32(uint16_t h);
uint16_t fd_test_f32_to_bf16(float f);
float fd_test_bf16_to_f32(uint16_t h);
/* fp8 bit patterns to their exact values (OCP formats, as CUDA's __nv_fp8_*):
 * e4m3 (bias 7, no infinities, S.1111.111 is NaN, largest 448) and
 * e5m2 (bias 15, IEEE-like: S.11111.00 is inf, larger mantissas NaN). */
float fd_test_fp8_e4m3_to_float(uint8_t b);
float fd_test_fp8_e5m2_to_float(uint8_t b);
/* Self-test of the conversions above against known bit patterns. */
void fd_test_conversions(void);

/* ---- double-precision reference ------------------------------------------ */

typedef struct fd_ref_problem {
  int32_t batch_size, num_heads, num_kv_heads, k_len, head_dim;
  int64_t q_stride_b, q_stride_h;
  int64_t k_stride_b, k_stride_h, k_stride_k;
  int64_t v_stride_b, v_stride_h, v_stride_k;
  int64_t y_stride_b, y_stride_h;
  double scale;
} fd_ref_problem;

/* The extension fields of fd_decode_params, as the header documents them
 * (host arrays). Zero-initialise: every extension is off at zero. */
typedef struct fd_ref_ext {
  const int32_t* seq_lens;   /* keys [0, seq_lens[b]) of batch b exist; NULL: k_len.
                                Contiguous: clamped into [0, k_len]; paged: a length
                                outside [0, k_len] makes the row NaN */
  int32_t window_size;       /* 0 off; else the last window_size keys attend */
  int32_t sink_tokens;       /* under a window, keys [0, sink_tokens) attend too */
  const double* sinks;       /* [H_q] logit joining the denominator only; NULL off */
  const double* alibi;       /* [H_q] slope: logit += slope * (j - (len-1)); NULL off */
  double soft_cap;           /* logit -> cap * tanh(logit / cap); 0 off */
  /* Paged KV (block_table != NULL): k and v are page pools; key j of KV head h
   * of batch b is at page*k_stride_page + h*k_stride_h + (j % page_size)*k_stride_k,
   * page = block_table[b*block_table_stride_b + j / page_size]. A page id
   * outside [0, num_pages) among the first ceil(len / page_size) entries makes
   * the row NaN. k_stride_b / v_stride_b are not used. */
  const int32_t* block_table;
  int64_t block_table_stride_b;
  int32_t page_size;
  int32_t num_pages;
  int64_t k_stride_page, v_stride_page;
  /* Dequantisation: k = k_stored * k_scale (0 = 1), or k_scales[h] per KV head
   * when k_scales != NULL; v likewise. */
  double k_scale, v_scale;
  const double* k_scales;
  const double* v_scales;
} fd_ref_ext;

/* y[b,h,:] = softmax(scale * q[b,h] . k[b,h/g]^T) . v[b,h/g], all in double,
 * with the extensions of ext (NULL: none). Logit order: scale, soft-cap, ALiBi.
 * lse (may be NULL): natural log of the softmax denominator (sink included),
 * -inf when nothing attends; written at b*lse_stride_b + h*lse_stride_h.
 * Rows with no key give y = 0; rows the header defines as NaN (paged: bad page
 * id or length) give NaN in y and lse. */
void fd_reference_decode(const fd_ref_problem* p, const double* q, const double* k,
                         const double* v, const fd_ref_ext* ext, double* y, double* lse,
                         int64_t lse_stride_b, int64_t lse_stride_h);

/* 1 when batch b's row is NaN by the paged rules (bad page id, bad length). */
int fd_reference_row_is_nan(const fd_ref_problem* p, const fd_ref_ext* ext, int32_t b);

/* fd_merge_states in double: N states (y_i, lse_i) of [B, H, D] into y [B, H, D]
 * and lse_out [B, H] (may be NULL), strides in elements as fd_merge_params. */
typedef struct fd_ref_merge {
  int32_t num_states, batch_size, num_heads, head_dim;
  int64_t state_stride_n, state_stride_b, state_stride_h;
  int64_t lse_stride_n, lse_stride_b, lse_stride_h;
  int64_t y_stride_b, y_stride_h;
  int64_t lse_out_stride_b, lse_out_stride_h;
} fd_ref_merge;

void fd_reference_merge(const fd_ref_merge* m, const double* states, const double* lse,
                        double* y, double* lse_out);

/* Closed-form checks of the references. */
void fd_test_reference_selftest(void);

/* Deterministic pseudo-random numbers in [-1, 1). */
double fd_test_uniform(uint64_t* state);

/* ---- host cases of the 0.2 features (host_features.c) --------------------- */

/* Paged KV, fp8 KV, sink tokens, merge_states, the kernel-cell info and
 * fd_decode_cell: every refusal with its status and the field named, and the
 * documented set accepted. Pointers are fake and never dereferenced. */
void fd_test_host_features(void);

/* ---- GPU cases (gpu_*.c) --------------------------------------------------- */

/* -1: the test was built without the CUDA runtime; otherwise the number of
 * CUDA devices the runtime sees (0 when none or no driver). */
int fd_test_gpu_device_count(void);

/* Runs every GPU case (call only when a device is present). FD_TEST_QUICK=1
 * leaves out the caches over 8192 keys (the sanitizer runs, which are slow;
 * tests/gpu/sanitize_driver.py covers the kernel paths there). */
void fd_test_gpu_cases(void);

#endif /* FD_TEST_H_ */
