"""The GPU backend: which adapter quantdrift computes on, and where ``device=``
sends work.

Functions with a GPU kernel take ``device="cpu"`` (the default), ``"gpu"`` or
``"auto"``. The GPU runs on wgpu (Vulkan on Linux and Windows, Metal on Apple,
DX12 on Windows); results equal the CPU's bit for bit for codes and rounding,
and within 1e-5 relative (1e-7 absolute, for the tiny divergences of
near-equal rows, which are at float32 noise level) for divergences.

* ``"gpu"`` raises :class:`GpuUnavailableError` when no adapter exists.
* ``"auto"`` uses the GPU when a hardware adapter exists and the work is large
  enough to repay the transfers (:data:`AUTO_MIN_ELEMENTS`), else the CPU. A
  software adapter (Mesa's lavapipe) is never chosen by ``"auto"``: it runs on
  the same CPU cores, slower than the CPU kernels.

Environment: ``QUANTDRIFT_GPU=off`` hides every adapter;
``QUANTDRIFT_GPU_ADAPTER=<substring>`` picks an adapter by name;
``QUANTDRIFT_GPU_FEATURES=none`` turns off the optional features (shader-f16,
subgroups), for testing the paths that run without them.
"""

from __future__ import annotations

import functools
from typing import Any, Dict

from . import _core
from ._errors import GpuUnavailableError, InputError

__all__ = ["available", "info", "AUTO_MIN_ELEMENTS", "GpuUnavailableError"]

#: ``device="auto"`` sends work of at least this many elements to a hardware GPU.
AUTO_MIN_ELEMENTS = 1 << 22

_DEVICES = ("cpu", "gpu", "auto")


def available() -> bool:
    """Whether a GPU adapter can be used. The first call creates the GPU
    context (adapter discovery, device creation), later calls are free."""
    return bool(_core.gpu_available())


def info() -> Dict[str, Any]:
    """The adapter quantdrift computes on.

    Returns a dict with ``adapter`` (its name), ``backend`` ("vulkan",
    "metal", "dx12"), ``device_type`` ("discrete", "integrated", "virtual",
    "cpu" for software adapters such as lavapipe), ``driver``, ``features``
    (the optional features in use: "shader-f16", "subgroups") and ``limits``
    (the limits that decide chunk sizes).

    Raises:
        GpuUnavailableError: no adapter exists; the message says how to get one.
    """
    return dict(_core.gpu_info())


@functools.lru_cache(maxsize=1)
def _hardware() -> bool:
    return available() and info()["device_type"] != "cpu"


def resolve(device: str, elements: int) -> str:
    """``"cpu"`` or ``"gpu"`` for a job of ``elements`` elements.

    Raises:
        InputError: ``device`` is not "cpu", "gpu" or "auto".
        GpuUnavailableError: ``device="gpu"`` without an adapter.
    """
    if device not in _DEVICES:
        raise InputError(f"device must be 'cpu', 'gpu' or 'auto', got {device!r}")
    if device == "auto":
        return "gpu" if elements >= AUTO_MIN_ELEMENTS and _hardware() else "cpu"
    if device == "gpu" and not available():
        info()  # raises GpuUnavailableError with the reason
    return device
