"""Independent float64 oracles for the divergences, written with numpy and
scipy from the textbook definitions (lecture Defs 4.5, 4.8; the lesson's
f-divergences). They share no code with quantdrift."""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, logsumexp, rel_entr


def log_probs(x: np.ndarray, temperature: float = 1.0, inputs: str = "logits") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if inputs == "probs":
        with np.errstate(divide="ignore"):
            x = np.log(x)
    return log_softmax(x / temperature, axis=-1)


def divergence_row(lp: np.ndarray, lq: np.ndarray, kind: str, alpha: float | None = None) -> float:
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return _divergence_row(lp, lq, kind, alpha)


def _divergence_row(lp: np.ndarray, lq: np.ndarray, kind: str, alpha: float | None = None) -> float:
    P, Q = np.exp(lp), np.exp(lq)
    support = lp > -np.inf
    if kind in ("kl", "cross_entropy") or (kind == "renyi" and alpha > 1) or kind == "chi2":
        if np.any(support & (lq == -np.inf)):
            return np.inf
    if kind == "kl":
        return float(np.sum(np.where(support, P * (lp - np.where(support, lq, 0.0)), 0.0)))
    if kind == "reverse_kl":
        return divergence_row(lq, lp, "kl")
    if kind == "js":
        # Def 4.8 in log space (M = (P + Q)/2 can underflow where P does not)
        lm = np.logaddexp(lp, lq) - np.log(2.0)
        left = np.where(support, P * (lp - np.where(support, lm, 0.0)), 0.0)
        q_support = lq > -np.inf
        right = np.where(q_support, Q * (lq - np.where(q_support, lm, 0.0)), 0.0)
        return float(0.5 * left.sum() + 0.5 * right.sum())
    if kind == "tv":
        return float(0.5 * np.abs(P - Q).sum())
    if kind == "hellinger":
        return float(((np.sqrt(P) - np.sqrt(Q)) ** 2).sum())
    if kind == "chi2":
        # (P − Q)²/Q, evaluated as P·(P/Q) − 2P + Q in log space where Q underflows.
        both = support | (lq > -np.inf)
        y = np.where(both, lp - lq, 0.0)
        with np.errstate(over="ignore"):
            big = np.exp(np.where(both, lp + y, -np.inf)) * np.expm1(-y) ** 2
            small = Q * np.expm1(y) ** 2
        return float(np.where(y >= 0, big, small)[both].sum())
    if kind == "renyi":
        keep = support & (lq > -np.inf)
        if not keep.any():
            return np.inf
        return float(max(logsumexp(alpha * lp[keep] + (1 - alpha) * lq[keep]) / (alpha - 1), 0.0))
    if kind == "cross_entropy":
        return float(-np.sum(np.where(support, P * np.where(support, lq, 0.0), 0.0)))
    if kind == "entropy":
        return float(-np.sum(np.where(support, P * np.where(support, lp, 0.0), 0.0)))
    raise ValueError(kind)


def divergence(p, q, kind, alpha=None, temperature=1.0, inputs="logits") -> np.ndarray:
    lp = log_probs(p, temperature, inputs)
    lq = log_probs(q if q is not None else p, temperature, inputs)
    lp2 = lp.reshape(-1, lp.shape[-1])
    lq2 = lq.reshape(-1, lq.shape[-1])
    out = np.array([divergence_row(a, b, kind, alpha) for a, b in zip(lp2, lq2)])
    return out.reshape(lp.shape[:-1])


def kl_probs(P, Q) -> float:
    return float(rel_entr(P, Q).sum())
