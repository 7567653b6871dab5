"""Integer quantization over any partition (lecture Def 3.2).

An ordered partition (I_1, …, I_k) of a tensor's elements gives each part j
a scale s_j > 0, an integer zero-point b_j and an integer range
[qmin_j, qmax_j] (the lecture's [−M_j, M_j]); then

* Q_j(x) = clip(round(x / s_j) + b_j, qmin_j, qmax_j)   (eq. 9)
* Q̃_j(n) = s_j · (n − b_j)                              (eq. 10)

Partitions: :func:`per_tensor`, :func:`per_axis`, :func:`groups` (ragged
last group), :func:`blocks` (2-D tiles, ragged edges) and :func:`labels`
(any array of part ids). x/s is one float64 division (what a float64 numpy
oracle computes); ``compat="torch"``/``"torchao"`` switch to the float32
reciprocal multiply those libraries use. Dequantization is s·(n − b) in
float64, rounded to float32 (float64 for float64 input) and then to the
original dtype. NaN quantizes to b_j (dequantizes to 0); ±Inf clips. See
docs/quantization.md.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, gpu
from ._arrays import as_dtype, as_scores, bfloat16
from ._errors import DtypeError, InputError, ShapeError
from .lowp import _seed
from .stats import ErrorStats, error_stats

__all__ = [
    "Partition",
    "per_tensor",
    "per_axis",
    "groups",
    "blocks",
    "labels",
    "QuantizedTensor",
    "quantize",
    "dequantize",
    "fake_quantize",
    "CALIBRATIONS",
    "COMPAT_MODES",
]

CALIBRATIONS = ("absmax", "minmax", "percentile", "mse")
COMPAT_MODES = (None, "torch", "torchao")

# ---------------------------------------------------------------------------
# Partitions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """Which elements share a scale, zero-point and range.

    Build with :func:`per_tensor`, :func:`per_axis`, :func:`groups`,
    :func:`blocks` or :func:`labels`. Parts are numbered row-major over the
    tile grid (``ceil(shape / tile)`` per axis; per-part arrays such as
    ``QuantizedTensor.scale`` have that shape), or by ascending id for
    labels.
    """

    kind: str
    axis: Optional[int] = None
    size: Optional[Tuple[int, ...]] = None
    ids: Optional[np.ndarray] = field(default=None, compare=False, repr=False)

    def tile(self, shape: Tuple[int, ...]) -> Tuple[int, ...]:
        """The tile extent per axis for a tensor of ``shape`` (tiles only).

        Raises:
            ShapeError: an axis out of range, or blocks on a tensor with
                fewer than 2 axes.
        """
        ndim = len(shape)
        full = tuple(max(int(s), 1) for s in shape)
        if self.kind == "per_tensor":
            return full
        if self.kind == "blocks":
            if ndim < 2:
                raise ShapeError(f"blocks{self.size} needs a tensor with at least 2 axes, got shape {shape}")
            return (1,) * (ndim - 2) + tuple(self.size or ())
        if self.kind == "labels":
            raise InputError("a labels partition has no tiles")
        axis = self._axis(ndim, shape)
        if self.kind == "per_axis":
            return full[:axis] + (1,) + full[axis + 1 :]
        assert self.size is not None
        return (1,) * axis + (self.size[0],) + (1,) * (ndim - axis - 1)

    def _axis(self, ndim: int, shape: Tuple[int, ...]) -> int:
        a = int(self.axis or 0)
        if not -ndim <= a < ndim:
            raise ShapeError(f"{self.describe()}: axis {a} is out of range for a tensor of shape {shape}")
        return a % ndim

    def describe(self) -> str:
        """A short text form, e.g. ``groups(axis=-1, size=128)``."""
        if self.kind == "per_tensor":
            return "per_tensor()"
        if self.kind == "per_axis":
            return f"per_axis(axis={self.axis})"
        if self.kind == "groups":
            return f"groups(axis={self.axis}, size={self.size[0] if self.size else None})"
        if self.kind == "blocks":
            return f"blocks({tuple(self.size or ())})"
        return "labels(...)"

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able form (tiles only; labels are data, not a description)."""
        if self.kind == "labels":
            raise InputError("a labels partition cannot be described in metadata")
        d: Dict[str, Any] = {"kind": self.kind}
        if self.axis is not None:
            d["axis"] = int(self.axis)
        if self.size is not None:
            d["size"] = [int(s) for s in self.size]
        return d

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "Partition":
        """Inverse of :meth:`to_dict`."""
        kind = d.get("kind")
        if kind == "per_tensor":
            return per_tensor()
        if kind == "per_axis":
            return per_axis(int(d["axis"]))
        if kind == "groups":
            return groups(int(d["axis"]), int(d["size"][0]))
        if kind == "blocks":
            return blocks(tuple(d["size"]))
        raise InputError(f"unknown partition kind {kind!r} in {d!r}")


@dataclass(frozen=True)
class _Plan:
    spec: tuple  # (shape, tile, labels, parts) for _core
    grid: Tuple[int, ...]
    parts: int


def _plan(partition: Partition, shape: Tuple[int, ...]) -> _Plan:
    if partition.kind == "labels":
        ids = np.asarray(partition.ids)
        if ids.shape != shape:
            raise ShapeError(f"labels has shape {ids.shape} but x has shape {shape}; they must match")
        uniq, inverse = np.unique(ids.reshape(-1), return_inverse=True)
        k = int(uniq.size)
        dense = np.ascontiguousarray(inverse.reshape(-1), dtype=np.int64)
        return _Plan(((), (), dense, k), (k,), k)
    tile = partition.tile(shape)
    grid = tuple(-(-int(s) // t) for s, t in zip(shape, tile))
    k = int(np.prod(grid, dtype=np.int64)) if grid else 1
    return _Plan((tuple(int(s) for s in shape), tile, None, k), grid, k)


def per_tensor() -> Partition:
    """One part: the whole tensor."""
    return Partition("per_tensor")


def per_axis(axis: int = 0) -> Partition:
    """One part per index along ``axis`` (per output channel for axis 0 of a
    ``(out, in)`` weight), as torch's ``quantize_per_channel``."""
    _int(axis, "axis")
    return Partition("per_axis", axis=int(axis))


def groups(axis: int = -1, size: int = 128) -> Partition:
    """Groups of ``size`` consecutive elements along ``axis``, separately for
    every index of the other axes (``int4:g128`` is ``groups(-1, 128)``); the
    last group of an axis whose length ``size`` does not divide is shorter."""
    _int(axis, "axis")
    if _int(size, "size") < 1:
        raise InputError(f"groups: size must be ≥ 1, got {size}")
    return Partition("groups", axis=int(axis), size=(int(size),))


def blocks(shape: Sequence[int]) -> Partition:
    """2-D tiles of ``shape = (rows, cols)`` over the last two axes (each
    matrix of a batch separately); tiles at the bottom and right edges are
    smaller where the tile does not divide."""
    try:
        r, c = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise InputError(f"blocks: shape must be (rows, cols), got {shape!r}") from None
    if r < 1 or c < 1:
        raise InputError(f"blocks: tile sides must be ≥ 1, got {(r, c)}")
    return Partition("blocks", size=(r, c))


def labels(ids: Any) -> Partition:
    """The general ordered partition: element i belongs to the part named by
    ``ids[i]`` (an integer array of x's shape, any values, any order). Parts
    are ordered by ascending id, so per-part arguments list them that way."""
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise DtypeError(f"labels: ids must be an integer array, got dtype {arr.dtype}")
    return Partition("labels", ids=arr)


def _int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InputError(f"{name} must be an int, got {v!r}")
    return int(v)


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


def _per_part(value: Any, plan: _Plan, name: str, dtype: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size == 1:
        arr = np.full(plan.parts, arr.reshape(()), dtype=arr.dtype)
    elif arr.size != plan.parts:
        raise ShapeError(
            f"{name} has shape {arr.shape} but the partition has {plan.parts} parts (grid {plan.grid}); "
            f"give a scalar or {plan.parts} values"
        )
    if np.dtype(dtype).kind == "i":
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise InputError(f"{name} must hold integers, got {value!r}")
        elif arr.dtype.kind not in "iub":
            raise DtypeError(f"{name} must be integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < -(2**31) or arr.max() > 2**31 - 1):
            raise InputError(f"{name} must fit in int32, got values up to {arr.max()}")
    return np.ascontiguousarray(arr.reshape(-1), dtype=dtype)


def _ranges(bits, max_int, qrange, symmetric: bool, restricted: bool, plan: _Plan):
    """(qmin, qmax, span): per-part int32 ranges, and (min qmin, max qmax)
    widened to include 0."""
    given = [n for n, v in (("bits", bits), ("max_int", max_int), ("qrange", qrange)) if v is not None]
    if len(given) > 1:
        raise InputError(f"give one of bits, max_int or qrange, got {' and '.join(given)}")
    if not given:
        bits = 8
    scalar = _scalar_ranges(bits, max_int, qrange, symmetric, restricted)
    if scalar is not None:
        # one range for every part: two fills instead of per-part arithmetic
        # (which for 10^5 groups costs more than the quantization's setup)
        lo, hi = scalar
        return _filled(plan.parts, lo), _filled(plan.parts, hi), (min(lo, 0), max(hi, 0))
    if bits is not None:
        b = _per_part(bits, plan, "bits", np.int64)
        if b.size and (b.min() < 2 or b.max() > 16):
            raise InputError(f"bits must be in 2..16, got {bits!r}")
        if symmetric:
            qmax = (1 << (b - 1)) - 1
            qmin = -qmax if restricted else -(1 << (b - 1))
        else:
            qmin, qmax = np.zeros_like(b), (1 << b) - 1
    elif max_int is not None:
        m = _per_part(max_int, plan, "max_int", np.int64)
        if m.size and m.min() < 1:
            raise InputError(f"max_int must be ≥ 1 (the lecture's M_j ∈ ℤ>0), got {max_int!r}")
        qmin, qmax = -m, m
    else:
        try:
            lo, hi = qrange
        except (TypeError, ValueError):
            raise InputError(f"qrange must be (qmin, qmax), got {qrange!r}") from None
        qmin = _per_part(lo, plan, "qrange[0]", np.int64)
        qmax = _per_part(hi, plan, "qrange[1]", np.int64)
        if np.any(qmin >= qmax):
            j = int(np.argmax(qmin >= qmax))
            raise InputError(f"qrange: part {j} has qmin {qmin[j]} ≥ qmax {qmax[j]}")
    qmin, qmax = np.ascontiguousarray(qmin, dtype=np.int32), np.ascontiguousarray(qmax, dtype=np.int32)
    return qmin, qmax, (int(qmin.min(initial=0)), int(qmax.max(initial=0)))


# Parts up to which _filled shares its arrays (16 MiB each at most).
_SHARED_FILL_PARTS = 1 << 22


def _filled(parts: int, value: int) -> np.ndarray:
    """``np.full(parts, value, int32)``, read-only and shared between calls
    for up to ``_SHARED_FILL_PARTS`` parts: a fresh fill of 10^5–10^6
    groups faults in a page per 1024 parts, which costs as much as a tenth
    of an int4 quantization."""
    if parts > _SHARED_FILL_PARTS:
        return np.full(parts, value, dtype=np.int32)
    return _shared_fill(parts, value)


@functools.lru_cache(maxsize=8)
def _shared_fill(parts: int, value: int) -> np.ndarray:
    a = np.full(parts, value, dtype=np.int32)
    a.flags.writeable = False
    return a


def _scalar_ranges(bits, max_int, qrange, symmetric: bool, restricted: bool) -> Optional[Tuple[int, int]]:
    """(qmin, qmax) when the one range argument given is scalar (checked as
    :func:`_ranges` checks it), else None."""

    def scalar_int(v: Any) -> Optional[int]:
        if isinstance(v, (bool, np.bool_)):
            return None
        if isinstance(v, (int, np.integer)):
            return int(v)
        return None

    if bits is not None:
        b = scalar_int(bits)
        if b is None or not 2 <= b <= 16:
            return None  # arrays, floats and bad values take the checked path
        if symmetric:
            qmax = (1 << (b - 1)) - 1
            return (-qmax if restricted else -(1 << (b - 1))), qmax
        return 0, (1 << b) - 1
    if max_int is not None:
        m = scalar_int(max_int)
        if m is None or not 1 <= m <= 2**31 - 1:
            return None
        return -m, m
    try:
        lo, hi = qrange
    except (TypeError, ValueError):
        return None
    lo, hi = scalar_int(lo), scalar_int(hi)
    if lo is None or hi is None or not -(2**31) <= lo < hi <= 2**31 - 1:
        return None
    return lo, hi


def _smallest_int(lo: int, hi: int) -> np.dtype:
    for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    raise InputError(f"integer range [{lo}, {hi}] does not fit in int32")


def _code_type(lo: int, hi: int, pack: bool) -> Tuple[str, Optional[int], bool]:
    """(core code type, packed width or None, signed)."""
    signed = lo < 0
    if pack:
        for w in (2, 3, 4):
            fits = (-(1 << (w - 1)) <= lo and hi < (1 << (w - 1))) if signed else hi < (1 << w)
            if fits:
                return f"packed_{'s' if signed else 'u'}{w}", w, signed
    return str(_smallest_int(lo, hi)), None, signed


@dataclass
class _Prepared:
    flat: np.ndarray
    x16: str
    shape: Tuple[int, ...]
    dtype: np.dtype
    plan: _Plan
    scale: Optional[np.ndarray]  # float64 (float32 from a fused quantize), k; None after a fused fake
    zero_point: Optional[np.ndarray]  # int32, k; None after a fused fake
    qmin: np.ndarray
    qmax: np.ndarray
    # (min qmin, max qmax), each widened to include 0
    qspan: Tuple[int, int]
    scale_dtype: np.dtype
    arith: str
    rounding: str
    seed: int
    symmetric: bool
    device: str
    # Set when calibration and quantization ran as one pass: codes
    # (``fuse_pack``) or fake-quantized values (``fuse_fake``).
    codes: Optional[np.ndarray] = None
    clipped: int = 0


def _prepare(
    x: Any,
    *,
    bits,
    max_int,
    qrange,
    partition: Optional[Partition],
    symmetric: bool,
    scale,
    zero_point,
    calibration: str,
    importance,
    rounding: str,
    seed,
    percentile: float,
    restricted: bool,
    compat: Optional[str],
    device: str,
    fuse_pack: Optional[bool] = None,
    fuse_fake: bool = False,
) -> _Prepared:
    """Checks the options and resolves every part's parameters. With
    ``fuse_pack`` (quantize's ``pack``), full-range calibration on the CPU
    also quantizes, in the same pass over x, where the core can (equal runs
    of float32/16 data, deterministic rounding); the codes come back in
    ``codes``. With ``fuse_fake``, it fake-quantizes instead, and the
    float32 values come back in ``codes`` (scale and zero-point are then
    None)."""
    arr, x16 = as_scores(x, "x")
    where = gpu.resolve(device, int(arr.size))
    dtype = arr.dtype if x16 == "float32" else (np.dtype(np.float16) if x16 == "float16" else bfloat16())
    shape = tuple(arr.shape)
    flat = np.ascontiguousarray(arr).reshape(-1)
    if partition is None:
        partition = per_tensor()
    if not isinstance(partition, Partition):
        raise InputError(f"partition must be a Partition (per_tensor(), per_axis(), ...), got {partition!r}")
    if compat not in COMPAT_MODES:
        raise InputError(f"compat must be None, 'torch' or 'torchao', got {compat!r}")
    if calibration not in CALIBRATIONS:
        raise InputError(f"calibration must be one of {', '.join(map(repr, CALIBRATIONS))}, got {calibration!r}")
    s = _seed(seed, rounding)
    plan = _plan(partition, shape)
    # the span comes from a scalar range without a pass over 10^5–10^6 per-part values
    qmin, qmax, qspan = _ranges(bits, max_int, qrange, bool(symmetric), bool(restricted), plan)
    arith, style = "divide", "lecture"
    scale_f32 = arr.dtype != np.float64
    store_f64 = not scale_f32
    if compat is not None:
        if rounding != "nearest_even":
            raise InputError(f"compat={compat!r} rounds to nearest even (torch.round/nearbyint), got rounding={rounding!r}")
        arith, scale_f32 = "reciprocal32", True
        # torch keeps per-channel scales in float64: it quantizes with
        # fl32(1/fl32(s)) but dequantizes with the float64 s
        store_f64 = compat == "torch"
        if compat == "torchao":
            style = "torchao"
            if partition.kind == "labels":
                raise InputError("compat='torchao' needs a tile partition (torchao has no label partitions)")
            if calibration not in ("absmax", "minmax"):
                raise InputError(f"compat='torchao' calibrates with absmax/minmax only, got {calibration!r}")
    scale_dtype = np.dtype(np.float64 if store_f64 else np.float32)
    if importance is not None and calibration != "mse":
        raise InputError("importance weights are used by calibration='mse' only")
    if scale is None:
        if zero_point is not None:
            raise InputError("zero_point was given without scale; give both, or neither to calibrate")
        w, w16 = None, "float32"
        if importance is not None:
            wa, w16 = as_scores(importance, "importance")
            try:
                wa = np.broadcast_to(wa, shape)
            except ValueError:
                raise ShapeError(f"importance of shape {wa.shape} does not broadcast to x's shape {shape}") from None
            w = np.ascontiguousarray(wa).reshape(-1)
        method = {"absmax": "range", "minmax": "range"}.get(calibration, calibration)
        # one pass for full-range calibration on the CPU (the core says
        # whether the partition and dtype allow it)
        one_pass = method == "range" and where == "cpu" and arr.dtype != np.float64
        if fuse_fake and one_pass:
            fake = _core.quant_fake_calibrated(
                flat, plan.spec, qmin, qmax, symmetric=bool(symmetric), style=style,
                eps=float(np.finfo(np.float32).eps), scale_f32=scale_f32, rounding=rounding, seed=s, arith=arith,
                x16=x16,
            )
            if fake is not None:
                y, clipped = fake
                return _Prepared(
                    flat, x16, shape, np.dtype(dtype), plan, None, None, qmin, qmax, qspan, scale_dtype, arith, rounding,
                    s, bool(symmetric), where, y, int(clipped),
                )
        if fuse_pack is not None and one_pass:
            # Calibrated zero-points lie in [qmin, qmax]: the ranges decide the container.
            fused = _core.quant_quantize_calibrated(
                flat, plan.spec, qmin, qmax, code_type=_code_type(qspan[0], qspan[1], fuse_pack)[0],
                symmetric=bool(symmetric), style=style, eps=float(np.finfo(np.float32).eps),
                scale_f32=scale_f32, rounding=rounding, seed=s, arith=arith, x16=x16,
            )
            if fused is not None:
                codes, sc, zp, clipped = fused
                return _Prepared(
                    flat, x16, shape, np.dtype(dtype), plan, sc, zp, qmin, qmax, qspan, scale_dtype, arith, rounding,
                    s, bool(symmetric), where, codes, int(clipped),
                )
        sc, zp = _core.quant_calibrate(
            flat,
            plan.spec,
            qmin,
            qmax,
            symmetric=bool(symmetric),
            method=method,
            percentile=float(percentile),
            style=style,
            eps=float(np.finfo(np.float32).eps),
            scale_f32=scale_f32,
            importance=w,
            rounding=rounding,
            seed=s,
            arith=arith,
            x16=x16,
            w16=w16,
            device=where,
        )
    else:
        given = _per_part(scale, plan, "scale", np.float64)
        # Checked as given and again in the scale dtype (float32 for all but
        # float64 input), so that the message names the value passed and says
        # when it is the float32 rounding that over- or underflows.
        with np.errstate(over="ignore", under="ignore"):
            sc = given.astype(scale_dtype).astype(np.float64)
        bad = ~(np.isfinite(sc) & (sc > 0))
        if np.any(bad):
            j = int(np.argmax(bad))
            if np.isfinite(given[j]) and given[j] > 0:
                raise InputError(
                    f"scale of part {j} is {given[j]:g}, which is {sc[j]:g} in {np.dtype(scale_dtype).name} "
                    f"(the scale dtype of {np.dtype(dtype).name} input); scales must be positive and finite there"
                )
            raise InputError(f"scale of part {j} is {given[j]}; scales must be positive and finite")
        if zero_point is None:
            zp = ((qmin.astype(np.int64) + qmax + 1) // 2).astype(np.int32)
        else:
            zp = _per_part(zero_point, plan, "zero_point", np.int32)
    return _Prepared(
        flat, x16, shape, np.dtype(dtype), plan, np.ascontiguousarray(sc, dtype=np.float64),
        np.ascontiguousarray(zp, dtype=np.int32), qmin, qmax, qspan, scale_dtype, arith, rounding, s, bool(symmetric),
        where,
    )


# ---------------------------------------------------------------------------
# QuantizedTensor
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizedTensor:
    """Codes plus everything needed to dequantize them.

    Attributes:
        codes: integer codes of ``shape`` in the smallest integer dtype that
            holds the range, or, for ranges of ≤ 4 bits, a 1-D uint8 array of
            codes packed LSB-first (``packed_bits`` each; see docs).
        scale: s_j per part, shaped like the partition's grid (float32;
            float64 for float64 input).
        zero_point: b_j per part (grid shape, smallest integer dtype).
        qmin, qmax: the integer range per part (int32, grid shape; read-only
            where one range serves every part, as the arrays are then shared).
        partition: the :class:`Partition`.
        shape: the original shape. dtype: the original dtype.
        packed_bits: bits per packed code, or None when unpacked.
        signed: packed codes are two's complement.
        arith: ``"divide"`` or ``"reciprocal32"`` (compat modes).
        n_clipped: elements whose round(x/s) + b fell outside the range.
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    qmin: np.ndarray
    qmax: np.ndarray
    partition: Partition
    shape: Tuple[int, ...]
    dtype: np.dtype
    packed_bits: Optional[int]
    signed: bool
    arith: str
    symmetric: bool
    n_clipped: int
    _spec: tuple = field(repr=False, compare=False, default=())

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of codes + scales (+ zero-points unless all are 0)."""
        n = self.codes.nbytes + self.scale.nbytes
        if np.any(self.zero_point != 0):
            n += self.zero_point.nbytes
        return int(n)

    @property
    def bits_per_param(self) -> float:
        """8 · nbytes / size (scale and zero-point overhead included)."""
        return 8.0 * self.nbytes / self.size if self.size else 0.0

    def int_repr(self) -> np.ndarray:
        """The codes as an integer array of ``shape`` (unpacked; int32 when
        packed)."""
        if self.packed_bits is None:
            return self.codes
        return _core.quant_unpack(self.codes, self.packed_bits, self.signed, self.size).reshape(self.shape)

    def _flat_params(self) -> Tuple[np.ndarray, np.ndarray]:
        return (
            np.ascontiguousarray(self.scale, dtype=np.float64).reshape(-1),
            np.ascontiguousarray(self.zero_point, dtype=np.int32).reshape(-1),
        )

    def _stored_params(self) -> Tuple[np.ndarray, np.ndarray]:
        """Scale and zero-point flat in their stored dtypes where the core
        takes them (float32/64; 8- to 32-bit integers), so that no per-part
        copy is made."""
        sc = self.scale if self.scale.dtype in (np.float32, np.float64) else self.scale.astype(np.float64)
        zp = self.zero_point
        if zp.dtype not in (np.int8, np.uint8, np.int16, np.uint16, np.int32):
            zp = zp.astype(np.int32)
        return np.ascontiguousarray(sc).reshape(-1), np.ascontiguousarray(zp).reshape(-1)

    def dequantize(self, dtype: Any = None, *, device: str = "cpu") -> np.ndarray:
        """Q̃(codes) = s·(n − b).

        Args:
            dtype: output dtype; None restores the original dtype. The value
                is computed in float64 and rounded to float32 (kept float64
                for float64), then to ``dtype``.
            device: ``"cpu"``, ``"gpu"`` or ``"auto"`` (see
                :mod:`quantdrift.gpu`); the values are the same, bit for bit.

        Returns:
            array of ``shape``.
        """
        where = gpu.resolve(device, self.size)
        sc, zp = self._stored_params()
        f64 = self.dtype == np.float64
        if self.packed_bits is None:
            codes = np.ascontiguousarray(self.codes).reshape(-1)
        else:
            codes = self.codes
        y = _core.quant_dequantize(
            codes, self._spec, sc, zp, packed_bits=self.packed_bits, signed=self.signed,
            length=self.size, f64_out=f64, device=where,
        ).reshape(self.shape)
        want = self.dtype if dtype is None else as_dtype(dtype)
        return y if y.dtype == want else y.astype(want)

    def error(self, x: Any) -> ErrorStats:
        """Error statistics of the dequantized tensor against ``x`` (normally
        the original); ``n_saturated`` counts the elements of x that the
        integer range clipped.

        Raises:
            ShapeError: x's shape differs from ``shape``.
        """
        arr, x16 = as_scores(x, "x")
        if tuple(arr.shape) != self.shape:
            raise ShapeError(f"x has shape {arr.shape} but the tensor has shape {self.shape}")
        sc, zp = self._flat_params()
        flat = np.ascontiguousarray(arr).reshape(-1)
        _, clipped = _core.quant_fake(
            flat, self._spec, sc, zp, np.ascontiguousarray(self.qmin, np.int32).reshape(-1),
            np.ascontiguousarray(self.qmax, np.int32).reshape(-1), rounding="nearest_even", seed=0,
            arith=self.arith, x16=x16,
        )
        stats = error_stats(arr, self.dequantize())
        return dataclasses.replace(stats, n_saturated=int(clipped))


# ---------------------------------------------------------------------------
# The functions
# ---------------------------------------------------------------------------


def quantize(
    x: Any,
    *,
    bits: Union[None, int, Any] = None,
    max_int: Union[None, int, Any] = None,
    qrange: Optional[Tuple[Any, Any]] = None,
    partition: Optional[Partition] = None,
    symmetric: bool = True,
    scale: Any = None,
    zero_point: Any = None,
    calibration: str = "absmax",
    importance: Any = None,
    rounding: str = "nearest_even",
    seed: Optional[int] = None,
    percentile: float = 99.9,
    restricted: bool = False,
    compat: Optional[str] = None,
    pack: bool = True,
    device: str = "cpu",
) -> QuantizedTensor:
    """Q(x) over a partition (Def 3.2, eq. 9).

    Args:
        x: array of float32, float64, float16 or bfloat16.
        bits: b in 2..16 (scalar or per part): signed [−2^(b−1), 2^(b−1)−1]
            (``restricted=True``: [−(2^(b−1)−1), 2^(b−1)−1]) when
            symmetric, unsigned [0, 2^b − 1] when not. Default 8.
        max_int: the lecture's M_j ≥ 1 (scalar or per part): range [−M, M].
        qrange: ``(qmin, qmax)``, scalars or per-part arrays.
        partition: a :class:`Partition`; default :func:`per_tensor`.
        symmetric: zero-point at the middle of the range,
            b = ⌊(qmin + qmax + 1)/2⌋ (0 for signed ranges); otherwise
            calibrated from the data (asymmetric, with zero-point).
        scale: s_j (scalar or per part) instead of calibrating.
        zero_point: b_j (integers; with ``scale`` only; default the
            symmetric middle).
        calibration: ``"absmax"``/``"minmax"`` (the full range: max |x|
            symmetric, [min x, max x] asymmetric), ``"percentile"``
            (numpy's linear ``percentile`` of |x|, or of x at 100 − p and p),
            ``"mse"`` (the clipping ratio α ∈ {1, 0.99, …, 0.21} of the full
            range with the least squared error, weighted by ``importance``).
        importance: non-negative weights broadcastable to x's shape (e.g. an
            importance matrix's per-column values or a Fisher diagonal), for
            ``calibration="mse"``.
        rounding: ``"nearest_even"``, ``"nearest_away"``, ``"toward_zero"``,
            ``"down"``, ``"up"`` or ``"stochastic"``.
        seed: seed of stochastic rounding (the draw of element i is a hash
            of (seed, i): the same for any thread count).
        percentile: p for ``calibration="percentile"``.
        restricted: with ``bits``, symmetric signed range without −2^(b−1).
        compat: None; ``"torch"`` (x·fl32(1/s) in float32, nearest-even, as
            ``torch.quantize_per_channel``); ``"torchao"`` (the same
            arithmetic plus ``choose_qparams_affine``'s float32 scale and
            zero-point formulas).
        pack: bit-pack codes whose range fits in 2, 3 or 4 bits.
        device: ``"cpu"``, ``"gpu"`` or ``"auto"`` (see :mod:`quantdrift.gpu`):
            where the codes (and absmax/minmax calibration) are computed;
            codes, scales, zero-points and packed bytes are the same, bit
            for bit. Float64 input, percentile/MSE calibration and
            parameters outside float32's range run on the CPU either way.

    Returns:
        A :class:`QuantizedTensor`.

    Raises:
        InputError: conflicting or invalid options, a non-positive scale.
        ShapeError: per-part arrays or labels that do not fit the partition.
        DtypeError: non-float x.
    """
    p = _prepare(
        x, bits=bits, max_int=max_int, qrange=qrange, partition=partition, symmetric=symmetric,
        scale=scale, zero_point=zero_point, calibration=calibration, importance=importance,
        rounding=rounding, seed=seed, percentile=percentile, restricted=restricted, compat=compat,
        device=device, fuse_pack=bool(pack),
    )
    assert p.scale is not None and p.zero_point is not None  # only a fused fake leaves them out
    zlo, zhi = int(p.zero_point.min(initial=0)), int(p.zero_point.max(initial=0))
    lo, hi = min(p.qspan[0], zlo), max(p.qspan[1], zhi)
    code_type, width, signed = _code_type(lo, hi, pack)
    if p.codes is not None:
        codes, clipped = p.codes, p.clipped
    else:
        codes, clipped = _core.quant_quantize(
            p.flat, p.plan.spec, p.scale, p.zero_point, p.qmin, p.qmax, code_type=code_type,
            rounding=p.rounding, seed=p.seed, arith=p.arith, x16=p.x16, device=p.device,
        )
    if width is None:
        codes = codes.reshape(p.shape)
    grid = p.plan.grid
    return QuantizedTensor(
        codes=codes,
        scale=p.scale.astype(p.scale_dtype, copy=False).reshape(grid),
        zero_point=p.zero_point.astype(_smallest_int(zlo, zhi)).reshape(grid),
        qmin=p.qmin.reshape(grid),
        qmax=p.qmax.reshape(grid),
        partition=partition if partition is not None else per_tensor(),
        shape=p.shape,
        dtype=p.dtype,
        packed_bits=width,
        signed=signed,
        arith=p.arith,
        symmetric=p.symmetric,
        n_clipped=int(clipped),
        _spec=p.plan.spec,
    )


def dequantize(qt: QuantizedTensor, dtype: Any = None, *, device: str = "cpu") -> np.ndarray:
    """Q̃ of a :class:`QuantizedTensor` (eq. 10); see
    :meth:`QuantizedTensor.dequantize` (``device`` as there)."""
    if not isinstance(qt, QuantizedTensor):
        raise InputError(f"dequantize expects a QuantizedTensor, got {type(qt).__name__}")
    return qt.dequantize(dtype, device=device)


def fake_quantize(
    x: Any,
    *,
    bits: Union[None, int, Any] = None,
    max_int: Union[None, int, Any] = None,
    qrange: Optional[Tuple[Any, Any]] = None,
    partition: Optional[Partition] = None,
    symmetric: bool = True,
    scale: Any = None,
    zero_point: Any = None,
    calibration: str = "absmax",
    importance: Any = None,
    rounding: str = "nearest_even",
    seed: Optional[int] = None,
    percentile: float = 99.9,
    restricted: bool = False,
    compat: Optional[str] = None,
    device: str = "cpu",
) -> np.ndarray:
    """Q̃(Q(x)) in one pass, without materialising codes; equals
    ``quantize(x, ...).dequantize()``.

    Args:
        x, and every option: as :func:`quantize` (``device`` included: the
            values are the same on the GPU, bit for bit).

    Returns:
        array of x's shape and dtype (float64 lists give float64).
    """
    p = _prepare(
        x, bits=bits, max_int=max_int, qrange=qrange, partition=partition, symmetric=symmetric,
        scale=scale, zero_point=zero_point, calibration=calibration, importance=importance,
        rounding=rounding, seed=seed, percentile=percentile, restricted=restricted, compat=compat,
        device=device, fuse_fake=True,
    )
    if p.codes is not None:
        y = p.codes
    else:
        assert p.scale is not None and p.zero_point is not None  # set unless the fake was fused
        y, _ = _core.quant_fake(
            p.flat, p.plan.spec, p.scale, p.zero_point, p.qmin, p.qmax, rounding=p.rounding, seed=p.seed,
            arith=p.arith, x16=p.x16, device=p.device,
        )
    y = y.reshape(p.shape)
    return y if y.dtype == p.dtype else y.astype(p.dtype)
