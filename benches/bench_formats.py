"""float32 → every low-precision format: quantdrift vs ml_dtypes ``astype``,
torch ``.to()`` (where torch has the format and is installed), numpy (float16),
and the memory roofline (a multi-threaded plain read of the same bytes, timed
in turn with each row's encodes).

Run: ``python benches/bench_formats.py [--n 16777216]``. Prints a ratio table;
timings are the best of a few runs. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import ml_dtypes
import numpy as np

import quantdrift as qd
from quantdrift import _core

try:
    import torch
except ImportError:  # pragma: no cover - optional peer
    torch = None

TORCH_DTYPES = {
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float8_e4m3fn": "float8_e4m3fn",
    "float8_e4m3fnuz": "float8_e4m3fnuz",
    "float8_e5m2": "float8_e5m2",
    "float8_e5m2fnuz": "float8_e5m2fnuz",
    "float8_e8m0fnu": "float8_e8m0fnu",
}
ML = {name: np.float16 if name == "float16" else getattr(ml_dtypes, name) for name in qd.formats.FORMATS}


def best(fn, repeat: int) -> float:
    fn()  # warm up (page faults, thread pool)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(args.n) * 4).astype(np.float32)
    raw = x.view(np.uint8)
    t_read = best(lambda: _core.read_all(raw), args.repeat)
    gbps = x.nbytes / t_read / 1e9
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, quantdrift threads={qd.num_threads()}, isa={qd.isa()}")
    print(f"# n = {args.n} float32 ({x.nbytes / 2**20:.0f} MiB); roofline = threaded read at {gbps:.1f} GB/s ({t_read * 1e3:.2f} ms)")
    if torch is None:
        print("# torch is not installed: torch columns are empty")
    else:
        torch.set_num_threads(qd.num_threads())
        tx = torch.from_numpy(x)
        print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'format':<20}{'quantdrift ms':>14}{'ml_dtypes ms':>14}{'× ml_dtypes':>12}{'torch ms':>10}{'× torch':>9}{'numpy ms':>10}{'× numpy':>9}{'of roofline':>13}{'read ms':>10}"
    print(header)
    print("-" * len(header))
    order = [n for n in qd.formats.FORMATS if n.startswith("float8")] + [
        "float6_e2m3fn",
        "float6_e3m2fn",
        "float4_e2m1fn",
        "bfloat16",
        "float16",
    ]
    for name in order:
        # The guest's read rate drifts by tens of percent over a run, so each
        # row's roofline is the best of reads taken in turn with its encodes.
        t_qd = t_row_read = float("inf")
        qd.encode(x, name)
        for _ in range(args.repeat):
            t_row_read = min(t_row_read, best(lambda: _core.read_all(raw), 1))
            t_qd = min(t_qd, best(lambda: qd.encode(x, name), 1))
        t_ml = best(lambda: x.astype(ML[name]), max(1, args.repeat // 2)) if name != "float16" else float("nan")
        t_np = best(lambda: x.astype(np.float16), args.repeat) if name == "float16" else float("nan")
        t_torch = float("nan")
        if torch is not None and name in TORCH_DTYPES and hasattr(torch, TORCH_DTYPES[name]):
            dt = getattr(torch, TORCH_DTYPES[name])
            try:
                t_torch = best(lambda: tx.to(dt), args.repeat)
            except (RuntimeError, TypeError):
                pass

        def cell(t, w=10):
            return f"{t * 1e3:>{w}.2f}" if t == t else f"{'-':>{w}}"

        def ratio(t, w=9):
            return f"{t / t_qd:>{w - 1}.1f}x" if t == t else f"{'-':>{w}}"

        print(
            f"{name:<20}{cell(t_qd, 14)}{cell(t_ml, 14)}{ratio(t_ml, 12)}{cell(t_torch)}{ratio(t_torch)}"
            f"{cell(t_np)}{ratio(t_np)}{t_row_read / t_qd:>12.2f}{cell(t_row_read, 10)}"
        )


if __name__ == "__main__":
    main()
