"""How much of each method's time per call comes from overlapping consecutive
calls? The bench (the method of docs/PERFORMANCE.md) replays graphs of
back-to-back calls of one method; in a model, other kernels run between two
attention calls. This times
each method twice on the same inputs: back to back, and with a one-element
PyTorch kernel after every call (it waits for the whole call to finish and the
next call waits for it), minus a graph of the separators alone.

    PYTHONPATH=python python3 tools/isolation_probe.py [--shape B,Hq,Hkv,K,D ...]
"""
from __future__ import annotations

import argparse

import torch

from flashdecoding.bench import data as data_mod
from flashdecoding.bench import methods as mt
from flashdecoding.bench import shapes as shp
from flashdecoding.bench import stats as st
from flashdecoding.bench.gpu import release_memory, time_graph

GIB = 1 << 30

DEFAULT = ["1,32,8,8192,128", "16,32,8,4096,128", "64,32,8,2048,128", "32,16,16,1024,64",
           "8,8,1,16384,128", "1,32,8,512,128"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", action="append")
    p.add_argument("--methods", default="flashdecoding,sdpa-cudnn")
    p.add_argument("--repeats", type=int, default=9)
    a = p.parse_args()
    sep = torch.zeros(1, device="cuda")

    def separator():
        sep.add_(1.0)

    n_calls = 64
    sep_us = st.median(time_graph([separator], n_calls, a.repeats))
    print(f"separator kernel alone: {sep_us:.2f} us per call")
    print(f"{'shape':24s} {'method':14s} {'back-to-back':>13s} {'isolated':>9s} {'diff':>6s}")
    for text in a.shape or DEFAULT:
        case = shp.Case(shp.parse_shape(text))
        # as the bench sizes them: replicas enough to touch 1 GiB, at most 4 GiB in all
        replicas = shp.replicas_for(case, GIB, 4 * GIB)
        data = data_mod.CaseData(case, replicas, seed=0)
        shape = case.shape
        for name in a.methods.split(","):
            prep = mt.prepare(name, data)
            plain = st.median(time_graph(prep.calls, n_calls, a.repeats))

            def with_separator(c):
                def call():
                    out = c()
                    separator()
                    return out
                return call

            iso = st.median(time_graph([with_separator(c) for c in prep.calls], n_calls,
                                       a.repeats)) - sep_us
            print(f"{shape.label():24s} {name:14s} {plain:13.2f} {iso:9.2f} "
                  f"{100 * (iso / plain - 1):+5.1f}%")
            del prep
        data.release()
        release_memory()


if __name__ == "__main__":
    main()
