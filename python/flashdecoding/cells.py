"""The loaded library's kernel table, read once: every compiled cell as a KernelSku,
and the head-dim buckets it has (no hand-written list: a build with other cells
answers differently)."""
from __future__ import annotations

import ctypes
import threading
from typing import List, Optional, Tuple

from . import _capi
from .kinds import ElementKind, KernelSku

_lock = threading.Lock()
_cells: Optional[Tuple[KernelSku, ...]] = None


def kernel_cells() -> List[KernelSku]:
    """Every compiled kernel cell of the loaded library (fd_kernel_cell_info_get)."""
    global _cells
    if _cells is None:
        from . import _native
        from .arch import compiled_architectures_text

        lib = _native.lib()
        compiled = compiled_architectures_text()
        out = []
        for i in range(lib.fd_kernel_cell_count()):
            info = _capi.FdKernelCellInfo.new()
            _native.check(lib.fd_kernel_cell_info_get(i, ctypes.byref(info)))
            out.append(KernelSku.from_cell_info(i, info, compiled))
        with _lock:
            _cells = tuple(out)
    return list(_cells)


def cell(index: int) -> KernelSku:
    """The cell at ``index`` of the library's table."""
    return kernel_cells()[index]


def _matches(c: KernelSku, kv: Optional[ElementKind], paged: Optional[bool]) -> bool:
    return (kv is None or c.kv_element is kv) and (paged is None or c.paged == paged)


def head_dim_buckets(kv_element: Optional[ElementKind] = None,
                     paged: Optional[bool] = None) -> Tuple[int, ...]:
    """The head-dim buckets of the compiled cells storing KV as ``kv_element`` with
    that layout (None: any), ascending."""
    return tuple(sorted({c.head_dim for c in kernel_cells() if _matches(c, kv_element, paged)}))


def max_head_dim() -> int:
    """The largest head_dim any compiled cell serves (FLASH_DECODING_MAX_D)."""
    return max(c.head_dim for c in kernel_cells())


def find_cell(kv_element: ElementKind, head_dim_bucket: int, paged: bool) -> Optional[KernelSku]:
    """The cell of exactly this bucket, KV type and layout, or None."""
    for c in kernel_cells():
        if _matches(c, kv_element, paged) and c.head_dim == head_dim_bucket:
            return c
    return None
