"""What the benchmark scripts say about the machine beside their figures: figures taken while other
work runs are not figures, so each script prints the 1-minute load average first."""
from __future__ import annotations

import os

LOAD_WARNING = 0.5  # a 1-minute load average above this: other processes distort the timings


def load_average() -> float:
    """The 1-minute load average (the first field of /proc/loadavg on Linux)."""
    return os.getloadavg()[0]


def load_line(load: float, when: str = "start", advice: str | None = "these figures are not reliable") -> str:
    """'1-minute load average at the start: 0.41', with the advice in brackets above LOAD_WARNING
    (none with advice None)."""
    warning = f"  (above {LOAD_WARNING}: {advice})" if advice and load > LOAD_WARNING else ""
    return f"1-minute load average at the {when}: {load:.2f}{warning}"
