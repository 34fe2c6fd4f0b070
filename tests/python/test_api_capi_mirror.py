"""The ctypes mirror cannot drift from the header: every struct of
flashdecoding.h is parsed (field names, order, types) and compared with _capi's,
and every FD_API function is bound with the header's argument and return types
and carries its C declaration in a comment above the binding."""
from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from flashdecoding import _capi, _native

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "native" / "include" / "flashdecoding" / "flashdecoding.h"
CAPI_SOURCE = Path(_capi.__file__).read_text()

STRUCTS = {"fd_decode_params": _capi.FdDecodeParams, "fd_merge_params": _capi.FdMergeParams,
           "fd_kernel_cell": _capi.FdKernelCell, "fd_kernel_cell_info": _capi.FdKernelCellInfo,
           "fd_launch_plan": _capi.FdLaunchPlan}

SCALARS = {"size_t": ctypes.c_size_t, "int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32,
           "int64_t": ctypes.c_int64, "float": ctypes.c_float, "int": ctypes.c_int}
POINTEES = {"float": ctypes.c_float, "int32_t": ctypes.c_int32}


def header_text() -> str:
    if not HEADER.exists():
        pytest.skip("not run from a source tree")
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def parse_decl(decl: str):
    """'const float* lse' -> ('float', True, 'lse'); 'int64_t a, b' -> two entries."""
    decl = " ".join(decl.replace("*", " * ").split())
    m = re.match(r"^((?:const\s+)?[A-Za-z_][A-Za-z0-9_]*)\s*(.*)$", decl)
    assert m, decl
    base = m.group(1).replace("const", "").strip()
    out = []
    for part in m.group(2).split(","):
        part = part.strip()
        pointer = part.count("*") > 0
        name = part.replace("*", "").replace("const", "").strip()
        out.append((base, pointer, name))
    return out


def header_structs():
    text = header_text()
    found = {}
    for m in re.finditer(r"typedef\s+struct\s+(\w+)\s*\{(.*?)\}\s*(\w+)\s*;", text, re.S):
        assert m.group(1) == m.group(3)
        fields = []
        for decl in m.group(2).split(";"):
            if decl.strip():
                fields.extend(parse_decl(decl))
        found[m.group(1)] = fields
    return found


def header_functions():
    text = header_text()
    out = {}
    for m in re.finditer(r"^FD_API\s+([^;(\n]*?)\b(fd_\w+)\s*\(([^)]*)\)\s*;", text, re.M):
        ret, name, params = m.group(1), m.group(2), " ".join(m.group(3).split())
        ret_decl = parse_decl(ret.strip() + " r")[0]
        args = [] if params in ("void", "") else [parse_decl(p)[0] for p in params.split(",")]
        out[name] = (ret_decl, args)
    return out


def matches(ctype, base: str, pointer: bool) -> bool:
    if pointer:
        if base == "char":
            return ctype is ctypes.c_char_p
        if base == "void":
            return ctype is ctypes.c_void_p
        if issubclass(ctype, ctypes._Pointer):
            return ctype._type_ is POINTEES.get(base, SCALARS.get(base)) or \
                ctype._type_.__name__ == STRUCTS.get(base, type(None)).__name__
        return False
    return ctype is SCALARS[base]


def test_the_header_has_the_structs_we_mirror():
    assert set(header_structs()) == set(STRUCTS)


@pytest.mark.parametrize("c_name", sorted(STRUCTS))
def test_struct_fields_names_order_and_types_match_the_header(c_name):
    fields = header_structs()[c_name]
    mirror = STRUCTS[c_name]._fields_
    assert [n for _b, _p, n in fields] == [n for n, _t in mirror], c_name
    for (base, pointer, name), (_n, ctype) in zip(fields, mirror):
        assert matches(ctype, base, pointer), f"{c_name}.{name}: {base}{'*' if pointer else ''} " \
                                              f"mirrored as {ctype.__name__}"


def test_sizes_are_the_ones_the_library_accepts(lib):
    # fd_merge_states_check insists on exactly sizeof(fd_merge_params) (or a zero tail)
    p = _capi.FdMergeParams.new()
    assert lib.fd_merge_states_check(ctypes.byref(p)) != 0
    assert "struct_size" not in _native.last_error_message()
    p.struct_size -= 8
    assert lib.fd_merge_states_check(ctypes.byref(p)) == 1
    assert "struct_size" in _native.last_error_message()
    # the decode params: a bigger struct with a non-zero byte past ours is refused
    size = ctypes.sizeof(_capi.FdDecodeParams)
    buf = (ctypes.c_ubyte * (size + 8))()
    q = _capi.FdDecodeParams.from_buffer(buf)
    q.struct_size = size + 8
    buf[size] = 1
    assert lib.fd_decode_check(ctypes.byref(q)) == 2
    assert "does not know that field" in _native.last_error_message()
    buf[size] = 0
    lib.fd_decode_check(ctypes.byref(q))  # a zero problem: refused, but not for its size
    assert "does not know" not in _native.last_error_message()


def test_every_c_function_is_bound_with_the_header_types(lib):
    functions = header_functions()
    assert len(functions) >= 20
    for name, ((rbase, rptr, _r), args) in functions.items():
        f = getattr(lib, name)
        assert f.argtypes is not None, f"{name} is not bound"
        assert len(f.argtypes) == len(args), f"{name}: {len(f.argtypes)} argtypes, header {len(args)}"
        for (base, pointer, arg), ctype in zip(args, f.argtypes):
            assert matches(ctype, base, pointer), f"{name}({arg}): {ctype.__name__}"
        assert matches(f.restype, rbase, rptr), f"{name} returns {f.restype}"


def test_every_binding_has_its_c_declaration_above_it():
    for name in header_functions():
        m = re.search(rf"# FD_API [^\n]*\b{name}\(.*?\n(.*?)fn\(\"(\w+)\"", CAPI_SOURCE, re.S)
        assert m, f"no '# FD_API ... {name}(' comment in _capi.py"
        assert m.group(2) == name, f"the comment for {name} is above fn({m.group(2)!r})"


def test_every_struct_names_its_c_type():
    for c_name, cls in STRUCTS.items():
        assert f"struct {c_name}" in (cls.__doc__ or ""), cls.__name__
