"""Tensor-parallel decode through flashdecoding on GPUs (examples/tp_decode.py):

* one GPU: the example's layer with N = 1 against the unsharded float64 layer; the
  layer split into 2 and 4 head shards run one after another on the same GPU, their
  outputs summed, against the unsharded layer, and every head's batch-invariant
  attention bit-identical to the unsharded launch's; the example under torchrun with
  N = 1 (contiguous, paged, CUDA graph);
* two or more GPUs: one process using two devices in turn, and the example with N = 2
  over NCCL (NVLink multicast off) equal to the N = 1 run to the usual tolerance and
  bit-identical per head when the GPUs are the same model.

Skipped without a GPU, and without a CUDA build of torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import gpu

torch = pytest.importorskip("torch")

EXAMPLES = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                        os.pardir, "examples"))
sys.path.insert(0, EXAMPLES)
import tp_decode  # noqa: E402
import tp_sharding as tp  # noqa: E402

pytestmark = [gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                      reason="torch sees no CUDA device (a CPU build of torch?)")]

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}
DEVICE = torch.device("cuda")  # the current device
SHAPE = tp.LayerShape(hidden=2048, num_heads=16, num_kv_heads=4, head_dim=128)
KV = [("contiguous", []), ("NHD", ["--paged", "--page-size", "16"]),
      ("HND", ["--paged", "--kv-layout", "HND", "--page-size", "7"])]


def layer_args(kv_flags, dtype="bf16"):
    return tp_decode.parse_args(["--device", DEVICE.type, "--ragged", "--dtype", dtype] + kv_flags)


def make_layer(kv_flags, dtype, shard, batch=3, k_len=777):
    args = layer_args(kv_flags, dtype)
    return tp_decode.Layer(args, SHAPE, shard, batch, k_len, DEVICE, DTYPES[dtype])


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("layout,kv_flags", KV, ids=[k[0] for k in KV])
def test_one_gpu_layer_matches_the_float64_layer(layout, kv_flags, dtype):
    torch.cuda.set_device(0)
    layer = make_layer(kv_flags, dtype, tp.shard_heads(SHAPE, 1, 0))
    assert layer.cache.layout == layout
    attend = tp_decode.FlashDecodeAttention(SHAPE.scale)
    got = layer.step(attend)
    torch.cuda.synchronize()
    tol = tp.TOLERANCE[DTYPES[dtype]]
    # the kernel alone, on the layer's own q and cache
    k, v = tp.gather_contiguous(layer.cache)
    want_y = tp.reference_attention(got.q, k, v, layer.seq_lens, SHAPE.scale)
    assert tp.relative_error(got.y, want_y) <= tol
    # the whole layer against float64 from the same numbers
    ref = layer.as_float64().step(tp.torch_attention(SHAPE.scale))
    assert tp.relative_error(got.out, ref.out) <= tol
    # a step writes the same slot: repeating it gives the same bits
    again = layer.step(attend)
    assert not tp.differing_heads(again.y, got.y)
    assert torch.equal(again.out.view(torch.int16), got.out.view(torch.int16))


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("layout,kv_flags", KV, ids=[k[0] for k in KV])
def test_head_shards_on_one_gpu_match_the_unsharded_layer(layout, kv_flags, n):
    torch.cuda.set_device(0)
    dtype = "bf16"
    tol = tp.TOLERANCE[DTYPES[dtype]]
    full = make_layer(kv_flags, dtype, tp.shard_heads(SHAPE, 1, 0))
    attend = tp_decode.FlashDecodeAttention(SHAPE.scale)
    want = full.step(attend)
    total = None
    for shard in tp.all_shards(SHAPE, n):
        part = make_layer(kv_flags, dtype, shard).step(attend)
        assert tp.relative_error(part.y, want.y[:, shard.q_start:shard.q_stop]) <= tol
        total = part.out if total is None else total + part.out
    assert tp.relative_error(total, want.out) <= tol
    # Identical inputs per head (the unsharded step's q and cache): batch-invariant
    # launches over a rank's heads give each head the bits of the unsharded launch.
    invariant = tp_decode.FlashDecodeAttention(SHAPE.scale, batch_invariant=True)
    whole = invariant(want.q, full.cache, full.seq_lens)
    pieces = [invariant(want.q[:, s.q_start:s.q_stop].contiguous(),
                        tp.shard_kv_cache(full.cache, s), full.seq_lens)
              for s in tp.all_shards(SHAPE, n)]
    torch.cuda.synchronize()
    assert tp.differing_heads(torch.cat(pieces, dim=1), whole) == []
    k, v = tp.gather_contiguous(full.cache)
    assert tp.relative_error(whole, tp.reference_attention(want.q, k, v, full.seq_lens,
                                                           SHAPE.scale)) <= tol


# --------------------------------------------------------------------------- the example

def example_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["NCCL_NVLS_ENABLE"] = "0"  # NVLink multicast off (the example sets it too)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT"):
        env.pop(name, None)
    return env


EXAMPLE_ARGS = ["--check", "--batch", "1", "5", "--k-len", "300", "2100", "--steps", "5",
                "--warmup", "1"]


def run_example(nproc, extra, tmp_path, tag, timeout=600):
    """Runs the example (under torchrun unless nproc is 0); returns (json, dump)."""
    script = os.path.join(EXAMPLES, "tp_decode.py")
    json_path, dump_path = tmp_path / f"{tag}.json", tmp_path / f"{tag}.pt"
    cmd = ([sys.executable, script] if nproc == 0 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", script])
    cmd += EXAMPLE_ARGS + extra + ["--json", str(json_path), "--dump", str(dump_path)]
    proc = subprocess.run(cmd, env=example_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert "check: passed" in proc.stdout, proc.stdout
    result = json.loads(json_path.read_text())
    assert result["world_size"] == max(nproc, 1)
    assert len(result["rows"]) == 4
    for row in result["rows"]:
        assert row["check"]["passed"], row
        assert row["step_us_eager"] > 0 and row["attn_us_eager"] > 0
    return result, torch.load(dump_path)


@pytest.mark.parametrize("extra", [[], ["--paged", "--ragged"], ["--cuda-graph"],
                                   ["--paged", "--kv-layout", "HND", "--cuda-graph"]],
                         ids=["contiguous", "paged", "graph", "paged-graph"])
def test_example_one_gpu_under_torchrun(extra, tmp_path):
    result, _ = run_example(1, extra, tmp_path, "n1")
    for row in result["rows"]:
        assert row["check"]["out_vs_unsharded"] == 0.0  # N = 1 is the unsharded layer
        assert row["check"]["heads_with_other_bits"] == []
        if "--cuda-graph" in extra:
            assert row["step_us_graph"] > 0


def test_example_without_torchrun_is_one_rank(tmp_path):
    result, dump = run_example(0, ["--dtype", "f16"], tmp_path, "plain")
    assert result["dtype"] == "f16" and dump["configs"][0]["out"].dtype == torch.float16


def test_example_refuses_more_ranks_than_devices(tmp_path):
    env = example_env()
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=str(torch.cuda.device_count()))
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "tp_decode.py"), "--steps", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"LOCAL_RANK={torch.cuda.device_count()}" in proc.stderr


needs_two = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two or more GPUs")


@needs_two
def test_one_process_runs_two_devices_in_turn():
    """Nothing the library keeps per process ties it to the first device it ran on."""
    results = {}
    for _ in range(2):
        for dev in (0, 1):
            torch.cuda.set_device(dev)
            layer = make_layer([], "bf16", tp.shard_heads(SHAPE, 1, 0), batch=2, k_len=1500)
            got = layer.step(tp_decode.FlashDecodeAttention(SHAPE.scale))
            torch.cuda.synchronize(dev)
            assert got.y.device.index == dev
            k, v = tp.gather_contiguous(layer.cache)
            want = tp.reference_attention(got.q, k, v, layer.seq_lens, SHAPE.scale)
            assert tp.relative_error(got.y, want) <= tp.TOLERANCE[torch.bfloat16]
            results.setdefault(dev, []).append(got.y.cpu())
    for dev, ys in results.items():
        assert not tp.differing_heads(ys[0], ys[1]), dev
    torch.cuda.set_device(0)


@needs_two
@pytest.mark.parametrize("extra", [[], ["--paged", "--ragged"], ["--cuda-graph"]],
                         ids=["contiguous", "paged", "graph"])
def test_example_two_gpus_equal_one_gpu(extra, tmp_path):
    one, one_dump = run_example(1, extra, tmp_path, "n1")
    two, two_dump = run_example(2, extra, tmp_path, "n2")
    same_model = len(set(two["devices"])) == 1 and "cpu" not in two["devices"]
    tol = tp.TOLERANCE[torch.bfloat16]
    for a, b in zip(one_dump["configs"], two_dump["configs"]):
        assert (a["batch"], a["k_len"]) == (b["batch"], b["k_len"])
        assert tp.relative_error(b["out"], a["out"]) <= tol
        if same_model:
            assert tp.differing_heads(b["y_invariant"], a["y_invariant"]) == [], \
                (a["batch"], a["k_len"])
        else:
            assert tp.relative_error(b["y_invariant"], a["y_invariant"]) <= tol
    for row in two["rows"]:
        assert row["check"]["bits_required"] == same_model
        assert row["check"]["heads_with_other_bits"] == [] or not same_model
