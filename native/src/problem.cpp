#include "problem.h"

#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>

#include "split_policy.h"
#include "status.h"

namespace fd {
namespace {

const char* dtype_name(int32_t dtype) {
  switch (dtype) {
    case FD_DTYPE_F16: return "f16";
    case FD_DTYPE_BF16: return "bf16";
    case FD_DTYPE_F32: return "f32";
    case FD_DTYPE_F64: return "f64";
    case FD_DTYPE_FP8_E4M3: return "fp8_e4m3";
    case FD_DTYPE_FP8_E5M2: return "fp8_e5m2";
    default: return nullptr;
  }
}

constexpr int64_t kElemBytes = 2;  // f16 and bf16, the only element types run

// Last element offset + 1 of a strided tensor whose innermost axis is `row`
// contiguous elements, in bytes; false when it does not fit in int64.
bool span_bytes(const int64_t* extents, const int64_t* strides, int n, int64_t row,
                int64_t* out) {
  int64_t last = row - 1;
  for (int i = 0; i < n; ++i) {
    if (extents[i] <= 0) {  // empty tensor: nothing is addressed
      *out = 0;
      return true;
    }
    int64_t term;
    if (__builtin_mul_overflow(extents[i] - 1, strides[i], &term)) return false;
    if (__builtin_add_overflow(last, term, &last)) return false;
  }
  int64_t elems;
  if (__builtin_add_overflow(last, int64_t{1}, &elems)) return false;
  return !__builtin_mul_overflow(elems, kElemBytes, out);
}

// Rows of `row` elements laid out by two (extent, stride) axes never overlap.
bool rows_disjoint(int64_t e0, int64_t s0, int64_t e1, int64_t s1, int64_t row) {
  // Axes of extent 1 place nothing; order the others by stride.
  if (e0 == 1) { e0 = 1; s0 = 0; }
  if (e1 == 1) { e1 = 1; s1 = 0; }
  if (e0 > 1 && e1 > 1 && s0 > s1) {
    std::swap(e0, e1);
    std::swap(s0, s1);
  }
  // (e0, s0) is now the inner axis when both are real.
  if (e0 > 1 && e1 > 1) return s0 >= row && s1 >= e0 * s0;
  if (e0 > 1) return s0 >= row;
  if (e1 > 1) return s1 >= row;
  return true;
}

// [ptr, ptr + bytes) runs past the end of the address space (ending exactly at
// 2^64 is still inside: the last byte is ptr + bytes - 1).
bool range_wraps(const void* ptr, int64_t bytes) {
  uintptr_t last;
  return ptr != nullptr && bytes > 0 &&
         __builtin_add_overflow(reinterpret_cast<uintptr_t>(ptr),
                                static_cast<uintptr_t>(bytes) - 1, &last);
}

bool ranges_overlap(const void* a, int64_t a_bytes, const void* b, int64_t b_bytes) {
  if (a == nullptr || b == nullptr || a_bytes <= 0 || b_bytes <= 0) return false;
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(a), b0 = reinterpret_cast<uintptr_t>(b);
  // Compared as distances, so a range reaching the end of the address space
  // cannot wrap (check_pointers refuses those before asking).
  return a0 <= b0 ? b0 - a0 < static_cast<uintptr_t>(a_bytes)
                  : a0 - b0 < static_cast<uintptr_t>(b_bytes);
}

struct Spans {
  int64_t q = 0, k = 0, v = 0, y = 0, lse = 0;
};

// Spans of every tensor; only called once check_strides passed.
Spans spans_of(const Problem& p) {
  Spans s;
  const int64_t B = p.batch_size, Hq = p.num_heads, Hkv = p.num_kv_heads, K = p.k_len;
  const int64_t D = p.head_dim;
  {
    const int64_t e[2] = {B, Hq}, st[2] = {p.q_stride_b, p.q_stride_h};
    span_bytes(e, st, 2, D, &s.q);
  }
  {
    const int64_t e[3] = {B, Hkv, K}, st[3] = {p.k_stride_b, p.k_stride_h, p.k_stride_k};
    span_bytes(e, st, 3, D, &s.k);
  }
  {
    const int64_t e[3] = {B, Hkv, K}, st[3] = {p.v_stride_b, p.v_stride_h, p.v_stride_k};
    span_bytes(e, st, 3, D, &s.v);
  }
  {
    const int64_t e[2] = {B, Hq}, st[2] = {p.y_stride_b, p.y_stride_h};
    span_bytes(e, st, 2, D, &s.y);
  }
  if (p.lse != nullptr) {
    const int64_t e[2] = {B, Hq}, st[2] = {p.lse_stride_b, p.lse_stride_h};
    span_bytes(e, st, 2, 2, &s.lse);  // one f32 = two 2-byte units
  }
  return s;
}

}  // namespace

int problem_from_params(const fd_decode_params* params, Problem* out) {
  if (params == nullptr)
    return fail(FD_STATUS_INVALID_POINTER, "params is NULL");
  const size_t have = params->struct_size;
  // The oldest layout a caller can have compiled ends with `stream`.
  const size_t oldest = offsetof(fd_decode_params, stream) + sizeof(void*);
  if (have < oldest || have > (size_t{1} << 20))
    return fail(FD_STATUS_INVALID_PROBLEM,
                "params->struct_size = %zu is not a fd_decode_params size (expected %zu..%zu; "
                "set it to sizeof(fd_decode_params))",
                have, oldest, sizeof(fd_decode_params));
  fd_decode_params c;
  std::memset(&c, 0, sizeof(c));
  std::memcpy(&c, params, have < sizeof(c) ? have : sizeof(c));
  if (have > sizeof(c)) {
    // A newer caller: every field we do not know must be zero (= off).
    const unsigned char* tail = reinterpret_cast<const unsigned char*>(params) + sizeof(c);
    for (size_t i = 0; i < have - sizeof(c); ++i)
      if (tail[i] != 0)
        return fail(FD_STATUS_UNSUPPORTED,
                    "params->struct_size = %zu: byte %zu of the params struct is set, but this "
                    "library (%zu-byte struct) does not know that field",
                    have, sizeof(c) + i, sizeof(c));
  }
  Problem& p = *out;
  p = Problem{};
  p.dtype = c.dtype;
  p.flags = c.flags;
  p.q = c.q; p.k = c.k; p.v = c.v; p.y = c.y;
  p.workspace = c.workspace; p.workspace_bytes = c.workspace_bytes;
  p.batch_size = c.batch_size; p.num_heads = c.num_heads; p.num_kv_heads = c.num_kv_heads;
  p.k_len = c.k_len; p.head_dim = c.head_dim; p.scale = c.scale;
  p.q_stride_b = c.q_stride_b; p.q_stride_h = c.q_stride_h;
  p.k_stride_b = c.k_stride_b; p.k_stride_h = c.k_stride_h; p.k_stride_k = c.k_stride_k;
  p.v_stride_b = c.v_stride_b; p.v_stride_h = c.v_stride_h; p.v_stride_k = c.v_stride_k;
  p.y_stride_b = c.y_stride_b; p.y_stride_h = c.y_stride_h;
  p.stream = c.stream;
  p.lse = c.lse; p.lse_stride_b = c.lse_stride_b; p.lse_stride_h = c.lse_stride_h;
  p.seq_lens = c.seq_lens;
  p.block_table = c.block_table; p.block_table_stride_b = c.block_table_stride_b;
  p.page_size = c.page_size;
  p.window_size = c.window_size;
  p.sinks = c.sinks;
  p.alibi_slopes = c.alibi_slopes;
  p.logits_soft_cap = c.logits_soft_cap;
  p.kv_dtype = c.kv_dtype; p.k_scale = c.k_scale; p.v_scale = c.v_scale;
  return FD_STATUS_SUCCESS;
}

int check_problem(const Problem& p) {
  const char* dn = dtype_name(p.dtype);
  if (dn == nullptr)
    return fail(FD_STATUS_INVALID_PROBLEM,
                "dtype = %d is not an fd_dtype (f16 = 1, bf16 = 2, f32 = 3, f64 = 4, "
                "fp8_e4m3 = 5, fp8_e5m2 = 6)",
                p.dtype);
  if (p.dtype != FD_DTYPE_F16 && p.dtype != FD_DTYPE_BF16)
    return fail(FD_STATUS_UNSUPPORTED,
                "dtype = %s is not supported: q, k, v and y must be f16 or bf16", dn);
  if (p.batch_size <= 0)
    return fail(FD_STATUS_INVALID_PROBLEM, "batch_size = %d must be >= 1", p.batch_size);
  if (p.num_heads <= 0)
    return fail(FD_STATUS_INVALID_PROBLEM, "num_heads = %d must be >= 1", p.num_heads);
  if (p.num_kv_heads <= 0)
    return fail(FD_STATUS_INVALID_PROBLEM, "num_kv_heads = %d must be >= 1", p.num_kv_heads);
  if (p.k_len < 0)
    return fail(FD_STATUS_INVALID_PROBLEM, "k_len = %d must be >= 0", p.k_len);
  if (p.head_dim <= 0)
    return fail(FD_STATUS_INVALID_PROBLEM, "head_dim = %d must be >= 1", p.head_dim);
  if (p.num_heads % p.num_kv_heads != 0)
    return fail(FD_STATUS_INVALID_PROBLEM,
                "num_heads = %d is not a multiple of num_kv_heads = %d", p.num_heads,
                p.num_kv_heads);
  if (p.head_dim > FD_FLASH_DECODING_MAX_HEAD_DIM)
    return fail(FD_STATUS_UNSUPPORTED, "head_dim = %d exceeds the maximum %d", p.head_dim,
                FD_FLASH_DECODING_MAX_HEAD_DIM);
  if (!std::isfinite(p.scale))
    return fail(FD_STATUS_INVALID_PROBLEM, "scale = %g must be finite",
                static_cast<double>(p.scale));
  const int64_t bh = static_cast<int64_t>(p.batch_size) * p.num_heads;
  if (bh > std::numeric_limits<int32_t>::max())
    return fail(FD_STATUS_UNSUPPORTED,
                "batch_size * num_heads = %lld exceeds %d (one merge CTA per row)",
                static_cast<long long>(bh), std::numeric_limits<int32_t>::max());
  // Checked on the group before head_blocks() rounds it up (which would overflow
  // int for a group near INT32_MAX).
  if (p.num_heads / p.num_kv_heads > 65535 * kMaxGroupPerCta || head_blocks(p) > 65535)
    return fail(FD_STATUS_UNSUPPORTED,
                "num_heads / num_kv_heads = %d exceeds %d query heads per KV head",
                p.num_heads / p.num_kv_heads, 65535 * kMaxGroupPerCta);
  if (batch_invariant(p) && max_splits(p) > 65535)
    return fail(FD_STATUS_UNSUPPORTED,
                "k_len = %d exceeds %d in batch-invariant mode (%d-key chunks, at most 65535)",
                p.k_len, 65535 * kInvariantChunk, kInvariantChunk);
  if ((p.flags & ~FD_FLAG_BATCH_INVARIANT) != 0)
    return fail(FD_STATUS_UNSUPPORTED, "flags = 0x%x has unknown bits (known: 0x%x)",
                p.flags, FD_FLAG_BATCH_INVARIANT);
  // Extension fields not implemented yet: refused, never ignored.
  if (p.block_table != nullptr)
    return fail(FD_STATUS_UNSUPPORTED, "block_table: paged KV is not supported yet");
  if (p.page_size != 0)
    return fail(FD_STATUS_UNSUPPORTED, "page_size = %d: paged KV is not supported yet",
                p.page_size);
  if (p.block_table_stride_b != 0)
    return fail(FD_STATUS_UNSUPPORTED,
                "block_table_stride_b = %lld: paged KV is not supported yet",
                static_cast<long long>(p.block_table_stride_b));
  if (p.kv_dtype != 0 && p.kv_dtype != p.dtype)
    return fail(FD_STATUS_UNSUPPORTED,
                "kv_dtype = %d: a KV cache type other than dtype (fp8 KV) is not supported yet",
                p.kv_dtype);
  if (p.k_scale != 0.f)
    return fail(FD_STATUS_UNSUPPORTED, "k_scale = %g: KV scales (fp8 KV) are not supported yet",
                static_cast<double>(p.k_scale));
  if (p.v_scale != 0.f)
    return fail(FD_STATUS_UNSUPPORTED, "v_scale = %g: KV scales (fp8 KV) are not supported yet",
                static_cast<double>(p.v_scale));
  if (p.window_size < 0)
    return fail(FD_STATUS_INVALID_PROBLEM, "window_size = %d must be 0 (off) or >= 1",
                p.window_size);
  if (!std::isfinite(p.logits_soft_cap) || p.logits_soft_cap < 0.f)
    return fail(FD_STATUS_INVALID_PROBLEM, "logits_soft_cap = %g must be 0 (off) or > 0",
                static_cast<double>(p.logits_soft_cap));
  return FD_STATUS_SUCCESS;
}

int check_strides(const Problem& p) {
  struct Named {
    const char* name;
    int64_t value;
  };
  const Named all[] = {
      {"q_stride_b", p.q_stride_b}, {"q_stride_h", p.q_stride_h},
      {"k_stride_b", p.k_stride_b}, {"k_stride_h", p.k_stride_h},
      {"k_stride_k", p.k_stride_k}, {"v_stride_b", p.v_stride_b},
      {"v_stride_h", p.v_stride_h}, {"v_stride_k", p.v_stride_k},
      {"y_stride_b", p.y_stride_b}, {"y_stride_h", p.y_stride_h},
      {"lse_stride_b", p.lse_stride_b}, {"lse_stride_h", p.lse_stride_h},
  };
  for (const Named& s : all)
    if (s.value < 0)
      return fail(FD_STATUS_INVALID_PROBLEM, "%s = %lld must be >= 0 (strides are in elements)",
                  s.name, static_cast<long long>(s.value));
  const int64_t B = p.batch_size, Hq = p.num_heads, Hkv = p.num_kv_heads, K = p.k_len;
  const int64_t D = p.head_dim;
  int64_t bytes = 0;
  {
    const int64_t e[2] = {B, Hq}, st[2] = {p.q_stride_b, p.q_stride_h};
    if (!span_bytes(e, st, 2, D, &bytes))
      return fail(FD_STATUS_INVALID_PROBLEM, "q spans more than 2^63 bytes (q_stride_b = %lld, "
                  "q_stride_h = %lld)", static_cast<long long>(p.q_stride_b),
                  static_cast<long long>(p.q_stride_h));
  }
  {
    const int64_t e[3] = {B, Hkv, K}, st[3] = {p.k_stride_b, p.k_stride_h, p.k_stride_k};
    if (!span_bytes(e, st, 3, D, &bytes))
      return fail(FD_STATUS_INVALID_PROBLEM, "k spans more than 2^63 bytes (k_stride_b = %lld, "
                  "k_stride_h = %lld, k_stride_k = %lld)", static_cast<long long>(p.k_stride_b),
                  static_cast<long long>(p.k_stride_h), static_cast<long long>(p.k_stride_k));
  }
  {
    const int64_t e[3] = {B, Hkv, K}, st[3] = {p.v_stride_b, p.v_stride_h, p.v_stride_k};
    if (!span_bytes(e, st, 3, D, &bytes))
      return fail(FD_STATUS_INVALID_PROBLEM, "v spans more than 2^63 bytes (v_stride_b = %lld, "
                  "v_stride_h = %lld, v_stride_k = %lld)", static_cast<long long>(p.v_stride_b),
                  static_cast<long long>(p.v_stride_h), static_cast<long long>(p.v_stride_k));
  }
  {
    const int64_t e[2] = {B, Hq}, st[2] = {p.y_stride_b, p.y_stride_h};
    if (!span_bytes(e, st, 2, D, &bytes))
      return fail(FD_STATUS_INVALID_PROBLEM, "y spans more than 2^63 bytes (y_stride_b = %lld, "
                  "y_stride_h = %lld)", static_cast<long long>(p.y_stride_b),
                  static_cast<long long>(p.y_stride_h));
  }
  // The output is written, so its rows may not share memory (inputs may: a
  // stride of 0 broadcasts one cache to the whole batch).
  if (!rows_disjoint(Hq, p.y_stride_h, B, p.y_stride_b, D))
    return fail(FD_STATUS_INVALID_PROBLEM,
                "y rows overlap: y_stride_h = %lld, y_stride_b = %lld with num_heads = %d, "
                "batch_size = %d and head_dim = %d (each row needs head_dim elements of its own)",
                static_cast<long long>(p.y_stride_h), static_cast<long long>(p.y_stride_b),
                p.num_heads, p.batch_size, p.head_dim);
  if (p.lse != nullptr) {
    const int64_t e[2] = {B, Hq}, st[2] = {p.lse_stride_b, p.lse_stride_h};
    if (!span_bytes(e, st, 2, 2, &bytes))
      return fail(FD_STATUS_INVALID_PROBLEM, "lse spans more than 2^63 bytes");
    if (!rows_disjoint(Hq, p.lse_stride_h, B, p.lse_stride_b, 1))
      return fail(FD_STATUS_INVALID_PROBLEM,
                  "lse entries overlap: lse_stride_h = %lld, lse_stride_b = %lld",
                  static_cast<long long>(p.lse_stride_h),
                  static_cast<long long>(p.lse_stride_b));
  }
  return FD_STATUS_SUCCESS;
}

size_t workspace_bytes_needed(const Problem& p) {
  return workspace_layout(p, max_splits(p)).bytes;
}

int check_workspace(const Problem& p) {
  const size_t needed = workspace_bytes_needed(p);
  if (p.workspace_bytes < needed)
    return fail(FD_STATUS_WORKSPACE_TOO_SMALL,
                "workspace_bytes = %zu is smaller than the %zu bytes this problem needs "
                "(fd_flash_decoding_workspace_size)",
                p.workspace_bytes, needed);
  return FD_STATUS_SUCCESS;
}

int check_pointers(const Problem& p) {
  if (p.q == nullptr) return fail(FD_STATUS_INVALID_POINTER, "q is NULL");
  if (p.y == nullptr) return fail(FD_STATUS_INVALID_POINTER, "y is NULL");
  if (p.k_len > 0 && p.k == nullptr)
    return fail(FD_STATUS_INVALID_POINTER, "k is NULL with k_len = %d", p.k_len);
  if (p.k_len > 0 && p.v == nullptr)
    return fail(FD_STATUS_INVALID_POINTER, "v is NULL with k_len = %d", p.k_len);
  const struct {
    const char* name;
    const void* ptr;
    uintptr_t align;
  } aligned[] = {
      {"q", p.q, 2}, {"k", p.k, 2}, {"v", p.v, 2}, {"y", p.y, 2},
      {"lse", p.lse, 4}, {"seq_lens", p.seq_lens, 4}, {"sinks", p.sinks, 4},
      {"alibi_slopes", p.alibi_slopes, 4}, {"workspace", p.workspace, 16},
  };
  for (const auto& a : aligned)
    if (a.ptr != nullptr && reinterpret_cast<uintptr_t>(a.ptr) % a.align != 0)
      return fail(FD_STATUS_INVALID_POINTER, "%s = %p is not aligned to %u bytes", a.name,
                  a.ptr, static_cast<unsigned>(a.align));
  const size_t needed = workspace_bytes_needed(p);
  if (needed > 0 && p.workspace == nullptr)
    return fail(FD_STATUS_INVALID_POINTER,
                "workspace is NULL but this problem needs %zu bytes of it", needed);
  const Spans s = spans_of(p);
  {
    const struct {
      const char* name;
      const void* ptr;
      int64_t bytes;
    } all[] = {{"q", p.q, s.q}, {"k", p.k, s.k}, {"v", p.v, s.v}, {"y", p.y, s.y},
               {"lse", p.lse, s.lse}, {"workspace", p.workspace, static_cast<int64_t>(needed)}};
    for (const auto& t : all)
      if (range_wraps(t.ptr, t.bytes))
        return fail(FD_STATUS_INVALID_POINTER,
                    "%s = %p: its %lld bytes run past the end of the address space", t.name,
                    t.ptr, static_cast<long long>(t.bytes));
  }
  const struct {
    const char* name;
    const void* ptr;
    int64_t bytes;
  } inputs[] = {{"q", p.q, s.q}, {"k", p.k, s.k}, {"v", p.v, s.v}};
  for (const auto& in : inputs) {
    if (ranges_overlap(p.y, s.y, in.ptr, in.bytes))
      return fail(FD_STATUS_INVALID_POINTER,
                  "y [%p, +%lld bytes) overlaps %s [%p, +%lld bytes): the output must not "
                  "alias an input",
                  p.y, static_cast<long long>(s.y), in.name, in.ptr,
                  static_cast<long long>(in.bytes));
    if (p.lse != nullptr && ranges_overlap(p.lse, s.lse, in.ptr, in.bytes))
      return fail(FD_STATUS_INVALID_POINTER, "lse overlaps %s: the output must not alias an input",
                  in.name);
  }
  if (p.lse != nullptr && ranges_overlap(p.lse, s.lse, p.y, s.y))
    return fail(FD_STATUS_INVALID_POINTER, "lse overlaps y");
  if (needed > 0) {
    const struct {
      const char* name;
      const void* ptr;
      int64_t bytes;
    } all[] = {{"q", p.q, s.q}, {"k", p.k, s.k}, {"v", p.v, s.v}, {"y", p.y, s.y},
               {"lse", p.lse, s.lse}};
    for (const auto& t : all)
      if (ranges_overlap(p.workspace, static_cast<int64_t>(needed), t.ptr, t.bytes))
        return fail(FD_STATUS_INVALID_POINTER, "workspace overlaps %s", t.name);
  }
  return FD_STATUS_SUCCESS;
}

int check_all(const Problem& p) {
  int st = check_problem(p);
  if (st != FD_STATUS_SUCCESS) return st;
  st = check_strides(p);
  if (st != FD_STATUS_SUCCESS) return st;
  st = check_workspace(p);
  if (st != FD_STATUS_SUCCESS) return st;
  return check_pointers(p);
}

}  // namespace fd
