"""The fuzzer's seed corpus matches the layout its harness decodes.

tests/fuzz/make_corpus.py writes the seeds; tests/fuzz/fuzz_host.cpp's decode()
reads them field by field. When the two disagree, every seed decodes as
garbage and the fuzzer starts from noise: that happened once, when decode()
gained a byte the generator did not write. CPU only."""
from __future__ import annotations

import importlib.util
import os
import re
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FUZZ = os.path.join(ROOT, "tests", "fuzz")
CODES = {"uint8_t": "B", "uint16_t": "H", "int32_t": "i", "uint32_t": "I", "int64_t": "q",
         "uint64_t": "Q", "float": "f"}


def _corpus_module():
    spec = importlib.util.spec_from_file_location("make_corpus", os.path.join(FUZZ, "make_corpus.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _decoded_types() -> str:
    """The struct codes of the r.get<T>() calls in decode(), in order."""
    src = open(os.path.join(FUZZ, "fuzz_host.cpp")).read()
    body = src[src.index("Input decode(const uint8_t* data, size_t size)"):]
    body = body[:body.index("in.tail.assign")]
    return "".join(CODES[t] for t in re.findall(r"r\.get<(\w+)>\(\)", body))


def _expanded(fmt: str) -> str:
    return "".join(c * int(n or 1) for n, c in re.findall(r"(\d*)([A-Za-z])", fmt.lstrip("<")))


def test_seed_layout_is_the_one_decode_reads():
    assert _expanded(_corpus_module().FORMAT) == _decoded_types()


def test_committed_seeds_are_what_the_generator_writes():
    mod = _corpus_module()
    corpus = os.path.join(FUZZ, "corpus")
    assert sorted(os.listdir(corpus)) == sorted(mod.SEEDS)
    for name, data in mod.SEEDS.items():
        with open(os.path.join(corpus, name), "rb") as f:
            assert f.read() == data, f"{name} is stale: run python3 tests/fuzz/make_corpus.py"
    assert struct.calcsize(mod.FORMAT) == len(mod.SEEDS["misc"])
