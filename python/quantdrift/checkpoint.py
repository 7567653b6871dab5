"""Quantizing whole safetensors checkpoints, tensor by tensor.

:func:`quantize_file` reads a safetensors file (or a sharded ``*.index.json``
set) through a memory map, one tensor at a time and each tensor in chunks of
rows, and writes one safetensors file holding, per tensor, the codes and the
scales/zero-points its scheme produces. The header's ``__metadata__`` key
``"quantdrift"`` holds a JSON description of every tensor's scheme and
layout (docs/quantization.md), from which :func:`dequantize_file` restores
float tensors with the original names, shapes and dtypes.

Recipes map tensor names to schemes (first matching rule wins); see
:class:`Recipe`. Output files are written atomically: a temporary file in the
destination folder, fsync, rename. Inputs are only read.
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import io
import json
import math
import mmap
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, gpu
from ._arrays import is_bfloat16
from ._errors import InputError, QuantdriftError
from ._files import new_file_mode, write_text_atomic
from ._progress import progress_bar
from .formats import FORMATS, get as get_format
from .lowp import decode, encode, mx_decode, mx_encode, nvfp4_decode, nvfp4_encode
from .quant import _code_type, _plan, _smallest_int, groups, per_axis, per_tensor

__all__ = [
    "Recipe",
    "Scheme",
    "parse_scheme",
    "quantize_file",
    "dequantize_file",
    "fake_quantize_tensor",
    "QuantizeReport",
    "DEFAULT_RECIPE",
]

PathLike = Union[str, "os.PathLike[str]"]
METADATA_KEY = "quantdrift"
LAYOUT_VERSION = 2
# Layouts this version reads: 1 stored float codes of ≤ 4-bit formats one per
# byte; 2 packs them two per byte (``"packed": true``), as MX and NVFP4 do.
_READ_VERSIONS = (1, 2)

# safetensors dtype names <-> numpy's own dtypes
_PLAIN_ST_DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NP_TO_ST = {v: k for k, v in _PLAIN_ST_DTYPES.items()}


@functools.lru_cache(maxsize=None)
def _st_dtypes() -> Dict[str, np.dtype]:
    """Every safetensors dtype name this module reads and writes, with
    ml_dtypes' bfloat16 and float8 types (imported on first use, as in
    ``_arrays.bfloat16``)."""
    import ml_dtypes

    return {
        **_PLAIN_ST_DTYPES,
        "BF16": np.dtype(ml_dtypes.bfloat16),
        "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
        "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    }


_FLOAT_ST = {"F64", "F32", "F16", "BF16"}

# Elements per chunk of rows (float32 temporaries stay around 16 MiB).
CHUNK_ELEMENTS = 1 << 22
_MAX_HEADER = 100 << 20


class CheckpointError(InputError):
    """A checkpoint file is malformed, truncated, or does not match its
    metadata (the message names the file and tensor)."""


# ---------------------------------------------------------------------------
# Reading safetensors through a memory map
# ---------------------------------------------------------------------------


@dataclass
class _Entry:
    name: str
    dtype: str
    shape: Tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int
    source: "_File"

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    def array(self) -> np.ndarray:
        """The tensor: a read-only view of the mapped file, or a copy when
        its data is not aligned to the dtype's itemsize (see
        :meth:`_File.view`)."""
        return self.source.view(self)


def _is_count(v: Any) -> bool:
    """A non-negative JSON integer (a bool is not one, though Python says
    it is an int)."""
    return type(v) is int and v >= 0


def _entry_fields(path: Path, name: str, info: Any) -> Tuple[str, Tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, each checked for its
    JSON type: a float or boolean is rejected rather than truncated, since
    the safetensors library rejects it and a truncated shape would read the
    wrong bytes."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CheckpointError(
            f"{path}: tensor {name!r} has a malformed header entry {info!r} "
            "(needs an object with 'dtype', 'shape' and 'data_offsets')"
        )
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str):
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}; it must be a string such as \"F32\"")
    if dtype not in _st_dtypes():
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CheckpointError(
            f"{path}: tensor {name!r} has shape {shape!r}; it must be a list of non-negative integers"
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise CheckpointError(
            f"{path}: tensor {name!r} has data_offsets {offsets!r}; they must be a list of two non-negative integers "
            "[begin, end]"
        )
    return dtype, tuple(shape), offsets[0], offsets[1]


class _File:
    """One safetensors file, memory-mapped read-only."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = open(path, "rb")
        self._mm: Optional[mmap.mmap] = None
        try:
            self._parse()
        except BaseException:
            self._fh.close()
            raise
        if self._size > self.data_start:
            self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)

    def _parse(self) -> None:
        path = self.path
        size = self._size = os.fstat(self._fh.fileno()).st_size
        head = self._fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, _MAX_HEADER):
            raise CheckpointError(f"{path}: header length {n} exceeds the file ({size} bytes); truncated or not safetensors")
        try:
            header = json.loads(self._fh.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: the header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: the header is not a JSON object")
        self.data_start = 8 + n
        data_len = size - self.data_start
        metadata = header.pop("__metadata__", None)
        if metadata is None:  # absent or null: both mean no metadata
            metadata = {}
        if not isinstance(metadata, dict):
            raise CheckpointError(f"{path}: __metadata__ is {metadata!r}; it must be an object of string to string")
        for k, v in metadata.items():
            if not isinstance(v, str):
                raise CheckpointError(f"{path}: __metadata__[{k!r}] is {v!r}; metadata values must be strings")
        self.metadata: Dict[str, str] = metadata
        self.entries: Dict[str, _Entry] = {}
        for name, info in header.items():
            dtype, shape, b, e = _entry_fields(path, name, info)
            want = math.prod(shape) * _st_dtypes()[dtype].itemsize
            if not b <= e or e - b != want:
                raise CheckpointError(
                    f"{path}: tensor {name!r} has data_offsets [{b}, {e}] but shape {list(shape)} of {dtype} needs {want} bytes"
                )
            if e > data_len:
                raise CheckpointError(
                    f"{path}: tensor {name!r} ends at byte {e} of the data but the file holds only {data_len}; "
                    "the file is truncated"
                )
            self.entries[name] = _Entry(name, dtype, shape, self.data_start + b, self.data_start + e, self)
        # Overlapping byte ranges would alias two tensors; the safetensors
        # library rejects them. Gaps between tensors are tolerated (that
        # library also rejects them, but they are harmless to a reader that
        # seeks by offset), and so are empty tensors anywhere: they own no
        # bytes.
        spans = sorted((x for x in self.entries.values() if x.nbytes), key=lambda x: x.start)
        for prev, cur in zip(spans, spans[1:]):
            if cur.start < prev.end:
                at = self.data_start
                raise CheckpointError(
                    f"{path}: tensor {cur.name!r} (data bytes [{cur.start - at}, {cur.end - at}]) "
                    f"overlaps tensor {prev.name!r} (bytes [{prev.start - at}, {prev.end - at}])"
                )

    def view(self, e: _Entry) -> np.ndarray:
        dt = _st_dtypes()[e.dtype]
        if e.nbytes == 0 or self._mm is None:
            return np.zeros(e.shape, dtype=dt)
        flat = np.frombuffer(self._mm, dtype=dt, count=e.nbytes // dt.itemsize, offset=e.start)
        if e.start % dt.itemsize:
            # safetensors requires no alignment (a header length that is not
            # a multiple of 8, an F32 tensor after an odd-length F16 one), but
            # the Rust kernels take aligned slices only. The map starts on a
            # page, so the file offset decides. Writers pad their headers and
            # such files are rare: copying this one tensor costs little.
            flat = flat.copy()
        return flat.reshape(e.shape)

    def release(self, start: int, end: int) -> None:
        """Drops the mapped pages of bytes start..end from this process (they
        stay in the page cache), so resident memory follows the tensor in
        hand rather than everything read so far."""
        if self._mm is None or end <= start or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        lo = start // page * page
        hi = min(-(-end // page) * page, len(self._mm))
        if hi > lo:
            self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a caller still holds a view; the GC closes it later
                pass
        self._fh.close()


def _read_index(path: Path) -> Dict[str, List[str]]:
    """The shards a ``*.index.json`` names, each with its tensor names in
    the index's order."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: the index is not valid JSON ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            f"{path}: not a safetensors index (needs a 'weight_map' object mapping tensor names to shard files)"
        )
    shards: Dict[str, List[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(f"{path}: weight_map[{name!r}] is {shard!r}; it must name a shard file (a string)")
        shards.setdefault(shard, []).append(name)
    return shards


class _Checkpoint:
    """A safetensors file or a sharded set named by ``*.index.json``."""

    def __init__(self, src: PathLike):
        path = Path(src)
        self.files: List[_File] = []
        try:
            if path.name.endswith(".index.json"):
                shards = _read_index(path)
                self.entries: Dict[str, _Entry] = {}
                self.metadata: Dict[str, str] = {}
                for shard, names in shards.items():
                    try:
                        f = _File(path.parent / shard)
                    except FileNotFoundError:
                        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
                        raise CheckpointError(
                            f"{path}: shard {shard!r} (holding {names[0]!r}{more}) does not exist in {path.parent}"
                        ) from None
                    self.files.append(f)
                    self.metadata.update(f.metadata)
                    for name in names:
                        if name not in f.entries:
                            raise CheckpointError(f"{f.path}: tensor {name!r} is listed in {path.name} but missing")
                        self.entries[name] = f.entries[name]
            else:
                f = _File(path)
                self.files.append(f)
                self.entries = dict(f.entries)
                self.metadata = dict(f.metadata)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> "_Checkpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Schemes and recipes
# ---------------------------------------------------------------------------

_MX = {
    "mxfp4": ("fp4_e2m1", True),
    "mxfp6_e2m3": ("fp6_e2m3", False),
    "mxfp6_e3m2": ("fp6_e3m2", False),
    "mxfp8_e4m3": ("fp8_e4m3", False),
    "mxfp8_e5m2": ("fp8_e5m2", False),
    "mxint8": ("int8", False),
}
_CASTS = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


@dataclass(frozen=True)
class Scheme:
    """A parsed scheme string.

    Kinds: ``keep``; ``int`` (``int<b>[:g<N>|:tensor|:channel][:asym|:sym]
    [:absmax|:minmax|:mse|:percentile][:restricted]``, per output channel
    by default); ``cast`` (``bfloat16``, ``float16``, ``float32``);
    ``float`` (any other low-precision float name, e.g. ``float8_e4m3fn``,
    with one float32 scale per tensor mapping max |x| onto the format's max);
    ``mx`` (``mxfp4``, ``mxfp6_e2m3``, ``mxfp6_e3m2``, ``mxfp8_e4m3``,
    ``mxfp8_e5m2``, ``mxint8``: OCP MX blocks of 32 along the last axis);
    ``nvfp4`` (blocks of 16, per-tensor scale).
    """

    text: str
    kind: str
    bits: int = 0
    group: Optional[int] = None
    granularity: str = "channel"  # channel | tensor | group
    symmetric: bool = True
    calibration: str = "absmax"
    restricted: bool = False
    fmt: Optional[str] = None


def parse_scheme(text: str) -> Scheme:
    """Parses a scheme string (see :class:`Scheme`).

    Raises:
        InputError: an unknown scheme or option, naming what is valid.
    """
    if not isinstance(text, str) or not text:
        raise InputError(f"a scheme must be a non-empty string, got {text!r}")
    t = text.strip().lower()
    if t == "keep":
        return Scheme(text, "keep")
    if t in _CASTS:
        return Scheme(text, "cast", fmt=t)
    if t in _MX:
        return Scheme(text, "mx", fmt=t)
    if t == "nvfp4":
        return Scheme(text, "nvfp4", fmt=t)
    m = re.fullmatch(r"(u?int)(\d+)((?::[a-z0-9]+)*)", t)
    if m:
        bits = int(m.group(2))
        if not 2 <= bits <= 16:
            raise InputError(f"scheme {text!r}: integer width must be 2..16")
        kw: Dict[str, Any] = {"bits": bits, "symmetric": m.group(1) == "int"}
        for opt in filter(None, m.group(3).split(":")):
            if re.fullmatch(r"g\d+", opt) and int(opt[1:]) >= 1:
                kw["group"], kw["granularity"] = int(opt[1:]), "group"
            elif opt in ("tensor", "channel"):
                kw["granularity"] = opt
            elif opt == "asym":
                kw["symmetric"] = False
            elif opt == "sym":
                kw["symmetric"] = True
            elif opt in ("absmax", "minmax", "mse", "percentile"):
                kw["calibration"] = opt
            elif opt == "restricted":
                kw["restricted"] = True
            else:
                raise InputError(
                    f"scheme {text!r}: unknown option {opt!r} (valid: gN, tensor, channel, asym, sym, "
                    "absmax, minmax, mse, percentile, restricted)"
                )
        return Scheme(text, "int", **kw)
    if t in FORMATS:
        return Scheme(text, "float", fmt=t)
    raise InputError(
        f"unknown scheme {text!r}; valid: keep, int<b>[:gN][:asym][:mse], bfloat16, float16, float32, "
        f"a float format ({', '.join(sorted(f for f in FORMATS if f not in _CASTS))}), "
        f"{', '.join(_MX)}, nvfp4"
    )


_EMBEDDING = re.compile(r"(^|[._])(embed|embeddings|embed_tokens|wte|wpe|word_embeddings|tok_embeddings)([._]|$)")


@dataclass
class Recipe:
    """Ordered rules ``pattern → scheme``; the first rule whose pattern
    matches a tensor's name wins.

    Patterns are shell globs (``*.mlp.*``), or regular expressions when
    written ``re:<regex>`` (matched with ``re.search``). A tensor no rule
    matches is kept if it is not a float tensor, if it has at most one axis
    (norms, biases; ``keep_1d``) or if its name looks like an embedding
    (``keep_embeddings``), and otherwise gets ``default``. Integer and bool
    tensors are always kept.

    TOML::

        default = "int8"
        [[rule]]
        pattern = "*.mlp.*"
        scheme = "int4:g128"

    JSON: ``{"default": "int8", "rules": [{"pattern": "*.mlp.*", "scheme":
    "int4:g128"}]}`` (``"rules"`` may also be an object mapping patterns to
    schemes, in order).
    """

    rules: List[Tuple[str, str]] = field(default_factory=list)
    default: str = "int8"
    keep_1d: bool = True
    keep_embeddings: bool = True

    def __post_init__(self) -> None:
        for pattern, scheme in self.rules:
            parse_scheme(scheme)
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as e:
                    raise InputError(f"recipe pattern {pattern!r} is not a valid regex: {e}") from None
        parse_scheme(self.default)

    def scheme_for(self, name: str, shape: Sequence[int], dtype: str) -> Scheme:
        """The scheme of a tensor (``dtype`` as safetensors names it)."""
        if dtype not in _FLOAT_ST:
            return Scheme("keep", "keep")
        for pattern, scheme in self.rules:
            hit = re.search(pattern[3:], name) if pattern.startswith("re:") else fnmatch.fnmatchcase(name, pattern)
            if hit:
                return parse_scheme(scheme)
        if self.keep_1d and len(shape) <= 1:
            return Scheme("keep", "keep")
        if self.keep_embeddings and _EMBEDDING.search(name):
            return Scheme("keep", "keep")
        return parse_scheme(self.default)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Recipe":
        """From the TOML/JSON structure described in the class docs."""
        if not isinstance(d, dict):
            raise InputError(f"a recipe must be a table/object, got {type(d).__name__}")
        raw = d.get("rule", d.get("rules", []))
        rules: List[Tuple[str, str]] = []
        if isinstance(raw, dict):
            rules = [(str(k), str(v)) for k, v in raw.items()]
        elif isinstance(raw, list):
            for r in raw:
                if not isinstance(r, dict) or "pattern" not in r or "scheme" not in r:
                    raise InputError(f"recipe rule {r!r} needs 'pattern' and 'scheme'")
                rules.append((str(r["pattern"]), str(r["scheme"])))
        else:
            raise InputError("recipe 'rules' must be a list of {pattern, scheme} or an object")
        unknown = set(d) - {"rule", "rules", "default", "keep_1d", "keep_embeddings"}
        if unknown:
            raise InputError(f"unknown recipe keys {sorted(unknown)}; valid: rule(s), default, keep_1d, keep_embeddings")
        return cls(
            rules=rules,
            default=str(d.get("default", "int8")),
            keep_1d=bool(d.get("keep_1d", True)),
            keep_embeddings=bool(d.get("keep_embeddings", True)),
        )

    @classmethod
    def load(cls, path: PathLike) -> "Recipe":
        """From a ``.toml`` or ``.json`` file."""
        p = Path(path)
        text = p.read_text()
        if p.suffix.lower() == ".toml":
            try:
                import tomllib  # type: ignore[import-not-found]
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib  # type: ignore[no-redef,import-not-found]
            try:
                return cls.from_dict(tomllib.loads(text))
            except tomllib.TOMLDecodeError as e:
                raise InputError(f"{p}: invalid TOML: {e}") from None
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise InputError(f"{p}: invalid JSON: {e}") from None

    @classmethod
    def coerce(cls, recipe: Any) -> "Recipe":
        """A Recipe from a Recipe, a dict, a path to a TOML/JSON file, a
        scheme string (the default recipe with that scheme as default), or
        None (the default recipe)."""
        if recipe is None:
            return cls()
        if isinstance(recipe, Recipe):
            return recipe
        if isinstance(recipe, dict):
            return cls.from_dict(recipe)
        if isinstance(recipe, (str, os.PathLike)):
            p = Path(recipe)
            if p.suffix.lower() in (".toml", ".json") or p.is_file():
                return cls.load(p)
            return cls(default=str(recipe))
        raise InputError(f"recipe must be a Recipe, dict, path or scheme string, got {type(recipe).__name__}")


DEFAULT_RECIPE = Recipe()

# ---------------------------------------------------------------------------
# Per-scheme encoding
# ---------------------------------------------------------------------------


def _matrix_shape(shape: Tuple[int, ...], scheme: Scheme) -> Tuple[int, int]:
    """The 2-D (rows, cols) view a tensor is processed as, in row chunks."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    if scheme.kind == "int" and scheme.granularity == "channel":
        return shape[0], math.prod(shape[1:])
    return math.prod(shape[:-1]), shape[-1]


def _int_partition(scheme: Scheme, ndim: int):
    if scheme.granularity == "group":
        assert scheme.group is not None  # parsing sets it with the granularity
        return groups(-1, scheme.group)
    if scheme.granularity == "channel" and ndim >= 2:
        return per_axis(0)
    return per_tensor()


def _int_range(scheme: Scheme) -> Tuple[int, int]:
    b = scheme.bits
    if scheme.symmetric:
        hi = (1 << (b - 1)) - 1
        return (-hi if scheme.restricted else -hi - 1), hi
    return 0, (1 << b) - 1


@dataclass
class _Out:
    """One output tensor: name, safetensors dtype, shape."""

    name: str
    dtype: str
    shape: Tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _st_dtypes()[self.dtype].itemsize


def _layout(name: str, dtype: str, shape: Tuple[int, ...], scheme: Scheme) -> Tuple[List[_Out], Dict[str, Any]]:
    """Output tensors and the metadata entry of one input tensor."""
    meta: Dict[str, Any] = {"scheme": scheme.text, "kind": scheme.kind, "dtype": dtype, "shape": list(shape)}
    n = math.prod(shape)
    if scheme.kind == "keep":
        meta["codes"] = name
        return [_Out(name, dtype, shape)], meta
    if scheme.kind == "cast":
        st = _CASTS[scheme.fmt or ""]
        meta["codes"] = name
        return [_Out(name, st, shape)], meta
    scale_name = f"{name}.__scale__"
    if scheme.kind == "float":
        fmt = get_format(scheme.fmt or "")
        meta.update(codes=name, scale=scale_name, format=fmt.name)
        if fmt.bits <= 4:
            # Two codes per byte along the last axis, low nibble first (as MX
            # and NVFP4 store theirs): 4 bits per parameter, not 8.
            meta.update(packed=True, axis=-1)
            _, cols = _matrix_shape(shape, scheme)
            packed_shape = tuple(shape[:-1]) + ((cols + 1) // 2,) if shape else (1,)
            return [_Out(name, "U8", packed_shape), _Out(scale_name, "F32", ())], meta
        st = {"float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}.get(fmt.name, "U8" if fmt.bits <= 8 else "U16")
        return [_Out(name, st, shape), _Out(scale_name, "F32", ())], meta
    last = shape[-1] if shape else 1
    lead = shape[:-1] if shape else ()
    if scheme.kind == "mx":
        elem, packed = _MX[scheme.fmt or ""]
        nb = -(-last // 32)
        codes_shape = lead + ((last + 1) // 2 if packed else last,)
        meta.update(codes=name, scale=scale_name, element=elem, block=32, packed=packed, axis=-1)
        return [_Out(name, "I8" if elem == "int8" else "U8", codes_shape), _Out(scale_name, "U8", lead + (nb,))], meta
    if scheme.kind == "nvfp4":
        ts = f"{name}.__tensor_scale__"
        meta.update(codes=name, scale=scale_name, tensor_scale=ts, block=16, packed=True, axis=-1)
        return [
            _Out(name, "U8", lead + ((last + 1) // 2,)),
            _Out(scale_name, "U8", lead + (-(-last // 16),)),
            _Out(ts, "F32", ()),
        ], meta
    # integer
    part = _int_partition(scheme, len(shape))
    plan = _plan(part, tuple(shape))
    qmin, qmax = _int_range(scheme)
    code_type, width, signed = _code_type(qmin, qmax, True)
    outs = []
    if width is None:
        outs.append(_Out(name, _NP_TO_ST[np.dtype(code_type)], shape))
    else:
        outs.append(_Out(name, "U8", (-(-n * width // 8),)))
    outs.append(_Out(scale_name, "F32", plan.grid))
    meta.update(
        codes=name, scale=scale_name, partition=part.to_dict(), qmin=qmin, qmax=qmax,
        packed_bits=width, signed=signed, symmetric=scheme.symmetric, calibration=scheme.calibration,
        arith="divide",
    )
    if not scheme.symmetric:
        zp_name = f"{name}.__zero_point__"
        zdt = _NP_TO_ST[_smallest_int(qmin, qmax)]
        outs.append(_Out(zp_name, zdt, plan.grid))
        meta["zero_point"] = zp_name
    return outs, meta


def _as_core(x: np.ndarray) -> Tuple[np.ndarray, str]:
    """Flat C-contiguous array for _core, with what uint16 holds."""
    flat = np.ascontiguousarray(x).reshape(-1)
    if flat.dtype == np.float16:
        return flat.view(np.uint16), "float16"
    if is_bfloat16(flat.dtype):
        return flat.view(np.uint16), "bfloat16"
    return flat, "float32"


@dataclass
class _Sums:
    n: int = 0
    n_finite: int = 0
    sum_err2: float = 0.0
    max_abs: float = 0.0
    sum_x2: float = 0.0
    sum_y2: float = 0.0
    sum_xy: float = 0.0
    n_clipped: Optional[int] = None

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        xa, x16 = _as_core(x)
        ya, y16 = _as_core(y)
        d = _core.quant_error_sums(xa, ya, x16=x16, y16=y16)
        self.n += d["n"]
        self.n_finite += d["n_finite"]
        self.sum_err2 += d["sum_err2"]
        self.max_abs = max(self.max_abs, d["max_abs"])
        self.sum_x2 += d["sum_x2"]
        self.sum_y2 += d["sum_y2"]
        self.sum_xy += d["sum_xy"]

    def row(self) -> Dict[str, Any]:
        mse = self.sum_err2 / self.n_finite if self.n_finite else float("nan")
        if self.sum_err2 == 0:
            sqnr = float("inf")
        else:
            sqnr = 10 * math.log10(self.sum_x2 / self.sum_err2) if self.sum_x2 > 0 else float("-inf")
        cos = (
            self.sum_xy / math.sqrt(self.sum_x2 * self.sum_y2) if self.sum_x2 > 0 and self.sum_y2 > 0 else float("nan")
        )
        sat = None if self.n_clipped is None else (100.0 * self.n_clipped / self.n if self.n else 0.0)
        return {"mse": mse, "sqnr_db": sqnr, "max_abs": self.max_abs if self.n_finite else float("nan"),
                "cosine": cos, "saturated_pct": sat}


class _Writer:
    """Writes a safetensors file whose layout is fixed up front: the header
    first, then each piece of data at its offset (pwrite), so tensors can be
    produced in chunks and in any order without holding the output."""

    def __init__(self, dst: Path, outs: List[_Out], metadata: Dict[str, str]):
        self.dst = dst
        header: Dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = metadata
        self.offsets: Dict[str, int] = {}
        pos = 0
        for o in outs:
            if o.name in header or o.name in self.offsets:
                raise InputError(f"output tensor name {o.name!r} occurs twice (a tensor collides with a generated name)")
            header[o.name] = {"dtype": o.dtype, "shape": list(o.shape), "data_offsets": [pos, pos + o.nbytes]}
            self.offsets[o.name] = pos
            pos += o.nbytes
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-(8 + len(text)) % 8)
        self.data_start = 8 + len(text)
        self.total = self.data_start + pos
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=str(dst.parent))
        self.tmp = Path(tmp)
        self.fd = fd
        try:
            os.fchmod(fd, new_file_mode())  # as any new file, not mkstemp's 0600
            os.write(fd, len(text).to_bytes(8, "little") + text)
            os.ftruncate(fd, self.total)
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, offset: int, data: np.ndarray) -> None:
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
        pos = self.data_start + self.offsets[name] + offset
        while len(buf):
            k = os.pwrite(self.fd, buf, pos)
            buf, pos = buf[k:], pos + k

    def commit(self) -> None:
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.dst)
        except BaseException:
            self.abort()
            raise
        try:
            dfd = os.open(str(self.dst.parent), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:  # some filesystems cannot fsync a directory
            pass

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass


def _row_chunks(rows: int, cols: int) -> Iterator[Tuple[int, int]]:
    """Row ranges of about CHUNK_ELEMENTS elements, in multiples of 8 rows
    (so that packed codes of any width start on a byte)."""
    step = max(8, (CHUNK_ELEMENTS // max(cols, 1)) // 8 * 8)
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def _float_scale(amax: float, fmt_max: float) -> np.float32:
    """The float32 scale of a ``float`` scheme: max |x| onto the format's
    max, or 1 for a tensor with no nonzero finite value.

    It is never 0, which would make every code NaN: when amax / fmt_max
    underflows float32 (amax below about 3e-43 for float8_e4m3fn) the scale
    is the smallest positive float32, 2^-149, where |x|/s is still within
    the format's max. A subnormal quotient is rounded with up to half of
    2^-149 absolute error, so it may come out below amax / fmt_max and push
    the largest |x|/s past the max (NaN in float8_e4m3fn); it is then
    raised by one step. Normal quotients are left as rounded: their
    relative error of 2^-24 stays far inside the format's rounding.
    """
    if not amax > 0:
        return np.float32(1.0)
    scale = np.float32(amax / fmt_max)
    if scale < np.finfo(np.float32).tiny and float(scale) * fmt_max < amax:
        scale = np.nextafter(scale, np.float32(np.inf))
    return scale


def _encode_empty(outs: List[_Out], w: _Writer) -> None:
    """A tensor with no elements: its codes hold no bytes and the kernels,
    which reject an axis of length 0, are not called. The only side tensors
    that still have an element are float32 scalars (the float scheme's
    scale, nvfp4's per-tensor scale): they get 1, what an all-zero tensor
    calibrates to, so the file passes the reader's checks. Integer scale
    and zero-point grids, and MX/NVFP4 block scales, keep the tensor's
    length-0 axis (or have 0 blocks along it), so they are empty too."""
    for o in outs[1:]:
        if o.nbytes:
            assert o.dtype == "F32" and o.shape == (), o
            w.write(o.name, 0, np.ones((), np.float32))


def _encode_tensor(entry: _Entry, scheme: Scheme, outs: List[_Out], meta: Dict[str, Any], w: _Writer,
                   sums: Optional[_Sums], device: str) -> None:
    """Encodes one tensor chunk by chunk into the writer."""
    shape = entry.shape
    if math.prod(shape) == 0:
        _encode_empty(outs, w)
        if sums is not None and scheme.kind == "int":
            sums.n_clipped = 0
        return
    x = entry.array()
    device = gpu.resolve(device, math.prod(shape))
    if scheme.kind == "keep":
        step = max(1, CHUNK_ELEMENTS * 4)
        raw = x.reshape(-1).view(np.uint8)
        for b in range(0, raw.size, step):
            w.write(outs[0].name, b, raw[b : b + step])
        if sums is not None:
            sums.n = math.prod(shape)
        return
    rows, cols = _matrix_shape(shape, scheme)
    m = x.reshape(rows, cols)
    if scheme.kind == "int":
        _encode_int(entry, m, scheme, outs, meta, w, sums, device)
        return
    state: Dict[str, Any] = {}
    if scheme.kind == "float":
        fmt = get_format(meta["format"])
        amax = 0.0
        for r0, r1 in _row_chunks(rows, cols):
            c = m[r0:r1].astype(np.float32)
            c = np.abs(c[np.isfinite(c)])
            if c.size:
                amax = max(amax, float(c.max()))
        scale = _float_scale(amax, fmt.max)
        state["scale"] = scale
        w.write(meta["scale"], 0, np.array(scale, np.float32))
    if scheme.kind == "nvfp4":
        flat, x16 = _as_core(x)
        pts = float(_core.nvfp4_scale(flat, x16)) if flat.size else 1.0
        state["pts"] = pts
        w.write(meta["tensor_scale"], 0, np.array(pts, np.float32))
    for r0, r1 in _row_chunks(rows, cols):
        xc = m[r0:r1]
        codes, y = _encode_chunk(xc, scheme, meta, state, w, r0, device)
        if sums is not None:
            sums.add(xc, y)


def _encode_chunk(xc: np.ndarray, scheme: Scheme, meta: Dict[str, Any], state: Dict[str, Any], w: _Writer,
                  r0: int, device: str) -> Tuple[np.ndarray, np.ndarray]:
    name = meta["codes"]
    cols = xc.shape[1]
    if scheme.kind == "cast":
        assert scheme.fmt is not None  # a cast names its format
        codes = encode(xc, scheme.fmt, device=device) if scheme.fmt != "float32" else xc.astype(np.float32)
        w.write(name, r0 * cols * codes.dtype.itemsize, codes)
        y = codes.view(_st_dtypes()[_CASTS[scheme.fmt or ""]])
        return codes, y
    if scheme.kind == "float":
        s = state["scale"]
        packed = bool(meta.get("packed"))
        codes = encode(xc.astype(np.float32) / s, meta["format"], packed=packed, device=device)
        w.write(name, r0 * codes.shape[1] * codes.dtype.itemsize, codes)
        shape = xc.shape if packed else None
        return codes, decode(codes, meta["format"], packed=packed, shape=shape, device=device) * s
    if scheme.kind == "mx":
        elem, packed = meta["element"], meta["packed"]
        codes, scales = mx_encode(xc, elem, packed=packed, device=device)
        w.write(name, r0 * codes.shape[1], codes)
        w.write(meta["scale"], r0 * scales.shape[1], scales)
        return codes, mx_decode(codes, scales, elem, packed=packed, length=cols, device=device)
    # nvfp4
    codes, scales, _ = nvfp4_encode(xc, per_tensor_scale=state["pts"], packed=True, device=device)
    w.write(name, r0 * codes.shape[1], codes)
    w.write(meta["scale"], r0 * scales.shape[1], scales)
    return codes, nvfp4_decode(codes, scales, per_tensor_scale=state["pts"], packed=True, length=cols,
                               device=device)


def _int_spec(meta: Dict[str, Any], rows: int, cols: int, total_rows: int):
    """(core partition spec for a chunk of `rows` rows of the matrix view,
    parts per row or None for a single part)."""
    kind = meta["partition"]["kind"]
    if kind == "per_tensor":
        return ((rows, cols), (max(rows, 1), max(cols, 1)), None, 1), None
    if kind == "per_axis":
        return ((rows, cols), (1, max(cols, 1)), None, rows), 1
    g = int(meta["partition"]["size"][0])
    ng = -(-cols // g)
    return ((rows, cols), (1, g), None, rows * ng), ng


def _calibrate_int(m: np.ndarray, scheme: Scheme, meta: Dict[str, Any],
                   device: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scale, zero_point, qmin, qmax) per part of the matrix view m, as the
    file stores them: scales rounded to float32 whatever x's dtype, since
    the file holds F32 scales (fake_quantize_tensor shares this for F64)."""
    rows, cols = m.shape
    full_spec, _ = _int_spec(meta, rows, cols, rows)
    k = full_spec[3]
    lo = np.full(k, meta["qmin"], np.int32)
    hi = np.full(k, meta["qmax"], np.int32)
    flat, x16 = _as_core(m)
    method = {"absmax": "range", "minmax": "range"}.get(scheme.calibration, scheme.calibration)
    scale, zp = _core.quant_calibrate(
        flat, full_spec, lo, hi, symmetric=scheme.symmetric, method=method, percentile=99.9, style="lecture",
        eps=0.0, scale_f32=True, importance=None, rounding="nearest_even", seed=0, arith="divide", x16=x16,
        w16="float32", device=device,
    )
    return scale, zp, lo, hi


def _encode_int(entry: _Entry, m: np.ndarray, scheme: Scheme, outs: List[_Out], meta: Dict[str, Any],
                w: _Writer, sums: Optional[_Sums], device: str) -> None:
    rows, cols = m.shape
    qmin, qmax = meta["qmin"], meta["qmax"]
    scale, zp, lo, hi = _calibrate_int(m, scheme, meta, device)
    w.write(meta["scale"], 0, scale.astype(np.float32))
    if "zero_point" in meta:
        w.write(meta["zero_point"], 0, zp.astype(_st_dtypes()[outs[2].dtype]))
    width = meta["packed_bits"]
    code_type = _code_type(qmin, qmax, True)[0]
    itemsize = np.dtype(code_type).itemsize if width is None else 0
    clipped = 0
    for r0, r1 in _row_chunks(rows, cols):
        spec, per = _int_spec(meta, r1 - r0, cols, rows)
        sl = slice(0, 1) if per is None else slice(r0 * per, r1 * per)
        xc, xc16 = _as_core(m[r0:r1])
        args = (xc, spec, scale[sl], zp[sl], lo[sl], hi[sl])
        codes, _ = _core.quant_quantize(*args, code_type=code_type, rounding="nearest_even", seed=0,
                                        arith="divide", x16=xc16, device=device)
        off = r0 * cols * itemsize if width is None else r0 * cols * width // 8
        w.write(meta["codes"], off, codes)
        if sums is not None:
            y, c = _core.quant_fake(*args, rounding="nearest_even", seed=0, arith="divide", x16=xc16,
                                    device=device)
            clipped += int(c)
            sums.add(m[r0:r1], y)
    if sums is not None:
        sums.n_clipped = clipped


def fake_quantize_tensor(x: Any, scheme: Union[str, Scheme]) -> np.ndarray:
    """What :func:`quantize_file` followed by :func:`dequantize_file` makes of
    one tensor under ``scheme``, computed in memory (x's dtype), bit for bit.

    For integer schemes this is :func:`quantdrift.fake_quantize` with the
    scheme's partition and range (the reference the checkpoint tests use),
    except for float64 tensors: fake_quantize would keep float64 scales and
    products, while the file stores float32 scales and dequantizes in
    float32, so here the scales are calibrated rounded to float32 (as
    ``quantize_file`` does) and the result is rounded through float32.
    An empty tensor comes back as itself under every scheme.

    Args:
        x: array-like of any float dtype safetensors holds (F64, F32, F16,
            BF16).
        scheme: a scheme string (see :class:`Scheme`) or a parsed Scheme.

    Returns:
        array of x's shape and dtype.
    """
    sc = parse_scheme(scheme) if isinstance(scheme, str) else scheme
    arr = np.asarray(x)
    if sc.kind == "keep" or arr.size == 0:  # an empty tensor round-trips as itself under every scheme
        return arr.copy()
    if sc.kind == "int":
        from .quant import fake_quantize

        qmin, qmax = _int_range(sc)
        part = _int_partition(sc, arr.ndim)
        if arr.dtype != np.float64:
            return fake_quantize(arr, qrange=(qmin, qmax), partition=part, symmetric=sc.symmetric,
                                 calibration=sc.calibration)
        # fake_quantize keeps float64 scales for float64 data; the file holds
        # float32 scales and dequantizes to float32 before widening back
        _, meta = _layout("x", "F64", tuple(arr.shape), sc)
        scale, zp, _, _ = _calibrate_int(arr.reshape(_matrix_shape(arr.shape, sc)), sc, meta, "cpu")
        y = fake_quantize(arr, qrange=(qmin, qmax), partition=part, symmetric=sc.symmetric, scale=scale,
                          zero_point=zp)
        return y.astype(np.float32).astype(np.float64)
    if sc.kind == "cast":
        return arr.astype(_st_dtypes()[_CASTS[sc.fmt or ""]]).astype(arr.dtype)
    rows, cols = _matrix_shape(arr.shape, sc)
    m = arr.reshape(rows, cols)
    if sc.kind == "float":
        a = m.astype(np.float32)
        fin = np.abs(a[np.isfinite(a)])
        amax = float(fin.max()) if fin.size else 0.0
        s = _float_scale(amax, get_format(sc.fmt or "").max)
        y = decode(encode(a / s, sc.fmt or ""), sc.fmt or "") * s
    elif sc.kind == "mx":
        elem, _ = _MX[sc.fmt or ""]
        c, s_ = mx_encode(m, elem)
        y = mx_decode(c, s_, elem)
    else:
        c, s_, pts = nvfp4_encode(m, per_tensor_scale="auto")
        y = nvfp4_decode(c, s_, per_tensor_scale=pts)
    return y.reshape(arr.shape).astype(arr.dtype)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


@dataclass
class QuantizeReport:
    """Per-tensor rows and totals of a :func:`quantize_file` run.

    Attributes:
        rows: one dict per tensor: name, scheme, shape, dtype, mse, sqnr_db,
            max_abs, cosine, saturated_pct (integer schemes; None
            otherwise), bits_per_param, bytes_in, bytes_out.
        totals: bytes_in, bytes_out, compression (bytes_in / bytes_out),
            params, mean_bits_per_param (8 · bytes_out / params), tensors.
    """

    rows: List[Dict[str, Any]]
    totals: Dict[str, Any]

    def to_json(self) -> str:
        """The report as JSON (non-finite numbers as strings)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)
            return v

        rows = [{k: clean(v) for k, v in r.items()} for r in self.rows]
        return json.dumps({"tensors": rows, "totals": {k: clean(v) for k, v in self.totals.items()}}, indent=1)

    def to_csv(self) -> str:
        """One CSV line per tensor (the totals are in :meth:`to_json`)."""
        buf = io.StringIO()
        keys = ["name", "scheme", "shape", "dtype", "mse", "sqnr_db", "max_abs", "cosine", "saturated_pct",
                "bits_per_param", "bytes_in", "bytes_out"]
        wr = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        wr.writeheader()
        for r in self.rows:
            wr.writerow({**r, "shape": "x".join(map(str, r["shape"]))})
        return buf.getvalue()

    def to_table(self) -> str:
        """A text table with a totals line."""

        def num(v: Any, fmt: str) -> str:
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        name_w = max([len("tensor")] + [len(r["name"]) for r in self.rows])
        head = (f"{'tensor':<{name_w}}  {'scheme':<16}{'shape':>16}{'mse':>11}{'sqnr dB':>9}{'max abs':>10}"
                f"{'cosine':>9}{'sat %':>8}{'bits/p':>8}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            shape = "x".join(map(str, r["shape"])) or "()"
            lines.append(
                f"{r['name']:<{name_w}}  {r['scheme']:<16}{shape:>16}{num(r['mse'], '.3e'):>11}"
                f"{num(r['sqnr_db'], '.1f'):>9}{num(r['max_abs'], '.2e'):>10}{num(r['cosine'], '.5f'):>9}"
                f"{num(r['saturated_pct'], '.3f'):>8}{num(r['bits_per_param'], '.2f'):>8}"
            )
        t = self.totals
        lines.append("-" * len(head))
        lines.append(
            f"{t['tensors']} tensors, {t['params']:,} params: {t['bytes_in']:,} -> {t['bytes_out']:,} bytes "
            f"({t['compression']:.2f}x), {t['mean_bits_per_param']:.2f} bits/param"
        )
        return "\n".join(lines)

    def write(self, path: PathLike) -> None:
        """Writes JSON (``.json``) or CSV (``.csv``) by the file's suffix,
        atomically."""
        _check_report(path)
        write_text_atomic(path, self.to_json() if Path(path).suffix.lower() == ".json" else self.to_csv())


# ---------------------------------------------------------------------------
# quantize_file / dequantize_file
# ---------------------------------------------------------------------------


def _check_paths(src: PathLike, dst: PathLike) -> Path:
    """The destination, once it is known not to be the source and its
    folder exists (checked before the source is opened)."""
    d = Path(dst)
    if d.exists() and Path(src).exists() and os.path.samefile(d, src):
        raise InputError(f"destination {d} is the source; inputs are never overwritten")
    if not d.parent.exists():
        raise FileNotFoundError(f"destination folder {d.parent} does not exist")
    return d


def _check_report(report: Optional[PathLike]) -> None:
    """Refuses a report path that could only fail after the output is written."""
    if report is None:
        return
    p = Path(report)
    if p.suffix.lower() not in (".json", ".csv"):
        raise InputError(f"report file {p} must end in .json or .csv")
    if not p.parent.exists():
        raise FileNotFoundError(f"report folder {p.parent} does not exist (report file {p})")
    if p.is_dir():
        raise IsADirectoryError(f"report file {p} is a folder")


def _check_report_not_an_input(report: Optional[PathLike], ck: "_Checkpoint", src: PathLike, d: Path) -> None:
    """Refuses a report path that names the source, its index's shards or the destination."""
    if report is None or not Path(report).exists():
        return
    for what, f in [("the source", Path(src)), ("the destination", d)] + [
            (f"{f.path.name}, a shard of the source {src}", f.path) for f in ck.files]:
        if f.exists() and os.path.samefile(report, f):
            raise InputError(f"report file {report} is {what}; inputs are never overwritten")


def _check_not_a_shard(ck: "_Checkpoint", src: PathLike, d: Path) -> None:
    """Refuses a destination that is one of the files an index names: the
    rename at the end would replace an input (samefile also catches links)."""
    if not d.exists():
        return
    for f in ck.files:
        if os.path.samefile(d, f.path):
            raise InputError(
                f"destination {d} is {f.path.name}, a shard of the source {src}; inputs are never overwritten"
            )


def quantize_file(
    src: PathLike,
    dst: PathLike,
    recipe: Any = None,
    *,
    report: Optional[PathLike] = None,
    stats: bool = True,
    progress: Optional[bool] = None,
    device: str = "cpu",
) -> QuantizeReport:
    """Quantizes a safetensors checkpoint tensor by tensor.

    Args:
        src: a ``.safetensors`` file or a sharded set's ``*.index.json``.
        dst: the output ``.safetensors`` file (one file, written atomically).
        recipe: a :class:`Recipe`, a dict, a path to a TOML/JSON recipe, a
            scheme string used as the default scheme, or None for
            :data:`DEFAULT_RECIPE` (int8 per channel; 1-D tensors and
            embeddings kept).
        report: write the report to this ``.json`` or ``.csv`` file.
        stats: compute the error columns (one more pass per tensor).
        progress: show a progress bar (default: on a terminal or in a
            notebook).
        device: ``"cpu"``, ``"gpu"`` or ``"auto"`` (chosen per tensor, see
            :mod:`quantdrift.gpu`) for the encoding kernels; the file is the
            same byte for byte on either device.

    Returns:
        The :class:`QuantizeReport`.

    Raises:
        CheckpointError: a malformed or truncated input, naming the file and
            tensor: a header entry or index of the wrong JSON type,
            overlapping tensor data, a shard the index names that does not
            exist (naming the index, the shard and a tensor it should hold).
            It is an InputError.
        InputError: a bad recipe or scheme; ``dst`` is the source or a shard
            its index names (inputs are never overwritten).
        FileNotFoundError: ``src`` or the destination folder does not exist.
        OSError: other file errors; nothing is left at ``dst`` on any failure.
    """
    rec = Recipe.coerce(recipe)
    gpu.resolve(device, 0)  # a bad device fails before any file is opened
    d = _check_paths(src, dst)
    _check_report(report)
    with _Checkpoint(src) as ck:
        _check_not_a_shard(ck, src, d)
        _check_report_not_an_input(report, ck, src, d)
        outs: List[_Out] = []
        metas: Dict[str, Dict[str, Any]] = {}
        plan: List[Tuple[_Entry, Scheme, List[_Out]]] = []
        for name, e in ck.entries.items():
            sc = rec.scheme_for(name, e.shape, e.dtype)
            try:
                o, meta = _layout(name, e.dtype, e.shape, sc)
            except QuantdriftError as err:
                raise type(err)(f"tensor {name!r} of shape {list(e.shape)}: {err}") from None
            outs += o
            metas[name] = meta
            plan.append((e, sc, o))
        md = {k: v for k, v in ck.metadata.items() if k != METADATA_KEY}
        md[METADATA_KEY] = json.dumps({"version": LAYOUT_VERSION, "tensors": metas}, separators=(",", ":"))
        w = _Writer(d, outs, md)
        rows: List[Dict[str, Any]] = []
        bar = progress_bar(sum(e.nbytes for e, _, _ in plan), "quantize", progress)
        try:
            for e, sc, o in plan:
                sums = _Sums() if stats and sc.kind != "keep" else None
                try:
                    _encode_tensor(e, sc, o, metas[e.name], w, sums, device)
                except (QuantdriftError, ValueError) as err:
                    raise type(err)(f"tensor {e.name!r}: {err}") from None
                finally:
                    e.source.release(e.start, e.end)
                n = math.prod(e.shape)
                out_bytes = sum(x.nbytes for x in o)
                row: Dict[str, Any] = {
                    "name": e.name, "scheme": sc.text, "shape": list(e.shape), "dtype": e.dtype,
                    "mse": 0.0 if sc.kind == "keep" else None, "sqnr_db": float("inf") if sc.kind == "keep" else None,
                    "max_abs": 0.0 if sc.kind == "keep" else None, "cosine": 1.0 if sc.kind == "keep" else None,
                    "saturated_pct": None,
                    "bits_per_param": 8.0 * out_bytes / n if n else 0.0, "bytes_in": e.nbytes, "bytes_out": out_bytes,
                }
                if sums is not None:
                    row.update(sums.row())
                rows.append(row)
                bar.update(e.nbytes)
            w.commit()
        except BaseException:
            w.abort()
            raise
        finally:
            bar.close()
    params = sum(math.prod(r["shape"]) for r in rows)
    b_in = sum(r["bytes_in"] for r in rows)
    b_out = sum(r["bytes_out"] for r in rows)
    totals = {
        "tensors": len(rows), "params": params, "bytes_in": b_in, "bytes_out": b_out,
        "compression": b_in / b_out if b_out else float("nan"),
        "mean_bits_per_param": 8.0 * b_out / params if params else 0.0,
    }
    rep = QuantizeReport(rows, totals)
    if report is not None:
        rep.write(report)
    return rep


def read_layout(path: PathLike) -> Dict[str, Any]:
    """The quantdrift layout metadata of a quantized file (the JSON object
    stored under ``__metadata__["quantdrift"]``).

    Raises:
        CheckpointError: the file has no quantdrift metadata.
    """
    with _Checkpoint(path) as ck:
        return _layout_of(ck, path)


def _layout_of(ck: _Checkpoint, path: PathLike) -> Dict[str, Any]:
    raw = ck.metadata.get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: no __metadata__['{METADATA_KEY}']; not written by quantize_file")
    try:
        layout = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the quantdrift metadata is not valid JSON: {e}") from None
    if not isinstance(layout, dict) or not isinstance(layout.get("tensors"), dict):
        raise CheckpointError(f"{path}: the quantdrift metadata is not an object with a 'tensors' object")
    if layout.get("version") not in _READ_VERSIONS:
        raise CheckpointError(f"{path}: unsupported quantdrift layout version {layout.get('version')!r}")
    for name, meta in layout["tensors"].items():
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: tensor {name!r}: its quantdrift metadata {meta!r} is not an object")
        for key in ("dtype", "shape", "kind", "codes"):
            if key not in meta:
                raise CheckpointError(f"{path}: tensor {name!r}: metadata lacks {key!r}")
        if not isinstance(meta["dtype"], str) or meta["dtype"] not in _st_dtypes():
            raise CheckpointError(f"{path}: tensor {name!r}: metadata has unsupported dtype {meta['dtype']!r}")
        if not isinstance(meta["shape"], list) or not all(_is_count(d) for d in meta["shape"]):
            raise CheckpointError(
                f"{path}: tensor {name!r}: metadata has shape {meta['shape']!r}; "
                "it must be a list of non-negative integers"
            )
    return layout


def dequantize_file(src: PathLike, dst: PathLike, *, progress: Optional[bool] = None,
                    device: str = "cpu") -> None:
    """Restores the float tensors of a file written by :func:`quantize_file`
    (same names, shapes and dtypes), tensor by tensor, atomically.

    ``device`` (``"cpu"``, ``"gpu"`` or ``"auto"``, chosen per tensor) runs
    the decoding kernels; the output is the same byte for byte.

    Raises:
        CheckpointError: a malformed or truncated input, or missing or
            inconsistent quantdrift metadata, naming the file and tensor (as
            for :func:`quantize_file`, whose index handling this shares).
            It is an InputError.
        InputError: ``dst`` is the source or a shard its index names.
        FileNotFoundError: ``src`` or the destination folder does not exist.
        OSError: other file errors; nothing is left at ``dst`` on any failure.
    """
    gpu.resolve(device, 0)  # a bad device fails before any file is opened
    d = _check_paths(src, dst)
    with _Checkpoint(src) as ck:
        _check_not_a_shard(ck, src, d)
        layout = _layout_of(ck, src)
        tensors: Dict[str, Dict[str, Any]] = layout["tensors"]
        outs = [_Out(name, meta["dtype"], tuple(meta["shape"])) for name, meta in tensors.items()]
        md = {k: v for k, v in ck.metadata.items() if k != METADATA_KEY}
        w = _Writer(d, outs, md)
        bar = progress_bar(sum(o.nbytes for o in outs), "dequantize", progress)
        try:
            for name, meta in tensors.items():
                try:
                    _decode_tensor(ck, name, meta, w, device)
                except KeyError as e:
                    raise CheckpointError(f"{src}: tensor {name!r}: stored tensor {e} is missing") from None
                except (QuantdriftError, ValueError) as err:
                    raise type(err)(f"tensor {name!r}: {err}") from None
                bar.update(math.prod(meta["shape"]) * _st_dtypes()[meta["dtype"]].itemsize)
            w.commit()
        except BaseException:
            w.abort()
            raise
        finally:
            bar.close()


def _decode_tensor(ck: _Checkpoint, name: str, meta: Dict[str, Any], w: _Writer, device: str) -> None:
    kind = meta["kind"]
    shape = tuple(meta["shape"])
    device = gpu.resolve(device, math.prod(shape))
    out_dt = _st_dtypes()[meta["dtype"]]
    codes_e = ck.entries[meta["codes"]]
    if math.prod(shape) == 0:  # no bytes to write; the kernels reject an axis of length 0
        return
    codes = codes_e.array()
    try:
        if kind == "keep":
            w.write(name, 0, codes.reshape(-1).view(np.uint8))
            return
        scheme = parse_scheme(meta["scheme"])
        rows, cols = _matrix_shape(shape, scheme)
        if kind == "cast":
            m = codes.reshape(rows, cols)
            for r0, r1 in _row_chunks(rows, cols):
                w.write(name, r0 * cols * out_dt.itemsize, m[r0:r1].astype(out_dt))
            return
        scale = ck.entries[meta["scale"]].array()
        if kind == "int":
            _decode_int(ck, name, meta, codes, scale, rows, cols, out_dt, w, device)
            return
        if kind == "float":
            packed = bool(meta.get("packed"))
            m = codes.reshape(rows, (cols + 1) // 2 if packed else cols)
            s = np.float32(scale.reshape(()))
            for r0, r1 in _row_chunks(rows, cols):
                c = m[r0:r1].view(np.uint8) if m.dtype.itemsize == 1 else m[r0:r1].view(np.uint16)
                rows_shape = (r1 - r0, cols) if packed else None
                y = decode(c, meta["format"], packed=packed, shape=rows_shape, device=device) * s
                w.write(name, r0 * cols * out_dt.itemsize, y.astype(out_dt))
            return
        m = codes.reshape(rows, -1)
        sm = scale.reshape(rows, -1)
        for r0, r1 in _row_chunks(rows, cols):
            if kind == "mx":
                y = mx_decode(m[r0:r1], sm[r0:r1], meta["element"], packed=meta["packed"], length=cols,
                              device=device)
            else:
                pts = float(ck.entries[meta["tensor_scale"]].array().reshape(()))
                y = nvfp4_decode(m[r0:r1], sm[r0:r1], per_tensor_scale=pts, packed=True, length=cols,
                                  device=device)
            w.write(name, r0 * cols * out_dt.itemsize, y.astype(out_dt))
    finally:
        codes_e.source.release(codes_e.start, codes_e.end)


def _decode_int(ck: _Checkpoint, name: str, meta: Dict[str, Any], codes: np.ndarray, scale: np.ndarray,
                rows: int, cols: int, out_dt: np.dtype, w: _Writer, device: str) -> None:
    sc = np.ascontiguousarray(scale, dtype=np.float64).reshape(-1)
    if "zero_point" in meta:
        zp = np.ascontiguousarray(ck.entries[meta["zero_point"]].array(), dtype=np.int32).reshape(-1)
    else:
        zp = np.full(sc.size, (int(meta["qmin"]) + int(meta["qmax"]) + 1) // 2, np.int32)
    width = meta["packed_bits"]
    flat = codes.reshape(-1)
    for r0, r1 in _row_chunks(rows, cols):
        spec, per = _int_spec(meta, r1 - r0, cols, rows)
        sl = slice(0, 1) if per is None else slice(r0 * per, r1 * per)
        if width is None:
            c = flat[r0 * cols : r1 * cols]
        else:
            c = flat[r0 * cols * width // 8 : -(-r1 * cols * width // 8)]
        y = _core.quant_dequantize(c, spec, sc[sl], zp[sl], packed_bits=width, signed=bool(meta["signed"]),
                                   length=(r1 - r0) * cols, f64_out=False,
                                   device=device)
        w.write(name, r0 * cols * out_dt.itemsize, y.astype(out_dt))
