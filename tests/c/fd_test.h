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

/* ---- f16 / bf16 on the host (round to nearest even) ---------------------- */

uint16_t fd_test_f32_to_f16(float f);
float fd_test_f16_to_f32(uint16_t h);
uint16_t fd_test_f32_to_bf16(float f);
float fd_test_bf16_to_f32(uint16_t h);
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
  const int32_t* seq_lens;   /* keys [0, seq_lens[b]) of batch b exist; NULL: k_len */
  int32_t window_size;       /* 0 off; else the last window_size keys attend */
  const double* sinks;       /* [H_q] logit joining the denominator only; NULL off */
  const double* alibi;       /* [H_q] slope: logit += slope * (j - (len-1)); NULL off */
  double soft_cap;           /* logit -> cap * tanh(logit / cap); 0 off */
} fd_ref_ext;

/* y[b,h,:] = softmax(scale * q[b,h] . k[b,h/g]^T) . v[b,h/g], all in double,
 * with the extensions of ext (NULL: none). Logit order: scale, soft-cap, ALiBi.
 * lse (may be NULL): natural log of the softmax denominator (sink included),
 * -inf when nothing attends; written at b*lse_stride_b + h*lse_stride_h.
 * Rows with no key give y = 0. */
void fd_reference_decode(const fd_ref_problem* p, const double* q, const double* k,
                         const double* v, const fd_ref_ext* ext, double* y, double* lse,
                         int64_t lse_stride_b, int64_t lse_stride_h);

/* Closed-form checks of fd_reference_decode. */
void fd_test_reference_selftest(void);

/* Deterministic pseudo-random numbers in [-1, 1). */
double fd_test_uniform(uint64_t* state);

/* ---- GPU cases (gpu_cases.c) --------------------------------------------- */

/* -1: the test was built without the CUDA runtime; otherwise the number of
 * CUDA devices the runtime sees (0 when none or no driver). */
int fd_test_gpu_device_count(void);

/* Runs every GPU case (call only when a device is present). */
void fd_test_gpu_cases(void);

#endif /* FD_TEST_H_ */
