"""compare_shards on a dask.distributed LocalCluster with 1 and 2 worker
processes vs the single-process paths, over 16 shard pairs of fp16 logits.

Run: ``python benches/bench_dask.py [--rows 512] [--vocab 32000]``. Prints
wall times, scaling and the overhead of the cluster path; nothing asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

import quantdrift as qd
from quantdrift.distributed import compare_shards, shard_pairs


def write(folder: str, shards: int, rows: int, vocab: int) -> None:
    rng = np.random.default_rng(0)
    for side in ("base", "other"):
        os.makedirs(os.path.join(folder, side), exist_ok=True)
    for i in range(shards):
        b = rng.standard_normal((rows, vocab), dtype=np.float32) * 2.5
        np.save(os.path.join(folder, "base", f"s{i:03d}.npy"), b.astype(np.float16))
        np.save(os.path.join(folder, "other", f"s{i:03d}.npy"),
                (b + rng.standard_normal((rows, vocab), dtype=np.float32) * 0.15).astype(np.float16))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    import distributed

    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="quantdrift-bench-dask-")
    write(folder, args.shards, args.rows, args.vocab)
    base, other = os.path.join(folder, "base"), os.path.join(folder, "other")
    pairs = shard_pairs(base, other)
    nbytes = sum(os.path.getsize(p) for pair in pairs for p in pair)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, isa={qd.isa()}")
    print(f"# {args.shards} shard pairs of {args.rows}x{args.vocab} fp16, {nbytes / 1e9:.2f} GB in all")
    qd.compare(base, other, progress=False)  # warm the page cache
    rows = []
    t, single = timed(lambda: qd.compare(base, other, progress=False))
    rows.append(("compare over the shard folders (1 process, 2 threads)", t))
    t, _ = timed(lambda: compare_shards(pairs, None))
    rows.append(("compare per shard + merge (1 process, 2 threads)", t))
    for workers in (1, 2):
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=40) as cluster, \
                distributed.Client(cluster) as client:
            client.run(lambda: os.environ.__setitem__("QUANTDRIFT_NUM_THREADS", "1"))
            compare_shards(pairs[:2], client)  # warm the workers (imports, thread pools)
            t, merged = timed(lambda: compare_shards(pairs, client))
            assert merged.summary()["kl"] == single.summary()["kl"]
            rows.append((f"compare_shards, LocalCluster {workers} worker(s) × 1 thread", t))
    t_ref = rows[0][1]
    header = f"{'path':<58}{'seconds':>9}{'GB/s':>8}{'vs 1 process':>14}"
    print(header)
    print("-" * len(header))
    for name, t in rows:
        print(f"{name:<58}{t:>9.2f}{nbytes / t / 1e9:>8.2f}{t_ref / t:>13.2f}×")
    one = dict(rows)["compare_shards, LocalCluster 1 worker(s) × 1 thread"]
    two = dict(rows)["compare_shards, LocalCluster 2 worker(s) × 1 thread"]
    print(f"# scaling 1 → 2 workers: {one / two:.2f}×; results equal the single-process run")
    for side in ("base", "other"):
        for f in os.listdir(os.path.join(folder, side)):
            os.unlink(os.path.join(folder, side, f))


if __name__ == "__main__":
    main()
