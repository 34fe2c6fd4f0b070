#!/usr/bin/env python3
"""Tensor-parallel decode with flashdecoding and torch.distributed.

One decode step of a Llama attention layer (random weights, the same on every rank)
whose query and KV heads are split over N GPUs: each rank holds its heads' slice of
the projections and of the KV cache, calls ``flashdecoding.flash_decode`` on its own
GPU, and the row-parallel output projection is summed with one NCCL all-reduce.
The library itself does nothing across GPUs: each process runs it on the device it
was given (``torch.cuda.set_device(LOCAL_RANK)``); what it caches per process is
either device-independent (plans) or kept per device (SM count, compute capability).
With flashdecoding installed (or PYTHONPATH=python from the repository root):

    torchrun --nproc-per-node 2 examples/tp_decode.py                 # timing table
    torchrun --nproc-per-node 2 examples/tp_decode.py --paged --check # paged KV, checked
    python examples/tp_decode.py --check                              # one GPU, no torchrun
    torchrun --nproc-per-node 2 examples/tp_decode.py --device cpu --check \\
        --hidden 256 --heads 8 --kv-heads 4 --head-dim 32 --batch 2 --k-len 64
                                                 # CPU, gloo, torch attention

``--check`` compares, for every configuration, the N-rank layer with a one-process
unsharded run of the same layer (through flashdecoding, on rank 0's GPU) and both
with a float64 torch computation, to the tolerance of the project's tests (1e-2 bf16,
2e-3 f16, relative to the largest output). It also runs the attention of every head
in batch-invariant mode from identical inputs, split as the ranks split it, and
compares it bit for bit with the unsharded run: the bits must match when every GPU
is the same model. Exit status 1 when a check fails, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from typing import Callable, List, Optional

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tp_sharding as tp  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}


# --------------------------------------------------------------------------- processes

class Comm:
    """The collectives the layer needs, over torch.distributed when a process group
    is up (torchrun), else over one process."""

    def __init__(self, rank: int, world_size: int, device: torch.device, active: bool):
        self.rank, self.world_size, self.device, self.active = rank, world_size, device, active

    def all_reduce_sum(self, t: torch.Tensor) -> None:
        if self.active:
            dist.all_reduce(t)

    def max(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def broadcast(self, t: torch.Tensor, src: int = 0) -> None:
        if self.active:
            dist.broadcast(t, src)

    def gather_heads(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's [B, H_local, D] joined on the head axis, in rank order."""
        if not self.active:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=1)

    def gather_objects(self, obj) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def agree(self, ok: bool) -> bool:
        """True on every rank when ``ok`` is True on every rank."""
        return self.max(0.0 if ok else 1.0) == 0.0


def start_processes(device_kind: str) -> Comm:
    """This process's rank, device and process group. NCCL's NVLink multicast
    (NVLS) stays off: it is set before NCCL starts, which is when the group does."""
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise SystemExit(f"tp_decode: LOCAL_RANK={local_rank} but this host has {count} "
                             f"CUDA device(s); start at most {count} process(es) per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # flashdecoding runs on the current device
    else:
        device = torch.device("cpu")
    if under_torchrun:
        backend = "nccl" if device_kind == "cuda" else "gloo"
        kwargs = {}
        takes_device = "device_id" in inspect.signature(dist.init_process_group).parameters
        if device_kind == "cuda" and takes_device:
            kwargs["device_id"] = device  # binds the NCCL communicator to this GPU
        dist.init_process_group(backend, **kwargs)
    return Comm(rank, world_size, device, under_torchrun)


# --------------------------------------------------------------------------- attention

class FlashDecodeAttention:
    """``attend(q, cache, seq_lens)`` through flashdecoding on torch's current stream,
    with a workspace this rank allocates once per shape (so steps can be captured in
    a CUDA graph)."""

    def __init__(self, scale: float, batch_invariant: bool = False):
        import flashdecoding

        self.fd = flashdecoding
        self.scale = scale
        self.batch_invariant = batch_invariant
        self._workspaces = {}

    def _workspace(self, q: torch.Tensor, cache: tp.KvCache, nbytes: Optional[int] = None):
        fd = self.fd
        b, hq, d = q.shape
        key = (tuple(q.shape), tuple(cache.k.shape), cache.layout, cache.k_len)
        if nbytes is None:
            if key in self._workspaces:
                return self._workspaces[key]
            element = fd.ElementKind.BF16 if q.dtype == torch.bfloat16 else fd.ElementKind.F16
            if cache.paged:
                desc = fd.FlashDecodingDescriptor.new_paged(
                    b, hq, cache.num_kv_heads, d, cache.page_size, cache.block_table.shape[1],
                    cache.k.shape[0], element, max_seq_len=cache.k_len)
            else:
                desc = fd.FlashDecodingDescriptor.new_gqa(b, hq, cache.num_kv_heads, cache.k_len,
                                                          d, element)
            pref = (fd.PlanPreference.BATCH_INVARIANT if self.batch_invariant
                    else fd.PlanPreference.DEFAULT)
            nbytes = fd.FlashDecodingPlan.select(None, desc, pref).workspace_size()
        ws = torch.empty(nbytes, dtype=torch.uint8, device=q.device) if nbytes else None
        self._workspaces[key] = ws
        return ws

    def __call__(self, q: torch.Tensor, cache: tp.KvCache, seq_lens: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(q)
        kwargs = dict(scale=self.scale, out=y, seq_lens=seq_lens,
                      stream=torch.cuda.current_stream(q.device),
                      batch_invariant=self.batch_invariant)
        if cache.paged:
            kwargs.update(block_table=cache.block_table, kv_layout=cache.layout,
                          max_seq_len=cache.k_len)
        try:
            self.fd.flash_decode(q, cache.k, cache.v, workspace=self._workspace(q, cache), **kwargs)
        except self.fd.WorkspaceTooSmall as exc:  # a call with options may need more
            self.fd.flash_decode(q, cache.k, cache.v,
                                 workspace=self._workspace(q, cache, exc.needed), **kwargs)
        return y


def make_attention(device: torch.device, scale: float, batch_invariant: bool = False) -> tp.Attend:
    """flashdecoding on a GPU; on CPU (no kernels there) torch in float32."""
    if device.type == "cuda":
        return FlashDecodeAttention(scale, batch_invariant)
    return tp.torch_attention(scale, torch.float32)


# --------------------------------------------------------------------------- one layer

class Layer:
    """One rank's layer state for one (batch, k_len): weights, cache, inputs."""

    def __init__(self, args, shape: tp.LayerShape, shard: tp.HeadShard, batch: int, k_len: int,
                 device: torch.device, dtype: torch.dtype):
        seed = args.seed
        self.shape, self.shard, self.dtype = shape, shard, dtype
        self.x = tp.make_input(shape, batch, seed, dtype=dtype, device=device)
        self.weights = tp.make_weights(shape, shard, seed, dtype=dtype, device=device)
        self.seq_lens = tp.make_seq_lens(batch, k_len, seed, ragged=args.ragged, device=device)
        layout = args.kv_layout if args.paged else "contiguous"
        self.cache = tp.make_kv_cache(shape, shard, batch, k_len, seed, dtype=dtype, device=device,
                                      layout=layout, page_size=args.page_size)
        self.cos, self.sin = tp.rope_tables(self.seq_lens.long() - 1, shape.head_dim,
                                            shape.rope_theta)

    def step(self, attend: tp.Attend, all_reduce=None) -> tp.StepResult:
        return tp.layer_step(self.x, self.weights, self.cache, self.seq_lens, self.cos, self.sin,
                             attend, all_reduce)

    def query(self) -> torch.Tensor:
        """The step's rotated query [B, H_q, D] (for timing the attention alone)."""
        q = (self.x @ self.weights.wq.t()).view(self.x.shape[0], -1, self.shape.head_dim)
        return tp.apply_rope(q, self.cos, self.sin)

    def as_float64(self) -> "Layer":
        """The same layer in float64: the model-dtype numbers, computed exactly."""
        twin = object.__new__(Layer)
        twin.shape, twin.shard, twin.dtype = self.shape, self.shard, torch.float64
        twin.x, twin.weights = self.x.double(), self.weights.to(torch.float64)
        twin.seq_lens, twin.cos, twin.sin = self.seq_lens, self.cos, self.sin
        twin.cache = self.cache.to(torch.float64)
        return twin


# --------------------------------------------------------------------------- timing

def time_steps(fn: Callable[[], object], device: torch.device, steps: int, warmup: int,
               graph: bool) -> List[float]:
    """Microseconds of each of ``steps`` calls, back to back (CUDA events on a GPU;
    with ``graph``, replays of one captured call)."""
    if device.type != "cuda":
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(steps):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e6)
        return out
    run = fn
    if graph:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(max(warmup, 1)):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        run = g.replay
    for _ in range(warmup):
        run()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    torch.cuda.synchronize(device)
    for s, e in zip(starts, ends):
        s.record()
        run()
        e.record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]


def measure(args, comm: Comm, layer: Layer, attend: tp.Attend) -> dict:
    """Median per-step time of the layer and of its attention alone, the slowest
    rank's (the all-reduce makes every rank wait for it)."""
    q = layer.query()
    step = lambda: layer.step(attend, comm.all_reduce_sum)  # noqa: E731
    attn_only = lambda: attend(q, layer.cache, layer.seq_lens)  # noqa: E731
    res = {}
    modes = [("eager", False)]
    if args.cuda_graph and comm.device.type == "cuda":
        modes.append(("graph", True))
    for name, graph in modes:
        res[f"step_us_{name}"] = comm.max(statistics.median(
            time_steps(step, comm.device, args.steps, args.warmup, graph)))
        res[f"attn_us_{name}"] = comm.max(statistics.median(
            time_steps(attn_only, comm.device, args.steps, args.warmup, graph)))
    return res


# --------------------------------------------------------------------------- check

def check(args, comm: Comm, layer: Layer, shape: tp.LayerShape, batch: int, k_len: int) -> dict:
    """The N-rank layer against the unsharded layer on rank 0 and float64; the
    batch-invariant attention of every head, split as the ranks split it, against the
    unsharded one bit for bit. Collective: every rank calls it."""
    dtype, device, scale = layer.dtype, comm.device, shape.scale
    attend = make_attention(device, scale)
    sharded = layer.step(attend, comm.all_reduce_sum)
    y_sharded = comm.gather_heads(sharded.y)

    full_shard = tp.shard_heads(shape, 1, 0)
    b, d = batch, shape.head_dim
    q_full = torch.empty(b, shape.num_heads, d, dtype=dtype, device=device)
    kv_new = torch.empty(2, b, shape.num_kv_heads, d, dtype=dtype, device=device)
    result = {}
    if comm.rank == 0:
        full = Layer(args, shape, full_shard, batch, k_len, device, dtype)
        ref = full.as_float64().step(tp.torch_attention(scale, torch.float64))
        unsharded = full.step(attend)
        q_full.copy_(unsharded.q)
        kv_new[0].copy_(unsharded.k_new)
        kv_new[1].copy_(unsharded.v_new)
        result.update(
            out_vs_float64=tp.relative_error(sharded.out, ref.out),
            unsharded_out_vs_float64=tp.relative_error(unsharded.out, ref.out),
            out_vs_unsharded=tp.relative_error(sharded.out, unsharded.out),
            attention_vs_unsharded=tp.relative_error(y_sharded, unsharded.y))
    # Identical attention inputs on every rank: rank 0's query and new keys/values.
    comm.broadcast(q_full)
    comm.broadcast(kv_new)
    shard = layer.shard
    mine = slice(shard.kv_start, shard.kv_stop)
    tp.append_kv(layer.cache, kv_new[0][:, mine], kv_new[1][:, mine], layer.seq_lens.long() - 1)
    invariant = make_attention(device, scale, batch_invariant=True)
    y_inv = comm.gather_heads(invariant(q_full[:, shard.q_start:shard.q_stop].contiguous(),
                                        layer.cache, layer.seq_lens))
    devices = comm.gather_objects(_device_name(device))
    ok = True
    if comm.rank == 0:
        y_inv_full = invariant(q_full, full.cache, full.seq_lens)
        same_model = device.type == "cuda" and len(set(devices)) == 1
        bad_heads = tp.differing_heads(y_inv, y_inv_full)
        tol = tp.TOLERANCE[dtype]
        result.update(invariant_vs_unsharded=tp.relative_error(y_inv, y_inv_full),
                      heads_with_other_bits=bad_heads, bits_required=same_model)
        ok = all(result[k] <= tol for k in ("out_vs_float64", "unsharded_out_vs_float64",
                                            "out_vs_unsharded", "attention_vs_unsharded",
                                            "invariant_vs_unsharded"))
        ok = ok and (not same_model or not bad_heads)
        result["passed"] = ok
        result["tensors"] = {"out": sharded.out.cpu(), "y_invariant": y_inv.cpu()}
    return result


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Tensor-parallel decode step of a Llama attention layer with flashdecoding "
                    "(run under torchrun --nproc-per-node N; N must divide --kv-heads).")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="batch sizes")
    p.add_argument("--k-len", type=int, nargs="+", default=[1024, 4096, 16384],
                   help="keys per sequence after the step's token")
    p.add_argument("--paged", action="store_true", help="paged KV cache with a block table")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--kv-layout", choices=["NHD", "HND"], default="NHD", help="page layout")
    p.add_argument("--ragged", action="store_true",
                   help="sequence lengths spread over [1, K] (the first is K)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--rope-theta", type=float, default=500000.0)
    p.add_argument("--steps", type=int, default=50, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--cuda-graph", action="store_true",
                   help="also time replays of a captured step (all-reduce included)")
    p.add_argument("--batch-invariant", action="store_true",
                   help="time the batch-invariant kernel (fixed 512-key splits)")
    p.add_argument("--check", action="store_true", help="compare with the unsharded layer")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="cpu: gloo and a torch attention (no flashdecoding)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write the results (rank 0)")
    p.add_argument("--dump", metavar="PATH",
                   help="with --check: save the layer output and the batch-invariant attention "
                        "(torch.save, rank 0)")
    args = p.parse_args(argv)
    for name in ("batch", "k_len"):
        for value in getattr(args, name):
            if value < 1:
                p.error(f"--{name.replace('_', '-')} values must be >= 1, got {value}")
    if not 1 <= args.page_size <= 256:
        p.error(f"--page-size must be in [1, 256], got {args.page_size}")
    if args.steps < 1 or args.warmup < 0:
        p.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    if args.dump and not args.check:
        p.error("--dump needs --check")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    return args


def describe(args, shape, shard, comm, devices) -> str:
    kv = (f"paged KV ({args.kv_layout}, page {args.page_size})" if args.paged
          else "contiguous KV")
    attn = "flashdecoding" if comm.device.type == "cuda" else "torch (CPU)"
    names = ", ".join(sorted(set(devices)))
    return (f"Llama attention layer: hidden {shape.hidden}, H_q {shape.num_heads}, H_kv "
            f"{shape.num_kv_heads}, D {shape.head_dim}, {args.dtype}, {kv}"
            f"{', ragged lengths' if args.ragged else ''}\n"
            f"N = {comm.world_size} rank(s) on {names}; per rank H_q {shard.num_heads}, "
            f"H_kv {shard.num_kv_heads}; attention: {attn}"
            f"{' (batch-invariant)' if args.batch_invariant else ''}")


def main(argv=None) -> int:
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]
    # The split is refused before any process group (and NCCL) starts.
    try:
        shape = tp.LayerShape(args.hidden, args.heads, args.kv_heads, args.head_dim,
                              args.rope_theta)
        shard = tp.shard_heads(shape, int(os.environ.get("WORLD_SIZE", "1")),
                               int(os.environ.get("RANK", "0")))
    except ValueError as exc:
        if os.environ.get("RANK", "0") == "0":
            print(f"tp_decode: error: {exc}", file=sys.stderr)
        return 2
    comm = start_processes(args.device)
    try:
        devices = comm.gather_objects(_device_name(comm.device))
        lead = comm.rank == 0
        if lead:
            print(describe(args, shape, shard, comm, devices))
            graph_cols = "  graph_step_us  graph_attn_us" if args.cuda_graph and \
                comm.device.type == "cuda" else ""
            print(f"{'B':>4} {'K':>7} {'step_us':>9} {'attn_us':>9}{graph_cols}"
                  f"{'  check' if args.check else ''}")
        rows, dumps, failed = [], [], False
        attend = make_attention(comm.device, shape.scale, args.batch_invariant)
        for batch in args.batch:
            for k_len in args.k_len:
                layer = Layer(args, shape, shard, batch, k_len, comm.device, dtype)
                row = {"batch": batch, "k_len": k_len}
                row.update(measure(args, comm, layer, attend))
                if args.check:
                    res = check(args, comm, layer, shape, batch, k_len)
                    if lead:
                        tensors = res.pop("tensors")
                        dumps.append({"batch": batch, "k_len": k_len, **tensors})
                        row["check"] = res
                        failed = failed or not res["passed"]
                del layer
                if comm.device.type == "cuda":
                    torch.cuda.empty_cache()
                rows.append(row)
                if lead:
                    print(format_row(row))
        if lead:
            if args.check:
                print("check: " + ("FAILED" if failed else "passed"))
            meta = {"world_size": comm.world_size, "devices": devices, "dtype": args.dtype,
                    "paged": args.paged, "kv_layout": args.kv_layout if args.paged else None,
                    "page_size": args.page_size if args.paged else None, "ragged": args.ragged,
                    "batch_invariant": args.batch_invariant,
                    "shape": {"hidden": shape.hidden, "num_heads": shape.num_heads,
                              "num_kv_heads": shape.num_kv_heads, "head_dim": shape.head_dim}}
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({**meta, "rows": rows}, f, indent=1)
            if args.dump:
                torch.save({**meta, "configs": dumps}, args.dump)
        return 0 if comm.agree(not failed) else 1
    finally:
        if comm.active:
            dist.destroy_process_group()


def format_row(row: dict) -> str:
    text = (f"{row['batch']:>4} {row['k_len']:>7} {row['step_us_eager']:>9.1f} "
            f"{row['attn_us_eager']:>9.1f}")
    if "step_us_graph" in row:
        text += f"  {row['step_us_graph']:>13.1f}  {row['attn_us_graph']:>13.1f}"
    if "check" in row:
        c = row["check"]
        text += (f"  {'ok' if c['passed'] else 'FAIL'} out {c['out_vs_float64']:.1e} "
                 f"vs-1-GPU {c['out_vs_unsharded']:.1e} heads-differing "
                 f"{len(c['heads_with_other_bits'])}"
                 f"{'' if c['bits_required'] else ' (not required)'}")
    return text


if __name__ == "__main__":
    sys.exit(main())
