"""Simulated HST visits: dithered FLC-style exposures with exact cosmic-ray truth.

The simulator is crforge's offline data source and the yardstick for label quality.
A visit is N exposures of one field through one filter, each written as a calibrated
(FLC-like) multi-extension FITS file that AstroDrizzle accepts, plus a truth file with
every injected cosmic-ray pixel and the noiseless source image.

What is modelled, and from where
--------------------------------
Scene (one sky frame shared by all exposures, so that the stack is consistent):

- ``extragalactic``: sparse galaxies (Sersic n=1 discs and n=4 spheroids, number counts
  rising 0.3 dex/mag, sizes shrinking with magnitude) and a few stars.
- ``globular_cluster``: crowded stars following a King (1962) profile (core radius 15",
  tidal radius 10') and a power-law luminosity function reaching saturation.
- ``resolved_galaxy``: very crowded faint stars on a smooth exponential disc of
  unresolved light.

Optics and detector:

- PSF: pixel-integrated sum of a core Gaussian with the filter's FWHM from the
  instrument table (about 2 pixels: undersampled, as sharp as a cosmic ray), a halo
  Gaussian 2.5x wider (20% of the light) and a broad 8-pixel wing (5%).
- Dithers: the ACS box and line patterns (sub-pixel and integer offsets in pixels)
  plus 0.02-pixel pointing jitter; every exposure gets a TAN WCS consistent with its
  offset, so the dithers are what AstroDrizzle sees.
- Sky by filter from the instrument table times the exposure time; Poisson noise on
  source + sky + dark, dark subtracted as in calibrated data, Gaussian read noise per
  amplifier, gain keywords per amplifier. Units are electrons (``BUNIT=ELECTRONS``).
- Defects in DQ: hot pixels (bit 16, residual dark that changes between exposures),
  warm pixels (64, small residual), a few bad columns (128), and saturation: charge
  above the full well bleeds along columns and is flagged 256 (and 2048 where the
  A-to-D converter would saturate).

Cosmic rays (all numbers per instrument table, overridable in :class:`SimulateConfig`):

- Rate: about 1.2 events s^-1 cm^-2 for ACS/WFC and WFC3/UVIS, the order of the
  rates Miles et al. (2021, ApJ 918, 86) measured over 1.2 billion HST cosmic rays
  (they vary with the solar cycle), i.e. about 23 events per second on a 4096x2048
  chip of 15 um pixels. This gives of order 1% of pixels above a few sigma in 500 s,
  against the 1.5-3% in 1000 s of Riess (2002, ACS ISR 2002-07).
- Incidence: isotropic flux on a flat detector (cos(theta)^2 uniform); the track
  crosses the depletion depth, so its projected length is depth*tan(theta)/pitch:
  most events are compact (1-2 pixels before diffusion), a tail are long tracks;
  after diffusion the sizes peak at 4-9 pixels with a long tail (Riess 2002 finds
  4-5 pixels above his threshold).
- Deposit: proportional to the path length in silicon (45 e-/um, the thin-layer
  per-micron loss that puts the median event at the observed ~1000 e-) with Landau-like
  (Moyal) fluctuations along the track, and 3% of events with a heavy power-law tail
  (nuclei). The result has a cut-off near 500 e- and a median near 1000 e- for
  ACS/WFC (Riess 2002), with a tail to 10^5 e-.
- Charge diffusion: each deposit spreads with a 0.45-pixel Gaussian, integrated over
  3x3 pixels, so a hit lights 4-9 pixels.

Truth (``<root>_truth.fits``): per chip a table ``CR`` of every pixel that received
cosmic-ray charge (x, y, charge in e-, and the noise sigma of that pixel without the
CR, so that charge/sigma is its signal-to-noise ratio), a table ``STARS`` of point
sources (x, y, flux in e-), and the noiseless source image ``SOURCE`` (e-, no sky).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy import ndimage, signal, special, stats

from crforge.errors import InputError
from crforge.pipeline.instruments import Instrument
from crforge.pipeline.simulate.config import SimulateConfig

logger = logging.getLogger(__name__)

__all__ = [
    "FIELD_TYPES",
    "simulate_visit",
    "read_truth",
    "TruthChip",
    "dither_offsets",
    "render_cosmic_rays",
    "sample_cosmic_rays",
    "render_point_sources",
    "psf_components",
]

FIELD_TYPES = ("extragalactic", "globular_cluster", "resolved_galaxy")
DIFFUSION_SIGMA = 0.45  # pixels; ACS/WFC CCDs spread a point deposit over ~3x3 pixels
MIP_E_PER_UM = 45.0  # e-h pairs per micron: puts the median event near 1000 e- (Riess 2002)
MAX_TRACK_PIX = 150.0  # grazing tracks are cut at this projected length






# --------------------------------------------------------------------------------------
# Pure functions: geometry, PSF, sources, cosmic rays
# --------------------------------------------------------------------------------------


def dither_offsets(n: int, pattern: str, rng: np.random.Generator) -> np.ndarray:
    """Pointing offsets ``(dy, dx)`` in pixels for ``n`` exposures.

    ``box`` is the ACS-WFC-DITHER-BOX pattern (half-pixel sampling with a few pixels
    of step), ``line`` the two-point line, ``none`` a CR-split; patterns longer than
    their template repeat with an integer offset. All get 0.02-pixel pointing jitter.
    """
    if n < 1:
        raise InputError(f"n={n!r}: expected >= 1")
    templates = {
        "box": [(0.0, 0.0), (1.5, 5.0), (4.5, 2.5), (3.0, -2.5)],
        "line": [(0.0, 0.0), (1.5, 2.5)],
        "none": [(0.0, 0.0)],
    }
    if pattern not in templates:
        raise InputError(f"pattern={pattern!r}: expected one of {sorted(templates)}")
    t = templates[pattern]
    out = np.array([t[i % len(t)] for i in range(n)], dtype=float)
    out += np.array([[7.0 * (i // len(t)), 11.0 * (i // len(t))] for i in range(n)])
    out += rng.normal(0.0, 0.02, size=out.shape)
    return out


def _pix_gauss_1d(centres: np.ndarray, sigma: float, half: int) -> np.ndarray:
    """Pixel-integrated 1D Gaussian weights around the nearest pixel of each centre.

    Returns ``[N, 2*half+1]`` weights for pixels ``round(c) - half ... round(c) + half``.
    """
    base = np.floor(centres + 0.5)
    k = np.arange(-half, half + 1)
    edges_lo = (base[:, None] + k[None, :] - 0.5 - centres[:, None]) / (sigma * math.sqrt(2))
    edges_hi = edges_lo + 1.0 / (sigma * math.sqrt(2))
    return 0.5 * (special.erf(edges_hi) - special.erf(edges_lo))


def psf_components(fwhm: float) -> list[tuple[float, float]]:
    """The PSF as ``[(weight, sigma_pixels), ...]`` Gaussians (weights sum to 1).

    The first two are rendered pixel-integrated on stamps; the last is the broad wing.
    """
    s = fwhm / 2.3548
    return [(0.75, s), (0.20, 2.5 * s), (0.05, 8.0)]


def render_point_sources(
    shape: tuple[int, int],
    y: np.ndarray,
    x: np.ndarray,
    flux: np.ndarray,
    fwhm: float,
    chunk: int = 20000,
) -> np.ndarray:
    """Render point sources with the pixel-integrated PSF into a new float32 image.

    Parameters
    ----------
    shape : tuple
        ``(ny, nx)`` of the image.
    y, x : ndarray
        Centres in 0-based pixel coordinates (pixel centres at integers).
    flux : ndarray
        Total flux of each source (any unit); the image carries the same unit.
    fwhm : float
        Core FWHM in pixels.
    """
    y = np.asarray(y, float)
    x = np.asarray(x, float)
    flux = np.asarray(flux, float)
    if not (y.shape == x.shape == flux.shape):
        raise InputError("y, x and flux must have the same shape")
    ny, nx = shape
    img = np.zeros(ny * nx, dtype=np.float64)
    comps = psf_components(fwhm)
    half = int(math.ceil(3.2 * comps[1][1]))
    for lo in range(0, y.size, chunk):
        yy, xx, ff = y[lo:lo + chunk], x[lo:lo + chunk], flux[lo:lo + chunk]
        stamp = None
        for w, s in comps[:2]:
            gy = _pix_gauss_1d(yy, s, half)
            gx = _pix_gauss_1d(xx, s, half)
            part = w * gy[:, :, None] * gx[:, None, :]
            stamp = part if stamp is None else stamp + part
        stamp *= ff[:, None, None]
        k = np.arange(-half, half + 1)
        iy = (np.floor(yy + 0.5).astype(np.int64)[:, None] + k)[:, :, None]
        ix = (np.floor(xx + 0.5).astype(np.int64)[:, None] + k)[:, None, :]
        iy, ix = np.broadcast_arrays(iy, ix)
        ok = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
        img += np.bincount((iy[ok] * nx + ix[ok]), weights=stamp[ok], minlength=ny * nx)
    img = img.reshape(ny, nx)
    # Broad wing: smooth, so it is rendered on a 4x coarser grid. Sources are splatted
    # bilinearly there (keeping their centroids exact, so the wing moves with the
    # dithers), blurred, and interpolated back.
    w, s = comps[2]
    if w > 0 and y.size:
        b = 4
        m = int(math.ceil(4 * s / b)) + 2  # coarse margin: sources off the chip shine in
        by, bx = -(-ny // b) + 2 * m, -(-nx // b) + 2 * m
        # coarse-grid coordinates: pixel centre j of coarse pixel k sits at (j + 0.5)/b - 0.5
        cy = (y + 0.5) / b - 0.5 + m
        cx = (x + 0.5) / b - 0.5 + m
        ok = (cy >= 0) & (cy < by - 1) & (cx >= 0) & (cx < bx - 1)
        cy, cx, ff = cy[ok], cx[ok], w * flux[ok]
        y0, x0 = np.floor(cy).astype(np.int64), np.floor(cx).astype(np.int64)
        fy, fx = cy - y0, cx - x0
        coarse = np.zeros(by * bx)
        for dy_, wy in ((0, 1 - fy), (1, fy)):
            for dx_, wx in ((0, 1 - fx), (1, fx)):
                coarse += np.bincount((y0 + dy_) * bx + (x0 + dx_), weights=ff * wy * wx,
                                      minlength=by * bx)
        coarse = ndimage.gaussian_filter(coarse.reshape(by, bx), s / b, mode="constant")
        # back to full resolution by bilinear interpolation at the fine pixel centres
        fy_ = (np.arange(ny) + 0.5) / b - 0.5 + m
        fx_ = (np.arange(nx) + 0.5) / b - 0.5 + m
        tmp = np.empty((by, nx))
        for r in range(by):
            tmp[r] = np.interp(fx_, np.arange(bx), coarse[r])
        fine = np.empty((ny, nx))
        for c0 in range(0, nx, 512):
            sl = slice(c0, min(c0 + 512, nx))
            iy0 = np.clip(np.floor(fy_).astype(np.int64), 0, by - 2)
            t = (fy_ - iy0)[:, None]
            fine[:, sl] = tmp[iy0, sl] * (1 - t) + tmp[iy0 + 1, sl] * t
        img += fine / (b * b)
    return img.astype(np.float32)


def _sersic_bn(n: float) -> float:
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n)


def render_galaxies(
    shape: tuple[int, int],
    y: np.ndarray,
    x: np.ndarray,
    flux: np.ndarray,
    r_e: np.ndarray,
    n: np.ndarray,
    q: np.ndarray,
    pa: np.ndarray,
    fwhm: float,
) -> np.ndarray:
    """Render elliptical Sersic galaxies convolved with the PSF (float32 image).

    Profiles are sampled 3x3 per pixel, truncated at 4 effective radii, normalised to
    ``flux`` inside the stamp, then convolved with the core+halo PSF.
    """
    ny, nx = shape
    img = np.zeros(shape, dtype=np.float32)
    sub = (np.arange(3) - 1) / 3.0
    for yi, xi, fi, ri, ni, qi, pai in zip(y, x, flux, r_e, n, q, pa):
        rad = int(min(max(4.0 * ri, 4), 200))
        y0, y1 = max(int(yi) - rad, 0), min(int(yi) + rad + 1, ny)
        x0, x1 = max(int(xi) - rad, 0), min(int(xi) + rad + 1, nx)
        if y0 >= y1 or x0 >= x1:
            continue
        gy = (np.arange(y0, y1)[:, None] + sub[None, :]).ravel() - yi
        gx = (np.arange(x0, x1)[:, None] + sub[None, :]).ravel() - xi
        c, s = math.cos(pai), math.sin(pai)
        u = gx[None, :] * c + gy[:, None] * s
        v = (-gx[None, :] * s + gy[:, None] * c) / qi
        r = np.sqrt(u * u + v * v)
        prof = np.exp(-_sersic_bn(ni) * ((r / ri) ** (1.0 / ni) - 1.0))
        prof[r > 4 * ri] = 0.0
        prof = prof.reshape(y1 - y0, 3, x1 - x0, 3).sum(axis=(1, 3))
        # Normalise to the full profile's flux (analytic) so truncation by the chip
        # edge does not brighten what remains.
        bn = _sersic_bn(ni)
        total = (2 * math.pi * ri**2 * qi * ni * math.exp(bn) / bn ** (2 * ni)
                 * math.gamma(2 * ni)) * 9.0
        img[y0:y1, x0:x1] += (fi * prof / total).astype(np.float32)
    comps = psf_components(fwhm)
    half = int(math.ceil(3.2 * comps[1][1]))
    k1 = sum(w * _pix_gauss_1d(np.zeros(1), s, half)[0][:, None]
             * _pix_gauss_1d(np.zeros(1), s, half)[0][None, :] for w, s in comps[:2])
    k1 = k1 / k1.sum()
    return signal.oaconvolve(img, k1.astype(np.float32), mode="same").astype(np.float32)


def sample_cosmic_rays(
    rng: np.random.Generator,
    n_events: int,
    shape: tuple[int, int],
    depletion_um: float,
    pixel_um: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deposit points of ``n_events`` cosmic rays: ``(y, x, charge_e)`` arrays.

    Each event enters at a uniform position with an isotropic direction
    (cos(theta)^2 uniform on a flat detector), crosses the depletion layer and
    deposits charge along its projected track in sub-pixel steps, with Moyal
    (Landau-like) fluctuations per step; 3% of events get a power-law boost.
    """
    ny, nx = shape
    if n_events == 0:
        z = np.zeros(0)
        return z, z, z
    y0 = rng.uniform(-0.5, ny - 0.5, n_events)
    x0 = rng.uniform(-0.5, nx - 0.5, n_events)
    cos_t = np.sqrt(rng.uniform(0.0, 1.0, n_events))
    cos_t = np.maximum(cos_t, 1e-3)
    tan_t = np.sqrt(1.0 - cos_t**2) / cos_t
    length_pix = np.minimum(depletion_um * tan_t / pixel_um, MAX_TRACK_PIX)
    path_um = np.hypot(length_pix * pixel_um, depletion_um)
    phi = rng.uniform(0, 2 * np.pi, n_events)
    boost = np.ones(n_events)
    heavy = rng.uniform(size=n_events) < 0.03
    boost[heavy] = 1.0 + rng.pareto(1.2, heavy.sum()) * 2.0
    nstep = np.maximum(1, np.ceil(length_pix * 3)).astype(np.int64)
    ev = np.repeat(np.arange(n_events), nstep)
    # position of each step along its track: (i + 0.5) / nstep in [0, 1)
    first = np.cumsum(nstep) - nstep
    i = np.arange(ev.size) - first[ev]
    frac = (i + 0.5) / nstep[ev]
    ys = y0[ev] + frac * length_pix[ev] * np.sin(phi[ev])
    xs = x0[ev] + frac * length_pix[ev] * np.cos(phi[ev])
    # Moyal(loc=1, scale=0.12) per step; the event mean is near 1.25 of the MPV.
    fluct = stats.moyal.rvs(loc=1.0, scale=0.12, size=ev.size, random_state=rng)
    fluct = np.clip(fluct, 0.3, 60.0)
    q = MIP_E_PER_UM * path_um[ev] / nstep[ev] * fluct * boost[ev]
    return ys, xs, q


def render_cosmic_rays(
    shape: tuple[int, int], y: np.ndarray, x: np.ndarray, q: np.ndarray,
    sigma: float = DIFFUSION_SIGMA,
) -> np.ndarray:
    """Spread deposits by charge diffusion (pixel-integrated, 3x3) into a float32 image."""
    ny, nx = shape
    img = np.zeros(ny * nx)
    if y.size:
        gy = _pix_gauss_1d(y, sigma, 1)
        gx = _pix_gauss_1d(x, sigma, 1)
        w = gy[:, :, None] * gx[:, None, :]
        w /= w.sum(axis=(1, 2), keepdims=True)
        w *= q[:, None, None]
        k = np.arange(-1, 2)
        iy = (np.floor(y + 0.5).astype(np.int64)[:, None] + k)[:, :, None]
        ix = (np.floor(x + 0.5).astype(np.int64)[:, None] + k)[:, None, :]
        iy, ix = np.broadcast_arrays(iy, ix)
        ok = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
        img += np.bincount(iy[ok] * nx + ix[ok], weights=w[ok], minlength=ny * nx)
    return img.reshape(ny, nx).astype(np.float32)


def bleed_saturation(img: np.ndarray, full_well: float) -> np.ndarray:
    """Clip at the full well and spread the excess along columns (in place).

    Returns the boolean mask of pixels that ended at the full well. Charge above the
    well of every saturated run fills the pixels above and below it alternately,
    which is how CCD bleed trails form.
    """
    sat = img >= full_well
    if not sat.any():
        return sat
    cols = np.unique(np.nonzero(sat)[1])
    ny = img.shape[0]
    for c in cols:
        col = img[:, c].astype(np.float64)
        over = col >= full_well
        # contiguous runs of saturated pixels
        edges = np.diff(np.concatenate(([0], over.view(np.int8), [0])))
        starts, stops = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
        for a, b in zip(starts, stops):
            excess = float(np.sum(col[a:b] - full_well))
            col[a:b] = full_well
            lo, hi = a - 1, b
            while excess > 0 and (lo >= 0 or hi < ny):
                for j in (lo, hi):
                    if 0 <= j < ny and excess > 0:
                        room = full_well - col[j]
                        take = min(room, excess) if room > 0 else 0.0
                        col[j] += take
                        excess -= take
                lo -= 1
                hi += 1
        img[:, c] = col
    return img >= full_well


# --------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------


@dataclass
class _Scene:
    star_v: np.ndarray
    star_u: np.ndarray
    star_rate: np.ndarray  # e-/s
    gal: dict
    smooth: dict | None


def _king_radii(rng, n, rc, rt):
    r = np.linspace(0, rt, 4000)
    surf = (1 / np.sqrt(1 + (r / rc) ** 2) - 1 / np.sqrt(1 + (rt / rc) ** 2)) ** 2
    cdf = np.cumsum(surf * r)
    cdf /= cdf[-1]
    return np.interp(rng.uniform(size=n), cdf, r)


def _powerlaw_mags(rng, n, alpha, m_bright, m_faint):
    # dN/dm ~ 10^(alpha m): inverse CDF
    a = alpha * math.log(10)
    u = rng.uniform(size=n)
    lo, hi = math.exp(a * m_bright), math.exp(a * m_faint)
    return np.log(lo + u * (hi - lo)) / a


def _build_scene(cfg: SimulateConfig, inst: Instrument, filt: str, frame: tuple[int, int],
                 rng: np.random.Generator) -> _Scene:
    """Sources in the sky frame (pixels of the reference tangent plane)."""
    fh, fw = frame
    area_chip = 4096 * 2048
    scale_n = cfg.density * (fh * fw) / (2 * area_chip)  # per full-size 2-chip footprint
    zp = inst.zp(filt)
    smooth = None
    empty = np.zeros(0)
    gal = {k: empty for k in ("v", "u", "rate", "r_e", "n", "q", "pa")}
    if cfg.field_type == "extragalactic":
        ns = rng.poisson(60 * scale_n)
        mags = _powerlaw_mags(rng, ns, 0.1, 16.0, 26.0)
        sv, su = rng.uniform(0, fh, ns), rng.uniform(0, fw, ns)
        ng = rng.poisson(3000 * scale_n)
        gm = _powerlaw_mags(rng, ng, 0.3, 19.0, 27.5)
        r_e = 10 ** (-0.15 * (gm - 22.0)) * 6.0 * rng.lognormal(0, 0.35, ng)
        gal = dict(v=rng.uniform(0, fh, ng), u=rng.uniform(0, fw, ng),
                   rate=10 ** (-0.4 * (gm - zp)), r_e=np.clip(r_e, 0.8, 60),
                   n=np.where(rng.uniform(size=ng) < 0.7, 1.0, 4.0),
                   q=rng.uniform(0.3, 1.0, ng), pa=rng.uniform(0, np.pi, ng))
    elif cfg.field_type == "globular_cluster":
        ns = rng.poisson(150000 * scale_n)
        mags = _powerlaw_mags(rng, ns, 0.25, 15.5, 27.0)
        # King core ~15" and tidal radius ~10' on a full-size footprint; lengths scale
        # with the footprint so that small test visits keep the same crowding.
        rc, rt = 0.07 * fw, 3.0 * fw
        r = _king_radii(rng, ns, rc, rt)
        th = rng.uniform(0, 2 * np.pi, ns)
        cv, cu = fh * rng.uniform(0.35, 0.65), fw * rng.uniform(0.3, 0.7)
        sv, su = cv + r * np.sin(th), cu + r * np.cos(th)
    else:  # resolved_galaxy
        ns = rng.poisson(300000 * scale_n)
        mags = _powerlaw_mags(rng, ns, 0.35, 21.5, 29.0)
        # stars follow the disc light: exponential in radius
        hl = 0.3 * fw * rng.uniform(0.8, 1.3)
        cv, cu = fh * rng.uniform(0.2, 0.8), fw * rng.uniform(0.1, 0.4)
        r = rng.gamma(2.0, hl, ns)
        th = rng.uniform(0, 2 * np.pi, ns)
        sv, su = cv + r * np.sin(th) * 0.7, cu + r * np.cos(th)
        smooth = dict(v=cv, u=cu, h=hl, q=0.7, peak=rng.uniform(1.0, 3.0))
    keep = (sv > -40) & (sv < fh + 40) & (su > -40) & (su < fw + 40)
    return _Scene(star_v=sv[keep], star_u=su[keep],
                  star_rate=10 ** (-0.4 * (mags[keep] - zp)), gal=gal, smooth=smooth)


# --------------------------------------------------------------------------------------
# Writing a visit
# --------------------------------------------------------------------------------------


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


def read_truth(path: str | os.PathLike, source: bool = False) -> dict[int, TruthChip]:
    """Read a ``*_truth.fits`` file written by :func:`simulate_visit`.

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
    """
    out = {}
    with fits.open(path) as hdul:
        for hdu in hdul:
            if hdu.name != "CR":
                continue
            ev = hdu.header["EXTVER"]
            shape = (hdu.header["CHIPNY"], hdu.header["CHIPNX"])
            d = hdu.data
            stars = np.asarray(hdul["STARS", ev].data)
            src = np.asarray(hdul["SOURCE", ev].data, dtype=np.float32) if source else None
            out[ev] = TruthChip(ev, shape, np.asarray(d["Y"], np.int64),
                                np.asarray(d["X"], np.int64),
                                np.asarray(d["CHARGE"], np.float32),
                                np.asarray(d["SIGMA"], np.float32), stars, src)
    if not out:
        raise InputError(f"{path}: no CR extensions; not a crforge truth file")
    return out


def _chip_layout(inst: Instrument, chip_shape):
    """(extver, ccdchip, shape, origin_y, origin_x, amps) with chips possibly shrunk."""
    out = []
    full_ny = inst.chips[0].shape[0]
    for c in inst.chips:
        shape = tuple(chip_shape) if chip_shape is not None else c.shape
        oy = c.origin[0]
        if chip_shape is not None and oy > 0:
            gap = oy - full_ny
            oy = shape[0] + gap
        out.append((c.extver, c.ccdchip, shape, oy, c.origin[1], c.amps))
    return out


def _wcs_header(inst, cfg, crpix_ref, oy, ox, dy, dx):
    s = inst.pixel_scale / 3600.0
    th = math.radians(cfg.orient)
    h = fits.Header()
    h["WCSAXES"] = 2
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CRVAL1"], h["CRVAL2"] = cfg.ra, cfg.dec
    h["CRPIX1"] = crpix_ref[1] - ox - dx
    h["CRPIX2"] = crpix_ref[0] - oy - dy
    h["CD1_1"] = -s * math.cos(th)
    h["CD1_2"] = s * math.sin(th)
    h["CD2_1"] = s * math.sin(th)
    h["CD2_2"] = s * math.cos(th)
    h["ORIENTAT"] = cfg.orient
    h["WCSNAME"] = "CRFORGE"
    h["LTV1"], h["LTV2"], h["LTM1_1"], h["LTM2_2"] = 0.0, 0.0, 1.0, 1.0
    h["IDCSCALE"] = inst.pixel_scale
    return h


def simulate_visit(cfg: SimulateConfig, out_dir: str | os.PathLike, *,
                   overwrite: bool = False, name: str | None = None) -> Path:
    """Simulate one visit into ``out_dir/<visit>/``.

    Writes ``<root>_flc.fits`` and ``<root>_truth.fits`` per exposure and
    ``visit.json`` (config, dithers, files). The visit directory is built under a
    temporary name and renamed when complete, so a half-written visit never looks
    finished; an existing complete visit is kept unless ``overwrite``.

    Parameters
    ----------
    cfg : SimulateConfig
        What to simulate.
    out_dir : path-like
        Parent directory (created if needed).
    overwrite : bool
        Replace an existing visit directory.
    name : str, optional
        Directory name of the visit; default :attr:`SimulateConfig.visit_name`.

    Returns
    -------
    Path
        The visit directory.
    """
    if not isinstance(cfg, SimulateConfig):
        raise TypeError(f"cfg must be a SimulateConfig, got {type(cfg).__name__}")
    inst = cfg.validate()
    filt = (cfg.filter or inst.default_filter).upper()
    out_dir = Path(out_dir)
    visit = name or cfg.visit_name
    final = out_dir / visit
    if final.exists():
        if (final / "visit.json").exists() and not overwrite:
            logger.info("%s: already simulated, kept", final)
            return final
        shutil.rmtree(final)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{visit}.", dir=out_dir))
    try:
        meta = _simulate_into(cfg, inst, filt, tmp)
        (tmp / "visit.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("simulated %s: %d exposures in %s", visit, cfg.n_exposures, final)
    return final


def _simulate_into(cfg: SimulateConfig, inst: Instrument, filt: str, tmp: Path) -> dict:
    # Independent streams: the scene and the detector do not change when, say, the
    # number of exposures does.
    ss = np.random.SeedSequence([cfg.seed, cfg.proposal_id, FIELD_TYPES.index(cfg.field_type)])
    scene_ss, det_ss, dith_ss, exp_ss = ss.spawn(4)
    rng_dith = np.random.default_rng(dith_ss)
    offsets = dither_offsets(cfg.n_exposures, cfg.dither, rng_dith)
    layout = _chip_layout(inst, cfg.chip_shape)
    pad = 30
    fh = int(max(oy + sh[0] for _, _, sh, oy, _, _ in layout) + 2 * pad)
    fw = int(max(ox + sh[1] for _, _, sh, _, ox, _ in layout) + 2 * pad)
    # sky frame pixel (v, u) = chip (y, x) + origin + dither + pad
    crpix_ref = (fh / 2.0 + 1.0, fw / 2.0 + 1.0)
    scene = _build_scene(cfg, inst, filt, (fh, fw), np.random.default_rng(scene_ss))
    fwhm = inst.fwhm(filt)
    sky_e = inst.sky(filt) * cfg.exptime
    dark_e = inst.dark_rate * cfg.exptime
    cr_rate = inst.cr_rate if cfg.cr_rate is None else cfg.cr_rate
    target = cfg.target or f"SIM-{cfg.field_type.upper().replace('_', '-')}-{cfg.seed}"

    # Detector defects are fixed in detector coordinates for the whole visit.
    rng_det = np.random.default_rng(det_ss)
    defects = {}
    for ev, _, shape, _, _, _ in layout:
        hot = rng_det.uniform(size=shape) < cfg.hot_fraction
        warm = (~hot) & (rng_det.uniform(size=shape) < cfg.warm_fraction)
        hot_rate = np.where(hot, rng_det.lognormal(math.log(0.3), 0.8, shape), 0.0)
        warm_rate = np.where(warm, rng_det.lognormal(math.log(0.03), 0.5, shape), 0.0)
        nbad = rng_det.poisson(cfg.n_bad_columns * shape[1] / 4096.0)
        badcols = rng_det.choice(shape[1], size=min(nbad, shape[1]), replace=False)
        defects[ev] = (hot, warm, hot_rate, warm_rate, badcols)

    exp_seeds = exp_ss.spawn(cfg.n_exposures)
    files = []
    expstart0 = 57000.0 + (cfg.seed % 3000)
    for e in range(cfg.n_exposures):
        rng = np.random.default_rng(exp_seeds[e])
        root = f"{cfg.visit_name}{e + 1:02d}q"
        dy, dx = offsets[e]
        prim = fits.PrimaryHDU()
        ph = prim.header
        ph["TELESCOP"] = "HST"
        ph["INSTRUME"] = inst.instrume
        ph["DETECTOR"] = inst.detector
        ph["ROOTNAME"] = root
        ph["FILENAME"] = f"{root}_flc.fits"
        ph["FILETYPE"] = "SCI"
        ph["PRIMESI"] = inst.instrume
        ph["TARGNAME"] = target
        ph["RA_TARG"], ph["DEC_TARG"] = cfg.ra, cfg.dec
        ph["PROPOSID"] = cfg.proposal_id
        ph["LINENUM"] = f"{cfg.obset_id}.{e + 1:03d}"
        ph["OBSTYPE"], ph["OBSMODE"] = "IMAGING", "ACCUM"
        if len(inst.filter_keywords) == 2:
            ph[inst.filter_keywords[0]] = filt
            ph[inst.filter_keywords[1]] = inst.extra_primary.get(inst.filter_keywords[1], "CLEAR")
        else:
            ph[inst.filter_keywords[0]] = filt
        ph["EXPTIME"] = cfg.exptime
        start = expstart0 + e * (cfg.exptime + 100.0) / 86400.0
        ph["EXPSTART"] = start
        ph["EXPEND"] = start + cfg.exptime / 86400.0
        ph["DATE-OBS"] = "2015-01-01"
        ph["TIME-OBS"] = "00:00:00"
        ph["CCDAMP"] = inst.amps
        ph["SUBARRAY"] = False
        ph["FLASHDUR"] = 0.0
        ph["SHUTRPOS"] = "A"
        for a in inst.amps:
            ph[f"ATODGN{a}"] = inst.gain[a]
            ph[f"READNSE{a}"] = inst.readnoise[a]
        ph["PA_V3"] = (cfg.orient, "drizzlepac wants it or an _spt file")
        ph["POSTARG1"], ph["POSTARG2"] = dx * inst.pixel_scale, dy * inst.pixel_scale
        ph["CRFSIM"] = (True, "simulated by crforge")
        ph["CRFSEED"] = cfg.seed
        ph["CRFFIELD"] = cfg.field_type
        hdus = [prim]
        truth = [fits.PrimaryHDU()]
        truth[0].header["ROOTNAME"] = root
        truth[0].header["SKY_E"] = sky_e
        truth[0].header["DARK_E"] = dark_e
        for ev, ccdchip, shape, oy, ox, amps in layout:
            ny, nx = shape
            off_v, off_u = oy + dy + pad, ox + dx + pad
            # stars in this chip's pixel coordinates
            sy, sx = scene.star_v - off_v, scene.star_u - off_u
            # sources up to 4 wing sigmas off the chip still put light on it
            on = (sy > -40) & (sy < ny + 40) & (sx > -40) & (sx < nx + 40)
            star_e = scene.star_rate[on] * cfg.exptime
            source = render_point_sources(shape, sy[on], sx[on], star_e, fwhm)
            if scene.gal["v"].size:
                gy, gx = scene.gal["v"] - off_v, scene.gal["u"] - off_u
                gon = (gy > -100) & (gy < ny + 100) & (gx > -100) & (gx < nx + 100)
                source += render_galaxies(
                    shape, gy[gon], gx[gon], scene.gal["rate"][gon] * cfg.exptime,
                    scene.gal["r_e"][gon], scene.gal["n"][gon], scene.gal["q"][gon],
                    scene.gal["pa"][gon], fwhm)
            if scene.smooth is not None:
                sm = scene.smooth
                yy = np.arange(ny)[:, None] + off_v - sm["v"]
                xx = np.arange(nx)[None, :] + off_u - sm["u"]
                r = np.sqrt(xx**2 + (yy / sm["q"]) ** 2)
                source += (sm["peak"] * cfg.exptime * np.exp(-r / sm["h"])).astype(np.float32)
            hot, warm, hot_rate, warm_rate, badcols = defects[ev]
            expected = source.astype(np.float64) + sky_e + dark_e
            signal_e = rng.poisson(expected + (hot_rate + warm_rate) * cfg.exptime).astype(np.float64)
            # Calibration removes the mean dark and the hot/warm pixels' reference dark,
            # which is off by a random amount each exposure (hot pixels are unstable).
            ref_err = np.where(hot, rng.normal(0.0, 0.3, shape), np.where(warm, rng.normal(0.0, 0.05, shape), 0.0))
            signal_e -= dark_e + (hot_rate + warm_rate) * cfg.exptime * (1.0 + ref_err)
            # cosmic rays
            area_cm2 = ny * nx * (inst.pixel_size_um * 1e-4) ** 2
            n_cr = rng.poisson(cr_rate * area_cm2 * cfg.exptime)
            cy, cx, cq = sample_cosmic_rays(rng, n_cr, shape, inst.depletion_um, inst.pixel_size_um)
            crimg = render_cosmic_rays(shape, cy, cx, cq)
            signal_e += crimg
            # saturation: charge (incl. sky and CRs) above the full well bleeds
            gain, rn = inst.chip_gain_readnoise(ev)
            adc_sat = signal_e > inst.adc_max_dn * gain
            sat = bleed_saturation(signal_e, inst.full_well)
            rn_img = np.empty(shape)
            half = nx // 2
            rn_img[:, :half] = inst.readnoise[amps[0]]
            rn_img[:, half:] = inst.readnoise[amps[-1]]
            sci = signal_e + rng.normal(0.0, 1.0, shape) * rn_img
            dq = np.zeros(shape, np.int16)  # BITPIX=16 as in HST files (drizzlepac fails on uint16)
            dq[hot] |= 16
            dq[warm] |= 64
            if len(badcols):
                sci[:, badcols] += rng.normal(200.0, 80.0, (ny, len(badcols)))
                dq[:, badcols] |= 128
            dq[sat] |= 256
            dq[adc_sat] |= 2048
            err = np.sqrt(np.maximum(sci, 0.0) + rn_img**2)
            wcs_h = _wcs_header(inst, cfg, crpix_ref, oy + pad, ox + pad, dy, dx)
            sci_h = fits.Header()
            sci_h["BUNIT"] = "ELECTRONS"
            sci_h["CCDCHIP"] = ccdchip
            sci_h["EXPNAME"] = root[:-1] + "j"
            sci_h["MEANDARK"] = dark_e
            sci_h["NGOODPIX"] = int(np.count_nonzero(dq == 0))
            sci_h["GOODMEAN"] = float(np.mean(sci[dq == 0])) if sci_h["NGOODPIX"] else 0.0
            sci_h["SNRMEAN"] = 0.0
            sci_h.update(wcs_h)
            hdus.append(fits.ImageHDU(sci.astype(np.float32), header=sci_h, name="SCI", ver=ev))
            err_h = fits.Header()
            err_h["BUNIT"] = "ELECTRONS"
            err_h.update(wcs_h)
            hdus.append(fits.ImageHDU(err.astype(np.float32), header=err_h, name="ERR", ver=ev))
            hdus.append(fits.ImageHDU(dq, header=wcs_h.copy(), name="DQ", ver=ev))
            # truth
            ty, tx = np.nonzero(crimg > 0)
            sigma = np.sqrt(expected[ty, tx] + rn_img[ty, tx] ** 2)
            cols = [fits.Column(name="Y", format="J", array=ty.astype(np.int32)),
                    fits.Column(name="X", format="J", array=tx.astype(np.int32)),
                    fits.Column(name="CHARGE", format="E", array=crimg[ty, tx]),
                    fits.Column(name="SIGMA", format="E", array=sigma.astype(np.float32))]
            th = fits.BinTableHDU.from_columns(cols, name="CR")
            th.header["EXTVER"] = ev
            th.header["CHIPNY"], th.header["CHIPNX"] = ny, nx
            th.header["NEVENTS"] = n_cr
            truth.append(th)
            scols = [fits.Column(name="Y", format="E", array=sy[on].astype(np.float32)),
                     fits.Column(name="X", format="E", array=sx[on].astype(np.float32)),
                     fits.Column(name="FLUX", format="E", array=star_e.astype(np.float32))]
            sh = fits.BinTableHDU.from_columns(scols, name="STARS")
            sh.header["EXTVER"] = ev
            truth.append(sh)
            ch = fits.CompImageHDU(source, name="SOURCE", compression_type="RICE_1",
                                   quantize_level=16.0)
            ch.header["EXTVER"] = ev
            ch.header["BUNIT"] = "ELECTRONS"
            truth.append(ch)
        fits.HDUList(hdus).writeto(tmp / f"{root}_flc.fits")
        fits.HDUList(truth).writeto(tmp / f"{root}_truth.fits")
        files.append({"rootname": root, "flc": f"{root}_flc.fits", "truth": f"{root}_truth.fits",
                      "dither_dy": float(dy), "dither_dx": float(dx)})
    cfgd = asdict(cfg)
    return {"visit": cfg.visit_name, "instrument": inst.name, "filter": filt,
            "field_type": cfg.field_type, "target": target, "config": cfgd,
            "sky_e": sky_e, "exposures": files}


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------






