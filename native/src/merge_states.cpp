#include "merge_states.h"

#include <cstddef>
#include <cstring>

#include "spans.h"
#include "status.h"

namespace fd {
namespace {

int elem_bytes(int32_t dtype) {
  return dtype == FD_DTYPE_F32 ? 4 : dtype == FD_DTYPE_F16 || dtype == FD_DTYPE_BF16 ? 2 : 0;
}

}  // namespace

int check_merge(const fd_merge_params* params, fd_merge_params* out) {
  if (params == nullptr) return fail(FD_STATUS_INVALID_POINTER, "params is NULL");
  const size_t have = params->struct_size;
  if (have < sizeof(fd_merge_params) || have > (size_t{1} << 20))
    return fail(FD_STATUS_INVALID_PROBLEM,
                "params->struct_size = %zu is not a fd_merge_params size (expected %zu; set it "
                "to sizeof(fd_merge_params))",
                have, sizeof(fd_merge_params));
  const unsigned char* tail = reinterpret_cast<const unsigned char*>(params) + sizeof(*out);
  for (size_t i = 0; i < have - sizeof(*out); ++i)
    if (tail[i] != 0)
      return fail(FD_STATUS_UNSUPPORTED,
                  "params->struct_size = %zu: byte %zu is set, but this library (%zu-byte "
                  "struct) does not know that field",
                  have, sizeof(*out) + i, sizeof(*out));
  std::memcpy(out, params, sizeof(*out));
  const fd_merge_params& p = *out;
  const int eb = elem_bytes(p.dtype);
  if (eb == 0)
    return fail(p.dtype >= FD_DTYPE_F16 && p.dtype <= FD_DTYPE_FP8_E5M2 ? FD_STATUS_UNSUPPORTED
                                                                         : FD_STATUS_INVALID_PROBLEM,
                "dtype = %d: merged states must be f16 (1), bf16 (2) or f32 (3)", p.dtype);
  if (p.num_states < 1)
    return fail(FD_STATUS_INVALID_PROBLEM, "num_states = %d must be >= 1", p.num_states);
  if (p.batch_size < 1)
    return fail(FD_STATUS_INVALID_PROBLEM, "batch_size = %d must be >= 1", p.batch_size);
  if (p.num_heads < 1)
    return fail(FD_STATUS_INVALID_PROBLEM, "num_heads = %d must be >= 1", p.num_heads);
  if (p.head_dim < 1)
    return fail(FD_STATUS_INVALID_PROBLEM, "head_dim = %d must be >= 1", p.head_dim);
  if (p.head_dim > FD_FLASH_DECODING_MAX_HEAD_DIM)
    return fail(FD_STATUS_UNSUPPORTED, "head_dim = %d exceeds the maximum %d", p.head_dim,
                FD_FLASH_DECODING_MAX_HEAD_DIM);
  if (static_cast<int64_t>(p.batch_size) * p.num_heads > INT32_MAX)
    return fail(FD_STATUS_UNSUPPORTED, "batch_size * num_heads = %lld exceeds %d",
                static_cast<long long>(p.batch_size) * p.num_heads, INT32_MAX);
  if (p.reserved != 0)
    return fail(FD_STATUS_INVALID_PROBLEM, "reserved = %d must be 0", p.reserved);
  const struct {
    const char* name;
    int64_t v;
  } strides[] = {{"state_stride_n", p.state_stride_n}, {"state_stride_b", p.state_stride_b},
                 {"state_stride_h", p.state_stride_h}, {"lse_stride_n", p.lse_stride_n},
                 {"lse_stride_b", p.lse_stride_b},     {"lse_stride_h", p.lse_stride_h},
                 {"y_stride_b", p.y_stride_b},         {"y_stride_h", p.y_stride_h},
                 {"lse_out_stride_b", p.lse_out_stride_b},
                 {"lse_out_stride_h", p.lse_out_stride_h}};
  for (const auto& s : strides)
    if (s.v < 0)
      return fail(FD_STATUS_INVALID_PROBLEM, "%s = %lld must be >= 0 (strides are in elements)",
                  s.name, static_cast<long long>(s.v));
  const int64_t N = p.num_states, B = p.batch_size, H = p.num_heads, D = p.head_dim;
  int64_t s_bytes = 0, l_bytes = 0, y_bytes = 0, lo_bytes = 0;
  {
    const int64_t e[3] = {N, B, H}, s[3] = {p.state_stride_n, p.state_stride_b, p.state_stride_h};
    if (!span_bytes(e, s, 3, D, eb, &s_bytes))
      return fail(FD_STATUS_INVALID_PROBLEM, "states span more than 2^63 bytes");
  }
  {
    const int64_t e[3] = {N, B, H}, s[3] = {p.lse_stride_n, p.lse_stride_b, p.lse_stride_h};
    if (!span_bytes(e, s, 3, 1, 4, &l_bytes))
      return fail(FD_STATUS_INVALID_PROBLEM, "lse spans more than 2^63 bytes");
  }
  {
    const int64_t e[2] = {B, H}, s[2] = {p.y_stride_b, p.y_stride_h};
    if (!span_bytes(e, s, 2, D, eb, &y_bytes))
      return fail(FD_STATUS_INVALID_PROBLEM, "y spans more than 2^63 bytes");
    // y's rows are written: they may not share memory.
    if (!rows_disjoint(H, p.y_stride_h, B, p.y_stride_b, D))
      return fail(FD_STATUS_INVALID_PROBLEM,
                  "y rows overlap: y_stride_b = %lld, y_stride_h = %lld with head_dim = %d",
                  static_cast<long long>(p.y_stride_b), static_cast<long long>(p.y_stride_h),
                  p.head_dim);
  }
  if (p.lse_out != nullptr) {
    const int64_t e[2] = {B, H}, s[2] = {p.lse_out_stride_b, p.lse_out_stride_h};
    if (!span_bytes(e, s, 2, 1, 4, &lo_bytes))
      return fail(FD_STATUS_INVALID_PROBLEM, "lse_out spans more than 2^63 bytes");
    if (!rows_disjoint(H, p.lse_out_stride_h, B, p.lse_out_stride_b, 1))
      return fail(FD_STATUS_INVALID_PROBLEM,
                  "lse_out entries overlap: lse_out_stride_b = %lld, lse_out_stride_h = %lld",
                  static_cast<long long>(p.lse_out_stride_b),
                  static_cast<long long>(p.lse_out_stride_h));
  }
  if (p.states == nullptr) return fail(FD_STATUS_INVALID_POINTER, "states is NULL");
  if (p.lse == nullptr) return fail(FD_STATUS_INVALID_POINTER, "lse is NULL");
  if (p.y == nullptr) return fail(FD_STATUS_INVALID_POINTER, "y is NULL");
  const struct {
    const char* name;
    const void* ptr;
    int64_t bytes;
    uintptr_t align;
  } t[] = {{"states", p.states, s_bytes, static_cast<uintptr_t>(eb)},
           {"lse", p.lse, l_bytes, 4},
           {"y", p.y, y_bytes, static_cast<uintptr_t>(eb)},
           {"lse_out", p.lse_out, lo_bytes, 4}};
  for (const auto& x : t) {
    if (x.ptr != nullptr && reinterpret_cast<uintptr_t>(x.ptr) % x.align != 0)
      return fail(FD_STATUS_INVALID_POINTER, "%s = %p is not aligned to %u bytes", x.name, x.ptr,
                  static_cast<unsigned>(x.align));
    if (range_wraps(x.ptr, x.bytes))
      return fail(FD_STATUS_INVALID_POINTER, "%s = %p: its %lld bytes run past the end of the "
                  "address space", x.name, x.ptr, static_cast<long long>(x.bytes));
  }
  // Outputs (y, lse_out) against the inputs and each other.
  for (int o = 2; o < 4; ++o)
    for (int i = 0; i < o; ++i)
      if (ranges_overlap(t[o].ptr, t[o].bytes, t[i].ptr, t[i].bytes))
        return fail(FD_STATUS_INVALID_POINTER,
                    "%s overlaps %s: an output must not alias an input or another output",
                    t[o].name, t[i].name);
  return FD_STATUS_SUCCESS;
}

}  // namespace fd

extern "C" {

FD_API int fd_merge_states_check(const fd_merge_params* params) {
  fd_merge_params p;
  const int st = fd::check_merge(params, &p);
  if (st == FD_STATUS_SUCCESS) fd::clear_error();
  return st;
}

FD_API int fd_merge_states(const fd_merge_params* params) {
  fd_merge_params p;
  const int st = fd::check_merge(params, &p);
  if (st != FD_STATUS_SUCCESS) return st;
  const int lst = fd::launch_merge_states(p);
  if (lst == FD_STATUS_SUCCESS) fd::clear_error();
  return lst;
}

}  // extern "C"
