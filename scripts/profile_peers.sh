#!/usr/bin/env bash
# Nsight Compute look at our kernels and cuDNN's on two shapes (launch shape,
# duration, DRAM throughput): what the peers' kernels are made of.
# Measurement aid; needs the GPU machine. usage: scripts/profile_peers.sh
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
export PYTHONPATH=$root/python FLASHDECODING_LIBRARY=$root/build/libflashdecoding.so
[ -f build/libflashdecoding.so ] || { cmake -S . -B build -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90a >/dev/null && cmake --build build -j16 >/dev/null; }
keep='^  [A-Za-z_].*\(|Grid Size|Block Size|Registers Per|Dynamic Shared|Static Shared|^    Duration|DRAM Throughput|Waves Per SM|Achieved Occupancy|L2 Hit Rate|Mem Busy|Max Bandwidth'
for shape in "64 32 8 2048 128" "1 32 8 8192 128"; do
  for m in flashdecoding sdpa-cudnn; do
    echo "=== $m $shape"
    ncu --clock-control none --launch-skip 2 --launch-count 3 \
      --section SpeedOfLight --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis \
      python3 scripts/profile_shape.py $m $shape 2>&1 | grep -E "$keep" | head -40
  done
done
