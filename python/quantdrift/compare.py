"""Compare a reference model with a changed one from their next-token
distributions, streamed from arrays or dumped files in bounded memory."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, gpu
from ._arrays import as_scores
from ._errors import InputError, ShapeError
from ._progress import progress_bar
from .report import Report
from .sources import LogitSource, check_pair, check_token_ids, open_source, read_npy

#: Rows of both sources read per step stay under this many bytes by default.
DEFAULT_CHUNK_BYTES = 512 * 1024 * 1024
#: Metrics the comparison computes (all three come from one fused pass).
METRICS = ("kl", "reverse_kl", "js")


def compare(
    base: Any,
    other: Any,
    *,
    tokens: Any = None,
    mask: Any = None,
    prompt_lengths: Any = None,
    sequences: Any = None,
    metrics: Union[str, Sequence[str]] = ("kl", "js"),
    topk: Union[int, Sequence[int]] = (1, 5),
    temperature: float = 1.0,
    progress: bool = True,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    worst: int = 10,
    base_dtype: Optional[str] = None,
    other_dtype: Optional[str] = None,
    device: str = "cpu",
) -> Report:
    """Compares ``other`` with ``base`` token by token and returns a
    :class:`~quantdrift.report.Report`.

    ``base`` and ``other`` are arrays of logits (``[tokens, vocab]`` or
    ``[sequences, positions, vocab]``), paths (``.npy``, ``.safetensors``,
    llama.cpp ``--kl-divergence-base`` files, top-k dumps, folders or globs
    of shards), or :class:`~quantdrift.sources.LogitSource` objects. Rows are
    read in chunks of at most ``chunk_bytes`` (both sources together), so
    memory stays bounded whatever the file size.

    Options:

    * ``tokens``: the actual next token of every row (int array or ``.npy``
      path); taken from a llama.cpp base file when it has them (given ids
      that differ from a file's stored ones are refused). Enables PPL,
      Δp and the NLL columns.
    * ``sequences``: sequence lengths in rows (an int array summing to the
      row count, or one int for equal lengths); 3-D arrays, llama.cpp files
      and dumps with ``sequence_starts`` bring their own, which
      ``sequences`` may only repeat.
    * ``mask``: a boolean per row, True where the row is scored (array or
      ``.npy`` path).
    * ``prompt_lengths``: per sequence (or one int ≥ 0), the number of context
      tokens: row ``i`` of a sequence predicts token ``i + 1``, so rows
      ``i < prompt_length − 1`` are not scored (the lecture's Def 4.7).
    * ``metrics``: which of ``"kl"``, ``"reverse_kl"``, ``"js"`` the text
      report shows (all three columns are always computed).
    * ``topk``: sizes of the top-k overlap statistic (1 = same top token),
      one int or several.
    * ``temperature``: softmax temperature applied to both sides.
    * ``progress``: a progress bar (tqdm) on a terminal or in a notebook.
    * ``device``: ``"cpu"`` (default), ``"gpu"`` or ``"auto"``
      (see :mod:`quantdrift.gpu`). On the GPU, dense float32/float16/bfloat16
      rows are compared by the GPU kernel (within 1e-5 relative of the CPU for
      divergences and NLLs, or 1e-7 absolute where the values are at float32
      noise level, as for near-equal rows; top-1 tokens and top-k overlaps equal); float64
      rows, llama.cpp and top-k bases, and rows the CPU kernel takes to its
      float64 reference are computed on the CPU.

    Raises:
        InputError: an invalid option, sources that do not pair up, a bad
            row (naming the file and row); a ``tokens``/``mask`` file that
            is not a sound ``.npy`` is a FormatError naming the argument and
            the file.
        GpuUnavailableError: ``device="gpu"`` without a GPU adapter.
    """
    if isinstance(metrics, str):  # metrics="kl": one metric, not its letters
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; compare computes {list(METRICS)}")
    if isinstance(topk, (int, np.integer)):
        topk = (topk,)
    if not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in topk):
        raise InputError(f"topk sizes must be integers, got {list(topk)}")
    sizes = [int(k) for k in topk]
    if any(k < 1 for k in sizes):
        raise InputError(f"topk sizes must be >= 1, got {list(topk)}")
    if not (isinstance(chunk_bytes, (int, np.integer)) and chunk_bytes > 0):
        raise InputError(f"chunk_bytes must be a positive int, got {chunk_bytes!r}")
    if int(worst) < 0:
        raise InputError(f"worst must be >= 0 (tokens listed), got {worst}")

    b = open_source(base, dtype=base_dtype, name=_name(base, "base"))
    o = open_source(other, dtype=other_dtype, name=_name(other, "other"))
    check_pair(b, o)
    n = b.n_rows
    where = gpu.resolve(device, n * b.vocab)
    token_ids = _tokens(tokens, b, o, n)
    starts, stored = _sequence_starts(sequences, b, o, n)
    seq_of_row, pos_of_row = _sequence_index(starts, stored, b, o, n)
    scored = _scored(mask, prompt_lengths, starts, pos_of_row, n)

    row_bytes = _row_bytes(b) + _row_bytes(o)
    step = max(1, int(chunk_bytes) // max(row_bytes, 1))
    names = (b.name, o.name)
    parts = []
    # progress=True: shown where tqdm sees a terminal or a notebook
    bar = progress_bar(n, "compare", None if progress else False, unit="tok")
    try:
        for start in range(0, n, step):
            stop = min(n, start + step)
            _prefetch(b, stop, min(n, stop + step))
            _prefetch(o, stop, min(n, stop + step))
            select = None
            if scored is not None:
                select = np.flatnonzero(scored[start:stop]).astype(np.uint32)
                if select.size == 0:
                    bar.update(stop - start)
                    continue
            base_block, base16 = _kernel_block(b.block(start, stop), b)
            other_block, other16 = _kernel_block(o.block(start, stop), o)
            part = _core.compare_block(
                base_block,
                other_block,
                vocab=b.vocab,
                base_layout=b.layout,
                other_layout=o.layout,
                base16=base16,
                other16=other16,
                select=select,
                tokens=None if token_ids is None else token_ids[start:stop],
                temperature=float(temperature),
                topk=sizes,
                names=names,
                row_offset=start,
                device=where,
            )
            local = np.arange(start, stop, dtype=np.int64) if select is None else select.astype(np.int64) + start
            part["rows"] = local
            parts.append(part)
            del base_block, other_block
            b.release(start, stop)
            o.release(start, stop)
            bar.update(stop - start)
    finally:
        bar.close()

    def column(key, dtype):
        if not parts:
            shape = (0, len(sizes)) if key == "overlap" else (0,)
            return np.zeros(shape, dtype=dtype)
        return np.concatenate([p[key] for p in parts])

    rows = column("rows", np.int64)
    overlap = column("overlap", np.float32)
    nll_base = nll_other = tok = None
    if token_ids is not None:
        nll_base, nll_other = column("nll_base", np.float32), column("nll_other", np.float32)
        tok = token_ids[rows]
    report = Report(
        base_name=b.name,
        other_name=o.name,
        vocab=b.vocab,
        n_rows=n,
        kl=column("kl", np.float32),
        reverse_kl=column("reverse_kl", np.float32),
        js=column("js", np.float32),
        top1_base=column("top1_base", np.int32),
        top1_other=column("top1_other", np.int32),
        overlap={k: np.ascontiguousarray(overlap[:, j]) for j, k in enumerate(sizes)},
        rows=rows,
        sequence=seq_of_row[rows] if seq_of_row is not None else np.full(rows.size, -1, np.int64),
        position=pos_of_row[rows] if pos_of_row is not None else np.full(rows.size, -1, np.int32),
        nll_base=nll_base,
        nll_other=nll_other,
        tokens=tok,
        temperature=float(temperature),
        base_layout=b.layout,
        n_sequences=0 if starts is None else int(starts.size),
        worst_n=int(worst),
        metrics=tuple(metrics),
    )
    return report


def _name(obj: Any, default: str) -> str:
    if isinstance(obj, LogitSource):
        return obj.name
    if isinstance(obj, (str, bytes)) or hasattr(obj, "__fspath__"):
        return os.fspath(obj) if not isinstance(obj, bytes) else obj.decode()
    return default


def _row_bytes(src: LogitSource) -> int:
    if src.layout == "llamacpp":
        return 2 * (2 * ((src.vocab + 1) // 2) + 4)
    if src.layout == "topk":
        return 8 * int(src.topk or 1) + 4
    return src.vocab * np.dtype({"bfloat16": "uint16"}.get(src.dtype, src.dtype)).itemsize


def _kernel_block(block: Any, src: LogitSource) -> Tuple[Any, str]:
    """The block as ``_core.compare_block`` takes it, and its 16-bit dtype name."""
    if src.layout != "dense":
        return block, "bfloat16"
    if isinstance(block, np.ndarray) and block.dtype == np.uint16:
        return block, src.dtype
    arr, dtype16 = as_scores(block, src.name)
    return arr, dtype16


def _prefetch(src: LogitSource, start: int, stop: int) -> None:
    if stop > start:
        src.prefetch(start, stop)


def _tokens(tokens: Any, b: LogitSource, o: LogitSource, n: int) -> Optional[np.ndarray]:
    if tokens is None:
        for src in (b, o):
            if getattr(src, "tokens", None) is not None:
                return np.ascontiguousarray(src.tokens, dtype=np.int32)
        return None
    arr, what = _array_argument(tokens, "tokens")
    if arr.size != n:
        raise ShapeError(f"{what}: need one token id per row ({n} rows in {b.name}), got {arr.size}")
    arr = check_token_ids(arr, b.vocab, what)
    for src in (b, o):
        # as check_pair does for two files: ids that disagree mean different texts
        stored = getattr(src, "tokens", None)
        if stored is not None and not np.array_equal(stored, arr):
            row = int(np.flatnonzero(np.asarray(stored) != arr)[0])
            raise InputError(f"token mismatch: row {row} predicts token {int(arr[row])} in {what} but "
                             f"{int(stored[row])} in {src.name}, which stores its token ids; leave tokens out "
                             "to use the stored ones")
    return arr


def _array_argument(value: Any, argument: str) -> Tuple[np.ndarray, str]:
    """An array argument given as an array or a .npy path, and how errors
    name it ("tokens", or "tokens file next.npy")."""
    if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
        path = os.fsdecode(value)
        what = f"{argument} file {path}"
        return read_npy(path, what), what
    return np.asarray(value), argument


def _sequence_starts(sequences: Any, b: LogitSource, o: LogitSource, n: int) -> Tuple[Optional[np.ndarray], bool]:
    """Row offsets where sequences start, and whether they are the sources' own."""
    have = [(src, np.asarray(src.sequence_starts, dtype=np.int64)) for src in (b, o)
            if getattr(src, "sequence_starts", None) is not None]
    if len(have) == 2 and not np.array_equal(have[0][1], have[1][1]):
        (_, sb), (_, so) = have
        raise InputError(
            f"sequence mismatch: {b.name} has {sb.size} sequences, {o.name} "
            f"{so.size}, starting at rows {_few(sb)} and "
            f"{_few(so)}: the two sides split the rows differently"
        )
    if sequences is None:
        return (have[0][1], True) if have else (None, False)
    given = np.asarray(sequences)
    if given.dtype.kind not in "iu" or given.ndim > 1:
        got = repr(sequences) if given.ndim == 0 else f"a {given.ndim}-D array of dtype {given.dtype}"
        raise InputError(
            f"sequences must be one int (rows per sequence) or a 1-D int array of sequence lengths, got {got}")
    if given.ndim == 0:
        length = int(given)
        if length <= 0:
            raise InputError(f"sequences={length}: a sequence length must be >= 1")
        if n % length:
            raise InputError(f"sequences={length}: {n} rows are not a whole number of sequences of that length")
        starts = np.arange(0, n, length, dtype=np.int64)
    else:
        if np.any(given <= 0) or int(given.sum()) != n:
            raise InputError(
                f"sequences: lengths must be positive and sum to the row count {n}, got a sum of {int(given.sum())}"
            )
        starts = np.concatenate([[0], np.cumsum(given)[:-1]]).astype(np.int64)
    if not have:
        return starts, False
    owner, own = have[0]
    # A 3-D array, a llama.cpp file or a dump that stores sequences fixes both
    # the boundaries and each row's position (llama.cpp's start at n_ctx/2):
    # another split would give sequence ids and positions that disagree.
    if not np.array_equal(starts, own):
        lengths = np.diff(np.append(own, n))
        each = f"of {int(lengths[0])} rows" if np.all(lengths == lengths[0]) else f"of lengths {_few(lengths)}"
        origin = {"llamacpp": "its chunks", "topk": "its stored sequence_starts",
                  "shards": "its shards"}.get(owner.format, "its 3-D shape")
        raise InputError(
            f"sequences={_few(given)} splits the {n} rows into {starts.size} sequences, but {owner.name} "
            f"brings its own from {origin}: {own.size} sequences {each}; leave sequences out "
            "(or give the data as [rows, vocab] to split it differently)"
        )
    return own, True


def _few(values: np.ndarray) -> str:
    """An int, or the first values of an array, for messages."""
    if values.ndim == 0:
        return str(int(values))
    head = ", ".join(str(int(v)) for v in values[:4])
    return f"[{head}{', ...' if values.size > 4 else ''}]"


def _sequence_index(starts, stored, b, o, n) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    positions = None
    for src in (b, o):
        if getattr(src, "positions", None) is not None:
            positions = np.asarray(src.positions, dtype=np.int32)
            break
    if starts is None:
        return None, positions
    seq = np.zeros(n, dtype=np.int64)
    if starts.size > 1:
        seq[starts[1:]] = 1
        seq = np.cumsum(seq)
    if positions is None or not stored:
        # Stored positions go with the sources' own sequences; boundaries
        # from sequences= alone count positions from each start.
        positions = (np.arange(n, dtype=np.int64) - starts[seq]).astype(np.int32)
    return seq, positions


def _scored(mask, prompt_lengths, starts, positions, n) -> Optional[np.ndarray]:
    scored = None
    if mask is not None:
        m, what = _array_argument(mask, "mask")
        if m.dtype != np.bool_:
            raise InputError(f"{what} must be a boolean array (True = scored), got dtype {m.dtype}")
        m = m.reshape(-1)
        if m.size != n:
            raise ShapeError(f"{what}: need one value per row ({n}), got {m.size}")
        scored = m
    if prompt_lengths is not None:
        if starts is None or positions is None:
            raise InputError("prompt_lengths needs sequence boundaries: pass sequences= (or a 3-D array)")
        lengths = np.asarray(prompt_lengths)
        if lengths.dtype.kind not in "iu":
            got = repr(prompt_lengths) if lengths.ndim == 0 else f"an array of dtype {lengths.dtype}"
            raise InputError(f"prompt_lengths must be one int or an int per sequence, got {got}")
        lengths = lengths.astype(np.int64)
        if lengths.ndim == 0:
            lengths = np.full(starts.size, int(lengths))
        if lengths.shape != (starts.size,):
            raise ShapeError(f"prompt_lengths: need one length per sequence ({starts.size}), got {lengths.size}")
        if lengths.size and lengths.min() < 0:
            bad = int(np.argmax(lengths < 0))
            raise InputError(f"prompt_lengths must be >= 0 (context tokens), got {int(lengths[bad])} "
                             f"for sequence {bad}")
        seq = np.zeros(n, dtype=np.int64)
        if starts.size > 1:
            seq[starts[1:]] = 1
            seq = np.cumsum(seq)
        keep = positions.astype(np.int64) + 1 >= lengths[seq]
        scored = keep if scored is None else scored & keep
    return scored


