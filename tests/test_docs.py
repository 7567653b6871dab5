"""The Python examples in README.md and docs/*.md run as written.

Each document's ```python blocks run in order in one namespace, as a reader
pasting them would run them, in a folder holding small stand-ins for the
files they name (logits of a few rows, a two-layer safetensors checkpoint, a
llama.cpp base file, shards, the recipe docs/quantization.md shows); the
``quantdrift`` commands of their ```sh blocks run the same way. The only
edits are listed in ``EDITS``: sizes shrunk, placeholders (``...``, a
cluster address, S3 paths) filled in. A block that fails names its document
and line.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import quantdrift as qd
from gpu_support import require_gpu
from quantdrift import llv
from quantdrift.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md"] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))

HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None

# (document, text in a block, replacement): the only changes made to the examples.
EDITS = [
    # a few rows instead of 4096 × 32000 logits, and a block within them
    ("README.md", "4096, 32000", "64, 320"),
    ("docs/sources.md", "src.block(0, 4096)", "src.block(0, 64)"),
    # an in-process cluster and local shard folders instead of a remote scheduler and S3
    ("docs/scaling.md", 'Client("tcp://scheduler:8786")', "Client(processes=False)"),
    ("docs/scaling.md", '"s3://bucket/base/", "s3://bucket/int4/"', '"shards/base/", "shards/int4/"'),
    # the elided names of the docs (L.npy holds no names)
    ("docs/llv.md", 'm.nearest("llama-3-8b", 5)', "m.nearest(m.names[0], 5)"),
    ("docs/llv.md", '{"quantized": [...], "base": [...]}', '{"quantized": m.names[1:], "base": m.names[:1]}'),
    ("docs/llv.md", '"ckpt-1000.safetensors", ...]', '"ckpt-1000.safetensors", "ckpt-2000.safetensors", "ckpt-3000.safetensors"]'),
]
if not HAVE_SKLEARN:
    # t-SNE needs scikit-learn (an optional extra); the other layouts do not
    EDITS.append(("docs/llv.md", 'm.coords("tsne")', 'm.coords("mds")'))


def blocks(doc: str):
    """(line, code) of each ```python block of `doc`, with its EDITS applied."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"```python\n(.*?)```", text, re.S):
        code = m.group(1)
        for where, old, new in EDITS:
            if where == doc:
                code = code.replace(old, new)
        out.append((text[: m.start()].count("\n") + 2, code))
    return out


def commands(doc: str):
    """(line, argv) of each ``quantdrift`` command in `doc`'s ```sh blocks,
    except the install line (`pip install . && quantdrift demo`, which the
    demo's own tests cover)."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"```sh\n(.*?)```", text, re.S):
        first = text[: m.start()].count("\n") + 2
        for k, line in enumerate(m.group(1).splitlines()):
            words = shlex.split(line, comments=True)
            if words[:1] == ["quantdrift"]:
                out.append((first + k, words[1:]))
    return out


def write_safetensors(path, tensors):
    """{name: float32 array} as a safetensors file."""
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    Path(path).write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def checkpoint(rng, scale=1.0):
    return {
        "model.layers.0.mlp.weight": scale * rng.standard_normal((64, 256)),
        "model.layers.0.norm.weight": np.ones(64),
    }


def stand_ins(folder: Path) -> dict:
    """Writes the files the examples name into `folder`; returns the
    variables they use."""
    rng = np.random.default_rng(0)
    vocab, rows, texts = 64, 96, [40, 56]
    base = rng.standard_normal((rows, vocab)).astype(np.float32)
    other = base + 0.1 * rng.standard_normal((rows, vocab)).astype(np.float32)
    tokens = rng.integers(0, vocab, rows)
    for name, arr in [("base_logits", base), ("int4_logits", other), ("base", base), ("q4", other),
                      ("int4", other), ("ckpt1000", base + 0.05), ("model_i_logits", other),
                      ("next_tokens", tokens), ("tokens", tokens)]:
        np.save(folder / f"{name}.npy", arr)
    for side, arr in (("base", base), ("int4", other)):
        (folder / "shards" / side).mkdir(parents=True)
        for k in range(2):
            np.save(folder / "shards" / side / f"part-{k}.npy", arr[48 * k: 48 * (k + 1)])
    (folder / "logits").mkdir()
    for k in range(2):
        np.save(folder / "logits" / f"part-{k}.npy", base[48 * k: 48 * (k + 1)])
        write_safetensors(folder / f"dump-{k}.safetensors", {"logits": base[48 * k: 48 * (k + 1)]})
    # a llama.cpp base file: two chunks of n_ctx = 512
    logits = rng.standard_normal((1024, vocab)).astype(np.float32)
    ids = rng.integers(0, vocab, 1024)
    qd.write_llamacpp_base(folder / "base.kld", logits, ids, n_ctx=512)
    for name in ("model", "m"):
        write_safetensors(folder / f"{name}.safetensors", checkpoint(rng))
    for step in (0, 1000, 2000, 3000):
        write_safetensors(folder / f"ckpt-{step}.safetensors", checkpoint(np.random.default_rng(1), 1 + step / 1e4))
    for where in (folder / "llama", folder):  # sharded sets
        where.mkdir(exist_ok=True)
        index = {"metadata": {}, "weight_map": {}}
        for k, (name, arr) in enumerate(checkpoint(rng).items()):
            write_safetensors(where / f"model-{k:05d}-of-00002.safetensors", {name: arr})
            index["weight_map"][name] = f"model-{k:05d}-of-00002.safetensors"
        (where / "model.safetensors.index.json").write_text(json.dumps(index))
    # the recipe is the one docs/quantization.md shows
    recipe = re.search(r"```toml\n(.*?)```", (ROOT / "docs/quantization.md").read_text(encoding="utf-8"), re.S)
    (folder / "recipe.toml").write_text(recipe.group(1))
    # four models' (or checkpoints') log-likelihoods of 20 texts
    L = -50 - 10 * np.abs(rng.standard_normal((4, 20)))
    np.save(folder / "L.npy", L)
    return {
        "np": np, "qd": qd, "llv": llv,
        "x": rng.standard_normal(1024).astype(np.float32),
        "w": rng.standard_normal((256, 256)).astype(np.float32),
        "p": base, "q": other, "arr": base, "base": base, "other": other,
        "logits": logits, "tokens": ids,
        "L": L, "names": ["base", "int4", "int8", "nf4"], "text_bytes": rng.integers(100, 400, 20),
        "token_logprobs": -np.abs(rng.standard_normal(rows)), "text_lengths": np.array(texts),
        "steps": [0, 1000, 2000, 3000],
    }


@pytest.mark.parametrize("doc", [doc for doc in DOCS if blocks(doc)])
def test_examples_run(doc, tmp_path, monkeypatch):
    found = blocks(doc)
    if any('device="gpu"' in code or "qd.gpu." in code for _, code in found):
        require_gpu()
    monkeypatch.chdir(tmp_path)
    ns = stand_ins(tmp_path)
    try:
        for line, code in found:
            try:
                exec(compile(code, f"{doc}:{line}", "exec"), ns)
            except Exception as e:
                pytest.fail(f"the example at {doc}:{line} failed: {type(e).__name__}: {e}")
    finally:
        if "client" in ns:
            ns["client"].close()


@pytest.mark.parametrize("doc", [doc for doc in DOCS if commands(doc)])
def test_commands_run(doc, tmp_path, monkeypatch, capsys):
    found = commands(doc)
    monkeypatch.chdir(tmp_path)
    stand_ins(tmp_path)
    for line, argv in found:
        code = cli(argv)
        err = capsys.readouterr().err
        assert code == 0, f"the command at {doc}:{line} exited {code}: {err}"


def test_docstring_examples():
    """The ``>>>`` examples in the package's docstrings."""
    import doctest
    import importlib
    import pkgutil

    failed = []
    for info in pkgutil.iter_modules(qd.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"quantdrift.{info.name}")
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
        if result.failed:
            failed.append(info.name)
    result = doctest.testmod(qd, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    if result.failed:
        failed.append("quantdrift")
    assert not failed, f"docstring examples fail in {failed} (run pytest --doctest-modules on them)"


def test_every_edit_applies():
    """An edit that no longer matches its document would leave a stale
    placeholder (and hide a changed example)."""
    for doc, old, _ in EDITS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        assert old in text, f"{doc} no longer contains {old!r}"


def test_the_examples_are_found():
    """The tests above are parametrised by what the documents hold; an
    extraction that broke would leave them with nothing to run."""
    assert sum(len(blocks(doc)) for doc in DOCS) >= 20
    assert sum(len(commands(doc)) for doc in DOCS) >= 3
