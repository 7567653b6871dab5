"""KL and JS throughput: quantdrift vs torch CPU vs numpy/scipy vs the
memory-read roofline, in one run.

    python benches/bench_divergence.py [--quick]

For each shape (rows × vocab) and input dtype it times:
- quantdrift.kl / quantdrift.js (Rust, SIMD, all cores);
- torch CPU: log_softmax + kl_div, and the JS formula on log_softmax outputs
  (bfloat16 inputs are widened to float32 first, as users do);
- numpy/scipy: scipy.special.log_softmax and the same formulas;
- a multi-threaded plain read of the same bytes (quantdrift._core.read_all).

Throughput is input bytes (p and q) per second; ratios are quantdrift's
speed over each peer and quantdrift's fraction of the roofline. Timings are
the best of several runs, all of them taken in turn, round after round, so
that the ratios compare the same minutes of a shared host. Peak RSS is the
process's high-water mark.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource

import ml_dtypes
import numpy as np
from scipy.special import log_softmax

import quantdrift as qd
from quantdrift import _core
from timing import best_interleaved

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None


def numpy_kl(p, q):
    lp = log_softmax(p.astype(np.float32, copy=False), axis=-1)
    lq = log_softmax(q.astype(np.float32, copy=False), axis=-1)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def numpy_js(p, q):
    lp = log_softmax(p.astype(np.float32, copy=False), axis=-1)
    lq = log_softmax(q.astype(np.float32, copy=False), axis=-1)
    P, Q = np.exp(lp), np.exp(lq)
    lm = np.log(0.5 * (P + Q))
    return 0.5 * (P * (lp - lm)).sum(-1) + 0.5 * (Q * (lq - lm)).sum(-1)


def torch_kl(p, q):
    lp = torch.log_softmax(p.float(), -1)
    lq = torch.log_softmax(q.float(), -1)
    return F.kl_div(lq, lp, log_target=True, reduction="none").sum(-1)


def torch_js(p, q):
    lp = torch.log_softmax(p.float(), -1)
    lq = torch.log_softmax(q.float(), -1)
    lm = torch.logaddexp(lp, lq) - np.log(2.0)
    return 0.5 * F.kl_div(lm, lp, log_target=True, reduction="none").sum(-1) + 0.5 * F.kl_div(
        lm, lq, log_target=True, reduction="none"
    ).sum(-1)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, quantdrift isa={qd.isa()} threads={qd.num_threads()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    shapes = [(256, 32000)] if args.quick else [(4096, 32000), (1024, 131072)]
    print(f"# machine: {machine()}")
    if torch is not None:
        print(f"# torch {torch.__version__} CPU, {torch.get_num_threads()} threads")
    else:
        print("# torch not installed: torch columns skipped")
    rows_out = []
    rng = np.random.default_rng(0)
    for rows, vocab in shapes:
        base = rng.standard_normal((rows, vocab), dtype=np.float32) * 2.5
        other = base + rng.standard_normal((rows, vocab), dtype=np.float32) * 0.1
        for dtype_name in ("float32", "bfloat16"):
            if dtype_name == "float32":
                p, q = base, other
            else:
                p, q = base.astype(ml_dtypes.bfloat16), other.astype(ml_dtypes.bfloat16)
            nbytes = p.nbytes + q.nbytes
            raw_p, raw_q = p.view(np.uint8).reshape(-1), q.view(np.uint8).reshape(-1)
            # quantdrift, the plain read (the roofline) and the peers in turn,
            # round after round: the ratios compare the same minutes
            runs = [
                (lambda: qd.kl(p, q), args.repeat),
                (lambda: (_core.read_all(raw_p), _core.read_all(raw_q)), args.repeat),
                (lambda: qd.js(p, q), args.repeat),
                (lambda: numpy_kl(p, q), 1),
                (lambda: numpy_js(p, q), 1),
            ]
            if torch is not None:
                tp = torch.from_numpy(p) if dtype_name == "float32" else torch.from_numpy(p.view(np.int16)).view(torch.bfloat16)
                tq = torch.from_numpy(q) if dtype_name == "float32" else torch.from_numpy(q.view(np.int16)).view(torch.bfloat16)
                # sanity: same numbers as the peer (and torch warmed up)
                np.testing.assert_allclose(qd.kl(p[:8], q[:8]), torch_kl(tp[:8], tq[:8]).double().numpy(), rtol=2e-3, atol=1e-6)
                runs += [(lambda: torch_kl(tp, tq), 2), (lambda: torch_js(tp, tq), 2)]
            # warm-up: ours and the read once each (the peers' first calls are timed, as before)
            for fn, _ in runs[:3]:
                fn()
            times = best_interleaved(runs, warm=False) + [float("nan")] * (7 - len(runs))
            t_kl, t_read, t_js, t_np_kl, t_np_js, t_t_kl, t_t_js = times
            gbps = lambda t: nbytes / t / 1e9  # noqa: E731
            rows_out.append(
                dict(
                    shape=f"{rows}x{vocab}", dtype=dtype_name, read=gbps(t_read),
                    kl=gbps(t_kl), js=gbps(t_js), t_kl=gbps(t_t_kl), t_js=gbps(t_t_js),
                    np_kl=gbps(t_np_kl), np_js=gbps(t_np_js),
                    kl_ms=t_kl * 1e3, js_ms=t_js * 1e3,
                )
            )
            r = rows_out[-1]
            print(f"  measured {r['shape']} {dtype_name}: KL {r['kl']:.2f} GB/s, roofline {r['read']:.2f} GB/s", flush=True)
    print()
    print("| shape | dtype | roofline GB/s | KL GB/s (ms) | KL / roofline | KL vs torch | KL vs numpy | JS GB/s (ms) | JS vs torch | JS vs numpy | torch KL GB/s | numpy KL GB/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows_out:
        print(
            f"| {r['shape']} | {r['dtype']} | {r['read']:.2f} | {r['kl']:.2f} ({r['kl_ms']:.0f}) | {r['kl'] / r['read']:.2f} "
            f"| {r['kl'] / r['t_kl']:.1f}x | {r['kl'] / r['np_kl']:.1f}x | {r['js']:.2f} ({r['js_ms']:.0f}) "
            f"| {r['js'] / r['t_js']:.1f}x | {r['js'] / r['np_js']:.1f}x | {r['t_kl']:.2f} | {r['np_kl']:.2f} |"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak RSS {peak:.2f} GiB (the peers' intermediates dominate it)")


if __name__ == "__main__":
    main()
