"""CPU tests of the benchmark (python/flashdecoding/bench.py and _bench_*.py).

Everything here runs without torch or a GPU: shapes and byte counting, stats
and PERF.md's bar, table / JSON / CSV, the plot (built-in PNG writer, and
matplotlib when importable), the progress bar, argument parsing, and the
orchestration of bench.py with fake device modules.  The few pieces that need
torch are skipped with a reason when it is missing.

The bench modules are loaded as a private package over python/flashdecoding/,
so these tests neither need nor run the package's __init__ (which may need the
native library).
"""

import csv
import importlib
import io
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG_DIR = ROOT / "python" / "flashdecoding"
PRIV = "_fd_bench_under_test"


def _load(mod):
    if PRIV not in sys.modules:
        pkg = types.ModuleType(PRIV)
        pkg.__path__ = [str(PKG_DIR)]
        sys.modules[PRIV] = pkg
    return importlib.import_module(f"{PRIV}.{mod}")


shp = _load("_bench_shapes")
st = _load("_bench_stats")
rpt = _load("_bench_report")
png = _load("_bench_png")
plot = _load("_bench_plot")
prog = _load("_bench_progress")
meta = _load("_bench_meta")
bench = _load("bench")

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except Exception:
    HAVE_TORCH = False
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs torch (not installed here)")


# ------------------------------------------------------------------ shapes, bytes

# PERF.md's table: (Hq, Hkv, D, B, K, floor µs at the 3049 GB/s read ceiling).
PERF_ROWS = [
    (32, 8, 128, 1, 8192, 11.0), (32, 32, 128, 1, 8192, 44.0),
    (64, 8, 128, 1, 32768, 44.0), (32, 8, 128, 16, 4096, 88.1),
    (32, 8, 128, 64, 2048, 176.4), (32, 8, 128, 128, 1024, 176.8),
    (32, 32, 128, 32, 2048, 352.3), (8, 1, 128, 8, 16384, 22.0),
    (16, 16, 64, 32, 1024, 44.1), (32, 8, 128, 1, 512, 0.7),
]


def test_default_grid_is_perf_md_grid():
    grid = shp.default_grid()
    assert len(grid) == 10
    for s, (hq, hkv, d, b, k, _) in zip(grid, PERF_ROWS):
        assert (s.Hq, s.Hkv, s.D, s.B, s.K) == (hq, hkv, d, b, k)


def test_floors_match_perf_md():
    # Byte counting checked against the floors PERF.md printed for its run.
    for s, row in zip(shp.default_grid(), PERF_ROWS):
        f = shp.floor_us(shp.problem_bytes(s, "bf16"), 3049.0)
        assert round(f, 1) == pytest.approx(row[5], abs=0.051), s.label()


def test_problem_bytes_formula():
    s = shp.Shape(B=3, Hq=12, Hkv=4, K=100, D=64)
    assert shp.kv_bytes(s, "bf16") == 2 * 3 * 4 * 100 * 64 * 2
    assert shp.problem_bytes(s, "f16") == 2 * 3 * 4 * 100 * 64 * 2 + 2 * 3 * 12 * 64 * 2
    assert shp.gbps_of(2000, 1.0) == pytest.approx(2000.0 / 1e-6 / 1e9)
    with pytest.raises(ValueError):
        shp.floor_us(10, 0)


def test_latency_shape_is_last_grid_row():
    assert shp.LATENCY_SHAPE == shp.default_grid()[-1]
    assert shp.LATENCY_SHAPE.label() == "32/8 D128 B1 K512"


@pytest.mark.parametrize("text,expect", [
    ("1,32,8,512,128", (1, 32, 8, 512, 128)),
    (" 4, 8 ,1, 1000, 64 ", (4, 8, 1, 1000, 64)),
    ("2x16x16x257x72", (2, 16, 16, 257, 72)),
])
def test_parse_shape(text, expect):
    s = shp.parse_shape(text)
    assert (s.B, s.Hq, s.Hkv, s.K, s.D) == expect


@pytest.mark.parametrize("text", ["1,32,8,512", "1,32,8,512,128,1", "a,b,c,d,e",
                                  "1,32,7,512,128", "0,32,8,512,128", "1,32,8,0,128",
                                  "1,32,8,512,", "1.5,32,8,512,128"])
def test_parse_shape_rejects(text):
    with pytest.raises(ValueError):
        shp.parse_shape(text)


def test_replica_plan():
    gib = 1 << 30
    # the latency row: 2 MiB of KV -> 512 replicas = exactly 1 GiB
    assert shp.replica_plan(2 << 20, gib, 4 * gib) == 512
    # one replica of 1 GiB -> still 2
    assert shp.replica_plan(gib, gib, 4 * gib) == 2
    # bigger than the budget -> 2 anyway
    assert shp.replica_plan(3 * gib, gib, 4 * gib) == 2
    # budget caps the count
    assert shp.replica_plan(1 << 20, gib, 64 << 20) == 64
    for s in shp.default_grid():
        kv = shp.kv_bytes(s, "bf16")
        r = shp.replica_plan(kv, gib, 4 * gib)
        assert r >= 2 and r * kv >= gib and r * kv <= 4 * gib


def test_calls_per_graph():
    for R in (2, 3, 16, 512, 3000):
        for floor in (0.5, 11.0, 352.0):
            n = shp.calls_per_graph(R, floor)
            assert n % R == 0 and n >= 16 and n >= R
    assert shp.calls_per_graph(2, 352.0) == 16
    assert shp.calls_per_graph(512, 0.7) == 512
    assert shp.calls_per_graph(16, 22.0) == 48   # ~1 ms per replay


# ------------------------------------------------------------------ stats, bar

def ok(us, pct=50.0):
    return {"status": "ok", "us": us, "gbps": 1.0, "pct": pct}


def test_geomean_and_median():
    assert st.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert st.geomean([None, 3.0]) == pytest.approx(3.0)
    assert st.geomean([]) is None
    with pytest.raises(ValueError):
        st.geomean([1.0, 0.0])
    assert st.median([5, 1, 3]) == 3
    assert st.median([1, 2, 3, 4]) == 2.5


def test_best_peer_ignores_ours_and_non_ok():
    res = {"flashdecoding": ok(1.0), "sdpa-flash": ok(9.0),
           "sdpa-cudnn": {"status": "FAILED", "us": None},
           "fi-cc": ok(7.0), "fi-tc": {"status": "n/a"}}
    assert st.best_peer(res)[0] == "fi-cc"
    assert st.ratio_to_best_peer(res) == pytest.approx(1 / 7)
    assert st.ratio_to_best_peer({"flashdecoding": ok(1.0)}) is None
    assert st.ratio_to_best_peer({"flashdecoding": {"status": "error"}, "fi-cc": ok(2)}) is None


def test_row_meets_peer_tie_rule():
    # slower by 1% but the peer is at 96% of the ceiling: counts as at the peer
    assert st.row_meets_peer({"flashdecoding": ok(101.0), "x": ok(100.0, pct=96.0)})
    # same ratio, peer at 90%: not a tie
    assert not st.row_meets_peer({"flashdecoding": ok(101.0), "x": ok(100.0, pct=90.0)})
    # 3% slower is outside the tie even at 96%
    assert not st.row_meets_peer({"flashdecoding": ok(103.0), "x": ok(100.0, pct=96.0)})
    assert st.row_meets_peer({"flashdecoding": ok(99.0), "x": ok(100.0)})
    assert st.row_meets_peer({"flashdecoding": ok(99.0)}) is None


def _row(shape, results, dtype="bf16"):
    return {"shape": shape, "kv_bytes": shp.kv_bytes(shape, dtype),
            "bytes": shp.problem_bytes(shape, dtype), "floor_us": 1.0, "results": results}


def test_check_bar_pass_and_fail():
    big = shp.Shape(B=16, Hq=32, Hkv=8, K=4096, D=128)       # 268 MB of KV
    lat = shp.LATENCY_SHAPE
    rows = [_row(big, {"flashdecoding": ok(90.0, pct=97.0), "sdpa-cudnn": ok(93.0, pct=94.0)}),
            _row(lat, {"flashdecoding": ok(4.0, pct=17.0), "sdpa-cudnn": ok(9.3, pct=7.0)})]
    bar = st.check_bar(rows, latency_shape=lat)
    assert bar["rows_vs_best_peer"]["pass"] is True
    assert bar["geomean"]["pass"] is True
    assert bar["geomean"]["value"] == pytest.approx(math.sqrt(90 / 93 * 4 / 9.3))
    assert bar["big_kv_pct"]["pass"] is True
    assert bar["latency"]["pass"] is True
    assert bar["all"] is True

    rows[0]["results"]["flashdecoding"] = ok(95.0, pct=91.0)    # slower, and < 92%
    rows[1]["results"]["flashdecoding"] = ok(5.5, pct=12.0)     # > 5 µs
    bar = st.check_bar(rows, latency_shape=lat)
    assert bar["rows_vs_best_peer"]["pass"] is False
    assert "32/8 D128 B16 K4096" in bar["rows_vs_best_peer"]["detail"]
    assert bar["big_kv_pct"]["pass"] is False
    assert bar["latency"]["pass"] is False
    assert bar["all"] is False


def test_check_bar_big_kv_threshold_is_decimal_128mb():
    # 32/32 B1 K8192 D128: exactly 128 MiB = 134.2 MB of KV -> counts as "> 128 MB"
    s = shp.Shape(B=1, Hq=32, Hkv=32, K=8192, D=128)
    assert shp.kv_bytes(s, "bf16") == 128 * 2**20 > st.BAR_BIG_KV_BYTES
    # 8/1 B8 K16384: 64 MiB -> does not
    m = shp.Shape(B=8, Hq=8, Hkv=1, K=16384, D=128)
    rows = [_row(m, {"flashdecoding": ok(30.0, pct=70.0), "p": ok(31.9)})]
    assert st.check_bar(rows)["big_kv_pct"]["pass"] is None


def test_check_bar_unjudged_when_missing():
    s = shp.Shape(B=1, Hq=8, Hkv=8, K=64, D=64)
    rows = [_row(s, {"flashdecoding": {"status": "FAILED"}, "p": ok(3.0)})]
    bar = st.check_bar(rows, latency_shape=shp.LATENCY_SHAPE)
    assert bar["rows_vs_best_peer"]["pass"] is None
    assert bar["geomean"]["value"] is None
    assert bar["latency"]["pass"] is None
    assert bar["all"] is None
    # a partial grid never passes the geomean criterion
    rows.append(_row(shp.LATENCY_SHAPE, {"flashdecoding": ok(1.0), "p": ok(9.0)}))
    g = st.check_bar(rows)["geomean"]
    assert g["value"] == pytest.approx(1 / 9) and g["pass"] is None and (g["n"], g["of"]) == (1, 2)


# ------------------------------------------------------------------ report

def fake_report(methods=None):
    methods = methods or list(st.METHODS)
    grid = shp.default_grid()
    rows = []
    for i, s in enumerate(grid):
        floor = shp.floor_us(shp.problem_bytes(s, "bf16"), 3000.0)
        res = {}
        for j, m in enumerate(methods):
            us = floor * (1.1 + 0.1 * j + 0.01 * i)
            g = shp.gbps_of(shp.problem_bytes(s, "bf16"), us)
            res[m] = {"status": "ok", "us": us, "gbps": g, "pct": 100 * g / 3000.0,
                      "rel_err": 2e-3, "samples_us": [us] * 7}
        rows.append({"shape": s, "kv_bytes": shp.kv_bytes(s, "bf16"),
                     "bytes": shp.problem_bytes(s, "bf16"), "floor_us": floor, "results": res})
    rows[1]["results"]["sdpa-flash"] = {"status": "FAILED", "rel_err": 0.3,
                                        "note": "rel. error 3.000e-01 > 0.01 (not timed)"}
    rows[2]["results"]["fi-cc"] = {"status": "n/a", "note": "import flashinfer failed"}
    rows[3]["results"]["sdpa-cudnn"] = {"status": "unsupported", "note": "cudnn: no GQA"}
    rep = {"meta": {"device": "NVIDIA H100 80GB HBM3", "sm_count": 132, "commit": "abc123" * 7,
                    "dirty": False},
           "dtype": "bf16", "methods": methods, "repeats": 15, "quick": False,
           "ceiling": {"copy_gbps": 2997.0, "read_gbps": 3000.0, "used": "read"},
           "rows": rows}
    rep["bar"] = st.check_bar(rows, latency_shape=shp.LATENCY_SHAPE)
    return rep


def test_format_table():
    rep = fake_report()
    text = rpt.format_table(rep)
    lines = text.splitlines()
    assert "NVIDIA H100" in lines[0] and "132 SMs" in lines[0] and "abc123abc123" in lines[0]
    assert "read-only reduction 3000 GB/s" in text and "copy 2997 GB/s" in text
    assert "used for floor and %" in text
    for s in shp.default_grid():
        assert s.label() in text
    assert "FAILED 3.0e-01" in text
    assert "n/a" in text and "unsupported" in text
    assert "geomean(ours / best peer): " in text
    assert text.count("PERF.md bar:") == 1
    assert "notes:" in text and "cudnn: no GQA" in text
    # ours is 1.1x floor; best peer (next column) 1.2x -> ratio 1.1/1.2
    row0 = next(l for l in lines if l.startswith("32/8 D128 B1 K8192"))
    assert f"{1.1 / 1.2:5.2f} (sdpa-flash)" in row0
    assert "FAIL" in rpt.format_bar(rep["bar"])      # 0.917 > 0.90


def test_format_cell():
    assert rpt.format_cell({"status": "ok", "us": 20.6, "gbps": 1630.0, "pct": 53.4}) == \
        "   20.6  1630  53%"
    assert rpt.format_cell({"status": "error"}) == "error"
    assert rpt.format_cell(None) == "-"


def test_json_round_trip():
    rep = fake_report()
    data = json.loads(rpt.to_json(rep))
    assert data["meta"]["device"].startswith("NVIDIA")
    assert len(data["rows"]) == 10
    r0 = data["rows"][0]
    assert r0["shape"] == {"B": 1, "Hq": 32, "Hkv": 8, "K": 8192, "D": 128}
    assert r0["label"] == "32/8 D128 B1 K8192"
    assert r0["best_peer"] == "sdpa-flash"
    assert r0["ratio_to_best_peer"] == pytest.approx(1.1 / 1.2)
    assert r0["results"]["flashdecoding"]["samples_us"] == \
        rep["rows"][0]["results"]["flashdecoding"]["samples_us"]
    assert data["bar"]["geomean"]["value"] == pytest.approx(rep["bar"]["geomean"]["value"])
    assert rpt._jsonable(float("nan")) is None


def test_csv():
    rep = fake_report()
    rows = list(csv.DictReader(io.StringIO(rpt.to_csv(rep))))
    assert len(rows) == 10 * len(st.METHODS)
    ours = [r for r in rows if r["method"] == "flashdecoding"]
    assert all(r["ratio_to_best_peer"] for r in ours)
    failed = [r for r in rows if r["status"] == "FAILED"]
    assert len(failed) == 1 and failed[0]["us"] == "" and "not timed" in failed[0]["note"]


# ------------------------------------------------------------------ plot

def test_png_writer_round_trip():
    c = png.Canvas(20, 10)
    c.rect(2, 3, 5, 6, (10, 20, 30))
    c.text(8, 1, "9%", scale=1)
    w, h, px = png.read_png_rgb(c.to_png())
    assert (w, h) == (20, 10)
    assert px[3 * (4 * 20 + 3):3 * (4 * 20 + 3) + 3] == bytes((10, 20, 30))
    assert px[:3] == b"\xff\xff\xff"
    assert c.get(8, 1) == (0, 0, 0)           # top-left pixel of '9' is ink
    with pytest.raises(ValueError):
        png.read_png_rgb(b"not a png")


def test_every_label_char_has_a_glyph():
    text = "".join(s.label() for s in shp.default_grid()) + "".join(st.METHODS)
    text += "flashdecoding bench: NVIDIA H100 80GB HBM3, bf16, % of read-only (3049 GB/s)"
    missing = {ch for ch in text if ch.upper() not in png._GLYPHS}
    assert not missing


def test_plot_builtin(tmp_path):
    rep = fake_report()
    path = tmp_path / "p.png"
    assert plot.write_png(rep, str(path), backend="builtin") == "builtin"
    w, h, px = png.read_png_rgb(path.read_bytes())
    assert w > 600 and h > 400
    colors = {bytes(c) for c in plot.PALETTE[:len(st.METHODS)]}
    seen = {px[i:i + 3] for i in range(0, len(px), 3)}
    assert colors <= seen                      # every method has bars
    labels, methods, pct = plot.plot_data(rep)
    assert pct[1][methods.index("sdpa-flash")] is None
    assert pct[0][0] == pytest.approx(rep["rows"][0]["results"]["flashdecoding"]["pct"])


def test_plot_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "m.png"
    assert plot.write_png(fake_report(), str(path), backend="matplotlib") == "matplotlib"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ progress, meta

def test_progress_plain():
    buf = io.StringIO()
    p = prog.progress(4, use_tqdm=False, stream=buf)
    p.set_description("32/8 D128 B1 K512 fi-cc")
    p.update()
    p.update()
    p.close()
    out = buf.getvalue()
    assert "2/4" in out and "fi-cc" in out
    null = prog.progress(4, enabled=False, stream=buf)
    null.update()
    null.close()


def test_commit_info(tmp_path):
    info = meta.commit_info(repo=tmp_path, env={"FD_COMMIT": "deadbeef"})
    assert info == {"commit": "deadbeef", "dirty": None, "source": "FD_COMMIT"}
    assert meta.commit_info(repo=tmp_path, env={})["commit"] is None
    # FD_COMMIT wins over a repository's git (a device copy's .git may be stale).
    repo = meta.REPO_ROOT
    assert meta.commit_info(repo=repo, env={"FD_COMMIT": "feed"})["commit"] == "feed"
    assert set(meta.host_info()) == {"python", "platform", "hostname"}


# ------------------------------------------------------------------ argument parsing

def test_parse_args_defaults():
    a = bench.parse_args([])
    assert a.shapes == shp.default_grid()
    assert a.methods == list(st.METHODS)
    assert a.dtype == "bf16" and a.repeats == 15 and a.repeats >= 7
    q = bench.parse_args(["--quick"])
    assert q.repeats == 7


def test_parse_args_options():
    a = bench.parse_args(["--shape", "1,32,8,512,128", "--shape", "2,8,1,100,64",
                          "--dtype", "f16", "--methods", "peers,ours,fi-cc",
                          "--json", "x.json", "--png", "x.png", "--csv", "x.csv",
                          "--repeats", "9", "--require-bar"])
    assert [s.label() for s in a.shapes] == ["32/8 D128 B1 K512", "8/1 D64 B2 K100"]
    assert a.dtype == "f16" and a.repeats == 9 and a.require_bar
    assert a.methods == ["sdpa-flash", "sdpa-cudnn", "fi-cc", "fi-tc", "flashdecoding"]
    assert (a.json, a.png, a.csv) == ("x.json", "x.png", "x.csv")


@pytest.mark.parametrize("argv", [["--shape", "1,2,3"], ["--methods", "cublas"],
                                  ["--dtype", "f32"], ["--repeats", "0"],
                                  ["--touch-gib", "-1"], ["--methods", ","]])
def test_main_usage_errors_return_2(argv, capsys):
    assert bench.main(argv) == 2
    assert "usage" in capsys.readouterr().err


def test_main_help_returns_0(capsys):
    assert bench.main(["--help"]) == 0
    assert "--shape B,Hq,Hkv,K,D" in capsys.readouterr().out


@pytest.mark.skipif(HAVE_TORCH, reason="checks the no-torch message; torch is installed")
def test_main_without_torch_returns_2(capsys):
    assert bench.main(["--quick"]) == 2
    assert "needs PyTorch" in capsys.readouterr().err


def test_script_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--help"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "flashdecoding bench" in r.stdout


# ------------------------------------------------------------------ orchestration with fakes

class FakeOut:
    def __init__(self, err, us):
        self.err, self.us = err, us

    def clone(self):
        return self


class FakeGPU:
    TORCH_DTYPE = {"bf16": "bf16", "f16": "f16"}

    def __init__(self):
        self.timed = []

    def sync(self):
        pass

    def bits_equal(self, a, b):
        return a is b

    def release_memory(self):
        pass

    def free_bytes(self):
        return 64 << 30

    def reference(self, q, k, v, scale):
        return "ref"

    def rel_err(self, out, ref):
        assert ref == "ref"
        return out.err

    def time_graph(self, calls, n_calls, repeats, warmup):
        assert n_calls % len(calls) == 0
        us = calls[0]().us
        self.timed.append(us)
        return [us * (1 + 0.001 * i) for i in range(repeats)]


def make_fake_mt(behaviour):
    """behaviour: method -> ("ok", err, us) | ("na",) | ("unsup",) | ("raise",) | ("boom",)."""
    mt = SimpleNamespace()

    class NotAvailable(Exception):
        pass

    class Unsupported(Exception):
        pass

    class ShapeData:
        def __init__(self, shape, dtype, tdtype, R, seed):
            self.shape, self.dtype, self.R = shape, dtype, R
            self.q = "q"
            self.k = ["k"] * R
            self.v = ["v"] * R
            self.scale = 1 / math.sqrt(shape.D)
            self.released = []

        def release_paged(self):
            self.released.append("paged")

        def release(self):
            self.released.append("all")

    def prepare(name, data):
        b = behaviour[name]
        if b[0] == "na":
            raise NotAvailable("no lib")
        if b[0] == "unsup":
            raise Unsupported("refuses GQA")
        if b[0] == "raise":
            raise RuntimeError("plan failed\nsecond line")
        out = FakeOut(b[1], b[2])
        calls = [(lambda: out)] * data.R
        if b[0] == "boom":
            def bad():
                raise RuntimeError("illegal memory access")
            calls = [bad] * data.R
        return SimpleNamespace(calls=calls, extra={"sku": "fake"},
                               poison=(lambda: None) if name == st.OURS else None)

    mt.NotAvailable, mt.Unsupported, mt.ShapeData, mt.prepare = (
        NotAvailable, Unsupported, ShapeData, prepare)
    return mt


def test_run_shape_statuses():
    args = bench.parse_args(["--quick", "--no-progress"])
    gpu = FakeGPU()
    mt = make_fake_mt({"flashdecoding": ("ok", 1e-3, 9.0), "sdpa-flash": ("ok", 0.5, 1.0),
                       "sdpa-cudnn": ("unsup",), "fi-cc": ("na",), "fi-tc": ("raise",)})
    ceiling = {"read_gbps": 3000.0, "copy_gbps": 2900.0}
    bar = prog.progress(5, enabled=False)
    s = shp.LATENCY_SHAPE
    row = bench._run_shape(s, args, ceiling, bar, gpu, mt)
    r = row["results"]
    assert r["flashdecoding"]["status"] == "ok"
    assert r["flashdecoding"]["us"] == pytest.approx(9.0 * 1.003)      # median of 7
    assert r["flashdecoding"]["bit_identical_repeat"] is True
    assert r["flashdecoding"]["extra"] == {"sku": "fake"}
    assert r["flashdecoding"]["pct"] == pytest.approx(
        100 * shp.gbps_of(shp.problem_bytes(s, "bf16"), r["flashdecoding"]["us"]) / 3000.0)
    assert r["sdpa-flash"]["status"] == "FAILED" and "not timed" in r["sdpa-flash"]["note"]
    assert gpu.timed == [9.0]                       # the FAILED method was never timed
    assert r["sdpa-cudnn"]["status"] == "unsupported"
    assert r["fi-cc"]["status"] == "n/a"
    assert r["fi-tc"]["status"] == "error" and r["fi-tc"]["note"] == \
        "prepare: RuntimeError: plan failed"
    assert row["replicas"] == 512 and row["touched_bytes"] == 1 << 30

    rep = bench.build_report(args, {"device": "fake"}, {**ceiling, "used": "read"}, [row])
    assert bench.exit_code(rep, args) == 1                  # a FAILED check
    json.loads(rpt.to_json(rep))
    out = io.StringIO()
    bench.write_outputs(rep, SimpleNamespace(json=None, csv=None, png=None), out=out,
                        err=io.StringIO())
    assert "FAILED" in out.getvalue()


def test_run_shape_check_error_and_exit_codes(tmp_path):
    args = bench.parse_args(["--quick", "--methods", "flashdecoding,sdpa-cudnn",
                             "--shape", "1,32,8,512,128", "--require-bar",
                             "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"),
                             "--png", str(tmp_path / "r.png")])
    gpu = FakeGPU()
    ceiling = {"read_gbps": 3000.0, "copy_gbps": 2900.0, "used": "read"}
    mt = make_fake_mt({"flashdecoding": ("boom", 0.0, 1.0), "sdpa-cudnn": ("ok", 1e-3, 9.3)})
    row = bench._run_shape(args.shapes[0], args, ceiling, prog.progress(2, enabled=False), gpu, mt)
    assert row["results"]["flashdecoding"]["status"] == "error"
    assert "illegal memory access" in row["results"]["flashdecoding"]["note"]
    rep = bench.build_report(args, {"device": "fake"}, ceiling, [row])
    assert bench.exit_code(rep, args) == 3               # bar not met, nothing FAILED

    mt = make_fake_mt({"flashdecoding": ("ok", 1e-3, 4.0), "sdpa-cudnn": ("ok", 1e-3, 9.3)})
    row = bench._run_shape(args.shapes[0], args, ceiling, prog.progress(2, enabled=False), gpu, mt)
    rep = bench.build_report(args, {"device": "fake"}, ceiling, [row])
    assert rep["bar"]["latency"]["pass"] is True
    bench.write_outputs(rep, args, out=io.StringIO(), err=io.StringIO())
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["label"] == \
        "32/8 D128 B1 K512"
    assert (tmp_path / "r.csv").read_text().startswith("label,")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_run_shape_input_failure():
    args = bench.parse_args(["--quick", "--methods", "flashdecoding,fi-cc"])
    mt = make_fake_mt({})

    def boom(*a, **k):
        raise MemoryError("CUDA out of memory")
    mt.ShapeData = boom
    row = bench._run_shape(shp.LATENCY_SHAPE, args, {"read_gbps": 3000.0}, prog.progress(
        2, enabled=False), FakeGPU(), mt)
    assert {r["status"] for r in row["results"].values()} == {"error"}
    assert "out of memory" in row["results"]["fi-cc"]["note"]


def test_replicas_shrink_to_free_memory():
    args = bench.parse_args([])
    s = shp.Shape(B=1, Hq=8, Hkv=8, K=4096, D=128)      # 16 MiB of KV
    assert bench._replicas_for(s, args, 64 << 30, True) == 64
    assert bench._replicas_for(s, args, 1 << 30, True) < 64
    assert bench._replicas_for(s, args, 1, True) == 2


# ------------------------------------------------------------------ pieces that need torch

@needs_torch
def test_reference_and_rel_err_cpu():
    import torch
    gpu = _load("_bench_gpu")
    g = torch.Generator().manual_seed(0)
    B, Hq, Hkv, K, D = 2, 8, 2, 33, 16
    q = torch.randn(B, Hq, D, generator=g)
    k = torch.randn(B, Hkv, K, D, generator=g)
    v = torch.randn(B, Hkv, K, D, generator=g)
    ref = gpu.reference(q, k, v, 1 / math.sqrt(D))
    kk = k.repeat_interleave(Hq // Hkv, dim=1).double()
    vv = v.repeat_interleave(Hq // Hkv, dim=1).double()
    p = torch.softmax(torch.einsum("bhd,bhkd->bhk", q.double(), kk) / math.sqrt(D), -1)
    exp = torch.einsum("bhk,bhkd->bhd", p, vv)
    assert gpu.rel_err(ref, exp.float()) < 1e-5
    bad = ref.clone()
    bad[0, 0, 0] = float("nan")
    assert gpu.rel_err(bad, ref) == math.inf


@needs_torch
def test_to_pages_cpu():
    import torch
    mt = _load("_bench_methods")
    x = torch.randn(2, 3, 2, 37, 8)                          # K=37: 3 pages, last has 5
    p = mt._to_pages(x)
    assert p.shape == (2, 3 * 3, 2, 16, 8)
    for r in range(2):
        for b in range(3):
            for t in (0, 15, 16, 36):
                page, off = divmod(t, 16)
                assert torch.equal(p[r, b * 3 + page, :, off], x[r, b, :, t])


def test_real_package_exposes_main():
    try:
        mod = importlib.import_module("flashdecoding.bench")
    except Exception as e:
        pytest.skip(f"flashdecoding package not importable here: {e}")
    assert callable(mod.main)
