"""Where each chip looks: chip layout, dither offsets, the sky frame and TAN WCS headers.

The scene lives in one sky frame (pixels of a reference tangent plane).  A chip pixel
``(y, x)`` of an exposure dithered by ``(dy, dx)`` sees frame pixel
``(y, x) + chip origin + (dy, dx) + pad``; every exposure gets a TAN WCS consistent
with its offset, so the dithers are what AstroDrizzle sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from crforge.errors import InputError
from crforge.pipeline.instruments import Instrument

__all__ = [
    "ChipPlacement",
    "SkyFrame",
    "chip_layout",
    "dither_offsets",
    "sky_frame",
    "wcs_header",
]

_DITHERS = {
    "box": [(0.0, 0.0), (1.5, 5.0), (4.5, 2.5), (3.0, -2.5)],
    "line": [(0.0, 0.0), (1.5, 2.5)],
    "none": [(0.0, 0.0)],
}
_JITTER = 0.02  # pixels of pointing jitter per exposure


@dataclass(frozen=True)
class ChipPlacement:
    """One chip of the simulated imager and where it sits in the focal plane.

    Attributes
    ----------
    extver, ccdchip : int
        ``EXTVER`` of its extensions and its ``CCDCHIP``.
    shape : tuple of int
        ``(ny, nx)``, possibly shrunk for small test visits.
    origin_y, origin_x : float
        Focal-plane pixel of its pixel (0, 0).
    amps : str
        Its amplifiers, left half first.
    scale : float
        Frame pixels per chip pixel (1 but for a chip of another pixel scale, WFPC2's PC).
    """

    extver: int
    ccdchip: int
    shape: tuple[int, int]
    origin_y: float
    origin_x: float
    amps: str
    scale: float = 1.0


@dataclass(frozen=True)
class SkyFrame:
    """The scene's frame: ``shape`` ``(height, width)``, ``pad`` and the reference pixel."""

    shape: tuple[int, int]
    pad: int
    crpix_ref: tuple[float, float]

    def offset(self, chip: ChipPlacement, dy: float, dx: float) -> tuple[float, float]:
        """Frame pixel ``(v, u)`` of the chip's pixel (0, 0) at dither ``(dy, dx)``."""
        return chip.origin_y + dy + self.pad, chip.origin_x + dx + self.pad


def chip_layout(inst: Instrument, chip_shape: tuple[int, ...] | None) -> list[ChipPlacement]:
    """The instrument's chips, shrunk to ``chip_shape`` when given (the gaps are kept)."""
    out = []
    full_ny, full_nx = inst.chips[0].shape
    for c in inst.chips:
        shape = tuple(chip_shape) if chip_shape is not None else c.shape
        oy, ox = c.origin
        if chip_shape is not None and oy > 0:
            oy = shape[0] + oy - full_ny
        if chip_shape is not None and ox > 0:
            ox = shape[1] + ox - full_nx
        scale = (c.pixel_scale or inst.pixel_scale) / inst.pixel_scale
        out.append(ChipPlacement(c.extver, c.ccdchip, shape, oy, ox, c.amps, scale))
    return out


def sky_frame(layout: list[ChipPlacement], pad: int = 30) -> SkyFrame:
    """The frame covering every chip with ``pad`` pixels to spare for the dithers."""
    fh = int(max(c.origin_y + c.shape[0] * c.scale for c in layout) + 2 * pad)
    fw = int(max(c.origin_x + c.shape[1] * c.scale for c in layout) + 2 * pad)
    return SkyFrame(shape=(fh, fw), pad=pad, crpix_ref=(fh / 2.0 + 1.0, fw / 2.0 + 1.0))


def dither_offsets(n: int, pattern: str, rng: np.random.Generator) -> np.ndarray:
    """Pointing offsets ``(dy, dx)`` in pixels for ``n`` exposures.

    ``box`` is the ACS-WFC-DITHER-BOX pattern (half-pixel sampling with a few pixels
    of step), ``line`` the two-point line, ``none`` a CR-split; patterns longer than
    their template repeat with an integer offset. All get 0.02-pixel pointing jitter.

    Raises
    ------
    InputError
        ``n`` < 1 or an unknown ``pattern``.
    """
    if n < 1:
        raise InputError(f"n={n!r}: expected >= 1")
    if pattern not in _DITHERS:
        raise InputError(f"pattern={pattern!r}: expected one of {sorted(_DITHERS)}")
    t = _DITHERS[pattern]
    out = np.array([t[i % len(t)] for i in range(n)], dtype=float)
    out += np.array([[7.0 * (i // len(t)), 11.0 * (i // len(t))] for i in range(n)])
    out += rng.normal(0.0, _JITTER, size=out.shape)
    return out


def wcs_header(inst: Instrument, frame: SkyFrame, chip: ChipPlacement, dy: float, dx: float, *,
               ra: float, dec: float, orient: float) -> fits.Header:
    """TAN WCS of one chip at dither ``(dy, dx)``; the frame's reference pixel is at ``ra, dec``.

    ``orient`` (degrees) is the position angle of the chip's y axis.
    """
    oy, ox = chip.origin_y + frame.pad, chip.origin_x + frame.pad
    k = chip.scale  # chip pixel (0-based) p sits at frame pixel o + d + p * k
    s = inst.pixel_scale * k / 3600.0
    th = math.radians(orient)
    h = fits.Header()
    h["WCSAXES"] = 2
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CRVAL1"], h["CRVAL2"] = ra, dec
    h["CRPIX1"] = (frame.crpix_ref[1] - 1.0 - ox - dx) / k + 1.0
    h["CRPIX2"] = (frame.crpix_ref[0] - 1.0 - oy - dy) / k + 1.0
    h["CD1_1"] = -s * math.cos(th)
    h["CD1_2"] = s * math.sin(th)
    h["CD2_1"] = s * math.sin(th)
    h["CD2_2"] = s * math.cos(th)
    h["ORIENTAT"] = orient
    h["WCSNAME"] = "CRFORGE"
    h["LTV1"], h["LTV2"], h["LTM1_1"], h["LTM2_2"] = 0.0, 0.0, 1.0, 1.0
    h["IDCSCALE"] = inst.pixel_scale * k
    return h
