"""Timing shared by the benchmark scripts."""

from __future__ import annotations

import time
from typing import Callable, List, Sequence, Tuple


def best_interleaved(runs: Sequence[Tuple[Callable[[], object], int]], warm: bool = True) -> List[float]:
    """Best times (seconds) of (function, repeat) pairs called in turn,
    round after round (a function drops out after its repeat count), so
    that every one sees the same minutes of a shared host, whose speed
    drifts by tens of percent. With ``warm``, each runs once untimed first."""
    if warm:
        for fn, _ in runs:
            fn()
    times: List[List[float]] = [[] for _ in runs]
    for k in range(max((r for _, r in runs), default=0)):
        for (fn, r), ts in zip(runs, times):
            if k < r:
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
    return [min(ts) if ts else float("nan") for ts in times]
