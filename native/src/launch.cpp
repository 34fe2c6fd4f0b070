#include "launch.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>

#include "kernel_params.h"
#include "kernel_table.h"
#include "split_policy.h"
#include "status.h"

namespace fd {
namespace {

constexpr int kMaxDevices = 64;
constexpr int kMaxCells = 16;

constexpr int kMaxCluster = 16;

struct KernelFacts {
  int ctas_per_sm = 0;  // 0 = not asked yet
  // Co-resident clusters of c CTAs (index c); -1 = not asked yet.
  int active_clusters[kMaxCluster + 1] = {-1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, -1, -1, -1, -1, -1, -1, -1};
};

struct DeviceFacts {
  bool known = false;
  int num_sms = 0;
  int cc = 0;  // major * 10 + minor
  KernelFacts kernel[kMaxCells][2];  // [cell][vec]
};

std::mutex g_facts_mutex;
DeviceFacts g_facts[kMaxDevices];

int cuda_fail(cudaError_t e, const char* what) {
  return fail(FD_STATUS_CUDA_ERROR, "%s failed: %s (%s, CUDA error %d)", what,
              cudaGetErrorString(e), cudaGetErrorName(e), static_cast<int>(e));
}

struct Facts {
  int device = 0, num_sms = 0, cc = 0;
  int cell = 0;
  bool vec = false;
  KernelFacts kernel;
};

// Device facts for the current device and one cell's split kernel on it.
int device_facts(int cell, bool vec, Facts* out) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return cuda_fail(e, "cudaGetDevice (is there a CUDA GPU and driver?)");
  if (dev < 0 || dev >= kMaxDevices)
    return fail(FD_STATUS_UNSUPPORTED, "device %d: at most %d devices are supported", dev,
                kMaxDevices);
  std::lock_guard<std::mutex> lock(g_facts_mutex);
  DeviceFacts& f = g_facts[dev];
  if (!f.known) {
    int major = 0, minor = 0, sms = 0;
    if ((e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev)) != cudaSuccess)
      return cuda_fail(e, "cudaDeviceGetAttribute");
    f.num_sms = sms;
    f.cc = major * 10 + minor;
    f.known = true;
  }
  KernelFacts& k = f.kernel[cell][vec ? 1 : 0];
  if (k.ctas_per_sm == 0) {
    int n = 0;
    const int ce = kernel_cell(cell).prepare(vec, f.cc, &n);
    if (ce != cudaSuccess)
      return cuda_fail(static_cast<cudaError_t>(ce),
                       "preparing the decode kernel (is this GPU one of fd_compiled_architectures()?)");
    if (n <= 0)
      return fail(FD_STATUS_UNSUPPORTED, "the decode kernel %s cannot run on device %d",
                  kernel_cell(cell).name, dev);
    k.ctas_per_sm = n;
  }
  out->device = dev;
  out->num_sms = f.num_sms;
  out->cc = f.cc;
  out->kernel = k;
  out->cell = cell;
  out->vec = vec;
  return FD_STATUS_SUCCESS;
}

// Whether `units` clusters of `splits` CTAs all fit on the device at once, so
// the cluster path runs in one wave. Cached per device, cell and size.
bool clusters_fit(const Facts& facts, int splits, int64_t units) {
  if (facts.cc < 90 || splits < 2 || splits > kMaxCluster) return false;
  std::lock_guard<std::mutex> lock(g_facts_mutex);
  int& n = g_facts[facts.device].kernel[facts.cell][facts.vec ? 1 : 0].active_clusters[splits];
  if (n < 0) n = kernel_cell(facts.cell).active_clusters(facts.vec, splits);
  return units <= n;
}

// 16-byte cp.async needs 8-element rows on 16-byte boundaries everywhere.
bool can_vectorise(const Problem& p) {
  auto al16 = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  return p.head_dim % 8 == 0 && al16(p.k) && al16(p.v) && p.k_stride_b % 8 == 0 &&
         p.k_stride_h % 8 == 0 && p.k_stride_k % 8 == 0 && p.v_stride_b % 8 == 0 &&
         p.v_stride_h % 8 == 0 && p.v_stride_k % 8 == 0;
}

// Tuning knobs for measurements only (scripts/tune.sh), read once per process:
// FD_TUNE_SPLITS=n forces n splits (clamped to what the workspace holds);
// FD_TUNE_CLUSTER=1 reduces splits in a thread block cluster (sm_90) instead of
// the merge kernel: measured no faster on H100 (docs/RESULTS.md), so opt-in.
int forced_splits() {
  static const int n = [] {
    const char* s = std::getenv("FD_TUNE_SPLITS");
    return s != nullptr ? std::atoi(s) : 0;
  }();
  return n;
}

bool clusters_enabled() {
  static const bool on = std::getenv("FD_TUNE_CLUSTER") != nullptr;
  return on;
}

// FD_TUNE_ONE_CTA_PER_SM=1 pads every launch to one CTA per SM (the cluster
// path always is).
bool one_cta_per_sm_forced() {
  static const bool on = std::getenv("FD_TUNE_ONE_CTA_PER_SM") != nullptr;
  return on;
}

struct Prepared {
  int cell = -1;
  bool vec = false;
  Facts facts;
  SplitChoice split;
  bool cluster_reduce = false;
};

// full: every rule of a run (pointers and workspace too); else the problem and
// its strides, enough to plan.
int prepare(const Problem& p, Prepared* out, bool full) {
  int st = full ? check_all(p) : check_problem(p);
  if (st == FD_STATUS_SUCCESS && !full) st = check_strides(p);
  if (st != FD_STATUS_SUCCESS) return st;
  out->cell = find_kernel_cell(p.dtype, p.head_dim);
  if (out->cell < 0)
    return fail(FD_STATUS_UNSUPPORTED, "no kernel cell serves dtype %d with head_dim = %d",
                p.dtype, p.head_dim);
  out->vec = can_vectorise(p);
  st = device_facts(out->cell, out->vec, &out->facts);
  if (st != FD_STATUS_SUCCESS) return st;
  out->split = choose_splits(p, out->facts.num_sms);
  if (forced_splits() > 0 && p.k_len > 0 && !batch_invariant(p)) {
    const int s = forced_splits() < max_splits(p) ? forced_splits() : max_splits(p);
    const int chunk = (p.k_len + s - 1) / s;
    out->split.chunk_len = (chunk + kMinChunk - 1) / kMinChunk * kMinChunk;
    out->split.num_splits = (p.k_len + out->split.chunk_len - 1) / out->split.chunk_len;
  }
  // Opt-in: a split small enough for one thread block cluster reduces on chip
  // (no merge launch, no workspace traffic). Batch-invariant mode keeps the merge.
  out->cluster_reduce =
      !batch_invariant(p) && clusters_enabled() &&
      clusters_fit(out->facts, out->split.num_splits,
                   static_cast<int64_t>(p.batch_size) * p.num_kv_heads * head_blocks(p));
  return FD_STATUS_SUCCESS;
}

}  // namespace

int plan_problem(const Problem& p, fd_launch_plan* plan) {
  Prepared pr;
  const int st = prepare(p, &pr, false);
  if (st != FD_STATUS_SUCCESS) return st;
  plan->cell_index = pr.cell;
  plan->num_splits = pr.split.num_splits;
  plan->chunk_len = pr.split.chunk_len;
  plan->heads_per_cta = p.num_heads / p.num_kv_heads < kMaxGroupPerCta
                            ? p.num_heads / p.num_kv_heads
                            : kMaxGroupPerCta;
  plan->cluster_size = pr.cluster_reduce ? pr.split.num_splits : 1;
  plan->merge_kernel = (pr.split.num_splits > 1 || batch_invariant(p)) && !pr.cluster_reduce;
  plan->num_sms = pr.facts.num_sms;
  plan->device_cc = pr.facts.cc;
  return FD_STATUS_SUCCESS;
}

int run_problem(const Problem& p) {
  Prepared pr;
  const int st = prepare(p, &pr, true);
  if (st != FD_STATUS_SUCCESS) return st;

  DecodeParams d = {};
  d.q = p.q;
  d.k = p.k;
  d.v = p.v;
  d.y = p.y;
  d.q_stride_b = p.q_stride_b;
  d.q_stride_h = p.q_stride_h;
  d.k_stride_b = p.k_stride_b;
  d.k_stride_h = p.k_stride_h;
  d.k_stride_k = p.k_stride_k;
  d.v_stride_b = p.v_stride_b;
  d.v_stride_h = p.v_stride_h;
  d.v_stride_k = p.v_stride_k;
  d.y_stride_b = p.y_stride_b;
  d.y_stride_h = p.y_stride_h;
  d.batch_size = p.batch_size;
  d.num_heads = p.num_heads;
  d.num_kv_heads = p.num_kv_heads;
  d.k_len = p.k_len;
  d.head_dim = p.head_dim;
  d.group_size = p.num_heads / p.num_kv_heads;
  d.scale = p.scale;
  d.scale_log2 = p.scale * 1.4426950408889634f;
  d.num_splits = pr.split.num_splits;
  d.chunk_len = pr.split.chunk_len;
  const WorkspaceLayout w = workspace_layout(p, pr.split.num_splits);
  d.cluster_reduce = pr.cluster_reduce ? 1 : 0;
  d.one_cta_per_sm = (pr.cluster_reduce || one_cta_per_sm_forced()) ? 1 : 0;
  d.write_partials = (w.bytes > 0 && !pr.cluster_reduce) ? 1 : 0;
  if (d.write_partials) {
    unsigned char* ws = static_cast<unsigned char*>(p.workspace);
    d.partial_o = reinterpret_cast<float*>(ws + w.partial_o_offset);
    d.partial_lse = reinterpret_cast<float*>(ws + w.partial_lse_offset);
  }
  d.lse = p.lse;
  d.lse_stride_b = p.lse_stride_b;
  d.lse_stride_h = p.lse_stride_h;
  d.seq_lens = p.seq_lens;
  d.window_size = p.window_size;
  d.sinks = p.sinks;
  d.alibi_slopes = p.alibi_slopes;
  d.logits_soft_cap = p.logits_soft_cap;
  d.has_logit_mods = (p.logits_soft_cap > 0.f || p.alibi_slopes != nullptr) ? 1 : 0;

  const bool pdl = pr.facts.cc >= 90;
  const int e = kernel_cell(pr.cell).launch(d, head_blocks(p), pr.vec, pdl, p.stream);
  if (e != cudaSuccess) return cuda_fail(static_cast<cudaError_t>(e), "launching the decode kernels");
  clear_error();
  return FD_STATUS_SUCCESS;
}

}  // namespace fd
