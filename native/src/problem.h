// One decode call, whichever entry point it came through, and the host-only
// rules every entry point applies to it. Nothing here touches the GPU.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashdecoding/flashdecoding.h"

namespace fd {

// The call as one fd_decode_params: the plain run functions fill one, and a
// caller's struct of any struct_size is read into one (missing tail zero), so
// there is one set of rules and one launch path. Derived facts are functions.
struct Problem {
  fd_decode_params c{};
};

// Reads a caller's fd_decode_params of any struct_size (the missing tail stays
// at its "off" default). Refuses a struct_size that cannot be a params struct.
int problem_from_params(const fd_decode_params* params, Problem* out);

// The type k and v are stored in (kv_dtype, or dtype when it is 0).
int32_t kv_dtype_of(const Problem& p);
bool is_fp8(int32_t dtype);
int kv_elem_bytes(const Problem& p);
inline bool is_paged(const Problem& p) { return p.c.block_table != nullptr; }
inline bool batch_invariant(const Problem& p) {
  return (p.c.flags & FD_FLAG_BATCH_INVARIANT) != 0;
}
// Query-head blocks of one KV head's group (a CTA takes up to kMaxGroupPerCta).
int head_blocks(const Problem& p);

// The compiled cell serving the problem, -1 when none (after check_problem: >= 0).
int cell_of(const Problem& p);

// Problem-level rules: dtypes, extents, divisibility, head_dim, scale, every
// extension field, and that a compiled cell serves it. No strides, no pointers.
int check_problem(const Problem& p);

// Strides: non-negative, byte spans that fit in 64 bits, y (and lse) rows that
// do not overlap each other.
int check_strides(const Problem& p);

// Workspace bytes for this problem on any GPU; the problem must have passed
// check_problem.
size_t workspace_bytes_needed(const Problem& p);

int check_workspace(const Problem& p);

// NULL, alignment, and outputs overlapping an input. Strides must have passed.
int check_pointers(const Problem& p);

// All of the above in the documented order.
int check_all(const Problem& p);

}  // namespace fd
