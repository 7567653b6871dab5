"""The exception hierarchy of quantdrift.

Every error quantdrift raises on purpose is a :class:`QuantdriftError`.
Errors caused by the caller's input also subclass :class:`ValueError` (and
:class:`TypeError` for dtypes), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["QuantdriftError", "InputError", "ShapeError", "DtypeError", "FormatError"]


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
