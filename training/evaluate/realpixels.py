"""Real-pixel figures: CR detectors on real HST frames (:mod:`crforge.pipeline.realframes`).

What a model trained on simulated visits does on real pixels, beside deepCR's
published model and LACosmic, on the same pixels:

- **ACS/HRC j8bt06nyq** (F606W 60 s, 47 Tuc). Reference: AstroDrizzle's CR flags (DQ
  4096). Positives: pixels of flagged 8-connected blobs of at most 30 pixels (larger
  flagged blocks are artefacts: the occulting finger, a saturated star, the edges);
  negatives: unflagged pixels at least 3 pixels from any flag; pixels with other DQ
  bits, and saturated pixels grown by 2, count for nothing.
- **STIS/CCD o4k19a010** (M33, 2 x 150 s at one pointing). Reference: the pair
  difference: a pixel more than 6 sigma above the other exposure and carrying more
  than half of its own background-subtracted value, grown twice into neighbours 3
  sigma above it; blobs of at most 30 pixels; negatives as above.
- **WFPC2 u40x010hm PC1** (F555W 100 s, omega Cen): no CR reference; star cores only.

Figures per frame and method: TPR at the fixed FPRs (where there is a reference); at
the method's recommended threshold, the fraction of stars whose core (3x3 around the
peak) the mask touches, the TPR, the FPR and the fraction of all usable pixels
flagged.  Stars: local maxima of the background-subtracted image (photutils
``Background2D``, ``find_peaks``) more than ``STAR_SNR`` sigma above the local noise,
away from reference CRs, ignored pixels and the edges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from crforge.training import metrics as M
from crforge.training.evaluate.names import METHOD_LABELS

logger = logging.getLogger(__name__)

__all__ = ["RealImage", "load_real_images", "find_stars", "network_scores", "score_method", "markdown_table",
           "found_by_peak", "real_pixel_figures", "DEEPCR_REAL_MODEL", "DEEPCR_FAST_MODEL", "PEER_LABELS",
           "FPRS", "STAR_SNR", "LACOSMIC_SWEEP"]

FPRS = (0.0005, 0.005)
STAR_SNR = 20.0
MAX_CR_BLOB = 30
LACOSMIC_SWEEP = (3.0, 4.5, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0)
#: deepCR's model that the real frames are scored with (its ACS/WFC one: none of the
#: real frames' imagers has its own).
DEEPCR_REAL_MODEL = "ACS-WFC"
#: deepCR's fast model (the paper's 2-4, trained on real ACS/WFC F606W), the peer of a
#: fast crforge model: baseline ``deepcr-2-4``, scored by deepCR's own code at 0.5.
DEEPCR_FAST_MODEL = "ACS-WFC-F606W-2-4"
#: How a model card names the peers scored on the real frames.
PEER_LABELS = {"deepcr": f"{METHOD_LABELS['deepcr']} `{DEEPCR_REAL_MODEL}`",
               "deepcr-2-4": f"{METHOD_LABELS['deepcr']} `{DEEPCR_FAST_MODEL}`",
               "astroscrappy": METHOD_LABELS["astroscrappy"].replace(")", ", swept)")}
_EIGHT = np.ones((3, 3), bool)
# ACS and STIS DQ: bad (1 lost, 2 fill, 4 bad, 8 masked, 16 hot, 32 unstable, 128 bad column,
# 512 bad reference, 1024 trap), saturated (256, 2048), CR (4096, 8192)
_BAD, _SATURATED, _CR = 1 | 2 | 4 | 8 | 16 | 32 | 128 | 512 | 1024, 256 | 2048, 4096 | 8192


@dataclass
class RealImage:
    """One real image, in electrons, with what the figures need."""

    name: str
    instrument: str
    image: np.ndarray                  # float32, electrons, sky included
    ignore: np.ndarray                 # bool: bad, saturated (grown), no data
    readnoise: float
    reference: np.ndarray | None = None   # bool: the reference CRs (all blob sizes)
    positives: np.ndarray | None = None
    negatives: np.ndarray | None = None


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
    if r <= 0 or not mask.any():
        return mask.copy()
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return ndimage.binary_dilation(mask, structure=(x * x + y * y) <= r * r)


def _reference_labels(cr: np.ndarray, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positives (blobs of at most MAX_CR_BLOB pixels) and negatives (>= 3 px from any CR)."""
    lab, n = ndimage.label(cr, _EIGHT)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    small = np.flatnonzero((sizes > 0) & (sizes <= MAX_CR_BLOB))
    positives = np.isin(lab, small) & ~excluded
    negatives = (ndimage.distance_transform_edt(~cr) >= 3) & ~excluded
    return positives, negatives


def _hrc(path: Path) -> list[RealImage]:
    from astropy.io import fits

    with fits.open(path) as h:
        sci = h["SCI", 1].data.astype(np.float32)   # BUNIT ELECTRONS
        dq = h["DQ", 1].data.astype(np.int32)
        readnoise = float(h[0].header["READNSEC"])  # the amplifier of j8bt06nyq
    cr = (dq & _CR) != 0
    ignore = ((dq & _BAD) != 0) | _grow((dq & _SATURATED) != 0, 2) | ~np.isfinite(sci)
    other = (dq & ~_CR & 0xFFFF) != 0
    pos, neg = _reference_labels(cr, other | ignore)
    return [RealImage("acs-hrc", "ACS/HRC", sci, ignore, readnoise, cr, pos, neg)]


def _pair_reference(sci: np.ndarray, other: np.ndarray, ignore: np.ndarray, readnoise: float) -> np.ndarray:
    """CR pixels of ``sci`` from the difference with a second exposure of the same pointing."""
    bkg = _background(sci, ignore)
    diff = sci - other
    sigma = np.sqrt(2 * (np.maximum(np.minimum(sci, other), 0) + readnoise ** 2))
    # a star core seen a little differently in the two exposures carries little of its value
    cr = (diff > 6 * sigma) & (diff > 0.5 * (sci - bkg)) & ~ignore
    for _ in range(2):
        cr |= ndimage.binary_dilation(cr, _EIGHT) & (diff > 3 * sigma) & ~ignore
    return cr


def _stis(path: Path) -> list[RealImage]:
    from astropy.io import fits

    with fits.open(path) as h:
        gain = float(h[0].header["ATODGAIN"])
        readnoise = float(h[0].header.get("READNSE", 0) or 4.0)
        scis = [h["SCI", e].data.astype(np.float32) * gain for e in (1, 2)]
        dqs = [h["DQ", e].data.astype(np.int32) for e in (1, 2)]
    out = []
    for e in (0, 1):
        dq = dqs[e]
        ignore = ((dq & _BAD) != 0) | _grow((dq & _SATURATED) != 0, 2) | ~np.isfinite(scis[e])
        cr = _pair_reference(scis[e], scis[1 - e], ignore, readnoise)
        pos, neg = _reference_labels(cr, ((dq & ~_CR & 0xFFFF) != 0) | ignore)
        out.append(RealImage(f"stis-ccd[{e + 1}]", "STIS/CCD", scis[e], ignore, readnoise, cr, pos, neg))
    return out


def _wfpc2_pc1(path: Path) -> list[RealImage]:
    from stsci.tools import convertwaiveredfits

    hdul = convertwaiveredfits.convertwaiveredfits(str(path))
    gain = float(hdul[0].header["ATODGAIN"])
    dn = hdul["SCI", 1].data.astype(np.float32)
    # saturation near 3500 DN at gain 7 (the ADC's top); the vignetted pyramid edges are no data
    ignore = _grow(dn >= 3500.0, 2) | ~np.isfinite(dn)
    ignore[:60, :] = ignore[:, :60] = True
    return [RealImage("wfpc2-pc1", "WFPC2/PC", dn * gain, ignore, 5.24)]


def load_real_images(paths: dict[str, Path]) -> list[RealImage]:
    """The images of the fetched frames (``acs-hrc``, ``stis-ccd``, ``wfpc2``) that are given."""
    loaders = {"acs-hrc": _hrc, "stis-ccd": _stis, "wfpc2": _wfpc2_pc1}
    return [img for name, load in loaders.items() if name in paths for img in load(Path(paths[name]))]


def _background(image: np.ndarray, mask: np.ndarray, box: int = 32) -> np.ndarray:
    from astropy.stats import SigmaClip
    from photutils.background import Background2D, MedianBackground

    bkg = Background2D(image, (box, box), filter_size=(3, 3), mask=mask, sigma_clip=SigmaClip(sigma=3.0),
                       bkg_estimator=MedianBackground(), exclude_percentile=50.0)
    return np.asarray(bkg.background, np.float32)


def find_stars(img: RealImage, snr: float = STAR_SNR) -> np.ndarray:
    """``[K, 2]`` (y, x) peaks of stars more than ``snr`` sigma above the local noise."""
    from photutils.detection import find_peaks

    crs = img.reference if img.reference is not None else np.zeros(img.image.shape, bool)
    bkg = _background(img.image, crs | img.ignore)
    noise = np.sqrt(np.maximum(bkg, 0) + img.readnoise ** 2)
    table = find_peaks((img.image - bkg) / noise, threshold=snr, box_size=5, border_width=6)
    if table is None:
        return np.zeros((0, 2), int)
    y, x = np.asarray(table["y_peak"], int), np.asarray(table["x_peak"], int)
    keep = ~(_grow(crs, 2) | _grow(img.ignore, 3))[y, x]
    return np.stack([y[keep], x[keep]], 1)


def network_scores(model, ckpt, img: RealImage, *, views: int = 1) -> np.ndarray:
    """CR probabilities of a crforge mask network on a whole real image (sky: sigma-clipped median).

    ``views``: the mean over this many symmetric views (:meth:`MaskNet.predict
    <crforge.training.models.MaskNet.predict>`).
    """
    from crforge.training.data import estimate_sky, network_input
    from crforge.training.evaluate.detection import mask_scores

    x = network_input(img.image, estimate_sky(img.image, img.ignore), ckpt.normalisation, img.ignore)
    pad = [(0, (-n) % 8) for n in x.shape]  # any depth up to 4 divides the padded shape
    scores = mask_scores(model, np.pad(x, pad)[None], batch_size=1, views=views)[0]
    return scores[:x.shape[0], :x.shape[1]]


def _at_mask(mask: np.ndarray, img: RealImage, stars: np.ndarray) -> dict:
    usable = ~img.ignore
    core = ndimage.maximum_filter(mask.astype(np.uint8), size=3) > 0
    out = {"stars": int(len(stars)), "star_cores_touched": float(core[stars[:, 0], stars[:, 1]].mean())
           if len(stars) else None, "pixels_flagged": float(mask[usable].mean())}
    if img.positives is not None:
        out["tpr"], out["fpr"] = float(mask[img.positives].mean()), float(mask[img.negatives].mean())
    return out


def score_method(img: RealImage, stars: np.ndarray, *, scores: np.ndarray | None = None,
                 threshold: float | None = None, sweep: dict[float, np.ndarray] | None = None,
                 default: float | None = None) -> dict:
    """Figures of one method: a score map with its threshold, or a swept binary detector."""
    if scores is not None:
        out = {"threshold": threshold, **_at_mask(scores > threshold, img, stars)}
        if img.positives is not None:
            valid = img.positives | img.negatives
            out["tpr_at_fpr"] = {f"{f:g}": M.tpr_at_fpr(scores[valid], img.positives[valid], f) for f in FPRS}
        return out
    out = {"setting": default, **_at_mask(sweep[default], img, stars)}
    if img.positives is not None:
        pts = [(float(m[img.negatives].mean()), float(m[img.positives].mean())) for m in sweep.values()]
        fpr, tpr = [0.0] + [p[0] for p in pts], [0.0] + [p[1] for p in pts]
        out["tpr_at_fpr"] = {f"{f:g}": (M.interp_tpr(fpr, tpr, f) if f >= min(fpr[1:]) else None) for f in FPRS}
        out["sweep"] = [{"sigclip": s, "fpr": a, "tpr": b} for s, (a, b) in zip(sweep, pts)]
    return out


def _baselines(img: RealImage, stars: np.ndarray, baselines: tuple[str, ...], masks: dict,
               scores_out: dict) -> dict:
    from crforge.training.baselines import DeepCRPeer, lacosmic_mask

    out = {}
    for key, model in (("deepcr", DEEPCR_REAL_MODEL), ("deepcr-2-4", DEEPCR_FAST_MODEL)):
        if key in baselines:
            scores = DeepCRPeer(model).scores(img.image)  # electrons, sky included, as deepCR expects
            out[key] = score_method(img, stars, scores=scores, threshold=0.5)
            masks[key], scores_out[key] = scores > 0.5, scores
    if "astroscrappy" in baselines:
        sweep = {s: lacosmic_mask(img.image, readnoise=img.readnoise, ignore=img.ignore, sigclip=s) & ~img.ignore
                 for s in (LACOSMIC_SWEEP if img.positives is not None else (4.5,))}
        out["astroscrappy"] = score_method(img, stars, sweep=sweep, default=4.5)
        masks["astroscrappy"] = sweep[4.5]
    return out


def real_pixel_figures(networks: dict, images: list[RealImage], *,
                       baselines: tuple[str, ...] = ("deepcr", "astroscrappy"),
                       masks: dict | None = None, scores: dict | None = None) -> dict:
    """Every method's figures on every real image.

    Parameters
    ----------
    networks : dict
        Method name -> ``(model, checkpoint, threshold)`` or ``(model, checkpoint,
        threshold, views)`` of crforge mask networks (``views``: symmetric views
        averaged, 1 if not given; the threshold must be the one chosen for them).
    images : list of RealImage
        :func:`load_real_images`.
    baselines : tuple of str
        ``deepcr`` (deepCR 0.3.1's ACS-WFC model at 0.5), ``deepcr-2-4`` (its fast
        ACS-WFC-F606W-2-4 file at 0.5) and ``astroscrappy`` (swept over sigclip; star
        cores at its default 4.5).
    masks : dict, optional
        Filled with image name -> method -> the boolean mask at the method's
        recommended threshold (for pictures).
    scores : dict, optional
        Filled with image name -> method -> the probability map of each network and
        of deepCR (:func:`found_by_peak`).

    Returns
    -------
    dict
        Image name -> ``{"instrument", "stars", "methods": {method: figures}}``.
    """
    out = {}
    for img in images:
        stars = find_stars(img)
        img_masks: dict = {}
        img_scores: dict = {}
        methods = {}
        for name, (model, ckpt, th, *views) in networks.items():
            p = network_scores(model, ckpt, img, views=views[0] if views else 1)
            methods[name] = score_method(img, stars, scores=p, threshold=th)
            img_masks[name], img_scores[name] = p > th, p
        methods.update(_baselines(img, stars, baselines, img_masks, img_scores))
        if masks is not None:
            masks[img.name] = img_masks
        if scores is not None:
            scores[img.name] = img_scores
        out[img.name] = {"instrument": img.instrument, "stars": int(len(stars)), "methods": methods}
        logger.info("real pixels %s: %s", img.name, {m: r.get("tpr_at_fpr") for m, r in methods.items()})
    return out


def found_by_peak(img: RealImage, scores: np.ndarray, *, fpr: float = FPRS[0],
                  edges: tuple[float, ...] = (1000.0, 2000.0, 4000.0, 8000.0)) -> list[dict]:
    """Which reference CRs a score map finds at ``fpr``, binned by the CR's peak.

    A reference blob (a positive) is found when any of its pixels scores above the
    threshold that gives ``fpr`` on the negatives. Its peak is its brightest pixel above
    the local background (electrons), so the bins show whether a method misses faint
    hits or bright ones.

    Returns
    -------
    list of dict
        Per bin, below ``edges[0]``, between the edges and above the last: ``low``,
        ``high`` (``-inf`` and ``inf`` at the ends), ``crs``, ``found`` (fraction) and
        ``median_score`` (at each CR's peak).
    """
    thr = M.threshold_at_fpr(scores[img.negatives], np.zeros(int(img.negatives.sum()), bool), fpr)
    lab, n = ndimage.label(img.positives, _EIGHT)
    above = img.image - _background(img.image, img.reference | img.ignore)
    idx = np.arange(1, n + 1)
    peak = np.asarray(ndimage.maximum(above, lab, idx))
    at = ndimage.maximum_position(above, lab, idx)
    found = np.asarray(ndimage.maximum(scores > thr, lab, idx), bool)
    at_peak = np.array([scores[p] for p in at])
    out = []
    for lo, hi in zip([-np.inf, *edges], [*edges, np.inf]):
        sel = (peak >= lo) & (peak < hi)
        out.append({"low": lo, "high": hi, "crs": int(sel.sum()),
                    "found": float(found[sel].mean()) if sel.any() else None,
                    "median_score": float(np.median(at_peak[sel])) if sel.any() else None})
    return out


def markdown_table(figures: dict, *, fprs: tuple[float, ...] = FPRS) -> list[str]:
    """The real-pixel figures as Markdown table lines (report, model card, benchmark)."""
    head = [f"TPR at {100 * f:g}% FPR" for f in fprs]
    lines = ["| image | method | " + " | ".join(head) + " | star cores touched | pixels flagged |",
             "|---|---|" + "---|" * len(head) + "---|---|"]
    for name, r in figures.items():
        for method, f in r["methods"].items():
            tpr = f.get("tpr_at_fpr") or {}
            cells = ["-" if tpr.get(f"{x:g}") is None else f"{100 * tpr[f'{x:g}']:.1f}" for x in fprs]
            sc = f.get("star_cores_touched")
            lines.append(f"| {name} ({r['stars']} stars) | {method} | " + " | ".join(cells)
                         + f" | {'-' if sc is None else f'{100 * sc:.1f}%'} | {100 * f['pixels_flagged']:.2f}% |")
    return lines
