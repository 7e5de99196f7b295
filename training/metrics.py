"""Detection metrics (pure NumPy).

The deepCR paper's figure of merit is the true-positive rate at a fixed false-positive
rate (0.5%): the threshold is chosen on the negatives alone, so the figure does not
depend on how many CR pixels there are.
"""

from __future__ import annotations

import logging

import numpy as np

from crforge.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["tpr_at_fpr", "threshold_at_fpr", "rates_at_threshold", "dilate_scores", "roc_curve",
           "interp_tpr", "binary_rates", "resample_roc", "masked_mse"]


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise InputError(f"scores and labels: {scores.size} scores but {labels.size} labels")
    if scores.dtype.kind not in "fiub":
        raise TypeError(f"scores must be numeric, got dtype {scores.dtype}")
    if not np.all(np.isfinite(scores)):
        raise InputError("scores: contains NaN or infinite values")
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
        raise InputError(f"fpr={fpr!r}: expected a rate in [0, 1]")
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


# --------------------------------------------------------------------------- ROC curves
#
# The deepCR paper (Zhang & Bloom 2020, section 4.1) reports the true-positive rate at
# fixed false-positive rates, plain and with the predicted mask dilated by a 3x3
# kernel: a CR pixel counts as found when the dilated prediction covers it (CR edges
# are fuzzy, and a mask one pixel wider costs little), while the false-positive rate
# is always that of the undilated prediction. Dilating the binary call ``score > t``
# with a 3x3 kernel is the same as thresholding the 3x3 maximum of the scores, so one
# maximum filter gives the dilated variant of a whole ROC curve.


def _check_stack(name: str, arr, ndim_min: int = 2) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim < ndim_min:
        raise InputError(f"{name}: expected an image or a stack of images (>= {ndim_min} "
                         f"dimensions), got shape {arr.shape}")
    return arr


def dilate_scores(scores, size: int = 3, valid=None) -> np.ndarray:
    """The ``size`` x ``size`` maximum of each image's scores.

    ``dilate_scores(s) > t`` equals the binary dilation of ``s > t`` with a square
    ``size`` x ``size`` kernel, for every threshold ``t``.

    Parameters
    ----------
    scores : array_like
        ``[H, W]`` or ``[N, H, W]`` scores (images are dilated separately).
    size : int
        Kernel size (odd, >= 1; the paper: 3).
    valid : array_like of bool, optional
        Same shape; pixels that are not valid (ignored: no label) take no part in the
        dilation, so an unlabelled pixel cannot find a neighbouring CR.

    Returns
    -------
    numpy.ndarray
        float32 array of the shape of ``scores``.
    """
    from scipy import ndimage

    if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise InputError(f"size={size!r}: expected an odd int >= 1")
    s = _check_stack("scores", scores).astype(np.float32, copy=True)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != s.shape:
            raise InputError(f"valid: shape {valid.shape} differs from scores {s.shape}")
        s[~valid] = -np.inf
    footprint = (1,) * (s.ndim - 2) + (size, size)
    # mode='constant' with -inf: outside the image there is nothing to dilate from
    return ndimage.maximum_filter(s, size=footprint, mode="constant", cval=-np.inf)


def roc_curve(scores, labels, valid=None, dilated_scores=None) -> dict:
    """ROC curve of the call ``score > t`` over every distinct threshold.

    Parameters
    ----------
    scores : array_like
        Scores, higher = more likely a CR (any shape).
    labels : array_like
        Truth, non-zero = CR (same shape).
    valid : array_like of bool, optional
        Pixels to count (``False`` = ignored: bad, saturated, no data).
    dilated_scores : array_like, optional
        :func:`dilate_scores` of ``scores``: adds ``tpr_dilated``, the true-positive
        rate of the dilated call at the same thresholds (false positives are always
        counted on the undilated call).

    Returns
    -------
    dict
        ``threshold`` (descending, starting at ``+inf``), ``fpr`` and ``tpr``
        (non-decreasing, from 0), optionally ``tpr_dilated``; ``n_pos``/``n_neg``.
        Rates are NaN when their class is empty.
    """
    s = np.asarray(scores)
    lab = np.asarray(labels)
    if s.shape != lab.shape:
        raise InputError(f"scores and labels: shapes {s.shape} and {lab.shape} differ")
    keep = np.ones(s.shape, bool) if valid is None else np.asarray(valid, dtype=bool)
    if keep.shape != s.shape:
        raise InputError(f"valid: shape {keep.shape} differs from scores {s.shape}")
    sv, lv = _check(s[keep], lab[keep])
    order = np.argsort(-sv, kind="stable")
    ss, ls = sv[order], lv[order]
    # the last index of each run of equal scores: a threshold sits between runs
    last = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True]) if ss.size else np.zeros(0, int)
    tp = np.cumsum(ls)[last] if ss.size else np.zeros(0)
    fp = (last + 1) - tp
    n_pos, n_neg = int(lv.sum()), int((~lv).sum())
    thr = np.r_[np.inf, ss[last]] if ss.size else np.array([np.inf])
    tpr = np.r_[0.0, tp / n_pos] if n_pos else np.full(thr.size, np.nan)
    fpr = np.r_[0.0, fp / n_neg] if n_neg else np.full(thr.size, np.nan)
    out = {"threshold": thr, "fpr": fpr, "tpr": tpr, "n_pos": n_pos, "n_neg": n_neg}
    if dilated_scores is not None:
        d = np.asarray(dilated_scores)
        if d.shape != s.shape:
            raise InputError(f"dilated_scores: shape {d.shape} differs from scores {s.shape}")
        dpos = np.sort(d[keep][lv].astype(np.float64))
        # positives whose dilated score is >= each threshold (the call is
        # score >= t at the run's own score, i.e. > the next lower one)
        if n_pos:
            found = dpos.size - np.searchsorted(dpos, thr[1:].astype(np.float64), side="left")
            out["tpr_dilated"] = np.r_[0.0, found / n_pos]
        else:
            out["tpr_dilated"] = np.full(thr.size, np.nan)
    return out


def interp_tpr(fpr_curve, tpr_curve, fpr: float) -> float:
    """TPR at a false-positive rate, interpolated linearly along an ROC curve.

    Points between two operating points are reached by choosing between the two at
    random, so the straight line between them is achievable; where several points
    share a false-positive rate the highest TPR counts.

    Parameters
    ----------
    fpr_curve, tpr_curve : array_like
        The curve's points (any order; :func:`roc_curve` output or a sweep of a
        binary detector with ``(0, 0)`` and, if known, ``(1, 1)`` added).
    fpr : float
        The false-positive rate in [0, 1].

    Returns
    -------
    float
        The TPR; NaN if the curve is empty or holds only NaNs. Beyond the last point
        the last TPR is returned (no extrapolation).
    """
    if not 0 <= fpr <= 1:
        raise InputError(f"fpr={fpr!r}: expected a rate in [0, 1]")
    x = np.asarray(fpr_curve, dtype=np.float64).ravel()
    y = np.asarray(tpr_curve, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InputError(f"fpr_curve and tpr_curve: {x.size} and {y.size} points")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size == 0:
        return float("nan")
    ux, inv = np.unique(x, return_inverse=True)
    uy = np.full(ux.size, -np.inf)
    np.maximum.at(uy, inv, y)
    # an ROC curve never falls: the best TPR reachable at or below each FPR
    uy = np.maximum.accumulate(uy)
    return float(np.interp(fpr, ux, uy))


def binary_rates(pred, labels, valid=None, dilate: int = 0) -> dict:
    """TPR and FPR of a binary prediction (an operating point).

    Parameters
    ----------
    pred, labels : array_like
        Binary prediction and truth (``[H, W]`` or ``[N, H, W]``; non-zero = CR).
    valid : array_like of bool, optional
        Pixels to count.
    dilate : int
        If > 0, also ``tpr_dilated``: the TPR of the prediction dilated by a
        ``dilate`` x ``dilate`` kernel (the FPR stays that of the undilated one).

    Returns
    -------
    dict
        ``tpr``, ``fpr`` (NaN for an empty class), optionally ``tpr_dilated``.
    """
    p = _check_stack("pred", pred).astype(bool)
    lab = np.asarray(labels).astype(bool)
    if lab.shape != p.shape:
        raise InputError(f"pred and labels: shapes {p.shape} and {lab.shape} differ")
    keep = np.ones(p.shape, bool) if valid is None else np.asarray(valid, dtype=bool)
    tpr, fpr = rates_at_threshold(p[keep].astype(np.uint8), lab[keep], 0.5)
    out = {"tpr": tpr, "fpr": fpr}
    if dilate:
        d = dilate_scores(p.astype(np.float32), dilate, keep) > 0.5
        npos = int((lab & keep).sum())
        out["tpr_dilated"] = float((d & lab & keep).sum() / npos) if npos else float("nan")
    return out


def resample_roc(curve: dict, fprs) -> dict:
    """An ROC curve read at given false-positive rates (for plots and JSON).

    Parameters
    ----------
    curve : dict
        :func:`roc_curve` output (``fpr``, ``tpr``, optional ``tpr_dilated``).
    fprs : array_like
        False-positive rates to read the curve at.

    Returns
    -------
    dict
        ``fpr`` (the given rates), ``tpr`` and, if present, ``tpr_dilated`` (lists).
    """
    fprs = np.asarray(fprs, dtype=np.float64).ravel()
    out = {"fpr": fprs.tolist(),
           "tpr": [interp_tpr(curve["fpr"], curve["tpr"], float(f)) for f in fprs]}
    if "tpr_dilated" in curve:
        out["tpr_dilated"] = [interp_tpr(curve["fpr"], curve["tpr_dilated"], float(f)) for f in fprs]
    return out


def masked_mse(pred, target, mask) -> tuple[float, int]:
    """Mean squared error of ``pred`` against ``target`` over the pixels of ``mask``.

    Returns
    -------
    (float, int)
        The MSE (NaN for an empty mask) and the number of pixels.
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if not p.shape == t.shape == m.shape:
        raise InputError(f"pred, target, mask: shapes {p.shape}, {t.shape}, {m.shape} differ")
    n = int(m.sum())
    if n == 0:
        return float("nan"), 0
    d = p[m] - t[m]
    return float(np.mean(d * d)), n
