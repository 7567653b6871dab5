"""Log-likelihood vectors: the K×N KL estimate matrix and weight-space
distances, quantdrift vs numpy in the same run.

Run: ``python benches/bench_llv.py [--k 1000] [--n 10000] [--gb 2]``.

* KL matrix: double centring of a K×N log-likelihood matrix and the K×K
  matrix ‖q_i − q_j‖²/(2N). numpy is timed two ways: the Gram-matrix
  formula (BLAS, fast, but it subtracts large norms — its error is shown) and
  the direct sum of squared differences in row blocks (exact, like ours).
* Weight distance: ‖W_a − W_b‖² between two generated bf16 safetensors
  checkpoints of ``--gb`` GB each, quantdrift (streamed, Rust) vs numpy over
  memory maps (chunks widened to float64); peak RSS of each in a child process.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

import quantdrift as qd


def timed(fn, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def numpy_gram(L):
    Q = L - L.mean(1, keepdims=True)
    Q -= Q.mean(0, keepdims=True)
    sq = np.einsum("ij,ij->i", Q, Q)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * Q @ Q.T, 0) / (2 * L.shape[1])


def numpy_direct(L, block=16):
    Q = L - L.mean(1, keepdims=True)
    Q -= Q.mean(0, keepdims=True)
    k = Q.shape[0]
    out = np.zeros((k, k))
    for i in range(0, k, block):
        d = Q[i : i + block, None, :] - Q[None, :, :]
        out[i : i + block] = np.einsum("ijk,ijk->ij", d, d)
    return out / (2 * L.shape[1])


def write_checkpoint(path, n_tensors, elems, seed, shift=0.0):
    import ml_dtypes

    rng = np.random.default_rng(seed)
    header, off = {}, 0
    for i in range(n_tensors):
        header[f"layers.{i}.weight"] = {"dtype": "BF16", "shape": [elems], "data_offsets": [off, off + 2 * elems]}
        off += 2 * elems
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        for i in range(n_tensors):
            x = rng.standard_normal(elems, dtype=np.float32) * 0.02 + shift
            f.write(x.astype(ml_dtypes.bfloat16).tobytes())


NUMPY_CHILD = textwrap.dedent(
    """
    import json, sys, time, numpy as np, ml_dtypes
    def tensors(path):
        raw = open(path, 'rb').read(8)
        n = int.from_bytes(raw, 'little')
        header = json.loads(open(path, 'rb').read(8 + n)[8:])
        mm = np.memmap(path, dtype=np.uint8, mode='r')
        for name, t in sorted(header.items()):
            b, e = t['data_offsets']
            yield name, mm[8 + n + b: 8 + n + e].view(ml_dtypes.bfloat16)
    t = time.perf_counter()
    total = 0.0
    for (na, a), (nb, b) in zip(tensors(sys.argv[1]), tensors(sys.argv[2])):
        for s in range(0, a.size, 1 << 24):
            d = a[s:s + (1 << 24)].astype(np.float64) - b[s:s + (1 << 24)].astype(np.float64)
            total += float(np.dot(d, d))
    dt = time.perf_counter() - t
    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
    print(dt, int(hwm) * 1024, total)
    """
)

QD_CHILD = textwrap.dedent(
    """
    import sys, time
    from quantdrift import llv
    t = time.perf_counter()
    total = llv.weight_distance(sys.argv[1], sys.argv[2])
    dt = time.perf_counter() - t
    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
    print(dt, int(hwm) * 1024, total)
    """
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "quantdrift-bench-llv"))
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, quantdrift threads={qd.num_threads()}, isa={qd.isa()}")
    rng = np.random.default_rng(0)
    L = rng.normal(-400, 30, size=(1, args.n)) + rng.normal(0, 3, size=(args.k, args.n))
    t_qd, kl = timed(lambda: qd.ModelMap(L).kl_matrix(), 2)
    t_gram, kl_gram = timed(lambda: numpy_gram(L), 2)
    t_direct, kl_direct = timed(lambda: numpy_direct(L), 1)
    off = ~np.eye(args.k, dtype=bool)  # the diagonal is 0 in both exact paths
    err_gram = np.max(np.abs(kl_gram - kl_direct)[off] / kl_direct[off])
    err_qd = np.max(np.abs(kl - kl_direct)[off] / kl_direct[off])
    print(f"# KL matrix, K={args.k}, N={args.n} (float64)")
    print(f"{'path':<44}{'seconds':>9}{'× quantdrift':>14}{'max rel. error':>16}  (off the diagonal, vs direct)")
    print(f"{'quantdrift ModelMap(L).kl_matrix()':<44}{t_qd:>9.2f}{1.0:>14.2f}{err_qd:>16.1e}")
    print(f"{'numpy direct (row blocks)':<44}{t_direct:>9.2f}{t_direct / t_qd:>14.2f}{0.0:>16.1e}")
    print(f"{'numpy Gram formula (BLAS matmul)':<44}{t_gram:>9.2f}{t_gram / t_qd:>14.2f}{err_gram:>16.1e}")

    os.makedirs(args.dir, exist_ok=True)
    elems = 1 << 26  # 128 MB of bf16 per tensor
    n_tensors = max(1, -int(-args.gb * 1e9 // (2 * elems)))  # at least --gb GB
    a = os.path.join(args.dir, "a.safetensors")
    b = os.path.join(args.dir, "b.safetensors")
    write_checkpoint(a, n_tensors, elems, 1)
    write_checkpoint(b, n_tensors, elems, 2, shift=0.001)
    size = os.path.getsize(a)
    for p in (a, b):
        with open(p, "rb") as f:
            while f.read(1 << 26):
                pass
    rows = []
    for name, child in (("quantdrift llv.weight_distance (Rust, streamed)", QD_CHILD),
                        ("numpy over memory maps (float64 chunks)", NUMPY_CHILD)):
        out = subprocess.run([sys.executable, "-c", child, a, b], check=True, capture_output=True, text=True).stdout.split()
        rows.append((name, float(out[0]), int(out[1]), float(out[2])))
    print(f"# weight distance between two {size / 1e9:.2f} GB bf16 checkpoints ({n_tensors} tensors of 128 MB), page cache warm")
    print(f"{'path':<50}{'seconds':>9}{'GB/s':>8}{'× numpy':>9}{'peak RSS MiB':>14}")
    t_np = rows[1][1]
    for name, t, hwm, total in rows:
        print(f"{name:<50}{t:>9.2f}{2 * size / t / 1e9:>8.2f}{t_np / t:>9.2f}{hwm / 2**20:>14.0f}")
    print(f"# distances agree to {abs(rows[0][3] - rows[1][3]) / rows[1][3]:.1e} relative")
    os.unlink(a)
    os.unlink(b)


if __name__ == "__main__":
    main()
