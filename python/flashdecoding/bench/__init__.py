"""``python -m flashdecoding bench``: flashdecoding against its peers, side by side.

In one process on one GPU: the read ceiling (a read kernel of the project's
own, compiled with NVRTC, next to torch's reduction and copy), then every row
of the perf grid and the model zoo, each method (flashdecoding through its
public Python API, PyTorch SDPA flash and cuDNN, FlashInfer decode on CUDA
cores and tensor cores) checked against a float32 reference and then timed
with CUDA events around CUDA-graph replays over rotated KV replicas.  Prints
the table and the "bar:" lines (bar.py; docs/PERFORMANCE.md explains both);
writes JSON, CSV and a plot on request.

Importing this package needs neither torch nor a GPU: only :func:`main`'s
measuring path does.
"""

from __future__ import annotations


def main(argv=None) -> int:
    """Run the benchmark with command-line arguments ``argv``; returns the exit status."""
    from .cli import main as _main

    return _main(argv)
