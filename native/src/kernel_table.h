// The library's kernel table: one entry per line of kernels/cells.def, each a
// decode kernel (+ its merge) compiled in its own translation unit.
#pragma once

#include <cstdint>

#include "kernel_params.h"

namespace fd {

// What a cell's kernels can do on the current device.
struct CellFacts {
  int ctas_per_sm = 0;       // of its 4-warp kernel; 0: cannot run here
  int wide_ctas_per_sm = 0;  // of its 8-warp kernel (wide cells only); 0: cannot run
  int smem_limit = 0;        // dynamic shared memory a launch may pad up to
  // The cell's keys-as-M kernels on a contiguous cache or whole-tile pages
  // take their tiles in pairs from a deeper ring (fp8 D = 128), so their
  // occupancy is their own: the planner uses it for the problems they run.
  bool km_pairs = false;
  int pair_ctas_per_sm = 0;       // of the 4-warp paired kernel; 0: cannot run
  int wide_pair_ctas_per_sm = 0;  // of the 8-warp one (wide cells only)
  // Paged vec cells with PagedTilesWarmKv kernels of 4 (and 8) warps: those
  // take their block-table scratch at the occupancy their twins have without.
  bool table_warmup = false;
  bool wide_table_warmup = false;
};

// How one launch is shaped (host side only; the kernels read DecodeArgs).
struct LaunchShape {
  bool vec = false;   // 16-byte cp.async kernel (else element loads)
  bool wide = false;  // the 8-warp kernel
  bool keys_as_m = false;  // the keys-as-M kernels (vec only)
  bool whole_tiles = false;  // paged, every tile in one page: PagedTilesKv (vec only)
  bool pdl = false;   // programmatic dependent launch
  int head_blocks = 1;
  int pad_smem_bytes = 0;  // > 0: pad dynamic shared memory to this many bytes
  int smem_limit = 0;      // CellFacts::smem_limit
  bool table_warmup = false;  // whole tiles: the PagedTilesWarmKv kernels (vec only)
};

struct KernelCell {
  int32_t q_dtype;   // fd_dtype of q and y; 0: f16 or bf16, chosen per call
  int32_t kv_dtype;  // fd_dtype of k and v as stored
  int32_t head_dim;  // bucket
  bool paged;
  bool wide;         // carries the 8-warp kernel
  int32_t min_cc;    // lowest compute capability it runs on
  const char* name;  // canonical template expression
  // Raises the kernels' shared-memory limits on the current device and reports
  // what they can do there (cudaError_t).
  int (*prepare)(bool vec, int smem_optin, int pad_limit, CellFacts* out);
  // Launches decode (+ merge when a.launch.write_partials) on the stream (cudaError_t).
  int (*launch)(const DecodeArgs& a, const LaunchShape& s, void* stream);
};

int kernel_cell_count();
const KernelCell& kernel_cell(int index);

// The cell a problem runs on: the smallest bucket >= head_dim among the cells
// of its element types and KV layout; -1 if none is compiled.
int find_kernel_cell(int32_t dtype, int32_t kv_dtype, bool paged, int32_t head_dim);

// Defined by the generated cell translation units (one per line of cells.def
// compiled into this build).
#define FD_CELL(TAG, ELEM, QDT, KVDT, DPAD, SOURCE, WIDE)                          \
  int prepare_##TAG(bool vec, int smem_optin, int pad_limit, CellFacts* out);      \
  int launch_##TAG(const DecodeArgs& a, const LaunchShape& s, void* stream);
#include "cell_list.inc"
#undef FD_CELL

}  // namespace fd
