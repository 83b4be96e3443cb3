"""Resident memory of the benchmarks' processes (Linux /proc).

`ru_maxrss` is no use for a child process: Linux carries the parent's peak over a fork and
exec, so a child started by a large parent reports the parent's peak. VmHWM belongs to the
process's own address space and can be reset.
"""

from __future__ import annotations

from pathlib import Path


def _status_kib(pid: int | str, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return float(line.split()[1])
    return 0.0


def peak_rss_mib() -> float:
    """Peak resident set size of this process (since it started or since reset_peak_rss)."""
    return _status_kib("self", "VmHWM") / 1024


def reset_peak_rss() -> None:
    """Make this process's current resident set size its peak (Linux 4.0+)."""
    Path("/proc/self/clear_refs").write_text("5")


def process_tree_rss_mib(pid: int) -> float:
    """Current resident set size of a process and its descendants, 0 when gone."""
    try:
        own = _status_kib(pid, "VmRSS") / 1024
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    return own + sum(process_tree_rss_mib(int(child)) for child in children)
