/* Test bookkeeping, message matching, status checks and f16/bf16/fp8 conversions. */
#include "fd_test.h"

#include <flashdecoding/flashdecoding.h>

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

long fd_test_passed = 0;
long fd_test_failed = 0;
int g_have_gpu = 0;
char g_msg[2048];

int fd_test_check(int ok, const char* file, int line, const char* fmt, ...) {
  if (ok) {
    ++fd_test_passed;
    return 1;
  }
  ++fd_test_failed;
  {
    va_list ap;
    fprintf(stdout, "FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
  }
  return 0;
}

static int is_ident_char(char c) {
  return isalnum((unsigned char)c) || c == '_';
}

int fd_test_names(const char* msg, const char* name) {
  size_t n = strlen(name);
  const char* p;
  if (msg == NULL || n == 0) return 0;
  for (p = strstr(msg, name); p != NULL; p = strstr(p + 1, name)) {
    int left_ok = (p == msg) || !is_ident_char(p[-1]);
    int right_ok = !is_ident_char(p[n]);
    if (left_ok && right_ok) return 1;
  }
  return 0;
}

int fd_test_names_spec(const char* msg, const char* spec) {
  char buf[256];
  char* group;
  char* save_group;
  size_t len = strlen(spec);
  if (len >= sizeof buf) return 0;
  memcpy(buf, spec, len + 1);
  /* strtok is not reentrant across the two levels; split by hand. */
  group = buf;
  while (group != NULL) {
    char* next_group = strchr(group, ',');
    int found = 0;
    char* alt = group;
    if (next_group != NULL) *next_group++ = '\0';
    save_group = next_group;
    while (alt != NULL) {
      char* next_alt = strchr(alt, '|');
      if (next_alt != NULL) *next_alt++ = '\0';
      if (fd_test_names(msg, alt)) found = 1;
      alt = next_alt;
    }
    if (!found) return 0;
    group = save_group;
  }
  return 1;
}

int fd_test_mentions_number(const char* msg, unsigned long long v) {
  char num[32];
  size_t n;
  const char* p;
  sprintf(num, "%llu", v);
  n = strlen(num);
  if (msg == NULL) return 0;
  for (p = strstr(msg, num); p != NULL; p = strstr(p + 1, num)) {
    int left_ok = (p == msg) || !isdigit((unsigned char)p[-1]);
    int right_ok = !isdigit((unsigned char)p[n]);
    if (left_ok && right_ok) return 1;
  }
  return 0;
}

int fd_test_env_flag(const char* name) {
  const char* v = getenv(name);
  return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

int fd_test_build_has_fp8(void) {
  const char* a = fd_compiled_architectures();
  while (a != NULL && *a) {
    if (*a >= '0' && *a <= '9') {
      char* end;
      long v = strtol(a, &end, 10);
      if (v >= 89) return 1;
      a = end;
    } else {
      ++a;
    }
  }
  return 0;
}

/* ---- status checks ---------------------------------------------------------- */

const char* status_name(int s) {
  switch (s) {
    case FD_STATUS_SUCCESS: return "SUCCESS";
    case FD_STATUS_INVALID_PROBLEM: return "INVALID_PROBLEM";
    case FD_STATUS_UNSUPPORTED: return "UNSUPPORTED";
    case FD_STATUS_WORKSPACE_TOO_SMALL: return "WORKSPACE_TOO_SMALL";
    case FD_STATUS_INVALID_POINTER: return "INVALID_POINTER";
    case FD_STATUS_CUDA_ERROR: return "CUDA_ERROR";
    default: return "?";
  }
}

const char* last_msg(void) {
  const char* m = fd_last_error_message();
  if (m == NULL) {
    CHECK(0, "fd_last_error_message() returned NULL");
    g_msg[0] = '\0';
  } else {
    strncpy(g_msg, m, sizeof g_msg - 1);
    g_msg[sizeof g_msg - 1] = '\0';
  }
  return g_msg;
}

void expect_status(const char* what, const char* entry, int got, int expected,
                   const char* names) {
  const char* msg = last_msg();
  CHECK(got == expected, "%s: %s returned %d (%s), expected %d (%s); message: \"%s\"", what,
        entry, got, status_name(got), expected, status_name(expected), msg);
  if (got == expected && expected != FD_STATUS_SUCCESS) {
    CHECK(msg[0] != '\0', "%s: %s refused with an empty fd_last_error_message()", what, entry);
    if (names != NULL) {
      CHECK(fd_test_names_spec(msg, names), "%s: %s message does not name %s: \"%s\"", what,
            entry, names, msg);
    }
  }
}

/* ---- conversions ---------------------------------------------------------- */

static uint32_t f32_bits(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  return x;
}

static float bits_f32(uint32_t x) {
  float f;
  memcpy(&f, &x, sizeof f);
  return f;
}

uint16_t fd_test_f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) { /* inf or NaN */
    return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x0200u : 0u));
  }
  if (ax >= 0x477ff000u) { /* >= 65520 rounds to inf */
    return (uint16_t)(sign | 0x7c00u);
  }
  if (ax < 0x38800000u) { /* below 2^-14: half subnormal or zero */
    uint32_t e = ax >> 23;
    uint32_t m, shift, h, rem, half;
    if (ax < 0x33000000u) return (uint16_t)sign; /* below 2^-25: rounds to 0 */
    m = (ax & 0x7fffffu) | 0x800000u;
    shift = 126u - e; /* value in units of 2^-24 is m >> shift */
    h = m >> shift;
    rem = m & ((1u << shift) - 1u);
    half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return (uint16_t)(sign | h);
  }
  {
    uint32_t r = ax - (112u << 23); /* rebias 127 -> 15 */
    uint32_t h = r >> 13;
    uint32_t rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return (uint16_t)(sign | h);
  }
}

float fd_test_f16_to_f32(uint16_t h) {
  uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
  uint32_t e = ((uint32_t)h >> 10) & 0x1fu;
  uint32_t m = (uint32_t)h & 0x3ffu;
  if (e == 0x1fu) return bits_f32(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    float v = (float)m * (1.0f / 16777216.0f); /* m * 2^-24, exact */
    return sign ? -v : v;
  }
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t fd_test_f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

float fd_test_bf16_to_f32(uint16_t h) {
  return bits_f32((uint32_t)h << 16);
}

float fd_test_fp8_e4m3_to_float(uint8_t b) {
  int e = (b >> 3) & 0xf, m = b & 0x7;
  float v;
  if (e == 0xf && m == 0x7) return (float)NAN;
  v = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + (float)m / 8.0f, e - 7);
  return (b & 0x80) ? -v : v;
}

float fd_test_fp8_e5m2_to_float(uint8_t b) {
  int e = (b >> 2) & 0x1f, m = b & 0x3;
  float v;
  if (e == 0x1f) v = m == 0 ? (float)INFINITY : (float)NAN;
  else v = e == 0 ? ldexpf((float)m, -16) : ldexpf(1.0f + (float)m / 4.0f, e - 15);
  return (b & 0x80) ? -v : v;
}

static void fp8_conversions(void) {
  struct { uint8_t b; float e4m3, e5m2; } known[] = {
    {0x00, 0.0f, 0.0f},
    {0x01, 0.001953125f, 1.52587890625e-05f},     /* 2^-9, 2^-16: smallest subnormals */
    {0x04, 0.0078125f, 6.103515625e-05f},         /* 4 * 2^-9; 2^-14 (e5m2 min normal) */
    {0x07, 0.013671875f, 1.068115234375e-04f},    /* 7 * 2^-9 (largest subnormal); 1.75 * 2^-14 */
    {0x08, 0.015625f, 1.220703125e-04f},          /* 2^-6 (e4m3 min normal); 2^-13 */
    {0x38, 1.0f, 0.5f},
    {0x3c, 1.5f, 1.0f},
    {0x40, 2.0f, 2.0f},
    {0x7b, 352.0f, 57344.0f},                     /* 1.375 * 2^8; e5m2 largest finite */
    {0x7e, 448.0f, (float)NAN},                   /* e4m3 largest finite */
    {0xb8, -1.0f, -0.5f},
    {0xc0, -2.0f, -2.0f},
  };
  size_t i;
  uint32_t b;
  long bad = 0;
  for (i = 0; i < sizeof known / sizeof known[0]; ++i) {
    float a = fd_test_fp8_e4m3_to_float(known[i].b);
    float c = fd_test_fp8_e5m2_to_float(known[i].b);
    CHECK(a == known[i].e4m3, "fp8 e4m3 0x%02x = %.10g, expected %.10g", known[i].b, (double)a,
          (double)known[i].e4m3);
    CHECK(isnan(known[i].e5m2) ? isnan(c) : c == known[i].e5m2,
          "fp8 e5m2 0x%02x = %.10g, expected %.10g", known[i].b, (double)c,
          (double)known[i].e5m2);
  }
  CHECK(isnan(fd_test_fp8_e4m3_to_float(0x7f)) && isnan(fd_test_fp8_e4m3_to_float(0xff)),
        "fp8 e4m3 0x7f / 0xff must be NaN");
  CHECK(isinf(fd_test_fp8_e5m2_to_float(0x7c)) && fd_test_fp8_e5m2_to_float(0xfc) < 0 &&
            isnan(fd_test_fp8_e5m2_to_float(0x7d)),
        "fp8 e5m2 0x7c = +inf, 0xfc = -inf, 0x7d = NaN");
  /* e5m2 is the upper byte of an f16: an independent check of every pattern. */
  for (b = 0; b < 256u; ++b) {
    float a = fd_test_fp8_e5m2_to_float((uint8_t)b);
    float h = fd_test_f16_to_f32((uint16_t)(b << 8));
    if (!(isnan(a) ? isnan(h) : a == h)) ++bad;
  }
  CHECK(bad == 0, "fp8 e5m2 differs from the f16 with the same upper byte for %ld patterns", bad);
  /* e4m3: strictly increasing over the positive finite patterns, odd in the sign. */
  bad = 0;
  for (b = 1; b < 0x7fu; ++b) {
    float lo = fd_test_fp8_e4m3_to_float((uint8_t)(b - 1));
    float hi = fd_test_fp8_e4m3_to_float((uint8_t)b);
    if (!(hi > lo) || fd_test_fp8_e4m3_to_float((uint8_t)(b | 0x80)) != -hi) ++bad;
  }
  CHECK(bad == 0, "fp8 e4m3 not monotonic / not odd for %ld patterns", bad);
}

void fd_test_conversions(void) {
  struct { float f; uint16_t h; } f16_cases[] = {
    {0.0f, 0x0000}, {1.0f, 0x3c00}, {-2.0f, 0xc000}, {65504.0f, 0x7bff},
    {65519.0f, 0x7bff}, {65520.0f, 0x7c00}, {1e9f, 0x7c00},
    {5.9604644775390625e-08f, 0x0001},          /* 2^-24 */
    {2.98023223876953125e-08f, 0x0000},         /* 2^-25: tie to even 0 */
    {4.4703483581542969e-08f, 0x0001},          /* 1.5 * 2^-25 */
    {8.9406967163085938e-08f, 0x0002},          /* 1.5 * 2^-24: tie to even 2 */
    {6.103515625e-05f, 0x0400},                 /* 2^-14, smallest normal */
    {6.0975551605224609e-05f, 0x03ff},          /* largest subnormal */
    {1.00048828125f, 0x3c00},                   /* 1 + 2^-11: tie to even */
    {1.00146484375f, 0x3c02},                   /* 1 + 3*2^-11: tie to even */
    {1.0009765625f, 0x3c01},                    /* 1 + 2^-10 */
    {-0.333251953125f, 0xb555},
  };
  struct { float f; uint16_t h; } bf16_cases[] = {
    {1.0f, 0x3f80}, {-1.0f, 0xbf80}, {1.00390625f, 0x3f80}, /* tie to even */
    {1.01171875f, 0x3f82},                                  /* tie to even, up */
    {3.0e38f, 0x7f62}, {0.0f, 0x0000},
  };
  size_t i;
  for (i = 0; i < sizeof f16_cases / sizeof f16_cases[0]; ++i) {
    uint16_t h = fd_test_f32_to_f16(f16_cases[i].f);
    CHECK(h == f16_cases[i].h, "f32->f16(%.10g) = 0x%04x, expected 0x%04x",
          (double)f16_cases[i].f, h, f16_cases[i].h);
  }
  for (i = 0; i < sizeof bf16_cases / sizeof bf16_cases[0]; ++i) {
    uint16_t h = fd_test_f32_to_bf16(bf16_cases[i].f);
    CHECK(h == bf16_cases[i].h, "f32->bf16(%.10g) = 0x%04x, expected 0x%04x",
          (double)bf16_cases[i].f, h, bf16_cases[i].h);
  }
  /* Every finite half survives the round trip; NaN stays NaN. */
  {
    uint32_t b;
    long bad = 0;
    for (b = 0; b < 0x10000u; ++b) {
      uint16_t h = (uint16_t)b;
      float f = fd_test_f16_to_f32(h);
      if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0) {
        if (!isnan(f) || !isnan(fd_test_f16_to_f32(fd_test_f32_to_f16(f)))) ++bad;
      } else if (fd_test_f32_to_f16(f) != h) {
        ++bad;
      }
    }
    CHECK(bad == 0, "f16 round trip failed for %ld bit patterns", bad);
    CHECK(isnan(fd_test_f16_to_f32(0xffffu)) && isnan(fd_test_bf16_to_f32(0xffffu)),
          "0xFFFF must be NaN in f16 and bf16");
  }
  fp8_conversions();
}

double fd_test_uniform(uint64_t* state) {
  /* splitmix64 */
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (double)(z >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}
