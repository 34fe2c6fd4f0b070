// The C ABI of the decode: thin shims that turn each entry point's arguments
// into one fd_decode_params and hand it to the one set of rules (problem.cpp)
// and one launch path (launch_plan.cpp).
#include <cstddef>
#include <cstring>

#include "flashdecoding/flashdecoding.h"
#include "kernel_table.h"
#include "launch_plan.h"
#include "problem.h"
#include "status.h"

namespace {

// The plain functions' arguments as the params struct fd_decode reads.
fd_decode_params plain_params(int32_t dtype, const void* q, const void* k, const void* v,
                              const void* y, const void* workspace, size_t workspace_bytes,
                              int32_t batch_size, int32_t num_heads, int32_t num_kv_heads,
                              int32_t k_len, int32_t head_dim, int64_t q_stride_b,
                              int64_t q_stride_h, int64_t k_stride_b, int64_t k_stride_h,
                              int64_t k_stride_k, int64_t v_stride_b, int64_t v_stride_h,
                              int64_t v_stride_k, int64_t y_stride_b, int64_t y_stride_h,
                              float scale, void* stream) {
  fd_decode_params p;
  std::memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  p.dtype = dtype;
  p.q = q;
  p.k = k;
  p.v = v;
  p.y = const_cast<void*>(y);
  p.workspace = const_cast<void*>(workspace);
  p.workspace_bytes = workspace_bytes;
  p.batch_size = batch_size;
  p.num_heads = num_heads;
  p.num_kv_heads = num_kv_heads;
  p.k_len = k_len;
  p.head_dim = head_dim;
  p.scale = scale;
  p.q_stride_b = q_stride_b;
  p.q_stride_h = q_stride_h;
  p.k_stride_b = k_stride_b;
  p.k_stride_h = k_stride_h;
  p.k_stride_k = k_stride_k;
  p.v_stride_b = v_stride_b;
  p.v_stride_h = v_stride_h;
  p.v_stride_k = v_stride_k;
  p.y_stride_b = y_stride_b;
  p.y_stride_h = y_stride_h;
  p.stream = stream;
  return p;
}

fd::Problem extents_problem(int32_t dtype, int32_t batch_size, int32_t num_heads,
                            int32_t num_kv_heads, int32_t k_len, int32_t head_dim, float scale) {
  fd::Problem p;
  p.c = plain_params(dtype, nullptr, nullptr, nullptr, nullptr, nullptr, 0, batch_size,
                     num_heads, num_kv_heads, k_len, head_dim, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                     scale, nullptr);
  return p;
}

// A caller's params read and their problem rules checked: the first step of
// the host-only queries.
int checked_problem(const fd_decode_params* params, fd::Problem* p) {
  const int st = fd::problem_from_params(params, p);
  return st == FD_STATUS_SUCCESS ? fd::check_problem(*p) : st;
}

int succeed_if_ok(int status) {
  if (status == FD_STATUS_SUCCESS) fd::clear_error();
  return status;
}

}  // namespace

extern "C" {

FD_API size_t fd_flash_decoding_workspace_size(int32_t batch_size, int32_t num_heads,
                                               int32_t num_kv_heads, int32_t k_len,
                                               int32_t head_dim) {
  // The size does not depend on f16 vs bf16.
  const fd::Problem p =
      extents_problem(FD_DTYPE_F16, batch_size, num_heads, num_kv_heads, k_len, head_dim, 1.f);
  if (fd::check_problem(p) != FD_STATUS_SUCCESS) return 0;
  fd::clear_error();
  return fd::workspace_bytes_needed(p);
}

FD_API int fd_flash_decoding_check_problem(int32_t dtype, int32_t batch_size,
                                           int32_t num_heads, int32_t num_kv_heads,
                                           int32_t k_len, int32_t head_dim, float scale) {
  return succeed_if_ok(fd::check_problem(
      extents_problem(dtype, batch_size, num_heads, num_kv_heads, k_len, head_dim, scale)));
}

FD_API int fd_flash_decoding_check(int32_t dtype, const void* q, const void* k, const void* v,
                                   const void* y, const void* workspace,
                                   size_t workspace_bytes, int32_t batch_size,
                                   int32_t num_heads, int32_t num_kv_heads, int32_t k_len,
                                   int32_t head_dim, int64_t q_stride_b, int64_t q_stride_h,
                                   int64_t k_stride_b, int64_t k_stride_h, int64_t k_stride_k,
                                   int64_t v_stride_b, int64_t v_stride_h, int64_t v_stride_k,
                                   int64_t y_stride_b, int64_t y_stride_h, float scale) {
  const fd_decode_params p = plain_params(
      dtype, q, k, v, y, workspace, workspace_bytes, batch_size, num_heads, num_kv_heads, k_len,
      head_dim, q_stride_b, q_stride_h, k_stride_b, k_stride_h, k_stride_k, v_stride_b,
      v_stride_h, v_stride_k, y_stride_b, y_stride_h, scale, nullptr);
  return fd_decode_check(&p);
}

#define FD_DEFINE_RUN(NAME, DTYPE)                                                              \
  FD_API int NAME(const void* q, const void* k, const void* v, void* y, void* workspace,       \
                  size_t workspace_bytes, int32_t batch_size, int32_t num_heads,               \
                  int32_t num_kv_heads, int32_t k_len, int32_t head_dim, int64_t q_stride_b,   \
                  int64_t q_stride_h, int64_t k_stride_b, int64_t k_stride_h,                  \
                  int64_t k_stride_k, int64_t v_stride_b, int64_t v_stride_h,                  \
                  int64_t v_stride_k, int64_t y_stride_b, int64_t y_stride_h, float scale,     \
                  void* stream) {                                                              \
    const fd_decode_params p = plain_params(                                                  \
        DTYPE, q, k, v, y, workspace, workspace_bytes, batch_size, num_heads, num_kv_heads,    \
        k_len, head_dim, q_stride_b, q_stride_h, k_stride_b, k_stride_h, k_stride_k,           \
        v_stride_b, v_stride_h, v_stride_k, y_stride_b, y_stride_h, scale, stream);            \
    return fd_decode(&p);                                                                      \
  }

FD_DEFINE_RUN(fd_flash_decoding_f16_run, FD_DTYPE_F16)
FD_DEFINE_RUN(fd_flash_decoding_bf16_run, FD_DTYPE_BF16)
#undef FD_DEFINE_RUN

FD_API int fd_decode_workspace_size(const fd_decode_params* params, size_t* bytes) {
  fd::Problem p;
  const int st = checked_problem(params, &p);
  if (st != FD_STATUS_SUCCESS) return st;
  if (bytes == nullptr) return fd::fail(FD_STATUS_INVALID_POINTER, "bytes is NULL");
  *bytes = fd::workspace_bytes_needed(p);
  return succeed_if_ok(FD_STATUS_SUCCESS);
}

FD_API int fd_decode_check(const fd_decode_params* params) {
  fd::Problem p;
  int st = fd::problem_from_params(params, &p);
  if (st != FD_STATUS_SUCCESS) return st;
  return succeed_if_ok(fd::check_all(p));
}

FD_API int fd_decode(const fd_decode_params* params) {
  fd::Problem p;
  const int st = fd::problem_from_params(params, &p);
  if (st != FD_STATUS_SUCCESS) return st;
  return fd::run_problem(p);
}

FD_API int fd_decode_plan(const fd_decode_params* params, fd_launch_plan* plan) {
  fd::Problem p;
  const int st = fd::problem_from_params(params, &p);
  if (st != FD_STATUS_SUCCESS) return st;
  if (plan == nullptr) return fd::fail(FD_STATUS_INVALID_POINTER, "plan is NULL");
  const size_t room = plan->struct_size;
  if (room < offsetof(fd_launch_plan, cell_index) + sizeof(int32_t) || room > (size_t{1} << 20))
    return fd::fail(FD_STATUS_INVALID_PROBLEM,
                    "plan->struct_size = %zu is not a fd_launch_plan size (set it to "
                    "sizeof(fd_launch_plan) = %zu)",
                    room, sizeof(fd_launch_plan));
  fd_launch_plan full;
  std::memset(&full, 0, sizeof(full));
  const int pst = fd::plan_problem(p, &full);
  if (pst != FD_STATUS_SUCCESS) return pst;
  full.struct_size = room;
  std::memcpy(plan, &full, room < sizeof(full) ? room : sizeof(full));
  return succeed_if_ok(FD_STATUS_SUCCESS);
}

FD_API int fd_decode_cell(const fd_decode_params* params, int32_t* index) {
  fd::Problem p;
  const int st = checked_problem(params, &p);
  if (st != FD_STATUS_SUCCESS) return st;
  if (index == nullptr) return fd::fail(FD_STATUS_INVALID_POINTER, "index is NULL");
  *index = fd::cell_of(p);
  return succeed_if_ok(FD_STATUS_SUCCESS);
}

FD_API int32_t fd_kernel_cell_count(void) { return fd::kernel_cell_count(); }

FD_API int fd_kernel_cell_get(int32_t index, fd_kernel_cell* cell) {
  if (index < 0 || index >= fd::kernel_cell_count())
    return fd::fail(FD_STATUS_INVALID_PROBLEM, "index = %d is outside [0, %d)", index,
                    fd::kernel_cell_count());
  if (cell == nullptr) return fd::fail(FD_STATUS_INVALID_POINTER, "cell is NULL");
  const fd::KernelCell& c = fd::kernel_cell(index);
  cell->dtype = c.q_dtype != 0 ? c.q_dtype : c.kv_dtype;
  cell->head_dim = c.head_dim;
  cell->max_group_per_cta = fd::kMaxGroupPerCta;
  cell->name = c.name;
  return succeed_if_ok(FD_STATUS_SUCCESS);
}

FD_API int fd_kernel_cell_info_get(int32_t index, fd_kernel_cell_info* info) {
  if (index < 0 || index >= fd::kernel_cell_count())
    return fd::fail(FD_STATUS_INVALID_PROBLEM, "index = %d is outside [0, %d)", index,
                    fd::kernel_cell_count());
  if (info == nullptr) return fd::fail(FD_STATUS_INVALID_POINTER, "info is NULL");
  const size_t room = info->struct_size;
  if (room < offsetof(fd_kernel_cell_info, q_dtype) + sizeof(int32_t) || room > (size_t{1} << 20))
    return fd::fail(FD_STATUS_INVALID_PROBLEM,
                    "info->struct_size = %zu is not a fd_kernel_cell_info size (set it to "
                    "sizeof(fd_kernel_cell_info) = %zu)",
                    room, sizeof(fd_kernel_cell_info));
  const fd::KernelCell& c = fd::kernel_cell(index);
  fd_kernel_cell_info full;
  std::memset(&full, 0, sizeof full);
  full.struct_size = room;
  full.q_dtype = c.q_dtype;
  full.kv_dtype = c.kv_dtype;
  full.head_dim = c.head_dim;
  full.paged = c.paged ? 1 : 0;
  full.max_group_per_cta = fd::kMaxGroupPerCta;
  full.min_compute_capability = c.min_cc;
  full.name = c.name;
  std::memcpy(info, &full, room < sizeof(full) ? room : sizeof(full));
  return succeed_if_ok(FD_STATUS_SUCCESS);
}

FD_API int fd_kernel_cell_find(int32_t dtype, int32_t head_dim, int32_t* index) {
  if (index == nullptr) return fd::fail(FD_STATUS_INVALID_POINTER, "index is NULL");
  const int i = fd::find_kernel_cell(dtype, dtype, false, head_dim);
  if (i < 0 || head_dim < 1)
    return fd::fail(FD_STATUS_UNSUPPORTED,
                    "no kernel cell for dtype = %d, head_dim = %d (cells: f16/bf16, head_dim "
                    "1..%d in buckets 64, 80, 96, 128, 160, 192, 256)",
                    dtype, head_dim, FD_FLASH_DECODING_MAX_HEAD_DIM);
  *index = i;
  return succeed_if_ok(FD_STATUS_SUCCESS);
}

FD_API const char* fd_compiled_architectures(void) { return FD_COMPILED_ARCHS; }

}  // extern "C"
