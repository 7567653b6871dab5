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


def _compare_shard(base: Any, other: Any, tokens: Any, opts: dict) -> Report:
    """Runs on a worker: one shard pair, compared where the files are."""
    from .compare import compare

    report = compare(base, other, tokens=tokens, progress=False, **opts)
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
            order: paths or fsspec URLs the workers can open (``.npy``,
            safetensors, llama.cpp base files, top-k dumps), or arrays (which
            then travel to the workers — fine for tests, wasteful at scale).
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
    if client is None:
        try:
            client = _distributed().get_client()
        except (ValueError, ImportError):
            client = None
    if client is None:
        return Report.merge([_compare_shard(b, o, t, compare_opts) for b, o, t in shards])
    futures = [
        client.submit(_compare_shard, b, o, t, compare_opts, pure=False, retries=retries)
        for b, o, t in shards
    ]
    reports = []
    for (b, o, _), future in zip(shards, futures):
        try:
            reports.append(future.result())
        except Exception as e:  # the shard's own error, or a worker lost more often than `retries`
            for f in futures:
                f.cancel()
            raise ShardError(f"shard ({_label(b)}, {_label(o)}) failed: {type(e).__name__}: {e}") from e
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
