"""quantdrift: compress language models and measure what the compression did.

The compiled core (Rust, SIMD, multi-threaded) lives in ``quantdrift._core``;
this package is its documented face.

Divergences between next-token distributions::

    >>> import numpy as np, quantdrift as qd
    >>> p = np.array([[2.0, 1.0, 0.0]])
    >>> q = np.array([[2.0, 0.0, 1.0]])
    >>> qd.kl(p, q).round(4)    # = p[1] − p[2], as log(p/q) is +1 and −1 there
    array([0.1547])
"""

from __future__ import annotations

import os
import warnings

from . import _core
from ._errors import (
    DtypeError, FormatError, GpuError, GpuUnavailableError, InputError, QuantdriftError, ShapeError,
)
from .divergence import KINDS, distill_loss, divergence, js, kl
from . import formats, gpu
from .formats import FloatFormat
from .lowp import decode, encode, mx_decode, mx_encode, nvfp4_decode, nvfp4_encode, round_mixed, round_to
from .sources import LogitSource, check_pair, open_source, write_llamacpp_base, write_topk
from .stats import ErrorStats, error_stats
from .compare import compare
from .report import Report
from .llv import ModelMap
from .checkpoint import QuantizeReport, Recipe, dequantize_file, quantize_file
from .quant import (
    Partition,
    QuantizedTensor,
    blocks,
    dequantize,
    fake_quantize,
    groups,
    labels,
    per_axis,
    per_tensor,
    quantize,
)

__version__: str = _core.__version__

__all__ = [
    "__version__",
    "divergence",
    "kl",
    "js",
    "distill_loss",
    "KINDS",
    "formats",
    "FloatFormat",
    "round_to",
    "encode",
    "decode",
    "round_mixed",
    "mx_encode",
    "mx_decode",
    "nvfp4_encode",
    "nvfp4_decode",
    "error_stats",
    "compare",
    "Report",
    "ModelMap",
    "ErrorStats",
    "quantize",
    "dequantize",
    "fake_quantize",
    "QuantizedTensor",
    "Partition",
    "per_tensor",
    "per_axis",
    "groups",
    "blocks",
    "labels",
    "quantize_file",
    "dequantize_file",
    "Recipe",
    "QuantizeReport",
    "QuantdriftError",
    "InputError",
    "ShapeError",
    "DtypeError",
    "FormatError",
    "GpuError",
    "GpuUnavailableError",
    "gpu",
    "open_source",
    "LogitSource",
    "check_pair",
    "write_llamacpp_base",
    "write_topk",
    "isa",
    "num_threads",
]


def isa() -> str:
    """The instruction set the kernels use on this CPU: ``"avx512"``,
    ``"avx2+fma"``, ``"sse2"`` (x86-64), ``"neon"`` (aarch64) or
    ``"scalar"``. Setting ``QUANTDRIFT_ISA`` to ``sse2``, ``avx2`` or
    ``avx512`` before the first call caps it (to measure or test a narrower
    build); every build computes the same bits."""
    return _core.isa()


_ISA_CAPS = ("sse2", "baseline", "avx2", "avx2+fma", "avx512")
if os.environ.get("QUANTDRIFT_ISA", "").strip() not in _ISA_CAPS + ("",):
    warnings.warn(
        f"QUANTDRIFT_ISA={os.environ['QUANTDRIFT_ISA']!r} is not one of sse2, avx2, avx512; "
        "the widest instruction set of this CPU is used",
        RuntimeWarning,
        stacklevel=2,
    )


_threads = os.environ.get("QUANTDRIFT_NUM_THREADS", "").strip()
if _threads:
    _cores = os.cpu_count() or 1
    if not (_threads.isdigit() and int(_threads) > 0):
        warnings.warn(
            f"QUANTDRIFT_NUM_THREADS={_threads!r} is not a positive integer; the kernels use every core",
            RuntimeWarning,
            stacklevel=2,
        )
    elif int(_threads) > 8 * _cores:
        warnings.warn(
            f"QUANTDRIFT_NUM_THREADS={_threads} is more than 8 threads per core; the kernels use 8 per core",
            RuntimeWarning,
            stacklevel=2,
        )


def num_threads() -> int:
    """Threads the kernels run on; set ``QUANTDRIFT_NUM_THREADS`` before the
    first call to change it."""
    return _core.num_threads()
