"""ctypes declarations of libflashdecoding's C ABI.

Each binding is preceded by its declaration in
native/include/flashdecoding/flashdecoding.h; keep the two in step.
Structures mirror the header field for field, in order
(tests/python/test_api_capi_mirror.py parses the header and compares).
"""
from __future__ import annotations

import ctypes
from ctypes import (POINTER, Structure, c_char_p, c_float, c_int, c_int32, c_int64,
                    c_size_t, c_uint32, c_void_p)
from typing import Optional

# typedef enum fd_dtype { F16 = 1, BF16 = 2, F32 = 3, F64 = 4, FP8_E4M3 = 5, FP8_E5M2 = 6 }
FD_DTYPE_F16 = 1
FD_DTYPE_BF16 = 2
FD_DTYPE_F32 = 3
FD_DTYPE_F64 = 4
FD_DTYPE_FP8_E4M3 = 5
FD_DTYPE_FP8_E5M2 = 6

# #define FD_FLAG_BATCH_INVARIANT 0x1u
FD_FLAG_BATCH_INVARIANT = 0x1

# #define FD_MAX_PAGE_SIZE 256
FD_MAX_PAGE_SIZE = 256


class _Sized(Structure):
    """A size-versioned struct: ``struct_size`` first, everything else zero = off."""

    @classmethod
    def new(cls):
        """All fields zero, struct_size = sizeof."""
        s = cls()
        s.struct_size = ctypes.sizeof(cls)
        return s


class FdDecodeParams(_Sized):
    """typedef struct fd_decode_params { ... } fd_decode_params;  (append-only)"""

    _fields_ = [
        ("struct_size", c_size_t),          # size_t struct_size;
        ("dtype", c_int32),                 # int32_t dtype;
        ("flags", c_uint32),                # uint32_t flags;
        ("q", c_void_p),                    # const void* q;
        ("k", c_void_p),                    # const void* k;
        ("v", c_void_p),                    # const void* v;
        ("y", c_void_p),                    # void* y;
        ("workspace", c_void_p),            # void* workspace;
        ("workspace_bytes", c_size_t),      # size_t workspace_bytes;
        ("batch_size", c_int32),            # int32_t batch_size;
        ("num_heads", c_int32),             # int32_t num_heads;
        ("num_kv_heads", c_int32),          # int32_t num_kv_heads;
        ("k_len", c_int32),                 # int32_t k_len;
        ("head_dim", c_int32),              # int32_t head_dim;
        ("scale", c_float),                 # float scale;
        ("q_stride_b", c_int64),            # int64_t q_stride_b, q_stride_h;
        ("q_stride_h", c_int64),
        ("k_stride_b", c_int64),            # int64_t k_stride_b, k_stride_h, k_stride_k;
        ("k_stride_h", c_int64),
        ("k_stride_k", c_int64),
        ("v_stride_b", c_int64),            # int64_t v_stride_b, v_stride_h, v_stride_k;
        ("v_stride_h", c_int64),
        ("v_stride_k", c_int64),
        ("y_stride_b", c_int64),            # int64_t y_stride_b, y_stride_h;
        ("y_stride_h", c_int64),
        ("stream", c_void_p),               # void* stream;
        ("lse", POINTER(c_float)),          # float* lse;
        ("lse_stride_b", c_int64),          # int64_t lse_stride_b, lse_stride_h;
        ("lse_stride_h", c_int64),
        ("seq_lens", POINTER(c_int32)),     # const int32_t* seq_lens;
        ("block_table", POINTER(c_int32)),  # const int32_t* block_table;
        ("block_table_stride_b", c_int64),  # int64_t block_table_stride_b;
        ("page_size", c_int32),             # int32_t page_size;
        ("window_size", c_int32),           # int32_t window_size;
        ("sinks", POINTER(c_float)),        # const float* sinks;
        ("alibi_slopes", POINTER(c_float)), # const float* alibi_slopes;
        ("logits_soft_cap", c_float),       # float logits_soft_cap;
        ("kv_dtype", c_int32),              # int32_t kv_dtype;
        ("k_scale", c_float),               # float k_scale;
        ("v_scale", c_float),               # float v_scale;
        # ---- appended in 0.2 ----
        ("k_stride_page", c_int64),         # int64_t k_stride_page;
        ("v_stride_page", c_int64),         # int64_t v_stride_page;
        ("max_pages", c_int32),             # int32_t max_pages;
        ("num_pages", c_int32),             # int32_t num_pages;
        ("k_scales", POINTER(c_float)),     # const float* k_scales;
        ("v_scales", POINTER(c_float)),     # const float* v_scales;
        ("sink_tokens", c_int32),           # int32_t sink_tokens;
    ]


class FdMergeParams(_Sized):
    """typedef struct fd_merge_params { ... } fd_merge_params;"""

    _fields_ = [
        ("struct_size", c_size_t),          # size_t struct_size;
        ("dtype", c_int32),                 # int32_t dtype;
        ("num_states", c_int32),            # int32_t num_states;
        ("batch_size", c_int32),            # int32_t batch_size;
        ("num_heads", c_int32),             # int32_t num_heads;
        ("head_dim", c_int32),              # int32_t head_dim;
        ("reserved", c_int32),              # int32_t reserved;
        ("states", c_void_p),               # const void* states;
        ("state_stride_n", c_int64),        # int64_t state_stride_n, state_stride_b, state_stride_h;
        ("state_stride_b", c_int64),
        ("state_stride_h", c_int64),
        ("lse", POINTER(c_float)),          # const float* lse;
        ("lse_stride_n", c_int64),          # int64_t lse_stride_n, lse_stride_b, lse_stride_h;
        ("lse_stride_b", c_int64),
        ("lse_stride_h", c_int64),
        ("y", c_void_p),                    # void* y;
        ("y_stride_b", c_int64),            # int64_t y_stride_b, y_stride_h;
        ("y_stride_h", c_int64),
        ("lse_out", POINTER(c_float)),      # float* lse_out;
        ("lse_out_stride_b", c_int64),      # int64_t lse_out_stride_b, lse_out_stride_h;
        ("lse_out_stride_h", c_int64),
        ("stream", c_void_p),               # void* stream;
    ]


class FdKernelCell(Structure):
    """typedef struct fd_kernel_cell { ... } fd_kernel_cell;"""

    _fields_ = [
        ("dtype", c_int32),                 # int32_t dtype;
        ("head_dim", c_int32),              # int32_t head_dim;
        ("max_group_per_cta", c_int32),     # int32_t max_group_per_cta;
        ("name", c_char_p),                 # const char* name;
    ]


class FdKernelCellInfo(_Sized):
    """typedef struct fd_kernel_cell_info { ... } fd_kernel_cell_info;  (append-only)"""

    _fields_ = [
        ("struct_size", c_size_t),          # size_t struct_size;
        ("q_dtype", c_int32),               # int32_t q_dtype;
        ("kv_dtype", c_int32),              # int32_t kv_dtype;
        ("head_dim", c_int32),              # int32_t head_dim;
        ("paged", c_int32),                 # int32_t paged;
        ("max_group_per_cta", c_int32),     # int32_t max_group_per_cta;
        ("min_compute_capability", c_int32),  # int32_t min_compute_capability;
        ("name", c_char_p),                 # const char* name;
    ]


class FdLaunchPlan(_Sized):
    """typedef struct fd_launch_plan { ... } fd_launch_plan;  (append-only)"""

    _fields_ = [
        ("struct_size", c_size_t),          # size_t struct_size;
        ("cell_index", c_int32),            # int32_t cell_index;
        ("num_splits", c_int32),            # int32_t num_splits;
        ("chunk_len", c_int32),             # int32_t chunk_len;
        ("heads_per_cta", c_int32),         # int32_t heads_per_cta;
        ("num_sms", c_int32),               # int32_t num_sms;
        ("device_cc", c_int32),             # int32_t device_cc;
        ("cluster_size", c_int32),          # int32_t cluster_size;
        ("merge_kernel", c_int32),          # int32_t merge_kernel;
        ("ctas", c_int32),                  # int32_t ctas;
        ("warps_per_cta", c_int32),         # int32_t warps_per_cta;
        ("ctas_per_sm", c_int32),           # int32_t ctas_per_sm;
        ("vectorized", c_int32),            # int32_t vectorized;
    ]


def float_ptr(address: Optional[int]):
    """A ``float*`` field value for a device address (None or 0: NULL)."""
    return ctypes.cast(c_void_p(address), POINTER(c_float)) if address else None


def int32_ptr(address: Optional[int]):
    """An ``int32_t*`` field value for a device address (None or 0: NULL)."""
    return ctypes.cast(c_void_p(address), POINTER(c_int32)) if address else None


def address_of(field) -> int:
    """The address a pointer field holds (0 for NULL)."""
    if field is None:
        return 0
    if isinstance(field, int):
        return field
    return ctypes.cast(field, c_void_p).value or 0


_I32 = c_int32
_I64 = c_int64

# The argument list shared by fd_flash_decoding_{f16,bf16}_run after the pointers.
_RUN_TAIL = [
    _I32, _I32, _I32, _I32, _I32,        # batch_size, num_heads, num_kv_heads, k_len, head_dim
    _I64, _I64,                          # q_stride_b, q_stride_h
    _I64, _I64, _I64,                    # k_stride_b, k_stride_h, k_stride_k
    _I64, _I64, _I64,                    # v_stride_b, v_stride_h, v_stride_k
    _I64, _I64,                          # y_stride_b, y_stride_h
    c_float,                             # scale
]


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Sets argtypes/restype of every C function on ``lib``; raises AttributeError
    naming the first missing symbol."""

    def fn(name, restype, argtypes):
        f = getattr(lib, name)
        f.restype = restype
        f.argtypes = argtypes

    # FD_API int fd_get_version(void);
    fn("fd_get_version", c_int, [])

    # FD_API const char* fd_status_string(int status);
    fn("fd_status_string", c_char_p, [c_int])

    # FD_API const char* fd_last_error_message(void);
    fn("fd_last_error_message", c_char_p, [])

    # FD_API size_t fd_flash_decoding_workspace_size(int32_t batch_size, int32_t num_heads,
    #     int32_t num_kv_heads, int32_t k_len, int32_t head_dim);
    fn("fd_flash_decoding_workspace_size", c_size_t, [_I32, _I32, _I32, _I32, _I32])

    # FD_API int fd_flash_decoding_check_problem(int32_t dtype, int32_t batch_size,
    #     int32_t num_heads, int32_t num_kv_heads, int32_t k_len, int32_t head_dim, float scale);
    fn("fd_flash_decoding_check_problem", c_int, [_I32, _I32, _I32, _I32, _I32, _I32, c_float])

    # FD_API int fd_flash_decoding_check(int32_t dtype, const void* q, const void* k,
    #     const void* v, const void* y, const void* workspace, size_t workspace_bytes,
    #     int32_t batch_size, int32_t num_heads, int32_t num_kv_heads, int32_t k_len,
    #     int32_t head_dim, int64_t q_stride_b, int64_t q_stride_h,
    #     int64_t k_stride_b, int64_t k_stride_h, int64_t k_stride_k,
    #     int64_t v_stride_b, int64_t v_stride_h, int64_t v_stride_k,
    #     int64_t y_stride_b, int64_t y_stride_h, float scale);
    fn("fd_flash_decoding_check", c_int,
       [_I32, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_size_t] + _RUN_TAIL)

    # FD_API int fd_flash_decoding_f16_run(const void* q, const void* k, const void* v,
    #     void* y, void* workspace, size_t workspace_bytes,
    #     int32_t batch_size, int32_t num_heads, int32_t num_kv_heads, int32_t k_len,
    #     int32_t head_dim, int64_t q_stride_b, int64_t q_stride_h,
    #     int64_t k_stride_b, int64_t k_stride_h, int64_t k_stride_k,
    #     int64_t v_stride_b, int64_t v_stride_h, int64_t v_stride_k,
    #     int64_t y_stride_b, int64_t y_stride_h, float scale, void* stream);
    fn("fd_flash_decoding_f16_run", c_int,
       [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_size_t] + _RUN_TAIL + [c_void_p])

    # FD_API int fd_flash_decoding_bf16_run(/* the same arguments as the f16 run */);
    fn("fd_flash_decoding_bf16_run", c_int,
       [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_size_t] + _RUN_TAIL + [c_void_p])

    # FD_API int fd_decode_workspace_size(const fd_decode_params* params, size_t* bytes);
    fn("fd_decode_workspace_size", c_int, [POINTER(FdDecodeParams), POINTER(c_size_t)])

    # FD_API int fd_decode_check(const fd_decode_params* params);
    fn("fd_decode_check", c_int, [POINTER(FdDecodeParams)])

    # FD_API int fd_decode(const fd_decode_params* params);
    fn("fd_decode", c_int, [POINTER(FdDecodeParams)])

    # FD_API int fd_merge_states_check(const fd_merge_params* params);
    fn("fd_merge_states_check", c_int, [POINTER(FdMergeParams)])

    # FD_API int fd_merge_states(const fd_merge_params* params);
    fn("fd_merge_states", c_int, [POINTER(FdMergeParams)])

    # FD_API int32_t fd_kernel_cell_count(void);
    fn("fd_kernel_cell_count", c_int32, [])

    # FD_API int fd_kernel_cell_get(int32_t index, fd_kernel_cell* cell);
    fn("fd_kernel_cell_get", c_int, [_I32, POINTER(FdKernelCell)])

    # FD_API int fd_kernel_cell_find(int32_t dtype, int32_t head_dim, int32_t* index);
    fn("fd_kernel_cell_find", c_int, [_I32, _I32, POINTER(c_int32)])

    # FD_API int fd_kernel_cell_info_get(int32_t index, fd_kernel_cell_info* info);
    fn("fd_kernel_cell_info_get", c_int, [_I32, POINTER(FdKernelCellInfo)])

    # FD_API int fd_decode_cell(const fd_decode_params* params, int32_t* index);
    fn("fd_decode_cell", c_int, [POINTER(FdDecodeParams), POINTER(c_int32)])

    # FD_API const char* fd_compiled_architectures(void);
    fn("fd_compiled_architectures", c_char_p, [])

    # FD_API int fd_decode_plan(const fd_decode_params* params, fd_launch_plan* plan);
    fn("fd_decode_plan", c_int, [POINTER(FdDecodeParams), POINTER(FdLaunchPlan)])

    return lib
