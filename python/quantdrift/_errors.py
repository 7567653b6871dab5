"""The exception hierarchy of quantdrift.

Every error quantdrift raises on purpose is a :class:`QuantdriftError`.
Errors caused by the caller's input also subclass :class:`ValueError` (and
:class:`TypeError` for dtypes), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "QuantdriftError", "InputError", "ShapeError", "DtypeError", "FormatError", "GpuError",
    "GpuUnavailableError",
]


class QuantdriftError(Exception):
    """Base class of every quantdrift error."""


class InputError(QuantdriftError, ValueError):
    """An argument's value is invalid (NaN, +inf, an unknown option...)."""


class ShapeError(InputError):
    """Arguments have incompatible or invalid shapes."""


class DtypeError(InputError, TypeError):
    """An argument has a dtype the operation does not accept."""


class FormatError(InputError):
    """A file is not what its format says: bad magic, a corrupt header, or a
    size that disagrees with its header (a truncated file)."""


class GpuError(QuantdriftError, RuntimeError):
    """The GPU failed: a shader did not compile, the device was lost, a
    buffer could not be read back."""


class GpuUnavailableError(GpuError):
    """``device="gpu"`` was asked for and no GPU adapter exists. The message
    says how to get one; ``device="auto"`` falls back to the CPU instead."""
