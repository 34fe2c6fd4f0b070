// Byte spans and overlaps of strided tensors: the arithmetic behind every
// stride and pointer rule, in 64 bits with overflow reported, never wrapped.
#pragma once

#include <cstdint>

namespace fd {

// Last element offset + 1 of a strided tensor whose innermost axis is `row`
// contiguous elements of `elem` bytes, in bytes; false when it does not fit in
// int64. An empty tensor (an extent <= 0) spans 0 bytes.
bool span_bytes(const int64_t* extents, const int64_t* strides, int n, int64_t row, int64_t elem,
                int64_t* out);

// Rows of `row` elements laid out by two (extent, stride) axes never overlap.
bool rows_disjoint(int64_t e0, int64_t s0, int64_t e1, int64_t s1, int64_t row);

// [ptr, ptr + bytes) runs past the end of the address space.
bool range_wraps(const void* ptr, int64_t bytes);

// [a, a + a_bytes) and [b, b + b_bytes) share a byte (NULL or empty: never).
bool ranges_overlap(const void* a, int64_t a_bytes, const void* b, int64_t b_bytes);

}  // namespace fd
