"""Train the character-level language model that ``quantdrift demo`` ships.

The model reads the previous ``CONTEXT`` characters of Shakespeare and
predicts the next one. It is a plain MLP so that every weight is a matrix a
quantizer can round and a numpy forward pass can run:

    x  = concat(embed[ids[t - CONTEXT]], ..., embed[ids[t - 1]])   # CONTEXT*EMBED
    h1 = gelu(layer_norm(fc1.weight @ x + fc1.bias))               # HIDDEN
    h2 = gelu(layer_norm(fc2.weight @ h1 + fc2.bias)) + h1         # HIDDEN
    logits = out.weight @ h2 + out.bias                            # vocab

(``gelu`` is the tanh approximation; ``layer_norm`` has learned scale and
shift.) Every matrix's input axis is a multiple of 64, so quantization groups
of 32/64/128 and MX blocks of 32 tile it exactly; only the vocab axis (65) is
ragged.

The first 90% of the text trains the model; the last 10% is held out and only
evaluated once, at the end. The run is reproducible on a given machine (fixed seed, fixed
thread count) and takes a few minutes on two CPU cores. It writes
``python/quantdrift/demo_data/charlm.safetensors`` (float32, with the config,
training steps and held-out losses in ``__metadata__``) through the small
safetensors writer below, so no extra dependency is needed.

Usage::

    python scripts/train_demo_model.py [--steps N] [--out PATH]

Needs torch (CPU is enough) and numpy.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "python" / "quantdrift" / "demo_data"
TEXT = DATA / "shakespeare.txt.xz"

SEED = 1234
CONTEXT = 32
EMBED = 32
HIDDEN = 384
TRAIN_FRACTION = 0.9
BATCH = 256
STEPS = 4000
LR = 3e-3
WEIGHT_DECAY = 0.05
DROPOUT = 0.0
LN_EPS = 1e-5


def load_text() -> str:
    with lzma.open(TEXT, "rt", encoding="utf-8", newline="") as f:
        return f.read()


def split(text: str) -> tuple[str, str]:
    cut = int(len(text) * TRAIN_FRACTION)
    return text[:cut], text[cut:]


def init_params(vocab: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    def linear(fan_out: int, fan_in: int) -> torch.Tensor:
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(fan_out, fan_in, generator=gen) * 2 - 1) * bound

    params = {
        "embed.weight": torch.randn(vocab, EMBED, generator=gen) * 0.5,
        "fc1.weight": linear(HIDDEN, CONTEXT * EMBED),
        "fc1.bias": torch.zeros(HIDDEN),
        "ln1.weight": torch.ones(HIDDEN),
        "ln1.bias": torch.zeros(HIDDEN),
        "fc2.weight": linear(HIDDEN, HIDDEN),
        "fc2.bias": torch.zeros(HIDDEN),
        "ln2.weight": torch.ones(HIDDEN),
        "ln2.bias": torch.zeros(HIDDEN),
        "out.weight": linear(vocab, HIDDEN),
        "out.bias": torch.zeros(vocab),
    }
    for p in params.values():
        p.requires_grad_(True)
    return params


def forward(params: dict[str, torch.Tensor], windows: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """Logits [batch, vocab] for ``windows`` [batch, CONTEXT] of token ids."""
    x = params["embed.weight"][windows].reshape(windows.shape[0], CONTEXT * EMBED)
    if dropout:
        x = F.dropout(x, dropout)
    h = F.linear(x, params["fc1.weight"], params["fc1.bias"])
    h1 = F.gelu(F.layer_norm(h, (HIDDEN,), params["ln1.weight"], params["ln1.bias"], LN_EPS), approximate="tanh")
    if dropout:
        h1 = F.dropout(h1, dropout)
    h = F.linear(h1, params["fc2.weight"], params["fc2.bias"])
    h2 = F.gelu(F.layer_norm(h, (HIDDEN,), params["ln2.weight"], params["ln2.bias"], LN_EPS), approximate="tanh") + h1
    if dropout:
        h2 = F.dropout(h2, dropout)
    return F.linear(h2, params["out.weight"], params["out.bias"])


@torch.no_grad()
def mean_nll(params: dict[str, torch.Tensor], ids: torch.Tensor, chunk: int = 8192) -> float:
    """Mean next-token cross-entropy (nats) over every position with a full context."""
    windows = ids.unfold(0, CONTEXT, 1)[:-1]
    targets = ids[CONTEXT:]
    total = 0.0
    for start in range(0, len(targets), chunk):
        logits = forward(params, windows[start : start + chunk])
        total += F.cross_entropy(logits, targets[start : start + chunk], reduction="sum").item()
    return total / len(targets)


def ngram_nll(train: np.ndarray, heldout: np.ndarray, vocab: int, order: int) -> float:
    """Held-out cross-entropy of an add-one smoothed unigram (order 1) or bigram (order 2) model,
    scored on the same positions as the MLP (those with a full context)."""
    targets = heldout[CONTEXT:]
    if order == 1:
        counts = np.bincount(train, minlength=vocab) + 1.0
        return float(-np.log(counts[targets] / counts.sum()).mean())
    counts = np.ones((vocab, vocab))
    np.add.at(counts, (train[:-1], train[1:]), 1.0)
    probs = counts / counts.sum(axis=1, keepdims=True)
    return float(-np.log(probs[heldout[CONTEXT - 1 : -1], targets]).mean())


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write float32 ``tensors`` as a safetensors file, atomically.

    Layout: 8-byte little-endian header length, a JSON header (space-padded to
    a multiple of 8 bytes) mapping each name to dtype/shape/data_offsets, then
    the tensors' bytes back to back in header order.
    """
    header: dict[str, object] = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(encoded)))
            f.write(encoded)
            for blob in blobs:
                f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--out", type=Path, default=DATA / "charlm.safetensors")
    args = parser.parse_args()

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(SEED)

    text = load_text()
    vocab = "".join(sorted(set(text)))
    lookup = {ch: i for i, ch in enumerate(vocab)}
    train_text, heldout_text = split(text)
    train_ids = torch.tensor([lookup[c] for c in train_text], dtype=torch.long)
    heldout_ids = torch.tensor([lookup[c] for c in heldout_text], dtype=torch.long)
    print(f"text: {len(text)} chars, vocab {len(vocab)}, train {len(train_ids)}, held-out {len(heldout_ids)}")

    params = init_params(len(vocab), gen)
    decay = [p for name, p in params.items() if name.endswith(".weight") and not name.startswith("ln")]
    no_decay = [p for name, p in params.items() if not any(p is d for d in decay)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR,
        betas=(0.9, 0.99),
    )
    warmup = 200
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda step: min(1.0, (step + 1) / warmup)
        * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step, args.steps) / args.steps))),
    )

    starts_max = len(train_ids) - CONTEXT - 1
    offsets = torch.arange(CONTEXT + 1)
    began = time.perf_counter()
    running = None
    for step in range(args.steps):
        starts = torch.randint(0, starts_max + 1, (BATCH,), generator=gen)
        chunk = train_ids[starts[:, None] + offsets]
        logits = forward(params, chunk[:, :CONTEXT], DROPOUT)
        loss = F.cross_entropy(logits, chunk[:, CONTEXT])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        schedule.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 500 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  train loss {running:.4f}  {time.perf_counter() - began:6.1f}s", flush=True)

    train_seconds = time.perf_counter() - began
    heldout_loss = mean_nll(params, heldout_ids)
    unigram = ngram_nll(train_ids.numpy(), heldout_ids.numpy(), len(vocab), 1)
    bigram = ngram_nll(train_ids.numpy(), heldout_ids.numpy(), len(vocab), 2)
    print(f"held-out cross-entropy (nats/char): model {heldout_loss:.4f}  bigram {bigram:.4f}  unigram {unigram:.4f}")
    print(f"held-out perplexity: model {math.exp(heldout_loss):.3f}  bigram {math.exp(bigram):.3f}  unigram {math.exp(unigram):.3f}")

    tensors = {name: p.detach().numpy().astype(np.float32) for name, p in params.items()}
    n_params = sum(t.size for t in tensors.values())
    metadata = {
        "format": "quantdrift-charlm-v1",
        "vocab": vocab,
        "context": str(CONTEXT),
        "embed": str(EMBED),
        "hidden": str(HIDDEN),
        "layers": json.dumps(["embed", "fc1", "ln1", "gelu", "fc2", "ln2", "gelu", "residual", "out"]),
        "activation": "gelu_tanh",
        "layer_norm_eps": str(LN_EPS),
        "parameters": str(n_params),
        "train_fraction": str(TRAIN_FRACTION),
        "train_chars": str(len(train_text)),
        "heldout_chars": str(len(heldout_text)),
        "seed": str(SEED),
        "steps": str(args.steps),
        "batch": str(BATCH),
        "train_seconds": f"{train_seconds:.1f}",
        "heldout_loss": repr(heldout_loss),
        "heldout_bigram_loss": repr(bigram),
        "heldout_unigram_loss": repr(unigram),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(args.out, tensors, metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {n_params} parameters) in {train_seconds:.0f}s of training")


if __name__ == "__main__":
    main()
