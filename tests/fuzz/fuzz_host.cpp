// libFuzzer target over the host side of the C ABI (scripts/fuzz.sh builds it with
// ASan + UBSan + the integer sanitizer). Every value of every entry point comes
// raw from the input: int32 extents, int64 strides, float bits, pointers,
// workspace sizes, and the whole fd_decode_params struct including struct_size
// and bytes past the end of the struct this library knows. The run functions go
// through the library's real checks and split policy to a fake launch
// (fake_launch.cpp) that records what would run.
//
// Invariants (a violation traps, which libFuzzer reports as a crash):
//  * no crash, no sanitizer report, no read outside the params struct's struct_size;
//  * every status is in the fd_status enum, and never CUDA_ERROR (no CUDA here);
//  * a failure leaves a non-empty last-error message, a success an empty one;
//  * a check and the run it predicts give the same status and the same message;
//    SUCCESS from a check means the run reaches the launch, a failure means it
//    does not;
//  * what is launched is sane: the cell serves the problem (element types,
//    bucket, layout), splits cover k_len with no empty split and no chunk
//    longer than the accuracy bound, grid dimensions within CUDA's limits, the
//    workspace the launch uses lies within the caller's and within the size the
//    size functions report;
//  * fd_flash_decoding_workspace_size and fd_decode_workspace_size agree;
//  * fd_merge_states_check and fd_merge_states agree, and a refused merge
//    launches nothing.
//
// Input layout (little-endian, missing bytes read as zero): see Reader and
// decode() below; tests/fuzz/make_corpus.py writes seeds in this layout.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fake_launch.h"
#include "flashdecoding/flashdecoding.h"
#include "kernel_table.h"
#include "launch_plan.h"
#include "problem.h"
#include "split_policy.h"

namespace {

#define FUZZ_CHECK(cond, ...)                                              \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "fuzz_host: invariant failed: %s\n  ", #cond);  \
      std::fprintf(stderr, __VA_ARGS__);                                   \
      std::fprintf(stderr, "\n  last error: \"%s\"\n", fd_last_error_message()); \
      __builtin_trap();                                                    \
    }                                                                      \
  } while (0)

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  template <typename T>
  T get() {
    unsigned char buf[sizeof(T)] = {};
    for (size_t i = 0; i < sizeof(T) && pos_ < size_; ++i) buf[i] = data_[pos_++];
    T v;
    std::memcpy(&v, buf, sizeof(T));
    return v;
  }
  size_t left() const { return size_ - pos_; }
  const uint8_t* rest() const { return data_ + pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

enum Entry : uint8_t {
  kCheckProblem = 0,
  kCheck = 1,          // fd_flash_decoding_check, then the run it predicts
  kWorkspaceSize = 2,  // both size functions
  kRunF16 = 3,
  kRunBf16 = 4,
  kDecodeCheck = 5,  // fd_decode_check, then fd_decode and fd_decode_plan
  kDecode = 6,
  kDecodeWorkspaceSize = 7,
  kDecodePlan = 8,
  kCells = 9,
  kMisc = 10,
  kMerge = 11,  // fd_merge_states_check, then fd_merge_states
  kEntries = 12,
};

// ptr_mode bits
constexpr uint8_t kPtrRelative = 0x1;      // pointers = base + (raw % 2^24): overlaps happen
constexpr uint8_t kStructSizeExact = 0x2;  // struct_size = sizeof(fd_decode_params)
constexpr uint8_t kNullOut = 0x4;          // NULL for params / bytes / plan / cell / index
constexpr uint8_t kExtensionsZero = 0x8;   // extension fields zero (the plain decode)
constexpr uint8_t kElemKernel = 0x10;      // the vectorised kernel does not fit the device

struct Input {
  uint8_t entry = 0, ptr_mode = 0;
  fd_decode_params p{};
  uint64_t struct_size = 0;
  int32_t raw_index = 0;
  std::vector<uint8_t> tail;
};

const void* ptr_of(uint64_t raw, uint8_t mode) {
  if (mode & kPtrRelative) {
    if (raw == 0) return nullptr;
    raw = (uint64_t{1} << 40) + (raw & 0xffffffu);
  }
  return reinterpret_cast<const void*>(static_cast<uintptr_t>(raw));
}

Input decode(const uint8_t* data, size_t size) {
  Reader r(data, size);
  Input in;
  in.entry = static_cast<uint8_t>(r.get<uint8_t>() % kEntries);
  in.ptr_mode = r.get<uint8_t>();
  fdfuzz::FakeDevice& dev = fdfuzz::g_device;
  dev.num_sms = 1 + r.get<uint16_t>() % 1024;
  dev.cc = 50 + r.get<uint8_t>() % 60;
  dev.ctas_per_sm = 1 + r.get<uint8_t>() % 32;
  dev.wide_ctas_per_sm = r.get<uint8_t>() % 3;
  dev.elem_ctas_per_sm = 1 + r.get<uint8_t>() % 16;
  (void)r.get<uint8_t>();  // formerly a cluster count; kept so old seeds decode the same
  if (in.ptr_mode & kElemKernel) dev.ctas_per_sm = 0;
  fd_decode_params& p = in.p;
  std::memset(&p, 0, sizeof(p));
  p.dtype = r.get<int32_t>();
  p.flags = r.get<uint32_t>();
  const uint8_t m = in.ptr_mode;
  p.q = ptr_of(r.get<uint64_t>(), m);
  p.k = ptr_of(r.get<uint64_t>(), m);
  p.v = ptr_of(r.get<uint64_t>(), m);
  p.y = const_cast<void*>(ptr_of(r.get<uint64_t>(), m));
  p.workspace = const_cast<void*>(ptr_of(r.get<uint64_t>(), m));
  p.workspace_bytes = r.get<uint64_t>();
  p.batch_size = r.get<int32_t>();
  p.num_heads = r.get<int32_t>();
  p.num_kv_heads = r.get<int32_t>();
  p.k_len = r.get<int32_t>();
  p.head_dim = r.get<int32_t>();
  p.scale = r.get<float>();
  p.q_stride_b = r.get<int64_t>();
  p.q_stride_h = r.get<int64_t>();
  p.k_stride_b = r.get<int64_t>();
  p.k_stride_h = r.get<int64_t>();
  p.k_stride_k = r.get<int64_t>();
  p.v_stride_b = r.get<int64_t>();
  p.v_stride_h = r.get<int64_t>();
  p.v_stride_k = r.get<int64_t>();
  p.y_stride_b = r.get<int64_t>();
  p.y_stride_h = r.get<int64_t>();
  p.stream = reinterpret_cast<void*>(static_cast<uintptr_t>(r.get<uint64_t>()));
  in.struct_size = r.get<uint64_t>();
  in.raw_index = r.get<int32_t>();
  // The extension fields: raw too, unless the mode asks for the plain decode.
  fd_decode_params ext;
  std::memset(&ext, 0, sizeof(ext));
  ext.lse = static_cast<float*>(const_cast<void*>(ptr_of(r.get<uint64_t>(), m)));
  ext.lse_stride_b = r.get<int64_t>();
  ext.lse_stride_h = r.get<int64_t>();
  ext.seq_lens = static_cast<const int32_t*>(ptr_of(r.get<uint64_t>(), m));
  ext.block_table = static_cast<const int32_t*>(ptr_of(r.get<uint64_t>(), m));
  ext.block_table_stride_b = r.get<int64_t>();
  ext.page_size = r.get<int32_t>();
  ext.window_size = r.get<int32_t>();
  ext.sinks = static_cast<const float*>(ptr_of(r.get<uint64_t>(), m));
  ext.alibi_slopes = static_cast<const float*>(ptr_of(r.get<uint64_t>(), m));
  ext.logits_soft_cap = r.get<float>();
  ext.kv_dtype = r.get<int32_t>();
  ext.k_scale = r.get<float>();
  ext.v_scale = r.get<float>();
  ext.k_stride_page = r.get<int64_t>();
  ext.v_stride_page = r.get<int64_t>();
  ext.max_pages = r.get<int32_t>();
  ext.num_pages = r.get<int32_t>();
  ext.k_scales = static_cast<const float*>(ptr_of(r.get<uint64_t>(), m));
  ext.v_scales = static_cast<const float*>(ptr_of(r.get<uint64_t>(), m));
  ext.sink_tokens = r.get<int32_t>();
  if (!(m & kExtensionsZero)) {
    p.lse = ext.lse;
    p.lse_stride_b = ext.lse_stride_b;
    p.lse_stride_h = ext.lse_stride_h;
    p.seq_lens = ext.seq_lens;
    p.block_table = ext.block_table;
    p.block_table_stride_b = ext.block_table_stride_b;
    p.page_size = ext.page_size;
    p.window_size = ext.window_size;
    p.sinks = ext.sinks;
    p.alibi_slopes = ext.alibi_slopes;
    p.logits_soft_cap = ext.logits_soft_cap;
    p.kv_dtype = ext.kv_dtype;
    p.k_scale = ext.k_scale;
    p.v_scale = ext.v_scale;
    p.k_stride_page = ext.k_stride_page;
    p.v_stride_page = ext.v_stride_page;
    p.max_pages = ext.max_pages;
    p.num_pages = ext.num_pages;
    p.k_scales = ext.k_scales;
    p.v_scales = ext.v_scales;
    p.sink_tokens = ext.sink_tokens;
  }
  in.tail.assign(r.rest(), r.rest() + r.left());
  return in;
}

bool status_ok(int st) { return st >= FD_STATUS_SUCCESS && st <= FD_STATUS_CUDA_ERROR; }

// Status invariants every status-returning call obeys here.
void check_status(int st, const char* what) {
  FUZZ_CHECK(status_ok(st), "%s returned %d, not an fd_status", what, st);
  FUZZ_CHECK(st != FD_STATUS_CUDA_ERROR, "%s returned CUDA_ERROR without CUDA", what);
  const char* msg = fd_last_error_message();
  FUZZ_CHECK(msg != nullptr, "%s: fd_last_error_message() is NULL", what);
  FUZZ_CHECK(std::strlen(msg) < 512, "%s: message longer than its buffer", what);
  if (st != FD_STATUS_SUCCESS)
    FUZZ_CHECK(msg[0] != '\0', "%s failed with %d and an empty message", what, st);
  else
    FUZZ_CHECK(msg[0] == '\0', "%s succeeded but left the message \"%s\"", what, msg);
  const char* s = fd_status_string(st);
  FUZZ_CHECK(s != nullptr && std::strcmp(s, "unknown status") != 0, "%s: status string", what);
}

// The caller's params struct as struct_size says it is: exactly that many bytes
// (so ASan sees any read past it), the known fields first, then the fuzzer's tail.
struct ParamsBuffer {
  std::vector<unsigned char> bytes;
  const fd_decode_params* get() const {
    return reinterpret_cast<const fd_decode_params*>(bytes.data());
  }
};

constexpr size_t kLibraryStructLimit = size_t{1} << 20;  // problem.cpp refuses beyond

ParamsBuffer params_buffer(const Input& in) {
  fd_decode_params p = in.p;
  size_t want = (in.ptr_mode & kStructSizeExact) ? sizeof(p) : static_cast<size_t>(in.struct_size);
  p.struct_size = want;
  // A struct_size the library refuses before reading past the field itself gets
  // only the bytes of the real struct (a read past them is an ASan report).
  size_t alloc = want;
  if (want > kLibraryStructLimit + 64) alloc = sizeof(p);
  if (alloc < sizeof(size_t)) alloc = sizeof(size_t);  // struct_size itself is always there
  ParamsBuffer b;
  b.bytes.assign(alloc, 0);
  std::memcpy(b.bytes.data(), &p, alloc < sizeof(p) ? alloc : sizeof(p));
  std::memcpy(b.bytes.data(), &want, sizeof(want));
  if (alloc > sizeof(p) && !in.tail.empty())
    for (size_t i = sizeof(p), j = 0; i < alloc && j < in.tail.size(); ++i, ++j)
      b.bytes[i] = in.tail[j];
  // Trim the vector's spare capacity: ASan must see the exact end.
  b.bytes.shrink_to_fit();
  return b;
}

// The Problem the library builds from these params, when it accepts the struct.
bool problem_of(const ParamsBuffer& b, fd::Problem* out) {
  const int st = fd::problem_from_params(b.get(), out);
  return st == FD_STATUS_SUCCESS;
}

uint64_t addr(const void* p) { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)); }

// What a launch did, against the problem it was asked for.
void check_launch(const fd::Problem& pr, long launches_before) {
  const fd_decode_params& p = pr.c;
  const fdfuzz::LaunchRecord& r = fdfuzz::g_launch;
  FUZZ_CHECK(r.launches == launches_before + 1, "a successful run launched %ld times",
             r.launches - launches_before);
  const fd_decode_params& a = r.args.call;
  const fd::LaunchParams& d = r.args.launch;
  const fd::LaunchShape& s = r.shape;
  FUZZ_CHECK(a.q == p.q && a.k == p.k && a.v == p.v && a.y == p.y && r.stream == p.stream &&
                 a.block_table == p.block_table && a.seq_lens == p.seq_lens,
             "pointers or stream changed on the way to the launch");
  FUZZ_CHECK(a.q != nullptr && a.y != nullptr, "launch with NULL q or y");
  FUZZ_CHECK(a.k_len == 0 || (a.k != nullptr && a.v != nullptr), "launch with NULL k or v");
  FUZZ_CHECK(a.batch_size >= 1 && a.num_heads >= 1 && a.num_kv_heads >= 1 && a.k_len >= 0 &&
                 a.head_dim >= 1 && a.head_dim <= FD_FLASH_DECODING_MAX_HEAD_DIM,
             "extents B=%d Hq=%d Hkv=%d K=%d D=%d", a.batch_size, a.num_heads, a.num_kv_heads,
             a.k_len, a.head_dim);
  FUZZ_CHECK(int64_t{d.group_size} * a.num_kv_heads == a.num_heads, "group size %d",
             d.group_size);
  FUZZ_CHECK(std::isfinite(a.scale), "non-finite scale launched");
  // The cell serves the problem: its element types, a bucket that holds head_dim, its layout.
  const int cell = fd::cell_of(pr);
  FUZZ_CHECK(cell >= 0, "launched without a cell");
  const fd::KernelCell& kc = fd::kernel_cell(cell);
  FUZZ_CHECK(std::strcmp(r.cell, "") != 0 && kc.kv_dtype == fd::kv_dtype_of(pr) &&
                 (kc.q_dtype == 0 || kc.q_dtype == p.dtype) && kc.head_dim >= p.head_dim &&
                 kc.paged == fd::is_paged(pr),
             "cell %s for dtype %d kv %d D=%d paged %d", kc.name, p.dtype, fd::kv_dtype_of(pr),
             p.head_dim, int(fd::is_paged(pr)));
  FUZZ_CHECK(fdfuzz::g_device.cc >= kc.min_cc, "cell %s launched on sm_%d", kc.name,
             fdfuzz::g_device.cc);
  // Paged: the table's bounds hold every key the launch may visit.
  if (fd::is_paged(pr))
    FUZZ_CHECK(a.page_size >= 1 && a.page_size <= FD_MAX_PAGE_SIZE && a.num_pages >= 1 &&
                   int64_t{a.max_pages} * a.page_size >= a.k_len && a.k_stride_b == 0 &&
                   a.v_stride_b == 0,
               "paged launch page %d, %d pages of a %d-entry table for k_len %d", a.page_size,
               a.num_pages, a.max_pages, a.k_len);
  // The whole-tile paged kernels exactly where every tile lies in one page:
  // a power-of-two page of at least 16 keys, no window, chunks of whole tiles.
  {
    const bool pow2 = a.page_size >= fd::kTileKeys && (a.page_size & (a.page_size - 1)) == 0;
    const bool whole = fd::is_paged(pr) && s.vec && pow2 && a.window_size == 0 &&
                       d.chunk_len % fd::kTileKeys == 0;
    FUZZ_CHECK(s.whole_tiles == whole,
               "whole-tile kernels %d for page %d, window %d, chunk %d, vec %d (expected %d)",
               int(s.whole_tiles), a.page_size, a.window_size, d.chunk_len, int(s.vec),
               int(whole));
  }
  // fp8: the scales the kernel multiplies by are finite and positive.
  FUZZ_CHECK(std::isfinite(d.k_scale) && d.k_scale > 0.f && std::isfinite(d.v_scale) &&
                 d.v_scale > 0.f,
             "scales %g, %g launched", double(d.k_scale), double(d.v_scale));
  // Grid: x = B*Hkv (< 2^31), y = splits, z = head blocks (<= 65535); merge x = B*Hq.
  FUZZ_CHECK(int64_t{a.batch_size} * a.num_kv_heads <= INT32_MAX, "grid x overflows");
  FUZZ_CHECK(int64_t{a.batch_size} * a.num_heads <= INT32_MAX, "merge grid x overflows");
  FUZZ_CHECK(s.head_blocks >= 1 && s.head_blocks <= 65535 &&
                 int64_t{s.head_blocks} * fd::kMaxGroupPerCta >= d.group_size,
             "head_blocks = %d for group %d", s.head_blocks, d.group_size);
  FUZZ_CHECK(d.num_splits >= 1 && d.num_splits <= 65535, "num_splits = %d", d.num_splits);
  // The splits cover the keys, none of them empty, none longer than the accuracy bound.
  if (a.k_len == 0) {
    FUZZ_CHECK(d.num_splits == 1, "k_len 0 with %d splits", d.num_splits);
  } else {
    FUZZ_CHECK(d.chunk_len >= 1, "chunk_len = %d", d.chunk_len);
    const int64_t cover = int64_t{d.num_splits} * d.chunk_len;
    FUZZ_CHECK(cover >= a.k_len && cover - d.chunk_len < a.k_len,
               "splits %d x chunk %d for k_len %d", d.num_splits, d.chunk_len, a.k_len);
    FUZZ_CHECK(fd::batch_invariant(pr) || d.chunk_len <= fd::kMaxChunkKeys,
               "chunk of %d keys past the accuracy bound", d.chunk_len);
  }
  // The split count stays within what the workspace was sized for.
  FUZZ_CHECK(d.num_splits <= fd::max_splits(pr), "num_splits %d > max_splits %d", d.num_splits,
             fd::max_splits(pr));
  const size_t sized = fd::workspace_bytes_needed(pr);
  const fd::WorkspaceLayout w = fd::workspace_layout(pr, d.num_splits);
  FUZZ_CHECK(w.bytes <= sized, "launch layout %zu bytes > reported size %zu", w.bytes, sized);
  FUZZ_CHECK(sized <= p.workspace_bytes, "run accepted %zu workspace bytes for %zu needed",
             p.workspace_bytes, sized);
  if (d.num_splits > 1) FUZZ_CHECK(d.write_partials, "%d splits but no merge", d.num_splits);
  // The pre-wait prefetch needs 16-byte aligned rows (bulk copies).
  FUZZ_CHECK(d.prefetch_keys >= 0 && (s.vec || d.prefetch_keys == 0),
             "prefetch of %d keys per CTA (vec %d)", d.prefetch_keys, int(s.vec));
  // The evict-first copies and the 16-byte q loads are vectorised paths.
  FUZZ_CHECK(!d.kv_evict_first || s.vec, "evict-first copies without vectorised loads");
  FUZZ_CHECK(!d.q_vec || (p.head_dim % 8 == 0 && reinterpret_cast<uintptr_t>(p.q) % 16 == 0 &&
                          p.q_stride_b % 8 == 0 && p.q_stride_h % 8 == 0),
             "16-byte q loads of head_dim %d, q %p, strides %lld, %lld", p.head_dim, p.q,
             static_cast<long long>(p.q_stride_b), static_cast<long long>(p.q_stride_h));
  // The vectorised kernel runs only where the device holds it.
  FUZZ_CHECK(!s.vec || fdfuzz::g_device.ctas_per_sm > 0, "vectorised kernel that cannot run");
  // Only a merge kernel releases the next grid early.
  FUZZ_CHECK(!d.merge_early_trigger || d.write_partials, "early trigger without a merge");
  // Shared memory is padded only to thin out a vectorised grid of more CTAs
  // than SMs, or to keep the next grid off the SMs of a one-wave split grid
  // whose merge releases it early; never past what a CTA may have.
  if (s.pad_smem_bytes > 0) {
    const int64_t ctas = int64_t{a.batch_size} * a.num_kv_heads * s.head_blocks * d.num_splits;
    const bool thinned = ctas > fdfuzz::g_device.num_sms;
    const bool kept_apart = d.merge_early_trigger && s.pad_smem_bytes == fd::kOneCtaPerSmSmem;
    FUZZ_CHECK(s.vec && fdfuzz::g_device.ctas_per_sm > 1 && (thinned || kept_apart),
               "shared memory padded to %d for %lld CTAs on %d SMs (vec %d)", s.pad_smem_bytes,
               (long long)ctas, fdfuzz::g_device.num_sms, int(s.vec));
    FUZZ_CHECK(s.pad_smem_bytes <= fdfuzz::kFakeSmemPerBlock, "pad %d past the opt-in limit",
               s.pad_smem_bytes);
  }
  // The wide kernel: vectorised, no padding, never in batch-invariant mode,
  // and only in cells that have it where the device can run it. Split, only
  // for a 16-bit D = 128 grid of one wave on a contiguous cache, alone on its
  // SMs, whose CTAs each stream at least 2 MiB of K and V.
  if (s.wide) {
    FUZZ_CHECK(s.vec && kc.wide && s.pad_smem_bytes == 0 && !fd::batch_invariant(pr) &&
                   fdfuzz::g_device.wide_ctas_per_sm > 0,
               "wide kernel with vec %d, %d splits, pad %d", int(s.vec), d.num_splits,
               s.pad_smem_bytes);
    if (d.num_splits > 1) {
      const int64_t ctas = int64_t{a.batch_size} * a.num_kv_heads * s.head_blocks * d.num_splits;
      const int64_t cta_bytes = 2 * int64_t{fd::kv_elem_bytes(pr)} * d.chunk_len * a.head_dim;
      FUZZ_CHECK(kc.head_dim == 128 && fd::kv_elem_bytes(pr) == 2 && !fd::is_paged(pr) &&
                     ctas <= fdfuzz::g_device.num_sms && fdfuzz::g_device.wide_ctas_per_sm == 1 &&
                     cta_bytes >= (int64_t{2} << 20) && d.write_partials,
                 "wide split kernel: D bucket %d, %d-byte KV, %lld CTAs on %d SMs, %d wide "
                 "per SM, %lld bytes per CTA",
                 kc.head_dim, fd::kv_elem_bytes(pr), (long long)ctas, fdfuzz::g_device.num_sms,
                 fdfuzz::g_device.wide_ctas_per_sm, (long long)cta_bytes);
    }
  }
  // The keys-as-M kernels hold at most kKeysAsMMaxHeads query heads per CTA
  // (the mma's N); batch-invariant mode takes them wherever they fit, so that
  // its kernel depends on neither the batch nor the cache length.
  const bool km_fits = s.vec && d.group_size <= fd::kKeysAsMMaxHeads;
  if (s.keys_as_m)
    FUZZ_CHECK(km_fits, "keys-as-M kernel with vec %d, group %d", int(s.vec), d.group_size);
  if (fd::batch_invariant(pr))
    FUZZ_CHECK(s.keys_as_m == km_fits, "batch-invariant run: keys-as-M %d where it fits %d",
               int(s.keys_as_m), int(km_fits));
  // The warm-table kernels: whole-tile pages of at most kTableWarmupStepBytes
  // per step of the CTA's warps, in a cell the device holds them for (its
  // bucket within the same bound), on a one-wave grid.
  if (s.table_warmup) {
    const int64_t ctas = int64_t{a.batch_size} * a.num_kv_heads * s.head_blocks * d.num_splits;
    const int64_t warps = s.wide ? fd::kWideWarpsPerCta : fd::kWarpsPerCta;
    const int64_t page_bytes = int64_t{a.page_size} * a.head_dim * fd::kv_elem_bytes(pr);
    FUZZ_CHECK(s.vec && s.whole_tiles && fdfuzz::g_device.table_warmup &&
                   warps * page_bytes <= fd::kTableWarmupStepBytes &&
                   warps * fd::kTileKeys * kc.head_dim * fd::kv_elem_bytes(pr) <=
                       fd::kTableWarmupStepBytes &&
                   ctas <= fdfuzz::g_device.num_sms,
               "warm-table kernels: vec %d, whole tiles %d, %lld warps, %lld-byte pages, D "
               "bucket %d, %lld CTAs on %d SMs",
               int(s.vec), int(s.whole_tiles), (long long)warps, (long long)page_bytes,
               kc.head_dim, (long long)ctas, fdfuzz::g_device.num_sms);
  }
  // Longest first: a CTA's sequence comes from a rank over the device lengths,
  // which needs them, a batch the rank's scratch holds, and equal-chunk CTAs
  // of one sequence each (nothing split); only grids of several waves.
  if (d.longest_first) {
    const int64_t units = int64_t{a.batch_size} * a.num_kv_heads * s.head_blocks;
    const int per_sm = s.wide ? fdfuzz::g_device.wide_ctas_per_sm : fdfuzz::g_device.ctas_per_sm;
    FUZZ_CHECK(a.seq_lens != nullptr && d.num_splits == 1 && a.window_size == 0 &&
                   a.batch_size > 1 && a.batch_size <= fd::kLongestFirstMaxBatch &&
                   units > int64_t{fdfuzz::g_device.num_sms} * (per_sm > 1 ? 1 : per_sm),
               "longest first: seq_lens %p, %d splits, window %d, B %d, %lld units on %d SMs "
               "of %d CTAs",
               static_cast<const void*>(a.seq_lens), d.num_splits, a.window_size, a.batch_size,
               (long long)units, fdfuzz::g_device.num_sms, per_sm);
  }
  if (fd::batch_invariant(pr) && a.k_len > 0)
    FUZZ_CHECK(d.write_partials, "batch-invariant run skips the merge");
  if (d.write_partials) {
    FUZZ_CHECK(p.workspace != nullptr && w.bytes > 0, "partials without a workspace");
    // Inclusive last bytes: a workspace may end exactly at 2^64.
    const uint64_t ws = addr(p.workspace), last = ws + (w.bytes - 1);
    FUZZ_CHECK(last >= ws, "workspace [%p, +%zu) wraps the address space", p.workspace, w.bytes);
    const uint64_t rows = uint64_t(a.batch_size) * uint64_t(a.num_heads) * uint64_t(d.num_splits);
    const uint64_t o = addr(d.partial_o), l = addr(d.partial_lse);
    FUZZ_CHECK(o >= ws && o + (rows * uint64_t(kc.head_dim) * 4 - 1) < l &&
                   l + (rows * 4 - 1) <= last,
               "partials outside the workspace");
  }
}

// The one refusal a host-only check cannot predict: the current device is older
// than the cell the problem runs on (fp8 needs sm_89).
bool device_too_old(const fd::Problem& p, int run_status) {
  const int cell = fd::cell_of(p);
  return run_status == FD_STATUS_UNSUPPORTED && cell >= 0 &&
         fdfuzz::g_device.cc < fd::kernel_cell(cell).min_cc &&
         std::strstr(fd_last_error_message(), "compute capability") != nullptr;
}

void run_and_compare(const fd::Problem& p, int check_status_value, const char* check_msg,
                     int run_status, const char* what, long launches_before) {
  check_status(run_status, what);
  if (check_status_value == FD_STATUS_SUCCESS && device_too_old(p, run_status)) {
    FUZZ_CHECK(fdfuzz::g_launch.launches == launches_before, "a refused run launched");
    return;
  }
  FUZZ_CHECK(run_status == check_status_value, "%s returned %d, its check %d", what,
             run_status, check_status_value);
  FUZZ_CHECK(std::strcmp(fd_last_error_message(), check_msg) == 0,
             "%s message \"%s\" differs from its check's \"%s\"", what, fd_last_error_message(),
             check_msg);
  if (run_status == FD_STATUS_SUCCESS)
    check_launch(p, launches_before);
  else
    FUZZ_CHECK(fdfuzz::g_launch.launches == launches_before, "a refused run launched");
}

// The problem a plain run function sees for these fields: the params with every
// extension off, read by the library's own problem_from_params.
fd::Problem plain_problem(const fd_decode_params& c) {
  fd_decode_params plain;
  std::memset(&plain, 0, sizeof(plain));
  std::memcpy(&plain, &c, offsetof(fd_decode_params, lse));  // through `stream`
  plain.struct_size = sizeof(plain);
  plain.flags = 0;
  fd::Problem p;
  fd::problem_from_params(&plain, &p);
  return p;
}

// bf16 params with these extents and everything else zero (no pointers).
fd_decode_params extents_params(int32_t b, int32_t h, int32_t hkv, int32_t k_len, int32_t d,
                                float scale) {
  fd_decode_params q;
  std::memset(&q, 0, sizeof(q));
  q.struct_size = sizeof(q);
  q.dtype = FD_DTYPE_BF16;
  q.batch_size = b; q.num_heads = h; q.num_kv_heads = hkv;
  q.k_len = k_len; q.head_dim = d; q.scale = scale;
  return q;
}

// Both size functions on the extents of c.
void check_sizes(const fd_decode_params& c) {
  const size_t plain = fd_flash_decoding_workspace_size(c.batch_size, c.num_heads,
                                                        c.num_kv_heads, c.k_len, c.head_dim);
  const bool plain_failed = fd_last_error_message()[0] != '\0';
  const int problem = fd_flash_decoding_check_problem(FD_DTYPE_F16, c.batch_size, c.num_heads,
                                                      c.num_kv_heads, c.k_len, c.head_dim, 1.f);
  check_status(problem, "fd_flash_decoding_check_problem(f16, scale 1)");
  FUZZ_CHECK(plain_failed == (problem != FD_STATUS_SUCCESS),
             "workspace_size failed=%d but check_problem=%d", plain_failed, problem);
  if (problem != FD_STATUS_SUCCESS) {
    FUZZ_CHECK(plain == 0, "workspace_size %zu for a refused problem", plain);
  }
  fd_decode_params q =
      extents_params(c.batch_size, c.num_heads, c.num_kv_heads, c.k_len, c.head_dim, 0.5f);
  size_t bytes = 0x5a5a;
  const int st = fd_decode_workspace_size(&q, &bytes);
  check_status(st, "fd_decode_workspace_size(plain extents)");
  FUZZ_CHECK(st == problem, "fd_decode_workspace_size %d vs check_problem %d", st, problem);
  if (st == FD_STATUS_SUCCESS)
    FUZZ_CHECK(bytes == plain, "sizes differ: plain %zu, params %zu", plain, bytes);
  else
    FUZZ_CHECK(bytes == 0x5a5a, "fd_decode_workspace_size wrote *bytes on failure");
  // The batch-invariant size is never below what its split count needs.
  q.flags = FD_FLAG_BATCH_INVARIANT;
  bytes = 0;
  if (fd_decode_workspace_size(&q, &bytes) == FD_STATUS_SUCCESS) {
    FUZZ_CHECK(c.k_len == 0 || bytes > 0, "batch-invariant needs a workspace for k_len %d",
               c.k_len);
  } else {
    FUZZ_CHECK(fd_last_error_message()[0] != '\0', "silent batch-invariant refusal");
  }
}

// A contiguous problem in non-overlapping fake regions, as the measured
// decisions below describe it.
fd_decode_params measured_params(int b, int hq, int hkv, int k_len, int d) {
  fd_decode_params q = extents_params(b, hq, hkv, k_len, d, 0.125f);
  const uint64_t base = uint64_t{1} << 40, region = uint64_t{1} << 36;
  q.q = reinterpret_cast<const void*>(base);
  q.k = reinterpret_cast<const void*>(base + region);
  q.v = reinterpret_cast<const void*>(base + 2 * region);
  q.y = reinterpret_cast<void*>(base + 3 * region);
  q.workspace = reinterpret_cast<void*>(base + 4 * region);
  q.workspace_bytes = size_t{1} << 34;
  q.q_stride_b = q.y_stride_b = int64_t{hq} * d;
  q.q_stride_h = q.y_stride_h = d;
  q.k_stride_b = q.v_stride_b = int64_t{hkv} * k_len * d;
  q.k_stride_h = q.v_stride_h = int64_t{k_len} * d;
  q.k_stride_k = q.v_stride_k = d;
  return q;
}

// Launch decisions that were chosen from measurements (docs/RESULTS.md) stay
// as chosen: how many split CTAs share an SM, for a fake H100-like device
// (132 SMs, 228 KB of shared memory per SM) on which `fit` CTAs would fit.
void check_measured_decisions() {
  struct Case {
    int b, hq, hkv, k_len, d, fit;
    int cap;  // 0: no padding; -1: the wide kernel (no padding); 1: one CTA per SM
    int wide_fit = 1;  // wide CTAs that fit on an SM
  } cases[] = {
      {32, 16, 16, 1024, 80, 4, 2},  // 512 CTAs: 1.94 waves at two per SM, not 1.29 at three
      {32, 16, 16, 1024, 80, 3, 2},
      {64, 32, 32, 1024, 80, 4, 3},  // 2048 CTAs: 5.2 waves at three per SM
      {64, 32, 32, 1024, 80, 3, 0},  // ... which is what fits: no padding
      {64, 32, 8, 2048, 128, 2, 0},  // D = 128: two fit, nothing to do
      {8, 16, 16, 4096, 80, 4, 0},   // 128 CTAs: one per SM anyway (D = 80: no wide kernel)
      {8, 16, 16, 4096, 128, 2, -1},  // one wave, nothing split, D = 128: wide, alone on its SM
      {8, 16, 16, 4096, 128, 2, 0, 2},  // ... not where two wide CTAs would share an SM
      {8, 16, 16, 64, 128, 2, 0},     // ... nor for a short call (4 MB of KV)
      {1, 32, 8, 8192, 128, 2, 1},   // one-wave split grid: kept apart from the next grid
      {1, 32, 8, 512, 128, 2, 0},    // ... unless the call is short (2 MB of KV)
      {1, 32, 8, 8192, 128, 1, 0},   // nothing to keep apart when one CTA fits
      {32, 16, 16, 1024, 64, 4, -1},  // D = 64, no split: the wide kernel, never padded
      {1, 16, 16, 4096, 64, 4, 2},    // D = 64 split: narrow kernel, 256 CTAs, two per SM
      {2, 32, 32, 4096, 128, 2, 0},   // 256 CTAs, two per SM: what fits
      {4, 32, 32, 4096, 128, 2, -1},  // 128 units: one CTA each, one wave: wide
      {1, 32, 8, 262144, 128, 2, -1},   // one-wave split grid, 8 MB per CTA: wide
      {1, 8, 1, 1048576, 128, 2, -1},   // ... 4 MB per CTA (132 splits): wide
      {1, 32, 8, 32768, 128, 2, 1},     // ... 1 MB per CTA: 4 warps, kept apart
      {1, 8, 1, 1048576, 128, 2, 1, 2},  // ... not where two wide CTAs would share an SM
  };
  const fdfuzz::FakeDevice saved = fdfuzz::g_device;
  for (const Case& c : cases) {
    fdfuzz::g_device = fdfuzz::FakeDevice{};
    fdfuzz::g_device.num_sms = 132;
    fdfuzz::g_device.cc = 90;
    fdfuzz::g_device.ctas_per_sm = c.fit;
    fdfuzz::g_device.wide_ctas_per_sm = c.wide_fit;
    fd_decode_params q = measured_params(c.b, c.hq, c.hkv, c.k_len, c.d);
    fd::Problem p;
    FUZZ_CHECK(fd::problem_from_params(&q, &p) == FD_STATUS_SUCCESS, "case B%d: %s", c.b,
               fd_last_error_message());
    fd::LaunchDecision d;
    FUZZ_CHECK(fd::decide_launch(p, true, &d) == FD_STATUS_SUCCESS, "case B%d: %s", c.b,
               fd_last_error_message());
    const int expect = c.cap <= 0   ? 0
                       : c.cap == 1 ? fd::kOneCtaPerSmSmem
                                    : fdfuzz::kFakeSmemPerSm / (c.cap + 1) - 1024 + 128;
    const fd::LaunchShape s = fd::make_launch_shape(p, d);
    FUZZ_CHECK(d.wide == (c.cap < 0) && s.wide == (c.cap < 0),
               "%d/%d D%d B%d K%d: wide kernel %d, expected %d", c.hq, c.hkv, c.d, c.b, c.k_len,
               d.wide ? 1 : 0, c.cap < 0 ? 1 : 0);
    FUZZ_CHECK(d.vec && s.pad_smem_bytes == expect,
               "%d/%d D%d B%d K%d with %d fitting: padded to %d bytes, expected %d (cap %d)",
               c.hq, c.hkv, c.d, c.b, c.k_len, c.fit, s.pad_smem_bytes, expect, c.cap);
  }
  fdfuzz::g_device = saved;
}

// The launch decision for a measured problem on a fake H200-like device (132
// SMs, two CTAs fit per SM); kv_dtype 0: the q type, else fp8 with bf16 q.
// The problem and the decision go to *p and *d; the fake device is restored.
void decide_measured(int b, int hq, int hkv, int k_len, int d_head, int32_t kv_dtype,
                     uint32_t flags, fd::Problem* p, fd::LaunchDecision* d) {
  const fdfuzz::FakeDevice saved = fdfuzz::g_device;
  fdfuzz::g_device = fdfuzz::FakeDevice{};
  fdfuzz::g_device.num_sms = 132;
  fdfuzz::g_device.cc = 90;
  fdfuzz::g_device.ctas_per_sm = 2;
  fd_decode_params q = measured_params(b, hq, hkv, k_len, d_head);
  if (kv_dtype != 0) {
    q.dtype = FD_DTYPE_BF16;
    q.kv_dtype = kv_dtype;
  }
  q.flags |= flags;
  FUZZ_CHECK(fd::problem_from_params(&q, p) == FD_STATUS_SUCCESS, "%d/%d D%d B%d K%d: %s", hq,
             hkv, d_head, b, k_len, fd_last_error_message());
  FUZZ_CHECK(fd::decide_launch(*p, true, d) == FD_STATUS_SUCCESS, "%d/%d D%d B%d K%d: %s", hq,
             hkv, d_head, b, k_len, fd_last_error_message());
  fdfuzz::g_device = saved;
}

// Split counts chosen from measurements (docs/RESULTS.md): where the units are
// few, a 16-bit cache splits to one CTA per SM and an fp8 one to two (two CTAs
// fit per SM on this fake H200-like device).
void check_measured_splits() {
  struct Case {
    int b, hq, hkv, k_len, d;
    int32_t kv_dtype;  // 0: the q type
    int splits;
  } cases[] = {
      {1, 32, 8, 32768, 128, 0, 16},                   // 8 units: 128 CTAs
      {1, 32, 8, 32768, 128, FD_DTYPE_FP8_E4M3, 32},   // fp8: 256 CTAs
      {1, 64, 8, 32768, 128, 0, 16},                   // two per SM measured 4% slower
      {1, 8, 1, 1048576, 128, 0, 132},                 // 1 unit: one CTA per SM
      {1, 8, 1, 1048576, 128, FD_DTYPE_FP8_E5M2, 261},  // fp8: 264 asked, chunks of 4032
      {16, 32, 8, 4096, 128, FD_DTYPE_FP8_E4M3, 1},    // 128 units: no split either way
  };
  for (const Case& c : cases) {
    fd::Problem p;
    fd::LaunchDecision d;
    decide_measured(c.b, c.hq, c.hkv, c.k_len, c.d, c.kv_dtype, 0, &p, &d);
    FUZZ_CHECK(d.split.num_splits == c.splits, "%d/%d D%d B%d K%d kv %d: %d splits, expected %d",
               c.hq, c.hkv, c.d, c.b, c.k_len, c.kv_dtype, d.split.num_splits, c.splits);
  }
}

// The keys-as-M kernels where they were measured faster (docs/RESULTS.md):
// every fp8 cell and 16-bit grids with nothing split, not 16-bit split grids
// of few units; batch-invariant mode whatever the split; never a group over 8.
void check_measured_keys_as_m() {
  struct Case {
    int b, hq, hkv, k_len, d;
    int32_t kv_dtype;  // 0: the q type
    bool invariant;
    bool keys_as_m;
  } cases[] = {
      {1, 32, 8, 8192, 128, 0, false, false},  // 16-bit, split
      {1, 32, 8, 512, 128, 0, false, false},
      {8, 8, 1, 16384, 128, 0, false, false},
      {1, 32, 8, 32768, 128, FD_DTYPE_FP8_E4M3, false, true},  // fp8, split
      {16, 32, 8, 4096, 128, 0, false, true},                  // 128 units: nothing split
      {16, 32, 8, 4096, 128, FD_DTYPE_FP8_E5M2, false, true},
      {32, 16, 16, 1024, 64, 0, false, true},  // MHA, the wide kernel
      {1, 32, 8, 8192, 128, 0, true, true},    // batch-invariant, split
      {5, 32, 8, 300, 128, 0, true, true},
      {16, 32, 2, 4096, 128, 0, false, false},  // a group of 16
      {16, 32, 2, 4096, 128, FD_DTYPE_FP8_E4M3, true, false},
  };
  for (const Case& c : cases) {
    fd::Problem p;
    fd::LaunchDecision d;
    decide_measured(c.b, c.hq, c.hkv, c.k_len, c.d, c.kv_dtype,
                    c.invariant ? FD_FLAG_BATCH_INVARIANT : 0u, &p, &d);
    const fd::LaunchShape s = fd::make_launch_shape(p, d);
    FUZZ_CHECK(d.keys_as_m == c.keys_as_m && s.keys_as_m == c.keys_as_m,
               "%d/%d D%d B%d K%d kv %d invariant %d (%d splits): keys-as-M %d, expected %d",
               c.hq, c.hkv, c.d, c.b, c.k_len, c.kv_dtype, int(c.invariant),
               d.split.num_splits, int(d.keys_as_m), int(c.keys_as_m));
  }
}

// measured_params' cache as an NHD page pool of `page` keys per page (each
// sequence its own max_pages pages), the block table in the sixth region.
void make_paged(fd_decode_params* q, int page) {
  const int max_pages = (q->k_len + page - 1) / page;
  const int64_t hkv = q->num_kv_heads, d = q->head_dim;
  q->block_table = reinterpret_cast<const int32_t*>((uint64_t{1} << 40) + 5 * (uint64_t{1} << 36));
  q->block_table_stride_b = max_pages;
  q->page_size = page;
  q->max_pages = max_pages;
  q->num_pages = q->batch_size * max_pages;
  q->k_stride_b = q->v_stride_b = 0;
  q->k_stride_page = q->v_stride_page = int64_t{page} * hkv * d;
  q->k_stride_h = q->v_stride_h = d;
  q->k_stride_k = q->v_stride_k = hkv * d;
}

// The whole-tile paged kernels on the pools engines use (page 16 to 128),
// not on page 1, 17 or 48, nor under a window (tiles start anywhere).
void check_whole_tile_pages() {
  struct Case {
    int page, window;
    bool whole;
  } cases[] = {{16, 0, true}, {32, 0, true}, {64, 0, true}, {128, 0, true}, {256, 0, true},
               {1, 0, false}, {8, 0, false}, {17, 0, false}, {48, 0, false}, {16, 128, false}};
  for (const Case& c : cases) {
    for (int b : {1, 16}) {  // split (a chunk of whole tiles) and unsplit
      const int k_len = 4096, hkv = 8, d = 128;
      fd_decode_params q = measured_params(b, 32, hkv, k_len, d);
      make_paged(&q, c.page);
      q.window_size = c.window;
      const fdfuzz::FakeDevice saved = fdfuzz::g_device;
      fdfuzz::g_device = fdfuzz::FakeDevice{};
      fdfuzz::g_device.ctas_per_sm = 2;
      fd::Problem p;
      FUZZ_CHECK(fd::problem_from_params(&q, &p) == FD_STATUS_SUCCESS, "page %d: %s", c.page,
                 fd_last_error_message());
      fd::LaunchDecision dec;
      FUZZ_CHECK(fd::decide_launch(p, true, &dec) == FD_STATUS_SUCCESS, "page %d: %s", c.page,
                 fd_last_error_message());
      fdfuzz::g_device = saved;
      const fd::LaunchShape s = fd::make_launch_shape(p, dec);
      FUZZ_CHECK(s.vec && s.whole_tiles == c.whole,
                 "B%d page %d window %d (%d splits): whole-tile kernels %d, expected %d", b,
                 c.page, c.window, dec.split.num_splits, int(s.whole_tiles), int(c.whole));
    }
  }
}

// The launch decision for a measured problem on the fake device `dev` (which
// is restored after): kv 0 is the q type, else fp8 with bf16 q; page 0 is a
// contiguous cache, else make_paged's pool with `window`; `flags` are added
// to the params' (FD_FLAG_BATCH_INVARIANT).
void decide_on(const fdfuzz::FakeDevice& dev, const char* what, int b, int hq, int hkv,
               int k_len, int d, int32_t kv, int page, int window, fd::Problem* p,
               fd::LaunchDecision* dec, bool seq_lens = false, uint32_t flags = 0) {
  fd_decode_params q = measured_params(b, hq, hkv, k_len, d);
  q.flags |= flags;
  if (kv != 0) {
    q.dtype = FD_DTYPE_BF16;
    q.kv_dtype = kv;
  }
  if (page > 0) {
    make_paged(&q, page);
    q.window_size = window;
  }
  if (seq_lens)  // per-sequence lengths in the seventh region
    q.seq_lens = reinterpret_cast<const int32_t*>((uint64_t{1} << 40) + 6 * (uint64_t{1} << 36));
  const fdfuzz::FakeDevice saved = fdfuzz::g_device;
  fdfuzz::g_device = dev;
  FUZZ_CHECK(fd::problem_from_params(&q, p) == FD_STATUS_SUCCESS, "%s: %s", what,
             fd_last_error_message());
  FUZZ_CHECK(fd::decide_launch(*p, true, dec) == FD_STATUS_SUCCESS, "%s: %s", what,
             fd_last_error_message());
  fdfuzz::g_device = saved;
}

// One measured problem of a planner check: kv 0 is the q type, page 0 a
// contiguous cache (decide_on).
struct MeasuredShape {
  const char* what;
  int b, hq, hkv, k_len, d;
  int32_t kv;
  int page, window;
};

void decide_on(const fdfuzz::FakeDevice& dev, const MeasuredShape& m, fd::Problem* p,
               fd::LaunchDecision* dec, bool seq_lens = false, uint32_t flags = 0) {
  decide_on(dev, m.what, m.b, m.hq, m.hkv, m.k_len, m.d, m.kv, m.page, m.window, p, dec,
            seq_lens, flags);
}

// The kernels that warm their block-table lines (docs/RESULTS.md): on whole-
// tile pages of which one step of the CTA's warps holds at most 16 KB per KV
// head, one-wave grids of one CTA per sequence and KV head, or of one
// sequence, whose warps take 16 tiles or more; not where the cell's kernels
// have no room for their scratch.
void check_measured_table_warmup() {
  constexpr int32_t E4M3 = FD_DTYPE_FP8_E4M3;
  struct Case {
    const char* what;
    int b, hq, hkv, k_len, d;
    int32_t kv;  // 0: the q type
    int page, window;
    bool room;  // CellFacts::table_warmup, wide_table_warmup
    bool warm;
  } cases[] = {
      {"D96 MHA page 16 (4 warps, 12 KB)", 4, 32, 32, 4096, 96, 0, 16, 0, true, true},
      {"D64 page 16 (8 warps, 16 KB)", 16, 64, 8, 8192, 64, 0, 16, 0, true, true},
      {"fp8 page 16 (8 warps, 16 KB)", 16, 32, 8, 4096, 128, E4M3, 16, 0, true, true},
      {"B1 K32768 split page 16 (4 warps)", 1, 32, 8, 32768, 128, 0, 16, 0, true, true},
      {"B1 8/1 K1M split page 16", 1, 8, 1, 1048576, 128, 0, 16, 0, true, true},
      {"B1 K16384 split page 16", 1, 32, 8, 16384, 128, 0, 16, 0, true, true},
      {"no room for the scratch", 4, 32, 32, 4096, 96, 0, 16, 0, false, false},
      {"D128 16-bit, 8 warps (32 KB)", 16, 32, 8, 4096, 128, 0, 16, 0, true, false},
      {"fp8 page 32, 8 warps (32 KB)", 16, 32, 8, 4096, 128, E4M3, 32, 0, true, false},
      {"B1 split page 32 (32 KB)", 1, 32, 8, 32768, 128, 0, 32, 0, true, false},
      {"D96 page 64", 4, 32, 32, 4096, 96, 0, 64, 0, true, false},
      {"D256 page 16", 16, 32, 2, 4096, 256, 0, 16, 0, true, false},
      {"several waves", 64, 64, 8, 2048, 64, 0, 16, 0, true, false},
      {"B4 split", 4, 32, 8, 16384, 128, 0, 16, 0, true, false},
      {"short chunks", 1, 32, 8, 512, 128, 0, 16, 0, true, false},
      {"per-key pages (window)", 4, 32, 32, 4096, 96, 0, 16, 128, true, false},
      {"per-key pages (page 8)", 4, 32, 32, 4096, 96, 0, 8, 0, true, false},
      {"contiguous", 4, 32, 32, 4096, 96, 0, 0, 0, true, false},
  };
  for (const Case& c : cases) {
    fdfuzz::FakeDevice dev;
    dev.ctas_per_sm = 2;
    dev.table_warmup = c.room;
    fd::Problem p;
    fd::LaunchDecision dec;
    decide_on(dev, c.what, c.b, c.hq, c.hkv, c.k_len, c.d, c.kv, c.page, c.window, &p, &dec);
    const fd::LaunchShape s = fd::make_launch_shape(p, dec);
    FUZZ_CHECK(dec.table_warmup == c.warm && s.table_warmup == c.warm,
               "%s (%d splits of %d keys, wide %d): warm-table kernels %d, expected %d", c.what,
               dec.split.num_splits, dec.split.chunk_len, int(dec.wide), int(s.table_warmup),
               int(c.warm));
  }
}

// Longest sequences first (docs/RESULTS.md): unsplit grids of several waves
// with per-sequence lengths, no window, at most kLongestFirstMaxBatch
// sequences, whose CTAs at full length hold >= 16 KB of K and V per sequence
// of the batch; not grids of many short CTAs, where the rank costs more than
// the order saves. A fake H200-like device: two 4-warp or 8-warp CTAs per SM.
void check_measured_longest_first() {
  constexpr int32_t E4M3 = FD_DTYPE_FP8_E4M3;
  struct Case {
    MeasuredShape shape;
    bool lens, first;
  } cases[] = {
      {{"ragged batch 32/8 B64 K8192", 64, 32, 8, 8192, 128, 0, 0, 0}, true, true},
      {{"... page 16", 64, 32, 8, 8192, 128, 0, 16, 0}, true, true},
      {{"... fp8", 64, 32, 8, 8192, 128, E4M3, 0, 0}, true, true},
      {{"32/32 D96 B16 K2048", 16, 32, 32, 2048, 96, 0, 0, 0}, true, true},
      {{"64/8 D64 B48 K6000 (8 warps)", 48, 64, 8, 6000, 64, 0, 0, 0}, true, true},
      {{"page 16 B64 K2048 (1 MB per CTA)", 64, 32, 8, 2048, 128, 0, 16, 0}, true, true},
      {{"page 1 B64 K2200 (the sanitizer's case)", 64, 32, 8, 2200, 128, 0, 1, 0}, true, true},
      {{"no lengths", 64, 32, 8, 8192, 128, 0, 0, 0}, false, false},
      {{"one wave (B16 K4096)", 16, 32, 8, 4096, 128, 0, 0, 0}, true, false},
      {{"B128 K1024: short CTAs", 128, 32, 8, 1024, 128, 0, 0, 0}, true, false},
      {{"B200 K2000", 200, 32, 8, 2000, 128, 0, 0, 0}, true, false},
      {{"B256 K512", 256, 32, 8, 512, 128, 0, 16, 0}, true, false},
      {{"B300: past the rank's batch", 300, 32, 8, 65536, 128, 0, 0, 0}, true, false},
      {{"window", 64, 32, 8, 8192, 128, 0, 16, 1024}, true, false},
      {{"split (B2)", 2, 32, 8, 65536, 128, 0, 0, 0}, true, false},
  };
  for (const Case& c : cases) {
    fdfuzz::FakeDevice dev;
    dev.ctas_per_sm = 2;
    dev.wide_ctas_per_sm = 2;
    fd::Problem p;
    fd::LaunchDecision dec;
    decide_on(dev, c.shape, &p, &dec, c.lens);
    const fd::DecodeArgs a = fd::make_decode_args(p, dec);
    FUZZ_CHECK(dec.longest_first == c.first && (a.launch.longest_first != 0) == c.first,
               "%s (%d splits, wide %d): longest first %d, expected %d", c.shape.what,
               dec.split.num_splits, int(dec.wide), int(dec.longest_first), int(c.first));
  }
}

// A contiguous range of tiles per warp (docs/RESULTS.md, H200): whole-tile
// pools whose grid is one wave of at least 15/16 of the SMs (128 or 132 CTAs
// here: 1-2% faster at 128); not grids that leave more SMs idle (96-120 CTAs
// lost 1-6%), of several waves (0.5-1.4% slower), per-key pages, contiguous
// caches, nor batch-invariant mode (the rule depends on the batch).
void check_measured_warp_ranges() {
  constexpr int32_t E4M3 = FD_DTYPE_FP8_E4M3;
  struct Case {
    MeasuredShape shape;
    bool invariant, ranges;
  } cases[] = {
      {{"B16 K4096 page 16 (128 CTAs, 8 warps)", 16, 32, 8, 4096, 128, 0, 16, 0}, false, true},
      {{"28/4 B33 K4096 page 16 (132 CTAs)", 33, 28, 4, 4096, 128, 0, 16, 0}, false, true},
      {{"B1 K32768 split page 16 (128 CTAs)", 1, 32, 8, 32768, 128, 0, 16, 0}, false, true},
      {{"fp8 B16 page 32", 16, 32, 8, 4096, 128, E4M3, 32, 0}, false, true},
      {{"D96 MHA B4 page 16", 4, 32, 32, 4096, 96, 0, 16, 0}, false, true},
      {{"B15 (120 CTAs)", 15, 32, 8, 4096, 128, 0, 16, 0}, false, false},
      {{"40/8 B12 K6000 (96 CTAs)", 12, 40, 8, 6000, 128, 0, 16, 0}, false, false},
      {{"B17 (136 CTAs: two waves)", 17, 32, 8, 4096, 128, 0, 16, 0}, false, false},
      {{"B64 K2048 (several waves)", 64, 32, 8, 2048, 128, 0, 16, 0}, false, false},
      {{"page 17 (per-key)", 16, 32, 8, 4096, 128, 0, 17, 0}, false, false},
      {{"window (per-key)", 16, 32, 8, 4096, 128, 0, 16, 128}, false, false},
      {{"contiguous", 16, 32, 8, 4096, 128, 0, 0, 0}, false, false},
      {{"batch-invariant", 16, 32, 8, 4096, 128, 0, 16, 0}, true, false},
  };
  for (const Case& c : cases) {
    fdfuzz::FakeDevice dev;
    dev.ctas_per_sm = 2;
    fd::Problem p;
    fd::LaunchDecision dec;
    decide_on(dev, c.shape, &p, &dec, false, c.invariant ? FD_FLAG_BATCH_INVARIANT : 0u);
    const fd::DecodeArgs a = fd::make_decode_args(p, dec);
    FUZZ_CHECK(dec.warp_ranges == c.ranges && (a.launch.warp_ranges != 0) == c.ranges,
               "%s (%d splits, wide %d): tile ranges %d, expected %d", c.shape.what,
               dec.split.num_splits, int(dec.wide), int(dec.warp_ranges), int(c.ranges));
  }
}

// The paired fp8 D = 128 keys-as-M kernels have a ring and an occupancy of
// their own (CellFacts::km_pairs): a plan for a problem one of them runs (a
// contiguous cache, whole-tile pages) is made with it; per-key pages, other
// buckets, 16-bit caches and groups over 8 keep the plain facts; where the
// paired kernel cannot run, the heads-as-M kernels do. On this fake device 3
// plain and 1 paired 4-warp CTAs fit per SM.
void check_paired_fp8_facts() {
  constexpr int32_t E4M3 = FD_DTYPE_FP8_E4M3, E5M2 = FD_DTYPE_FP8_E5M2;
  struct Case {
    const char* what;
    int hq, hkv, d;
    int32_t kv;  // 0: the q type
    int page, window, pair_fit;
    int fit;  // the CTAs per SM the plan must be made with
    bool keys_as_m;
  } cases[] = {
      {"e4m3 contiguous", 32, 8, 128, E4M3, 0, 0, 1, 1, true},
      {"e5m2 contiguous", 32, 8, 128, E5M2, 0, 0, 1, 1, true},
      {"e4m3 page 16", 32, 8, 128, E4M3, 16, 0, 1, 1, true},
      {"e4m3 page 64", 32, 8, 128, E4M3, 64, 0, 1, 1, true},
      {"e4m3 page 17 (per-key)", 32, 8, 128, E4M3, 17, 0, 1, 3, true},
      {"e4m3 page 16, window (per-key)", 32, 8, 128, E4M3, 16, 128, 1, 3, true},
      {"e4m3 D64", 16, 16, 64, E4M3, 0, 0, 1, 3, true},
      {"e4m3 group 16", 64, 4, 128, E4M3, 0, 0, 1, 3, false},
      {"bf16", 32, 8, 128, 0, 0, 0, 1, 3, false},
      {"e4m3, paired kernel cannot run", 32, 8, 128, E4M3, 0, 0, 0, 3, false},
  };
  for (const Case& c : cases) {
    fdfuzz::FakeDevice dev;
    dev.ctas_per_sm = 3;
    dev.pair_ctas_per_sm = c.pair_fit;
    dev.wide_pair_ctas_per_sm = c.pair_fit;
    fd::Problem p;
    fd::LaunchDecision dec;
    decide_on(dev, c.what, 1, c.hq, c.hkv, 32768, c.d, c.kv, c.page, c.window, &p, &dec);
    const fd::LaunchShape s = fd::make_launch_shape(p, dec);
    FUZZ_CHECK(dec.dev.cell.ctas_per_sm == c.fit && dec.keys_as_m == c.keys_as_m &&
                   s.keys_as_m == c.keys_as_m,
               "%s (%d splits): planned with %d CTAs per SM, keys-as-M %d; expected %d, %d",
               c.what, dec.split.num_splits, dec.dev.cell.ctas_per_sm, int(dec.keys_as_m), c.fit,
               int(c.keys_as_m));
    const fd::SplitChoice want = fd::choose_splits(p, dec.dev.num_sms, c.fit);
    FUZZ_CHECK(dec.split.num_splits == want.num_splits && dec.split.chunk_len == want.chunk_len,
               "%s: %d splits of %d keys, expected %d of %d", c.what, dec.split.num_splits,
               dec.split.chunk_len, want.num_splits, want.chunk_len);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  check_measured_decisions();
  check_measured_splits();
  check_measured_keys_as_m();
  check_whole_tile_pages();
  check_measured_table_warmup();
  check_measured_longest_first();
  check_measured_warp_ranges();
  check_paired_fp8_facts();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Input in = decode(data, size);
  const fd_decode_params& c = in.p;
  const bool null_out = (in.ptr_mode & kNullOut) != 0;
  std::vector<char> msg(512);
  auto save_msg = [&] { std::snprintf(msg.data(), msg.size(), "%s", fd_last_error_message()); };

  switch (in.entry) {
    case kCheckProblem: {
      const int st = fd_flash_decoding_check_problem(c.dtype, c.batch_size, c.num_heads,
                                                     c.num_kv_heads, c.k_len, c.head_dim,
                                                     c.scale);
      check_status(st, "fd_flash_decoding_check_problem");
      break;
    }
    case kCheck:
    case kRunF16:
    case kRunBf16: {
      const int32_t dtype = in.entry == kRunF16 ? FD_DTYPE_F16
                            : in.entry == kRunBf16 ? FD_DTYPE_BF16 : c.dtype;
      const int st = fd_flash_decoding_check(
          dtype, c.q, c.k, c.v, c.y, c.workspace, c.workspace_bytes, c.batch_size, c.num_heads,
          c.num_kv_heads, c.k_len, c.head_dim, c.q_stride_b, c.q_stride_h, c.k_stride_b,
          c.k_stride_h, c.k_stride_k, c.v_stride_b, c.v_stride_h, c.v_stride_k, c.y_stride_b,
          c.y_stride_h, c.scale);
      check_status(st, "fd_flash_decoding_check");
      save_msg();
      if (dtype != FD_DTYPE_F16 && dtype != FD_DTYPE_BF16) break;
      fd::Problem p = plain_problem(c);
      p.c.dtype = dtype;
      const long before = fdfuzz::g_launch.launches;
      auto run = dtype == FD_DTYPE_F16 ? fd_flash_decoding_f16_run : fd_flash_decoding_bf16_run;
      const int rs = run(c.q, c.k, c.v, c.y, c.workspace, c.workspace_bytes, c.batch_size,
                         c.num_heads, c.num_kv_heads, c.k_len, c.head_dim, c.q_stride_b,
                         c.q_stride_h, c.k_stride_b, c.k_stride_h, c.k_stride_k, c.v_stride_b,
                         c.v_stride_h, c.v_stride_k, c.y_stride_b, c.y_stride_h, c.scale,
                         c.stream);
      run_and_compare(p, st, msg.data(), rs, "fd_flash_decoding_<dtype>_run", before);
      break;
    }
    case kWorkspaceSize:
      check_sizes(c);
      break;
    case kDecodeCheck:
    case kDecode:
    case kDecodeWorkspaceSize:
    case kDecodePlan: {
      const ParamsBuffer b = params_buffer(in);
      const fd_decode_params* pp = null_out ? nullptr : b.get();
      if (in.entry == kDecodeWorkspaceSize) {
        size_t bytes = 0x77;
        const int st = fd_decode_workspace_size(pp, (in.tail.size() & 1) ? nullptr : &bytes);
        check_status(st, "fd_decode_workspace_size");
        fd::Problem p;
        if (st == FD_STATUS_SUCCESS && pp != nullptr && problem_of(b, &p))
          FUZZ_CHECK(bytes == fd::workspace_bytes_needed(p), "size %zu", bytes);
        if (st == FD_STATUS_SUCCESS && p.c.flags == 0 && !fd::is_paged(p) &&
            fd::kv_elem_bytes(p) == 2) {
          const size_t plain = fd_flash_decoding_workspace_size(
              p.c.batch_size, p.c.num_heads, p.c.num_kv_heads, p.c.k_len, p.c.head_dim);
          FUZZ_CHECK(plain == bytes, "plain size %zu, params size %zu", plain, bytes);
        }
        break;
      }
      if (in.entry == kDecodePlan) {
        // Any struct_size, sane or not: the library must refuse it or write
        // nothing past it (the guard bytes after the struct must stay 0xAB).
        alignas(fd_launch_plan) unsigned char buf[sizeof(fd_launch_plan) + 64];
        std::memset(buf, 0xAB, sizeof(buf));
        fd_launch_plan plan;
        std::memset(&plan, 0, sizeof(plan));
        const size_t room = (in.tail.size() & 2) ? sizeof(plan) : in.tail.size() * 4;
        plan.struct_size = room;
        std::memcpy(buf, &plan, sizeof(plan));
        fd_launch_plan* out = (in.tail.size() & 1) ? nullptr : reinterpret_cast<fd_launch_plan*>(buf);
        const int st = fd_decode_plan(pp, out);
        check_status(st, "fd_decode_plan");
        for (size_t i = sizeof(plan); i < sizeof(buf); ++i)
          FUZZ_CHECK(buf[i] == 0xAB, "fd_decode_plan wrote byte %zu past the struct", i);
        if (st == FD_STATUS_SUCCESS) {
          FUZZ_CHECK(room >= sizeof(size_t) + sizeof(int32_t) && room <= (size_t{1} << 20),
                     "plan accepted struct_size %zu", room);
          for (size_t i = room; i < sizeof(plan); ++i)
            FUZZ_CHECK(buf[i] == 0, "fd_decode_plan wrote byte %zu past struct_size %zu", i, room);
          std::memcpy(&plan, buf, sizeof(plan));
          if (room >= sizeof(plan))
            FUZZ_CHECK(plan.num_splits >= 1 && plan.cluster_size == 1 && plan.ctas >= 1 &&
                           (plan.warps_per_cta == 4 || plan.warps_per_cta == 8),
                       "plan splits %d cluster %d ctas %d warps %d", plan.num_splits,
                       plan.cluster_size, plan.ctas, plan.warps_per_cta);
        }
        break;
      }
      const int st = fd_decode_check(pp);
      check_status(st, "fd_decode_check");
      save_msg();
      fd::Problem p;
      const bool parsed = pp != nullptr && problem_of(b, &p);
      const long before = fdfuzz::g_launch.launches;
      const int rs = fd_decode(pp);
      if (!parsed) {
        check_status(rs, "fd_decode");
        FUZZ_CHECK(rs == st && rs != FD_STATUS_SUCCESS, "unparsed params: check %d, run %d", st,
                   rs);
        FUZZ_CHECK(fdfuzz::g_launch.launches == before, "unparsed params launched");
        break;
      }
      run_and_compare(p, st, msg.data(), rs, "fd_decode", before);
      if (st == FD_STATUS_SUCCESS && rs == FD_STATUS_SUCCESS) {
        // The plan for the same call matches what was launched.
        const fd::LaunchParams d = fdfuzz::g_launch.args.launch;
        const fd::LaunchShape sh = fdfuzz::g_launch.shape;
        fd_launch_plan plan{};
        plan.struct_size = sizeof(plan);
        const int ps = fd_decode_plan(pp, &plan);
        check_status(ps, "fd_decode_plan");
        FUZZ_CHECK(ps == FD_STATUS_SUCCESS, "run launched but plan refused");
        FUZZ_CHECK(plan.num_splits == d.num_splits && plan.chunk_len == d.chunk_len &&
                       plan.merge_kernel == d.write_partials &&
                       plan.vectorized == (sh.vec ? 1 : 0) &&
                       plan.warps_per_cta == (sh.wide ? 8 : 4),
                   "plan (%d splits, chunk %d, merge %d, vec %d) vs launch (%d, %d, %d, %d)",
                   plan.num_splits, plan.chunk_len, plan.merge_kernel, plan.vectorized,
                   d.num_splits, d.chunk_len, d.write_partials, int(sh.vec));
        // The cell the host-only query names is the one launched.
        int32_t cell_index = -1;
        FUZZ_CHECK(fd_decode_cell(pp, &cell_index) == FD_STATUS_SUCCESS &&
                       cell_index == plan.cell_index,
                   "fd_decode_cell %d vs plan cell %d", cell_index, plan.cell_index);
        // And the workspace size query agrees with what the run accepted.
        size_t bytes = 0;
        FUZZ_CHECK(fd_decode_workspace_size(pp, &bytes) == FD_STATUS_SUCCESS &&
                       bytes <= p.c.workspace_bytes,
                   "workspace size %zu > accepted %zu", bytes, p.c.workspace_bytes);
      }
      break;
    }
    case kCells: {
      int32_t index = -7;
      const int st = fd_kernel_cell_find(c.dtype, c.head_dim, null_out ? nullptr : &index);
      check_status(st, "fd_kernel_cell_find");
      if (st == FD_STATUS_SUCCESS) {
        FUZZ_CHECK(index >= 0 && index < fd_kernel_cell_count(), "index %d", index);
        fd_kernel_cell cell;
        FUZZ_CHECK(fd_kernel_cell_get(index, &cell) == FD_STATUS_SUCCESS, "get found cell");
        FUZZ_CHECK(cell.dtype == c.dtype && cell.head_dim >= c.head_dim && cell.name != nullptr,
                   "cell %d for dtype %d D %d", index, c.dtype, c.head_dim);
        fd_kernel_cell_info info;
        std::memset(&info, 0, sizeof(info));
        info.struct_size = sizeof(info);
        FUZZ_CHECK(fd_kernel_cell_info_get(index, &info) == FD_STATUS_SUCCESS && info.paged == 0 &&
                       info.head_dim == cell.head_dim && info.kv_dtype == c.dtype,
                   "info of cell %d", index);
      } else {
        FUZZ_CHECK(index == -7, "find wrote *index on failure");
      }
      fd_kernel_cell cell;
      std::memset(&cell, 0, sizeof(cell));
      const int gs = fd_kernel_cell_get(in.raw_index, null_out ? nullptr : &cell);
      check_status(gs, "fd_kernel_cell_get");
      if (gs == FD_STATUS_SUCCESS)
        FUZZ_CHECK(cell.name != nullptr && std::strlen(cell.name) > 0, "cell name");
      break;
    }
    case kMisc: {
      const char* s = fd_status_string(in.raw_index);
      FUZZ_CHECK(s != nullptr && s[0] != '\0', "fd_status_string(%d)", in.raw_index);
      FUZZ_CHECK(fd_get_version() == FD_VERSION, "version");
      FUZZ_CHECK(fd_compiled_architectures() != nullptr, "architectures");
      FUZZ_CHECK(fd_kernel_cell_count() > 0, "cell count");
      check_sizes(c);
      break;
    }
    case kMerge: {
      // The merge's params from the same raw fields: states = q, lse = k, y = y,
      // lse_out = lse, num_states = the raw index.
      fd_merge_params mp;
      std::memset(&mp, 0, sizeof(mp));
      mp.struct_size = (in.ptr_mode & kStructSizeExact) ? sizeof(mp) : static_cast<size_t>(in.struct_size);
      if (mp.struct_size > sizeof(mp)) mp.struct_size = sizeof(mp) + 8;  // a newer caller's
      mp.dtype = c.dtype;
      mp.num_states = in.raw_index;
      mp.batch_size = c.batch_size;
      mp.num_heads = c.num_heads;
      mp.head_dim = c.head_dim;
      mp.states = c.q;
      mp.state_stride_n = c.k_stride_b;
      mp.state_stride_b = c.q_stride_b;
      mp.state_stride_h = c.q_stride_h;
      mp.lse = static_cast<const float*>(c.k);
      mp.lse_stride_n = c.v_stride_b;
      mp.lse_stride_b = c.v_stride_h;
      mp.lse_stride_h = c.v_stride_k;
      mp.y = c.y;
      mp.y_stride_b = c.y_stride_b;
      mp.y_stride_h = c.y_stride_h;
      mp.lse_out = c.lse;
      mp.lse_out_stride_b = c.lse_stride_b;
      mp.lse_out_stride_h = c.lse_stride_h;
      mp.stream = c.stream;
      // A newer caller's struct: exactly struct_size bytes, the tail zero.
      std::vector<unsigned char> buf(mp.struct_size < sizeof(mp) ? sizeof(mp) : mp.struct_size, 0);
      std::memcpy(buf.data(), &mp, sizeof(mp));
      const fd_merge_params* mpp =
          null_out ? nullptr : reinterpret_cast<const fd_merge_params*>(buf.data());
      const int st = fd_merge_states_check(mpp);
      check_status(st, "fd_merge_states_check");
      save_msg();
      const long before = fdfuzz::g_launch.merges;
      const int rs = fd_merge_states(mpp);
      check_status(rs, "fd_merge_states");
      FUZZ_CHECK(rs == st && std::strcmp(fd_last_error_message(), msg.data()) == 0,
                 "merge check %d \"%s\" vs run %d \"%s\"", st, msg.data(), rs,
                 fd_last_error_message());
      FUZZ_CHECK(fdfuzz::g_launch.merges == before + (rs == FD_STATUS_SUCCESS ? 1 : 0),
                 "merge launches %ld for status %d", fdfuzz::g_launch.merges - before, rs);
      break;
    }
    default:
      break;
  }
  return 0;
}
