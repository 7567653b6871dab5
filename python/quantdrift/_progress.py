"""Progress bars for long jobs (compare, quantize_file, the logit writers)."""

from __future__ import annotations

import sys
from typing import Any, Optional


class _Null:
    """A bar that shows nothing."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: Optional[bool], unit: str = "B") -> Any:
    """A tqdm bar of ``total`` units, or one that shows nothing.

    ``enabled=None`` lets tqdm decide: on stderr when it is a terminal (so
    logs and pipes stay clean), and as a widget in a Jupyter notebook
    (``tqdm.auto``); ``True`` always shows it, ``False`` never. tqdm is a
    dependency, but a missing one only hides the bar. ``unit="B"`` counts
    bytes with SI prefixes.
    """
    if enabled is False:
        return _Null()
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return _Null()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, file=sys.stderr,
                disable=None if enabled is None else False)
