"""Low-precision floating-point formats (lecture Def 3.1: a finite format F).

Every format ML uses today is predefined under its ml_dtypes name::

    >>> import quantdrift as qd
    >>> qd.formats.float8_e4m3fn.max
    448.0
    >>> qd.formats.float4_e2m1fn.values.tolist()
    [-6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]

and :class:`FloatFormat` builds any other format of up to 16 bits (the
lecture's general F_i). Special encodings (``special=``):

* ``"ieee"``: the all-ones exponent holds ±Inf (mantissa 0) and NaN;
* ``"fn"``: no Inf; only the all-ones code S.1…1.1…1 is NaN (float8_e4m3fn);
* ``"fnuz"``: no Inf and no −0; the code 1000…0 is the only NaN;
* ``"none"``: every code is a finite number (float6/float4).

float8_e8m0fnu (unsigned powers of two 2^(c−127), 0xFF = NaN, no zero) is
predefined; its special kind is ``"e8m0"``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from . import _core
from ._errors import InputError

__all__ = [
    "FloatFormat",
    "FORMATS",
    "get",
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e4m3b11fnuz",
    "float8_e4m3",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e3m4",
    "float8_e8m0fnu",
    "float6_e2m3fn",
    "float6_e3m2fn",
    "float4_e2m1fn",
]

_SPECIALS = ("ieee", "fn", "fnuz", "none", "e8m0")


class FloatFormat:
    """A binary floating-point format of at most 16 bits.

    Args:
        exponent_bits: width of the exponent field (≥ 1).
        mantissa_bits: width of the mantissa field (≥ 0); with the sign bit
            the code has ``1 + exponent_bits + mantissa_bits ≤ 16`` bits.
        bias: exponent bias; default ``2**(e-1) - 1`` (``2**(e-1)`` for
            ``"fnuz"``, as ml_dtypes does).
        special: ``"ieee"``, ``"fn"``, ``"fnuz"`` or ``"none"`` (see the
            module docstring).
        name: a label for repr; defaults to a description of the fields.

    Attributes:
        exponent_bits, mantissa_bits, bias, special, bits: the definition.
        max: largest finite value. min_normal: smallest positive normal.
        min_subnormal: smallest positive subnormal (None without subnormals).
        has_inf, has_nan: whether ±Inf / NaN exist.
        nan_code: the canonical NaN code (None without NaN).
        inf_code: the +Inf code (None without Inf).

    Raises:
        InputError: an invalid format, with the rule it breaks (too many
            bits, no exponent bit, a bias that puts values outside float32's
            range, Inf/NaN kinds the widths cannot hold).

    Example:
        >>> FloatFormat(4, 3, special="fn").max
        448.0
    """

    __slots__ = (
        "name",
        "exponent_bits",
        "mantissa_bits",
        "bias",
        "special",
        "bits",
        "max",
        "min_normal",
        "min_subnormal",
        "has_inf",
        "has_nan",
        "nan_code",
        "inf_code",
        "_nan_payload",
        "_values",
    )

    def __init__(
        self,
        exponent_bits: int,
        mantissa_bits: int,
        *,
        bias: Optional[int] = None,
        special: str = "ieee",
        name: Optional[str] = None,
    ) -> None:
        for arg, value in (("exponent_bits", exponent_bits), ("mantissa_bits", mantissa_bits)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise InputError(f"invalid FloatFormat: {arg} must be a non-negative int, got {value!r}")
        if bias is not None and (isinstance(bias, bool) or not isinstance(bias, (int, np.integer))):
            raise InputError(f"invalid FloatFormat: bias must be an int or None, got {bias!r}")
        if special not in _SPECIALS[:4] and not (special == "e8m0" and name == "float8_e8m0fnu"):
            raise InputError(
                f'invalid FloatFormat: special must be "ieee", "fn", "fnuz" or "none", got {special!r}'
            )
        if exponent_bits > 15 or mantissa_bits > 15:
            raise InputError(
                f"invalid FloatFormat: 1 sign + {exponent_bits} exponent + {mantissa_bits} "
                "mantissa bits exceeds 16 bits"
            )
        info = _core.lowp_format_info(int(exponent_bits), int(mantissa_bits), None if bias is None else int(bias), special)
        self.exponent_bits = int(exponent_bits)
        self.mantissa_bits = int(mantissa_bits)
        self.special = special
        self.bias: int = info["bias"]
        self.bits: int = info["bits"]
        self.max: float = info["max"]
        self.min_normal: float = info["min_normal"]
        self.min_subnormal: Optional[float] = info["min_subnormal"]
        self.has_inf: bool = info["has_inf"]
        self.has_nan: bool = info["has_nan"]
        self.nan_code: Optional[int] = info["nan_code"]
        self.inf_code: Optional[int] = info["inf_code"]
        self.name = name or f"FloatFormat(e{exponent_bits}m{mantissa_bits}, bias={self.bias}, special={special!r})"
        # numpy's float16 keeps NaN payload bits; ml_dtypes' formats do not.
        self._nan_payload = name == "float16"
        self._values: Optional[np.ndarray] = None

    @property
    def values(self) -> np.ndarray:
        """Every finite value of the format, ascending, as float64 (one zero).

        Returns:
            A read-only 1-D float64 array (2^bits codes decoded, NaN/Inf
            dropped, −0 merged with +0).
        """
        if self._values is None:
            every = np.arange(1 << self.bits, dtype=np.uint32)
            codes = every.astype(np.uint8) if self.bits <= 8 else every.astype(np.uint16)
            decoded = _core.lowp_decode(codes, self._spec()).astype(np.float64)
            values = np.unique(decoded[np.isfinite(decoded)]) + 0.0  # one zero, +0
            values.setflags(write=False)
            self._values = values
        return self._values

    def _spec(self) -> Tuple[int, int, int, str, bool]:
        return (self.exponent_bits, self.mantissa_bits, self.bias, self.special, self._nan_payload)

    def _key(self) -> Tuple[int, int, int, str, bool]:
        return self._spec()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FloatFormat) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        if self.name.startswith("FloatFormat("):
            return self.name
        return f"<FloatFormat {self.name}: e{self.exponent_bits}m{self.mantissa_bits} bias={self.bias} special={self.special!r}>"


FORMATS: Dict[str, FloatFormat] = {
    name: FloatFormat(e, m, bias=bias, special=special, name=name)
    for name, e, m, bias, special in _core.lowp_formats()
}

float16 = FORMATS["float16"]
bfloat16 = FORMATS["bfloat16"]
float8_e4m3fn = FORMATS["float8_e4m3fn"]
float8_e4m3fnuz = FORMATS["float8_e4m3fnuz"]
float8_e4m3b11fnuz = FORMATS["float8_e4m3b11fnuz"]
float8_e4m3 = FORMATS["float8_e4m3"]
float8_e5m2 = FORMATS["float8_e5m2"]
float8_e5m2fnuz = FORMATS["float8_e5m2fnuz"]
float8_e3m4 = FORMATS["float8_e3m4"]
float8_e8m0fnu = FORMATS["float8_e8m0fnu"]
float6_e2m3fn = FORMATS["float6_e2m3fn"]
float6_e3m2fn = FORMATS["float6_e3m2fn"]
float4_e2m1fn = FORMATS["float4_e2m1fn"]


def get(fmt: Union[str, FloatFormat, Any], arg: str = "fmt") -> FloatFormat:
    """Resolves a format given by name or as a :class:`FloatFormat`.

    Args:
        fmt: a predefined name (``"float8_e4m3fn"``), or a FloatFormat.
        arg: the argument name used in error messages.

    Returns:
        The FloatFormat.

    Raises:
        InputError: unknown name or wrong type; the message lists the names.
    """
    if isinstance(fmt, FloatFormat):
        return fmt
    if isinstance(fmt, str):
        try:
            return FORMATS[fmt]
        except KeyError:
            raise InputError(
                f"{arg}: unknown format {fmt!r}; valid names are {', '.join(FORMATS)}"
            ) from None
    raise InputError(f"{arg} must be a format name or a FloatFormat, got {type(fmt).__name__}")
