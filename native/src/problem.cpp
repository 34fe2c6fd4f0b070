#include "problem.h"

#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>

#include "cta_shape.h"
#include "kernel_table.h"
#include "spans.h"
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

constexpr int64_t kQBytes = 2;  // q and y: f16 or bf16

// Every tensor of a call with its byte span, inputs first. `ok` is false when a
// span does not fit in int64 (check_strides names it).
struct Tensor {
  const char* name;
  const void* ptr;
  int64_t bytes;
  bool ok;
  bool output;
};
constexpr int kTensors = 11;

void tensors_of(const Problem& pr, Tensor (&t)[kTensors]) {
  const fd_decode_params& p = pr.c;
  const int64_t B = p.batch_size, Hq = p.num_heads, Hkv = p.num_kv_heads, K = p.k_len;
  const int64_t D = p.head_dim, kvb = kv_elem_bytes(pr);
  int i = 0;
  auto add = [&](const char* name, const void* ptr, const int64_t* e, const int64_t* s, int n,
                 int64_t row, int64_t elem, bool output) {
    int64_t bytes = 0;
    const bool ok = span_bytes(e, s, n, row, elem, &bytes);
    t[i++] = Tensor{name, ptr, ok ? bytes : 0, ok, output};
  };
  {
    const int64_t e[2] = {B, Hq}, s[2] = {p.q_stride_b, p.q_stride_h};
    add("q", p.q, e, s, 2, D, kQBytes, false);
  }
  if (is_paged(pr)) {
    const int64_t e[3] = {p.num_pages, Hkv, p.page_size};
    const int64_t sk[3] = {p.k_stride_page, p.k_stride_h, p.k_stride_k};
    const int64_t sv[3] = {p.v_stride_page, p.v_stride_h, p.v_stride_k};
    add("k", p.k, e, sk, 3, D, kvb, false);
    add("v", p.v, e, sv, 3, D, kvb, false);
    const int64_t eb[2] = {B, p.max_pages}, sb[2] = {p.block_table_stride_b, 1};
    add("block_table", p.block_table, eb, sb, 2, 1, 4, false);
  } else {
    const int64_t e[3] = {B, Hkv, K};
    const int64_t sk[3] = {p.k_stride_b, p.k_stride_h, p.k_stride_k};
    const int64_t sv[3] = {p.v_stride_b, p.v_stride_h, p.v_stride_k};
    add("k", p.k, e, sk, 3, D, kvb, false);
    add("v", p.v, e, sv, 3, D, kvb, false);
    t[i++] = Tensor{"block_table", nullptr, 0, true, false};
  }
  const int64_t one = 1;
  add("seq_lens", p.seq_lens, &B, &one, 1, 1, 4, false);
  add("sinks", p.sinks, &Hq, &one, 1, 1, 4, false);
  add("alibi_slopes", p.alibi_slopes, &Hq, &one, 1, 1, 4, false);
  add("k_scales", p.k_scales, &Hkv, &one, 1, 1, 4, false);
  add("v_scales", p.v_scales, &Hkv, &one, 1, 1, 4, false);
  {
    const int64_t e[2] = {B, Hq}, s[2] = {p.y_stride_b, p.y_stride_h};
    add("y", p.y, e, s, 2, D, kQBytes, true);
  }
  if (p.lse != nullptr) {
    const int64_t e[2] = {B, Hq}, s[2] = {p.lse_stride_b, p.lse_stride_h};
    add("lse", p.lse, e, s, 2, 1, 4, true);
  } else {
    t[i++] = Tensor{"lse", nullptr, 0, true, true};
  }
}

int fail_field(const char* field, long long value, const char* rule) {
  return fail(FD_STATUS_INVALID_PROBLEM, "%s = %lld %s", field, value, rule);
}

// The paged-KV fields: all zero without a block table; with one, a page size
// in range, a table and pools the call can address, and lengths within them.
int check_paged(const Problem& pr) {
  const fd_decode_params& p = pr.c;
  if (!is_paged(pr)) {
    const struct {
      const char* name;
      long long value;
    } fields[] = {{"page_size", p.page_size},
                  {"max_pages", p.max_pages},
                  {"num_pages", p.num_pages},
                  {"block_table_stride_b", static_cast<long long>(p.block_table_stride_b)},
                  {"k_stride_page", static_cast<long long>(p.k_stride_page)},
                  {"v_stride_page", static_cast<long long>(p.v_stride_page)}};
    for (const auto& f : fields)
      if (f.value != 0)
        return fail(FD_STATUS_INVALID_PROBLEM,
                    "%s = %lld is set but block_table is NULL (paged KV needs a block table)",
                    f.name, f.value);
    return FD_STATUS_SUCCESS;
  }
  if (p.page_size < 1)
    return fail_field("page_size", p.page_size, "must be >= 1 with a block table");
  if (p.page_size > FD_MAX_PAGE_SIZE)
    return fail(FD_STATUS_UNSUPPORTED, "page_size = %d exceeds the maximum %d", p.page_size,
                FD_MAX_PAGE_SIZE);
  if (p.max_pages < 1)
    return fail_field("max_pages", p.max_pages,
                      "must be >= 1 with a block table (entries per sequence)");
  if (p.num_pages < 1)
    return fail_field("num_pages", p.num_pages,
                      "must be >= 1 with a block table (pages in each pool)");
  if (p.k_stride_b != 0)
    return fail_field("k_stride_b", static_cast<long long>(p.k_stride_b),
                      "must be 0 with a block table (pages are addressed by k_stride_page)");
  if (p.v_stride_b != 0)
    return fail_field("v_stride_b", static_cast<long long>(p.v_stride_b),
                      "must be 0 with a block table (pages are addressed by v_stride_page)");
  const int64_t capacity = static_cast<int64_t>(p.max_pages) * p.page_size;
  if (p.k_len > capacity)
    return fail(FD_STATUS_INVALID_PROBLEM,
                "k_len = %d exceeds max_pages * page_size = %d * %d = %lld keys the block "
                "table can address",
                p.k_len, p.max_pages, p.page_size, static_cast<long long>(capacity));
  return FD_STATUS_SUCCESS;
}

// fp8 KV and its scales.
int check_kv_type(const Problem& pr) {
  const fd_decode_params& p = pr.c;
  const int32_t kv = p.kv_dtype;
  if (kv != 0 && kv != p.dtype) {
    const char* kn = dtype_name(kv);
    if (kn == nullptr)
      return fail(FD_STATUS_INVALID_PROBLEM,
                  "kv_dtype = %d is not an fd_dtype (0 = dtype, fp8_e4m3 = 5, fp8_e5m2 = 6)", kv);
    if (!is_fp8(kv))
      return fail(FD_STATUS_UNSUPPORTED,
                  "kv_dtype = %s with dtype = %s is not supported: the KV cache is dtype or "
                  "fp8 (e4m3, e5m2)",
                  kn, dtype_name(p.dtype));
  }
  const bool fp8 = is_fp8(kv_dtype_of(pr));
  const struct {
    const char* name;
    float value;
    const float* per_head;
    const char* per_head_name;
  } scales[] = {{"k_scale", p.k_scale, p.k_scales, "k_scales"},
                {"v_scale", p.v_scale, p.v_scales, "v_scales"}};
  for (const auto& s : scales) {
    if (!fp8 && (s.value != 0.f || s.per_head != nullptr))
      return fail(FD_STATUS_UNSUPPORTED,
                  "%s is set but the KV cache is %s: scales apply to fp8 KV caches only",
                  s.value != 0.f ? s.name : s.per_head_name, dtype_name(kv_dtype_of(pr)));
    if (!std::isfinite(s.value) || s.value < 0.f)
      return fail(FD_STATUS_INVALID_PROBLEM, "%s = %g must be finite and > 0 (0 means 1)",
                  s.name, static_cast<double>(s.value));
    if (s.value != 0.f && s.per_head != nullptr)
      return fail(FD_STATUS_INVALID_PROBLEM,
                  "%s = %g and %s are both set: give per-tensor or per-head scales, not both",
                  s.name, static_cast<double>(s.value), s.per_head_name);
  }
  return FD_STATUS_SUCCESS;
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
  c.struct_size = sizeof(c);
  out->c = c;
  return FD_STATUS_SUCCESS;
}

bool is_fp8(int32_t dtype) { return dtype == FD_DTYPE_FP8_E4M3 || dtype == FD_DTYPE_FP8_E5M2; }

int32_t kv_dtype_of(const Problem& p) { return p.c.kv_dtype != 0 ? p.c.kv_dtype : p.c.dtype; }

int kv_elem_bytes(const Problem& p) { return is_fp8(kv_dtype_of(p)) ? 1 : 2; }

int head_blocks(const Problem& p) {
  const int g = p.c.num_heads / p.c.num_kv_heads;
  return (g + kMaxGroupPerCta - 1) / kMaxGroupPerCta;
}

int cell_of(const Problem& p) {
  return find_kernel_cell(p.c.dtype, kv_dtype_of(p), is_paged(p), p.c.head_dim);
}

int check_problem(const Problem& pr) {
  const fd_decode_params& p = pr.c;
  const char* dn = dtype_name(p.dtype);
  if (dn == nullptr)
    return fail(FD_STATUS_INVALID_PROBLEM,
                "dtype = %d is not an fd_dtype (f16 = 1, bf16 = 2, f32 = 3, f64 = 4, "
                "fp8_e4m3 = 5, fp8_e5m2 = 6)",
                p.dtype);
  if (p.dtype != FD_DTYPE_F16 && p.dtype != FD_DTYPE_BF16)
    return fail(FD_STATUS_UNSUPPORTED,
                "dtype = %s is not supported: q and y must be f16 or bf16 (an fp8 KV cache is "
                "kv_dtype)",
                dn);
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
  const int64_t bkv = static_cast<int64_t>(p.batch_size) * p.num_kv_heads;
  if (bkv > std::numeric_limits<int32_t>::max())
    return fail(FD_STATUS_UNSUPPORTED,
                "batch_size * num_kv_heads = %lld exceeds %d (the grid's first dimension)",
                static_cast<long long>(bkv), std::numeric_limits<int32_t>::max());
  // Checked on the group before head_blocks() rounds it up (which would overflow
  // int for a group near INT32_MAX).
  if (p.num_heads / p.num_kv_heads > 65535 * kMaxGroupPerCta || head_blocks(pr) > 65535)
    return fail(FD_STATUS_UNSUPPORTED,
                "num_heads / num_kv_heads = %d exceeds %d query heads per KV head",
                p.num_heads / p.num_kv_heads, 65535 * kMaxGroupPerCta);
  if ((p.flags & ~FD_FLAG_BATCH_INVARIANT) != 0)
    return fail(FD_STATUS_UNSUPPORTED, "flags = 0x%x has unknown bits (known: 0x%x)",
                p.flags, FD_FLAG_BATCH_INVARIANT);
  if (batch_invariant(pr) && max_splits(pr) > 65535)
    return fail(FD_STATUS_UNSUPPORTED,
                "k_len = %d exceeds %d in batch-invariant mode (%d-key chunks, at most 65535)",
                p.k_len, 65535 * kInvariantChunk, kInvariantChunk);
  int st = check_kv_type(pr);
  if (st != FD_STATUS_SUCCESS) return st;
  st = check_paged(pr);
  if (st != FD_STATUS_SUCCESS) return st;
  if (p.window_size < 0)
    return fail(FD_STATUS_INVALID_PROBLEM, "window_size = %d must be 0 (off) or >= 1",
                p.window_size);
  if (p.sink_tokens < 0)
    return fail(FD_STATUS_INVALID_PROBLEM, "sink_tokens = %d must be 0 (off) or >= 1",
                p.sink_tokens);
  if (!std::isfinite(p.logits_soft_cap) || p.logits_soft_cap < 0.f)
    return fail(FD_STATUS_INVALID_PROBLEM, "logits_soft_cap = %g must be 0 (off) or > 0",
                static_cast<double>(p.logits_soft_cap));
  if (cell_of(pr) < 0)
    return fail(FD_STATUS_UNSUPPORTED,
                "no kernel cell in this build serves dtype = %s, kv_dtype = %s, head_dim = %d%s "
                "(fd_kernel_cell_info_get lists the cells)",
                dn, dtype_name(kv_dtype_of(pr)), p.head_dim, is_paged(pr) ? ", paged" : "");
  return FD_STATUS_SUCCESS;
}

int check_strides(const Problem& pr) {
  const fd_decode_params& p = pr.c;
  struct Named {
    const char* name;
    int64_t value;
  };
  const Named all[] = {
      {"q_stride_b", p.q_stride_b},       {"q_stride_h", p.q_stride_h},
      {"k_stride_b", p.k_stride_b},       {"k_stride_h", p.k_stride_h},
      {"k_stride_k", p.k_stride_k},       {"v_stride_b", p.v_stride_b},
      {"v_stride_h", p.v_stride_h},       {"v_stride_k", p.v_stride_k},
      {"y_stride_b", p.y_stride_b},       {"y_stride_h", p.y_stride_h},
      {"lse_stride_b", p.lse_stride_b},   {"lse_stride_h", p.lse_stride_h},
      {"k_stride_page", p.k_stride_page}, {"v_stride_page", p.v_stride_page},
      {"block_table_stride_b", p.block_table_stride_b},
  };
  for (const Named& s : all)
    if (s.value < 0)
      return fail(FD_STATUS_INVALID_PROBLEM, "%s = %lld must be >= 0 (strides are in elements)",
                  s.name, static_cast<long long>(s.value));
  Tensor t[kTensors];
  tensors_of(pr, t);
  for (const Tensor& x : t)
    if (!x.ok)
      return fail(FD_STATUS_INVALID_PROBLEM,
                  "%s spans more than 2^63 bytes (its extents times its strides)", x.name);
  // The output is written, so its rows may not share memory (inputs may: a
  // stride of 0 broadcasts one cache to the whole batch).
  if (!rows_disjoint(p.num_heads, p.y_stride_h, p.batch_size, p.y_stride_b, p.head_dim))
    return fail(FD_STATUS_INVALID_PROBLEM,
                "y rows overlap: y_stride_h = %lld, y_stride_b = %lld with num_heads = %d, "
                "batch_size = %d and head_dim = %d (each row needs head_dim elements of its own)",
                static_cast<long long>(p.y_stride_h), static_cast<long long>(p.y_stride_b),
                p.num_heads, p.batch_size, p.head_dim);
  if (p.lse != nullptr && !rows_disjoint(p.num_heads, p.lse_stride_h, p.batch_size,
                                         p.lse_stride_b, 1))
    return fail(FD_STATUS_INVALID_PROBLEM,
                "lse entries overlap: lse_stride_h = %lld, lse_stride_b = %lld",
                static_cast<long long>(p.lse_stride_h), static_cast<long long>(p.lse_stride_b));
  return FD_STATUS_SUCCESS;
}

size_t workspace_bytes_needed(const Problem& p) {
  return workspace_layout(p, max_splits(p)).bytes;
}

int check_workspace(const Problem& p) {
  const size_t needed = workspace_bytes_needed(p);
  if (p.c.workspace_bytes < needed)
    return fail(FD_STATUS_WORKSPACE_TOO_SMALL,
                "workspace_bytes = %zu is smaller than the %zu bytes this problem needs "
                "(fd_flash_decoding_workspace_size)",
                p.c.workspace_bytes, needed);
  return FD_STATUS_SUCCESS;
}

int check_pointers(const Problem& pr) {
  const fd_decode_params& p = pr.c;
  if (p.q == nullptr) return fail(FD_STATUS_INVALID_POINTER, "q is NULL");
  if (p.y == nullptr) return fail(FD_STATUS_INVALID_POINTER, "y is NULL");
  if (p.k_len > 0 && p.k == nullptr)
    return fail(FD_STATUS_INVALID_POINTER, "k is NULL with k_len = %d", p.k_len);
  if (p.k_len > 0 && p.v == nullptr)
    return fail(FD_STATUS_INVALID_POINTER, "v is NULL with k_len = %d", p.k_len);
  const uintptr_t kv_align = static_cast<uintptr_t>(kv_elem_bytes(pr));
  const struct {
    const char* name;
    const void* ptr;
    uintptr_t align;
  } aligned[] = {
      {"q", p.q, 2},
      {"k", p.k, kv_align},
      {"v", p.v, kv_align},
      {"y", p.y, 2},
      {"lse", p.lse, 4},
      {"seq_lens", p.seq_lens, 4},
      {"block_table", p.block_table, 4},
      {"sinks", p.sinks, 4},
      {"alibi_slopes", p.alibi_slopes, 4},
      {"k_scales", p.k_scales, 4},
      {"v_scales", p.v_scales, 4},
      {"workspace", p.workspace, 16},
  };
  for (const auto& a : aligned)
    if (a.ptr != nullptr && reinterpret_cast<uintptr_t>(a.ptr) % a.align != 0)
      return fail(FD_STATUS_INVALID_POINTER, "%s = %p is not aligned to %u bytes", a.name,
                  a.ptr, static_cast<unsigned>(a.align));
  const size_t needed = workspace_bytes_needed(pr);
  if (needed > 0 && p.workspace == nullptr)
    return fail(FD_STATUS_INVALID_POINTER,
                "workspace is NULL but this problem needs %zu bytes of it", needed);
  Tensor t[kTensors];
  tensors_of(pr, t);
  const Tensor ws{"workspace", p.workspace, static_cast<int64_t>(needed), true, true};
  for (const Tensor& x : t)
    if (range_wraps(x.ptr, x.bytes))
      return fail(FD_STATUS_INVALID_POINTER,
                  "%s = %p: its %lld bytes run past the end of the address space", x.name, x.ptr,
                  static_cast<long long>(x.bytes));
  if (range_wraps(ws.ptr, ws.bytes))
    return fail(FD_STATUS_INVALID_POINTER,
                "workspace = %p: its %lld bytes run past the end of the address space", ws.ptr,
                static_cast<long long>(ws.bytes));
  // Outputs (y, lse) must not alias any input nor each other; the workspace
  // must not alias anything.
  for (const Tensor& out : t) {
    if (!out.output) continue;
    for (const Tensor& in : t) {
      if (&in == &out || (in.output && &in > &out)) continue;
      if (ranges_overlap(out.ptr, out.bytes, in.ptr, in.bytes))
        return fail(FD_STATUS_INVALID_POINTER,
                    "%s [%p, +%lld bytes) overlaps %s [%p, +%lld bytes): an output must not "
                    "alias an input or another output",
                    out.name, out.ptr, static_cast<long long>(out.bytes), in.name, in.ptr,
                    static_cast<long long>(in.bytes));
    }
  }
  if (needed > 0)
    for (const Tensor& x : t)
      if (ranges_overlap(ws.ptr, ws.bytes, x.ptr, x.bytes))
        return fail(FD_STATUS_INVALID_POINTER, "workspace overlaps %s", x.name);
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
