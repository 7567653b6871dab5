"""Logit sources: rows of next-token scores from arrays and files.

:func:`open_source` turns an array, a file, a folder or a glob of shards into
a :class:`LogitSource`, which hands out blocks of rows ready for the Rust
kernels, memory-mapped and zero-copy where the file allows. Formats
(byte layouts in docs/sources.md):

* numpy arrays, [rows, vocab] or [sequences, positions, vocab]: float32,
  float64, float16, ml_dtypes' bfloat16, or uint16 with ``dtype=``;
* ``.npy`` (memory-mapped; ml_dtypes' bfloat16 is saved with descr ``<V2``
  and read back as bfloat16);
* safetensors: a named tensor (F32, F64, F16, BF16);
* llama.cpp ``--kl-divergence-base`` files (magic ``_logits_``, any name);
* quantdrift top-k dumps (safetensors with ``format = quantdrift.topk``);
* a folder (shards sorted by name) or a glob pattern, concatenated along rows.

Every file is checked when it is opened (magic, header, size, token range),
so a bad file fails before any work, with a :class:`~quantdrift.FormatError`
naming the file and what was expected.

Writers (all atomic: a temporary file in the same folder, fsync, rename):
:func:`write_llamacpp_base` / :class:`LlamacppBaseWriter`, :func:`write_topk`,
:func:`write_npy`, :func:`write_safetensors`.
"""

from __future__ import annotations

import errno
import glob as _glob
import json
import math
import mmap
import os
import struct
from contextlib import contextmanager
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._arrays import bfloat16, from_torch, is_bfloat16
from ._errors import DtypeError, FormatError, InputError, ShapeError
from ._files import atomic_path
from ._progress import progress_bar

__all__ = [
    "open_source",
    "LogitSource",
    "check_pair",
    "check_token_ids",
    "write_llamacpp_base",
    "LlamacppBaseWriter",
    "write_topk",
    "write_npy",
    "write_safetensors",
    "llamacpp_row_len",
    "LLAMACPP_MAGIC",
    "TOPK_FORMAT",
]

PathLike = Union[str, "os.PathLike[str]"]

LLAMACPP_MAGIC = b"_logits_"
NPY_MAGIC = b"\x93NUMPY"
TOPK_FORMAT = "quantdrift.topk"
_LLAMACPP_HEADER = struct.Struct("<8siii")
_DENSE_DTYPES = ("float32", "float64", "float16", "bfloat16")
_VALUES = ("logits", "logprobs")
# safetensors dtype names <-> (numpy storage dtype, quantdrift dtype name)
_ST_DTYPES: Dict[str, Tuple[np.dtype, str]] = {
    "F32": (np.dtype("<f4"), "float32"),
    "F64": (np.dtype("<f8"), "float64"),
    "F16": (np.dtype("<f2"), "float16"),
    "BF16": (np.dtype("<u2"), "bfloat16"),
    "I32": (np.dtype("<i4"), "int32"),
    "I64": (np.dtype("<i8"), "int64"),
}
_ST_NAMES = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
             "int32": "I32", "int64": "I64"}
# Rows per block when a writer streams a source: about this many bytes of scores.
_BLOCK_BYTES = 64 << 20


def llamacpp_row_len(vocab: int) -> int:
    """uint16 values per row of a llama.cpp base file: ``2*((vocab+1)//2) + 4``."""
    return 2 * ((vocab + 1) // 2) + 4


# ---------------------------------------------------------------------------
# LogitSource
# ---------------------------------------------------------------------------


class LogitSource:
    """Rows of next-token scores, read block by block.

    Attributes:
        name: the path (or ``"<array>"``), used in every error message.
        format: ``"array"``, ``"npy"``, ``"safetensors"``, ``"llamacpp"``,
            ``"topk"`` or ``"shards"``.
        layout: ``"dense"``, ``"llamacpp"`` or ``"topk"`` — what :meth:`block`
            returns.
        n_rows: rows (positions with a distribution).
        vocab: vocabulary size.
        dtype: dense: ``"float32"``, ``"float64"``, ``"float16"`` or
            ``"bfloat16"``; llamacpp: ``"uint16"``; topk: ``"float32"``.
        values: ``"logits"`` or ``"logprobs"`` (llamacpp and topk: log-probs).
        shape: the shape the data has in its file (or array).
        tokens: int32 [n_rows], the next token each row predicts, where the
            format stores it, else None.
        sequence_starts: int64, sorted row offsets where sequences start, else None.
        positions: int32 [n_rows], each row's position in its sequence, else None.
        topk: k of a top-k dump, else None.
    """

    name: str
    format: str
    layout: str
    n_rows: int
    vocab: int
    dtype: str
    values: str
    shape: Tuple[int, ...]
    tokens: Optional[np.ndarray] = None
    sequence_starts: Optional[np.ndarray] = None
    positions: Optional[np.ndarray] = None
    topk: Optional[int] = None

    def block(self, start: int, stop: int) -> Any:
        """Rows ``[start, stop)``, C-contiguous, zero-copy where the file allows.

        Returns:
            dense: a 2-D array [stop-start, vocab] of float32/float64/float16,
            or uint16 bit patterns for bfloat16. llamacpp: uint16
            [stop-start, llamacpp_row_len(vocab)] packed rows. topk: a tuple
            (indices int32 [rows, k], logprobs float32 [rows, k], rest float32
            [rows] or None).
        """
        start, stop = self._range(start, stop)
        return self._block(start, stop)

    def prefetch(self, start: int, stop: int) -> None:
        """Asks the OS to read rows ``[start, stop)`` ahead (madvise WILLNEED);
        a no-op for arrays in memory."""
        for mapped, offset, length in self._spans(int(start), int(stop)):
            mapped.willneed(offset, length)

    def release(self, start: int, stop: int) -> None:
        """Lets rows ``[start, stop)`` of a memory-mapped file leave this
        process's resident memory (madvise DONTNEED; the OS page cache keeps
        them). Streaming readers call it behind them, so that reading a file
        of any size holds a bounded working set. Arrays already handed out
        stay valid: touching them reads the file again."""
        for mapped, offset, length in self._spans(int(start), int(stop)):
            mapped.dontneed(offset, length)

    def _spans(self, start: int, stop: int) -> List[Tuple["_Mapped", int, int]]:
        """(map, byte offset, byte length) of the file bytes holding rows [start, stop)."""
        return []

    def close(self) -> None:
        """Releases the file's memory map (blocks already handed out stay valid)."""

    def info(self) -> Dict[str, Any]:
        """A summary: format, shape, dtype, vocab, tokens (rows), whether token
        ids are stored, sequences..."""
        d: Dict[str, Any] = {
            "name": self.name,
            "format": self.format,
            "layout": self.layout,
            "shape": tuple(int(s) for s in self.shape),
            "dtype": self.dtype,
            "values": self.values,
            "vocab": self.vocab,
            "tokens": self.n_rows,
            "token_ids": "stored" if self.tokens is not None else "none",
            "sequences": None if self.sequence_starts is None else int(len(self.sequence_starts)),
        }
        if self.topk is not None:
            d["k"] = self.topk
        return d

    def _range(self, start: int, stop: int) -> Tuple[int, int]:
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.n_rows:
            raise InputError(f"{self.name}: rows [{start}, {stop}) are outside [0, {self.n_rows})")
        return start, stop

    def _block(self, start: int, stop: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return self.n_rows

    def __enter__(self) -> "LogitSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"LogitSource({self.name!r}, format={self.format!r}, rows={self.n_rows}, "
                f"vocab={self.vocab}, dtype={self.dtype!r}, values={self.values!r})")


class _Mapped:
    """A read-only memory map of a whole file, shared by the arrays viewing it."""

    def __init__(self, path: str):
        self.path = path
        self.size = os.path.getsize(path)
        self.mm: Optional[mmap.mmap] = None
        if self.size:
            with open(path, "rb") as f:
                self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def array(self, dtype: Any, offset: int, shape: Tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0 or self.mm is None:
            return np.empty(shape, dtype)
        return np.frombuffer(self.mm, dtype=dtype, count=count, offset=offset).reshape(shape)

    def willneed(self, offset: int, length: int) -> None:
        self._advise("MADV_WILLNEED", offset, length)

    def dontneed(self, offset: int, length: int) -> None:
        # The pages leave this process's resident set; the page cache keeps
        # them, and touching them again faults them back in from there.
        self._advise("MADV_DONTNEED", offset, length)

    def _advise(self, advice: str, offset: int, length: int) -> None:
        if self.mm is None or length <= 0 or not hasattr(mmap, advice):
            return
        page = mmap.PAGESIZE
        begin = offset - offset % page
        end = min(offset + length, self.size)
        try:
            self.mm.madvise(getattr(mmap, advice), begin, end - begin)
        except (OSError, ValueError, AttributeError):  # a hint only
            pass

    def close(self) -> None:
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:  # arrays still view it; it closes when they go
                pass
            self.mm = None


class _Dense(LogitSource):
    layout = "dense"

    def __init__(self, data: np.ndarray, dtype: str, values: str, name: str, fmt: str,
                 shape: Tuple[int, ...], mapped: Optional[_Mapped] = None, offset: int = 0):
        self.name, self.format, self.dtype, self.values = name, fmt, dtype, values
        self.shape = shape
        self._data = data  # 2-D [rows, vocab]
        self.n_rows, self.vocab = int(data.shape[0]), int(data.shape[1])
        self._mapped, self._offset = mapped, offset
        if len(shape) == 3:
            seqs, positions = shape[0], shape[1]
            self.sequence_starts = np.arange(seqs, dtype=np.int64) * positions
            self.positions = np.tile(np.arange(positions, dtype=np.int32), seqs)

    def _block(self, start: int, stop: int) -> np.ndarray:
        b = self._data[start:stop]
        if not (b.flags.c_contiguous and b.flags.aligned):
            b = np.array(b, order="C", copy=True)
        return b

    def _spans(self, start: int, stop: int) -> List[Tuple["_Mapped", int, int]]:
        if self._mapped is None:
            return []
        row = self.vocab * self._data.itemsize
        return [(self._mapped, self._offset + start * row, (stop - start) * row)]

    def close(self) -> None:
        if self._mapped is not None:
            self._mapped.close()


class _Llamacpp(LogitSource):
    format = layout = "llamacpp"
    dtype = "uint16"
    values = "logprobs"

    def __init__(self, path: str, mapped: _Mapped, n_ctx: int, vocab: int, n_chunk: int):
        self.name, self._mapped = path, mapped
        self.n_ctx, self.n_chunk, self.vocab = n_ctx, n_chunk, vocab
        self.first = n_ctx // 2
        per_chunk = max(n_ctx - 1 - self.first, 0)
        self.rows_per_chunk = per_chunk
        self.n_rows = n_chunk * per_chunk
        self.row_len = llamacpp_row_len(vocab)
        self.shape = (self.n_rows, self.row_len)
        self.file_tokens = mapped.array(np.dtype("<i4"), 20, (n_chunk * n_ctx,))
        self._offset = 20 + 4 * n_chunk * n_ctx
        self._rows = mapped.array(np.dtype("<u2"), self._offset, (self.n_rows, self.row_len))
        chunk = np.arange(n_chunk, dtype=np.int64)[:, None] * n_ctx
        within = np.arange(per_chunk, dtype=np.int64)[None, :]
        self.tokens = np.ascontiguousarray(self.file_tokens[(chunk + self.first + 1 + within).ravel()],
                                           dtype=np.int32)
        self.positions = np.tile(np.arange(self.first, self.first + per_chunk, dtype=np.int32), n_chunk)
        self.sequence_starts = np.arange(n_chunk, dtype=np.int64) * per_chunk

    def _block(self, start: int, stop: int) -> np.ndarray:
        return self._rows[start:stop]

    def _spans(self, start: int, stop: int) -> List[Tuple["_Mapped", int, int]]:
        row = 2 * self.row_len
        return [(self._mapped, self._offset + start * row, (stop - start) * row)]

    def close(self) -> None:
        self._mapped.close()

    def info(self) -> Dict[str, Any]:
        d = super().info()
        d.update(n_ctx=self.n_ctx, n_chunk=self.n_chunk, scored_positions=f"{self.first}..{self.n_ctx - 2}")
        return d


class _Topk(LogitSource):
    format = layout = "topk"
    dtype = "float32"
    values = "logprobs"

    def __init__(self, name: str, indices: np.ndarray, logprobs: np.ndarray, rest: Optional[np.ndarray],
                 vocab: int, mapped: Optional[_Mapped] = None, offsets: Tuple[int, ...] = ()):
        self.name, self.vocab = name, vocab
        self._indices, self._logprobs, self._rest = indices, logprobs, rest
        self.n_rows, self.topk = int(indices.shape[0]), int(indices.shape[1])
        self.shape = (self.n_rows, self.topk)
        self._mapped, self._offsets = mapped, offsets

    def _block(self, start: int, stop: int):
        def c(a):
            b = a[start:stop]
            return b if b.flags.c_contiguous and b.flags.aligned else np.array(b, order="C", copy=True)

        return c(self._indices), c(self._logprobs), None if self._rest is None else c(self._rest)

    def _spans(self, start: int, stop: int) -> List[Tuple["_Mapped", int, int]]:
        if self._mapped is None:
            return []
        k = int(self.topk or 0)
        widths = (4 * k, 4 * k, 4)[: 2 if self._rest is None else 3]
        return [(self._mapped, offset + start * width, (stop - start) * width)
                for offset, width in zip(self._offsets, widths)]

    def close(self) -> None:
        if self._mapped is not None:
            self._mapped.close()


class _Shards(LogitSource):
    format = "shards"

    def __init__(self, name: str, parts: List[LogitSource]):
        first = parts[0]
        for p in parts[1:]:
            for attr in ("layout", "vocab", "dtype", "values", "topk"):
                if getattr(p, attr) != getattr(first, attr):
                    raise InputError(
                        f"shard {p.name} has {attr} {getattr(p, attr)!r} but the first shard "
                        f"{first.name} has {getattr(first, attr)!r}; shards of {name} must agree")
            if first.layout == "topk" and (p.block(0, 0)[2] is None) != (first.block(0, 0)[2] is None):
                raise InputError(f"shard {p.name} and the first shard {first.name} disagree on "
                                 "whether the remaining mass 'rest' is stored")
        self.name, self.parts = name, parts
        self.layout, self.vocab, self.dtype = first.layout, first.vocab, first.dtype
        self.values, self.topk = first.values, first.topk
        sizes = [p.n_rows for p in parts]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_rows = int(self._starts[-1])
        self.shape = (self.n_rows,) + tuple(first.shape[-1:]) if first.layout != "dense" else (self.n_rows, self.vocab)
        if all(p.tokens is not None for p in parts):
            self.tokens = np.concatenate([p.tokens for p in parts]).astype(np.int32)  # type: ignore[misc]
        if all(p.positions is not None for p in parts):
            self.positions = np.concatenate([p.positions for p in parts]).astype(np.int32)  # type: ignore[misc]
        if all(p.sequence_starts is not None for p in parts):
            self.sequence_starts = np.concatenate(
                [p.sequence_starts + s for p, s in zip(parts, self._starts)]).astype(np.int64)  # type: ignore[operator]

    def _pieces(self, start: int, stop: int) -> Iterator[Tuple[LogitSource, int, int]]:
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        while start < stop and i < len(self.parts):
            base = int(self._starts[i])
            end = min(stop, int(self._starts[i + 1]))
            if end > start:
                yield self.parts[i], start - base, end - base
            start = max(start, end)
            i += 1

    def _block(self, start: int, stop: int) -> Any:
        pieces = [p.block(a, b) for p, a, b in self._pieces(start, stop)]
        if not pieces:
            return self.parts[0].block(0, 0)
        if len(pieces) == 1:
            return pieces[0]
        if self.layout == "topk":
            rest = None if pieces[0][2] is None else np.concatenate([x[2] for x in pieces])
            return (np.concatenate([x[0] for x in pieces]), np.concatenate([x[1] for x in pieces]), rest)
        return np.concatenate(pieces)

    def _spans(self, start: int, stop: int) -> List[Tuple["_Mapped", int, int]]:
        return [span for p, a, b in self._pieces(start, stop) for span in p._spans(a, b)]

    def close(self) -> None:
        for p in self.parts:
            p.close()

    def info(self) -> Dict[str, Any]:
        d = super().info()
        d["shards"] = len(self.parts)
        return d


# ---------------------------------------------------------------------------
# open_source
# ---------------------------------------------------------------------------


def open_source(obj: Any, *, dtype: Optional[str] = None, tensor: Optional[str] = None,
                values: Optional[str] = None, name: Optional[str] = None) -> LogitSource:
    """Opens logits (or log-probs) for reading in blocks of rows.

    Args:
        obj: a :class:`LogitSource` (returned as is); a numpy array [rows, vocab]
            or [sequences, positions, vocab] (or a torch tensor in CPU memory,
            read in place); a path to a ``.npy``, a
            ``.safetensors``, a llama.cpp base file (recognised by its magic
            ``_logits_``, whatever its name) or a top-k dump; a folder (its
            ``.npy``/``.safetensors``/base files sorted by name) or a glob
            pattern (matches sorted by name); or a list of any of these,
            concatenated along rows in the order given.
        dtype: what uint16 data holds: ``"bfloat16"`` or ``"float16"``
            (``.npy`` files saved from ml_dtypes' bfloat16 need none).
        tensor: the safetensors tensor to read; optional when there is one.
        values: ``"logits"`` (default for dense data) or ``"logprobs"``.
        name: the name used in error messages (default: the path or ``"<array>"``).

    Raises:
        FileNotFoundError: a path (or pattern) that names nothing.
        FormatError: bad magic, corrupt header, a size that disagrees with the
            header, a token id outside the vocabulary.
        ShapeError, DtypeError: data that is not 2-D/3-D scores of a supported dtype.
    """
    if isinstance(obj, LogitSource):
        return obj
    if values is not None and values not in _VALUES:
        raise InputError(f"values must be 'logits' or 'logprobs', got {values!r}")
    if dtype is not None and dtype not in _DENSE_DTYPES:
        raise DtypeError(f"dtype must be one of {', '.join(_DENSE_DTYPES)} or None, got {dtype!r}")
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise InputError("an empty list of shards")
        parts = [open_source(o, dtype=dtype, tensor=tensor, values=values) for o in obj]
        return parts[0] if len(parts) == 1 else _Shards(name or f"[{parts[0].name}, ...]", parts)
    if isinstance(obj, (str, os.PathLike)):
        return _open_path(os.fspath(obj), dtype=dtype, tensor=tensor, values=values, name=name)
    obj = from_torch(obj, name or "the array")
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        arr = np.asarray(obj)
        return _dense(arr, dtype, values or "logits", name or "<array>", "array")
    raise InputError(f"cannot read logits from a {type(obj).__name__}: expected an array, a path, "
                     "a folder, a glob pattern or a LogitSource")


def _open_path(path: str, *, dtype, tensor, values, name) -> LogitSource:
    files = shard_files(path)
    if len(files) == 1 and files[0] == path:
        return _open_file(path, dtype=dtype, tensor=tensor, values=values, name=name or path)
    return _shards(name or path, files, dtype, tensor, values)


def shard_files(path: str) -> List[str]:
    """The files a path stands for, in the order they are read: the shards
    of a folder (sorted by name; .npy, .safetensors and llama.cpp base
    files), the matches of a glob (sorted), or the file itself."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if not f.startswith("."))
        files = [f for f in files if os.path.isfile(f) and _is_shard(f)]
        if not files:
            raise FileNotFoundError(f"{path}: no shards (.npy, .safetensors or llama.cpp base files) in the folder")
        return files
    if not os.path.exists(path):
        if any(c in path for c in "*?["):
            files = sorted(f for f in _glob.glob(path) if os.path.isfile(f))
            if not files:
                raise FileNotFoundError(f"{path}: the pattern matches no file")
            return files
        raise FileNotFoundError(f"{path}: no such file or folder")
    return [path]


def _is_shard(path: str) -> bool:
    if path.endswith((".npy", ".safetensors")):
        return True
    with open(path, "rb") as f:
        return f.read(8) == LLAMACPP_MAGIC


def _shards(name, files, dtype, tensor, values) -> LogitSource:
    parts = [_open_file(f, dtype=dtype, tensor=tensor, values=values, name=f) for f in files]
    return parts[0] if len(parts) == 1 else _Shards(name, parts)


def _open_file(path: str, *, dtype, tensor, values, name) -> LogitSource:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:8] == LLAMACPP_MAGIC:
        return _open_llamacpp(path, name)
    if head[:6] == NPY_MAGIC:
        return _open_npy(path, dtype, values, name)
    if path.endswith(".npy"):
        raise FormatError(f"{name}: bad magic: a .npy file starts with {NPY_MAGIC!r}, found {head[:6]!r}")
    if path.endswith(".safetensors") or _looks_like_safetensors(head):
        return _open_safetensors(path, dtype, tensor, values, name)
    raise FormatError(
        f"{name}: unknown format: the first bytes {head[:8]!r} are neither the llama.cpp magic "
        f"{LLAMACPP_MAGIC!r}, the .npy magic {NPY_MAGIC!r}, nor a safetensors header")


def _looks_like_safetensors(head: bytes) -> bool:
    return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < (1 << 30)


def _dense(arr: np.ndarray, dtype: Optional[str], values: str, name: str, fmt: str,
           mapped: Optional[_Mapped] = None, offset: int = 0) -> LogitSource:
    """A dense source over a 2-D or 3-D array, naming its dtype."""
    have = arr.dtype
    if have.byteorder == ">":  # before the dtype checks: dtype('>f4') != np.float32
        raise DtypeError(f"{name}: big-endian data ({have}) is not supported; convert it to little-endian "
                         f"(e.g. arr.astype('{have.newbyteorder('<').str}'))")
    if have == np.float32 or have == np.float64 or have == np.float16 or is_bfloat16(have):
        stored = "bfloat16" if is_bfloat16(have) else have.name
        if dtype is not None and dtype != stored:
            raise DtypeError(f"{name}: the data is {stored}, but dtype={dtype!r} was given "
                             "(dtype= only names what uint16 data holds)")
        kind = stored
    elif have == np.uint16 or (have.kind == "V" and have.itemsize == 2):
        # uint16 bit patterns, or ml_dtypes' bfloat16 saved by np.save (descr '<V2')
        kind = dtype or ("bfloat16" if have.kind == "V" else "")
        if kind not in ("bfloat16", "float16"):
            raise DtypeError(f"{name}: uint16 data needs dtype='bfloat16' or dtype='float16' "
                             "to say what it holds")
    else:
        raise DtypeError(f"{name}: scores must be float32, float64, float16 or bfloat16, got dtype {have}")
    if arr.ndim not in (2, 3):
        raise ShapeError(f"{name}: expected shape [rows, vocab] or [sequences, positions, vocab], "
                         f"got {arr.shape}")
    if arr.shape[-1] == 0:
        raise ShapeError(f"{name}: the vocabulary axis has length 0 (shape {arr.shape})")
    shape = tuple(int(s) for s in arr.shape)
    data = arr.reshape(-1, shape[-1]) if arr.ndim == 3 else arr
    if kind == "bfloat16":
        data = data.view(np.uint16)
    elif kind == "float16" and data.dtype != np.float16:
        data = data.view(np.float16)
    return _Dense(data, kind, values, name, fmt, shape, mapped, offset)


def _npy_header(path: str, name: str) -> Tuple[Tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) of a .npy file, with its
    magic, header and size checked against each other."""
    fmt = np.lib.format
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
        if head != NPY_MAGIC:
            raise FormatError(f"{name}: bad magic: a .npy file starts with {NPY_MAGIC!r}, found {head!r}")
        f.seek(0)
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, descr = fmt.read_array_header_1_0(f)
            else:
                shape, fortran, descr = fmt.read_array_header_2_0(f)
        except (ValueError, SyntaxError, EOFError) as e:
            raise FormatError(f"{name}: corrupt .npy header: {e}") from None
        offset = f.tell()
    expected = offset + int(np.prod(shape, dtype=np.int64)) * descr.itemsize
    if not descr.hasobject and size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise FormatError(f"{name}: {what}: the header (shape {shape}, {descr}) needs "
                          f"{expected} bytes, the file has {size}")
    return shape, fortran, descr, offset


def _open_npy(path: str, dtype, values, name) -> LogitSource:
    shape, fortran, descr, offset = _npy_header(path, name)
    if descr.hasobject:
        raise DtypeError(f"{name}: object arrays are not scores")
    mapped = _Mapped(path)
    arr = mapped.array(descr, offset, shape[::-1] if fortran else shape)
    if fortran:
        arr = arr.T
    return _dense(arr, dtype, values or "logits", name, "npy", mapped, offset)


def read_npy(path: PathLike, name: str) -> np.ndarray:
    """Reads a small .npy file (token ids, a mask) whole, with the checks
    :func:`open_source` makes: ``np.load`` would fail on a truncated or
    foreign file with a message that names neither.

    Args:
        path: the file.
        name: what the file is for, as error messages should name it
            (e.g. ``"tokens file next.npy"``).

    Raises:
        FileNotFoundError: no such file (the message names ``name``);
            IsADirectoryError for a folder.
        FormatError: bad magic, a corrupt header, a size the header disagrees with.
        DtypeError: an object (pickled) array.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, f"{name}: is a folder, not a .npy file", path)
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, f"{name}: no such file", path)
    shape, fortran, descr, offset = _npy_header(path, name)
    if descr.hasobject:
        raise DtypeError(f"{name}: holds pickled Python objects (dtype {descr}), which quantdrift does not load")
    count = int(np.prod(shape, dtype=np.int64))
    data = np.fromfile(path, dtype=descr, count=count, offset=offset)
    return data.reshape(shape[::-1]).T if fortran else data.reshape(shape)


def _read_safetensors_header(path: str, name: str) -> Tuple[Dict[str, Any], Dict[str, str], int]:
    """(tensors, metadata, data offset) with every tensor's range checked."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"{name}: truncated: a safetensors file needs an 8-byte header length, "
                              f"the file has {size} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise FormatError(f"{name}: truncated or not safetensors: the header length says {n} bytes "
                              f"of JSON, the file has {size - 8} after the length")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{name}: corrupt safetensors header: {e}") from None
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError(f"{name}: corrupt safetensors header: __metadata__ is {meta!r}; "
                          "it must be an object of string to string")
    base = 8 + n
    tensors = {}
    for key, t in header.items():
        try:
            st_dtype, shape, (begin, end) = t["dtype"], [int(s) for s in t["shape"]], t["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{name}: corrupt safetensors header: tensor {key!r} needs dtype, shape "
                              f"and data_offsets, got {t!r}") from None
        if any(s < 0 for s in shape):
            raise FormatError(f"{name}: corrupt safetensors header: tensor {key!r} has shape {shape}; "
                              "dimensions must be non-negative")
        if begin < 0 or end < begin:
            raise FormatError(f"{name}: corrupt safetensors header: tensor {key!r} has invalid "
                              f"data_offsets [{begin}, {end}]; they must be 0 <= begin <= end")
        itemsize = _ST_DTYPES[st_dtype][0].itemsize if st_dtype in _ST_DTYPES else None
        # Python ints: an int64 product of huge dimensions wraps (2**40 * 2**40 -> 0)
        nbytes = math.prod(shape) * itemsize if itemsize is not None else None
        if nbytes is not None and end - begin != nbytes:
            raise FormatError(f"{name}: corrupt safetensors header: tensor {key!r} of shape {shape} "
                              f"{st_dtype} needs {nbytes} bytes, its offsets span {end - begin}")
        if base + end > size:
            raise FormatError(f"{name}: truncated: tensor {key!r} ends at byte {base + end}, "
                              f"the file has {size}")
        tensors[key] = {"dtype": st_dtype, "shape": tuple(shape), "offset": base + begin}
    return tensors, meta, size


def _st_array(mapped: _Mapped, t: Dict[str, Any], key: str, name: str) -> np.ndarray:
    if t["dtype"] not in _ST_DTYPES:
        raise DtypeError(f"{name}: tensor {key!r} has dtype {t['dtype']}; scores must be F32, F64, F16 or BF16")
    return mapped.array(_ST_DTYPES[t["dtype"]][0], t["offset"], t["shape"])


def _open_safetensors(path: str, dtype, tensor, values, name) -> LogitSource:
    tensors, meta, _ = _read_safetensors_header(path, name)
    if meta.get("format") == TOPK_FORMAT:
        return _open_topk(path, tensors, meta, name)
    if tensor is None:
        if len(tensors) != 1:
            raise InputError(f"{name}: has {len(tensors)} tensors ({', '.join(sorted(tensors)) or 'none'}); "
                             "choose one with tensor=")
        tensor = next(iter(tensors))
    if tensor not in tensors:
        raise InputError(f"{name}: no tensor {tensor!r}; it has {', '.join(sorted(tensors)) or 'none'}")
    t = tensors[tensor]
    if t["dtype"] not in ("F32", "F64", "F16", "BF16"):
        raise DtypeError(f"{name}: tensor {tensor!r} has dtype {t['dtype']}; scores must be F32, F64, F16 or BF16")
    mapped = _Mapped(path)
    arr = _st_array(mapped, t, tensor, name)
    kind = _ST_DTYPES[t["dtype"]][1]
    if kind == "bfloat16" and dtype not in (None, "bfloat16"):
        raise DtypeError(f"{name}: tensor {tensor!r} is BF16 but dtype={dtype!r} was given")
    if kind == "bfloat16":
        dtype = "bfloat16"
    stored_values = meta.get("values") if meta.get("values") in _VALUES else None
    return _dense(arr, dtype, values or stored_values or "logits", name, "safetensors", mapped, t["offset"])


def _open_topk(path: str, tensors: Dict[str, Any], meta: Dict[str, str], name: str) -> LogitSource:
    def need(key, dt, ndim):
        if key not in tensors:
            raise FormatError(f"{name}: a top-k dump needs a tensor {key!r}; it has {', '.join(sorted(tensors))}")
        t = tensors[key]
        if t["dtype"] != dt or len(t["shape"]) != ndim:
            raise FormatError(f"{name}: top-k tensor {key!r} must be {dt} with {ndim} axes, "
                              f"got {t['dtype']} {list(t['shape'])}")
        return t

    try:
        vocab = int(meta["vocab"])
        if vocab <= 0:
            raise ValueError
    except (KeyError, ValueError):
        raise FormatError(f"{name}: corrupt top-k metadata: 'vocab' must be a positive integer, "
                          f"got {meta.get('vocab')!r}") from None
    ti, tl = need("indices", "I32", 2), need("logprobs", "F32", 2)
    if ti["shape"] != tl["shape"]:
        raise FormatError(f"{name}: top-k 'indices' {list(ti['shape'])} and 'logprobs' "
                          f"{list(tl['shape'])} differ in shape")
    rows = ti["shape"][0]
    optional = {}
    for key, dt in (("rest", "F32"), ("tokens", "I32"), ("positions", "I32"), ("sequence_starts", "I64")):
        if key in tensors:
            t = need(key, dt, 1)
            if key != "sequence_starts" and t["shape"][0] != rows:
                raise FormatError(f"{name}: top-k tensor {key!r} has {t['shape'][0]} rows, 'indices' has {rows}")
            optional[key] = t
    mapped = _Mapped(path)
    indices = _st_array(mapped, ti, "indices", name)
    logprobs = _st_array(mapped, tl, "logprobs", name)
    rest = _st_array(mapped, optional["rest"], "rest", name) if "rest" in optional else None
    if indices.size and (indices.min() < 0 or indices.max() >= vocab):
        raise FormatError(f"{name}: top-k indices must lie in [0, {vocab}), found "
                          f"{int(indices.min())}..{int(indices.max())}")
    src = _Topk(name, indices, logprobs, rest, vocab, mapped,
                (ti["offset"], tl["offset"], optional["rest"]["offset"] if rest is not None else 0))
    if "tokens" in optional:
        try:
            src.tokens = check_token_ids(_st_array(mapped, optional["tokens"], "tokens", name), vocab,
                                         f"{name}: top-k tensor 'tokens'", error=FormatError)
        except FormatError:
            src.close()
            raise
    if "positions" in optional:
        src.positions = np.asarray(_st_array(mapped, optional["positions"], "positions", name), dtype=np.int32)
    if "sequence_starts" in optional:
        src.sequence_starts = np.asarray(_st_array(mapped, optional["sequence_starts"], "sequence_starts", name),
                                         dtype=np.int64)
    return src


def _open_llamacpp(path: str, name: str) -> LogitSource:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(_LLAMACPP_HEADER.size)
    if len(head) < _LLAMACPP_HEADER.size:
        raise FormatError(f"{name}: truncated: a llama.cpp base file has a 20-byte header, the file has {size} bytes")
    magic, n_ctx, vocab, n_chunk = _LLAMACPP_HEADER.unpack(head)
    if magic != LLAMACPP_MAGIC:
        raise FormatError(f"{name}: bad magic: expected {LLAMACPP_MAGIC!r}, found {magic!r}")
    if n_ctx <= 0 or vocab <= 0 or n_chunk < 0:
        raise FormatError(f"{name}: corrupt llama.cpp header: n_ctx {n_ctx}, n_vocab {vocab}, "
                          f"n_chunk {n_chunk} (n_ctx and n_vocab must be positive, n_chunk ≥ 0)")
    rows = n_chunk * max(n_ctx - 1 - n_ctx // 2, 0)
    expected = 20 + 4 * n_chunk * n_ctx + 2 * llamacpp_row_len(vocab) * rows
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise FormatError(f"{name}: {what}: the header (n_ctx {n_ctx}, n_vocab {vocab}, n_chunk {n_chunk}) "
                          f"needs {expected} bytes, the file has {size}")
    src = _Llamacpp(path, _Mapped(path), n_ctx, vocab, n_chunk)
    src.name = name
    toks = src.file_tokens
    if toks.size and (toks.min() < 0 or toks.max() >= vocab):
        bad = int(np.flatnonzero((toks < 0) | (toks >= vocab))[0])
        src.close()
        raise FormatError(f"{name}: corrupt token array: token {int(toks[bad])} at index {bad} is outside "
                          f"the vocabulary [0, {vocab})")
    return src


def check_pair(base: Any, other: Any) -> None:
    """Checks that two sources can be compared row by row.

    Args:
        base, other: :class:`LogitSource` objects, or anything
            :func:`open_source` opens (arrays, paths, folders, globs).

    Raises:
        InputError: naming both sources, when their vocabularies or row
            counts differ, or when both store token ids and they differ.
        Whatever :func:`open_source` raises for an argument it cannot open.
    """
    base, other = open_source(base), open_source(other)
    if base.vocab != other.vocab:
        raise InputError(f"vocab mismatch: {base.name} has {base.vocab} tokens per row, "
                         f"{other.name} has {other.vocab}")
    if base.n_rows != other.n_rows:
        raise InputError(f"row-count mismatch: {base.name} has {base.n_rows} rows, "
                         f"{other.name} has {other.n_rows}")
    if base.tokens is not None and other.tokens is not None and not np.array_equal(base.tokens, other.tokens):
        row = int(np.flatnonzero(base.tokens != other.tokens)[0])
        raise InputError(f"token mismatch: row {row} predicts token {int(base.tokens[row])} in {base.name} "
                         f"but {int(other.tokens[row])} in {other.name}: the files score different texts")


# ---------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------


def check_token_ids(tokens: Any, vocab: int, what: str = "tokens", *, unit: str = "row",
                    error: type = InputError) -> np.ndarray:
    """``tokens`` flattened to int32 once they are known to be integer ids in
    ``[0, vocab)``; otherwise ``error`` (DtypeError for a non-integer dtype)
    naming ``what`` and the first bad ``unit`` (``"row"``, ``"index"``)."""
    tok = np.asarray(tokens)
    if tok.dtype.kind not in "iu":
        flat = tok.reshape(-1)
        where = ""
        if tok.dtype.kind == "f" and flat.size:
            # float ids would be truncated silently: say where the first fraction is
            frac = np.flatnonzero(flat != np.trunc(flat))
            if frac.size:
                where = f" ({unit} {int(frac[0])} holds {float(flat[frac[0]])!r})"
        raise DtypeError(f"{what} must be integer token ids, got dtype {tok.dtype}{where}")
    tok = tok.reshape(-1)
    if tok.size and (tok.min() < 0 or tok.max() >= vocab):
        bad = int(np.flatnonzero((tok < 0) | (tok >= vocab))[0])
        raise error(f"{what}: id {int(tok[bad])} at {unit} {bad} is outside the vocabulary [0, {vocab})")
    return tok.astype(np.int32)


def _bad_row(scores: np.ndarray) -> Optional[Tuple[int, str]]:
    """The first row of float scores [rows, vocab] that holds no distribution
    (NaN, +inf, or −inf everywhere) and what is wrong with it, else None."""
    if scores.size == 0:
        return None
    with np.errstate(invalid="ignore"):
        top = np.max(scores, axis=1)  # NaN propagates, so one pass finds all three
    bad = np.flatnonzero(~np.isfinite(top))
    if not bad.size:
        return None
    row = int(bad[0])
    x = scores[row]
    if np.isnan(x).any():
        return row, f"has NaN at index {int(np.flatnonzero(np.isnan(x))[0])}"
    if (x == np.inf).any():
        return row, f"has +inf at index {int(np.flatnonzero(x == np.inf)[0])}"
    return row, "is -inf everywhere: no distribution to store"


def _block_rows(source: LogitSource, itemsize: int = 4) -> int:
    return max(1, _BLOCK_BYTES // max(1, source.vocab * itemsize))


def _kernel_input(block: np.ndarray, dtype: str) -> Tuple[np.ndarray, str]:
    """A dense block as the Rust kernels take it: (array, what uint16 holds)."""
    if block.dtype == np.float16:
        return block.view(np.uint16), "float16"
    return block, dtype if block.dtype == np.uint16 else "bfloat16"


def _dense_f32(source: LogitSource, block: Any) -> np.ndarray:
    """A dense or llamacpp block as float32 scores (log-probs for llamacpp)."""
    if source.layout == "llamacpp":
        return _core.llamacpp_decode(block, source.vocab)
    if source.dtype == "bfloat16":
        return block.view(bfloat16()).astype(np.float32)
    return block.astype(np.float32, copy=False)


class LlamacppBaseWriter:
    """Writes a llama.cpp ``--kl-divergence-base`` file chunk by chunk, atomically.

    The header and the token array go out when the writer opens; then
    :meth:`write_chunk` (one chunk's logits, all ``n_ctx`` positions or only
    the scored ones) or :meth:`write_rows` (scored rows, any count) append
    packed rows; :meth:`close` checks that every chunk was written and moves
    the file into place. Use it as a context manager: an exception removes
    the temporary file and leaves nothing under ``path``.

    Args:
        path: the output file.
        tokens: int token ids of the text, ``n_chunk * n_ctx`` of them (more
            are cut, as llama.cpp does; a 2-D [chunks, n_ctx] array is fine).
        n_ctx: tokens per chunk (llama.cpp's ``-c``).
        vocab: vocabulary size.
        n_chunk: chunks to write (default: ``len(tokens) // n_ctx``).
        gap: clamp below the top logit: 16 as llama.cpp (24 as ik_llama.cpp).
    """

    def __init__(self, path: PathLike, tokens: Any, n_ctx: int, vocab: int, *,
                 n_chunk: Optional[int] = None, gap: float = 16.0):
        tok = np.asarray(tokens)
        if tok.dtype.kind not in "iu":
            raise DtypeError(f"tokens must be integer token ids, got dtype {tok.dtype}")
        tok = tok.reshape(-1)
        n_ctx, vocab = int(n_ctx), int(vocab)
        if n_ctx < 3:
            raise InputError(f"n_ctx must be at least 3 (llama.cpp scores positions n_ctx//2..n_ctx-2), got {n_ctx}")
        if not 0 < vocab < 2**31:
            raise InputError(f"vocab must be in [1, 2**31), got {vocab}")
        available = tok.size // n_ctx
        n_chunk = available if n_chunk is None else int(n_chunk)
        if not 0 <= n_chunk <= available:
            raise InputError(f"n_chunk {n_chunk} needs {n_chunk * n_ctx} tokens, got {tok.size} "
                             f"(n_ctx {n_ctx})")
        tok = check_token_ids(tok[: n_chunk * n_ctx], vocab, unit="index")
        self.path, self.n_ctx, self.vocab, self.n_chunk, self.gap = os.fspath(path), n_ctx, vocab, n_chunk, float(gap)
        self.first = n_ctx // 2
        self.rows_per_chunk = n_ctx - 1 - self.first
        self.n_rows = n_chunk * self.rows_per_chunk
        self.written = 0
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        try:
            self._file: Optional[BinaryIO] = open(self._tmp, "wb")
            self._file.write(_LLAMACPP_HEADER.pack(LLAMACPP_MAGIC, n_ctx, vocab, n_chunk))
            self._file.write(tok.astype("<i4").tobytes())
        except BaseException as e:
            self._abort(e)
            raise

    def write_rows(self, logits: Any) -> None:
        """Appends scored rows (float32/float64/float16/bfloat16 logits [rows, vocab])."""
        out = self._file
        if out is None:
            raise InputError(f"{self.path}: the writer is closed; rows can no longer be written")
        try:
            arr = np.asarray(logits)
            if arr.ndim != 2 or arr.shape[1] != self.vocab:
                raise ShapeError(f"logits must be [rows, {self.vocab}], got {arr.shape}")
            if self.written + arr.shape[0] > self.n_rows:
                raise ShapeError(f"too many rows: {self.written} written + {arr.shape[0]} > "
                                 f"{self.n_rows} ({self.n_chunk} chunks × {self.rows_per_chunk})")
            src = _dense(arr, None, "logits", "logits", "array")
            x, x16 = _kernel_input(np.ascontiguousarray(src.block(0, src.n_rows)), src.dtype)
            try:
                packed = _core.llamacpp_encode(x, gap=self.gap, logits16=x16)
            except ValueError:
                # the kernel counts rows within this call; name the row among all rows written
                bad = _bad_row(_dense_f32(src, src.block(0, src.n_rows)))
                if bad is None:
                    raise
                raise InputError(f"{self.path}: scored row {self.written + bad[0]} {bad[1]}; "
                                 "a base file needs finite logits (or -inf)") from None
            out.write(packed.astype("<u2", copy=False).tobytes())
            self.written += arr.shape[0]
        except BaseException as e:
            self._abort(e)
            raise

    def write_chunk(self, logits: Any) -> None:
        """Appends one chunk: logits of all ``n_ctx`` positions (positions
        ``n_ctx//2 .. n_ctx-2`` are kept) or of the scored positions only."""
        arr = np.asarray(logits)
        if arr.ndim == 2 and arr.shape[0] == self.n_ctx:
            arr = arr[self.first: self.n_ctx - 1]
        elif arr.ndim != 2 or arr.shape[0] != self.rows_per_chunk:
            self._abort(None)
            raise ShapeError(f"a chunk has {self.n_ctx} positions (or {self.rows_per_chunk} scored ones), "
                             f"got logits of shape {arr.shape}")
        self.write_rows(arr)

    def close(self) -> None:
        """Checks that all rows were written, then moves the file into place."""
        if self._file is None:
            return
        if self.written != self.n_rows:
            err = InputError(f"{self.path}: {self.written} of {self.n_rows} rows written "
                             f"({self.n_chunk} chunks × {self.rows_per_chunk}); the file is not complete")
            self._abort(err)
            raise err
        self._file.close()
        self._file = None
        self._atomic.__exit__(None, None, None)

    def _abort(self, exc: Optional[BaseException]) -> None:
        out = getattr(self, "_file", None)
        if out is not None:
            out.close()
        self._file = None
        e = exc if exc is not None else InputError("aborted")
        try:
            self._atomic.__exit__(type(e), e, None)
        except BaseException:  # _atomic re-raises after removing the temp file
            pass

    def __enter__(self) -> "LlamacppBaseWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self._abort(exc)
        else:
            self.close()


def write_llamacpp_base(path: PathLike, logits: Any, tokens: Any, n_ctx: Optional[int] = None, *,
                        n_chunk: Optional[int] = None, gap: float = 16.0, dtype: Optional[str] = None,
                        progress: Optional[bool] = None) -> None:
    """Writes a llama.cpp ``--kl-divergence-base`` file, byte-exact with llama.cpp's.

    Args:
        path: the output file (written atomically).
        logits: anything :func:`open_source` takes with dense scores: rows of
            every position of each chunk (``n_chunk * n_ctx`` rows; positions
            ``n_ctx//2 .. n_ctx-2`` are stored) or only the scored positions
            (``n_chunk * (n_ctx - 1 - n_ctx//2)`` rows). Streamed chunk by chunk.
        tokens: the token ids of the text (``n_chunk * n_ctx``; 2-D is flattened).
        n_ctx: tokens per chunk; defaults to ``positions`` of 3-D logits.
        n_chunk: default ``len(tokens) // n_ctx``.
        gap: clamp below the top logit (16 as llama.cpp; 24 as ik_llama.cpp).
        dtype: what uint16 logits hold, as in :func:`open_source`.
        progress: a progress bar of rows written (default: on a terminal
            or in a notebook).
    """
    src = open_source(logits, dtype=dtype)
    if src.layout != "dense":
        raise InputError(f"{src.name}: a base file is written from dense logits, not a {src.layout} source")
    if n_ctx is None:
        if len(src.shape) != 3:
            raise InputError("n_ctx is needed unless logits are [sequences, positions, vocab]")
        n_ctx = src.shape[1]
    with LlamacppBaseWriter(path, tokens, n_ctx, src.vocab, n_chunk=n_chunk, gap=gap) as w:
        full, scored = w.n_chunk * w.n_ctx, w.n_rows
        if src.n_rows == full and w.n_chunk:
            stride, lo, hi = w.n_ctx, w.first, w.n_ctx - 1
        elif src.n_rows == scored:
            stride, lo, hi = w.rows_per_chunk, 0, w.rows_per_chunk
        else:
            raise ShapeError(f"{src.name} has {src.n_rows} rows; {w.n_chunk} chunks of n_ctx {w.n_ctx} need "
                             f"{full} (every position) or {scored} (the scored positions)")
        bar = progress_bar(w.n_rows, "write base file", progress, unit="row")
        try:
            for c in range(w.n_chunk):
                src.prefetch(c * stride + lo, c * stride + hi)
                block = src.block(c * stride + lo, c * stride + hi)
                try:
                    w.write_rows(block.view(bfloat16()) if src.dtype == "bfloat16" else block)
                except InputError:
                    # name the row as the source numbers it: the writer counts scored rows only
                    bad = _bad_row(_dense_f32(src, block))
                    if bad is None:
                        raise
                    raise InputError(f"{src.name}: row {c * stride + lo + bad[0]} {bad[1]}; "
                                     "a base file needs finite logits (or -inf)") from None
                bar.update(hi - lo)
        finally:
            bar.close()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    mx = np.max(x, axis=1, keepdims=True)
    return x - (mx + np.log(np.sum(np.exp(x - mx), axis=1, keepdims=True)))


def write_topk(path: PathLike, source: Any, k: int, *, rest: bool = True, tokens: Any = None,
               dtype: Optional[str] = None, progress: Optional[bool] = None) -> None:
    """Writes the top-``k`` log-probabilities of each row as a quantdrift top-k dump.

    The dump is a safetensors file (metadata ``format = quantdrift.topk``,
    ``vocab``, ``k``) with ``indices`` int32 [rows, k] (most probable first,
    ties by lower index), ``logprobs`` float32 [rows, k] (normalised over the
    whole vocabulary), ``rest`` float32 [rows] = log of the remaining
    probability mass (−inf when k = vocab), and ``tokens``, ``positions``,
    ``sequence_starts`` where the source has them. See docs/sources.md for
    what a comparison on a top-k dump approximates.

    Args:
        path: the output file (written atomically).
        source: anything :func:`open_source` takes, dense or llama.cpp.
        k: entries kept per row, 1 ≤ k ≤ vocab.
        rest: store the remaining mass (default True).
        tokens: int token ids [rows] to store, each in ``[0, vocab)``
            (default: the source's).
        dtype: what uint16 data holds, as in :func:`open_source`.
        progress: a progress bar of rows written (default: on a terminal
            or in a notebook).

    Raises:
        InputError: a row with NaN or +inf, or −inf everywhere (naming the
            source's row); a token id outside the vocabulary. DtypeError:
            tokens that are not integers.
    """
    src = open_source(source, dtype=dtype)
    if src.layout == "topk":
        raise InputError(f"{src.name} is already a top-k dump")
    k = int(k)
    if not 1 <= k <= src.vocab:
        raise InputError(f"k must be in [1, {src.vocab}] (the vocabulary), got {k}")
    rows = src.n_rows
    tok = src.tokens if tokens is None else check_token_ids(tokens, src.vocab)
    if tok is not None and tok.size != rows:
        raise ShapeError(f"tokens has {tok.size} entries, {src.name} has {rows} rows")
    tensors: List[Tuple[str, str, Tuple[int, ...]]] = [("indices", "int32", (rows, k)), ("logprobs", "float32", (rows, k))]
    if rest:
        tensors.append(("rest", "float32", (rows,)))
    extra = {"tokens": tok, "positions": src.positions, "sequence_starts": src.sequence_starts}
    for key, dt in (("tokens", "int32"), ("positions", "int32"), ("sequence_starts", "int64")):
        if extra[key] is not None:
            tensors.append((key, dt, (int(np.asarray(extra[key]).size),)))
    meta = {"format": TOPK_FORMAT, "version": "1", "vocab": str(src.vocab), "k": str(k), "values": "logprobs"}
    with _safetensors_out(path, tensors, meta) as out:
        for key in ("tokens", "positions", "sequence_starts"):
            if key in out:
                out[key][:] = np.asarray(extra[key]).reshape(-1)
        step = max(1, _BLOCK_BYTES // (8 * src.vocab))
        bar = progress_bar(rows, "write top-k", progress, unit="row")
        try:
            for start in range(0, rows, step):
                stop = min(rows, start + step)
                _topk_rows(src, out, start, stop, k, rest)
                bar.update(stop - start)
        finally:
            bar.close()


def _topk_rows(src: LogitSource, out: Dict[str, np.ndarray], start: int, stop: int, k: int, rest: bool) -> None:
    """Rows [start, stop) of a top-k dump into its output maps (the next
    as many rows prefetched meanwhile)."""
    src.prefetch(stop, min(src.n_rows, 2 * stop - start))
    x = _dense_f32(src, src.block(start, stop))
    bad = _bad_row(x)
    if bad is not None:  # it would be stored as NaN log-probs, found only when compared
        raise InputError(f"{src.name}: row {start + bad[0]} {bad[1]}; a top-k dump needs "
                         "finite scores (or -inf)")
    logp = x.astype(np.float64) if src.layout == "llamacpp" or src.values == "logprobs" else _log_softmax(x)
    idx = np.argpartition(-logp, k - 1, axis=1)[:, :k] if k < src.vocab else np.tile(
        np.arange(src.vocab), (stop - start, 1))
    top = np.take_along_axis(logp, idx, axis=1)
    order = np.lexsort((idx, -top), axis=1)
    idx, top = np.take_along_axis(idx, order, axis=1), np.take_along_axis(top, order, axis=1)
    out["indices"][start:stop] = idx
    out["logprobs"][start:stop] = top
    if rest:
        others = logp.copy()
        np.put_along_axis(others, idx, -np.inf, axis=1)
        mx = np.max(others, axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            lse = mx[:, 0] + np.log(np.sum(np.exp(others - np.where(np.isfinite(mx), mx, 0)), axis=1))
        out["rest"][start:stop] = np.where(np.isfinite(mx[:, 0]), lse, -np.inf)


@contextmanager
def _safetensors_out(path: PathLike, tensors: Sequence[Tuple[str, str, Tuple[int, ...]]],
                     meta: Dict[str, str]) -> Iterator[Dict[str, np.ndarray]]:
    """Creates a safetensors file of the given tensors and yields writable
    memory maps of them; the file is moved into place when the block ends."""
    header: Dict[str, Any] = {"__metadata__": meta}
    offset = 0
    for key, dt, shape in tensors:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_ST_DTYPES[_ST_NAMES[dt]][0]).itemsize
        header[key] = {"dtype": _ST_NAMES[dt], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # data starts 8-byte aligned
    base = 8 + len(raw)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(base + offset)
        maps = {}
        mm = None
        if offset:
            g = open(tmp, "r+b")
            mm = mmap.mmap(g.fileno(), 0)
        try:
            for key, dt, shape in tensors:
                t = header[key]
                count = int(np.prod(shape, dtype=np.int64))
                storage = _ST_DTYPES[_ST_NAMES[dt]][0]
                if count and mm is not None:
                    maps[key] = np.frombuffer(mm, storage, count, base + t["data_offsets"][0]).reshape(shape)
                else:
                    maps[key] = np.empty(shape, storage)
            yield maps
            if mm is not None:
                mm.flush()
        finally:
            maps.clear()
            if mm is not None:
                try:
                    mm.close()
                except BufferError:  # pragma: no cover - a caller kept a view
                    pass
                g.close()


def write_safetensors(path: PathLike, source: Any, *, tensor: str = "logits", dtype: Optional[str] = None,
                      progress: Optional[bool] = None) -> None:
    """Writes a source's rows as one safetensors tensor (its shape kept,
    llama.cpp rows decoded to float32 log-probs), streamed block by block,
    with a progress bar of rows when ``progress`` (default: on a terminal or
    in a notebook)."""
    src = open_source(source, dtype=dtype)
    if src.layout == "topk":
        raise InputError(f"{src.name} is a top-k dump; it has no dense rows to write")
    out_dtype = "float32" if src.layout == "llamacpp" else src.dtype
    shape = src.shape if src.layout == "dense" else (src.n_rows, src.vocab)
    with _safetensors_out(path, [(tensor, out_dtype, shape)], {"values": src.values}) as out:
        _copy_rows(src, out[tensor].reshape(src.n_rows, src.vocab), progress)


def write_npy(path: PathLike, source: Any, *, dtype: Optional[str] = None, progress: Optional[bool] = None) -> None:
    """Writes a source's rows as a ``.npy`` (shape kept; bfloat16 as
    ml_dtypes' bfloat16, llama.cpp rows decoded to float32 log-probs),
    streamed block by block, with a progress bar of rows when ``progress``
    (default: on a terminal or in a notebook)."""
    src = open_source(source, dtype=dtype)
    if src.layout == "topk":
        raise InputError(f"{src.name} is a top-k dump; it has no dense rows to write")
    shape = src.shape if src.layout == "dense" else (src.n_rows, src.vocab)
    stored = src.dtype if src.layout == "dense" else "float32"
    np_dtype = bfloat16() if stored == "bfloat16" else np.dtype(stored)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=tuple(shape))
        target = out.reshape(src.n_rows, src.vocab)
        _copy_rows(src, target.view(np.uint16) if src.dtype == "bfloat16" else target, progress)
        out.flush()
        del out, target


def _copy_rows(src: LogitSource, target: np.ndarray, progress: Optional[bool]) -> None:
    step = _block_rows(src)
    bar = progress_bar(src.n_rows, "write", progress, unit="row")
    try:
        for start in range(0, src.n_rows, step):
            stop = min(src.n_rows, start + step)
            src.prefetch(stop, min(src.n_rows, stop + step))
            block = src.block(start, stop)
            target[start:stop] = _core.llamacpp_decode(block, src.vocab) if src.layout == "llamacpp" else block
            bar.update(stop - start)
    finally:
        bar.close()
