"""GPU architectures: SmArch (a compute capability), ArchSku (where a kernel cell
runs), and the reading of the library's compiled-architecture list."""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .errors import DispatchError


class SmArch(enum.IntEnum):
    """GPU architectures by compute capability (major*10 + minor)."""

    SM80 = 80    # A100
    SM86 = 86    # RTX 30xx, A10, A40
    SM87 = 87    # Jetson Orin
    SM89 = 89    # L4, L40, RTX 40xx
    SM90 = 90    # H100, H200
    SM100 = 100  # B200
    SM103 = 103  # B300
    SM120 = 120  # RTX 50xx, RTX PRO 6000
    SM121 = 121  # DGX Spark

    @property
    def cc(self) -> Tuple[int, int]:
        return (int(self) // 10, int(self) % 10)

    @classmethod
    def from_cc(cls, major: int, minor: int = 0) -> "SmArch":
        try:
            return cls(int(major) * 10 + int(minor))
        except ValueError:
            raise DispatchError(f"sm_{major}{minor} is not an architecture this library "
                                f"knows ({', '.join(a.name for a in cls)})") from None


_ARCH_TOKEN = re.compile(r"(ptx|compute_|sm_)?(\d+)([af]?)", re.I)


def parse_architectures(text: str) -> List[Tuple[int, str, bool]]:
    """'80,86,89,90a+ptx90' -> [(80, '', False), ..., (90, 'a', False), (90, '', True)]:
    (cc, suffix, is_ptx)."""
    out = []
    for m in _ARCH_TOKEN.finditer(text):
        prefix, cc, suffix = m.group(1), int(m.group(2)), m.group(3).lower()
        is_ptx = bool(prefix) and prefix.lower() in ("ptx", "compute_")
        out.append((cc, suffix, is_ptx))
    return out


def arch_runs(arch: SmArch, compiled: List[Tuple[int, str, bool]]) -> bool:
    """Whether code compiled for ``compiled`` runs on ``arch``: a cubin sm_XY on the
    same major with minor >= Y ('a'/'f' variants: the exact / same-major family),
    PTX on any newer device."""
    cc = int(arch)
    for target, suffix, is_ptx in compiled:
        if is_ptx:
            if (cc == target) if suffix == "a" else (cc >= target):
                return True
        elif suffix == "a":
            if cc == target:
                return True
        elif cc // 10 == target // 10 and cc % 10 >= target % 10:
            return True
    return False


def compiled_architectures_text() -> str:
    """The loaded library's own list, e.g. '80,86,89,90a,ptx90'."""
    from . import _native

    return _native.lib().fd_compiled_architectures().decode()


def compiled_architectures() -> List[Tuple[int, str, bool]]:
    return parse_architectures(compiled_architectures_text())


def highest_compiled_arch() -> Optional[SmArch]:
    """The newest architecture the library has machine code for (None if it names none
    this module knows)."""
    best = None
    for cc, _suffix, _ptx in compiled_architectures():
        try:
            arch = SmArch(cc)
        except ValueError:
            continue
        best = arch if best is None or arch > best else best
    return best


@dataclass(frozen=True)
class ArchSku:
    """Where a kernel cell runs: from ``min_arch`` on (SM80 for the 16-bit cells,
    SM89 for fp8, whose conversions need it), on the architectures the library
    carries code for (``compiled``, the library's own text)."""

    min_arch: SmArch
    compiled: str

    def runs_on(self, arch: SmArch) -> bool:
        """Whether the cell can run on ``arch``."""
        return int(arch) >= int(self.min_arch) and arch_runs(arch,
                                                            parse_architectures(self.compiled))
