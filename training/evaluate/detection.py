"""Detection figures (the deepCR paper's Table 1 and Figure 4) of a mask network and its peers.

The network, deepCR's published model (package ``deepCR`` 0.3.1) and LACosmic
(astroscrappy, swept over ``sigclip``) are scored on the same stamps: TPR at fixed
false-positive rates, plain and 3x3-dilated, and the ROC curves, per field type and
overall, against the data set's labels and, where the file holds it, the injected truth.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from crforge.errors import InputError
from crforge.training import metrics as M
from crforge.training.evaluate.config import EvaluateConfig
from crforge.training.evaluate.data import in_electrons, inference_copy, load_stamps, normalised
from crforge.training.evaluate.names import METHOD_LABELS, TRUTH_BIN_NAMES, fpr_key
from crforge.training.evaluate.runtime import mapped, package_version, progress_bar, thread_count

logger = logging.getLogger(__name__)

__all__ = ["ROC_GRID", "mask_scores", "evaluate_mask"]

#: False-positive rates the stored ROC curves are read at (for plots and the JSON).
ROC_GRID = np.logspace(-6, 0, 97)


def mask_scores(model, x: np.ndarray, *, batch_size: int, views: int = 1,
                progress: bool | None = False) -> np.ndarray:
    """CR probabilities of normalised stamps ``x`` ``[N,S,S]`` (float32, eval mode), mean of ``views``."""
    import torch

    fast = inference_copy(model)
    out = np.empty(x.shape, np.float32)
    with torch.inference_mode(), progress_bar(len(x), "crforge mask", progress) as bar:
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i:i + batch_size])[:, None].contiguous(memory_format=torch.channels_last)
            out[i:i + batch_size] = fast.predict(xb, views=views)[:, 0].float().numpy()
            bar.update(len(xb))
    return out


# --------------------------------------------------------------------------- figures


def _score_figures(scores, target, valid, groups, cfg: EvaluateConfig) -> dict:
    """TPR at the fixed FPRs (plain, dilated) and the resampled ROC, per group."""
    dil = M.dilate_scores(scores, cfg.dilation, valid) if cfg.dilation else None
    tpr, tprd, roc = {}, {}, {}
    for name, sel in groups.items():
        curve = M.roc_curve(scores[sel], target[sel], valid[sel], None if dil is None else dil[sel])
        tpr[name] = {fpr_key(f): M.interp_tpr(curve["fpr"], curve["tpr"], f) for f in cfg.fprs}
        if dil is not None:
            tprd[name] = {fpr_key(f): M.interp_tpr(curve["fpr"], curve["tpr_dilated"], f) for f in cfg.fprs}
        roc[name] = M.resample_roc(curve, ROC_GRID)
        roc[name]["n_pos"], roc[name]["n_neg"] = curve["n_pos"], curve["n_neg"]
    out = {"tpr": tpr, "roc": roc}
    if dil is not None:
        out["tpr_dilated"] = tprd
    return out


def _point_figures(masks: list[np.ndarray], target, valid, groups, cfg: EvaluateConfig) -> dict:
    """Figures of a binary detector swept over operating points (LACosmic)."""
    tpr, tprd, points = {}, {}, {}
    for name, sel in groups.items():
        pts = [M.binary_rates(m[sel], target[sel], valid[sel], dilate=cfg.dilation) for m in masks]
        f = [0.0] + [p["fpr"] for p in pts] + [1.0]
        t = [0.0] + [p["tpr"] for p in pts] + [1.0]
        tpr[name] = {fpr_key(x): M.interp_tpr(f, t, x) for x in cfg.fprs}
        if cfg.dilation:
            td = [0.0] + [p["tpr_dilated"] for p in pts] + [1.0]
            tprd[name] = {fpr_key(x): M.interp_tpr(f, td, x) for x in cfg.fprs}
        points[name] = pts
    out = {"tpr": tpr, "points": points}
    if cfg.dilation:
        out["tpr_dilated"] = tprd
    return out


def _rates_by_group(pred, target, valid, groups, dilation: int) -> dict:
    """:func:`crforge.training.metrics.binary_rates` of a binary call, per group."""
    return {name: M.binary_rates(pred[sel], target[sel], valid[sel], dilation) for name, sel in groups.items()}


# --------------------------------------------------------------------------- the peers


def _lacosmic(data: dict, cfg: EvaluateConfig, progress: bool | None = False
              ) -> tuple[list[np.ndarray], float, list[dict]]:
    """LACosmic's masks over the ``sigclip`` sweep, the seconds of its default, the parameters."""
    from crforge.training.baselines import LACOSMIC_DEFAULT, lacosmic_mask

    img = in_electrons(data)
    rn = np.nan_to_num(data["meta"]["readnoise"].astype(np.float64), nan=5.0)
    default = float(LACOSMIC_DEFAULT["sigclip"])
    sweep = sorted(set(cfg.lacosmic_sigclip) | {default})
    masks, seconds = [], 0.0
    with ThreadPoolExecutor(thread_count(cfg.threads)) as pool:
        for sig in sweep:
            t0 = time.perf_counter()
            # astroscrappy's C code releases the GIL: threads use every core
            res = mapped(pool, lambda i, s=sig: lacosmic_mask(img[i], readnoise=float(rn[i]),
                                                              ignore=~data["valid"][i], sigclip=s),
                         len(img), f"LACosmic sigclip {sig:g}", progress)
            if sig == default:
                seconds = time.perf_counter() - t0
            masks.append(np.stack(res))
    params = [{**LACOSMIC_DEFAULT, "sigclip": s, "default": s == default} for s in sweep]
    return masks, seconds, params


def _lacosmic_figures(data: dict, groups, cfg: EvaluateConfig, progress: bool | None
                      ) -> tuple[list[np.ndarray], dict]:
    """LACosmic's masks and its figures against the labels (with parameters and runtime)."""
    masks, seconds, params = _lacosmic(data, cfg, progress)
    fig = _point_figures(masks, data["cr"], data["valid"], groups, cfg)
    fig["params"] = params
    fig["seconds_per_100"] = round(100 * seconds / len(data["index"]), 3)
    logger.info("LACosmic: %d operating points; the default took %.1f s", len(masks), seconds)
    return masks, fig


def _deepcr(data: dict, cfg: EvaluateConfig, progress: bool | None = False
            ) -> tuple[np.ndarray, float, str]:
    """deepCR's scores of the stamps, the seconds they took and the model's name."""
    from crforge.training.baselines import DeepCRPeer

    peer = DeepCRPeer(data["instrument"], threads=thread_count(cfg.threads))
    img = in_electrons(data)
    t0 = time.perf_counter()
    scores = np.empty(img.shape, np.float32)
    with progress_bar(len(img), f"deepCR {peer.name}", progress) as bar:
        for i, im in enumerate(img):
            scores[i] = peer.scores(im)
            bar.update(1)
    return scores, time.perf_counter() - t0, peer.name


def _all_scores(data: dict, model, ckpt, cfg: EvaluateConfig, progress: bool | None
                ) -> tuple[dict, dict, dict]:
    """Scores and seconds of the network and deepCR, and the document's note on the peer."""
    t0 = time.perf_counter()
    scores = {"crforge": mask_scores(model, normalised(data, ckpt), batch_size=cfg.batch_size,
                                     views=cfg.views, progress=progress)}
    seconds = {"crforge": time.perf_counter() - t0}
    note: dict[str, Any] = {}
    if "deepcr" in cfg.baselines:
        try:
            scores["deepcr"], seconds["deepcr"], name = _deepcr(data, cfg, progress)
            note["mask_peer"] = {"package": "deepCR", "version": package_version("deepCR"), "model": name}
        except (ImportError, ValueError) as exc:  # not installed, or no model for the instrument
            logger.warning("deepCR baseline skipped: %s", exc)
            note["mask_skipped"] = {"deepcr": str(exc)}
    return scores, seconds, note


# --------------------------------------------------------------------------- threshold, truth


def _threshold(model, ckpt, data_path: Path, cfg: EvaluateConfig) -> dict:
    """The recommended threshold: the one at ``threshold_fpr`` on the val split."""
    split = "val"  # the threshold is the val split's, whichever split is evaluated
    try:
        val = load_stamps(data_path, split, per_field_type=cfg.stamps_per_field_type, seed=cfg.seed)
    except InputError as exc:
        logger.warning("no threshold from the val split: %s", exc)
        return {"value": 0.5, "fpr": None, "split": None, "note": str(exc)}
    x, valid, cr = normalised(val, ckpt), val["valid"], val["cr"][val["valid"]]
    by_views = {}
    # one view too, so that a user who wants the speed of one pass has its own threshold
    for views in sorted({1, cfg.views}):
        s = mask_scores(model, x, batch_size=cfg.batch_size, views=views)[valid]
        by_views[views] = (M.threshold_at_fpr(s, cr, cfg.threshold_fpr), s)
    t, s = by_views[cfg.views]
    tpr, fpr = M.rates_at_threshold(s, cr, t)
    return {"value": float(t), "fpr": cfg.threshold_fpr, "split": split, "n_stamps": int(len(val["index"])),
            "val_tpr": tpr, "val_fpr": fpr, "views": cfg.views,
            "by_views": {str(v): float(tv) for v, (tv, _) in by_views.items()}}


def _recall_by_snr(labels: np.ndarray, bins: np.ndarray) -> dict:
    """Share of the injected CR pixels of each SNR bin (from 3 sigma) that the labels mark."""
    return {TRUTH_BIN_NAMES[k - 1]: float(labels[bins == k].mean()) if (bins == k).any() else None
            for k in range(2, len(TRUTH_BIN_NAMES) + 1)}


def _vs_truth(data: dict, groups, scores: dict, lacosmic: list[np.ndarray], cfg: EvaluateConfig) -> dict:
    """Every detector, and the labels themselves, scored against the injected truth."""
    # positives: injected CR pixels at or above the SNR bin; fainter CR pixels are
    # left out (nobody can see a 1-sigma pixel: counting it would only dilute)
    bins = data["truth"]
    truth = bins >= cfg.truth_min_bin
    tvalid = data["valid"] & ~((bins > 0) & (bins < cfg.truth_min_bin))
    labels = _rates_by_group(data["cr"], truth, tvalid, groups, cfg.dilation)
    for name, sel in groups.items():
        labels[name]["recall_by_snr"] = _recall_by_snr(data["cr"][sel], bins[sel])
    lq: dict[str, Any] = {"min_snr": TRUTH_BIN_NAMES[cfg.truth_min_bin - 1].split("-")[0].lstrip(">"),
                          "labels": labels}
    for m, s in scores.items():
        lq[m] = {k: v for k, v in _score_figures(s, truth, tvalid, groups, cfg).items() if k != "roc"}
    if lacosmic:
        lq["astroscrappy"] = {k: v for k, v in _point_figures(lacosmic, truth, tvalid, groups, cfg).items()
                              if k != "points"}
    return lq


def evaluate_mask(data: dict, groups: dict[str, np.ndarray], model, ckpt, cfg: EvaluateConfig, *,
                  progress: bool | None = False) -> dict:
    """Detection figures of a mask network and the baselines on the loaded stamps.

    Parameters
    ----------
    data : dict
        The stamps (:func:`crforge.training.evaluate.data.load_stamps`).
    groups : dict of str to numpy.ndarray
        Stamp selections the figures are given for (``all`` and each field type).
    model, ckpt
        The mask network and its :class:`~crforge.training.checkpoint.Checkpoint`.
    cfg : EvaluateConfig
        Settings.
    progress : bool or None
        Progress bars (``None``: only on a terminal).

    Returns
    -------
    dict
        The evaluation document's sections: ``mask`` (figures per method), ``mask_peer``
        or ``mask_skipped`` (deepCR), ``threshold`` (chosen on the val split) and, for
        simulated data, ``vs_truth``.
    """
    n = len(data["index"])
    scores, seconds, note = _all_scores(data, model, ckpt, cfg, progress)
    mask: dict[str, Any] = {}
    for m, s in scores.items():
        logger.info("%s: scored %d stamps in %.1f s", METHOD_LABELS[m], n, seconds[m])
        mask[m] = _score_figures(s, data["cr"], data["valid"], groups, cfg)
        mask[m]["seconds_per_100"] = round(100 * seconds[m] / n, 3)
    lacosmic: list[np.ndarray] = []
    if "astroscrappy" in cfg.baselines:
        lacosmic, mask["astroscrappy"] = _lacosmic_figures(data, groups, cfg, progress)
    # the recommended threshold: chosen on the val split, never on the evaluated one
    threshold = _threshold(model, ckpt, data["path"], cfg)
    mask["crforge"]["at_threshold"] = _rates_by_group(scores["crforge"] > threshold["value"], data["cr"],
                                                      data["valid"], groups, cfg.dilation)
    out = {"mask": mask, **note, "threshold": threshold}
    if "truth" in data:
        out["vs_truth"] = _vs_truth(data, groups, scores, lacosmic, cfg)
        mask["labels"] = {"points": {name: [p] for name, p in out["vs_truth"]["labels"].items()}}
    return out
