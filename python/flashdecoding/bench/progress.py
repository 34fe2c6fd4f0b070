"""A progress bar on stderr: tqdm when importable, else one rewritten line."""

from __future__ import annotations

import sys
import time


class _Plain:
    def __init__(self, total, stream):
        self.total, self.n, self.stream = total, 0, stream
        self.t0 = time.monotonic()
        self.desc = ""
        self._tty = hasattr(stream, "isatty") and stream.isatty()

    def set_description(self, desc):
        self.desc = desc
        self._draw()

    def update(self, k=1):
        self.n += k
        self._draw()

    def _draw(self):
        width = 24
        done = int(width * self.n / self.total) if self.total else width
        bar = "#" * done + "." * (width - done)
        line = (f"[{bar}] {self.n}/{self.total} {time.monotonic() - self.t0:5.0f}s "
                f"{self.desc}")
        if self._tty:
            self.stream.write("\r" + line[:118].ljust(118))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


class _Null:
    def set_description(self, desc):
        pass

    def update(self, k=1):
        pass

    def close(self):
        pass


def progress(total: int, enabled: bool = True, use_tqdm: bool = True, stream=None):
    """An object with ``set_description``, ``update`` and ``close``."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return _Null()
    if use_tqdm:
        try:
            from tqdm import tqdm
        except Exception:
            pass
        else:
            return tqdm(total=total, file=stream, dynamic_ncols=True, leave=True)
    return _Plain(total, stream)
