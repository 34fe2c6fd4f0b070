"""Checks the machine code of a build for memory instructions whose
descriptor register nothing writes (a ptxas 13.0 fault seen on the
contiguous kernels' evict-first copies: LDGSTS desc[UR1] with UR1 never set,
an illegal instruction at run time). A measurement/guard tool, not part of the
product: reads `cuobjdump -sass` output.

    cuobjdump -sass build/libflashdecoding.so > sass.txt && python3 tools/sass_check.py sass.txt

Exit status 1 (and the kernels named) when any kernel has such an instruction."""
from __future__ import annotations

import re
import subprocess
import sys


def kernels(path):
    out, cur = {}, None
    for line in open(path):
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = m.group(1)
            out[cur] = []
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,5})\*/\s+(.*?);", line)
        if m and cur:
            out[cur].append(m.group(2))
    return out


def unwritten_descriptors(ins):
    """Uniform registers named as desc[URx] that no instruction of the kernel writes."""
    written = set()
    for i in ins:
        t = i.split()
        if t and t[0].startswith("@"):
            t = t[1:]
        if len(t) > 1:
            d = t[1].rstrip(",")
            written.add(d)
            m = re.match(r"UR(\d+)$", d)
            if m and (".64" in t[0] or "WIDE" in t[0]):
                written.add(f"UR{int(m.group(1)) + 1}")
    used = set(re.findall(r"desc\[(UR\d+)\]", " ".join(ins)))
    return sorted(u for u in used if u not in written)


def main(argv):
    bad = 0
    for name, ins in kernels(argv[1]).items():
        miss = unwritten_descriptors(ins)
        if miss:
            bad += 1
            try:
                name = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip()
            except OSError:
                pass
            print(f"unwritten descriptor {miss}: {name}")
    print(f"sass_check: {bad} kernel(s) with unwritten descriptor registers")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
