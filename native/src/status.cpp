#include "status.h"

#include <cstdarg>
#include <cstdio>

namespace fd {
namespace {
// One message per thread, so concurrent callers never read each other's detail.
thread_local char g_last_error[512] = "";
}  // namespace

int fail(int status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(g_last_error, sizeof(g_last_error), fmt, ap);
  va_end(ap);
  return status;
}

void clear_error() { g_last_error[0] = '\0'; }

}  // namespace fd

extern "C" {

FD_API const char* fd_last_error_message(void) { return fd::g_last_error; }

FD_API const char* fd_status_string(int status) {
  switch (status) {
    case FD_STATUS_SUCCESS: return "success";
    case FD_STATUS_INVALID_PROBLEM: return "invalid problem";
    case FD_STATUS_UNSUPPORTED: return "unsupported";
    case FD_STATUS_WORKSPACE_TOO_SMALL: return "workspace too small";
    case FD_STATUS_INVALID_POINTER: return "invalid pointer";
    case FD_STATUS_CUDA_ERROR: return "CUDA error";
    default: return "unknown status";
  }
}

FD_API int fd_get_version(void) { return FD_VERSION; }

}  // extern "C"
