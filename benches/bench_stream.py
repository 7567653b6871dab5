"""Streaming compare over two fp16 ``.npy`` logit dumps: quantdrift vs a
chunked torch CPU loop vs the memory roofline, plus peak RSS.

Run: ``python benches/bench_stream.py [--rows 16384] [--vocab 128256]
[--rss-rows 32768]``. It writes the dumps into ``--dir`` (default: a folder
under /tmp; the default sizes take 2 × 4.2 GB, plus 2 × 8.4 GB for the
peak-RSS run), reads them once to warm the page cache, and times:

* quantdrift: ``quantdrift.compare`` (KL both ways, JS, top-1 and top-5
  agreement, from the files, streamed in 512 MB steps);
* torch: what a user writes with torch on the CPU: chunks of rows from the
  memory-mapped files, ``.float()``, ``log_softmax``, KL both ways, JS and
  top-1 agreement;
* roofline: a multi-threaded plain read of the same bytes already in memory
  (``quantdrift._core.read_all``).

Peak RSS of a compare of the two large files runs in a child process
(``VmHWM``). Nothing is asserted; the ratio table is printed, and
``--keep`` leaves the files for the next run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings

import numpy as np

import quantdrift as qd
from quantdrift import _core

try:
    import torch
except ImportError:  # pragma: no cover - optional peer
    torch = None


def write_pair(folder: str, rows: int, vocab: int, seed: int = 0):
    """base/other fp16 dumps shaped like a 128k-vocabulary model's logits:
    a heavy-tailed base, and the base plus small noise (a quantised model)."""
    base_path = os.path.join(folder, f"base_{rows}x{vocab}.npy")
    other_path = os.path.join(folder, f"other_{rows}x{vocab}.npy")
    if os.path.exists(base_path) and os.path.exists(other_path):
        return base_path, other_path
    rng = np.random.default_rng(seed)
    base = np.lib.format.open_memmap(base_path + ".part", mode="w+", dtype=np.float16, shape=(rows, vocab))
    other = np.lib.format.open_memmap(other_path + ".part", mode="w+", dtype=np.float16, shape=(rows, vocab))
    step = 256
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        b = rng.standard_normal((stop - start, vocab), dtype=np.float32) * 2.5
        b[:, : vocab // 64] += 6.0  # a block of likely tokens
        o = b + rng.standard_normal(b.shape, dtype=np.float32) * 0.15
        base[start:stop] = b
        other[start:stop] = o
    base.flush()
    other.flush()
    del base, other
    os.replace(base_path + ".part", base_path)
    os.replace(other_path + ".part", other_path)
    return base_path, other_path


def warm(path: str) -> None:
    """Reads a file once so that it sits in the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 26):
            pass


def torch_loop(base_path: str, other_path: str, chunk_rows: int):
    # torch warns that the memory-mapped chunks are read-only; nothing writes to them
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    b = np.load(base_path, mmap_mode="r")
    o = np.load(other_path, mmap_mode="r")
    kls, rkls, jss, same = [], [], [], []
    for start in range(0, b.shape[0], chunk_rows):
        tb = torch.from_numpy(np.ascontiguousarray(b[start : start + chunk_rows])).float()
        to = torch.from_numpy(np.ascontiguousarray(o[start : start + chunk_rows])).float()
        lp = torch.log_softmax(tb, dim=-1)
        lq = torch.log_softmax(to, dim=-1)
        p, q = lp.exp(), lq.exp()
        kls.append((p * (lp - lq)).sum(-1))
        rkls.append((q * (lq - lp)).sum(-1))
        lm = torch.log((p + q) * 0.5)
        jss.append(0.5 * ((p * (lp - lm)).sum(-1) + (q * (lq - lm)).sum(-1)))
        same.append(lp.argmax(-1) == lq.argmax(-1))
    return torch.cat(kls).numpy(), torch.cat(jss).numpy()


def best(fn, repeat: int):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


RSS_CHILD = textwrap.dedent(
    """
    import sys, time, quantdrift as qd
    t = time.perf_counter()
    r = qd.compare(sys.argv[1], sys.argv[2], progress=False)
    dt = time.perf_counter() - t
    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
    print(int(hwm) * 1024, dt, r.n_tokens, r.summary()['kl']['mean'])
    """
)


def read_rate(nbytes: int) -> float:
    """The roofline: bytes per second of a threaded read of as many bytes
    (at most 2 GiB), already in memory."""
    buf = np.ones(min(nbytes, 2 << 30), dtype=np.uint8)
    t_read, _ = best(lambda: _core.read_all(buf), 3)
    return buf.nbytes / t_read


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--rss-rows", type=int, default=32768, help="rows of the peak-RSS run (0: skip)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "quantdrift-bench-stream"))
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, quantdrift threads={qd.num_threads()}, isa={qd.isa()}")
    base_path, other_path = write_pair(args.dir, args.rows, args.vocab)
    nbytes = os.path.getsize(base_path) + os.path.getsize(other_path)
    warm(base_path)
    warm(other_path)

    roofline = read_rate(nbytes) / 1e9
    print(f"# {args.rows}x{args.vocab} fp16 per file, {nbytes / 1e9:.2f} GB in all; roofline {roofline:.1f} GB/s")

    rows = []
    t_qd, report = best(lambda: qd.compare(base_path, other_path, progress=False), args.repeat)
    rows.append(("quantdrift compare (kl, rkl, js, top-1/5)", t_qd))
    t_qd1, _ = best(lambda: qd.compare(base_path, other_path, topk=(1,), progress=False), args.repeat)
    rows.append(("quantdrift compare (kl, rkl, js, top-1)", t_qd1))
    t_torch = float("nan")
    if torch is not None:
        torch.set_num_threads(qd.num_threads())
        chunk = max(1, (512 << 20) // (4 * 2 * args.vocab * 4))  # ~512 MB of float32 work
        t_torch, (kl_t, _) = best(lambda: torch_loop(base_path, other_path, chunk), 1)
        rows.append((f"torch {torch.__version__} CPU loop ({torch.get_num_threads()} threads)", t_torch))
        err = np.max(np.abs(kl_t.astype(np.float64) - report.kl) / np.maximum(report.kl, 1e-6))
        print(f"# torch vs quantdrift per-token KL: max relative difference {err:.1e}")
    else:
        print("# torch is not installed: no torch row")

    header = f"{'path':<48}{'seconds':>9}{'GB/s':>8}{'tokens/s':>11}{'× torch':>9}{'of roofline':>13}"
    print(header)
    print("-" * len(header))
    for name, t in rows:
        gbps = nbytes / t / 1e9
        print(f"{name:<48}{t:>9.2f}{gbps:>8.2f}{args.rows / t:>11.0f}{t_torch / t:>9.1f}{gbps / roofline:>13.2f}")
    print(f"{'roofline (threaded read, in memory)':<48}{nbytes / roofline / 1e9:>9.2f}{roofline:>8.2f}")
    print(f"# mean KL {report.summary()['kl']['mean']:.5f}, same top-1 {report.summary()['same_top1']['fraction']:.3%}")

    if args.rss_rows:
        big_base, big_other = write_pair(args.dir, args.rss_rows, args.vocab, seed=1)
        big = os.path.getsize(big_base) + os.path.getsize(big_other)
        out = subprocess.run(
            [sys.executable, "-c", RSS_CHILD, big_base, big_other], check=True, capture_output=True, text=True
        ).stdout.split()
        hwm, secs = int(out[0]), float(out[1])
        print(f"# peak RSS comparing two {big / 2e9:.1f} GB fp16 files: {hwm / 2**20:.0f} MiB ({secs:.1f} s, {big / secs / 1e9:.2f} GB/s, page cache cold or partly warm)")
        if not args.keep:
            os.unlink(big_base)
            os.unlink(big_other)
    if not args.keep:
        os.unlink(base_path)
        os.unlink(other_path)


if __name__ == "__main__":
    main()
