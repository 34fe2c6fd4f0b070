"""The merge inside the split kernel: the last CTA of each (batch, KV head)
merges the splits, counted on per-unit counters in the workspace. What could go
wrong is the counting: a workspace full of stale counters (garbage, another
problem's partials), graph replays after eager calls and the other way round,
and problems of different layouts taking turns on one buffer.
Each case is checked against the bits of a run on a zeroed workspace of its own.
GPU tests; they skip cleanly without a GPU or without PyTorch."""
from __future__ import annotations

import pytest

import flashdecoding as fd
from flashdecoding import reference
from conftest import gpu

# Split problems (several splits per unit on any GPU with >= 32 SMs), each a
# different workspace layout: GQA, MHA with odd head_dim, MQA with 16 heads.
SHAPES = [(1, 32, 8, 4096, 128), (2, 6, 6, 3001, 72), (3, 16, 1, 2500, 64)]
TOL = 1e-2  # bf16


def _torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not importable")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    return torch


def _ref(t):
    return fd.TensorRef(t.data_ptr(), tuple(t.shape), t.stride(), dtype=fd.ElementKind.BF16)


class Case:
    def __init__(self, torch, shape, seed):
        self.desc = fd.FlashDecodingDescriptor.new_gqa(*shape, fd.ElementKind.BF16)
        self.plan = fd.FlashDecodingPlan.select(None, self.desc)
        g = torch.Generator(device="cuda").manual_seed(seed)
        mk = lambda s: torch.randn(s, generator=g, device="cuda").to(torch.bfloat16)  # noqa: E731
        self.q, self.k, self.v = mk(self.desc.q_shape()), mk(self.desc.kv_shape()), mk(self.desc.kv_shape())
        self.y = torch.full(self.desc.y_shape(), float("nan"), device="cuda", dtype=torch.bfloat16)

    def args(self):
        return fd.FlashDecodingArgs(_ref(self.q), _ref(self.k), _ref(self.v),
                                    fd.TensorMut(self.y.data_ptr(), tuple(self.y.shape),
                                                 self.y.stride(), dtype=fd.ElementKind.BF16))

    def run(self, stream, ws_buf):
        self.plan.run(stream, fd.Workspace(ws_buf.data_ptr(), self.plan.workspace_size()),
                      self.args())


def _bits(torch, t):
    return t.contiguous().view(torch.int16).clone()


def _baseline(torch, case):
    ws = torch.zeros(max(case.plan.workspace_size(), 1), dtype=torch.uint8, device="cuda")
    case.y.fill_(float("nan"))
    case.run(None, ws)
    torch.cuda.synchronize()
    ref = reference.decode(case.q.float().cpu().numpy(), case.k.float().cpu().numpy(),
                           case.v.float().cpu().numpy(), case.desc.scale)
    assert reference.relative_error(case.y.float().cpu().numpy(), ref) <= TOL
    return _bits(torch, case.y)


@gpu
def test_split_problems_merge_in_the_split_kernel():
    _torch()
    for shape in SHAPES:
        lp = fd.FlashDecodingPlan.select(
            None, fd.FlashDecodingDescriptor.new_gqa(*shape, fd.ElementKind.BF16)).launch_plan()
        assert lp["num_splits"] > 1, (shape, lp)
        assert lp["merge_in_split"] == 1 and lp["merge_kernel"] == 0, (shape, lp)
    # Batch-invariant mode keeps the merge kernel (its fixed arithmetic).
    inv = fd.FlashDecodingPlan.select(
        None, fd.FlashDecodingDescriptor.new_gqa(*SHAPES[0], fd.ElementKind.BF16),
        fd.PlanPreference.BATCH_INVARIANT).launch_plan()
    assert inv["merge_kernel"] == 1 and inv["merge_in_split"] == 0, inv


@gpu
@pytest.mark.parametrize("fill", [0x00, 0xFF, 0x3F, "random"], ids=lambda f: str(f))
def test_any_workspace_contents_give_the_same_bits(fill):
    torch = _torch()
    for seed, shape in enumerate(SHAPES):
        case = Case(torch, shape, seed)
        base = _baseline(torch, case)
        n = max(case.plan.workspace_size(), 1)
        ws = (torch.randint(0, 256, (n,), dtype=torch.uint8, device="cuda") if fill == "random"
              else torch.full((n,), fill, dtype=torch.uint8, device="cuda"))
        for _ in range(3):  # the first run meets the stale counters, the next ones its own
            case.y.fill_(float("nan"))
            case.run(None, ws)
            torch.cuda.synchronize()
            assert torch.equal(_bits(torch, case.y), base), (shape, fill)


@gpu
def test_problems_of_different_layouts_take_turns_on_one_workspace_eager_and_in_a_graph():
    torch = _torch()
    cases = [Case(torch, s, 10 + i) for i, s in enumerate(SHAPES)]
    bases = [_baseline(torch, c) for c in cases]
    n = max(c.plan.workspace_size() for c in cases)
    ws = torch.randint(0, 256, (n,), dtype=torch.uint8, device="cuda")
    # Eagerly, each problem's counters land on the others' partials.
    for _ in range(3):
        for c, base in zip(cases, bases):
            c.y.fill_(float("nan"))
            c.run(None, ws)
            torch.cuda.synchronize()
            assert torch.equal(_bits(torch, c.y), base)
    # One graph with all three, replayed, with eager runs on the same workspace
    # in between.
    graph = torch.cuda.CUDAGraph()
    cs = torch.cuda.Stream()
    cs.wait_stream(torch.cuda.current_stream())
    with torch.cuda.graph(graph, stream=cs):
        for c in cases:
            c.run(cs.cuda_stream, ws)
    for i in range(6):
        for c in cases:
            c.y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        for c, base in zip(cases, bases):
            assert torch.equal(_bits(torch, c.y), base), i
        c = cases[i % len(cases)]
        c.y.fill_(float("nan"))
        c.run(None, ws)
        torch.cuda.synchronize()
        assert torch.equal(_bits(torch, c.y), bases[i % len(cases)])
