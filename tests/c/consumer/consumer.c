/* A minimal C99 host of libflashdecoding, built by scripts/smoke.sh against the
 * installed package (pkg-config and find_package). Needs no GPU. */
#include <flashdecoding/flashdecoding.h>

#include <stdio.h>
#include <string.h>

static int failures = 0;

static void expect(int ok, const char* what) {
  printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

int main(void) {
  size_t ws = fd_flash_decoding_workspace_size(1, 32, 8, 8192, 128);
  int s;
  const char* msg;

  printf("flashdecoding %d (header %d), architectures %s\n", fd_get_version(), FD_VERSION,
         fd_compiled_architectures());
  expect(fd_get_version() == FD_VERSION, "fd_get_version() == FD_VERSION");
  expect(fd_status_string(FD_STATUS_INVALID_PROBLEM) != NULL &&
             fd_status_string(FD_STATUS_INVALID_PROBLEM)[0] != '\0',
         "fd_status_string(INVALID_PROBLEM)");
  expect(fd_status_string(-12345) != NULL, "fd_status_string(unknown) != NULL");
  expect(ws > 0, "workspace for B=1 Hq=32 Hkv=8 K=8192 D=128 > 0");
  expect(fd_flash_decoding_workspace_size(1, 32, 8, 0, 128) == 0, "workspace for k_len=0 == 0");

  /* Fake, never dereferenced, device addresses: the check is host-only. */
  s = fd_flash_decoding_check(FD_DTYPE_F16, (const void*)0x10000, (const void*)0x1000000,
                              (const void*)0x4000000, (void*)0x100000, (void*)0x8000000, ws, 1,
                              32, 8, 8192, 128, 32 * 128, 128, 8 * 8192 * 128, 8192 * 128, 128,
                              8 * 8192 * 128, 8192 * 128, 128, 32 * 128, 128, 0.088388f);
  expect(s == FD_STATUS_SUCCESS, "fd_flash_decoding_check(valid) == SUCCESS");
  s = fd_flash_decoding_check_problem(FD_DTYPE_BF16, 1, 32, 5, 8192, 128, 1.0f);
  msg = fd_last_error_message();
  expect(s == FD_STATUS_INVALID_PROBLEM, "check_problem(num_kv_heads=5) == INVALID_PROBLEM");
  expect(msg != NULL && strstr(msg, "num_kv_heads") != NULL, "message names num_kv_heads");
  printf("  message: %s\n", msg ? msg : "(null)");
  printf("consumer: %s\n", failures ? "FAIL" : "PASS");
  return failures ? 1 : 0;
}
