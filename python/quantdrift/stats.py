"""Error statistics of a rounding or quantization (shared by the
low-precision and the integer quantization modules)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Union

import numpy as np

from . import _core
from ._arrays import as_scores
from ._errors import InputError, ShapeError
from .formats import FloatFormat, get

__all__ = ["ErrorStats", "error_stats"]


@dataclass(frozen=True)
class ErrorStats:
    """How far a reconstruction ``y`` is from the original ``x``.

    The moments use the pairs where x and y are both finite (``n_finite``
    of ``n``); the counts cover every element.

    Attributes:
        n: number of elements.
        n_finite: pairs with x and y both finite.
        mse: mean of (x − y)². rmse: its square root.
        max_abs: max |x − y|.
        sqnr_db: 10·log10(Σx² / Σ(x − y)²) (torchao's ``compute_error``);
            +inf when y equals x.
        cosine: Σxy / √(Σx²·Σy²); NaN when either norm is zero.
        n_saturated: finite x with |x| > clip.
        n_flushed: finite nonzero x whose y is 0.
        n_nan: NaN elements of y. n_inf: ±Inf elements of y.
    """

    n: int
    n_finite: int
    mse: float
    rmse: float
    max_abs: float
    sqnr_db: float
    cosine: float
    n_saturated: int
    n_flushed: int
    n_nan: int
    n_inf: int

    def as_dict(self) -> Dict[str, Any]:
        """The fields as a plain dict (for JSON).

        Returns:
            ``{field: value}``.
        """
        return asdict(self)


def error_stats(x: Any, y: Any, *, clip: Union[None, float, str, FloatFormat] = None) -> ErrorStats:
    """Error statistics of ``y`` (reconstruction) against ``x`` (original).

    Args:
        x: original values (float32, float64, float16 or bfloat16).
        y: reconstruction of the same shape (any of those dtypes).
        clip: the saturation bound for ``n_saturated``: a number, or a
            format (name or FloatFormat) whose ``max`` is used. None uses the
            largest finite |y| (exact when clipping occurred; otherwise
            elements rounded down at the top count too).

    Returns:
        An :class:`ErrorStats`.

    Raises:
        ShapeError: x and y differ in shape.
        InputError: a negative or NaN clip, an unknown format name.
        DtypeError: non-float inputs.
    """
    xa, x16 = as_scores(x, "x")
    ya, y16 = as_scores(y, "y")
    if xa.shape != ya.shape:
        raise ShapeError(f"x has shape {xa.shape} but y has shape {ya.shape}; they must match")
    bound: Optional[float]
    if clip is None:
        bound = None
    elif isinstance(clip, (str, FloatFormat)):
        bound = get(clip, "clip").max
    else:
        try:
            bound = float(clip)
        except (TypeError, ValueError):
            raise InputError(f"clip must be a number, a format or None, got {clip!r}") from None
    d = _core.error_stats(
        np.ascontiguousarray(xa).reshape(-1),
        np.ascontiguousarray(ya).reshape(-1),
        clip=bound,
        x16=x16,
        y16=y16,
    )
    return ErrorStats(**d)
