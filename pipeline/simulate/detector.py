"""The detector: defects, exposure and calibration, saturation and read-out.

- Sky by filter from the instrument table times the exposure time; Poisson noise on
  source + sky + dark, dark subtracted as in calibrated data, Gaussian read noise per
  amplifier. Units are electrons.
- Defects in DQ: hot pixels (bit 16, residual dark that changes between exposures),
  warm pixels (64, small residual), a few bad columns (128), and saturation: charge
  above the full well bleeds along columns and is flagged 256 (and 2048 where the
  A-to-D converter would saturate). These are calacs's and calwf3's bits; another
  imager's come from its table entry (``Instrument.sim_dq``, passed as ``bits``).

Defects are fixed in detector coordinates for a whole visit; everything else is drawn
per exposure.  Each function draws from the generator it is given, in a fixed order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DQ_ADC_SATURATED",
    "DQ_BAD_COLUMN",
    "DQ_HOT",
    "DQ_SATURATED",
    "DQ_WARM",
    "Defects",
    "bleed_saturation",
    "draw_defects",
    "expose",
    "read_out",
    "readnoise_image",
    "saturate",
]

DQ_HOT = 16
DQ_WARM = 64
DQ_BAD_COLUMN = 128
DQ_SATURATED = 256
DQ_ADC_SATURATED = 2048
_FULL_CHIP_WIDTH = 4096.0  # n_bad_columns is per full-width chip


@dataclass(frozen=True)
class Defects:
    """The defects of one chip, fixed for the visit.

    Attributes
    ----------
    hot, warm : ndarray of bool
        Hot and warm pixels.
    hot_rate, warm_rate : ndarray
        Their dark current in e-/s (0 elsewhere).
    badcols : ndarray of int
        Bad columns.
    """

    hot: np.ndarray
    warm: np.ndarray
    hot_rate: np.ndarray
    warm_rate: np.ndarray
    badcols: np.ndarray


def draw_defects(rng: np.random.Generator, shape: tuple[int, int], *, hot_fraction: float,
                 warm_fraction: float, n_bad_columns: float) -> Defects:
    """Draw the hot and warm pixels and bad columns of one chip.

    ``n_bad_columns`` is the mean number on a full-width (4096-column) chip; narrower
    chips get proportionally fewer.
    """
    hot = rng.uniform(size=shape) < hot_fraction
    warm = (~hot) & (rng.uniform(size=shape) < warm_fraction)
    hot_rate = np.where(hot, rng.lognormal(math.log(0.3), 0.8, shape), 0.0)
    warm_rate = np.where(warm, rng.lognormal(math.log(0.03), 0.5, shape), 0.0)
    nbad = rng.poisson(n_bad_columns * shape[1] / _FULL_CHIP_WIDTH)
    badcols = rng.choice(shape[1], size=min(nbad, shape[1]), replace=False)
    return Defects(hot, warm, hot_rate, warm_rate, badcols)


def expose(rng: np.random.Generator, expected: np.ndarray, defects: Defects, *,
           exptime: float, dark_e: float) -> np.ndarray:
    """Collected charge after calibration (float64 e-), before cosmic rays and read-out.

    ``expected`` is source + sky + dark in e-.  The hot and warm pixels add their dark
    current; calibration removes the mean dark and the hot/warm pixels' reference
    dark, which is off by a random amount each exposure (hot pixels are unstable).
    """
    d = defects
    shape = expected.shape
    signal_e = rng.poisson(expected + (d.hot_rate + d.warm_rate) * exptime).astype(np.float64)
    ref_err = np.where(d.hot, rng.normal(0.0, 0.3, shape),
                       np.where(d.warm, rng.normal(0.0, 0.05, shape), 0.0))
    signal_e -= dark_e + (d.hot_rate + d.warm_rate) * exptime * (1.0 + ref_err)
    return signal_e


def saturate(signal_e: np.ndarray, *, full_well: float,
             adc_limit_e: float) -> tuple[np.ndarray, np.ndarray]:
    """Bleed ``signal_e`` in place; return the masks ``(saturated, adc_saturated)``.

    The A-to-D mask is taken before bleeding: it marks the charge the converter saw
    above ``adc_limit_e`` (its largest DN times the gain).
    """
    adc_sat = signal_e > adc_limit_e
    sat = bleed_saturation(signal_e, full_well)
    return sat, adc_sat


def bleed_saturation(img: np.ndarray, full_well: float) -> np.ndarray:
    """Clip at the full well and spread the excess along columns (in place).

    Returns the boolean mask of pixels that ended at the full well. Charge above the
    well of every saturated run fills the pixels above and below it alternately,
    which is how CCD bleed trails form.
    """
    sat = img >= full_well
    if not sat.any():
        return sat
    for c in np.unique(np.nonzero(sat)[1]):
        col = img[:, c].astype(np.float64)
        over = col >= full_well
        # contiguous runs of saturated pixels
        edges = np.diff(np.concatenate(([0], over.view(np.int8), [0])))
        starts, stops = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
        for a, b in zip(starts, stops):
            excess = float(np.sum(col[a:b] - full_well))
            col[a:b] = full_well
            _spill(col, a - 1, b, excess, full_well)
        img[:, c] = col
    return img >= full_well


def _spill(col: np.ndarray, lo: int, hi: int, excess: float, full_well: float) -> None:
    """Fill ``col`` below ``lo`` and from ``hi`` up, alternately, with ``excess`` charge."""
    ny = col.shape[0]
    while excess > 0 and (lo >= 0 or hi < ny):
        for j in (lo, hi):
            if 0 <= j < ny and excess > 0:
                room = full_well - col[j]
                take = min(room, excess) if room > 0 else 0.0
                col[j] += take
                excess -= take
        lo -= 1
        hi += 1


def readnoise_image(shape: tuple[int, int], left: float, right: float) -> np.ndarray:
    """Read noise (e-) per pixel: the left half of the columns read by one amplifier."""
    rn_img = np.empty(shape)
    half = shape[1] // 2
    rn_img[:, :half] = left
    rn_img[:, half:] = right
    return rn_img


def read_out(rng: np.random.Generator, signal_e: np.ndarray, rn_img: np.ndarray,
             defects: Defects, saturated: np.ndarray,
             adc_saturated: np.ndarray, bits: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Add read noise and bad-column junk; return ``(sci, dq)`` (float64 e-, int16 DQ).

    ``bits`` maps ``hot``, ``warm``, ``bad_column``, ``saturated``, ``adc_saturated``
    to the imager's DQ bits (default: calacs's). DQ is int16 (BITPIX=16), as in HST
    files: drizzlepac fails on uint16.
    """
    b = {"hot": DQ_HOT, "warm": DQ_WARM, "bad_column": DQ_BAD_COLUMN, "saturated": DQ_SATURATED,
         "adc_saturated": DQ_ADC_SATURATED, **(bits or {})}
    ny = signal_e.shape[0]
    sci = signal_e + rng.normal(0.0, 1.0, signal_e.shape) * rn_img
    dq = np.zeros(signal_e.shape, np.int16)
    dq[defects.hot] |= b["hot"]
    dq[defects.warm] |= b["warm"]
    badcols = defects.badcols
    if len(badcols):
        sci[:, badcols] += rng.normal(200.0, 80.0, (ny, len(badcols)))
        dq[:, badcols] |= b["bad_column"]
    dq[saturated] |= b["saturated"]
    dq[adc_saturated] |= b["adc_saturated"]
    return sci, dq
