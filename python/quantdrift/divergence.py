"""Divergences between next-token distributions held in memory."""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import numpy as np

from . import _core, gpu
from ._arrays import as_scores, check_int64_labels, rows_along
from ._errors import InputError, ShapeError

__all__ = ["divergence", "kl", "js", "distill_loss", "KINDS"]

#: Every divergence kind, in documentation order.
KINDS = ("kl", "reverse_kl", "js", "tv", "hellinger", "chi2", "renyi", "cross_entropy", "entropy")
_LOGARITHMIC = {"kl", "reverse_kl", "js", "renyi", "cross_entropy", "entropy"}
_REDUCTIONS = ("none", "mean", "sum")


def divergence(
    p: Any,
    q: Any = None,
    kind: str = "kl",
    *,
    inputs: str = "logits",
    axis: int = -1,
    temperature: float = 1.0,
    alpha: Optional[float] = None,
    base: Union[str, int] = "e",
    reduction: str = "none",
    device: str = "cpu",
) -> Union[np.ndarray, np.float64]:
    """Divergence between the distributions in ``p`` and ``q``, one per row.

    Each slice of ``p`` and ``q`` along ``axis`` is one distribution over a
    vocabulary. Rows are computed in parallel in Rust, with the GIL released
    and the inputs read in place.

    Args:
        p: first distributions, any shape; float32, float64, float16 or
            bfloat16 (ml_dtypes). ``p`` and ``q`` may differ in dtype.
        q: second distributions, the same shape as ``p``. Not needed for
            ``kind="entropy"``.
        kind: ``"kl"`` KL(P‖Q); ``"reverse_kl"`` KL(Q‖P); ``"js"``
            Jensen–Shannon, in [0, ln 2]; ``"tv"`` total variation ½Σ|P−Q|;
            ``"hellinger"`` Σ(√P−√Q)², in [0, 2]; ``"chi2"`` Pearson
            Σ(P−Q)²/Q; ``"renyi"`` order ``alpha``; ``"cross_entropy"``
            H(P,Q) = −Σ P ln Q; ``"entropy"`` H(P).
        inputs: ``"logits"`` (P = softmax(p / temperature)); ``"logprobs"``
            (renormalised like logits, so rows dumped in 16-bit floats are
            fine); ``"probs"`` (non-negative; each row must sum to 1 within
            1e-4 for float32/float64 rows, 1e-2 for float16/bfloat16 rows;
            a temperature τ gives P ∝ P^(1/τ)).
        axis: the vocabulary axis.
        temperature: softmax temperature, > 0.
        alpha: the Rényi order (> 0; 1 gives KL). Only for ``kind="renyi"``.
        base: ``"e"`` for nats or ``2`` for bits. TV, Hellinger and χ² are
            not logarithmic and ignore it.
        reduction: ``"none"`` (one value per row, the shape of ``p`` without
            ``axis``), ``"mean"`` or ``"sum"`` (a float64 scalar; the mean of
            no rows is NaN).
        device: ``"cpu"``, ``"gpu"`` or ``"auto"`` (see :mod:`quantdrift.gpu`).
            On the GPU one workgroup computes one row (float32 arithmetic,
            compensated sums) and the host finishes it in float64 with the
            CPU's formulas; values agree with the CPU within 1e-5 relative
            (1e-7 absolute), errors are the same. GPUs have no float64, so
            float64 inputs, and the rare rows the CPU also hands to its
            float64 reference, are computed on the CPU; so is a single row
            larger than the device's largest buffer binding.

    Returns:
        float64 values, or a float64 scalar for 1-D inputs or a reduction.

    Raises:
        ShapeError: ``p`` and ``q`` differ in shape, or the vocabulary is empty.
        GpuUnavailableError: ``device="gpu"`` without a GPU adapter.
        InputError: NaN or +inf in a row (the message names it), probabilities
            that are negative or do not sum to 1, an unknown option.
        DtypeError: an unsupported dtype.

    Conventions: 0·ln 0 = 0; a logit of −inf is probability 0; KL, χ²,
    cross-entropy and Rényi with alpha > 1 are +inf when Q is 0 where P is
    not; a row that is all −inf (or all zero probabilities) is an error.

    Example:
        >>> import numpy as np, quantdrift as qd
        >>> p = np.log(np.array([0.5, 0.3, 0.2]))
        >>> q = np.log(np.array([0.4, 0.4, 0.2]))
        >>> round(float(qd.kl(p, q)), 6)
        0.025267
    """
    kind = str(kind)
    if kind not in KINDS:
        raise InputError(f"unknown divergence kind {kind!r}; expected one of {', '.join(KINDS)}")
    if reduction not in _REDUCTIONS:
        raise InputError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if base not in ("e", 2, "2"):
        raise InputError(f"base must be 'e' (nats) or 2 (bits), got {base!r}")
    if kind != "entropy" and q is None:
        raise InputError(f"q is required for kind={kind!r}")
    p_arr, p16 = as_scores(p, "p")
    p_rows, batch = rows_along(p_arr, axis, "p")
    q_rows, q16 = None, "bfloat16"
    if kind != "entropy":
        q_arr, q16 = as_scores(q, "q")
        if q_arr.shape != p_arr.shape:
            raise ShapeError(f"p and q must have the same shape, got p {p_arr.shape} and q {q_arr.shape}")
        q_rows, _ = rows_along(q_arr, axis, "q")
    where = gpu.resolve(device, p_rows.size)
    values = _core.divergence(
        p_rows, q_rows, kind, inputs=inputs, temperature=float(temperature),
        alpha=None if alpha is None else float(alpha), p16=p16, q16=q16, device=where,
    )
    if base in (2, "2") and kind in _LOGARITHMIC:
        values /= math.log(2.0)
    if reduction == "mean":
        return np.float64(values.mean()) if values.size else np.float64(np.nan)
    if reduction == "sum":
        return np.float64(values.sum())
    values = values.reshape(batch)
    return values[()] if values.ndim == 0 else values


def kl(p: Any, q: Any, **options: Any) -> Union[np.ndarray, np.float64]:
    """KL(P‖Q); shorthand for ``divergence(p, q, "kl", **options)``."""
    return divergence(p, q, "kl", **options)


def js(p: Any, q: Any, **options: Any) -> Union[np.ndarray, np.float64]:
    """Jensen–Shannon divergence; shorthand for ``divergence(p, q, "js", **options)``."""
    return divergence(p, q, "js", **options)


def distill_loss(
    teacher_logits: Any,
    student_logits: Any,
    *,
    temperature: float,
    alpha: float = 1.0,
    labels: Any = None,
    reduction: str = "mean",
) -> "tuple[np.ndarray, np.ndarray]":
    """Knowledge-distillation loss and its gradient with respect to the student.

    loss = alpha·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) + (1 − alpha)·CE(labels, softmax(s)),
    per row (the last axis is the vocabulary). The τ² factor keeps gradient
    magnitudes comparable across temperatures (Hinton et al., 2015).

    Args:
        teacher_logits: teacher logits, shape ``(..., vocab)``.
        student_logits: student logits, the same shape.
        temperature: τ > 0 for the soft targets.
        alpha: weight of the distillation term in [0, 1]; with ``alpha < 1``
            the rest weights cross-entropy to ``labels``.
        labels: integer class per row, shape ``(...)``; required when alpha < 1.
        reduction: ``"mean"`` (default, over rows), ``"sum"`` or ``"none"``.

    Returns:
        ``(loss, grad)``: the loss (a float64 0-d array for mean/sum, else one
        value per row) and d loss / d student_logits, shaped like the student
        (float64 for float64 students, else float32).
    """
    if reduction not in _REDUCTIONS:
        raise InputError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    t_arr, t16 = as_scores(teacher_logits, "teacher_logits")
    s_arr, s16 = as_scores(student_logits, "student_logits")
    if t_arr.shape != s_arr.shape:
        raise ShapeError(
            f"teacher_logits and student_logits must have the same shape, got {t_arr.shape} and {s_arr.shape}"
        )
    t_rows, batch = rows_along(t_arr, -1, "teacher_logits")
    s_rows, _ = rows_along(s_arr, -1, "student_logits")
    label_rows = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.dtype.kind not in "iu":
            raise InputError(f"labels must be integers, got dtype {lab.dtype}")
        if lab.shape != batch:
            raise ShapeError(f"labels must have shape {batch} (one per row), got {lab.shape}")
        check_int64_labels(lab, f"is outside the vocabulary [0, {t_rows.shape[1]})")
        label_rows = np.ascontiguousarray(lab.reshape(-1), dtype=np.int64)
    loss, grad = _core.distill_loss(
        t_rows, s_rows, temperature=float(temperature), alpha=float(alpha), labels=label_rows,
        teacher16=t16, student16=s16,
    )
    grad = grad.reshape(s_arr.shape)
    rows = max(loss.size, 1)
    if reduction == "mean":
        return np.asarray(loss.mean() if loss.size else np.nan), grad / np.asarray(rows, dtype=grad.dtype)
    if reduction == "sum":
        return np.asarray(loss.sum()), grad
    return loss.reshape(batch), grad
