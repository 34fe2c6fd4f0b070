// Status helpers shared by every C entry point: the thread-local last-error
// message and a printf-style setter that returns the status it records.
#pragma once

#include "flashdecoding/flashdecoding.h"

namespace fd {

// Records `fmt` as the calling thread's last error and returns `status`, so a
// check reads `return fail(FD_STATUS_INVALID_PROBLEM, "...", ...)`.
int fail(int status, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

// Clears the calling thread's last error (called on success).
void clear_error();

}  // namespace fd
