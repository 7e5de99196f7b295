"""Evaluate a trained run as the deepCR paper does (``crforge evaluate``, ``make evaluate``).

On one split of an HDF5 training set (default ``test``), in one run and on the same
stamps:

Detection (the paper's Table 1 and Figure 4)
    ROC curves and the true-positive rate at fixed false-positive rates (default 0.05%
    and 0.5%), plain and with the 3x3-dilated prediction (:mod:`crforge.training.metrics`),
    per field type and overall, for crforge's mask model, deepCR's published model of
    the data set's instrument (package ``deepCR`` 0.3.1) and LACosmic (astroscrappy,
    swept over ``sigclip`` to trace its ROC; its default point is reported too).
    Ignored pixels (bad, saturated, no data) count for nobody. The figures are against
    the data set's labels (AstroDrizzle's, as in the paper); where the data set holds
    the injected truth (simulated visits) they are repeated against the truth, and
    the labels themselves are scored against it (label quality), so a reader sees how
    much of a model's error is label noise.

Inpainting (Table 2)
    Mean squared error under evaluation masks (the union of 1-9 CR masks borrowed
    from other stamps of the split, seeded; counted only where the true pixel is
    known: not the stamp's own CRs, not ignored) for crforge's inpaint model, the 5x5
    masked median and biharmonic inpainting; in normalised units, ``(norm_scale)^2``
    (``(100 e-)^2`` by default).

Photometric fidelity
    Stars (isolated peaks free of CRs and ignored pixels) are hit by real CR shapes
    taken from the split's labels, each method fills the hit pixels, and the aperture
    flux is compared with the flux before the hit: median and 90th percentile of the
    absolute fractional error per method and field type.

Runtimes
    Seconds per 100 stamps of each method, measured in this run on this machine.

Outputs in the run directory (``runs/<name>/``, holding ``mask/`` and ``inpaint/``):
``evaluation.json`` (format ``crforge-evaluation/1``), ``report.md`` (laid out like
the paper's Tables 1 and 2) and ``roc.png`` (one panel per field type, log FPR axis).
The recommended threshold of the mask model is chosen on the ``val`` split at
``threshold_fpr`` and stored with the figures (``crforge publish`` takes it from there).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from crforge.errors import InputError
from crforge.pipeline.schema import SPLITS
from crforge.pipeline.schema import TRUTH_SNR_BINS as _BINS
from crforge.training import metrics as M
from crforge.training.evaluate.config import EvaluateConfig

logger = logging.getLogger(__name__)

__all__ = ["EVALUATION_FORMAT", "evaluate_run", "load_stamps", "mask_scores",
           "find_stars", "hit_stars", "aperture_flux", "write_report", "plot_roc",]

EVALUATION_FORMAT = "crforge-evaluation/1"
#: SNR bins of the ``truth`` pixels, by ``value - 1`` (0: "<3", 1: "3-5", 2: "5-10", 3: ">10")
TRUTH_SNR_BINS = [_BINS[k + 1] for k in range(len(_BINS))]
FIELD_TYPES = ("extragalactic", "globular_cluster", "resolved_galaxy")
MASK_METHODS = ("crforge", "deepcr", "astroscrappy")
INPAINT_METHODS = ("crforge", "median5", "biharmonic")
#: False-positive rates the stored ROC curves are read at (for plots and the JSON).
ROC_GRID = np.logspace(-6, 0, 97)
_LABEL = {"crforge": "crforge", "deepcr": "deepCR 0.3.1", "astroscrappy": "LACosmic (astroscrappy)",
          "median5": "5x5 masked median", "biharmonic": "biharmonic", "labels": "AstroDrizzle labels",
          "none": "no fill (sky)"}




# --------------------------------------------------------------------------- data


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _instrument_of(h5, meta) -> str:
    if "instruments" in h5.attrs:
        names = json.loads(h5.attrs["instruments"])
        return names[0] if len(names) == 1 else "mixed"
    # files written before the attribute: HST rootnames start with the instrument's letter
    first = {_text(e)[:1].lower() for e in meta["exposure"]}
    return {"j": "ACS/WFC", "i": "WFC3/UVIS"}.get(first.pop(), "unknown") if len(first) == 1 else "mixed"


def load_stamps(path: str | os.PathLike, split: str, per_field_type: int = 0, seed: int = 0) -> dict:
    """Read (a seeded per-field-type subset of) one split into memory.

    Parameters
    ----------
    path : str or path-like
        HDF5 training set (schema v1).
    split : str
        ``train``, ``val`` or ``test``.
    per_field_type : int
        Keep at most this many stamps of each field type (0 = all), drawn at random
        with ``seed`` and kept in file order.
    seed : int
        Seed of the subset.

    Returns
    -------
    dict
        ``index`` (rows of the split), ``image`` float32 ``[N,S,S]``, ``cr``, ``valid``
        (not ignored, finite) and, if present, ``truth`` (uint8: 0 none, else 1 + the
        SNR bin of the injected CR, 0 on ignored pixels); ``meta`` (the rows),
        ``field_type`` (str array), ``bunit``, ``instrument``, ``attrs`` (manifest
        name/sha256) and ``split_size``.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if split not in SPLITS:
        raise InputError(f"split={split!r}: expected one of {SPLITS}")
    if per_field_type < 0:
        raise InputError(f"per_field_type={per_field_type!r}: expected >= 0")
    with h5py.File(path, "r") as h5:
        if split not in h5 or "meta" not in h5[split]:
            raise InputError(f"{path}: no split {split!r} with a meta table (schema v1 expected)")
        g = h5[split]
        meta = g["meta"][()]
        ftypes = np.array([_text(v) for v in meta["field_type"]])
        # the data set's filters (every split), not only the evaluated split's
        filters = sorted({_text(f) for sp in SPLITS if sp in h5 and "meta" in h5[sp]
                          for f in np.unique(h5[sp]["meta"]["filter"])})
        rng = np.random.default_rng([seed, 7])
        keep: list[np.ndarray] = []
        for ft in sorted(set(ftypes)):
            idx = np.flatnonzero(ftypes == ft)
            if per_field_type and idx.size > per_field_type:
                idx = np.sort(rng.choice(idx, per_field_type, replace=False))
            keep.append(idx)
        index = np.sort(np.concatenate(keep)) if keep else np.zeros(0, int)
        if index.size == 0:
            raise InputError(f"{path}: split {split!r} holds no stamps")
        image = g["image"][index].astype(np.float32)
        ignore = g["ignore"][index] != 0
        out = {
            "path": path, "split": split, "index": index, "image": image,
            "valid": ~ignore & np.isfinite(image),
            "meta": meta[index], "field_type": ftypes[index], "split_size": int(len(meta)),
            "bunit": _text(g["image"].attrs.get("BUNIT", "ELECTRONS")),
            "instrument": _instrument_of(h5, meta), "filters": filters,
            "attrs": {k: _text(h5.attrs.get(k, "")) for k in ("manifest_name", "manifest_sha256")},
        }
        # a label on an ignored pixel is no label (as in training)
        out["cr"] = (g["cr"][index] != 0) & out["valid"]
        if "truth" in g:
            # 0 = no injected CR, else 1 + the pixel's SNR bin (crforge.pipeline.schema.TRUTH_SNR_BINS)
            out["truth"] = np.where(out["valid"], g["truth"][index], 0).astype(np.uint8)
    return out


def _electrons(data: dict) -> np.ndarray:
    """Images in electrons (LACosmic and deepCR expect them)."""
    if "/S" in data["bunit"].upper().replace(" ", ""):
        return data["image"] * data["meta"]["exptime"].astype(np.float32)[:, None, None]
    return data["image"]


# --------------------------------------------------------------------------- models


def _load_model(run_dir: Path, kind: str, which: str):
    from crforge.training.train import load_checkpoint

    path = run_dir / kind / f"{which}.pt"
    if not path.is_file():
        return None, None, path
    model, ckpt = load_checkpoint(path)
    if ckpt["kind"] != kind:
        raise InputError(f"{path}: holds a {ckpt['kind']} model, expected {kind}")
    return model, ckpt, path


def _normalised(data: dict, ckpt: dict) -> np.ndarray:
    from crforge.training.data import normalise

    norm = ckpt["normalisation"]
    if norm.get("bunit", "ELECTRONS").upper() != data["bunit"].upper():
        raise InputError(f"{data['path']}: images in {data['bunit']}, but the model was trained on "
                         f"{norm.get('bunit')}")
    sky = np.maximum(np.nan_to_num(data["meta"]["sky"].astype(np.float32)), 0)
    x = np.stack([normalise(im, float(s), norm["scale"]) for im, s in zip(data["image"], sky)])
    if norm.get("fill_ignored", True):
        x[~data["valid"]] = 0.0
    return x


def _fast(model):
    """The inference copy of a network: batch norm folded, channels-last (as ``clean``)."""
    import torch

    from crforge.training.models import fuse_batch_norm

    return fuse_batch_norm(model).to(memory_format=torch.channels_last).eval()


def mask_scores(model, x: np.ndarray, batch_size: int = 16, progress: bool | None = False) -> np.ndarray:
    """CR probabilities of normalised stamps ``x`` ``[N,S,S]`` (float32, eval mode)."""
    import torch

    fast = _fast(model)
    out = np.empty(x.shape, np.float32)
    with torch.inference_mode(), _bar(len(x), "crforge mask", progress) as bar:
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i:i + batch_size])[:, None].contiguous(memory_format=torch.channels_last)
            out[i:i + batch_size] = fast.predict(xb)[:, 0].float().numpy()
            bar.update(len(xb))
    return out


def _inpaint(model, x: np.ndarray, masks: np.ndarray, batch_size: int = 16,
             progress: bool | None = False) -> np.ndarray:
    import torch

    fast = _fast(model)
    out = np.empty(x.shape, np.float32)
    with torch.inference_mode(), _bar(len(x), "crforge inpaint", progress) as bar:
        for i in range(0, len(x), batch_size):
            cl = torch.channels_last
            xb = torch.from_numpy(x[i:i + batch_size])[:, None].contiguous(memory_format=cl)
            mb = torch.from_numpy(masks[i:i + batch_size].astype(np.float32))[:, None].contiguous(memory_format=cl)
            out[i:i + batch_size] = fast.inpaint(xb, mb)[:, 0].float().numpy()
            bar.update(len(xb))
    return out


def _bar(total: int, desc: str, progress: bool | None):
    from tqdm.auto import tqdm

    # progress=None: a bar only on a terminal (tqdm's disable=None)
    return tqdm(total=total, desc=desc, unit="stamp", disable=None if progress is None else not progress,
                leave=False)


def _mapped(pool, fn, n: int, desc: str, progress: bool | None) -> list:
    """``pool.map(fn, range(n))`` in order, with a progress bar."""
    out = []
    with _bar(n, desc, progress) as bar:
        for r in pool.map(fn, range(n)):
            out.append(r)
            bar.update(1)
    return out


def _threads(cfg: EvaluateConfig) -> int:
    return cfg.threads or os.cpu_count() or 1


# --------------------------------------------------------------------------- detection figures


def _groups(ftypes: np.ndarray) -> dict[str, np.ndarray]:
    groups = {"all": np.ones(len(ftypes), bool)}
    for ft in sorted(set(ftypes)):
        groups[ft] = ftypes == ft
    return groups


def _key(f: float) -> str:
    return f"{f:g}"


def _score_figures(scores, target, valid, groups, cfg: EvaluateConfig) -> dict:
    """TPR at the fixed FPRs (plain, dilated) and the resampled ROC, per group."""
    dil = M.dilate_scores(scores, cfg.dilation, valid) if cfg.dilation else None
    tpr, tprd, roc = {}, {}, {}
    for name, sel in groups.items():
        curve = M.roc_curve(scores[sel], target[sel], valid[sel], None if dil is None else dil[sel])
        tpr[name] = {_key(f): M.interp_tpr(curve["fpr"], curve["tpr"], f) for f in cfg.fprs}
        if dil is not None:
            tprd[name] = {_key(f): M.interp_tpr(curve["fpr"], curve["tpr_dilated"], f) for f in cfg.fprs}
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
        tpr[name] = {_key(x): M.interp_tpr(f, t, x) for x in cfg.fprs}
        if cfg.dilation:
            td = [0.0] + [p["tpr_dilated"] for p in pts] + [1.0]
            tprd[name] = {_key(x): M.interp_tpr(f, td, x) for x in cfg.fprs}
        points[name] = pts
    out = {"tpr": tpr, "points": points}
    if cfg.dilation:
        out["tpr_dilated"] = tprd
    return out


def _lacosmic(data: dict, cfg: EvaluateConfig, progress: bool | None = False
              ) -> tuple[list[np.ndarray], float, list[dict]]:
    from crforge.training.baselines import LACOSMIC_DEFAULT, lacosmic_mask

    img = _electrons(data)
    rn = np.nan_to_num(data["meta"]["readnoise"].astype(np.float64), nan=5.0)
    default = float(LACOSMIC_DEFAULT["sigclip"])
    sweep = sorted(set(cfg.lacosmic_sigclip) | {default})
    masks, seconds = [], 0.0
    with ThreadPoolExecutor(_threads(cfg)) as pool:
        for sig in sweep:
            t0 = time.perf_counter()
            # astroscrappy's C code releases the GIL: threads use every core
            res = _mapped(pool, lambda i, s=sig: lacosmic_mask(img[i], readnoise=float(rn[i]),
                                                               ignore=~data["valid"][i], sigclip=s),
                          len(img), f"LACosmic sigclip {sig:g}", progress)
            if sig == default:
                seconds = time.perf_counter() - t0
            masks.append(np.stack(res))
    params = [{**LACOSMIC_DEFAULT, "sigclip": s, "default": s == default} for s in sweep]
    return masks, seconds, params


def _deepcr(data: dict, cfg: EvaluateConfig, progress: bool | None = False
            ) -> tuple[np.ndarray, float, str]:
    from crforge.training.baselines import DeepCRPeer

    peer = DeepCRPeer(data["instrument"], threads=_threads(cfg))
    img = _electrons(data)
    t0 = time.perf_counter()
    scores = np.empty(img.shape, np.float32)
    with _bar(len(img), f"deepCR {peer.name}", progress) as bar:
        for i, im in enumerate(img):
            scores[i] = peer.scores(im)
            bar.update(1)
    return scores, time.perf_counter() - t0, peer.name


# --------------------------------------------------------------------------- inpainting


def _eval_masks(data: dict, seed: int, norm_scale: float, fill_ignored: bool) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation masks and loss masks of the stamps (as the training's, seeded)."""
    from crforge.training.data import StampDataset

    ds = StampDataset(data["path"], data["split"], "inpaint", None, seed=seed, norm_scale=norm_scale,
                      fill_ignored=fill_ignored)
    try:
        masks, loss = [], []
        for i in data["index"]:
            item = ds[int(i)]
            masks.append(item["mask"][0].numpy() > 0)
            loss.append(item["loss_mask"][0].numpy() > 0)
    finally:
        ds.close()
    return np.stack(masks), np.stack(loss)


def _fill(method: str, x: np.ndarray, masks: np.ndarray, model=None, batch_size: int = 16,
          threads: int = 1, progress: bool | None = False) -> np.ndarray:
    from crforge.training.baselines import biharmonic_fill, median_fill

    if method == "crforge":
        return _inpaint(model, x, masks, batch_size, progress)
    if method == "none":
        return np.where(masks, np.float32(0), x)
    fn = {"median5": median_fill, "biharmonic": biharmonic_fill}[method]
    with ThreadPoolExecutor(threads) as pool:
        return np.stack(_mapped(pool, lambda i: fn(x[i], masks[i]), len(x), _LABEL[method], progress))


# --------------------------------------------------------------------------- photometry


def aperture_flux(image: np.ndarray, y: float, x: float, radius: float) -> float:
    """Sum of the pixels whose centres lie within ``radius`` of ``(y, x)``."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise InputError(f"image: expected a 2-D array, got shape {img.shape}")
    if not radius > 0:
        raise InputError(f"radius={radius!r}: expected > 0")
    yy, xx = np.ogrid[:img.shape[0], :img.shape[1]]
    return float(img[(yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2].sum())


def find_stars(signal: np.ndarray, noise: float, exclude: np.ndarray, radius: float, min_snr: float,
               max_stars: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Isolated point sources to hit: peaks ``> min_snr * noise`` with a clean aperture.

    Parameters
    ----------
    signal : numpy.ndarray
        Sky-subtracted 2-D image.
    noise : float
        Noise of a sky pixel (same unit).
    exclude : numpy.ndarray of bool
        Pixels an aperture must not touch (CRs, ignored pixels).
    radius : float
        Aperture radius; the aperture plus a 1-pixel margin must be free of
        ``exclude`` and inside the image.
    min_snr : float
        Detection threshold of a peak.
    max_stars : int
        At most this many, chosen at random among the candidates (seeded by ``rng``),
        at least ``2 * radius + 6`` pixels apart so that hits do not overlap.

    Returns
    -------
    list of (int, int)
        ``(y, x)`` peak positions.
    """
    from scipy import ndimage

    r = int(np.ceil(radius)) + 1
    h, w = signal.shape
    peak = (signal == ndimage.maximum_filter(signal, size=5)) & (signal > min_snr * noise)
    peak[:r + 2, :] = peak[-(r + 2):, :] = False
    peak[:, :r + 2] = peak[:, -(r + 2):] = False
    # an aperture touching an excluded pixel: any excluded pixel within r of the peak
    near = ndimage.binary_dilation(exclude, structure=np.ones((2 * r + 1, 2 * r + 1), bool))
    cand = np.argwhere(peak & ~near)
    rng.shuffle(cand)
    chosen: list[tuple[int, int]] = []
    for y, x in cand:
        if all((y - a) ** 2 + (x - b) ** 2 > (2 * radius + 6) ** 2 for a, b in chosen):
            chosen.append((int(y), int(x)))
            if len(chosen) >= max_stars:
                break
    return chosen


def _cr_shapes(cr: np.ndarray, limit: int = 2000) -> list[np.ndarray]:
    """Pixel offsets (relative to the centroid) of CR events found in label masks."""
    from scipy import ndimage

    shapes: list[np.ndarray] = []
    for m in cr:
        lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
        for sl, k in zip(ndimage.find_objects(lab), range(1, n + 1)):
            pix = np.argwhere(lab[sl] == k)
            if 2 <= len(pix) <= 80:
                shapes.append(np.round(pix - pix.mean(axis=0)).astype(int))
            if len(shapes) >= limit:
                return shapes
    return shapes


def hit_stars(shape: tuple[int, int], stars: list[tuple[int, int]], shapes: list[np.ndarray],
              radius: float, rng: np.random.Generator) -> np.ndarray:
    """A mask of CR events placed over stars (centroid within ``radius`` of the peak).

    Each star gets one event from ``shapes`` that covers at least one pixel of its
    aperture (up to 20 tries).
    """
    mask = np.zeros(shape, bool)
    h, w = shape
    yy, xx = np.ogrid[:h, :w]
    for y, x in stars:
        ap = (yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2
        for _ in range(20):
            s = shapes[int(rng.integers(len(shapes)))]
            dy, dx = rng.uniform(-radius, radius, 2)
            py = np.clip(s[:, 0] + int(round(y + dy)), 0, h - 1)
            px = np.clip(s[:, 1] + int(round(x + dx)), 0, w - 1)
            if ap[py, px].any():
                mask[py, px] = True
                break
    return mask


def _photometry(data: dict, x: np.ndarray, ckpt: dict, model, cfg: EvaluateConfig, methods) -> dict:
    scale = float(ckpt["normalisation"]["scale"])
    exclude = ~data["valid"] | data["cr"] | (data.get("truth", np.zeros(data["cr"].shape, np.uint8)) > 0)
    shapes = _cr_shapes(data["cr"])
    if not shapes:
        return {"error": "no CR events in the labels to hit stars with"}
    rng = np.random.default_rng([cfg.seed, 11])
    sky = np.maximum(np.nan_to_num(data["meta"]["sky"].astype(np.float64)), 0)
    rn = np.nan_to_num(data["meta"]["readnoise"].astype(np.float64), nan=5.0)
    sites, hits = [], np.zeros(x.shape, bool)
    for i in range(len(x)):
        noise = np.sqrt(sky[i] + rn[i] ** 2) / scale  # electrons -> normalised units
        stars = find_stars(x[i], noise, exclude[i], cfg.aperture_radius, cfg.star_min_snr,
                           cfg.stars_per_stamp, rng)
        hits[i] = hit_stars(x[i].shape, stars, shapes, cfg.aperture_radius, rng)
        sites += [(i, y, xx) for y, xx in stars]
    keep = np.flatnonzero(hits.reshape(len(x), -1).any(axis=1))
    result: dict[str, Any] = {"stars": len(sites), "aperture_radius": cfg.aperture_radius,
                              "min_snr": cfg.star_min_snr, "methods": {}}
    if not sites:
        return result
    filled = {m: np.empty_like(x) for m in methods}
    for m in methods:
        filled[m][keep] = _fill(m, x[keep], hits[keep], model, cfg.batch_size, _threads(cfg))
    rows: dict[str, list[tuple[str, float]]] = {m: [] for m in methods}
    yy, xx = np.ogrid[:x.shape[1], :x.shape[2]]
    for i, y, xc in sites:
        ap = (yy - y) ** 2 + (xx - xc) ** 2 <= cfg.aperture_radius ** 2
        if not (hits[i] & ap).any():
            continue
        true = float(x[i][ap].sum())
        for m in methods:
            rows[m].append((str(data["field_type"][i]), (float(filled[m][i][ap].sum()) - true) / true))
    for m in methods:
        per: dict[str, Any] = {}
        for name in ["all"] + sorted({ft for ft, _ in rows[m]}):
            e = np.array([v for ft, v in rows[m] if name == "all" or ft == name])
            if e.size:
                per[name] = {"n": int(e.size), "median_abs": float(np.median(np.abs(e))),
                             "p90_abs": float(np.percentile(np.abs(e), 90)), "median": float(np.median(e))}
        result["methods"][m] = per
    result["hit_stars"] = len(rows[methods[0]])
    return result


# --------------------------------------------------------------------------- the run


def evaluate_run(run_dir: str | os.PathLike, data_path: str | os.PathLike, cfg: EvaluateConfig,
                 out_dir: str | os.PathLike | None = None, progress: bool | None = False) -> dict:
    """Evaluate a run's models and the baselines; write JSON, report and ROC plot.

    Parameters
    ----------
    run_dir : str or path-like
        The run directory (``runs/<name>``, holding ``mask/`` and/or ``inpaint/``).
    data_path : str or path-like
        The HDF5 data set.
    cfg : EvaluateConfig
        Settings.
    out_dir : str or path-like, optional
        Where the outputs go (default: ``run_dir``).
    progress : bool or None
        Progress bars on stderr (``None``: only on a terminal).

    Returns
    -------
    dict
        The evaluation (what ``evaluation.json`` holds).
    """
    import torch

    if not isinstance(cfg, EvaluateConfig):
        raise TypeError(f"cfg must be an EvaluateConfig, got {type(cfg).__name__}")
    cfg.validate()
    run_dir, data_path = Path(run_dir), Path(data_path)
    if not run_dir.is_dir():
        raise FileNotFoundError(2, "No such run directory", str(run_dir))
    if not data_path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(data_path))
    out = Path(out_dir) if out_dir is not None else run_dir
    mask_model, mask_ckpt, mask_path = _load_model(run_dir, "mask", cfg.checkpoint)
    inp_model, inp_ckpt, inp_path = _load_model(run_dir, "inpaint", cfg.checkpoint)
    if mask_model is None and inp_model is None:
        raise FileNotFoundError(2, f"no trained model in the run (expected {mask_path} and/or "
                                f"{inp_path}; train with `crforge train`)", str(run_dir))
    threads_before = torch.get_num_threads()
    torch.set_num_threads(_threads(cfg))
    t_all = time.perf_counter()
    try:
        data = load_stamps(data_path, cfg.split, cfg.stamps_per_field_type, cfg.seed)
        n = len(data["index"])
        logger.info("%s: %d %s stamps (%s)", data_path, n, cfg.split, data["instrument"])
        groups = _groups(data["field_type"])
        doc: dict[str, Any] = {
            "format": EVALUATION_FORMAT,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "crforge_version": _version(),
            "data": {"path": str(data_path), "sha256": _sha256(data_path),
                     "manifest_name": data["attrs"]["manifest_name"],
                     "manifest_sha256": data["attrs"]["manifest_sha256"],
                     "instrument": data["instrument"],
                     "filters": data["filters"],
                     "split_filters": sorted({_text(f) for f in data["meta"]["filter"]}),
                     "split": cfg.split, "n_stamps": n, "split_stamps": data["split_size"],
                     "stamps_by_field_type": {k: int(v.sum()) for k, v in groups.items() if k != "all"},
                     "simulated": "truth" in data, "bunit": data["bunit"]},
            "config": _config_dict(cfg),
            "fprs": list(cfg.fprs), "dilation": cfg.dilation,
            "models": {}, "mask": {}, "inpaint": {}, "machine": _machine(),
        }
        for kind, model, ckpt, path in (("mask", mask_model, mask_ckpt, mask_path),
                                        ("inpaint", inp_model, inp_ckpt, inp_path)):
            if model is not None:
                mc = ckpt["model_config"]
                doc["models"][kind] = {"checkpoint": str(path), "depth": mc["depth"], "width": mc["width"],
                                       "batch_norm": mc["batch_norm"], "epoch": ckpt.get("epoch"),
                                       "step": ckpt.get("step"), "normalisation": ckpt["normalisation"]}
        if mask_model is not None:
            _evaluate_mask(doc, data, groups, mask_model, mask_ckpt, data_path, cfg, progress)
        if inp_model is not None:
            _evaluate_inpaint(doc, data, groups, inp_model, inp_ckpt, cfg, progress)
        doc["seconds"] = round(time.perf_counter() - t_all, 1)
    finally:
        torch.set_num_threads(threads_before)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "evaluation.json.tmp"
    tmp.write_text(json.dumps(_jsonable(doc), indent=1, allow_nan=True) + "\n")
    os.replace(tmp, out / "evaluation.json")
    write_report(doc, out / "report.md")
    if doc["mask"]:
        plot_roc(doc, out / "roc.png")
    return doc


def _evaluate_mask(doc, data, groups, model, ckpt, data_path, cfg: EvaluateConfig,
                   progress: bool | None = False) -> None:
    valid = data["valid"]
    t0 = time.perf_counter()
    x = _normalised(data, ckpt)
    scores = {"crforge": mask_scores(model, x, cfg.batch_size, progress)}
    sec = {"crforge": time.perf_counter() - t0}
    del x
    if "deepcr" in cfg.baselines:
        try:
            scores["deepcr"], sec["deepcr"], name = _deepcr(data, cfg, progress)
            doc["mask_peer"] = {"package": "deepCR", "version": _pkg_version("deepCR"), "model": name}
        except (ImportError, ValueError) as exc:
            logger.warning("deepCR baseline skipped: %s", exc)
            doc["mask_skipped"] = {"deepcr": str(exc)}
    n = len(data["index"])
    for m, s in scores.items():
        logger.info("%s: scored %d stamps in %.1f s", _LABEL[m], n, sec[m])
        doc["mask"][m] = _score_figures(s, data["cr"], valid, groups, cfg)
        doc["mask"][m]["seconds_per_100"] = round(100 * sec[m] / n, 3)
    if "astroscrappy" in cfg.baselines:
        masks, seconds, params = _lacosmic(data, cfg, progress)
        fig = _point_figures(masks, data["cr"], valid, groups, cfg)
        fig["params"] = params
        fig["seconds_per_100"] = round(100 * seconds / n, 3)
        doc["mask"]["astroscrappy"] = fig
        logger.info("LACosmic: %d operating points; the default took %.1f s", len(masks), seconds)
    else:
        masks, params = [], []
    # the recommended threshold: chosen on the val split, never on the evaluated one
    doc["threshold"] = _threshold(model, ckpt, data_path, cfg)
    thr = doc["threshold"]["value"]
    doc["mask"]["crforge"]["at_threshold"] = {
        name: M.binary_rates(scores["crforge"][sel] > thr, data["cr"][sel], valid[sel], cfg.dilation)
        for name, sel in groups.items()}
    if "truth" in data:
        # positives: injected CR pixels at or above the SNR bin; fainter CR pixels are
        # left out (nobody can see a 1-sigma pixel: counting it would only dilute)
        bins = data["truth"]
        truth = bins >= cfg.truth_min_bin
        tvalid = valid & ~((bins > 0) & (bins < cfg.truth_min_bin))
        lq: dict[str, Any] = {"min_snr": TRUTH_SNR_BINS[cfg.truth_min_bin - 1].split("-")[0].lstrip(">"),
                              "labels": {name: M.binary_rates(data["cr"][sel], truth[sel], tvalid[sel],
                                                              cfg.dilation)
                                         for name, sel in groups.items()}}
        for name, sel in groups.items():
            lab = data["cr"][sel]
            b = bins[sel]
            lq["labels"][name]["recall_by_snr"] = {
                TRUTH_SNR_BINS[k - 1]: float(lab[b == k].mean()) if (b == k).any() else None
                for k in range(2, len(TRUTH_SNR_BINS) + 1)}
        for m, s in scores.items():
            lq[m] = {k: v for k, v in _score_figures(s, truth, tvalid, groups, cfg).items() if k != "roc"}
        if masks:
            lq["astroscrappy"] = {k: v for k, v in _point_figures(masks, truth, tvalid, groups, cfg).items()
                                  if k != "points"}
        doc["vs_truth"] = lq
        doc["mask"]["labels"] = {"points": {name: [p] for name, p in lq["labels"].items()}}


def _threshold(model, ckpt, data_path, cfg: EvaluateConfig) -> dict:
    split = "val"  # the threshold is the val split's, whichever split is evaluated
    try:
        val = load_stamps(data_path, split, cfg.stamps_per_field_type, cfg.seed)
    except ValueError as exc:
        logger.warning("no threshold from the val split: %s", exc)
        return {"value": 0.5, "fpr": None, "split": None, "note": str(exc)}
    s = mask_scores(model, _normalised(val, ckpt), cfg.batch_size)
    t = M.threshold_at_fpr(s[val["valid"]], val["cr"][val["valid"]], cfg.threshold_fpr)
    tpr, fpr = M.rates_at_threshold(s[val["valid"]], val["cr"][val["valid"]], t)
    return {"value": float(t), "fpr": cfg.threshold_fpr, "split": split, "n_stamps": int(len(val["index"])),
            "val_tpr": tpr, "val_fpr": fpr}


def _evaluate_inpaint(doc, data, groups, model, ckpt, cfg: EvaluateConfig,
                      progress: bool | None = False) -> None:
    norm = ckpt["normalisation"]
    x = _normalised(data, ckpt)
    masks, loss = _eval_masks(data, cfg.seed, float(norm["scale"]), bool(norm.get("fill_ignored", True)))
    methods = ["crforge"] + [m for m in ("median5", "biharmonic") if m in cfg.baselines]
    n = len(x)
    for m in methods:
        t0 = time.perf_counter()
        pred = _fill(m, x, masks, model, cfg.batch_size, _threads(cfg), progress)
        sec = time.perf_counter() - t0
        logger.info("%s: filled %d stamps in %.1f s", _LABEL[m], n, sec)
        mse = {}
        for name, sel in groups.items():
            mse[name] = M.masked_mse(pred[sel], x[sel], loss[sel])[0]
        doc["inpaint"][m] = {"mse": mse, "seconds_per_100": round(100 * sec / n, 3),
                             "pixels": {name: int(loss[sel].sum()) for name, sel in groups.items()}}
    doc["inpaint_units"] = f"({norm['scale']:g} {doc['data']['bunit'].lower()})^2"
    if cfg.photometry:
        doc["photometry"] = _photometry(data, x, ckpt, model, cfg, methods + ["none"])


# --------------------------------------------------------------------------- outputs


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _version() -> str:
    from crforge import __version__

    return __version__


def _pkg_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _machine() -> dict:
    import platform

    import torch

    return {"cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "platform": platform.platform(), "torch": torch.__version__,
            "astroscrappy": _pkg_version("astroscrappy"), "scikit-image": _pkg_version("scikit-image")}


def _config_dict(cfg: EvaluateConfig) -> dict:
    from crforge import config as cfgmod

    return cfgmod.to_dict(cfg)


def _pct(v) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _fields(doc: dict) -> list[str]:
    ft = list(doc["data"]["stamps_by_field_type"])
    return [f for f in FIELD_TYPES if f in ft] + [f for f in ft if f not in FIELD_TYPES] + ["all"]


def write_report(doc: dict, path: str | os.PathLike) -> Path:
    """The Markdown report of an evaluation (the paper's Tables 1 and 2)."""
    path = Path(path)
    d = doc["data"]
    fields = _fields(doc)
    nice = {f: f.replace("_", " ") for f in fields}
    lines = [f"# Evaluation: {d['manifest_name']} ({d['split']} split)", "",
             f"- Data: `{d['path']}` (sha256 `{d['sha256'][:16]}…`), {d['instrument']}, "
             f"{', '.join(d['filters'])} ({', '.join(d['split_filters'])} in this split); {d['n_stamps']} of the split's {d['split_stamps']} stamps "
             f"({', '.join(f'{k.replace(chr(95), chr(32))} {v}' for k, v in d['stamps_by_field_type'].items())}); "
             f"{'simulated (truth available)' if d['simulated'] else 'real data (AstroDrizzle labels only)'}.",
             ]
    for kind, m in doc["models"].items():
        lines.append(f"- {kind} model: `{m['checkpoint']}` (deepCR-{kind}-{m['depth']}-{m['width']}, "
                     f"epoch {m['epoch']})")
    if "threshold" in doc:
        t = doc["threshold"]
        lines.append(f"- Recommended mask threshold: {t['value']:.4g} (FPR {t['fpr']} on the {t['split']} split).")
    lines.append(f"- Machine: {doc['machine']['cpu_count']} CPUs, {doc['machine']['threads']} threads; "
                 f"evaluation took {doc.get('seconds', 0):.0f} s.")
    if doc["mask"]:
        fp = " / ".join(f"{100 * f:g}%" for f in doc["fprs"])
        lines += ["", f"## Table 1: CR detection, TPR (%) at {fp} FPR against the data set's labels", "",
                  "FPR is always that of the undilated mask; the dilated rows count a CR pixel as found "
                  "when the 3x3-dilated mask covers it. Ignored pixels are excluded. LACosmic is "
                  "interpolated between its swept operating points.", ""]
        lines += _tpr_table(doc["mask"], doc, fields, nice, timing=True)
        if "astroscrappy" in doc["mask"]:
            a = doc["mask"]["astroscrappy"]
            i = next(j for j, p in enumerate(a["params"]) if p["default"])
            pts = ", ".join(f"{nice[f]} TPR {_pct(a['points'][f][i]['tpr'])}% at FPR "
                            f"{100 * a['points'][f][i]['fpr']:.3f}%" for f in fields)
            lines += ["", f"LACosmic's default point (sigclip {a['params'][i]['sigclip']}, sigfrac "
                          f"{a['params'][i]['sigfrac']}, objlim {a['params'][i]['objlim']}): {pts}."]
        if "vs_truth" in doc:
            vt = doc["vs_truth"]
            lines += ["", f"## Label quality: against the injected truth (CR pixels > {vt['min_snr']} sigma)", "",
                      f"The same figures with the simulated truth as the target (CR pixels above "
                      f"{vt['min_snr']} sigma; fainter CR pixels left out): the gap between a "
                      "method's rows here and in Table 1 is label noise.", ""]
            lines += _tpr_table(vt, doc, fields, nice, timing=False)
            snr = TRUTH_SNR_BINS[1:]
            lines += ["", "The AstroDrizzle labels scored as a detector against the truth, and their "
                          "recall by the SNR of the CR pixel:", "",
                      "| field | TPR (%) | TPR dilated (%) | FPR (%) | " + " | ".join(
                          f"recall {k} sigma (%)" for k in snr) + " |", "|---|---|---|---|" + "---|" * len(snr)]
            for f in fields:
                r = vt["labels"].get(f)
                if r:
                    lines.append(f"| {nice[f]} | {_pct(r['tpr'])} | {_pct(r.get('tpr_dilated'))} | "
                                 f"{100 * r['fpr']:.4f} | " + " | ".join(
                                     _pct(r["recall_by_snr"].get(k)) for k in snr) + " |")
    if doc["inpaint"]:
        lines += ["", f"## Table 2: inpainting MSE, units {doc.get('inpaint_units', '')}", "",
                  "Under evaluation masks of 1-9 borrowed CR masks, where the true pixel is known.", ""]
        head = ["method"] + [nice[f] for f in fields] + ["s / 100 stamps"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in INPAINT_METHODS:
            if m in doc["inpaint"]:
                r = doc["inpaint"][m]
                lines.append(f"| {_LABEL[m]} | " + " | ".join(
                    "–" if r["mse"].get(f) is None else f"{r['mse'][f]:.4g}" for f in fields)
                    + f" | {r['seconds_per_100']:.2f} |")
    ph = doc.get("photometry")
    if ph and ph.get("methods"):
        lines += ["", "## Photometric fidelity of the fills", "",
                  f"{ph['hit_stars']} stars (peak > {ph['min_snr']:g} sigma, clean aperture of radius "
                  f"{ph['aperture_radius']:g} px) hit by real CR shapes; absolute fractional error of the "
                  "aperture flux after filling, median / 90th percentile (%), and the median signed error.", ""]
        head = ["method"] + [nice[f] for f in fields]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m, per in ph["methods"].items():
            cells = []
            for f in fields:
                v = per.get(f)
                cells.append("–" if v is None else
                             f"{100 * v['median_abs']:.2f} / {100 * v['p90_abs']:.2f} ({100 * v['median']:+.2f}; n={v['n']})")
            lines.append(f"| {_LABEL.get(m, m)} | " + " | ".join(cells) + " |")
    lines.append("")
    path.write_text("\n".join(lines))
    return path


def _tpr_table(results: dict, doc: dict, fields: list[str], nice: dict, timing: bool) -> list[str]:
    head = ["method"] + [nice[f] for f in fields] + (["s / 100 stamps"] if timing else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in MASK_METHODS:
        if m not in results:
            continue
        r = results[m]
        label = _LABEL[m] + (f" `{doc['mask_peer']['model']}`" if m == "deepcr" and "mask_peer" in doc else "")
        for variant, suffix in (("tpr", ""), ("tpr_dilated", ", dilated")):
            if variant not in r:
                continue
            cells = [" / ".join(_pct(r[variant].get(f, {}).get(_key(fpr))) for fpr in doc["fprs"])
                     for f in fields]
            t = [f"{r['seconds_per_100']:.2f}" if not suffix else ""] if timing else []
            lines.append(f"| {label}{suffix} | " + " | ".join(cells + t) + " |")
    return lines


def plot_roc(doc: dict, path: str | os.PathLike) -> Path:
    """ROC curves, one panel per field type (and all), log FPR axis."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fields = _fields(doc)
    fig, axes = plt.subplots(1, len(fields), figsize=(4.2 * len(fields), 4), sharey=True, squeeze=False)
    colours = {"crforge": "C0", "deepcr": "C1", "astroscrappy": "C2", "labels": "k"}
    for ax, f in zip(axes[0], fields):
        for m in ("crforge", "deepcr"):
            r = doc["mask"].get(m)
            if r and f in r["roc"]:
                roc = r["roc"][f]
                ax.plot(roc["fpr"], roc["tpr"], color=colours[m], label=_LABEL[m])
                if "tpr_dilated" in roc:
                    ax.plot(roc["fpr"], roc["tpr_dilated"], color=colours[m], ls="--", lw=1,
                            label=f"{_LABEL[m]}, 3x3 dilated")
        a = doc["mask"].get("astroscrappy")
        if a and f in a["points"]:
            pts = sorted(a["points"][f], key=lambda p: p["fpr"])
            ax.plot([p["fpr"] for p in pts], [p["tpr"] for p in pts], "o-", color=colours["astroscrappy"],
                    ms=4, label=_LABEL["astroscrappy"])
        lab = doc["mask"].get("labels")
        if lab and f in lab["points"]:
            p = lab["points"][f][0]
            # a label set with no false label sits on the left edge of the log axis
            ax.plot([max(p["fpr"], 1.2e-5)], [p["tpr"]], "k*", ms=9, clip_on=False,
                    label="AstroDrizzle labels vs truth")
        for fpr in doc["fprs"]:
            ax.axvline(fpr, color="0.8", lw=0.8, zorder=0)
        ax.set_xscale("log")
        ax.set_xlim(1e-5, 1e-1)
        ax.set_ylim(0, 1.01)
        ax.set_title(f.replace("_", " "))
        ax.set_xlabel("false-positive rate")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("true-positive rate")
    axes[0][-1].legend(loc="lower right", fontsize=7)
    fig.suptitle(f"{doc['data']['manifest_name']}: {doc['data']['split']} split, "
                 f"{doc['data']['n_stamps']} stamps (targets: AstroDrizzle labels)")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- CLI






