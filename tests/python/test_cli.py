"""The command line: info, run without a GPU, bench dispatch."""
from __future__ import annotations

import sys
import types

import pytest

import flashdecoding as fd
from flashdecoding import cli
from conftest import HAS_GPU, run_python


def test_info_lists_versions_archs_cells_and_gpu():
    r = run_python("import sys; from flashdecoding.cli import main; sys.exit(main(['info']))")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"flashdecoding (Python) {fd.__version__}" in out
    assert f"library: {fd.__version__}" in out
    assert f"compiled architectures: {fd.compiled_architectures()}" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith("  ") and line.split()[0].isdigit()}
    for cell in fd.kernel_cells():
        row = rows[str(cell.index)]
        assert cell.name in out
        q = cell.element.short_name if cell.element is not None else "f16/bf16"
        assert row[1:6] == [q, cell.kv_element.short_name, str(cell.head_dim),
                            "paged" if cell.paged else "contiguous", cell.arch.min_arch.name]
    assert "GPU: " in out
    if not HAS_GPU:
        assert "GPU: no GPU" in out


def test_module_entry_point_runs():
    r = run_python("import runpy, sys; sys.argv=['flashdecoding','--version']; "
                   "runpy.run_module('flashdecoding', run_name='__main__')")
    assert r.returncode == 0 and fd.__version__ in r.stdout


def test_run_without_gpu_is_one_clear_line_and_nonzero():
    r = run_python("import sys; from flashdecoding.cli import main; sys.exit(main(['run']))",
                   env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("flashdecoding run: no CUDA GPU available")
    assert r.stdout == ""


def test_run_defaults_are_a_llama3_8b_step():
    args = cli.build_parser().parse_args(["run"])
    assert (args.batch, args.heads, args.kv_heads, args.k_len, args.head_dim, args.dtype) == \
        (1, 32, 8, 4096, 128, "bf16")
    assert args.graph is True


def test_bench_dispatches_to_flashdecoding_bench_main(monkeypatch):
    seen = {}
    fake = types.ModuleType("flashdecoding.bench")

    def main(argv):
        seen["argv"] = argv
        return 3

    fake.main = main
    monkeypatch.setitem(sys.modules, "flashdecoding.bench", fake)
    monkeypatch.setattr(fd, "bench", fake, raising=False)
    assert cli.main(["bench", "--quick", "--json", "x.json"]) == 3
    assert seen["argv"] == ["--quick", "--json", "x.json"]


def test_bench_reaches_the_bench_package_without_a_gpu():
    # --list prints the rows a run would measure; it needs neither torch's CUDA nor a GPU
    r = run_python("import sys; from flashdecoding.cli import main; "
                   "sys.exit(main(['bench', '--list', '--grid', 'perf']))",
                   env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("perf   32/8 D128 B1 K8192 bf16")
    assert lines[-1].startswith("10 rows, 10 to measure")


def test_bench_usage_error_is_2():
    assert cli.main(["bench", "--grid", "nope"]) == 2


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
