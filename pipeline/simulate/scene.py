"""The scene: one sky frame of sources shared by every exposure, so that the stack agrees.

- ``extragalactic``: sparse galaxies (Sersic n=1 discs and n=4 spheroids, number counts
  rising 0.3 dex/mag, sizes shrinking with magnitude) and a few stars.
- ``globular_cluster``: crowded stars following a King (1962) profile (core radius 15",
  tidal radius 10') and a power-law luminosity function reaching saturation.
- ``resolved_galaxy``: very crowded faint stars on a smooth exponential disc of
  unresolved light.

Positions are pixels ``(v, u)`` of the sky frame (the reference tangent plane); rates
are e-/s.  :func:`render_scene` images the scene onto one chip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crforge.errors import InputError
from crforge.pipeline.names import FIELD_TYPES
from crforge.pipeline.simulate.sources import render_galaxies, render_point_sources

__all__ = ["ChipScene", "Scene", "build_scene", "king_radii", "powerlaw_mags", "render_scene"]

_FULL_CHIP_PIXELS = 4096 * 2048  # source counts are per full-size two-chip footprint
_EDGE = 40  # pixels: stars this far off a frame or chip still shine onto it (PSF wing)
_GALAXY_EDGE = 100  # the same for galaxies (their stamps reach 4 effective radii)


@dataclass
class Scene:
    """Sources in the sky frame.

    Attributes
    ----------
    star_v, star_u : ndarray
        Star positions (frame pixels).
    star_rate : ndarray
        Star count rates (e-/s).
    gal : dict
        Galaxy arrays ``v``, ``u``, ``rate`` (e-/s), ``r_e`` (pixels), ``n``, ``q``, ``pa``.
    smooth : dict or None
        Exponential disc of unresolved light: centre ``v``, ``u``, scale length ``h``,
        axis ratio ``q`` and central ``peak`` (e-/s/pixel).
    """

    star_v: np.ndarray
    star_u: np.ndarray
    star_rate: np.ndarray
    gal: dict
    smooth: dict | None


@dataclass
class ChipScene:
    """The scene imaged onto one chip: noiseless source image and the stars on the chip."""

    source: np.ndarray  # float32 e-, no sky
    star_y: np.ndarray
    star_x: np.ndarray
    star_e: np.ndarray


def king_radii(rng: np.random.Generator, n: int, rc: float, rt: float) -> np.ndarray:
    """``n`` radii drawn from a King (1962) surface density (core ``rc``, tidal ``rt``)."""
    r = np.linspace(0, rt, 4000)
    surf = (1 / np.sqrt(1 + (r / rc) ** 2) - 1 / np.sqrt(1 + (rt / rc) ** 2)) ** 2
    cdf = np.cumsum(surf * r)
    cdf /= cdf[-1]
    return np.interp(rng.uniform(size=n), cdf, r)


def powerlaw_mags(rng: np.random.Generator, n: int, alpha: float, m_bright: float,
                  m_faint: float) -> np.ndarray:
    """``n`` magnitudes with dN/dm ~ 10^(alpha m) between ``m_bright`` and ``m_faint``."""
    a = alpha * math.log(10)
    u = rng.uniform(size=n)
    lo, hi = math.exp(a * m_bright), math.exp(a * m_faint)
    return np.log(lo + u * (hi - lo)) / a  # inverse CDF


def _empty_galaxies() -> dict:
    empty = np.zeros(0)
    return {k: empty for k in ("v", "u", "rate", "r_e", "n", "q", "pa")}


def _extragalactic(rng, scale_n, fh, fw, zp):
    """Few stars, many galaxies: ``(mags, sv, su, gal, smooth)``."""
    ns = rng.poisson(60 * scale_n)
    mags = powerlaw_mags(rng, ns, 0.1, 16.0, 26.0)
    sv, su = rng.uniform(0, fh, ns), rng.uniform(0, fw, ns)
    ng = rng.poisson(3000 * scale_n)
    gm = powerlaw_mags(rng, ng, 0.3, 19.0, 27.5)
    r_e = 10 ** (-0.15 * (gm - 22.0)) * 6.0 * rng.lognormal(0, 0.35, ng)
    # the draws happen in this order: v, u, n, q, pa
    gal = {"v": rng.uniform(0, fh, ng), "u": rng.uniform(0, fw, ng),
           "rate": 10 ** (-0.4 * (gm - zp)), "r_e": np.clip(r_e, 0.8, 60),
           "n": np.where(rng.uniform(size=ng) < 0.7, 1.0, 4.0),
           "q": rng.uniform(0.3, 1.0, ng), "pa": rng.uniform(0, np.pi, ng)}
    return mags, sv, su, gal, None


def _globular_cluster(rng, scale_n, fh, fw, zp):
    """Crowded stars in a King profile: ``(mags, sv, su, gal, smooth)``."""
    ns = rng.poisson(150000 * scale_n)
    mags = powerlaw_mags(rng, ns, 0.25, 15.5, 27.0)
    # King core ~15" and tidal radius ~10' on a full-size footprint; lengths scale
    # with the footprint so that small test visits keep the same crowding.
    rc, rt = 0.07 * fw, 3.0 * fw
    r = king_radii(rng, ns, rc, rt)
    th = rng.uniform(0, 2 * np.pi, ns)
    cv, cu = fh * rng.uniform(0.35, 0.65), fw * rng.uniform(0.3, 0.7)
    sv, su = cv + r * np.sin(th), cu + r * np.cos(th)
    return mags, sv, su, _empty_galaxies(), None


def _resolved_galaxy(rng, scale_n, fh, fw, zp):
    """Very crowded faint stars on a smooth disc: ``(mags, sv, su, gal, smooth)``."""
    ns = rng.poisson(300000 * scale_n)
    mags = powerlaw_mags(rng, ns, 0.35, 21.5, 29.0)
    # stars follow the disc light: exponential in radius
    hl = 0.3 * fw * rng.uniform(0.8, 1.3)
    cv, cu = fh * rng.uniform(0.2, 0.8), fw * rng.uniform(0.1, 0.4)
    r = rng.gamma(2.0, hl, ns)
    th = rng.uniform(0, 2 * np.pi, ns)
    sv, su = cv + r * np.sin(th) * 0.7, cu + r * np.cos(th)
    smooth = {"v": cv, "u": cu, "h": hl, "q": 0.7, "peak": rng.uniform(1.0, 3.0)}
    return mags, sv, su, _empty_galaxies(), smooth


_FIELDS = {"extragalactic": _extragalactic, "globular_cluster": _globular_cluster,
           "resolved_galaxy": _resolved_galaxy}


def build_scene(rng: np.random.Generator, field_type: str, frame: tuple[int, int], *,
                density: float, zeropoint: float) -> Scene:
    """Draw the sources of one field in the sky frame.

    Parameters
    ----------
    rng : numpy.random.Generator
        The scene's own stream.
    field_type : str
        One of :data:`crforge.pipeline.names.FIELD_TYPES`.
    frame : tuple of int
        ``(height, width)`` of the sky frame in pixels.
    density : float
        Multiplies the number of stars and galaxies.
    zeropoint : float
        AB magnitude giving 1 e-/s in the filter.

    Raises
    ------
    InputError
        Unknown ``field_type``.
    """
    if field_type not in _FIELDS:
        raise InputError(f"field_type={field_type!r}: expected one of {FIELD_TYPES}")
    fh, fw = frame
    scale_n = density * (fh * fw) / (2 * _FULL_CHIP_PIXELS)
    mags, sv, su, gal, smooth = _FIELDS[field_type](rng, scale_n, fh, fw, zeropoint)
    keep = (sv > -_EDGE) & (sv < fh + _EDGE) & (su > -_EDGE) & (su < fw + _EDGE)
    return Scene(star_v=sv[keep], star_u=su[keep],
                 star_rate=10 ** (-0.4 * (mags[keep] - zeropoint)), gal=gal, smooth=smooth)


def render_scene(scene: Scene, shape: tuple[int, int], offset: tuple[float, float], *,
                 exptime: float, fwhm: float | tuple[float, float], scale: float = 1.0) -> ChipScene:
    """Image the scene onto one chip (noiseless, e-, no sky).

    Parameters
    ----------
    scene : Scene
        The sources.
    shape : tuple of int
        ``(ny, nx)`` of the chip.
    offset : tuple of float
        Frame pixel ``(v, u)`` of the chip's pixel (0, 0): frame = chip + offset.
    exptime : float
        Seconds.
    fwhm : float or (float, float)
        Core FWHM of the PSF in frame pixels, or ``(fwhm_y, fwhm_x)``.
    scale : float
        Frame pixels per chip pixel (a chip of finer pixels than the frame's, WFPC2's
        PC: < 1): positions, sizes and the PSF in chip pixels, surface brightness
        per chip pixel.
    """
    ny, nx = shape
    off_v, off_u = offset
    fwhm = tuple(f / scale for f in fwhm) if isinstance(fwhm, tuple) else fwhm / scale
    sy, sx = (scene.star_v - off_v) / scale, (scene.star_u - off_u) / scale
    on = (sy > -_EDGE) & (sy < ny + _EDGE) & (sx > -_EDGE) & (sx < nx + _EDGE)
    star_e = scene.star_rate[on] * exptime
    source = render_point_sources(shape, sy[on], sx[on], star_e, fwhm)
    gal = scene.gal
    if gal["v"].size:
        gy, gx = (gal["v"] - off_v) / scale, (gal["u"] - off_u) / scale
        e = _GALAXY_EDGE
        gon = (gy > -e) & (gy < ny + e) & (gx > -e) & (gx < nx + e)
        source += render_galaxies(shape, gy[gon], gx[gon], gal["rate"][gon] * exptime,
                                  gal["r_e"][gon] / scale, gal["n"][gon], gal["q"][gon],
                                  gal["pa"][gon], fwhm)
    if scene.smooth is not None:
        sm = scene.smooth
        yy = np.arange(ny)[:, None] * scale + off_v - sm["v"]
        xx = np.arange(nx)[None, :] * scale + off_u - sm["u"]
        r = np.sqrt(xx**2 + (yy / sm["q"]) ** 2)
        source += (sm["peak"] * scale**2 * exptime * np.exp(-r / sm["h"])).astype(np.float32)
    return ChipScene(source=source, star_y=sy[on], star_x=sx[on], star_e=star_e)
