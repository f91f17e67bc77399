"""Reading what the profilers wrote: py-spy's collapsed stacks, cProfile's pstats, tracemalloc's
snapshot, each reduced to the few lines that say where the time or the memory goes.

    python profiles.py py-spy FILE [--filter SUBSTRING]
    python profiles.py cprofile FILE
    python profiles.py tracemalloc FILE
"""

from __future__ import annotations

import argparse
import io
import pstats
import re
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

__all__ = ["summarize"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py:12)``, site-packages made short."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "vmlet_facade/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "vmlet_facade/":
                path = "vmlet_facade/" + path
            break
    return f"{m.group('func')} ({path})"


def py_spy(path: Path, top: int = 30, contains: str = "") -> str:
    """Self and inclusive sample counts per function of py-spy's ``--format raw`` output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        if contains and contains not in stack:
            continue
        count = int(count_text)
        frames = [_short(re.sub(r":\d+\)$", ")", f)) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or frames
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    out = io.StringIO()
    out.write(f"{total} samples\n-- self (on-CPU samples in the function itself) --\n")
    for frame, count in own.most_common(top):
        out.write(f"{100 * count / total:6.1f}%  {frame}\n")
    out.write("-- inclusive (samples with the function on the stack) --\n")
    for frame, count in inclusive.most_common(top):
        out.write(f"{100 * count / total:6.1f}%  {frame}\n")
    return out.getvalue()


def cprofile(path: Path, top: int = 30) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def _where(filename: str, lineno: int) -> str:
    parts = filename.split("/")
    return f"{'/'.join(parts[-2:])}:{lineno}"


def tracemalloc_top(path: Path, top: int = 15) -> str:
    """Live Python memory by allocating line, and by the chain of vmlet frames that led there."""
    snap = tracemalloc.Snapshot.load(str(path)).filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    ])
    out = io.StringIO()
    stats = snap.statistics("traceback")
    total = sum(s.size for s in stats)
    out.write(f"traced Python memory: {total / 2**20:.1f} MiB\n-- by allocating line --\n")
    for s in snap.statistics("lineno")[:top]:
        frame = s.traceback[0]
        out.write(f"{s.size / 2**20:7.2f} MiB {s.count:8d} blocks  "
                  f"{_where(frame.filename, frame.lineno)}\n")
    out.write("-- by the vmlet (and aiohttp/asyncio) frames of the allocation's stack, "
              "outermost first --\n")
    owners: Counter[str] = Counter()
    for s in stats:  # frames run from the oldest to the most recent call
        chain = [_where(f.filename, f.lineno) for f in s.traceback
                 if "vmlet" in f.filename and "bench/" not in f.filename]
        if not chain:
            chain = [_where(f.filename, f.lineno) for f in s.traceback][-2:]
        owners[" > ".join(chain)] += s.size
    for owner, size in owners.most_common(top):
        out.write(f"{size / 2**20:7.2f} MiB  {owner}\n")
    return out.getvalue()


def summarize(kind: str, path: Path, contains: str = "") -> str:
    if kind == "py-spy":
        return py_spy(path, contains=contains)
    if kind == "cprofile":
        return cprofile(path)
    return tracemalloc_top(path)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["py-spy", "cprofile", "tracemalloc"])
    p.add_argument("file", type=Path)
    p.add_argument("--filter", default="", help="py-spy: only stacks containing this")
    a = p.parse_args()
    sys.stdout.write(summarize(a.kind, a.file, a.filter))
