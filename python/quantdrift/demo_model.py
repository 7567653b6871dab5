"""The small real language model that ``quantdrift demo`` quantizes.

A character-level model of Shakespeare, trained by
``scripts/train_demo_model.py`` on the first 90% of the text shipped in
``quantdrift/demo_data``; the last 10% is held out. It is an MLP over the
previous :attr:`CharModel.context` characters, so its forward pass is a few
numpy matmuls and every weight is a plain float32 matrix a quantizer can
round::

    x  = concat(embed[ids[t - context]], ..., embed[ids[t - 1]])
    h1 = gelu(layer_norm(fc1.weight @ x + fc1.bias))
    h2 = gelu(layer_norm(fc2.weight @ h1 + fc2.bias)) + h1
    logits[t] = out.weight @ h2 + out.bias        # predicts ids[t]

Weights are stored the way torch stores ``nn.Linear``: ``[out, in]``, so
quantization groups run along a row (the input axis, a multiple of 64 for
every matrix).

Example::

    >>> from quantdrift.demo_model import heldout_text, load_model
    >>> model = load_model()
    >>> ids = model.encode(heldout_text(2000))
    >>> logits = model.logits(ids)            # [len(ids) - context, vocab]
    >>> targets = model.targets(ids)          # the token each row predicts
    >>> logits.shape == (len(ids) - model.context, len(model.vocab))
    True
"""

from __future__ import annotations

import functools
import json
import lzma
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from ._errors import InputError, ShapeError

__all__ = [
    "CharModel",
    "load_model",
    "heldout_text",
    "train_text",
    "read_safetensors",
    "DATA_DIR",
    "MODEL_PATH",
    "TEXT_PATH",
]

DATA_DIR = Path(__file__).resolve().parent / "demo_data"
MODEL_PATH = DATA_DIR / "charlm.safetensors"
TEXT_PATH = DATA_DIR / "shakespeare.txt.xz"

#: Fraction of the text the model was trained on; the rest is held out.
TRAIN_FRACTION = 0.9

# Rows per matmul in CharModel.logits: bounds the [rows, context*embed]
# window matrix to a few tens of MB whatever the input length.
_CHUNK_ROWS = 4096

_DTYPES: Dict[str, np.dtype] = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "F16": np.dtype("<f2")}


# ---------------------------------------------------------------------------
# safetensors


def read_safetensors(path: Union[str, Path]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor of a safetensors file.

    Args:
        path: the file. F32, F64 and F16 tensors are supported (BF16 too when
            ``ml_dtypes`` is installed, which quantdrift depends on).

    Returns:
        ``(tensors, metadata)``: a dict name → read-only ndarray (little-endian,
        in header order, viewing one buffer of the file's bytes) and the
        header's ``__metadata__`` (empty if absent).

    Raises:
        OSError: the file cannot be read.
        InputError: the file is not a well-formed safetensors file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 8:
        raise InputError(f"{path}: not a safetensors file ({len(raw)} bytes, shorter than the 8-byte header length)")
    (header_len,) = struct.unpack("<Q", raw[:8])
    if header_len > len(raw) - 8:
        raise InputError(f"{path}: header length {header_len} exceeds the file's {len(raw) - 8} remaining bytes")
    try:
        header = json.loads(raw[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    body = memoryview(raw)[8 + header_len :]
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        dtype_name = info.get("dtype") if isinstance(info, dict) else None
        dtype = _bfloat16() if dtype_name == "BF16" else _DTYPES.get(str(dtype_name))
        if dtype is None:
            raise InputError(f"{path}: tensor {name!r} has dtype {dtype_name!r}; supported: F32, F64, F16, BF16")
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= len(body) or end - begin != count * dtype.itemsize:
            raise InputError(
                f"{path}: tensor {name!r} of shape {list(shape)} and dtype {dtype_name} has data_offsets "
                f"[{begin}, {end}], which do not fit its {count * dtype.itemsize} bytes in a data section of {len(body)}"
            )
        tensors[name] = np.frombuffer(body, dtype=dtype, count=count, offset=begin).reshape(shape)
    return tensors, metadata


def _bfloat16() -> Optional[np.dtype]:
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes is a dependency
        return None
    return np.dtype(ml_dtypes.bfloat16)


# ---------------------------------------------------------------------------
# the text


@functools.lru_cache(maxsize=1)
def _text() -> str:
    with lzma.open(TEXT_PATH, "rt", encoding="utf-8", newline="") as f:
        return f.read()


def _split() -> int:
    return int(len(_text()) * TRAIN_FRACTION)


def heldout_text(n_chars: Optional[int] = None) -> str:
    """The first ``n_chars`` characters of the held-out text (all of it, about
    111k characters, when ``None``): the last 10% of the shipped Shakespeare,
    which the model never saw in training."""
    text = _text()[_split() :]
    if n_chars is None:
        return text
    if n_chars < 0:
        raise InputError(f"n_chars must be >= 0, got {n_chars}")
    return text[:n_chars]


def train_text() -> str:
    """The first 90% of the shipped Shakespeare, which the model was trained on."""
    return _text()[: _split()]


# ---------------------------------------------------------------------------
# the model


def _layer_norm(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * scale + shift


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    # torch's gelu(approximate="tanh")
    inner = np.float32(np.sqrt(2.0 / np.pi)) * (x + np.float32(0.044715) * x * x * x)
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))


@dataclass(frozen=True)
class CharModel:
    """A character-level MLP language model (see the module docstring).

    Attributes:
        weights: name → float32 ndarray, exactly the tensors of the
            safetensors file (``embed.weight`` [vocab, embed], ``fc1.weight``
            [hidden, context*embed], ``fc2.weight`` [hidden, hidden],
            ``out.weight`` [vocab, hidden], biases and layer-norm vectors).
        vocab: the characters, in id order.
        context: characters of context each prediction reads.
        metadata: the file's ``__metadata__`` (training steps, held-out losses...).
    """

    weights: dict[str, np.ndarray]
    vocab: str
    context: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def embed(self) -> int:
        """Width of a character embedding."""
        return int(self.weights["embed.weight"].shape[1])

    @property
    def hidden(self) -> int:
        """Width of the hidden layers."""
        return int(self.weights["fc1.weight"].shape[0])

    @property
    def matrices(self) -> list[str]:
        """Names of the weight matrices a quantizer would round (the 2-D
        tensors); the rest are biases and layer-norm vectors."""
        return [name for name, tensor in self.weights.items() if tensor.ndim == 2]

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int32) of ``text``; raises InputError naming the first
        character that is not in :attr:`vocab`."""
        vocab_codes = np.array([ord(c) for c in self.vocab], dtype=np.int64)
        lookup = np.full(int(vocab_codes.max()) + 2, -1, dtype=np.int32)
        lookup[vocab_codes] = np.arange(len(self.vocab), dtype=np.int32)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
        ids = lookup[np.minimum(codes, len(lookup) - 1)]  # the last slot is -1: not in vocab
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            at = int(bad[0])
            raise InputError(f"text position {at} holds {text[at]!r}, which is not in the model's vocab {self.vocab!r}")
        return ids

    def decode(self, token_ids: np.ndarray) -> str:
        """The text of ``token_ids``."""
        return "".join(np.asarray(list(self.vocab))[np.asarray(token_ids, dtype=np.int64)])

    def targets(self, token_ids: np.ndarray) -> np.ndarray:
        """The next-token ids aligned with the rows of :meth:`logits`:
        ``token_ids[context:]`` as int32."""
        ids = self._check_ids(token_ids)
        return ids[self.context :].copy()

    def logits(self, token_ids: np.ndarray, *, weights: Optional[Mapping[str, np.ndarray]] = None) -> np.ndarray:
        """Next-token logits for every position that has a full context.

        No padding: row ``i`` reads ``token_ids[i : i + context]`` and scores
        the next token, ``token_ids[i + context]`` (that is, ``targets(token_ids)[i]``),
        so there are ``len(token_ids) - context`` rows (0 if the text is no
        longer than the context).

        Args:
            token_ids: 1-D integer ids (e.g. from :meth:`encode`).
            weights: tensors to use instead of :attr:`weights` (e.g. a
                quantized-then-dequantized copy), by the same names and
                shapes; missing names fall back to :attr:`weights`. They are
                cast to float32 and the pass runs in float32.

        Returns:
            float32 ``[len(token_ids) - context, vocab]``.

        Raises:
            ShapeError: a tensor in ``weights`` has the wrong shape, or
                ``token_ids`` is not 1-D.
            InputError: an id is outside the vocab, or a weight name is unknown.
        """
        ids = self._check_ids(token_ids)
        w = self._resolve(weights)
        vocab, width = len(self.vocab), self.context * self.embed
        rows = max(len(ids) - self.context, 0)
        out = np.empty((rows, vocab), dtype=np.float32)
        eps = float(self.metadata.get("layer_norm_eps", 1e-5))
        fc1_t, fc2_t, out_t = w["fc1.weight"].T, w["fc2.weight"].T, w["out.weight"].T
        for start in range(0, rows, _CHUNK_ROWS):
            stop = min(start + _CHUNK_ROWS, rows)
            # window j of the chunk reads ids[start + j : start + j + context]
            positions = np.arange(start, stop)[:, None] + np.arange(self.context)[None, :]
            x = w["embed.weight"][ids[positions]].reshape(stop - start, width)
            h1 = _gelu_tanh(_layer_norm(x @ fc1_t + w["fc1.bias"], w["ln1.weight"], w["ln1.bias"], eps))
            h2 = _gelu_tanh(_layer_norm(h1 @ fc2_t + w["fc2.bias"], w["ln2.weight"], w["ln2.bias"], eps)) + h1
            np.add(h2 @ out_t, w["out.bias"], out=out[start:stop])
        return out

    def nll(self, token_ids: np.ndarray, *, weights: Optional[Mapping[str, np.ndarray]] = None) -> np.ndarray:
        """Per-row next-token negative log-likelihood (nats, float64) of
        :meth:`logits` against :meth:`targets`."""
        logits = self.logits(token_ids, weights=weights).astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
        target = self.targets(token_ids)
        return log_z - logits[np.arange(len(target)), target]

    # -- checks -------------------------------------------------------------

    def _check_ids(self, token_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.ndim != 1:
            raise ShapeError(f"token_ids must be 1-D, got shape {list(ids.shape)}")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"token_ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int32, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.vocab)):
            at = int(np.flatnonzero((ids < 0) | (ids >= len(self.vocab)))[0])
            raise InputError(f"token_ids[{at}] = {ids[at]} is outside the vocab [0, {len(self.vocab)})")
        return ids

    def _resolve(self, weights: Optional[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if weights is None:
            return self.weights
        merged = dict(self.weights)
        for name, tensor in weights.items():
            if name not in self.weights:
                raise InputError(f"weights has unknown tensor {name!r}; the model's tensors are {sorted(self.weights)}")
            array = np.asarray(tensor, dtype=np.float32)
            if array.shape != self.weights[name].shape:
                raise ShapeError(
                    f"weights[{name!r}] has shape {list(array.shape)}, expected {list(self.weights[name].shape)}"
                )
            merged[name] = array
        return merged


def load_model(path: Union[str, Path, None] = None) -> CharModel:
    """Load the demo model (the shipped ``charlm.safetensors`` unless ``path``
    names another file written by ``scripts/train_demo_model.py``)."""
    tensors, metadata = read_safetensors(MODEL_PATH if path is None else path)
    weights = {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in tensors.items()}
    return CharModel(weights=weights, vocab=metadata["vocab"], context=int(metadata["context"]), metadata=metadata)
