"""Pure functions that turn DQ arrays, AstroDrizzle CR masks and stacks into labels.

Nothing here reads or writes files: :mod:`crforge.pipeline.label.labelfile` does the I/O
and hands the arrays to these functions, so they can be tested on hand-built arrays.
Settings that :class:`crforge.pipeline.label.config.LabelConfig` holds (thresholds,
scales, growth radius) have no default here: callers pass the config's values.

Ignore-mask bits (schema v1 of the HDF5 data set)::

    1  bad pixel        DQ bits in Instrument.bad_bits (hot, bad column, ...)
    2  saturated        DQ bits in Instrument.saturation_bits, grown by a radius
    4  no data          DQ lost/fill bits, or no other exposure covers the pixel

Cosmic-ray DQ bits (4096, 8192) are never part of the ignore mask: the HST pipeline's
own CR flags mark exactly the pixels the labels must keep.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from crforge.errors import InputError
from crforge.pipeline.instruments import Instrument

logger = logging.getLogger(__name__)

__all__ = [
    "IGNORE_BAD",
    "IGNORE_SATURATED",
    "IGNORE_NODATA",
    "ignore_mask",
    "cr_from_crmask",
    "grow",
    "refine_cr_mask",
    "minimum_excess",
    "label_scores",
    "SNR_BINS",
]

IGNORE_BAD = 1
IGNORE_SATURATED = 2
IGNORE_NODATA = 4
SNR_BINS = (0.0, 3.0, 5.0, 10.0, np.inf)


def _check_2d(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D array, got shape {a.shape}")
    return a


def grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate a boolean mask by a disc of ``radius`` pixels (0 returns a copy)."""
    mask = _check_2d("mask", mask).astype(bool)
    if not isinstance(radius, (int, np.integer)) or radius < 0:
        raise InputError(f"radius={radius!r}: expected an int >= 0")
    if radius == 0 or not mask.any():
        return mask.copy()
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disc = (yy * yy + xx * xx) <= radius * radius
    ys, xs = np.nonzero(mask)
    if ys.size * disc.sum() > mask.size // 4:
        return ndimage.binary_dilation(mask, structure=disc)
    # sparse masks (saturated stars on a chip): paint the discs, far faster than a
    # dilation pass over the whole chip
    out = mask.copy()
    ny, nx = mask.shape
    for dy, dx in zip(yy[disc], xx[disc]):
        y, x = ys + dy, xs + dx
        ok = (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
        out[y[ok], x[ok]] = True
    return out


def ignore_mask(
    dq: np.ndarray,
    instrument: Instrument,
    *,
    saturation_grow: int,
    no_coverage: np.ndarray | None = None,
    bad_bits: int | None = None,
) -> np.ndarray:
    """The uint8 ignore mask of one chip.

    Parameters
    ----------
    dq : ndarray of int
        The chip's DQ array as calibrated (before AstroDrizzle touches it).
    instrument : Instrument
        Supplies which DQ bits are bad, saturated and no-data.
    saturation_grow : int
        Radius in pixels by which saturated pixels are grown (bleed edges and the
        wings of saturated stars are unreliable too); ``LabelConfig.saturation_grow``.
    no_coverage : ndarray of bool, optional
        Pixels that no other exposure of the visit covers (no CR label possible).
    bad_bits : int, optional
        Override of ``instrument.bad_bits``.

    Returns
    -------
    ndarray of uint8
        Bits 1 (bad), 2 (saturated, grown), 4 (no data).
    """
    dq = _check_2d("dq", dq)
    if not np.issubdtype(dq.dtype, np.integer):
        raise TypeError(f"dq must be an integer array, got dtype {dq.dtype}")
    bad = instrument.bad_bits if bad_bits is None else int(bad_bits)
    # CR flags from the HST pipeline are labels, not defects.
    bad &= ~instrument.cr_bits
    if not isinstance(saturation_grow, (int, np.integer)) or saturation_grow < 0:
        raise InputError(f"saturation_grow={saturation_grow!r}: expected an int >= 0")
    dq = dq.astype(np.int32, copy=False)  # int16 DQ holds bit 16384 at most
    out = np.zeros(dq.shape, np.uint8)
    out[(dq & bad) != 0] |= IGNORE_BAD
    sat = (dq & instrument.saturation_bits) != 0
    out[grow(sat, saturation_grow)] |= IGNORE_SATURATED
    nod = (dq & instrument.nodata_bits) != 0
    if no_coverage is not None:
        no_coverage = _check_2d("no_coverage", no_coverage)
        if no_coverage.shape != dq.shape:
            raise InputError(f"no_coverage shape {no_coverage.shape} != dq shape {dq.shape}")
        nod |= no_coverage.astype(bool)
    out[nod] |= IGNORE_NODATA
    return out


def cr_from_crmask(crmask: np.ndarray) -> np.ndarray:
    """CR labels (uint8, 1 = CR) from an AstroDrizzle ``*_crmask.fits`` array (1 = good)."""
    crmask = _check_2d("crmask", crmask)
    return (crmask == 0).astype(np.uint8)


def _qderiv(img: np.ndarray) -> np.ndarray:
    """Largest absolute difference to the 4 neighbours (AstroDrizzle's ``qderiv``)."""
    # edge-padded, so a bright column on one edge says nothing about the other edge
    p = np.pad(img, 1, mode="edge")
    c = p[1:-1, 1:-1]
    d = np.abs(c - p[:-2, 1:-1])
    tmp = np.empty_like(d)
    for nb in (p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]):
        np.subtract(c, nb, out=tmp)
        np.abs(tmp, out=tmp)
        np.maximum(d, tmp, out=d)
    return d


def minimum_excess(n_exposures: int) -> float:
    """How much further below an exposure the minimum of ``n_exposures`` sits than the
    minimum of two, in sigma of one exposure (0 for two or fewer).

    The refinement's thresholds (``LabelConfig.refine_snr``) were set on 2-exposure
    visits, whose minimum reference sits 0.56 sigma below an exposure; the minimum of
    4 sits 1.03 sigma below it, so the same thresholds flag more noise (WFPC2, whose
    visits of any exposure count are refined). Adding this many sigma to the
    reference restores the 2-exposure offset: it is ``E[min of 2] - E[min of n]`` of
    unit normals (n = 3: 0.28, 4: 0.47, 6: 0.70), by numerical integration.

    Raises
    ------
    InputError
        ``n_exposures`` is not an integer >= 1.
    """
    if isinstance(n_exposures, bool) or not isinstance(n_exposures, (int, np.integer)) or n_exposures < 1:
        raise InputError(f"n_exposures={n_exposures!r}: expected an integer >= 1")
    if n_exposures <= 2:
        return 0.0
    from scipy.special import ndtr

    x = np.linspace(-10.0, 10.0, 20001)
    pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)

    def expected_max(n: int) -> float:
        # E[max of n] = -E[min of n]: the density of the maximum is n pdf cdf^(n-1)
        return float(np.sum(x * n * pdf * ndtr(x) ** (n - 1)) * (x[1] - x[0]))

    return expected_max(int(n_exposures)) - expected_max(2)


def refine_cr_mask(sci: np.ndarray, reference: np.ndarray, readnoise: float, *,
                   snr: tuple[float, float], deriv_scale: float,
                   reference_var: np.ndarray | None = None, initial: np.ndarray | None = None,
                   other_residual: np.ndarray | None = None,
                   other_scale: float | None = None) -> np.ndarray:
    """CR mask by hysteresis thresholding of an exposure against a CR-free reference.

    A pixel is a seed if ``sci - reference`` exceeds ``snr[0]`` sigma, where sigma
    adds the exposure's own noise and the reference's (``reference_var``; with two
    exposures the reference is the other exposure, whose noise is as large as this
    one's, which AstroDrizzle's noise model leaves out). Seeds grow into 8-connected
    neighbours exceeding ``snr[1]`` sigma, repeatedly: cosmic rays are connected,
    with their faint diffusion wings next to bright cores. A term
    ``deriv_scale * |gradient of reference|`` absorbs interpolation errors on sharp
    stars, as AstroDrizzle's ``driz_cr_scale`` does. ``other_residual`` is the
    residual (exposure minus reference) of the other exposure(s) resampled to this
    one's pixels: what a sharp star leaves in every exposure is no cosmic ray, which
    appears in one exposure only, so a positive residual there raises the threshold.

    Parameters
    ----------
    sci, reference : ndarray
        The exposure and the blotted CR-free reference in electrons (sky included).
    readnoise : float
        Read noise of the exposure in electrons.
    snr : (float, float)
        Seed and grow thresholds in sigma (``LabelConfig.refine_snr``; a seed
        threshold of ``inf`` only grows ``initial``).
    deriv_scale : float
        Weight of the reference's gradient in the threshold
        (``LabelConfig.refine_deriv_scale`` or ``grow_deriv_scale``).
    reference_var : ndarray, optional
        Variance of the reference (e-^2); default: the Poisson + read-noise variance
        of one exposure, i.e. the reference is another exposure.
    initial : ndarray of bool, optional
        Pixels already known to be CRs (e.g. AstroDrizzle's); they seed too.
    other_residual : ndarray, optional
        The other exposures' smallest residual at the same sky position (NaN where
        unknown), in electrons.
    other_scale : float
        Weight of ``other_residual`` in the threshold (``LabelConfig.refine_other_scale``);
        required with ``other_residual``.

    Returns
    -------
    ndarray of bool
    """
    sci, reference = _check_refine_inputs(sci, reference, readnoise, snr)
    var_one = np.abs(reference) + np.float32(readnoise) ** 2
    var = var_one + (var_one if reference_var is None else reference_var.astype(np.float32))
    sigma = np.sqrt(var)
    diff = sci - reference
    slack = np.float32(deriv_scale) * _qderiv(reference)
    if other_residual is not None:
        slack += _other_slack(other_residual, other_scale, sci.shape)
    seed = diff > snr[0] * sigma + slack
    if initial is not None:
        seed |= _check_2d("initial", initial).astype(bool)
    cand = diff > snr[1] * sigma + slack
    return _hysteresis(seed, cand)


def _check_refine_inputs(sci: np.ndarray, reference: np.ndarray, readnoise: float,
                         snr: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``sci`` and ``reference`` as float32 arrays of one shape; refuse bad noise or thresholds."""
    sci = _check_2d("sci", sci).astype(np.float32)
    reference = _check_2d("reference", reference).astype(np.float32)
    if sci.shape != reference.shape:
        raise InputError(f"sci shape {sci.shape} != reference shape {reference.shape}")
    if not readnoise >= 0:
        raise InputError(f"readnoise={readnoise!r}: expected >= 0")
    if len(snr) != 2 or not snr[0] >= snr[1] > 0:  # snr[0] = inf: grow ``initial`` only
        raise InputError(f"snr={snr!r}: expected (seed, grow) with seed >= grow > 0")
    return sci, reference


def _other_slack(other_residual: np.ndarray, other_scale: float | None,
                 shape: tuple[int, ...]) -> np.ndarray:
    """Threshold slack from the other exposures' positive residual (NaN: none)."""
    if other_scale is None:
        raise InputError("other_residual given without other_scale (LabelConfig.refine_other_scale)")
    other = _check_2d("other_residual", other_residual).astype(np.float32)
    if other.shape != shape:
        raise InputError(f"other_residual shape {other.shape} != sci shape {shape}")
    return np.float32(other_scale) * np.nan_to_num(np.maximum(other, 0), nan=0.0)


def _hysteresis(seed: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """The 8-connected regions of ``cand | seed`` that hold a seed pixel (one pass)."""
    lab, n = ndimage.label(cand | seed, structure=np.ones((3, 3), bool))
    if n == 0:
        return seed
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[seed])] = True
    keep[0] = False
    return keep[lab]


def label_scores(
    label: np.ndarray,
    truth_snr: np.ndarray,
    ignore: np.ndarray | None = None,
    source: np.ndarray | None = None,
    source_sigma: float = 5.0,
    noise: np.ndarray | None = None,
    bins: tuple[float, ...] = SNR_BINS,
) -> dict:
    """Counts that score CR labels against the injected truth (summable over chips).

    Parameters
    ----------
    label : ndarray of bool
        The CR labels.
    truth_snr : ndarray of float
        Injected CR charge over the pixel's noise sigma; 0 where no CR charge.
    ignore : ndarray, optional
        Pixels to leave out of every count (non-zero = ignored).
    source : ndarray, optional
        Noiseless astronomical signal; with ``noise``, pixels where
        ``source > source_sigma * noise`` are star/galaxy pixels.
    noise : ndarray, optional
        The per-pixel noise sigma.
    bins : tuple of float
        Edges of the signal-to-noise bins.

    Returns
    -------
    dict
        ``cr_pixels[b]``, ``cr_found[b]`` per bin, ``clean_pixels``, ``false_labels``,
        ``source_pixels``, ``false_source_labels``.
    """
    label = _check_2d("label", label).astype(bool)
    truth_snr = _check_2d("truth_snr", truth_snr)
    if label.shape != truth_snr.shape:
        raise InputError(f"label shape {label.shape} != truth shape {truth_snr.shape}")
    use = np.ones(label.shape, bool) if ignore is None else (np.asarray(ignore) == 0)
    is_cr = truth_snr > 0
    # an infinite SNR (zero noise) belongs to the top bin, not outside every bin
    idx = np.clip(np.digitize(truth_snr[is_cr & use], bins) - 1, 0, len(bins) - 2)
    found = label[is_cr & use]
    nb = len(bins) - 1
    out = {
        "cr_pixels": np.bincount(idx, minlength=nb)[:nb].tolist(),
        "cr_found": np.bincount(idx, weights=found, minlength=nb)[:nb].astype(int).tolist(),
        "clean_pixels": int(np.count_nonzero(~is_cr & use)),
        "false_labels": int(np.count_nonzero(label & ~is_cr & use)),
        "source_pixels": 0,
        "false_source_labels": 0,
    }
    if source is not None and noise is not None:
        src = (np.asarray(source) > source_sigma * np.asarray(noise)) & ~is_cr & use
        out["source_pixels"] = int(np.count_nonzero(src))
        out["false_source_labels"] = int(np.count_nonzero(label & src))
    return out
