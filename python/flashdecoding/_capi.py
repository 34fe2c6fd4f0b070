"""ctypes declarations of libflashdecoding's C ABI.

Each binding is preceded by its declaration in
native/include/flashdecoding/flashdecoding.h; keep the two in step.
Structures mirror the header field for field, in order.
"""
from __future__ import annotations

import ctypes
from ctypes import (POINTER, Structure, c_char_p, c_float, c_int, c_int32, c_int64,
                    c_size_t, c_uint32, c_void_p)

# typedef enum fd_dtype { F16 = 1, BF16 = 2, F32 = 3, F64 = 4, FP8_E4M3 = 5, FP8_E5M2 = 6 }
FD_DTYPE_F16 = 1
FD_DTYPE_BF16 = 2
FD_DTYPE_F32 = 3
FD_DTYPE_F64 = 4
FD_DTYPE_FP8_E4M3 = 5
FD_DTYPE_FP8_E5M2 = 6

# #define FD_FLAG_BATCH_INVARIANT 0x1u
FD_FLAG_BATCH_INVARIANT = 0x1


class FdDecodeParams(Structure):
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
    ]

    @classmethod
    def new(cls) -> "FdDecodeParams":
        """All extensions off (zeros), struct_size = sizeof."""
        p = cls()
        p.struct_size = ctypes.sizeof(cls)
        return p


class FdKernelCell(Structure):
    """typedef struct fd_kernel_cell { int32_t dtype; int32_t head_dim;
    int32_t max_group_per_cta; const char* name; } fd_kernel_cell;"""

    _fields_ = [
        ("dtype", c_int32),
        ("head_dim", c_int32),
        ("max_group_per_cta", c_int32),
        ("name", c_char_p),
    ]


class FdLaunchPlan(Structure):
    """typedef struct fd_launch_plan { size_t struct_size; int32_t cell_index; int32_t num_splits;
    int32_t chunk_len; int32_t heads_per_cta; int32_t num_sms; int32_t device_cc;
    int32_t cluster_size; int32_t merge_kernel; }"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("cell_index", c_int32),
        ("num_splits", c_int32),
        ("chunk_len", c_int32),
        ("heads_per_cta", c_int32),
        ("num_sms", c_int32),
        ("device_cc", c_int32),
        ("cluster_size", c_int32),
        ("merge_kernel", c_int32),
    ]


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

    # FD_API int32_t fd_kernel_cell_count(void);
    fn("fd_kernel_cell_count", c_int32, [])

    # FD_API int fd_kernel_cell_get(int32_t index, fd_kernel_cell* cell);
    fn("fd_kernel_cell_get", c_int, [_I32, POINTER(FdKernelCell)])

    # FD_API int fd_kernel_cell_find(int32_t dtype, int32_t head_dim, int32_t* index);
    fn("fd_kernel_cell_find", c_int, [_I32, _I32, POINTER(c_int32)])

    # FD_API const char* fd_compiled_architectures(void);
    fn("fd_compiled_architectures", c_char_p, [])

    # FD_API int fd_decode_plan(const fd_decode_params* params, fd_launch_plan* plan);
    fn("fd_decode_plan", c_int, [POINTER(FdDecodeParams), POINTER(FdLaunchPlan)])

    return lib
