"""Label quality of a simulated visit: AstroDrizzle's labels against the injected truth.

Reads the label files of :mod:`crforge.pipeline.label` and the truth files of
:mod:`crforge.pipeline.simulate`, and sums :func:`crforge.pipeline.masks.label_scores` over every
exposure and chip. Pixels under the ignore mask are left out of every count.

Signal-to-noise of a CR pixel: injected charge over the noise sigma the pixel would
have without it, ``sqrt(source + sky + dark + readnoise^2)`` in electrons.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from astropy.io import fits

from crforge.pipeline import masks
from crforge.pipeline.label.result import read_labels
from crforge.pipeline.simulate.truth import read_truth

logger = logging.getLogger(__name__)

__all__ = ["score_visit", "summarise"]


def score_visit(label_dir: str | os.PathLike, raw_dir: str | os.PathLike) -> dict:
    """Sum label-vs-truth counts over a labelled simulated visit.

    Parameters
    ----------
    label_dir : path-like
        The visit's label directory (with ``labels.json``).
    raw_dir : path-like
        The simulated visit directory (with ``*_truth.fits``).

    Returns
    -------
    dict
        Counts as in :func:`crforge.pipeline.masks.label_scores`, plus ``n_exposures``.
    """
    label_dir, raw_dir = Path(label_dir), Path(raw_dir)
    report = read_labels(label_dir)
    total: dict = {}
    for exp in report.exposures:
        truth_path = raw_dir / f"{exp.rootname}_truth.fits"
        if not truth_path.exists():
            raise FileNotFoundError(f"{truth_path}: no truth (is {raw_dir} a simulated visit?)")
        _add_counts(total, _score_exposure(label_dir / exp.label, truth_path))
    total["n_exposures"] = report.n_exposures
    return total


def _score_exposure(label_path: Path, truth_path: Path) -> dict:
    """:func:`crforge.pipeline.masks.label_scores` summed over the chips of one exposure."""
    truth = read_truth(truth_path, source=True)
    sky_e = float(fits.getheader(truth_path)["SKY_E"])
    total: dict = {}
    with fits.open(label_path) as lab:
        for ev, t in truth.items():
            cr = lab["CR", ev].data.astype(bool)
            ign = lab["IGNORE", ev].data
            rn = float(lab["SCI", ev].header["RDNOISE"])
            noise = np.sqrt(np.maximum(t.source, 0) + sky_e + rn**2)
            _add_counts(total, masks.label_scores(cr, t.cr_snr_image(), ign, source=t.source, noise=noise))
    return total


def _add_counts(total: dict, counts: dict) -> None:
    """Add ``counts`` (numbers and per-bin lists) to ``total`` in place."""
    for k, v in counts.items():
        if k not in total:
            total[k] = v
        else:
            total[k] = [a + b for a, b in zip(total[k], v)] if isinstance(v, list) else total[k] + v


def summarise(counts: dict, bins: tuple[float, ...] = masks.SNR_BINS) -> dict:
    """Recall per signal-to-noise bin, recall above 5 sigma, false labels per million.

    Parameters
    ----------
    counts : dict
        Output of :func:`score_visit` (or a sum of several).
    """
    n = np.asarray(counts["cr_pixels"], float)
    f = np.asarray(counts["cr_found"], float)
    names = [f"{bins[i]:g}-{bins[i + 1]:g}" if np.isfinite(bins[i + 1]) else f">{bins[i]:g}"
             for i in range(len(bins) - 1)]
    above5 = np.asarray(bins[:-1]) >= 5
    return {
        "recall_by_snr": {k: (float(a / b) if b else None) for k, a, b in zip(names, f, n)},
        "cr_pixels_by_snr": {k: int(b) for k, b in zip(names, n)},
        "recall_above_5sigma": float(f[above5].sum() / max(n[above5].sum(), 1)),
        "false_per_million": 1e6 * counts["false_labels"] / max(counts["clean_pixels"], 1),
        "false_source_pixels": int(counts["false_source_labels"]),
        "false_source_per_million": 1e6 * counts["false_source_labels"] / max(counts["source_pixels"], 1),
    }
