"""The GIL is released while a kernel runs, and the thread count is honoured."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import quantdrift as qd


def test_gil_is_released_during_a_large_call():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(2048, 32000)).astype(np.float32)
    q = rng.normal(size=(2048, 32000)).astype(np.float32)
    qd.kl(p[:8], q[:8])  # warm up the pool
    window = {}
    started = threading.Event()

    def worker():
        started.set()
        window["start"] = time.perf_counter()
        for _ in range(3):
            qd.divergence(p, q, "js")
        window["end"] = time.perf_counter()

    thread = threading.Thread(target=worker)
    ticks = []
    thread.start()
    started.wait()
    while thread.is_alive():
        ticks.append(time.perf_counter())
    thread.join()
    inside = [t for t in ticks if window["start"] < t < window["end"]]
    duration = window["end"] - window["start"]
    # Holding the GIL for the whole call would leave this thread a handful of
    # switch intervals at most; released, it spins freely.
    assert duration > 0.05
    assert len(inside) > 1000, f"only {len(inside)} iterations in {duration:.3f}s"


def test_thread_count_comes_from_the_environment():
    code = "import quantdrift as qd; print(qd.num_threads())"
    env = dict(os.environ, QUANTDRIFT_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_results_do_not_depend_on_the_thread_count():
    code = (
        "import numpy as np, quantdrift as qd;"
        "r = np.random.default_rng(3); p = r.normal(size=(64, 999)).astype(np.float32);"
        "q = r.normal(size=(64, 999)).astype(np.float32);"
        "print(qd.kl(p, q).tobytes().hex())"
    )
    outs = set()
    for n in ("1", "2", "3"):
        env = dict(os.environ, QUANTDRIFT_NUM_THREADS=n)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert len(outs) == 1


@pytest.mark.parametrize("value, warning", [
    ("abc", "not a positive integer"),
    ("0", "not a positive integer"),
    ("999999", "more than 8 threads per core"),
])
def test_a_bad_thread_count_warns_and_is_not_obeyed(value, warning):
    code = "import quantdrift as qd; print(qd.num_threads())"
    env = dict(os.environ, QUANTDRIFT_NUM_THREADS=value)
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=60)
    assert warning in out.stderr
    assert 1 <= int(out.stdout) <= 8 * (os.cpu_count() or 1)
