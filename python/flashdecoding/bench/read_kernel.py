"""The read ceiling's kernel: CUDA C compiled at run time with NVRTC and
launched through the driver API (cuda-python), so the ceiling needs neither a
CUDA toolkit nor a build step.

It streams a buffer once through shared memory the way the decode kernels load
K and V, with the per-warp ring that tools/stream_probe.cu found to reach the
peak: 16-byte ``cp.async.cg`` copies, a few stages per warp, a full wave of
CTAs each reading one contiguous share of the buffer, and a checksum (one word
per lane of every tile) so no load is optimised away and the host can check
that every tile was read.  Timed with CUDA events, the median of repeats.

The constants, the source text and the launch geometry are plain Python (the
CPU tests check them); compiling and launching need a GPU, NVRTC and torch.
"""

from __future__ import annotations

import ctypes

WARPS = 4                  # warps per CTA
STAGES = 3                 # ring slots per warp (STAGES - 1 tiles in flight)
LANE_COPIES = 16           # 16-byte copies per lane per tile
TILE_BYTES = 32 * LANE_COPIES * 16          # 8 KiB per warp per stage
SMEM_BYTES = WARPS * STAGES * TILE_BYTES    # 96 KiB per CTA
THREADS = 32 * WARPS
KERNEL_NAME = "fd_stream_read"
MIN_CC = (8, 0)            # cp.async

SOURCE = r"""
// Reads n_tiles tiles of TILE_BYTES once. The grid is as many CTAs as fit on the
// device at once; CTA c takes the contiguous tiles [c * n / G, (c + 1) * n / G), so
// every CTA reads the same amount (no tail wave). Warp w of a CTA takes its tiles
// w, w + WARPS, ...; lane l copies 16-byte pieces l, l + 32, ... of a tile, so each
// copy instruction of a warp reads 512 contiguous bytes.
#define WARPS %(WARPS)d
#define STAGES %(STAGES)d
#define LANE_COPIES %(LANE_COPIES)d
#define TILE_BYTES %(TILE_BYTES)d

__device__ __forceinline__ unsigned shared_address(const void* p) {
  unsigned long long a;
  asm volatile("cvta.to.shared.u64 %%0, %%1;" : "=l"(a) : "l"(p));
  return (unsigned)a;
}

// Copies the warp's j-th tile (at `tile`) into ring slot j %% STAGES.
__device__ __forceinline__ void load_tile(unsigned ring, const unsigned char* tile, long long j,
                                          int lane) {
  const unsigned dst = ring + (unsigned)((j %% STAGES) * TILE_BYTES);
#pragma unroll
  for (int i = 0; i < LANE_COPIES; ++i) {
    const int off = (lane + i * 32) * 16;
    asm volatile("cp.async.cg.shared.global.L2::256B [%%0], [%%1], 16;"
                 :: "r"(dst + off), "l"(tile + off) : "memory");
  }
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
%(KERNEL_NAME)s(const unsigned char* __restrict__ src, unsigned long long n_tiles,
               unsigned long long* __restrict__ sum) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  unsigned char* ring = smem + warp * (STAGES * TILE_BYTES);
  const unsigned ring_address = shared_address(ring);
  const unsigned long long begin = n_tiles * blockIdx.x / gridDim.x;
  const unsigned long long end = n_tiles * (blockIdx.x + 1) / gridDim.x;
  const long long count = (long long)(end - begin);
  const long long mine = count > warp ? (count - warp + WARPS - 1) / WARPS : 0;
  // The warp's j-th tile is tile begin + warp + j * WARPS.
  const unsigned char* first = src + (begin + warp) * TILE_BYTES;
  const unsigned long long step = (unsigned long long)WARPS * TILE_BYTES;

  for (long long j = 0; j < STAGES - 1; ++j) {
    if (j < mine) load_tile(ring_address, first + j * step, j, lane);
    asm volatile("cp.async.commit_group;" ::: "memory");  // empty groups keep the count
  }
  unsigned long long acc = 0;
  for (long long j = 0; j < mine; ++j) {
    // Groups 0..j are complete once at most STAGES - 2 younger ones are pending.
    asm volatile("cp.async.wait_group %%0;" :: "n"(STAGES - 2) : "memory");
    __syncwarp();
    // Tile j + STAGES - 1 goes to the slot every lane finished reading last iteration.
    if (j + STAGES - 1 < mine)
      load_tile(ring_address, first + (j + STAGES - 1) * step, j + STAGES - 1, lane);
    asm volatile("cp.async.commit_group;" ::: "memory");
    // The first word of this lane's own first copy of tile j.
    acc += *(const volatile unsigned*)(ring + (j %% STAGES) * TILE_BYTES + lane * 16);
    __syncwarp();
  }
  asm volatile("cp.async.wait_group 0;" ::: "memory");
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) atomicAdd(sum, acc);
}
""" % {"WARPS": WARPS, "STAGES": STAGES, "LANE_COPIES": LANE_COPIES, "TILE_BYTES": TILE_BYTES,
       "KERNEL_NAME": KERNEL_NAME}


class ReadKernelUnavailable(Exception):
    """NVRTC, the driver API or the device cannot run the read kernel (the reason)."""


def tiles_of(nbytes: int):
    """(tiles, bytes read): the whole tiles in ``nbytes``."""
    tiles = int(nbytes) // TILE_BYTES
    if tiles < 1:
        raise ValueError(f"{nbytes} bytes: the read kernel needs at least {TILE_BYTES}")
    return tiles, tiles * TILE_BYTES


def cta_ranges(n_tiles: int, ctas: int):
    """[begin, end) tiles of each CTA, as the kernel splits them."""
    if ctas < 1:
        raise ValueError("ctas must be >= 1")
    return [(n_tiles * c // ctas, n_tiles * (c + 1) // ctas) for c in range(ctas)]


def warp_tiles(begin: int, end: int, warp: int):
    """The tiles warp ``warp`` of a CTA with tiles [begin, end) reads, in order."""
    return list(range(begin + warp, end, WARPS))


def sampled_words_per_tile():
    """Indices (in 32-bit words) of the words the checksum adds in each tile:
    lane l adds the first word of its first 16-byte copy, at byte 16 * l."""
    return [4 * lane for lane in range(32)]


def compile_options(major: int, minor: int, cubin: bool = True):
    """NVRTC options: a cubin for the device (``sm_XY``), or PTX for the driver
    to JIT (``compute_XY``) when this NVRTC cannot emit the device's cubin."""
    arch = f"{'sm' if cubin else 'compute'}_{major}{minor}"
    return [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"-default-device"]


def _check(result, what):
    """Unpack a cuda-python (status, *values) tuple; raise on a non-zero status."""
    err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if int(err) != 0:
        raise ReadKernelUnavailable(f"{what} failed: {err!r}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def _nvrtc_compile(major: int, minor: int):
    """(image, "cubin"/"ptx") for the device; raises ReadKernelUnavailable with the log."""
    try:
        from cuda.bindings import nvrtc
    except Exception as e:  # cuda-python too old or missing
        raise ReadKernelUnavailable(f"cuda.bindings.nvrtc not importable: {e}") from None
    logs = []
    for cubin in (True, False):
        try:
            prog = _check(nvrtc.nvrtcCreateProgram(SOURCE.encode(), b"fd_stream_read.cu",
                                                   0, [], []), "nvrtcCreateProgram")
        except ReadKernelUnavailable:
            raise
        except Exception as e:  # libnvrtc missing surfaces here
            raise ReadKernelUnavailable(f"NVRTC not available: {type(e).__name__}: {e}") from None
        try:
            opts = compile_options(major, minor, cubin)
            err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
            if int(err) != 0:
                size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
                log = b" " * size
                nvrtc.nvrtcGetProgramLog(prog, log)
                text = log.decode(errors="replace").strip("\x00 \n")
                logs.append(f"nvrtcCompileProgram {opts[0].decode()}: {text}")
                continue
            get_size, get = ((nvrtc.nvrtcGetCUBINSize, nvrtc.nvrtcGetCUBIN) if cubin
                             else (nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX))
            size = _check(get_size(prog), "nvrtc get image size")
            image = b" " * size
            _check(get(prog, image), "nvrtc get image")
            return image, ("cubin" if cubin else "ptx")
        finally:
            nvrtc.nvrtcDestroyProgram(prog)
    # The cubin attempt's log says most (a PTX retry only helps an NVRTC older than the GPU).
    raise ReadKernelUnavailable(logs[0][:400] if logs else "NVRTC compile failed")


class ReadKernel:
    """The compiled kernel in the device's primary context (the one torch uses)."""

    def __init__(self, device_index: int, major: int, minor: int):
        if (major, minor) < MIN_CC:
            raise ReadKernelUnavailable(f"cp.async needs compute capability >= 8.0, "
                                        f"the device has {major}.{minor}")
        try:
            from cuda.bindings import driver
        except Exception as e:
            raise ReadKernelUnavailable(f"cuda.bindings.driver not importable: {e}") from None
        self._driver = driver
        self._module = self._ctx = None
        self.image, self.image_kind = _nvrtc_compile(major, minor)
        _check(driver.cuInit(0), "cuInit")
        self._dev = _check(driver.cuDeviceGet(device_index), "cuDeviceGet")
        self._ctx = _check(driver.cuDevicePrimaryCtxRetain(self._dev), "cuDevicePrimaryCtxRetain")
        _check(driver.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")
        self._module = _check(driver.cuModuleLoadData(self.image), "cuModuleLoadData")
        self._fn = _check(driver.cuModuleGetFunction(self._module, KERNEL_NAME.encode()),
                          "cuModuleGetFunction")
        attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        _check(driver.cuFuncSetAttribute(self._fn, attr, SMEM_BYTES),
               f"cuFuncSetAttribute(max dynamic shared memory = {SMEM_BYTES})")
        per_sm = _check(driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(
            self._fn, THREADS, SMEM_BYTES), "cuOccupancyMaxActiveBlocksPerMultiprocessor")
        sm_attr = driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
        sms = _check(driver.cuDeviceGetAttribute(sm_attr, self._dev), "cuDeviceGetAttribute")
        if int(per_sm) < 1:
            raise ReadKernelUnavailable(f"no CTA of {SMEM_BYTES} B shared memory fits an SM")
        self.ctas_per_sm = int(per_sm)
        self.ctas = int(per_sm) * int(sms)       # one full wave

    def launch(self, src_ptr: int, n_tiles: int, sum_ptr: int, stream_handle: int) -> None:
        d = self._driver
        params = ((src_ptr, n_tiles, sum_ptr), (ctypes.c_void_p, ctypes.c_ulonglong,
                                                ctypes.c_void_p))
        _check(d.cuLaunchKernel(self._fn, self.ctas, 1, 1, THREADS, 1, 1, SMEM_BYTES,
                                d.CUstream(stream_handle), params, 0), "cuLaunchKernel")

    def close(self) -> None:
        d = self._driver
        if self._module is not None:
            d.cuModuleUnload(self._module)
            self._module = None
        if self._ctx is not None:
            d.cuDevicePrimaryCtxRelease(self._dev)
            self._ctx = None


def measure(nbytes: int, repeats: int, warmup: int, launches: int = 4) -> dict:
    """GB/s of the read kernel over ``nbytes`` (whole tiles) of random words:
    ``launches`` back-to-back launches per sample, CUDA events, the median of
    ``repeats`` samples.  First the checksum of one launch is compared with
    torch's sum of the same words; a mismatch raises (the time is not used).
    Returns ``{"status": "ok", "gbps", "best_gbps", ...}`` or raises
    ReadKernelUnavailable."""
    import statistics

    import torch

    idx = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    kernel = ReadKernel(idx, major, minor)
    try:
        n_tiles, used = tiles_of(nbytes)
        words = torch.randint(0, 2**31 - 1, (used // 4,), dtype=torch.int32, device="cuda")
        total = torch.zeros(1, dtype=torch.int64, device="cuda")
        stream = torch.cuda.current_stream().cuda_stream

        def launch():
            kernel.launch(words.data_ptr(), n_tiles, total.data_ptr(), stream)

        launch()
        sampled = words.view(n_tiles, TILE_BYTES // 4)[:, sampled_words_per_tile()]
        expected = int(sampled.to(torch.int64).sum().item())
        got = int(total.item())
        if got != expected:
            raise ReadKernelUnavailable(f"checksum {got} != {expected}: the kernel did not "
                                        "read every tile; its time is not used")
        for _ in range(warmup):
            launch()
        torch.cuda.synchronize()
        samples = []
        for _ in range(repeats):
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(launches):
                launch()
            e1.record()
            e1.synchronize()
            samples.append(e0.elapsed_time(e1) * 1e3 / launches)
        del words, total, sampled
        torch.cuda.empty_cache()
    finally:
        kernel.close()
    med = statistics.median(samples)
    return {"status": "ok", "gbps": used / (med * 1e-6) / 1e9,
            "best_gbps": used / (min(samples) * 1e-6) / 1e9, "us": samples, "bytes": used,
            "ctas": kernel.ctas, "ctas_per_sm": kernel.ctas_per_sm, "threads": THREADS,
            "smem_bytes": SMEM_BYTES, "image": kernel.image_kind, "arch": f"{major}.{minor}",
            "checksum_ok": True}
