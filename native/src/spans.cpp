#include "spans.h"

#include <utility>

namespace fd {

bool span_bytes(const int64_t* extents, const int64_t* strides, int n, int64_t row, int64_t elem,
                int64_t* out) {
  int64_t last = row - 1;
  for (int i = 0; i < n; ++i) {
    if (extents[i] <= 0) {  // empty tensor: nothing is addressed
      *out = 0;
      return true;
    }
    int64_t term;
    if (__builtin_mul_overflow(extents[i] - 1, strides[i], &term)) return false;
    if (__builtin_add_overflow(last, term, &last)) return false;
  }
  int64_t elems;
  if (__builtin_add_overflow(last, int64_t{1}, &elems)) return false;
  return !__builtin_mul_overflow(elems, elem, out);
}

bool rows_disjoint(int64_t e0, int64_t s0, int64_t e1, int64_t s1, int64_t row) {
  // Axes of extent 1 place nothing; order the others by stride.
  if (e0 == 1) s0 = 0;
  if (e1 == 1) s1 = 0;
  if (e0 > 1 && e1 > 1 && s0 > s1) {
    std::swap(e0, e1);
    std::swap(s0, s1);
  }
  // (e0, s0) is now the inner axis when both are real.
  if (e0 > 1 && e1 > 1) return s0 >= row && s1 >= e0 * s0;
  if (e0 > 1) return s0 >= row;
  if (e1 > 1) return s1 >= row;
  return true;
}

bool range_wraps(const void* ptr, int64_t bytes) {
  // Ending exactly at 2^64 is still inside: the last byte is ptr + bytes - 1.
  uintptr_t last;
  return ptr != nullptr && bytes > 0 &&
         __builtin_add_overflow(reinterpret_cast<uintptr_t>(ptr),
                                static_cast<uintptr_t>(bytes) - 1, &last);
}

bool ranges_overlap(const void* a, int64_t a_bytes, const void* b, int64_t b_bytes) {
  if (a == nullptr || b == nullptr || a_bytes <= 0 || b_bytes <= 0) return false;
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(a), b0 = reinterpret_cast<uintptr_t>(b);
  // Compared as distances, so a range reaching the end of the address space
  // cannot wrap (the pointer checks refuse those before asking).
  return a0 <= b0 ? b0 - a0 < static_cast<uintptr_t>(a_bytes)
                  : a0 - b0 < static_cast<uintptr_t>(b_bytes);
}

}  // namespace fd
