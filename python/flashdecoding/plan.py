"""Workspace and FlashDecodingPlan: with the descriptor and the args
(decode_args.py), the descriptor / args / plan triple over the C library.

The rules are the library's: ``select``, ``can_implement`` and
``workspace_size`` ask its host-only functions (no GPU needed) and raise its
status as an exception with its message; ``run`` is one ``fd_decode``, which
makes the same checks once before it launches. Python adds only what C cannot
see: tensor shapes and dtypes against the descriptor, and the strides the C
ABI has no field for."""
from __future__ import annotations

import ctypes
from typing import Any, Optional

from . import _capi, _native
from .decode_args import FlashDecodingArgs, FlashDecodingPagedArgs, check_args
from .descriptor import FlashDecodingDescriptor
from .dispatch_key import DispatchKey, SmArch, highest_compiled_arch
from .errors import CudaError, InvalidProblem, Unsupported, WorkspaceTooSmall
from .kinds import DECODE_PRECISION, BackendKind, ElementKind, KernelSku, PlanPreference
from .kinds import PrecisionGuarantee
from .tensor import TensorRef

__all__ = ["FlashDecodingArgs", "FlashDecodingPagedArgs", "FlashDecodingPlan", "Workspace"]

# A made-up, never dereferenced block-table address: the host-only problem
# checks (select, workspace size, cell) need a paged problem to have a table.
_PLACEHOLDER_TABLE = 1 << 44


class Workspace:
    """Scratch memory for split-K partials: ``Workspace.none()`` or
    ``Workspace.borrowed(buf)`` (a DeviceBuffer, an array, or an int address with
    ``nbytes``). The caller owns it; two runs in flight at once need two."""

    def __init__(self, ptr: int, nbytes: int, owner: Any = None):
        self.ptr = int(ptr)
        self.nbytes = int(nbytes)
        self.owner = owner

    @classmethod
    def none(cls) -> "Workspace":
        return cls(0, 0)

    @classmethod
    def borrowed(cls, buf: Any, nbytes: Optional[int] = None) -> "Workspace":
        if isinstance(buf, Workspace):
            return buf
        if isinstance(buf, bool):
            raise TypeError("a workspace cannot be a bool")
        if isinstance(buf, int):
            if nbytes is None:
                raise TypeError("Workspace.borrowed(address) needs nbytes")
            return cls(buf, nbytes, None)
        if isinstance(buf, tuple) and len(buf) == 2 and all(isinstance(x, int) for x in buf):
            return cls(buf[0], buf[1], None)  # (address, nbytes)
        ptr = getattr(buf, "ptr", None)
        size = getattr(buf, "nbytes", None)
        if isinstance(ptr, int) and isinstance(size, int):
            got = size if nbytes is None else min(int(nbytes), size)
            return cls(ptr, got, buf)
        t = TensorRef(buf)
        if t.stride != tuple(_c_strides(t.shape)):
            raise InvalidProblem("a workspace array must be contiguous")
        item = _itemsize(t.dtype_name)
        count = 1
        for n in t.shape:
            count *= n
        got = count * item if nbytes is None else min(int(nbytes), count * item)
        return cls(t.ptr, got, buf)

    def __repr__(self) -> str:
        return f"Workspace(ptr=0x{self.ptr:x}, nbytes={self.nbytes})"


def _itemsize(dtype_name: Optional[str]) -> int:
    from .kinds import element_from_dtype

    kind = element_from_dtype(dtype_name) if dtype_name else None
    if kind is not None:
        return kind.itemsize
    import numpy as np

    try:
        return np.dtype(dtype_name).itemsize
    except Exception:
        raise InvalidProblem(f"cannot size a workspace of dtype {dtype_name}") from None


def _c_strides(shape):
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= max(n, 1)
    return list(reversed(out))


def _address_after(args: FlashDecodingArgs) -> int:
    """A 256-aligned address past every tensor of ``args``: where can_implement
    pretends a workspace of the right size lives (host-only checks never touch it)."""
    end = 0
    for _name, t in args.tensors():
        span = 1
        for n, s in zip(t.shape, t.stride):
            span += max(n - 1, 0) * abs(s)
        end = max(end, t.ptr + 8 * span)
    return (end + 255) // 256 * 256


def _c_decode(params: _capi.FdDecodeParams) -> int:
    """The one launch of a plan: fd_decode (checks, then launches on params.stream)."""
    return _native.lib().fd_decode(ctypes.byref(params))


def problem_params(desc: FlashDecodingDescriptor,
                   pref: PlanPreference = PlanPreference.DEFAULT) -> _capi.FdDecodeParams:
    """fd_decode_params with the problem of ``desc`` and no tensors: what the
    host-only problem queries read (a paged problem gets a placeholder table)."""
    p = _capi.FdDecodeParams.new()
    for name, value in desc.c_fields().items():
        setattr(p, name, value)
    p.flags = pref.flags
    if desc.paged:
        p.block_table = _capi.int32_ptr(_PLACEHOLDER_TABLE)
    return p


class FlashDecodingPlan:
    """A checked problem bound to the kernel cell that serves it."""

    def __init__(self, desc: FlashDecodingDescriptor, pref: PlanPreference, cell: KernelSku,
                 workspace_bytes: int, stream: Any):
        self.desc = desc
        self.pref = pref
        self._sku = cell
        self._workspace_bytes = workspace_bytes
        self.stream = stream
        self._problem = problem_params(desc, pref)  # copied into every call's params

    # ------------------------------------------------------------------ select
    @classmethod
    def select(cls, stream: Any, desc: FlashDecodingDescriptor,
               pref: PlanPreference = PlanPreference.DEFAULT,
               element: Optional[ElementKind] = None) -> "FlashDecodingPlan":
        """Checks ``desc`` with the library (no GPU needed) and picks its cell.
        ``element`` given and different from ``desc.element`` -> Unsupported."""
        from .cells import cell

        if not isinstance(desc, FlashDecodingDescriptor):
            raise TypeError(f"desc must be a FlashDecodingDescriptor, got {type(desc).__name__}")
        if not isinstance(pref, PlanPreference):
            raise TypeError(f"pref must be a PlanPreference, got {pref!r}")
        if element is not None and ElementKind.parse(element) is not desc.element:
            raise Unsupported(f"element {ElementKind.parse(element).short_name} was asked for but "
                              f"the descriptor is {desc.element.short_name}; a plan runs one "
                              "element type for q and y")
        lib = _native.lib()
        params = problem_params(desc, pref)
        needed = ctypes.c_size_t(0)
        _native.check(lib.fd_decode_workspace_size(ctypes.byref(params), ctypes.byref(needed)))
        index = ctypes.c_int32(-1)
        _native.check(lib.fd_decode_cell(ctypes.byref(params), ctypes.byref(index)))
        sku = cell(index.value)
        if sku.element is None:  # an fp8 cell: it runs this plan's query type
            sku = sku.for_queries(desc.element)
        return cls(desc, pref, sku, int(needed.value), stream)

    # ------------------------------------------------------------------ queries
    def workspace_size(self) -> int:
        """Bytes of workspace ``run`` needs (0: none), on any GPU."""
        return self._workspace_bytes

    def backend(self) -> BackendKind:
        return BackendKind.BESPOKE

    def sku(self) -> KernelSku:
        """The compiled kernel cell this plan runs (its element is q's type; an fp8
        cell's aux_element the KV type)."""
        return self._sku

    def precision(self) -> PrecisionGuarantee:
        return DECODE_PRECISION

    def dispatch_key(self, args: Optional[FlashDecodingArgs] = None) -> DispatchKey:
        """The key of this plan's cell and features. arch: the current device when
        there is one, else the newest architecture the library was compiled for.
        varlen and alibi come from ``args`` when given (they are device arrays)."""
        from .cuda import compute_capability, has_gpu

        arch = None
        if has_gpu():
            arch = SmArch.from_cc(*compute_capability())
        if arch is None:
            arch = highest_compiled_arch()
        if arch is None:
            raise CudaError("no GPU and the library names no known compiled architecture")
        d = self.desc
        return DispatchKey(arch=arch, dtype=d.kv, head_dim=self._sku.head_dim,
                           varlen=args is not None and args.seq_lens is not None,
                           sliding_window=None if d.window is None else int(d.window),
                           alibi=args is not None and args.alibi_slopes is not None,
                           sink=int(d.sink_tokens),
                           paged=d.paged, gqa_ratio=max(d.group_size(), 1))

    def launch_plan(self, args: Optional[FlashDecodingArgs] = None) -> dict:
        """How the library would launch this on the current device (needs a GPU):
        cell_index, num_splits, chunk_len, heads_per_cta, num_sms, device_cc,
        cluster_size, merge_kernel, ctas, warps_per_cta, ctas_per_sm, vectorized.
        Planned for ``args`` when given, else for contiguous q/y and k/v
        [B, H_kv, K, D] (NHD pools when paged) at 16-byte aligned addresses."""
        if args is not None:
            check_args(self.desc, args)
            p = self._params(args, Workspace.none(), 0)
        else:
            p = problem_params(self.desc, self.pref)
            b, h, hkv, k_len, d = self.desc.c_args()
            p.q_stride_b = p.y_stride_b = h * d
            p.q_stride_h = p.y_stride_h = d
            if self.desc.paged:
                ps = self.desc.page_size
                p.k_stride_page = p.v_stride_page = ps * hkv * d
                p.k_stride_k = p.v_stride_k = hkv * d
                p.k_stride_h = p.v_stride_h = d
            else:
                p.k_stride_b = p.v_stride_b = hkv * k_len * d
                p.k_stride_h = p.v_stride_h = k_len * d
                p.k_stride_k = p.v_stride_k = d
        out = _capi.FdLaunchPlan.new()
        _native.check(_native.lib().fd_decode_plan(ctypes.byref(p), ctypes.byref(out)))
        return {name: getattr(out, name) for name, _ in _capi.FdLaunchPlan._fields_
                if name != "struct_size"}

    # ------------------------------------------------------------------ params
    def _params(self, args: FlashDecodingArgs, workspace: Workspace,
                stream: int) -> _capi.FdDecodeParams:
        """The whole fd_decode_params of one call (args already checked)."""
        p = _capi.FdDecodeParams.from_buffer_copy(self._problem)
        q, k, v, y = args.q, args.k, args.v, args.y
        p.q, p.k, p.v, p.y = q.ptr or None, k.ptr or None, v.ptr or None, y.ptr or None
        p.workspace, p.workspace_bytes = workspace.ptr or None, workspace.nbytes
        p.q_stride_b, p.q_stride_h = q.stride[0], q.stride[1]
        p.y_stride_b, p.y_stride_h = y.stride[0], y.stride[1]
        if args.paged:
            assert isinstance(args, FlashDecodingPagedArgs)
            p.k_stride_page, p.k_stride_h, p.k_stride_k = args.kv_strides("k")
            p.v_stride_page, p.v_stride_h, p.v_stride_k = args.kv_strides("v")
            p.block_table = _capi.int32_ptr(args.block_table.ptr)
            p.block_table_stride_b = args.block_table.stride[0]
        else:
            p.k_stride_b, p.k_stride_h, p.k_stride_k = k.stride[0], k.stride[1], k.stride[2]
            p.v_stride_b, p.v_stride_h, p.v_stride_k = v.stride[0], v.stride[1], v.stride[2]
        if args.lse is not None:
            p.lse = _capi.float_ptr(args.lse.ptr)
            p.lse_stride_b, p.lse_stride_h = args.lse.stride[0], args.lse.stride[1]
        if args.seq_lens is not None:
            p.seq_lens = _capi.int32_ptr(args.seq_lens.ptr)
        for field, t in (("sinks", args.sink_logits), ("alibi_slopes", args.alibi_slopes),
                         ("k_scales", args.k_scales), ("v_scales", args.v_scales)):
            if t is not None:
                setattr(p, field, _capi.float_ptr(t.ptr))
        p.stream = stream or None
        return p

    def _raise_c(self, status: int, workspace: Workspace) -> None:
        if status == 0:
            return
        if status == WorkspaceTooSmall.status:
            raise _native.error_for(status, needed=self._workspace_bytes, got=workspace.nbytes)
        raise _native.error_for(status)

    # ------------------------------------------------------------------ checks
    def can_implement(self, args: FlashDecodingArgs,
                      workspace: Optional[Workspace] = None) -> None:
        """Returns None when ``run(stream, workspace, args)`` would launch; otherwise
        raises the error it would raise (InvalidProblem, Unsupported, InvalidPointer,
        WorkspaceTooSmall). Host-only: no GPU needed. Without ``workspace`` it assumes
        one of workspace_size() bytes."""
        check_args(self.desc, args)
        if workspace is None:
            workspace = (Workspace(_address_after(args), self._workspace_bytes)
                         if self._workspace_bytes else Workspace.none())
        workspace = Workspace.borrowed(workspace)
        status = _native.lib().fd_decode_check(ctypes.byref(self._params(args, workspace, 0)))
        self._raise_c(status, workspace)

    # ------------------------------------------------------------------ run
    def run(self, stream: Any, workspace: Optional[Workspace], args: FlashDecodingArgs) -> None:
        """Launches the decode on ``stream`` (None: the legacy default stream) with one
        ``fd_decode``, which checks the call once before it launches. Asynchronous;
        the arrays' producer streams are ordered before it. A refused call writes
        nothing."""
        from .cuda import stream_handle

        check_args(self.desc, args)
        self._launch(stream_handle(stream), workspace, args)

    def _launch(self, handle: int, workspace: Optional[Workspace],
                args: FlashDecodingArgs) -> None:
        """run() after Python's checks of ``args``: fd_decode on stream ``handle``."""
        workspace = Workspace.none() if workspace is None else Workspace.borrowed(workspace)
        params = self._params(args, workspace, handle)
        for _name, t in args.tensors():
            t.prepare(handle)
        self._raise_c(_c_decode(params), workspace)

    def __repr__(self) -> str:
        d = self.desc
        kv = "" if d.kv_element is None else f"/{d.kv.short_name}"
        paged = f", paged {d.page_size}x{d.max_pages}" if d.paged else ""
        return (f"FlashDecodingPlan(B={d.batch_size}, H_q={d.num_heads}, H_kv={d.num_kv_heads}, "
                f"K={d.k_len}, D={d.head_dim}, {d.element.short_name}{kv}{paged}, "
                f"cell={self._sku.name!r}, workspace={self._workspace_bytes} B)")
