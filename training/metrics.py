"""Detection metrics (pure NumPy).

The deepCR paper's figure of merit is the true-positive rate at a fixed false-positive
rate (0.5%): the threshold is chosen on the negatives alone, so the figure does not
depend on how many CR pixels there are.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["tpr_at_fpr", "threshold_at_fpr", "rates_at_threshold"]


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels: {scores.size} scores but {labels.size} labels")
    if scores.dtype.kind not in "fiub":
        raise TypeError(f"scores must be numeric, got dtype {scores.dtype}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores: contains NaN or infinite values")
    return scores, labels.astype(bool)


def threshold_at_fpr(scores, labels, fpr: float) -> float:
    """The lowest threshold ``t`` whose false-positive rate does not exceed ``fpr``.

    A pixel is called positive when ``score > t``. With ``n`` negatives, at most
    ``floor(fpr * n)`` of them may score above ``t``; ``t`` is the score of the next
    negative in descending order, so ties at ``t`` are all negative calls and the
    achieved rate never exceeds ``fpr``.

    Parameters
    ----------
    scores : array_like
        Scores, higher = more likely positive (any shape; flattened).
    labels : array_like
        Truth, non-zero = positive (same number of elements).
    fpr : float
        Allowed false-positive rate in [0, 1].

    Returns
    -------
    float
        The threshold; ``-inf`` when every negative may be called positive (also when
        there are no negatives).
    """
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr={fpr!r}: expected a rate in [0, 1]")
    scores, labels = _check(scores, labels)
    neg = scores[~labels]
    k = int(np.floor(fpr * neg.size + 1e-9))  # 1e-9: 0.005 * 1000 must give 5, not 4
    if k >= neg.size:
        return float("-inf")
    # the (k+1)-th largest negative score: partition instead of a full sort
    return float(np.partition(neg, neg.size - 1 - k)[neg.size - 1 - k])


def rates_at_threshold(scores, labels, threshold: float) -> tuple[float, float]:
    """True- and false-positive rates of the call ``score > threshold``.

    Returns
    -------
    (float, float)
        ``(tpr, fpr)``; NaN for a rate whose class is empty.
    """
    scores, labels = _check(scores, labels)
    called = scores > threshold
    npos, nneg = int(labels.sum()), int((~labels).sum())
    tpr = float(called[labels].sum() / npos) if npos else float("nan")
    fpr = float(called[~labels].sum() / nneg) if nneg else float("nan")
    return tpr, fpr


def tpr_at_fpr(scores, labels, fpr: float = 0.005) -> float:
    """True-positive rate at a fixed false-positive rate.

    Parameters
    ----------
    scores : array_like
        Scores, higher = more likely positive (e.g. CR probabilities).
    labels : array_like
        Truth, non-zero = positive.
    fpr : float
        The false-positive rate (deepCR: 0.005).

    Returns
    -------
    float
        The fraction of positives scoring above :func:`threshold_at_fpr`; NaN when
        there are no positives.

    Examples
    --------
    >>> tpr_at_fpr([0.9, 0.8, 0.1, 0.2, 0.7, 0.3], [1, 1, 0, 0, 0, 0], fpr=0.25)
    1.0
    """
    t = threshold_at_fpr(scores, labels, fpr)
    return rates_at_threshold(scores, labels, t)[0]
