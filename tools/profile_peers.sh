#!/usr/bin/env bash
# Nsight Compute look at our kernels and cuDNN's on two shapes (launch shape,
# duration, DRAM throughput): what the peers' kernels are made of.
# Measurement aid; needs a GPU, ncu and torch. usage: tools/profile_peers.sh
# env: FD_BUILD_DIR (default build; built for sm_90a when it has no library)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
bd=${FD_BUILD_DIR:-build}
export PYTHONPATH=$root/python FLASHDECODING_LIBRARY=$root/$bd/libflashdecoding.so
if [ ! -f "$bd/libflashdecoding.so" ]; then
  cmake -S . -B "$bd" -DCMAKE_CUDA_ARCHITECTURES=90a >/dev/null && cmake --build "$bd" -j"$(nproc)" >/dev/null \
    || { echo "profile_peers: cannot build the library in $bd" >&2; exit 1; }
fi
keep='^  [A-Za-z_].*\(|Grid Size|Block Size|Registers Per|Dynamic Shared|Static Shared|^    Duration|DRAM Throughput|Waves Per SM|Achieved Occupancy|L2 Hit Rate|Mem Busy|Max Bandwidth'
for shape in "64 32 8 2048 128" "1 32 8 8192 128"; do
  for m in flashdecoding sdpa-cudnn; do
    echo "=== $m $shape"
    # shellcheck disable=SC2086
    ncu --clock-control none --launch-skip 2 --launch-count 3 \
      --section SpeedOfLight --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis \
      python3 tools/profile_shape.py $m $shape 2>&1 | grep -E "$keep" | head -40
  done
done
