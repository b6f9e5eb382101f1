"""Peak memory of a process, as the benchmarks report it.

Read from ``/proc/<pid>/status`` (VmHWM), not from getrusage's ``ru_maxrss``: Linux
carries that over from the parent across exec, so a child of a big parent would report
the parent's peak. Kept free of heavy imports: the sync child measures itself with it.
"""

from __future__ import annotations

from pathlib import Path


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """The process's peak resident memory in MiB; None once the process is gone."""
    status = Path(f"/proc/{pid}/status")
    try:
        text = status.read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None
