#!/usr/bin/env python3
"""Run the flashdecoding benchmark from a checkout: ``python3 scripts/bench.py [--help]``.

The same as ``python -m flashdecoding bench`` (the ``flashdecoding.bench``
package); puts the checkout's python/ first on the path (``PYTHONPATH=python``
works too).  If the package itself cannot be imported (e.g. its native library
is not built), the bench still runs its peers and reports flashdecoding "n/a".
docs/PERFORMANCE.md describes the method and the bar.
"""

import importlib
import pathlib
import sys
import types

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))


def _bench_main():
    try:
        from flashdecoding.bench import main
        return main
    except Exception as e:  # the package __init__ may need the native library
        print(f"note: import flashdecoding failed ({type(e).__name__}: {e}); "
              "running the bench without it", file=sys.stderr)
    name = "_flashdecoding_bench_standalone"
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(ROOT / "python" / "flashdecoding")]
    sys.modules[name] = pkg
    return importlib.import_module(f"{name}.bench").main


if __name__ == "__main__":
    sys.exit(_bench_main()())
