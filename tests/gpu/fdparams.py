"""ctypes view of libflashdecoding's size-versioned structs for the device-side
checks (grid, sanitizer driver, build comparison).

Deliberately independent of the `flashdecoding` package: the C ABI is checked on
its own here, the package's tests cover the Python layer. Fields mirror
native/include/flashdecoding/flashdecoding.h in order."""
import ctypes as C
import os

F16, BF16, F32, FP8_E4M3, FP8_E5M2 = 1, 2, 3, 5, 6
FLAG_BATCH_INVARIANT = 0x1

lib = C.CDLL(os.environ.get("FLASHDECODING_LIBRARY", "build/libflashdecoding.so"))
lib.fd_last_error_message.restype = C.c_char_p

_P = C.c_void_p
_I32, _I64, _F = C.c_int32, C.c_int64, C.c_float


class DecodeParams(C.Structure):
    _fields_ = [
        ("struct_size", C.c_size_t), ("dtype", _I32), ("flags", C.c_uint32),
        ("q", _P), ("k", _P), ("v", _P), ("y", _P), ("workspace", _P),
        ("workspace_bytes", C.c_size_t),
        ("batch_size", _I32), ("num_heads", _I32), ("num_kv_heads", _I32), ("k_len", _I32),
        ("head_dim", _I32), ("scale", _F),
        ("q_stride_b", _I64), ("q_stride_h", _I64),
        ("k_stride_b", _I64), ("k_stride_h", _I64), ("k_stride_k", _I64),
        ("v_stride_b", _I64), ("v_stride_h", _I64), ("v_stride_k", _I64),
        ("y_stride_b", _I64), ("y_stride_h", _I64),
        ("stream", _P),
        ("lse", _P), ("lse_stride_b", _I64), ("lse_stride_h", _I64),
        ("seq_lens", _P),
        ("block_table", _P), ("block_table_stride_b", _I64), ("page_size", _I32),
        ("window_size", _I32),
        ("sinks", _P), ("alibi_slopes", _P), ("logits_soft_cap", _F),
        ("kv_dtype", _I32), ("k_scale", _F), ("v_scale", _F),
        ("k_stride_page", _I64), ("v_stride_page", _I64), ("max_pages", _I32),
        ("num_pages", _I32),
        ("k_scales", _P), ("v_scales", _P),
        ("sink_tokens", _I32),
    ]


class MergeParams(C.Structure):
    _fields_ = [
        ("struct_size", C.c_size_t), ("dtype", _I32), ("num_states", _I32),
        ("batch_size", _I32), ("num_heads", _I32), ("head_dim", _I32), ("reserved", _I32),
        ("states", _P), ("state_stride_n", _I64), ("state_stride_b", _I64),
        ("state_stride_h", _I64),
        ("lse", _P), ("lse_stride_n", _I64), ("lse_stride_b", _I64), ("lse_stride_h", _I64),
        ("y", _P), ("y_stride_b", _I64), ("y_stride_h", _I64),
        ("lse_out", _P), ("lse_out_stride_b", _I64), ("lse_out_stride_h", _I64),
        ("stream", _P),
    ]


class LaunchPlan(C.Structure):
    _fields_ = [
        ("struct_size", C.c_size_t), ("cell_index", _I32), ("num_splits", _I32),
        ("chunk_len", _I32), ("heads_per_cta", _I32), ("num_sms", _I32), ("device_cc", _I32),
        ("cluster_size", _I32), ("merge_kernel", _I32), ("ctas", _I32), ("warps_per_cta", _I32),
        ("ctas_per_sm", _I32), ("vectorized", _I32),
    ]


for _name in ("fd_decode", "fd_decode_check"):
    getattr(lib, _name).argtypes = [C.POINTER(DecodeParams)]
lib.fd_decode_workspace_size.argtypes = [C.POINTER(DecodeParams), C.POINTER(C.c_size_t)]
lib.fd_decode_plan.argtypes = [C.POINTER(DecodeParams), C.POINTER(LaunchPlan)]
# Newer functions are bound where the library has them (an older build is
# compared against this one by tests/gpu/compare_builds.py).
HAS_MERGE_STATES = hasattr(lib, "fd_merge_states")
if HAS_MERGE_STATES:
    lib.fd_merge_states.argtypes = [C.POINTER(MergeParams)]
    lib.fd_merge_states_check.argtypes = [C.POINTER(MergeParams)]


def new_params(**fields):
    p = DecodeParams()
    p.struct_size = C.sizeof(DecodeParams)
    for k, v in fields.items():
        setattr(p, k, v)
    return p


def last_error():
    return lib.fd_last_error_message().decode()


def workspace_size(p):
    n = C.c_size_t(0)
    st = lib.fd_decode_workspace_size(C.byref(p), C.byref(n))
    return st, n.value


def decode(p):
    """Runs fd_decode; (status, message)."""
    st = lib.fd_decode(C.byref(p))
    return st, last_error()


def plan(p):
    out = LaunchPlan()
    out.struct_size = C.sizeof(LaunchPlan)
    st = lib.fd_decode_plan(C.byref(p), C.byref(out))
    return st, out


def merge(p):
    st = lib.fd_merge_states(C.byref(p))
    return st, last_error()
