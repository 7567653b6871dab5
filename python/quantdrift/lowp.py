"""Rounding to low-precision formats, block-scaled formats (MX, NVFP4).

All functions take numpy arrays of float32, float64, float16 or bfloat16
(ml_dtypes) and return numpy arrays; the work runs in Rust (SIMD + threads)
with the GIL released. With default options, :func:`encode` is bit-exact
with ``x.astype(ml_dtypes.<fmt>).view(uint8)`` (numpy's ``astype(float16)``
for float16) on float32/float16/bfloat16 input. float64 input is rounded
once, directly; ml_dtypes goes through float32 and can round twice.

Rounding modes (``rounding=``): ``"nearest_even"`` (default),
``"nearest_away"``, ``"toward_zero"``, ``"down"`` (toward −∞), ``"up"``
(toward +∞), ``"stochastic"`` (up with probability (|x| − lo)/(hi − lo),
quantised to 32 bits; the random draw of element i is a hash of
(seed, i), so a seed gives the same output whatever the thread count).

Overflow (``overflow=``) decides what a finite value becomes when its
rounded magnitude exceeds the format's max, whatever the rounding mode:
``"saturate"`` (±max), ``"inf"`` (±Inf), ``"nan"`` (NaN). ``None`` is
ml_dtypes' behaviour: Inf for IEEE-like formats, NaN for fn/fnuz/e8m0,
saturation for float6/float4. ±Inf inputs stay ±Inf where the format has
Inf and otherwise follow the overflow mode. NaN inputs become the format's
NaN (float6/float4 have none: ml_dtypes' −0/+0 codes are reproduced).

Packed 4-bit codes (``packed=True``): two codes per byte along the last
axis, element ``2j`` in the **low** nibble of byte ``j`` and element
``2j+1`` in the high nibble (the layout of torch's ``float4_e2m1fn_x2``);
a row of odd length ends in a zero high nibble.
"""

from __future__ import annotations

import secrets
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, gpu
from ._arrays import as_scores, check_int64_labels, rows_along
from ._errors import DtypeError, InputError, ShapeError
from .formats import FloatFormat, get

__all__ = [
    "round_to",
    "encode",
    "decode",
    "round_mixed",
    "mx_encode",
    "mx_decode",
    "nvfp4_encode",
    "nvfp4_decode",
    "ROUNDING_MODES",
    "MX_ELEMENTS",
    "MX_SCALE_MODES",
]

ROUNDING_MODES = ("nearest_even", "nearest_away", "toward_zero", "down", "up", "stochastic")
MX_ELEMENTS = ("fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1", "int8")
MX_SCALE_MODES = ("floor", "ceil", "even", "rceil")

FormatLike = Union[str, FloatFormat]


def _flat(x: Any, name: str = "x") -> Tuple[np.ndarray, str, Tuple[int, ...]]:
    """(C-contiguous 1-D array, what uint16 holds, original shape)."""
    arr, dtype16 = as_scores(x, name)
    return np.ascontiguousarray(arr).reshape(-1), dtype16, arr.shape


def _seed(seed: Optional[int], rounding: str) -> int:
    if rounding not in ROUNDING_MODES:
        raise InputError(f"rounding must be one of {', '.join(map(repr, ROUNDING_MODES))}, got {rounding!r}")
    if seed is None:
        # Unseeded stochastic rounding draws a fresh seed: reproducible only with one.
        return secrets.randbits(64) if rounding == "stochastic" else 0
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise InputError(f"seed must be an int in [0, 2**64) or None, got {seed!r}")
    return int(seed)


def _check_overflow(overflow: Optional[str]) -> None:
    if overflow is not None and overflow not in ("saturate", "inf", "nan"):
        raise InputError(f'overflow must be "saturate", "inf", "nan" or None, got {overflow!r}')


def round_to(
    x: Any,
    fmt: FormatLike,
    *,
    rounding: str = "nearest_even",
    overflow: Optional[str] = None,
    seed: Optional[int] = None,
    device: str = "cpu",
) -> np.ndarray:
    """R(x): every element rounded to the nearest value of ``fmt`` (per ``rounding``).

    Args:
        x: array of float32, float64, float16 or bfloat16.
        fmt: a format name (``"float8_e4m3fn"``) or a FloatFormat.
        rounding: one of :data:`ROUNDING_MODES`.
        overflow: ``"saturate"``, ``"inf"``, ``"nan"``, or None for the
            ml_dtypes default of the format.
        seed: seed of stochastic rounding (None draws a fresh one).
        device: ``"cpu"``, ``"gpu"`` or ``"auto"`` (see :mod:`quantdrift.gpu`);
            the values (stochastic rounding included, for a given seed) are the same, bit for bit.

    Returns:
        float32 array of x's shape (float64 for float64 input) holding
        values of ``fmt``.

    Raises:
        InputError: unknown format, rounding or overflow, or an overflow
            mode the format cannot represent (``"inf"`` for float8_e4m3fn).
        DtypeError: x is not a floating-point array.
    """
    f = get(fmt)
    _check_overflow(overflow)
    s = _seed(seed, rounding)
    flat, dtype16, shape = _flat(x)
    where = gpu.resolve(device, flat.size)
    out = _core.lowp_round(flat, f._spec(), rounding=rounding, overflow=overflow, seed=s, x16=dtype16, device=where)
    return out.reshape(shape)


def encode(
    x: Any,
    fmt: FormatLike,
    *,
    rounding: str = "nearest_even",
    overflow: Optional[str] = None,
    seed: Optional[int] = None,
    packed: bool = False,
    device: str = "cpu",
) -> np.ndarray:
    """Bit patterns of R(x) in ``fmt``.

    Args:
        x: array of float32, float64, float16 or bfloat16.
        fmt: a format name or a FloatFormat.
        rounding, overflow, seed: as in :func:`round_to`.
        packed: put two 4-bit codes in each byte along the last axis (low
            nibble first); only for formats of ≤ 4 bits.
        device: ``"cpu"``, ``"gpu"`` or ``"auto"`` (see :mod:`quantdrift.gpu`);
            the codes are the same, bit for bit.

    Returns:
        uint8 codes for formats of ≤ 8 bits (one per byte unless packed),
        uint16 codes above; x's shape, or with the last axis ``ceil(n/2)``
        when packed.

    Raises:
        InputError: as :func:`round_to`, or ``packed=True`` for a format
            wider than 4 bits.
        ShapeError: ``packed=True`` on a 0-d array.
    """
    f = get(fmt)
    _check_overflow(overflow)
    s = _seed(seed, rounding)
    if packed and f.bits > 4:
        raise InputError(f"packed=True needs a format of at most 4 bits; {f.name} has {f.bits}")
    flat, dtype16, shape = _flat(x)
    where = gpu.resolve(device, flat.size)
    if not packed:
        codes = _core.lowp_encode(
            flat, f._spec(), rounding=rounding, overflow=overflow, seed=s, x16=dtype16, device=where
        )
        return codes.reshape(shape)
    if len(shape) == 0:
        raise ShapeError("packed=True needs an array with at least one axis, got a scalar")
    row = shape[-1]
    codes = _core.lowp_encode(
        flat, f._spec(), rounding=rounding, overflow=overflow, seed=s, x16=dtype16, device=where, packed_row=row
    )
    return codes.reshape(shape[:-1] + ((row + 1) // 2,))


def decode(
    codes: Any,
    fmt: FormatLike,
    *,
    packed: bool = False,
    shape: Optional[Sequence[int]] = None,
    device: str = "cpu",
) -> np.ndarray:
    """Values of codes of ``fmt`` as float32.

    Args:
        codes: integer array of codes (uint8 for ≤ 8-bit formats, uint16
            above; other integer dtypes are range-checked and converted).
        fmt: a format name or a FloatFormat.
        packed: codes hold two 4-bit codes per byte along the last axis
            (see :func:`encode`).
        shape: with ``packed=True``, the unpacked shape (needed when the
            last axis was odd); its last axis n must match ``ceil(n/2)``
            packed bytes. Default: twice the packed last axis.
        device: ``"cpu"``, ``"gpu"`` or ``"auto"`` (see :mod:`quantdrift.gpu`);
            the values are the same, bit for bit.

    Returns:
        float32 array (the unpacked shape when packed).

    Raises:
        InputError: a code out of range for the format (e.g. ≥ 64 for a
            6-bit format), or ``packed=True`` for a format wider than 4 bits.
        ShapeError: packed bytes that do not match ``shape``.
        DtypeError: codes that are not integers.
    """
    f = get(fmt)
    arr = np.asarray(codes)
    if arr.dtype.kind not in "ui":
        raise DtypeError(f"codes must be an integer array (uint8/uint16), got dtype {arr.dtype}")
    if packed:
        if f.bits > 4:
            raise InputError(f"packed=True needs a format of at most 4 bits; {f.name} has {f.bits}")
        if arr.dtype != np.uint8:
            raise DtypeError(f"packed codes must be uint8, got dtype {arr.dtype}")
        if arr.ndim == 0:
            raise ShapeError("packed codes need at least one axis, got a scalar")
        if shape is None:
            out_shape = arr.shape[:-1] + (2 * arr.shape[-1],)
        else:
            out_shape = tuple(int(s) for s in shape)
            if (
                len(out_shape) == 0
                or out_shape[:-1] != arr.shape[:-1]
                or (out_shape[-1] + 1) // 2 != arr.shape[-1]
            ):
                want = "()" if len(out_shape) == 0 else str(out_shape[:-1] + ((out_shape[-1] + 1) // 2,))
                raise ShapeError(
                    f"packed codes of shape {arr.shape} do not hold shape {out_shape}: "
                    f"that needs packed shape {want} (ceil(n/2) bytes per row of n)"
                )
        flat = np.ascontiguousarray(arr).reshape(-1)
        unpacked = _core.lowp_unpack(flat, out_shape[-1])
        where = gpu.resolve(device, unpacked.size)
        return _core.lowp_decode(unpacked, f._spec(), device=where).reshape(out_shape)
    if shape is not None:
        raise InputError("shape= is only used with packed=True")
    code_dtype = np.uint8 if f.bits <= 8 else np.uint16
    if arr.dtype != code_dtype:
        if arr.size and (arr.min() < 0 or int(arr.max()) >= 1 << f.bits):
            bad = arr.reshape(-1)[(arr.reshape(-1) < 0) | (arr.reshape(-1) >= 1 << f.bits)][0]
            raise InputError(
                f"codes: code {int(bad)} is out of range for {f.name} "
                f"({f.bits}-bit codes are 0..{(1 << f.bits) - 1})"
            )
        arr = arr.astype(code_dtype)
    flat = np.ascontiguousarray(arr).reshape(-1)
    where = gpu.resolve(device, flat.size)
    return _core.lowp_decode(flat, f._spec(), device=where).reshape(arr.shape)


def round_mixed(
    x: Any,
    labels: Any,
    formats: Sequence[FormatLike],
    *,
    rounding: str = "nearest_even",
    overflow: Optional[str] = None,
    seed: Optional[int] = None,
    device: str = "cpu",
) -> np.ndarray:
    """Mixed formats per parameter (lecture Remark 3.1): element i is
    rounded to ``formats[labels[i]]``.

    Args:
        x: array of float32, float64, float16 or bfloat16.
        labels: integer array of x's shape, values in ``0..len(formats)-1``.
        formats: the formats, by name or FloatFormat.
        rounding, overflow, seed: as in :func:`round_to` (one overflow mode
            for all formats; None is each format's own default).
        device: ``"cpu"``, ``"gpu"`` or ``"auto"`` (see :mod:`quantdrift.gpu`);
            the values are the same, bit for bit.

    Returns:
        float32 array of x's shape (float64 for float64 input).

    Raises:
        ShapeError: labels and x differ in shape.
        InputError: a label outside ``0..len(formats)-1`` (the message gives
            its flat index), an unknown format, or an overflow mode one of
            the formats cannot represent.
        DtypeError: labels are not integers.
    """
    fmts: List[FloatFormat] = [get(f, "formats[%d]" % i) for i, f in enumerate(formats)]
    _check_overflow(overflow)
    s = _seed(seed, rounding)
    flat, dtype16, shape = _flat(x)
    lab = np.asarray(labels)
    if lab.dtype.kind not in "ui":
        raise DtypeError(f"labels must be an integer array, got dtype {lab.dtype}")
    if lab.shape != shape:
        raise ShapeError(f"labels has shape {lab.shape} but x has shape {shape}; they must match")
    check_int64_labels(lab, f"is not a valid index into formats [0, {len(fmts)})")
    lab = np.ascontiguousarray(lab, dtype=np.int64).reshape(-1)
    where = gpu.resolve(device, flat.size)
    out = _core.lowp_round_mixed(
        flat, lab, [f._spec() for f in fmts], rounding=rounding, overflow=overflow, seed=s, x16=dtype16, device=where
    )
    return out.reshape(shape)


# ---------------------------------------------------------------------------
# Block-scaled formats
# ---------------------------------------------------------------------------


def _blocks_along(x: Any, axis: int) -> Tuple[np.ndarray, str, Tuple[int, ...], int]:
    arr, dtype16 = as_scores(x, "x")
    rows, batch = rows_along(arr, axis, "x", "block")
    return rows.reshape(-1), dtype16, batch, rows.shape[1]


def _restore(flat: np.ndarray, batch: Tuple[int, ...], last: int, axis: int, ndim: int) -> np.ndarray:
    return np.moveaxis(flat.reshape(batch + (last,)), -1, axis if axis >= 0 else ndim + axis)


def mx_encode(
    x: Any,
    elem: str,
    *,
    block: int = 32,
    axis: int = -1,
    scale_mode: str = "floor",
    packed: bool = False,
    device: str = "cpu",
) -> Tuple[np.ndarray, np.ndarray]:
    """OCP MX v1.0 encoding: blocks of ``block`` elements along ``axis``
    share an E8M0 scale X = 2^e; each element stores R(V/X) in ``elem``
    (nearest-even, saturating to ±max).

    The shared exponent (clamped to [−127, 127]) by ``scale_mode``:
    ``"floor"``: floor(log2 amax) − emax_elem (the spec's §6.3 algorithm);
    ``"ceil"``: ceil(log2 amax) − emax_elem; ``"even"``: amax first rounded
    half-up to the element's mantissa width, then floor; ``"rceil"``:
    ceil(log2(amax / max_elem)) with the division rounded in float32 (float64
    for float64 input), as cuBLAS does. emax_elem is 8, 15, 2, 4, 2, 0 for
    fp8_e4m3, fp8_e5m2, fp6_e2m3, fp6_e3m2, fp4_e2m1, int8 (int8 is q·2^−6,
    |q| ≤ 127). An all-zero block gets X = 2^−127. A block holding NaN or
    ±Inf gets the NaN scale 0xFF and zero codes: it decodes to NaN.

    Ragged last block: if the axis length n is not a multiple of ``block``,
    the last block has ``n % block`` elements and its scale comes from them
    alone; this equals zero-padding to whole blocks (zeros never change
    amax) without storing the padding. Nothing is dropped.

    Args:
        x: array of float32, float64, float16 or bfloat16.
        elem: one of :data:`MX_ELEMENTS`.
        block: elements per scale (32 in the spec).
        axis: the axis the blocks run along.
        scale_mode: one of :data:`MX_SCALE_MODES`.
        packed: for fp4_e2m1, two codes per byte along ``axis`` (low
            nibble first).
        device: ``"cpu"``, ``"gpu"`` or ``"auto"`` (see :mod:`quantdrift.gpu`);
            the codes and scales are the same, bit for bit.
            (float64 input is encoded on the CPU, in float64, either way).

    Returns:
        ``(codes, scales)``: codes of x's shape (uint8; int8 for int8
        elements; halved along ``axis`` when packed) and uint8 E8M0 scale
        codes with ``ceil(n/block)`` along ``axis``.

    Raises:
        InputError: unknown elem or scale_mode, block < 1, packed for a
            non-4-bit element.
        ShapeError: axis out of range or a scalar x.
    """
    if elem not in MX_ELEMENTS:
        raise InputError(f"elem must be one of {', '.join(map(repr, MX_ELEMENTS))}, got {elem!r}")
    if scale_mode not in MX_SCALE_MODES:
        raise InputError(f"scale_mode must be one of {', '.join(map(repr, MX_SCALE_MODES))}, got {scale_mode!r}")
    _check_block(block)
    if packed and elem != "fp4_e2m1":
        raise InputError(f"packed=True is only for fp4_e2m1 elements, got {elem!r}")
    ndim = np.ndim(x)
    flat, dtype16, batch, n = _blocks_along(x, axis)
    where = gpu.resolve(device, flat.size)
    codes, scales = _core.mx_encode(
        flat, n, block=block, elem=elem, scale_mode=scale_mode, x16=dtype16, device=where
    )
    nb = -(-n // block)
    if packed:
        codes = _core.lowp_pack(codes, n)
        last = (n + 1) // 2
    else:
        last = n
    codes = _restore(codes, batch, last, axis, ndim)
    if elem == "int8":
        codes = codes.view(np.int8)
    return codes, _restore(scales, batch, nb, axis, ndim)


def mx_decode(
    codes: Any,
    scales: Any,
    elem: str,
    *,
    block: int = 32,
    axis: int = -1,
    packed: bool = False,
    length: Optional[int] = None,
    device: str = "cpu",
) -> np.ndarray:
    """Values of MX codes: element value · 2^(scale − 127) as float32, NaN
    where the scale is 0xFF.

    Args:
        codes: element codes as :func:`mx_encode` returns them.
        scales: uint8 E8M0 scale codes, ``ceil(n/block)`` along ``axis``.
        elem: one of :data:`MX_ELEMENTS`.
        block: elements per scale.
        axis: the axis the blocks run along.
        packed: codes hold two fp4 codes per byte along ``axis``.
        length: with packed, the unpacked length n along ``axis`` (default
            twice the packed length).
        device: ``"cpu"``, ``"gpu"`` or ``"auto"`` (see :mod:`quantdrift.gpu`);
            the values are the same, bit for bit.

    Returns:
        float32 array of the unpacked shape.

    Raises:
        InputError: unknown elem, codes out of range for the element.
        ShapeError: scales whose shape does not match the blocks of codes,
            or packed codes that do not hold ``length``.
        DtypeError: codes or scales of the wrong dtype.
    """
    if elem not in MX_ELEMENTS:
        raise InputError(f"elem must be one of {', '.join(map(repr, MX_ELEMENTS))}, got {elem!r}")
    _check_block(block)
    c = np.asarray(codes)
    if elem == "int8":
        if c.dtype not in (np.int8, np.uint8):
            raise DtypeError(f"int8 codes must be int8 (or their uint8 view), got dtype {c.dtype}")
        c = c.view(np.uint8)
    elif c.dtype != np.uint8:
        raise DtypeError(f"codes must be uint8, got dtype {c.dtype}")
    s = np.asarray(scales)
    if s.dtype != np.uint8:
        raise DtypeError(f"scales must be uint8 E8M0 codes, got dtype {s.dtype}")
    if packed and elem != "fp4_e2m1":
        raise InputError(f"packed=True is only for fp4_e2m1 elements, got {elem!r}")
    rows, batch = rows_along(c, axis, "codes", "block")
    srows, sbatch = rows_along(s, axis, "scales", "block")
    n = _unpacked_length(rows.shape[1], packed, length, "codes")
    nb = -(-n // block)
    if sbatch != batch or srows.shape[1] != nb:
        raise ShapeError(
            f"scales has {srows.shape[1]} blocks along axis {axis} and batch shape {sbatch}, but codes of "
            f"length {n} in blocks of {block} need {nb} blocks and batch shape {batch}"
        )
    flat = rows.reshape(-1)
    if packed:
        flat = _core.lowp_unpack(flat, n)
    where = gpu.resolve(device, flat.size)
    out = _core.mx_decode(flat, srows.reshape(-1), n, block=block, elem=elem, device=where)
    return _restore(out, batch, n, axis, c.ndim)


def nvfp4_encode(
    x: Any,
    *,
    per_tensor_scale: Union[None, str, float] = None,
    axis: int = -1,
    packed: bool = False,
    device: str = "cpu",
) -> Tuple[np.ndarray, np.ndarray, Optional[float]]:
    """NVFP4 with torchao's semantics: blocks of 16 along ``axis``, E2M1
    elements, float8_e4m3fn block scales, optional float32 per-tensor scale.

    float32 arithmetic throughout (float64 input is first cast to float32,
    as torchao does). Single level: ``bs = e4m3(clamp(amax/6, 2^-6, 448))``
    and elements ``e2m1(clamp(x·(1/bs), ±6))``. Two level with per-tensor
    scale p: ``bs = e4m3(clamp((amax/6)/p, 2^-6, 448))`` and elements
    ``e2m1(clamp(x·((1/p)/bs), ±6))``. A block holding NaN gets the NaN
    scale 0x7F (it decodes to NaN); as in torchao, ±Inf clamps to ±6 at the
    scale 448, a finite ±2688 on decode (docs/formats.md). A ragged last block (n % 16 elements) takes its scale from
    its own elements (torchao requires n % 16 == 0).

    Args:
        x: array of float32, float64, float16 or bfloat16.
        per_tensor_scale: None (single level), ``"auto"`` (torchao's
            ``amax / (448·6)``; 1.0 for an all-zero tensor), or a positive
            float.
        axis: the axis the blocks run along.
        packed: two E2M1 codes per byte along ``axis`` (low nibble first).
        device: ``"cpu"``, ``"gpu"`` or ``"auto"`` (see :mod:`quantdrift.gpu`);
            the codes and scales are the same, bit for bit.
            (with ``per_tensor_scale="auto"`` the tensor's amax is taken on the CPU).

    Returns:
        ``(codes, scales, per_tensor_scale)``: uint8 E2M1 codes, uint8
        float8_e4m3fn scale codes (``ceil(n/16)`` along ``axis``), and the
        float32 per-tensor scale used (None for single level).

    Raises:
        InputError: a per_tensor_scale that is not positive and finite, or
            ``"auto"`` with NaN/Inf in x.
        ShapeError: axis out of range or a scalar x.
    """
    ndim = np.ndim(x)
    flat, dtype16, batch, n = _blocks_along(x, axis)
    pts: Optional[float]
    if per_tensor_scale is None:
        pts = None
    elif isinstance(per_tensor_scale, str):
        if per_tensor_scale != "auto":
            raise InputError(f'per_tensor_scale must be None, "auto" or a positive float, got {per_tensor_scale!r}')
        pts = _core.nvfp4_scale(flat, dtype16)
    else:
        pts = _positive_f32(per_tensor_scale)
    where = gpu.resolve(device, flat.size)
    codes, scales = _core.nvfp4_encode(flat, n, per_tensor_scale=pts, x16=dtype16, device=where)
    if packed:
        codes = _core.lowp_pack(codes, n)
        last = (n + 1) // 2
    else:
        last = n
    nb = -(-n // 16)
    return _restore(codes, batch, last, axis, ndim), _restore(scales, batch, nb, axis, ndim), pts


def nvfp4_decode(
    codes: Any,
    scales: Any,
    *,
    per_tensor_scale: Optional[float] = None,
    axis: int = -1,
    packed: bool = False,
    length: Optional[int] = None,
    device: str = "cpu",
) -> np.ndarray:
    """Values of NVFP4 codes: ``e2m1 · (e4m3_scale · per_tensor_scale)`` in float32.

    Args:
        codes: uint8 E2M1 codes as :func:`nvfp4_encode` returns them.
        scales: uint8 float8_e4m3fn scale codes, ``ceil(n/16)`` along ``axis``.
        per_tensor_scale: the per-tensor scale returned by the encoder, or None.
        axis: the axis the blocks run along.
        packed: codes hold two codes per byte along ``axis``.
        length: with packed, the unpacked length n along ``axis``.
        device: ``"cpu"``, ``"gpu"`` or ``"auto"`` (see :mod:`quantdrift.gpu`);
            the values are the same, bit for bit.

    Returns:
        float32 array of the unpacked shape.

    Raises:
        InputError: codes ≥ 16, a bad per_tensor_scale.
        ShapeError: scales that do not match the blocks of codes, packed
            codes that do not hold ``length``.
        DtypeError: codes or scales that are not uint8.
    """
    c = np.asarray(codes)
    s = np.asarray(scales)
    for name, a in (("codes", c), ("scales", s)):
        if a.dtype != np.uint8:
            raise DtypeError(f"{name} must be uint8, got dtype {a.dtype}")
    pts = None if per_tensor_scale is None else _positive_f32(per_tensor_scale)
    rows, batch = rows_along(c, axis, "codes", "block")
    srows, sbatch = rows_along(s, axis, "scales", "block")
    n = _unpacked_length(rows.shape[1], packed, length, "codes")
    nb = -(-n // 16)
    if sbatch != batch or srows.shape[1] != nb:
        raise ShapeError(
            f"scales has {srows.shape[1]} blocks along axis {axis} and batch shape {sbatch}, but codes of "
            f"length {n} need {nb} blocks of 16 and batch shape {batch}"
        )
    flat = rows.reshape(-1)
    if packed:
        flat = _core.lowp_unpack(flat, n)
    where = gpu.resolve(device, flat.size)
    out = _core.nvfp4_decode(flat, srows.reshape(-1), n, per_tensor_scale=pts, device=where)
    return _restore(out, batch, n, axis, c.ndim)


def _check_block(block: int) -> None:
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise InputError(f"block must be a positive int, got {block!r}")


def _positive_f32(value: Any) -> float:
    try:
        v = float(np.float32(value))
    except (TypeError, ValueError):
        raise InputError(f"per_tensor_scale must be a positive float, got {value!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise InputError(f"per_tensor_scale must be a positive finite float32, got {value!r}")
    return v


def _unpacked_length(packed_len: int, packed: bool, length: Optional[int], name: str) -> int:
    if not packed:
        if length is not None and length != packed_len:
            raise ShapeError(f"length={length} but {name} has {packed_len} elements along the axis")
        return packed_len
    n = 2 * packed_len if length is None else int(length)
    if (n + 1) // 2 != packed_len:
        raise ShapeError(
            f"packed {name} have {packed_len} bytes along the axis, which cannot hold length {n} "
            f"(that needs ceil({n}/2) = {(n + 1) // 2} bytes)"
        )
    return n
