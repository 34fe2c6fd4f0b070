"""FlashDecodingArgs, Workspace and FlashDecodingPlan: the descriptor / args / plan
triple over the C library. The rules are the library's: ``select``,
``can_implement`` and ``workspace_size`` ask its host-only functions (no GPU
needed) and raise its status as an exception with its message. Python adds only
what C cannot see: tensor shapes against the descriptor, array dtypes, and the
D axis stride."""
from __future__ import annotations

import ctypes
from typing import Any, Optional, Tuple

from . import _capi, _native
from .descriptor import FlashDecodingDescriptor, as_int64
from .dispatch_key import DispatchKey, DType, SmArch, highest_compiled_arch
from .errors import CudaError, InvalidProblem, Unsupported, WorkspaceTooSmall
from .kinds import (BackendKind, ElementKind, KernelSku, PlanPreference,
                    PrecisionGuarantee)
from .tensor import TensorMut, TensorRef, as_mut, as_ref


class FlashDecodingArgs:
    """The tensors of one call: q [B,H_q,D], k/v [B,H_kv,K,D] (TensorRef), y [B,H_q,D]
    (TensorMut). Arrays and addresses are wrapped as needed."""

    def __init__(self, q: Any, k: Any, v: Any, y: Any):
        self.q: TensorRef = as_ref(q)
        self.k: TensorRef = as_ref(k)
        self.v: TensorRef = as_ref(v)
        self.y: TensorMut = as_mut(y)

    def tensors(self):
        return (("q", self.q), ("k", self.k), ("v", self.v), ("y", self.y))


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
        ptr = getattr(buf, "ptr", None)
        size = getattr(buf, "nbytes", None)
        if isinstance(ptr, int) and isinstance(size, int):
            got = size if nbytes is None else min(int(nbytes), size)
            return cls(ptr, got, buf)
        t = TensorRef(buf)
        if t.stride != tuple(_c_strides(t.shape)):
            raise InvalidProblem("a workspace array must be contiguous")
        item = ElementKind.parse(t.dtype_name).itemsize if t.element else _itemsize(t.dtype_name)
        count = 1
        for n in t.shape:
            count *= n
        got = count * item if nbytes is None else min(int(nbytes), count * item)
        return cls(t.ptr, got, buf)

    def __repr__(self) -> str:
        return f"Workspace(ptr=0x{self.ptr:x}, nbytes={self.nbytes})"


def _itemsize(dtype_name: Optional[str]) -> int:
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


def _address_after(args: "FlashDecodingArgs") -> int:
    """A 256-aligned address past every tensor of ``args``: where can_implement
    pretends a workspace of the right size lives (host-only checks never touch it)."""
    end = 0
    for _name, t in args.tensors():
        span = 1
        for n, s in zip(t.shape, t.stride):
            span += max(n - 1, 0) * abs(s)
        end = max(end, t.ptr + 8 * span)
    return (end + 255) // 256 * 256


def _element_c(element: ElementKind) -> int:
    return int(element)


class FlashDecodingPlan:
    """A checked problem bound to the kernel cell that serves it."""

    def __init__(self, desc: FlashDecodingDescriptor, pref: PlanPreference, cell: KernelSku,
                 workspace_bytes: int, stream: Any):
        self.desc = desc
        self.pref = pref
        self._sku = cell
        self._workspace_bytes = workspace_bytes
        self.stream = stream

    # ------------------------------------------------------------------ select
    @classmethod
    def select(cls, stream: Any, desc: FlashDecodingDescriptor,
               pref: PlanPreference = PlanPreference.DEFAULT,
               element: Optional[ElementKind] = None) -> "FlashDecodingPlan":
        """Checks ``desc`` with the library (no GPU needed) and picks its cell.
        ``element`` given and different from ``desc.element`` -> Unsupported."""
        if not isinstance(desc, FlashDecodingDescriptor):
            raise TypeError(f"desc must be a FlashDecodingDescriptor, got {type(desc).__name__}")
        if not isinstance(pref, PlanPreference):
            raise TypeError(f"pref must be a PlanPreference, got {pref!r}")
        if element is not None and ElementKind.parse(element) is not desc.element:
            raise Unsupported(f"element {ElementKind.parse(element).short_name} was asked for but "
                              f"the descriptor is {desc.element.short_name}; a plan runs one "
                              "element type for q, k, v and y")
        lib = _native.lib()
        b, h, hkv, k_len, d = desc.c_args()
        params = cls._problem_params(desc, pref)
        _native.check(lib.fd_flash_decoding_check_problem(_element_c(desc.element), b, h, hkv,
                                                          k_len, d, desc.scale))
        needed = ctypes.c_size_t(0)
        _native.check(lib.fd_decode_workspace_size(ctypes.byref(params), ctypes.byref(needed)))
        index = ctypes.c_int32(-1)
        _native.check(lib.fd_kernel_cell_find(_element_c(desc.element), d, ctypes.byref(index)))
        cell = _capi.FdKernelCell()
        _native.check(lib.fd_kernel_cell_get(index.value, ctypes.byref(cell)))
        sku = KernelSku(index=index.value, element=ElementKind(cell.dtype), head_dim=cell.head_dim,
                        max_group_per_cta=cell.max_group_per_cta, name=cell.name.decode())
        return cls(desc, pref, sku, int(needed.value), stream)

    @staticmethod
    def _problem_params(desc: FlashDecodingDescriptor, pref: PlanPreference) -> _capi.FdDecodeParams:
        b, h, hkv, k_len, d = desc.c_args()
        p = _capi.FdDecodeParams.new()
        p.dtype = _element_c(desc.element)
        p.flags = pref.flags
        p.batch_size, p.num_heads, p.num_kv_heads, p.k_len, p.head_dim = b, h, hkv, k_len, d
        p.scale = desc.scale
        return p

    # ------------------------------------------------------------------ queries
    def workspace_size(self) -> int:
        """Bytes of workspace ``run`` needs (0: none), on any GPU."""
        return self._workspace_bytes

    def backend(self) -> BackendKind:
        return BackendKind.BESPOKE

    def sku(self) -> KernelSku:
        """The compiled kernel cell this plan runs."""
        return self._sku

    def precision(self) -> PrecisionGuarantee:
        return PrecisionGuarantee(math_precision=self.desc.element, accumulator=ElementKind.F32,
                                  bit_stable_on_same_hardware=True, deterministic=True)

    def dispatch_key(self) -> DispatchKey:
        """The key of this plan's cell. arch: the current device when there is one,
        else the newest architecture the library was compiled for."""
        from .cuda import compute_capability, has_gpu

        arch = None
        if has_gpu():
            arch = SmArch.from_cc(*compute_capability())
        if arch is None:
            arch = highest_compiled_arch()
        if arch is None:
            raise CudaError("no GPU and the library names no known compiled architecture")
        return DispatchKey(arch=arch, dtype=DType(int(self.desc.element)),
                           head_dim=self._sku.head_dim, gqa_ratio=max(self.desc.group_size(), 1))

    def launch_plan(self) -> dict:
        """How the library would launch this on the current device (needs a GPU):
        cell_index, num_splits, chunk_len, heads_per_cta, num_sms, device_cc.
        Planned for contiguous q/y [B, H_q, D] and k/v [B, H_kv, K, D]."""
        p = self._problem_params(self.desc, self.pref)
        b, h, hkv, k_len, d = self.desc.c_args()
        p.q_stride_b = p.y_stride_b = h * d
        p.q_stride_h = p.y_stride_h = d
        p.k_stride_b = p.v_stride_b = hkv * k_len * d
        p.k_stride_h = p.v_stride_h = k_len * d
        p.k_stride_k = p.v_stride_k = d
        out = _capi.FdLaunchPlan(struct_size=ctypes.sizeof(_capi.FdLaunchPlan))
        _native.check(_native.lib().fd_decode_plan(ctypes.byref(p), ctypes.byref(out)))
        return {name: getattr(out, name) for name, _ in _capi.FdLaunchPlan._fields_
                if name != "struct_size"}

    # ------------------------------------------------------------------ checks
    def _python_checks(self, args: FlashDecodingArgs) -> None:
        d = self.desc
        expected = {"q": d.q_shape(), "k": d.kv_shape(), "v": d.kv_shape(), "y": d.y_shape()}
        for name, t in args.tensors():
            if t.dtype_name is not None:
                if t.element not in (ElementKind.F16, ElementKind.BF16):
                    raise Unsupported(f"{name} has dtype {t.dtype_name}; q, k, v and y must be "
                                      "float16 or bfloat16")
                if t.element is not d.element:
                    raise InvalidProblem(f"{name} has dtype {t.dtype_name} but the descriptor's "
                                         f"element is {d.element.short_name}")
            if t.shape != expected[name]:
                raise InvalidProblem(f"{name}: expected shape {expected[name]}, got {t.shape}")
            if len(t.stride) != len(t.shape):
                raise InvalidProblem(f"{name}: {len(t.stride)} strides for {len(t.shape)} axes")
            if d.head_dim > 1 and t.stride[-1] != 1:
                raise InvalidProblem(f"{name}: the D axis stride must be 1 (contiguous), "
                                     f"got {t.stride[-1]}")
            for s in t.stride:
                as_int64(f"{name} stride", s)

    def _c_arguments(self, args: FlashDecodingArgs, workspace: Workspace) -> Tuple:
        b, h, hkv, k_len, d = self.desc.c_args()
        q, k, v, y = args.q, args.k, args.v, args.y
        return (q.ptr or None, k.ptr or None, v.ptr or None, y.ptr or None,
                workspace.ptr or None, workspace.nbytes, b, h, hkv, k_len, d,
                q.stride[0], q.stride[1], k.stride[0], k.stride[1], k.stride[2],
                v.stride[0], v.stride[1], v.stride[2], y.stride[0], y.stride[1], self.desc.scale)

    def _params(self, args: FlashDecodingArgs, workspace: Workspace, stream: int):
        c = self._c_arguments(args, workspace)
        p = self._problem_params(self.desc, self.pref)
        p.q, p.k, p.v, p.y, p.workspace, p.workspace_bytes = c[0:6]
        (p.q_stride_b, p.q_stride_h, p.k_stride_b, p.k_stride_h, p.k_stride_k, p.v_stride_b,
         p.v_stride_h, p.v_stride_k, p.y_stride_b, p.y_stride_h) = c[11:21]
        p.stream = stream or None
        return p

    def _raise_c(self, status: int, workspace: Workspace) -> None:
        if status == 0:
            return
        if status == WorkspaceTooSmall.status:
            raise _native.error_for(status, needed=self._workspace_bytes, got=workspace.nbytes)
        raise _native.error_for(status)

    def can_implement(self, args: FlashDecodingArgs,
                      workspace: Optional[Workspace] = None) -> bool:
        """True when ``run(stream, workspace, args)`` would launch; otherwise raises
        the error it would raise (InvalidProblem, Unsupported, InvalidPointer,
        WorkspaceTooSmall). Host-only: no GPU needed. Without ``workspace`` it assumes
        one of workspace_size() bytes."""
        if not isinstance(args, FlashDecodingArgs):
            raise TypeError("args must be FlashDecodingArgs")
        self._python_checks(args)
        if workspace is None:
            workspace = (Workspace(_address_after(args), self._workspace_bytes)
                         if self._workspace_bytes else Workspace.none())
        workspace = Workspace.borrowed(workspace)
        lib = _native.lib()
        if self.pref.flags:
            status = lib.fd_decode_check(ctypes.byref(self._params(args, workspace, 0)))
        else:
            status = lib.fd_flash_decoding_check(_element_c(self.desc.element),
                                                 *self._c_arguments(args, workspace))
        self._raise_c(status, workspace)
        return True

    # ------------------------------------------------------------------ run
    def run(self, stream: Any, workspace: Optional[Workspace], args: FlashDecodingArgs) -> None:
        """Launches the decode on ``stream`` (None: the legacy default stream).
        Asynchronous; the arrays' producer streams are ordered before it."""
        from .cuda import stream_handle

        if not isinstance(args, FlashDecodingArgs):
            raise TypeError("args must be FlashDecodingArgs")
        workspace = Workspace.none() if workspace is None else Workspace.borrowed(workspace)
        self._python_checks(args)
        handle = stream_handle(stream)
        for _name, t in args.tensors():
            t.prepare(handle)
        lib = _native.lib()
        if self.pref.flags:
            status = lib.fd_decode(ctypes.byref(self._params(args, workspace, handle)))
        else:
            fn = (lib.fd_flash_decoding_f16_run if self.desc.element is ElementKind.F16
                  else lib.fd_flash_decoding_bf16_run)
            if self.desc.element not in (ElementKind.F16, ElementKind.BF16):
                status = lib.fd_flash_decoding_check(_element_c(self.desc.element),
                                                     *self._c_arguments(args, workspace))
                self._raise_c(status, workspace)
                raise Unsupported(f"element {self.desc.element.short_name} is not run")
            status = fn(*self._c_arguments(args, workspace), handle or None)
        self._raise_c(status, workspace)

    def __repr__(self) -> str:
        d = self.desc
        return (f"FlashDecodingPlan(B={d.batch_size}, H_q={d.num_heads}, H_kv={d.num_kv_heads}, "
                f"K={d.k_len}, D={d.head_dim}, {d.element.short_name}, cell={self._sku.name!r}, "
                f"workspace={self._workspace_bytes} B)")
