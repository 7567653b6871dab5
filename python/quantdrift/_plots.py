"""Figures of reports (matplotlib, an optional extra: ``pip install quantdrift[plot]``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from ._errors import InputError, QuantdriftError
from ._files import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from .report import Report


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the install
        raise QuantdriftError(
            "plots need matplotlib: pip install 'quantdrift[plot]' (or pip install matplotlib)"
        ) from e
    return plt


def check_format(path, flag: str = "plot") -> None:
    """Refuses, before the work that leads to a figure, a file name whose
    extension matplotlib cannot write (or any plot without matplotlib)."""
    _pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    path = os.fspath(path)
    fmt = _format(path)
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise InputError(f"{flag} {path}: matplotlib cannot write .{fmt} files; use one of "
                         f"{', '.join('.' + f for f in sorted(supported))}")


def _format(path: str) -> str:
    return os.path.splitext(path)[1].lstrip(".").lower() or "png"


def save(fig, path) -> None:
    """Saves a figure atomically, in the format the file name's extension names."""
    path = os.fspath(path)
    fmt = _format(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight")


def plot_report(report: "Report", path) -> None:
    """KL histogram on a log axis, its CDF, and the mean KL per position."""
    plt = _pyplot()
    kl = report.kl.astype(np.float64)
    positive = kl[kl > 0]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    if positive.size:
        lo, hi = positive.min(), positive.max()
        bins = np.geomspace(lo, hi * (1 + 1e-9), 60) if hi > lo else 10
        ax.hist(positive, bins=bins, color="#4c72b0")
        ax.set_xscale("log")
    ax.set_xlabel("KL(base‖other) per token, nats")
    ax.set_ylabel("tokens")
    ax.set_title(f"{report.n_tokens} tokens, mean KL {kl.mean() if kl.size else float('nan'):.4g}")

    ax = axes[1]
    if positive.size:
        xs = np.sort(positive)
        ax.plot(xs, np.arange(1, xs.size + 1) / kl.size, color="#4c72b0")
        ax.set_xscale("log")
    ax.set_xlabel("KL per token, nats")
    ax.set_ylabel("fraction of tokens ≤ x")
    ax.set_title("CDF")
    ax.grid(alpha=0.3)

    ax = axes[2]
    per_pos = report.per_position()
    if per_pos.size:
        ax.plot(np.arange(per_pos.size), per_pos, color="#dd8452")
        ax.set_xlabel("position in sequence")
        ax.set_title("mean KL by position")
    elif kl.size:
        window = max(1, kl.size // 200)
        smooth = np.convolve(kl, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(smooth.size), smooth, color="#dd8452")
        ax.set_xlabel("token")
        ax.set_title(f"KL, moving mean over {window} tokens")
    ax.set_ylabel("KL, nats")
    ax.grid(alpha=0.3)
    fig.suptitle(f"{report.other_name} vs {report.base_name}")
    fig.tight_layout()
    try:
        save(fig, path)
    finally:
        plt.close(fig)
