"""Cosmic rays: how many, where, how they cross the silicon, and how much charge they leave.

All numbers per instrument table, the rate overridable in
:class:`~crforge.pipeline.simulate.config.SimulateConfig`:

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
- Charge diffusion: each deposit spreads with a Gaussian, integrated over 3x3 pixels:
  0.45 pixels by default (15 um pixels: a hit lights 4-9 pixels); the simulator draws
  it per visit (``SimulateConfig.cr_diffusion``), down to 0.25 pixels, where most
  compact hits are one or two pixels, as on the 21 um pixels of ACS/HRC and STIS/CCD
  (real cosmic rays there: median 2 pixels, neighbours at 13% of the peak).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from crforge.pipeline.simulate.sources import pixel_gaussian_1d

__all__ = [
    "DIFFUSION_SIGMA",
    "MAX_TRACK_PIX",
    "MIP_E_PER_UM",
    "cosmic_ray_image",
    "render_cosmic_rays",
    "sample_cosmic_rays",
]

DIFFUSION_SIGMA = 0.45  # pixels; ACS/WFC CCDs spread a point deposit over ~3x3 pixels
MIP_E_PER_UM = 45.0  # e-h pairs per micron: puts the median event near 1000 e- (Riess 2002)
MAX_TRACK_PIX = 150.0  # grazing tracks are cut at this projected length
HEAVY_FRACTION = 0.03  # events with a power-law boost of their deposit (nuclei)
STEPS_PER_PIXEL = 3  # deposit points per pixel of projected track


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
    heavy = rng.uniform(size=n_events) < HEAVY_FRACTION
    boost[heavy] = 1.0 + rng.pareto(1.2, heavy.sum()) * 2.0
    nstep = np.maximum(1, np.ceil(length_pix * STEPS_PER_PIXEL)).astype(np.int64)
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
        gy = pixel_gaussian_1d(y, sigma, 1)
        gx = pixel_gaussian_1d(x, sigma, 1)
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


def cosmic_ray_image(
    rng: np.random.Generator, shape: tuple[int, int], *, rate: float, exptime: float,
    depletion_um: float, pixel_um: float, diffusion: float = DIFFUSION_SIGMA,
) -> tuple[np.ndarray, int]:
    """The cosmic rays of one exposure of one chip.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the number of events (Poisson), then the events.
    shape : tuple of int
        ``(ny, nx)`` of the chip.
    rate : float
        Events per second per cm^2.
    exptime : float
        Seconds.
    depletion_um, pixel_um : float
        Sensitive thickness and pixel pitch in microns.
    diffusion : float
        Gaussian sigma (pixels) of the charge diffusion.

    Returns
    -------
    image : ndarray
        float32 charge in e- per pixel.
    n_events : int
        The number of events.
    """
    ny, nx = shape
    area_cm2 = ny * nx * (pixel_um * 1e-4) ** 2
    n_events = rng.poisson(rate * area_cm2 * exptime)
    y, x, q = sample_cosmic_rays(rng, n_events, shape, depletion_um, pixel_um)
    return render_cosmic_rays(shape, y, x, q, sigma=diffusion), n_events
