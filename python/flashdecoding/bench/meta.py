"""Where a benchmark run came from: the commit ($FD_COMMIT, else git) and host."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]   # python/flashdecoding/bench/meta.py


def _git(args, cwd):
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _is_checkout(path: Path) -> bool:
    """A flashdecoding git checkout: a .git beside the package's sources."""
    return (path / ".git").exists() and (path / "python" / "flashdecoding" / "bench").is_dir()


def commit_info(repo=REPO_ROOT, env=None, cwd=None) -> dict:
    """{"commit", "dirty", "source"}: the environment's FD_COMMIT when set (a
    copy of the tree, as on the GPU machine, may carry a .git that is not its
    commit), else ``git rev-parse HEAD`` in the repository this file lives in,
    else in the working directory when that is a flashdecoding checkout (the
    package installed from it, as scripts/run.sh does, lives in site-packages,
    outside any repository)."""
    env = os.environ if env is None else env
    if env.get("FD_COMMIT"):
        return {"commit": env["FD_COMMIT"], "dirty": None, "source": "FD_COMMIT"}
    cwd = Path.cwd() if cwd is None else Path(cwd)
    roots = [(Path(repo), "git")] if (Path(repo) / ".git").exists() else []
    if _is_checkout(cwd):
        roots.append((cwd, "git (working directory)"))
    for root, source in roots:
        sha = _git(["rev-parse", "HEAD"], root)
        if sha:
            dirty = _git(["status", "--porcelain", "--untracked-files=no"], root)
            return {"commit": sha, "dirty": bool(dirty), "source": source}
    return {"commit": None, "dirty": None, "source": None}


def host_info() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "hostname": platform.node()}
