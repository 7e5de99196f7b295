"""Photometric fidelity of the fills: stars hit by real CR shapes, filled, and measured.

Stars (isolated peaks free of CRs and ignored pixels) are hit by CR events taken from
the split's labels, each method fills the hit pixels, and the aperture flux is compared
with the flux before the hit: median and 90th percentile of the absolute fractional
error per method and field type.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crforge.errors import InputError
from crforge.training.evaluate.config import EvaluateConfig
from crforge.training.evaluate.inpainting import fill
from crforge.training.evaluate.runtime import thread_count

__all__ = ["aperture_flux", "find_stars", "hit_stars", "photometric_fidelity"]


def _aperture(shape: tuple[int, int], y: float, x: float, radius: float) -> np.ndarray:
    """The pixels whose centres lie within ``radius`` of ``(y, x)``."""
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2


def aperture_flux(image: np.ndarray, y: float, x: float, radius: float) -> float:
    """Sum of the pixels whose centres lie within ``radius`` of ``(y, x)``."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise InputError(f"image: expected a 2-D array, got shape {img.shape}")
    if not radius > 0:
        raise InputError(f"radius={radius!r}: expected > 0")
    return float(img[_aperture(img.shape, y, x, radius)].sum())


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
    for y, x in stars:
        ap = _aperture(shape, y, x, radius)
        for _ in range(20):
            s = shapes[int(rng.integers(len(shapes)))]
            dy, dx = rng.uniform(-radius, radius, 2)
            py = np.clip(s[:, 0] + int(round(y + dy)), 0, h - 1)
            px = np.clip(s[:, 1] + int(round(x + dx)), 0, w - 1)
            if ap[py, px].any():
                mask[py, px] = True
                break
    return mask


def _hits(data: dict, x: np.ndarray, shapes: list[np.ndarray], scale: float, cfg: EvaluateConfig
          ) -> tuple[list[tuple[int, int, int]], np.ndarray]:
    """The stars found, as ``(stamp, y, x)``, and the masks of the CR events hitting them."""
    exclude = ~data["valid"] | data["cr"] | (data.get("truth", np.zeros(data["cr"].shape, np.uint8)) > 0)
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
    return sites, hits


def _flux_errors(x: np.ndarray, hits: np.ndarray, filled: dict, sites, ftypes, radius: float) -> dict:
    """Per method, ``(field type, fractional flux error)`` of every star an event hit."""
    rows: dict[str, list[tuple[str, float]]] = {m: [] for m in filled}
    for i, y, xc in sites:
        if not (hits[i] & _aperture(hits[i].shape, y, xc, radius)).any():
            continue
        true = aperture_flux(x[i], y, xc, radius)
        for m, f in filled.items():
            rows[m].append((str(ftypes[i]), (aperture_flux(f[i], y, xc, radius) - true) / true))
    return rows


def _error_stats(rows: list[tuple[str, float]]) -> dict:
    """Median and 90th percentile of the absolute error, and the median error, per field type."""
    per: dict[str, Any] = {}
    for name in ["all"] + sorted({ft for ft, _ in rows}):
        e = np.array([v for ft, v in rows if name == "all" or ft == name])
        if e.size:
            per[name] = {"n": int(e.size), "median_abs": float(np.median(np.abs(e))),
                         "p90_abs": float(np.percentile(np.abs(e), 90)), "median": float(np.median(e))}
    return per


def photometric_fidelity(data: dict, x: np.ndarray, model, ckpt, cfg: EvaluateConfig,
                         methods: list[str]) -> dict:
    """Aperture-flux errors of each fill on stars hit by real CR shapes.

    Parameters
    ----------
    data : dict
        The stamps (:func:`crforge.training.evaluate.data.load_stamps`).
    x : numpy.ndarray
        The stamps normalised for the network.
    model, ckpt
        The inpaint network and its :class:`~crforge.training.checkpoint.Checkpoint`.
    cfg : EvaluateConfig
        Settings (``aperture_radius``, ``star_min_snr``, ``stars_per_stamp``, ``seed``).
    methods : list of str
        The fills compared (:func:`crforge.training.evaluate.inpainting.fill`).

    Returns
    -------
    dict
        The evaluation document's ``photometry`` section: ``stars``, ``hit_stars``,
        ``aperture_radius``, ``min_snr`` and, per method and field type, ``n``,
        ``median_abs``, ``p90_abs`` and ``median``; or ``error`` when the labels hold
        no CR event.
    """
    shapes = _cr_shapes(data["cr"])
    if not shapes:
        return {"error": "no CR events in the labels to hit stars with"}
    sites, hits = _hits(data, x, shapes, float(ckpt.normalisation["scale"]), cfg)
    result: dict[str, Any] = {"stars": len(sites), "aperture_radius": cfg.aperture_radius,
                              "min_snr": cfg.star_min_snr, "methods": {}}
    if not sites:
        return result
    keep = np.flatnonzero(hits.reshape(len(x), -1).any(axis=1))
    filled = {m: np.empty_like(x) for m in methods}
    for m in methods:  # only the stamps with a hit are filled (and measured)
        filled[m][keep] = fill(m, x[keep], hits[keep], model=model, batch_size=cfg.batch_size,
                               threads=thread_count(cfg.threads))
    rows = _flux_errors(x, hits, filled, sites, data["field_type"], cfg.aperture_radius)
    result["methods"] = {m: _error_stats(rows[m]) for m in methods}
    result["hit_stars"] = len(rows[methods[0]])
    return result
