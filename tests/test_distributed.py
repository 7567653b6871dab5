"""compare_shards on a real dask.distributed LocalCluster (2 worker
processes): equal to compare on the concatenated data, surviving a worker
killed mid-run, naming a failing shard; and `quantdrift compare --scheduler`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

import quantdrift as qd  # noqa: E402
from quantdrift._errors import InputError  # noqa: E402
from quantdrift.distributed import ShardError, compare_shards, shard_pairs  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       dashboard_address=None, silence_logs=40)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def write_shards(folder, n_shards, rows, vocab, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    os.makedirs(folder / "base", exist_ok=True)
    os.makedirs(folder / "other", exist_ok=True)
    bases, others, tokens = [], [], []
    for i in range(n_shards):
        b = (rng.standard_normal((rows, vocab)) * 3).astype(dtype)
        o = (b + rng.standard_normal((rows, vocab)) * 0.3).astype(dtype)
        t = rng.integers(0, vocab, rows)
        np.save(folder / "base" / f"s{i:03d}.npy", b)
        np.save(folder / "other" / f"s{i:03d}.npy", o)
        np.save(folder / f"tokens{i:03d}.npy", t)
        bases.append(b), others.append(o), tokens.append(t)
    return np.concatenate(bases), np.concatenate(others), np.concatenate(tokens)


def same_report(a, b):
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("base"), d.pop("other")
    assert da == db
    np.testing.assert_array_equal(a.kl, b.kl)


def test_compare_shards_equals_one_run(client, tmp_path):
    base, other, tokens = write_shards(tmp_path, 5, 37, 50)
    pairs = [(str(b), str(o), str(tmp_path / f"tokens{i:03d}.npy"))
             for i, (b, o) in enumerate(shard_pairs(tmp_path / "base", tmp_path / "other"))]
    merged = compare_shards(pairs, client, topk=(1, 5), sequences=37)
    single = qd.compare(base, other, tokens=tokens, topk=(1, 5), sequences=37, progress=False)
    same_report(merged, single)
    assert merged.n_sequences == 5
    # without a client: the same code in this process
    same_report(compare_shards(pairs, None, topk=(1, 5), sequences=37), single)


def test_a_worker_killed_mid_run(client, tmp_path):
    base, other, _ = write_shards(tmp_path, 16, 200, 20000, seed=1, dtype=np.float16)
    pairs = shard_pairs(tmp_path / "base", tmp_path / "other")
    done = {}
    runner = threading.Thread(target=lambda: done.setdefault("report", compare_shards(pairs, client)))
    pids_before = set(client.run(os.getpid).values())
    runner.start()
    victim = None
    deadline = time.time() + 60
    while victim is None and time.time() < deadline:
        busy = [w for w, tasks in client.processing().items() if tasks]
        victim = busy[0] if busy else None
        time.sleep(0.005)
    assert victim is not None, "no shard started"
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)  # the worker process dies with its shard in flight
    runner.join(300)
    assert "report" in done
    same_report(done["report"], qd.compare(base, other, progress=False))
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(os.getpid).values()) != pids_before  # the nanny replaced the killed worker


def test_a_failing_shard_is_named(client, tmp_path):
    write_shards(tmp_path, 3, 10, 20)
    bad = tmp_path / "base" / "s001.npy"
    bad.write_bytes(bad.read_bytes()[:-50])  # truncated
    pairs = shard_pairs(tmp_path / "base", tmp_path / "other")
    with pytest.raises(ShardError, match="s001.npy"):
        compare_shards(pairs, client, retries=0)


def test_cli_scheduler(client, tmp_path):
    base, other, _ = write_shards(tmp_path, 3, 30, 40)
    out = subprocess.run(
        [sys.executable, "-m", "quantdrift", "compare", str(tmp_path / "base"), str(tmp_path / "other"),
         "--scheduler", client.scheduler.address, "--json", str(tmp_path / "r.json"), "--no-progress"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    import json

    got = json.loads((tmp_path / "r.json").read_text())
    want = qd.compare(base, other, progress=False).summary()
    assert got["kl"]["mean"] == pytest.approx(want["kl"]["mean"], rel=1e-12)
    assert got["tokens"] == 90


def test_pairs_must_match(tmp_path):
    write_shards(tmp_path, 2, 5, 10)
    (tmp_path / "base" / "s009.npy").write_bytes((tmp_path / "base" / "s000.npy").read_bytes())
    with pytest.raises(qd.InputError, match="3 shards but"):
        shard_pairs(tmp_path / "base", tmp_path / "other")
    with pytest.raises(qd.InputError, match="tokens per shard"):
        compare_shards([("a", "b")], None, tokens="t.npy")


def test_quantize_files_equals_quantize_file_shard_by_shard(client, tmp_path):
    import json

    from test_checkpoint import model, read_st, write_st

    t = model(3)
    names = list(t)
    src = tmp_path / "src"
    src.mkdir()
    parts = {"model-00001-of-00003.safetensors": names[:3], "model-00002-of-00003.safetensors": names[3:6],
             "model-00003-of-00003.safetensors": names[6:]}
    for f, keys in parts.items():
        write_st(src / f, {k: t[k] for k in keys})
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: f for f, keys in parts.items() for k in keys}}))
    from quantdrift.distributed import quantize_files

    rep = quantize_files(src / "model.safetensors.index.json", tmp_path / "out", "int4:g32", client,
                         report=tmp_path / "report.json")
    assert rep.totals["tensors"] == len(names)
    for f in parts:
        qd.quantize_file(src / f, tmp_path / f"ref-{f}", "int4:g32")
        assert (tmp_path / "out" / f).read_bytes() == (tmp_path / f"ref-{f}").read_bytes()
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(names)
    assert json.loads((tmp_path / "report.json").read_text())["totals"]["tensors"] == len(names)
    assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(".")]  # no staging left
    back, _ = read_st(tmp_path / "out" / "model-00002-of-00003.safetensors")
    assert back


def test_quantize_files_failure_leaves_nothing(client, tmp_path):
    from test_checkpoint import model, write_st

    from quantdrift.distributed import quantize_files

    t = model(4)
    src = tmp_path / "src"
    src.mkdir()
    write_st(src / "a.safetensors", {k: t[k] for k in list(t)[:3]})
    write_st(src / "b.safetensors", {k: t[k] for k in list(t)[3:]})
    raw = (src / "b.safetensors").read_bytes()
    (src / "b.safetensors").write_bytes(raw[:-100])  # truncated
    with pytest.raises(ShardError, match="b.safetensors"):
        quantize_files(str(src), tmp_path / "out", "int8", client, retries=0)
    assert os.listdir(tmp_path / "out") == []


def test_cli_quantize_scheduler(client, tmp_path):
    from test_checkpoint import model, write_st

    t = model(5)
    (tmp_path / "src").mkdir()
    write_st(tmp_path / "src" / "a.safetensors", {k: t[k] for k in list(t)[:4]})
    write_st(tmp_path / "src" / "b.safetensors", {k: t[k] for k in list(t)[4:]})
    out = subprocess.run(
        [sys.executable, "-m", "quantdrift", "quantize", str(tmp_path / "src"), str(tmp_path / "out"),
         "--recipe", "int8", "--scheduler", client.scheduler.address],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    qd.quantize_file(tmp_path / "src" / "a.safetensors", tmp_path / "a.safetensors", "int8")
    assert (tmp_path / "out" / "a.safetensors").read_bytes() == (tmp_path / "a.safetensors").read_bytes()


def test_loglik_matrix(client, tmp_path):
    from scipy.special import log_softmax

    from quantdrift.distributed import loglik_matrix

    rng = np.random.default_rng(7)
    lengths = [12, 30, 7, 21]
    rows, vocab = sum(lengths), 40
    tokens = rng.integers(0, vocab, rows)
    models = {}
    want = []
    for i in range(3):
        logits = (rng.standard_normal((rows, vocab)) * 2).astype(np.float32)
        np.save(tmp_path / f"m{i}.npy", logits)
        models[f"m{i}"] = str(tmp_path / f"m{i}.npy")
        lp = log_softmax(logits.astype(np.float64), axis=1)[np.arange(rows), tokens]
        want.append(np.add.reduceat(lp, np.cumsum([0] + lengths[:-1])))
    np.save(tmp_path / "tokens.npy", tokens)
    L, names = loglik_matrix(models, str(tmp_path / "tokens.npy"), lengths, client)
    assert names == ["m0", "m1", "m2"] and L.shape == (3, 4)
    np.testing.assert_allclose(L, np.array(want), rtol=1e-5)
    L_local, _ = loglik_matrix(models, tokens, lengths, None)
    np.testing.assert_array_equal(L, L_local)
    # Options are checked before anything is submitted.
    with pytest.raises(InputError, match="does not take 'topk'"):
        loglik_matrix(models, tokens, lengths, client, topk=(1, 5))
    with pytest.raises(InputError, match="sequences="):
        loglik_matrix(models, tokens, None, client)
    # A model whose file is cut short fails on its worker; the error names it.
    raw = (tmp_path / "m1.npy").read_bytes()
    (tmp_path / "m1.npy").write_bytes(raw[:-64])
    with pytest.raises(ShardError, match="model 'm1' failed"):
        loglik_matrix(models, tokens, lengths, client, retries=0)


def test_fsspec_urls(client, tmp_path):
    base, other, _ = write_shards(tmp_path, 2, 9, 16)
    pairs = [(f"file://{b}", f"file://{o}") for b, o in shard_pairs(tmp_path / "base", tmp_path / "other")]
    same_report(compare_shards(pairs, client), qd.compare(base, other, progress=False))
    # a non-local filesystem goes through a temporary local copy on the worker
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    with open(shard_pairs(tmp_path / "base", tmp_path / "other")[0][0], "rb") as f:
        fs.pipe("/q/b.npy", f.read())
    with open(shard_pairs(tmp_path / "base", tmp_path / "other")[0][1], "rb") as f:
        fs.pipe("/q/o.npy", f.read())
    from quantdrift.distributed import _compare_shard

    # the worker-side function, run here where this memory filesystem lives
    r = _compare_shard("memory://q/b.npy", "memory://q/o.npy", None, {})
    np.testing.assert_array_equal(r.kl, qd.compare(base[:9], other[:9], progress=False).kl)
    assert r.base_name == "memory://q/b.npy"
