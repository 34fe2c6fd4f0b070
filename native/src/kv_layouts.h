// The KV sources by name, for host code that must know a cell's layout
// without compiling its kernels (the kernel table). The sources themselves
// are device code: kernels/kv_source.cuh.
#pragma once

namespace fd {

struct ContiguousKv;
struct PagedKv;

template <class Source>
struct IsPagedSource;
template <>
struct IsPagedSource<ContiguousKv> {
  static constexpr bool value = false;
};
template <>
struct IsPagedSource<PagedKv> {
  static constexpr bool value = true;
};

}  // namespace fd
