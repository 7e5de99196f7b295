"""The truth file of a simulated exposure: what was injected, exactly.

``<root>_truth.fits`` holds, per chip, a table ``CR`` of every pixel that received
cosmic-ray charge (x, y, charge in e-, and the noise sigma of that pixel without the
CR, so that charge/sigma is its signal-to-noise ratio), a table ``STARS`` of point
sources (x, y, flux in e-), and the noiseless source image ``SOURCE`` (e-, no sky).
The primary header carries ``SKY_E`` and ``DARK_E``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from crforge.errors import InputError

__all__ = ["ChipInjection", "TruthChip", "read_truth", "write_truth"]


@dataclass
class TruthChip:
    """Truth of one chip of one exposure, as read back by :func:`read_truth`."""

    extver: int
    shape: tuple[int, int]
    cr_y: np.ndarray
    cr_x: np.ndarray
    cr_charge: np.ndarray
    cr_sigma: np.ndarray
    stars: np.ndarray = field(repr=False)
    source: np.ndarray | None = field(default=None, repr=False)
    #: The exposure's sky in e- per pixel (``SKY_E``): ``source + sky_e`` is the
    #: calibrated pixel without noise and cosmic rays.
    sky_e: float = 0.0

    def cr_mask(self) -> np.ndarray:
        """Boolean image of pixels with any cosmic-ray charge."""
        m = np.zeros(self.shape, bool)
        m[self.cr_y, self.cr_x] = True
        return m

    def cr_snr_image(self) -> np.ndarray:
        """float32 image of charge/sigma at CR pixels, 0 elsewhere."""
        m = np.zeros(self.shape, np.float32)
        m[self.cr_y, self.cr_x] = self.cr_charge / self.cr_sigma
        return m


@dataclass
class ChipInjection:
    """What the simulator put on one chip, as :func:`write_truth` records it.

    Attributes
    ----------
    extver : int
        The chip's ``EXTVER``.
    shape : tuple of int
        ``(ny, nx)`` of the chip.
    cr_y, cr_x, cr_charge, cr_sigma : ndarray
        Every pixel with cosmic-ray charge: position, charge (e-) and the pixel's noise
        (e-) without the cosmic ray.
    n_events : int
        Cosmic-ray events.
    star_y, star_x, star_e : ndarray
        Point sources on the chip: position (chip pixels) and flux (e-).
    source : ndarray
        float32 noiseless source image (e-, no sky).
    """

    extver: int
    shape: tuple[int, int]
    cr_y: np.ndarray
    cr_x: np.ndarray
    cr_charge: np.ndarray
    cr_sigma: np.ndarray
    n_events: int
    star_y: np.ndarray
    star_x: np.ndarray
    star_e: np.ndarray
    source: np.ndarray

    @classmethod
    def from_images(cls, extver: int, cr_image: np.ndarray, n_events: int, *,
                    expected: np.ndarray, readnoise: np.ndarray, star_y: np.ndarray,
                    star_x: np.ndarray, star_e: np.ndarray, source: np.ndarray) -> ChipInjection:
        """Record the cosmic-ray pixels of ``cr_image``.

        ``expected`` (source + sky + dark, e-) and ``readnoise`` (e-) give each pixel's
        noise without the cosmic ray.
        """
        ty, tx = np.nonzero(cr_image > 0)
        sigma = np.sqrt(expected[ty, tx] + readnoise[ty, tx] ** 2)
        return cls(extver, cr_image.shape, ty, tx, cr_image[ty, tx], sigma.astype(np.float32),
                   n_events, star_y, star_x, star_e, source)


def _chip_hdus(c: ChipInjection) -> list[fits.hdu.base.ExtensionHDU]:
    """The ``CR``, ``STARS`` and ``SOURCE`` extensions of one chip."""
    cols = [fits.Column(name="Y", format="J", array=c.cr_y.astype(np.int32)),
            fits.Column(name="X", format="J", array=c.cr_x.astype(np.int32)),
            fits.Column(name="CHARGE", format="E", array=c.cr_charge),
            fits.Column(name="SIGMA", format="E", array=c.cr_sigma)]
    th = fits.BinTableHDU.from_columns(cols, name="CR")
    th.header["EXTVER"] = c.extver
    th.header["CHIPNY"], th.header["CHIPNX"] = c.shape
    th.header["NEVENTS"] = c.n_events
    scols = [fits.Column(name="Y", format="E", array=c.star_y.astype(np.float32)),
             fits.Column(name="X", format="E", array=c.star_x.astype(np.float32)),
             fits.Column(name="FLUX", format="E", array=c.star_e.astype(np.float32))]
    sh = fits.BinTableHDU.from_columns(scols, name="STARS")
    sh.header["EXTVER"] = c.extver
    ch = fits.CompImageHDU(c.source, name="SOURCE", compression_type="RICE_1",
                           quantize_level=16.0)
    ch.header["EXTVER"] = c.extver
    ch.header["BUNIT"] = "ELECTRONS"
    return [th, sh, ch]


def write_truth(path: str | os.PathLike, chips: list[ChipInjection], *, rootname: str,
                sky_e: float, dark_e: float, pointing_error: tuple[float, float] = (0.0, 0.0)) -> Path:
    """Write the truth file of one exposure (a new file); return its path.

    Parameters
    ----------
    path : path-like
        The file to create; it must not exist.
    chips : list of ChipInjection
        One per chip, in extension order.
    rootname : str
        The exposure's ``ROOTNAME``.
    sky_e, dark_e : float
        Sky and mean dark of the exposure in e- per pixel.
    pointing_error : tuple of float
        ``(dy, dx)``: how far (pixels) the exposure's header WCS is off its true
        pointing (written as ``PNTERRY``, ``PNTERRX``).
    """
    prim = fits.PrimaryHDU()
    prim.header["ROOTNAME"] = rootname
    prim.header["SKY_E"] = sky_e
    prim.header["DARK_E"] = dark_e
    prim.header["PNTERRY"] = (pointing_error[0], "header WCS minus true pointing, y pixels")
    prim.header["PNTERRX"] = (pointing_error[1], "header WCS minus true pointing, x pixels")
    hdus = [prim]
    for c in chips:
        hdus.extend(_chip_hdus(c))
    fits.HDUList(hdus).writeto(path)
    return Path(path)


def read_truth(path: str | os.PathLike, *, source: bool = False) -> dict[int, TruthChip]:
    """Read a ``*_truth.fits`` file written by :func:`write_truth`.

    Parameters
    ----------
    path : path-like
        The truth file.
    source : bool
        Also read the noiseless source image of each chip.

    Returns
    -------
    dict
        ``extver -> TruthChip``.

    Raises
    ------
    InputError
        The file has no ``CR`` extension, or a chip lacks a keyword or extension.
    """
    out = {}
    with fits.open(path) as hdul:
        sky_e = float(hdul[0].header.get("SKY_E", 0.0))
        for hdu in hdul:
            if hdu.name != "CR":
                continue
            try:
                out[hdu.header["EXTVER"]] = _truth_chip(hdul, hdu, source, sky_e)
            except KeyError as exc:
                raise InputError(f"{path}: CR extension {hdu.header.get('EXTVER')!r}: "
                                 f"{exc.args[0]}; not a crforge truth file") from None
    if not out:
        raise InputError(f"{path}: no CR extensions; not a crforge truth file")
    return out


def _truth_chip(hdul: fits.HDUList, hdu: fits.BinTableHDU, source: bool, sky_e: float) -> TruthChip:
    """One chip of an open truth file (``KeyError`` for a missing keyword or extension)."""
    ev = hdu.header["EXTVER"]
    shape = (hdu.header["CHIPNY"], hdu.header["CHIPNX"])
    d = hdu.data
    stars = np.asarray(hdul["STARS", ev].data)
    src = np.asarray(hdul["SOURCE", ev].data, dtype=np.float32) if source else None
    return TruthChip(ev, shape, np.asarray(d["Y"], np.int64), np.asarray(d["X"], np.int64),
                     np.asarray(d["CHARGE"], np.float32), np.asarray(d["SIGMA"], np.float32),
                     stars, src, sky_e)
