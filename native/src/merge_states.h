// fd_merge_states: host-only rules and the launch hook (merge_states.cu).
#pragma once

#include "flashdecoding/flashdecoding.h"

namespace fd {

// Reads a caller's fd_merge_params of any struct_size into `out` and checks
// every rule (extents, dtype, strides, pointers); a status.
int check_merge(const fd_merge_params* params, fd_merge_params* out);

// Launches the merge kernel for checked params; a status, with the message
// set on failure (merge_states.cu; the fuzzer's fake device in tests/fuzz).
int launch_merge_states(const fd_merge_params& p);

}  // namespace fd
