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
// the same answer, and *raw_length gets that sequence's seq_lens entry as read
// here (loading it again after the rank would put a second round trip to L2 on
// the CTA's way to its first copy). `scratch` is 16-byte aligned shared memory
// of kLongestFirstMaxBatch + 2 ints that nothing else uses yet (the ring before
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
                                                int* scratch, int* raw_length) {
  static_assert(kLongestFirstMaxBatch <= 256, "an index takes the keys' low 8 bits");
  constexpr int kPerThread = (kLongestFirstMaxBatch + THREADS - 1) / THREADS;
  constexpr int kMaxLen = (1 << 23) - 1;  // longer sequences rank by index among themselves
  const int padded = (batch + 3) & ~3;
  int raw[kPerThread], mine[kPerThread];
#pragma unroll
  for (int c = 0; c < kPerThread; ++c) {
    const int i = threadIdx.x + c * THREADS;
    raw[c] = 0;
    mine[c] = -1;  // the padding, below every key
    if (i < batch) {
      raw[c] = seq_lens[i];
      mine[c] = (min(max(raw[c], 0), kMaxLen) << 8) | (255 - i);
    }
    if (i < padded) scratch[i] = mine[c];
  }
  __syncthreads();
  int* const found = scratch + kLongestFirstMaxBatch;  // the sequence, then its length
  const int4* keys4 = reinterpret_cast<const int4*>(scratch);
#pragma unroll
  for (int c = 0; c < kPerThread; ++c) {
    const int i = threadIdx.x + c * THREADS;
    // Warps whose lanes all lie past the batch own no key and skip the count.
    if (i - static_cast<int>(threadIdx.x & 31) >= batch) break;
    int above = 0;
#pragma unroll 4
    for (int j = 0; j < padded / 4; ++j) {
      const int4 o = keys4[j];  // the same address in every thread: a broadcast
      above += (o.x > mine[c]) + (o.y > mine[c]) + (o.z > mine[c]) + (o.w > mine[c]);
    }
    if (i < batch && above == rank) {
      found[0] = i;
      found[1] = raw[c];
    }
  }
  __syncthreads();
  const int b = found[0];
  *raw_length = found[1];
  __syncthreads();  // the ring's first copies may overwrite the scratch
  return b;
}

}  // namespace fd
