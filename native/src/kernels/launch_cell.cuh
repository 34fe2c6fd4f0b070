// Host side of one kernel cell (element part x head-dim bucket x KV source):
// its kernels' shared-memory limits and occupancy, and the decode + merge
// launches with programmatic dependent launch where the GPU has it. Each line
// of cells.def becomes one translation unit that instantiates this through
// FD_INSTANTIATE_CELL, so cells compile in parallel.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "../kernel_params.h"
#include "../kernel_table.h"
#include "decode_kernel.cuh"
#include "merge.cuh"

namespace fd {

template <class Elem, int DPAD, class Source, bool WIDE>
struct Cell {
  static constexpr int kStages = vec_stages<DPAD, Elem::kKvBytes>();
  using VecTraits = KernelTraits<DPAD, Elem::kKvBytes, kWarpsPerCta, kStages>;
  using ElemTraits = KernelTraits<DPAD, Elem::kKvBytes, kWarpsPerCta, 1>;
  using WideTraits = KernelTraits<DPAD, Elem::kKvBytes, kWideWarpsPerCta, kStages>;

  // A paged cell also carries its vectorised kernels for pools whose every
  // tile lies in one page (PagedTilesKv; LaunchShape::whole_tiles): their
  // loop has no per-row lookup path. Elsewhere Tiles is the source itself.
  using Tiles = typename std::conditional<Source::kPaged, PagedTilesKv, Source>::type;
  // Whole-tile kernels that warm their block-table lines (PagedTilesWarmKv;
  // LaunchShape::table_warmup), for CTAs of W warps whose pages of 16 keys,
  // one per warp, hold at most kTableWarmupStepBytes per KV head together.
  // Elsewhere WarmTiles<W> is Tiles and nothing more is compiled.
  template <int W>
  static constexpr bool warm_tables() {
    return Source::kPaged &&
           int64_t{W} * kTileKeys * DPAD * Elem::kKvBytes <= kTableWarmupStepBytes;
  }
  template <int W>
  using WarmTiles = typename std::conditional<warm_tables<W>(), PagedTilesWarmKv, Tiles>::type;

  static constexpr auto kernel(bool vec, bool tiles = false, bool warm = false) {
    return !vec  ? &decode_kernel<Elem, DPAD, Source, false, 1, kWarpsPerCta>
           : tiles ? (warm ? &decode_kernel<Elem, DPAD, WarmTiles<kWarpsPerCta>, true, kStages, kWarpsPerCta>
                           : &decode_kernel<Elem, DPAD, Tiles, true, kStages, kWarpsPerCta>)
                   : &decode_kernel<Elem, DPAD, Source, true, kStages, kWarpsPerCta>;
  }
  static constexpr auto wide_kernel(bool tiles = false, bool warm = false) {
    return tiles ? (warm ? &decode_kernel<Elem, DPAD, WarmTiles<kWideWarpsPerCta>, true, kStages,
                                          kWideWarpsPerCta>
                         : &decode_kernel<Elem, DPAD, Tiles, true, kStages, kWideWarpsPerCta>)
                 : &decode_kernel<Elem, DPAD, Source, true, kStages, kWideWarpsPerCta>;
  }
  // The vectorised kernels with the keys as the mma's M (kv_element_km.cuh),
  // for CTAs of at most kKeysAsMMaxHeads query heads. The fp8 D = 128 ones on
  // a contiguous cache or whole-tile pages take their tiles in pairs from a
  // ring of kPairStages (H200, docs/RESULTS.md: ragged fp8 batches 6-12%
  // faster, uniform ones 0.4-0.9%); the per-key paged ones, and the cell's
  // heads-as-M kernels, keep the shallower ring, which fits three 4-warp CTAs
  // per SM (with six stages, page 1 and groups of 16 lost 3-7%).
  using Km = typename KeysAsMOf<Elem>::type;
  static constexpr bool kPairs = Km::kPairTiles && DPAD == 128;
  static constexpr int kPairRing = kPairs ? kPairStages : kStages;
  using PairTraits = KernelTraits<DPAD, Elem::kKvBytes, kWarpsPerCta, kPairRing>;
  using WidePairTraits = KernelTraits<DPAD, Elem::kKvBytes, kWideWarpsPerCta, kPairRing>;
  // Whether the keys-as-M kernel of this source (whole tiles or not) is paired.
  static constexpr bool km_paired(bool tiles) { return kPairs && (!Source::kPaged || tiles); }
  static constexpr auto kernel_km(bool tiles = false, bool warm = false) {
    if constexpr (Source::kPaged)
      return tiles ? (warm ? &decode_kernel<Km, DPAD, WarmTiles<kWarpsPerCta>, true, kPairRing, kWarpsPerCta>
                           : &decode_kernel<Km, DPAD, Tiles, true, kPairRing, kWarpsPerCta>)
                   : &decode_kernel<Km, DPAD, Source, true, kStages, kWarpsPerCta>;
    else
      return &decode_kernel<Km, DPAD, Source, true, kPairRing, kWarpsPerCta>;
  }
  static constexpr auto wide_kernel_km(bool tiles = false, bool warm = false) {
    if constexpr (Source::kPaged)
      return tiles
                 ? (warm ? &decode_kernel<Km, DPAD, WarmTiles<kWideWarpsPerCta>, true, kPairRing,
                                          kWideWarpsPerCta>
                         : &decode_kernel<Km, DPAD, Tiles, true, kPairRing, kWideWarpsPerCta>)
                 : &decode_kernel<Km, DPAD, Source, true, kStages, kWideWarpsPerCta>;
    else
      return &decode_kernel<Km, DPAD, Source, true, kPairRing, kWideWarpsPerCta>;
  }
  static constexpr size_t smem_bytes(bool vec) {
    return vec ? VecTraits::kSmemBytes : ElemTraits::kSmemBytes;
  }
  // The block-table scratch of a PagedTilesWarmKv kernel of `warps` warps:
  // past its ring and epilogue.
  static constexpr size_t table_scratch(int warps) {
    return static_cast<size_t>(warps) * kTableScratchBytesPerWarp;
  }

  // Dynamic shared memory of a launch padded to `pad_bytes` (so that fewer CTAs
  // share an SM), never below what the kernel needs (`base`) nor above what
  // prepare() raised the limit to.
  static size_t launch_smem(size_t base, int pad_bytes, int limit) {
    const size_t pad = pad_bytes > 0 ? static_cast<size_t>(pad_bytes) : 0;
    return pad > base && pad <= static_cast<size_t>(limit) ? pad : base;
  }

  // Raises the kernels' dynamic shared-memory limit (up to pad_limit, so the
  // planner may pad a launch to fewer CTAs per SM) and reports occupancy; a
  // kernel that needs more than the device gives a CTA reports 0 CTAs per SM.
  static int prepare(bool vec, int smem_optin, int pad_limit, CellFacts* out) {
    const int e = prepare_kernels(vec, smem_optin, pad_limit, out);
    if (e == cudaSuccess && vec && out->ctas_per_sm > 0) table_scratch_fits(smem_optin, out);
    return e;
  }

  // Sets the PagedTilesWarmKv kernels' limits: what their PagedTilesKv twins
  // may use plus the block-table scratch. The 4-warp ones (and the 8-warp
  // ones) count as there (CellFacts::table_warmup, wide_table_warmup) when
  // each of them the planner may launch here fits the device with it and runs
  // as many CTAs per SM as its twin without it, the count the planner uses.
  static void table_scratch_fits(int smem_optin, CellFacts* f) {
    auto fits = [&](auto plain, auto warm, int warps, size_t base, int limit) {
      const size_t need = base + table_scratch(warps);
      const int raised = need > static_cast<size_t>(limit) ? static_cast<int>(need) : limit;
      int without = 0, with = 0;
      const bool ok =
          need <= static_cast<size_t>(smem_optin) &&
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&without, plain, warps * 32, base) ==
              cudaSuccess &&
          cudaFuncSetAttribute(warm, cudaFuncAttributeMaxDynamicSharedMemorySize, raised) ==
              cudaSuccess &&
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&with, warm, warps * 32, need) ==
              cudaSuccess &&
          with == without;
      if (!ok) (void)cudaGetLastError();
      return ok;
    };
    if constexpr (warm_tables<kWarpsPerCta>()) {
      const size_t vneed = VecTraits::kSmemBytes;
      bool ok = fits(kernel(true, true), kernel(true, true, true), kWarpsPerCta, vneed,
                     f->smem_limit);
      if (km_paired(true)) {
        const size_t pneed = PairTraits::kSmemBytes;
        const int plimit =
            pneed > static_cast<size_t>(f->smem_limit) ? static_cast<int>(pneed) : f->smem_limit;
        if (f->pair_ctas_per_sm > 0)
          ok = ok && fits(kernel_km(true), kernel_km(true, true), kWarpsPerCta, pneed, plimit);
      } else {
        ok = ok &&
             fits(kernel_km(true), kernel_km(true, true), kWarpsPerCta, vneed, f->smem_limit);
      }
      f->table_warmup = ok;
    }
    if constexpr (WIDE && warm_tables<kWideWarpsPerCta>()) {
      if (f->wide_ctas_per_sm > 0) {
        const size_t wneed = WideTraits::kSmemBytes;
        const int wlimit = static_cast<int>(wneed);
        bool ok =
            fits(wide_kernel(true), wide_kernel(true, true), kWideWarpsPerCta, wneed, wlimit);
        if (km_paired(true)) {
          const size_t pneed = WidePairTraits::kSmemBytes;
          if (f->wide_pair_ctas_per_sm > 0)
            ok = ok && fits(wide_kernel_km(true), wide_kernel_km(true, true), kWideWarpsPerCta,
                            pneed, static_cast<int>(pneed));
        } else {
          ok = ok && fits(wide_kernel_km(true), wide_kernel_km(true, true), kWideWarpsPerCta,
                          wneed, wlimit);
        }
        f->wide_table_warmup = ok;
      }
    }
  }

  static int prepare_kernels(bool vec, int smem_optin, int pad_limit, CellFacts* out) {
    *out = CellFacts{};
    auto k = kernel(vec);
    const size_t need = smem_bytes(vec);
    if (need > static_cast<size_t>(smem_optin)) return cudaSuccess;  // cannot run here
    const int room = pad_limit < smem_optin ? pad_limit : smem_optin;
    const int limit = need > static_cast<size_t>(room) ? static_cast<int>(need) : room;
    cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, limit);
    if (e == cudaSuccess && vec && !km_paired(false))
      e = cudaFuncSetAttribute(kernel_km(), cudaFuncAttributeMaxDynamicSharedMemorySize, limit);
    if constexpr (Source::kPaged) {
      if (e == cudaSuccess && vec)
        e = cudaFuncSetAttribute(kernel(true, true), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 limit);
      if (e == cudaSuccess && vec && !km_paired(true))
        e = cudaFuncSetAttribute(kernel_km(true), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 limit);
    }
    if (e != cudaSuccess) return e;
    out->smem_limit = limit;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&out->ctas_per_sm, k, kWarpsPerCta * 32,
                                                      need);
    if (e != cudaSuccess) return e;
    if constexpr (kPairs) {
      // The paired kernels' own limit: their ring, or the padding limit if
      // larger; a GPU too small for them reports 0 and runs the heads-as-M
      // kernels instead (the planner's rule).
      if (vec) {
        out->km_pairs = true;
        const size_t pneed = PairTraits::kSmemBytes;
        const int plimit = pneed > static_cast<size_t>(limit) ? static_cast<int>(pneed) : limit;
        const bool fits =
            pneed <= static_cast<size_t>(smem_optin) &&
            cudaFuncSetAttribute(kernel_km(true), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 plimit) == cudaSuccess &&
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                &out->pair_ctas_per_sm, kernel_km(true), kWarpsPerCta * 32, pneed) == cudaSuccess;
        if (!fits) {
          (void)cudaGetLastError();
          out->pair_ctas_per_sm = 0;
        }
      }
    }
    if constexpr (WIDE) {
      if (!vec) return cudaSuccess;
      // A GPU with too little shared memory for it simply never runs it.
      auto w = wide_kernel();
      const size_t wneed = WideTraits::kSmemBytes;
      const bool fits =
          wneed <= static_cast<size_t>(smem_optin) &&
          cudaFuncSetAttribute(w, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(wneed)) == cudaSuccess &&
          cudaFuncSetAttribute(wide_kernel_km(), cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(wneed)) == cudaSuccess &&
          (!Source::kPaged ||
           (cudaFuncSetAttribute(wide_kernel(true), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(wneed)) == cudaSuccess &&
            cudaFuncSetAttribute(wide_kernel_km(true),
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(wneed)) == cudaSuccess)) &&
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&out->wide_ctas_per_sm, w,
                                                        kWideWarpsPerCta * 32, wneed) == cudaSuccess;
      if (!fits) {
        (void)cudaGetLastError();
        out->wide_ctas_per_sm = 0;
      }
      if constexpr (kPairs) {
        // The 8-warp paired kernel (a ring of kPairStages).
        const size_t pneed = WidePairTraits::kSmemBytes;
        const bool pfits =
            pneed <= static_cast<size_t>(smem_optin) &&
            cudaFuncSetAttribute(wide_kernel_km(true), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(pneed)) == cudaSuccess &&
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&out->wide_pair_ctas_per_sm,
                                                          wide_kernel_km(true),
                                                          kWideWarpsPerCta * 32,
                                                          pneed) == cudaSuccess;
        if (!pfits) {
          (void)cudaGetLastError();
          out->wide_pair_ctas_per_sm = 0;
        }
      }
    }
    return cudaSuccess;
  }

  static void set_pdl(cudaLaunchConfig_t& cfg, cudaLaunchAttribute* attr, bool pdl) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
  }

  // A long split list goes to the wide merge (8 warps per row); batch-invariant
  // mode always folds every split in one warp, so a sequence's bits do not
  // depend on how many (empty) splits the batch's longest length adds.
  template <typename Out>
  static cudaError_t launch_merge(const DecodeArgs& a, bool pdl, cudaStream_t stream) {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    const unsigned rows =
        static_cast<unsigned>(a.call.batch_size) * static_cast<unsigned>(a.call.num_heads);
    cfg.stream = stream;
    set_pdl(cfg, attr, pdl);
    const bool invariant = (a.call.flags & FD_FLAG_BATCH_INVARIANT) != 0;
    if (!invariant && a.launch.num_splits > kNarrowMergeSplits) {
      cfg.gridDim = dim3(rows);
      cfg.blockDim = dim3(kWideMergeThreads);
      return cudaLaunchKernelEx(&cfg, &decode_merge_wide_kernel<Out, DPAD>, a);
    }
    cfg.gridDim = dim3((rows + kMergeRowsPerCta - 1) / kMergeRowsPerCta);
    cfg.blockDim = dim3(kMergeThreads);
    return cudaLaunchKernelEx(&cfg, &decode_merge_kernel<Out, DPAD>, a);
  }

  static int launch(const DecodeArgs& a, const LaunchShape& s, void* stream_ptr) {
    cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    cfg.gridDim = dim3(static_cast<unsigned>(a.call.batch_size) *
                           static_cast<unsigned>(a.call.num_kv_heads),
                       static_cast<unsigned>(a.launch.num_splits),
                       static_cast<unsigned>(s.head_blocks));
    cfg.stream = stream;
    set_pdl(cfg, attr, s.pdl);
    cudaError_t e = cudaSuccess;
    bool launched = false;
    const bool km = s.vec && s.keys_as_m && a.launch.group_size <= kKeysAsMMaxHeads;
    const bool tiles = Source::kPaged && s.vec && s.whole_tiles;
    const bool warm = tiles && s.table_warmup;
    if constexpr (WIDE) {
      if (s.vec && s.wide) {
        cfg.blockDim = dim3(kWideWarpsPerCta * 32);
        cfg.dynamicSmemBytes =
            (km && km_paired(tiles) ? WidePairTraits::kSmemBytes : WideTraits::kSmemBytes) +
            (warm ? table_scratch(kWideWarpsPerCta) : 0);
        e = cudaLaunchKernelEx(&cfg, km ? wide_kernel_km(tiles, warm) : wide_kernel(tiles, warm),
                               a);
        launched = true;
      }
    }
    if (!launched) {
      cfg.blockDim = dim3(kWarpsPerCta * 32);
      const size_t base = (km && km_paired(tiles) ? PairTraits::kSmemBytes : smem_bytes(s.vec)) +
                          (warm ? table_scratch(kWarpsPerCta) : 0);
      cfg.dynamicSmemBytes = launch_smem(base, s.pad_smem_bytes, s.smem_limit);
      e = cudaLaunchKernelEx(&cfg, km ? kernel_km(tiles, warm) : kernel(s.vec, tiles, warm), a);
    }
    if (e != cudaSuccess || !a.launch.write_partials) return e;
    if constexpr (Elem::kFp8) {
      return a.launch.q_bf16 ? launch_merge<__nv_bfloat16>(a, s.pdl, stream)
                             : launch_merge<__half>(a, s.pdl, stream);
    } else {
      return launch_merge<typename Elem::Out>(a, s.pdl, stream);
    }
  }
};

}  // namespace fd

// One line of cells.def as a translation unit: the cell's entry points.
#define FD_INSTANTIATE_CELL(TAG, ELEM, QDT, KVDT, DPAD, SOURCE, WIDE)                      \
  namespace fd {                                                                            \
  int prepare_##TAG(bool vec, int smem_optin, int pad_limit, CellFacts* out) {              \
    return Cell<ELEM, DPAD, SOURCE, WIDE != 0>::prepare(vec, smem_optin, pad_limit, out);   \
  }                                                                                         \
  int launch_##TAG(const DecodeArgs& a, const LaunchShape& s, void* stream) {               \
    return Cell<ELEM, DPAD, SOURCE, WIDE != 0>::launch(a, s, stream);                       \
  }                                                                                         \
  }
