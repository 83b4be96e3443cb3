"""Resident memory of the benchmarks' processes (Linux /proc).

`ru_maxrss` is no use for a child process: Linux carries the parent's peak over a fork and
exec, so a child started by a large parent reports the parent's peak. VmHWM belongs to the
process's own address space and can be reset. Summed over processes, RSS counts a page shared
by forks in each of them; PSS (smaps_rollup) divides it among them, so both are reported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
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


def _pss_kib(pid: int | str) -> float:
    """A process's proportional set size: each page shared with n processes counts 1/n."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return float(line.split()[1])
    return 0.0


def process_pss_mib(pid: int | str = "self") -> float:
    """Current proportional set size of one process (its children apart)."""
    return _pss_kib(pid) / 1024


def process_tree_pss_mib(pid: int) -> float:
    """Current proportional set size of a process and its descendants, 0 when gone: pages forks
    share (preloaded libraries, copy-on-write) count once in the sum, where summed RSS counts
    them in every process."""
    try:
        own = _pss_kib(pid) / 1024
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    return own + sum(process_tree_pss_mib(int(child)) for child in children)


class PeakSampler:
    """The peak of a memory figure sampled in a background thread while a block runs."""

    def __init__(self, sample: Callable[[], float], every_seconds: float = 0.2) -> None:
        self._sample, self._every = sample, every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="peak-sampler")
        self.peak = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self._every)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())
