// Which sequence a CTA takes. By default CTA x of the grid takes sequence
// x / H_kv. With per-sequence lengths the CTAs of one grid differ in work, and
// the block scheduler starts them in x order as SMs free up: a long sequence
// that comes late then runs on a few SMs while the rest of the GPU idles. In
// longest-first order (LaunchParams::longest_first) CTA x takes the sequence
// whose length ranks x / H_kv from the top instead, ties in sequence order, so
// the grid is scheduled longest job first. Only the order changes: every
// sequence runs the same arithmetic in whichever CTA takes it.
#pragma once

#include <climits>
#include <cstdint>

#include "../cta_shape.h"

namespace fd {

// The sequence of rank `rank` (0: the longest) among seq_lens[0, batch), for
// batch <= kLongestFirstMaxBatch; every thread of the CTA calls it and gets
// the same answer. `scratch` is 16-byte aligned shared memory of
// kLongestFirstMaxBatch + 1 ints that nothing else uses yet (the ring before
// its first copy).
//
// Each sequence gets a distinct key, its length (clamped into [0, 2^23)) above
// 255 - its index, so a longer sequence, or an equally long earlier one, has the
// larger key; a sequence's rank is how many keys exceed its own. The keys are
// distinct whatever the lengths (negative or past k_len included), so the
// ranks are a permutation: each sequence is taken by exactly one CTA per KV
// head. One 16-byte shared-memory read serves four keys (a scalar read per
// key made the rank cost microseconds per CTA at B = 128).
template <int THREADS>
__device__ __forceinline__ int sequence_of_rank(const int32_t* seq_lens, int batch, int rank,
                                                int* scratch) {
  static_assert(kLongestFirstMaxBatch <= 256, "an index takes the keys' low 8 bits");
  constexpr int kPerThread = (kLongestFirstMaxBatch + THREADS - 1) / THREADS;
  constexpr int kMaxLen = (1 << 23) - 1;  // longer sequences rank by index among themselves
  const int padded = (batch + 3) & ~3;
  for (int i = threadIdx.x; i < padded; i += THREADS) {
    int key = -1;  // the padding, below every key
    if (i < batch) key = (min(max(seq_lens[i], 0), kMaxLen) << 8) | (255 - i);
    scratch[i] = key;
  }
  __syncthreads();
  int mine[kPerThread], above[kPerThread];
#pragma unroll
  for (int c = 0; c < kPerThread; ++c) {
    const int b = threadIdx.x + c * THREADS;
    mine[c] = b < batch ? scratch[b] : INT_MAX;
    above[c] = 0;
  }
  const int4* keys4 = reinterpret_cast<const int4*>(scratch);
#pragma unroll 4
  for (int j = 0; j < padded / 4; ++j) {
    const int4 o = keys4[j];  // the same address in every thread: a broadcast
#pragma unroll
    for (int c = 0; c < kPerThread; ++c)
      above[c] += (o.x > mine[c]) + (o.y > mine[c]) + (o.z > mine[c]) + (o.w > mine[c]);
  }
  int* const found = scratch + kLongestFirstMaxBatch;
#pragma unroll
  for (int c = 0; c < kPerThread; ++c) {
    const int b = threadIdx.x + c * THREADS;
    if (b < batch && above[c] == rank) *found = b;
  }
  __syncthreads();
  const int b = *found;
  __syncthreads();  // the ring's first copies may overwrite the scratch
  return b;
}

}  // namespace fd
