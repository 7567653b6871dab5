"""Getting numpy arrays into the shapes and dtypes the core reads, without
copying when they already are."""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import Any, Tuple

import numpy as np

from ._errors import DtypeError


@lru_cache(maxsize=None)
def bfloat16() -> np.dtype:
    """ml_dtypes' bfloat16 dtype.

    ml_dtypes (which gives numpy its bfloat16 and float8 dtypes) is imported
    here, on first use, rather than with quantdrift: it can take a second to
    import, and most calls and CLI commands never need it.
    """
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def as_dtype(spec: Any) -> np.dtype:
    """``np.dtype(spec)``, also for ml_dtypes' names ("bfloat16",
    "float8_e4m3fn", ...) before ml_dtypes is imported."""
    try:
        return np.dtype(spec)
    except TypeError:
        import ml_dtypes  # noqa: F401  (registers its dtypes with numpy)

        return np.dtype(spec)


def is_bfloat16(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is ml_dtypes' bfloat16. Imports nothing: no array
    can have that dtype before ml_dtypes is imported."""
    return "ml_dtypes" in sys.modules and dtype == bfloat16()


SCORE_DTYPES = "float32, float64, float16 or bfloat16"

# torch dtypes that numpy lacks; ml_dtypes has each under the same name
_TORCH_ML_DTYPES = frozenset(
    {"bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"}
)


def from_torch(x: Any, name: str) -> Any:
    """A torch tensor in CPU memory as a numpy array sharing that memory
    (bfloat16 and float8 tensors as ml_dtypes' types, which numpy lacks);
    anything else as it is.

    Tensors that require grad are read through ``detach()`` (nothing is
    written to them). A tensor on another device raises InputError rather
    than being copied behind the caller's back. Torch is never imported
    here: without it in ``sys.modules`` no tensor can exist.
    """
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(x, torch.Tensor):
        return x
    t = x.detach()
    if t.device.type != "cpu":
        from ._errors import InputError

        raise InputError(f"{name} is a torch tensor on {t.device}; quantdrift reads CPU memory: "
                         f"pass {name}.cpu()")
    if t.is_conj() or t.is_neg():
        # lazily conjugated or negated views: numpy cannot share them, so
        # these (rare) ones are materialised
        t = t.resolve_conj().resolve_neg()
    kind = str(t.dtype).removeprefix("torch.")
    if kind in _TORCH_ML_DTYPES:
        bits = torch.int16 if t.element_size() == 2 else torch.uint8
        return t.view(bits).numpy().view(as_dtype(kind))
    return t.numpy()


def as_scores(x: Any, name: str) -> Tuple[np.ndarray, str]:
    """Returns ``(array, dtype16)``: float32/float64 arrays as they are, and
    float16/bfloat16 arrays as uint16 views named by ``dtype16``.

    Integer and other inputs raise DtypeError; lists become float64;
    big-endian arrays are byte-swapped into native copies; CPU torch tensors
    are read in place (see :func:`from_torch`).
    """
    x = from_torch(x, name)
    arr = np.asarray(x)
    if not arr.dtype.isnative:
        # Big-endian data (read from a file written on another machine): the
        # kernels read native floats, so it is byte-swapped into a copy.
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.float32 or arr.dtype == np.float64:
        return arr, "float32"
    if arr.dtype == np.float16:
        return arr.view(np.uint16), "float16"
    if is_bfloat16(arr.dtype):
        return arr.view(np.uint16), "bfloat16"
    if arr.dtype.kind in "iub" and not isinstance(x, np.ndarray):
        return arr.astype(np.float64), "float32"
    raise DtypeError(f"{name} must be {SCORE_DTYPES}, got dtype {arr.dtype}")


def rows_along(
    arr: np.ndarray, axis: int, name: str, what: str = "vocabulary"
) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """Moves ``axis`` last and flattens the rest: returns a C-contiguous
    ``(rows, vocab)`` matrix and the batch shape of the result. ``what``
    names the axis in errors (the vocabulary, or the block axis)."""
    if arr.ndim == 0:
        from ._errors import ShapeError

        raise ShapeError(f"{name} must have at least one axis (the {what}), got a scalar")
    try:
        moved = np.moveaxis(arr, axis, -1)
    except np.exceptions.AxisError if hasattr(np, "exceptions") else np.AxisError as e:  # type: ignore[attr-defined]
        from ._errors import ShapeError

        raise ShapeError(f"axis {axis} is out of range for {name} of shape {arr.shape}") from e
    batch = moved.shape[:-1]
    rows = int(np.prod(batch, dtype=np.int64))
    if rows > 0 and moved.shape[-1] == 0:
        from ._errors import ShapeError

        raise ShapeError(f"the {what} axis has length 0 in {name} of shape {arr.shape}")
    return np.ascontiguousarray(moved).reshape(rows, moved.shape[-1]), batch


def check_int64_labels(labels: np.ndarray, problem: str) -> None:
    """Refuses unsigned labels past int64's range, which the core takes them
    as, naming the value as given (a cast would report a negative number):
    ``labels[i] = v {problem}``."""
    if labels.dtype.kind == "u" and labels.size and int(labels.max()) > np.iinfo(np.int64).max:
        flat = labels.reshape(-1)
        i = int(np.argmax(flat > np.iinfo(np.int64).max))
        from ._errors import InputError

        raise InputError(f"labels[{i}] = {int(flat[i])} {problem}")
