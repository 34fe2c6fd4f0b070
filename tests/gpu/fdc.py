"""Minimal ctypes view of libflashdecoding for the device-side grid check.

Deliberately independent of the `flashdecoding` package so the C ABI is checked
on its own; the package's tests cover the Python layer."""
import ctypes as C
import os

_lib = C.CDLL(os.environ.get("FLASHDECODING_LIBRARY", "build/libflashdecoding.so"))
_lib.fd_last_error_message.restype = C.c_char_p
_lib.fd_flash_decoding_workspace_size.restype = C.c_size_t
_lib.fd_flash_decoding_workspace_size.argtypes = [C.c_int32] * 5
_RUN_ARGS = ([C.c_void_p] * 5 + [C.c_size_t] + [C.c_int32] * 5 + [C.c_int64] * 10
             + [C.c_float, C.c_void_p])
for _name in ("fd_flash_decoding_f16_run", "fd_flash_decoding_bf16_run"):
    getattr(_lib, _name).argtypes = _RUN_ARGS


def workspace_size(B, Hq, Hkv, K, D):
    return _lib.fd_flash_decoding_workspace_size(B, Hq, Hkv, K, D)


def run(q, k, v, y, ws, ws_bytes, scale, stream=0):
    """q [B,Hq,D], k/v [B,Hkv,K,D], y [B,Hq,D] torch tensors (any strides, D contiguous)."""
    import torch
    B, Hq, D = q.shape
    Hkv, K = k.shape[1], k.shape[2]
    fn = {torch.float16: _lib.fd_flash_decoding_f16_run,
          torch.bfloat16: _lib.fd_flash_decoding_bf16_run}[q.dtype]
    st = fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(), ws, ws_bytes,
            B, Hq, Hkv, K, D, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), y.stride(0), y.stride(1), scale, stream)
    return st, _lib.fd_last_error_message().decode()
