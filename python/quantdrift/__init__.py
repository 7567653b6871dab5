"""quantdrift: compress language models and measure what the compression did.

The compiled core (Rust, SIMD, multi-threaded) lives in ``quantdrift._core``;
this package is its documented face.

Divergences between next-token distributions::

    >>> import numpy as np, quantdrift as qd
    >>> p = np.array([[2.0, 1.0, 0.0]])
    >>> q = np.array([[2.0, 0.0, 1.0]])
    >>> qd.kl(p, q).round(4)
    array([0.1636])
"""

from __future__ import annotations

from . import _core
from ._errors import DtypeError, InputError, QuantdriftError, ShapeError
from .divergence import KINDS, distill_loss, divergence, js, kl

__version__: str = _core.__version__

__all__ = [
    "__version__",
    "divergence",
    "kl",
    "js",
    "distill_loss",
    "KINDS",
    "QuantdriftError",
    "InputError",
    "ShapeError",
    "DtypeError",
    "isa",
    "num_threads",
]


def isa() -> str:
    """The instruction set the kernels use on this CPU (e.g. ``"avx512"``)."""
    return _core.isa()


def num_threads() -> int:
    """Threads the kernels run on; set ``QUANTDRIFT_NUM_THREADS`` before the
    first call to change it."""
    return _core.num_threads()
