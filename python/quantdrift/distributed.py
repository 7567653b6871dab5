"""Scale-out with Dask: the same jobs over shards spread on a cluster.

Workers open the files themselves (paths or fsspec URLs travel, never
logits) and send back only what is small: a comparison's per-token columns
(a few bytes per token against hundreds of kilobytes of logits per token).
The client merges them into one :class:`~quantdrift.Report`, which equals a
single-machine run over the concatenated shards, percentiles included.

Needs the optional extra: ``pip install 'quantdrift[dask]'``. See
docs/scaling.md for how the jobs behave on many nodes.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Tuple, Union

from ._errors import InputError, QuantdriftError
from .report import Report

PathLike = Union[str, "os.PathLike[str]"]
Pair = Union[Tuple[Any, Any], Tuple[Any, Any, Any]]


class ShardError(QuantdriftError):
    """A shard failed on every attempt; the message names its files."""


def _distributed():
    try:
        import distributed
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "quantdrift.distributed needs Dask: pip install 'quantdrift[dask]' (dask and distributed)"
        ) from e
    return distributed


class _Local:
    """Local paths for what a worker was given: plain paths and arrays pass
    through; fsspec URLs (``s3://``, ``gs://``, ``https://``, ...) are
    fetched into a temporary file on the worker, removed afterwards;
    ``file://`` URLs become paths."""

    def __init__(self) -> None:
        self.temps: List[str] = []

    def __call__(self, x: Any) -> Any:
        if not (isinstance(x, str) and "://" in x):
            return x
        import fsspec  # a dependency of dask

        fs, path = fsspec.core.url_to_fs(x)
        if "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)):
            return path
        import tempfile

        fd, local = tempfile.mkstemp(prefix="quantdrift-", suffix=os.path.basename(path))
        os.close(fd)
        self.temps.append(local)
        fs.get(path, local)
        return local

    def __enter__(self) -> "_Local":
        return self

    def __exit__(self, *exc: Any) -> None:
        for t in self.temps:
            try:
                os.unlink(t)
            except OSError:
                pass


def _client_or_none(client: Any) -> Any:
    """The given client, else the current Dask client, else None (run here)."""
    if client is not None:
        return client
    try:
        return _distributed().get_client()
    except (ValueError, ImportError):
        return None


def _run_all(client: Any, fn: Any, jobs: Sequence[tuple], labels: Sequence[str], retries: int) -> list:
    """``fn(*job)`` for every job, results in order: in this process when
    ``client`` is None (errors raise as they are), else as Dask tasks, where
    a task that fails on every attempt cancels the others and raises
    :class:`ShardError` naming its label."""
    if client is None:
        return [fn(*job) for job in jobs]
    futures = [client.submit(fn, *job, pure=False, retries=retries) for job in jobs]
    results = []
    for label, future in zip(labels, futures):
        try:
            results.append(future.result())
        except Exception as e:  # the task's own error, or a worker lost more often than `retries`
            for f in futures:
                f.cancel()
            raise ShardError(f"{label} failed: {type(e).__name__}: {e}") from e
    return results


def _compare_shard(base: Any, other: Any, tokens: Any, opts: dict) -> Report:
    """Runs on a worker: one shard pair, compared where the files are."""
    from .compare import compare

    with _Local() as local:
        report = compare(local(base), local(other), tokens=local(tokens), progress=False, **opts)
    report.base_name, report.other_name = _label(base), _label(other)
    report._cache.clear()  # statistics are recomputed after the merge
    return report


def _normalise(pairs: Sequence[Pair]) -> List[Tuple[Any, Any, Any]]:
    out = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
            raise InputError(
                f"pairs[{i}] must be (base, other) or (base, other, tokens), got {pair!r}"
            )
        base, other = pair[0], pair[1]
        tokens = pair[2] if len(pair) == 3 else None
        out.append((_as_path(base), _as_path(other), _as_path(tokens)))
    if not out:
        raise InputError("compare_shards needs at least one (base, other) pair")
    return out


def _as_path(x: Any) -> Any:
    return os.fspath(x) if isinstance(x, os.PathLike) else x


def compare_shards(
    pairs: Sequence[Pair],
    client: Any = None,
    *,
    retries: int = 2,
    **compare_opts: Any,
) -> Report:
    """Compares shard pairs on a Dask cluster and merges the results.

    Args:
        pairs: ``(base, other)`` or ``(base, other, tokens)`` per shard, in
            order: paths the workers can open (a shared filesystem), fsspec
            URLs (``s3://...``: each worker fetches its shard into a local
            temporary file, which is removed afterwards), or arrays (which
            then travel to the workers — fine for tests, wasteful at scale).
            Files: ``.npy``, safetensors, llama.cpp base files, top-k dumps.
        client: a ``distributed.Client``; default: the current client
            (``distributed.get_client()``), or an in-process run of the same
            code when there is none.
        retries: attempts per shard beyond the first, handled by Dask (a
            worker that dies mid-shard has its shards rerun elsewhere).
        **compare_opts: options of :func:`quantdrift.compare` (``metrics``,
            ``topk``, ``temperature``, ``sequences``, ``chunk_bytes``,
            ``worst``, ...), applied to every shard.

    Returns:
        One :class:`~quantdrift.Report` equal to comparing the concatenated
        shards in one process (rows and sequences numbered across shards).

    Raises:
        ShardError: a shard failed on every attempt; names its files.
    """
    if "tokens" in compare_opts or "progress" in compare_opts:
        raise InputError("pass tokens per shard as the third element of each pair; progress is not used")
    shards = _normalise(pairs)
    reports = _run_all(
        _client_or_none(client),
        _compare_shard,
        [(b, o, t, compare_opts) for b, o, t in shards],
        [f"shard ({_label(b)}, {_label(o)})" for b, o, _ in shards],
        retries,
    )
    return Report.merge(reports)


def _label(x: Any) -> str:
    return x if isinstance(x, str) else f"<{type(x).__name__}>"


def shard_pairs(base: PathLike, other: PathLike) -> List[Tuple[str, str]]:
    """Pairs the shards of two folders or globs by sorted file name order
    (the order :func:`quantdrift.open_source` reads them in)."""
    from .sources import shard_files

    left, right = shard_files(os.fspath(base)), shard_files(os.fspath(other))
    if len(left) != len(right):
        raise InputError(f"{base} has {len(left)} shards but {other} has {len(right)}; they must pair up")
    return list(zip(left, right))


def _quantize_shard(src: str, dst: str, recipe: Any) -> Any:
    """Runs on a worker: one safetensors file quantized where it lies."""
    from .checkpoint import quantize_file

    return quantize_file(src, dst, recipe, progress=False)


def _source_files(srcs: Any) -> Tuple[List[str], Optional[str]]:
    """The safetensors files to quantize, and the index file they came from."""
    if isinstance(srcs, (str, os.PathLike)):
        path = os.fspath(srcs)
        if path.endswith(".index.json"):
            import json

            with open(path) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise InputError(f"{path}: not a safetensors index (needs a 'weight_map')")
            folder = os.path.dirname(path)
            files = list(dict.fromkeys(weight_map.values()))  # shard order of first appearance
            return [os.path.join(folder, f) for f in files], path
        from .sources import shard_files

        return shard_files(path), None
    files = [os.fspath(s) for s in srcs]
    if not files:
        raise InputError("quantize_files needs at least one source file")
    return files, None


def quantize_files(
    srcs: Any,
    dst_dir: PathLike,
    recipe: Any = None,
    client: Any = None,
    *,
    retries: int = 2,
    report: Optional[PathLike] = None,
) -> Any:
    """Quantizes the files of a safetensors set on a Dask cluster.

    Each source file is one task: a worker runs
    :func:`quantdrift.quantize_file` on it (reading it through a memory map
    where it lies) and writes its output into a staging folder inside
    ``dst_dir``. Only when every file has succeeded are the outputs moved to
    their final names (``dst_dir/<source file name>``), then an index
    (``<name>.index.json`` when the sources came from one) and the report, so
    ``dst_dir`` never holds a partial set under final names.

    Args:
        srcs: a ``*.index.json`` of a sharded set, a folder or glob of
            ``.safetensors`` files, or a list of files.
        dst_dir: the output folder (created if missing).
        recipe: as for :func:`quantdrift.quantize_file`.
        client: a ``distributed.Client``; default: the current client, or an
            in-process run when there is none.
        retries: attempts per file beyond the first.
        report: also write the merged report here (``.json`` or ``.csv``).

    Returns:
        One :class:`~quantdrift.QuantizeReport` over all files (rows in file
        order); each output file equals ``quantize_file`` of its source.

    Raises:
        ShardError: a file failed on every attempt (named); nothing is left
            in ``dst_dir`` by this call.
    """
    import shutil
    import tempfile

    from ._files import write_text_atomic
    from .checkpoint import QuantizeReport, Recipe

    files, index = _source_files(srcs)
    names = [os.path.basename(f) for f in files]
    if len(set(names)) != len(names):
        raise InputError("quantize_files: source files must have distinct names (they keep them in dst_dir)")
    recipe = Recipe.coerce(recipe)
    dst_dir = os.fspath(dst_dir)
    os.makedirs(dst_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".quantdrift-staging-", dir=dst_dir)
    try:
        outs = [os.path.join(staging, n) for n in names]
        reports = _run_all(
            _client_or_none(client), _quantize_shard, [(f, o, recipe) for f, o in zip(files, outs)], files, retries
        )
        for out, name in zip(outs, names):
            os.replace(out, os.path.join(dst_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    rows = [row for r in reports for row in r.rows]
    merged = QuantizeReport(rows, _totals(rows))
    if index is not None:
        import json

        weight_map = {row["name"]: names[i] for i, r in enumerate(reports) for row in r.rows}
        write_text_atomic(os.path.join(dst_dir, os.path.basename(index)),
                          json.dumps({"metadata": {"total_size": merged.totals["bytes_out"]},
                                      "weight_map": weight_map}, indent=1) + "\n")
    if report is not None:
        merged.write(report)
    return merged


def _totals(rows: List[dict]) -> dict:
    import math

    params = sum(math.prod(r["shape"]) for r in rows)
    b_in = sum(r["bytes_in"] for r in rows)
    b_out = sum(r["bytes_out"] for r in rows)
    return {
        "tensors": len(rows), "params": params, "bytes_in": b_in, "bytes_out": b_out,
        "compression": b_in / b_out if b_out else float("nan"),
        "mean_bits_per_param": 8.0 * b_out / params if params else 0.0,
    }


# The options of quantdrift.compare that change a model's log-likelihoods
# (the rest, such as topk or metrics, are fixed by loglik_matrix).
_LOGLIK_OPTIONS = frozenset({"mask", "prompt_lengths", "temperature", "chunk_bytes"})


def _loglik_vector(logits: Any, tokens: Any, sequences: Any, opts: dict) -> Any:
    """Runs on a worker: one model's log-likelihood of every text (float64)."""
    from .llv import loglik_from_logits

    with _Local() as local:
        return loglik_from_logits(local(logits), local(tokens), sequences, topk=(1,), **opts)


def loglik_matrix(
    models: Any,
    tokens: Any,
    sequences: Any,
    client: Any = None,
    *,
    retries: int = 2,
    **compare_opts: Any,
) -> Tuple[Any, List[str]]:
    """The K×N log-likelihood matrix L of K models on N texts, one model per
    Dask task.

    ``L[i, s]`` = Σ ln p_i(next token) over the scored rows of text ``s``
    (the log-likelihood vectors of Oyama et al.), from each model's logit
    dump over the same token stream.

    Args:
        models: a mapping name → logits (path or fsspec URL of a dump the
            workers can open, or an array), or a sequence of (name, logits).
        tokens: the next token of every row, shared by all models (same
            tokenizer and texts): an int array or a ``.npy`` path.
        sequences: text lengths in rows (an array summing to the row count,
            or one int), the text boundaries.
        client: a ``distributed.Client``; default: the current client, or an
            in-process run when there is none.
        retries: attempts per model beyond the first.
        **compare_opts: ``mask``, ``prompt_lengths``, ``temperature``,
            ``chunk_bytes`` as for :func:`quantdrift.compare`.

    Returns:
        ``(L, names)``: a float64 array of shape (K, N) and the model names in
        row order.
    """
    import numpy as np

    unknown = sorted(set(compare_opts) - _LOGLIK_OPTIONS)
    if unknown:
        raise InputError(
            f"loglik_matrix does not take {', '.join(map(repr, unknown))}; "
            f"its compare options are {', '.join(sorted(_LOGLIK_OPTIONS))}"
        )
    if sequences is None:
        raise InputError(
            "loglik_matrix needs the texts' boundaries: sequences= (rows per text, one int or an array of lengths)"
        )
    items = list(models.items()) if hasattr(models, "items") else [tuple(m) for m in models]
    if not items:
        raise InputError("loglik_matrix needs at least one model")
    names = [str(n) for n, _ in items]
    if len(set(names)) != len(names):
        raise InputError("loglik_matrix: model names must be distinct")
    sources = [_as_path(x) for _, x in items]
    tokens, sequences = _as_path(tokens), _as_path(sequences)
    rows = _run_all(
        _client_or_none(client),
        _loglik_vector,
        [(s, tokens, sequences, compare_opts) for s in sources],
        [f"model {name!r}" for name in names],
        retries,
    )
    return np.vstack(rows), names
