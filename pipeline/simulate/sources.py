"""The optics: a pixel-integrated PSF and the sources it images (stars, Sersic galaxies).

The PSF is the sum of three Gaussians: a core with the filter's FWHM from the
instrument table (1.5-1.9 pixels on ACS/WFC: undersampled, nearly as sharp as a cosmic
ray), a halo 2.5x wider (20% of the light) and a broad 8-pixel wing (5%).  Core and
halo are integrated over each pixel on stamps; the wing is smooth and rendered on a
coarser grid.  A PSF is its core FWHM, or ``(fwhm_y, fwhm_x)`` for an elongated one
(focus, jitter and field position change the PSF from visit to visit).

Pure NumPy functions; nothing here draws random numbers.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, signal, special

from crforge.errors import InputError

__all__ = [
    "pixel_gaussian_1d",
    "psf_components",
    "psf_kernel",
    "render_galaxies",
    "render_point_sources",
]

_WING_BIN = 4  # the PSF wing is rendered on a grid this many times coarser


def pixel_gaussian_1d(centres: np.ndarray, sigma: float, half: int) -> np.ndarray:
    """Pixel-integrated 1D Gaussian weights around the nearest pixel of each centre.

    Parameters
    ----------
    centres : ndarray
        ``[N]`` centres in pixels (pixel centres at integers).
    sigma : float
        Gaussian sigma in pixels.
    half : int
        Half width of the stamp.

    Returns
    -------
    ndarray
        ``[N, 2*half+1]`` weights for pixels ``round(c) - half ... round(c) + half``.
    """
    base = np.floor(centres + 0.5)
    k = np.arange(-half, half + 1)
    edges_lo = (base[:, None] + k[None, :] - 0.5 - centres[:, None]) / (sigma * math.sqrt(2))
    edges_hi = edges_lo + 1.0 / (sigma * math.sqrt(2))
    return 0.5 * (special.erf(edges_hi) - special.erf(edges_lo))


def psf_components(fwhm: float | tuple[float, float]) -> list[tuple[float, float, float]]:
    """The PSF as ``[(weight, sigma_y, sigma_x), ...]`` Gaussians (weights sum to 1).

    ``fwhm`` is the core's FWHM in pixels, or ``(fwhm_y, fwhm_x)``.  The first two
    components are rendered pixel-integrated on stamps; the last is the round, broad wing.
    """
    fy, fx = (fwhm, fwhm) if np.isscalar(fwhm) else fwhm
    sy, sx = fy / 2.3548, fx / 2.3548
    return [(0.75, sy, sx), (0.20, 2.5 * sy, 2.5 * sx), (0.05, 8.0, 8.0)]


def _stamp_half(comps: list[tuple[float, float, float]]) -> int:
    """Half width of a core+halo stamp: 3.2 halo sigmas."""
    return math.ceil(3.2 * max(comps[1][1], comps[1][2]))


def psf_kernel(fwhm: float | tuple[float, float]) -> np.ndarray:
    """The core+halo PSF of a source centred on a pixel, normalised to sum 1 (float64)."""
    comps = psf_components(fwhm)
    half = _stamp_half(comps)
    k1 = sum(w * pixel_gaussian_1d(np.zeros(1), sy, half)[0][:, None]
             * pixel_gaussian_1d(np.zeros(1), sx, half)[0][None, :] for w, sy, sx in comps[:2])
    return k1 / k1.sum()


def render_point_sources(
    shape: tuple[int, int],
    y: np.ndarray,
    x: np.ndarray,
    flux: np.ndarray,
    fwhm: float | tuple[float, float],
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
    fwhm : float or (float, float)
        Core FWHM in pixels, or ``(fwhm_y, fwhm_x)``.
    chunk : int
        Sources rendered at once (bounds the memory of the stamps).

    Raises
    ------
    InputError
        ``y``, ``x`` and ``flux`` differ in shape.
    """
    y = np.asarray(y, float)
    x = np.asarray(x, float)
    flux = np.asarray(flux, float)
    if not (y.shape == x.shape == flux.shape):
        raise InputError(f"y, x and flux: shapes {y.shape}, {x.shape}, {flux.shape}; "
                         "expected the same shape")
    comps = psf_components(fwhm)
    img = _render_core_halo(shape, y, x, flux, comps, chunk)
    w, s, _ = comps[2]
    if w > 0 and y.size:
        img += _render_wing(shape, y, x, w * flux, s)
    return img.astype(np.float32)


def _render_core_halo(shape: tuple[int, int], y: np.ndarray, x: np.ndarray, flux: np.ndarray,
                      comps: list[tuple[float, float, float]], chunk: int) -> np.ndarray:
    """Core and halo of every source on pixel-integrated stamps: float64 ``shape`` image."""
    ny, nx = shape
    img = np.zeros(ny * nx, dtype=np.float64)
    half = _stamp_half(comps)
    k = np.arange(-half, half + 1)
    for lo in range(0, y.size, chunk):
        yy, xx, ff = y[lo:lo + chunk], x[lo:lo + chunk], flux[lo:lo + chunk]
        stamp = None
        for w, sy, sx in comps[:2]:
            gy = pixel_gaussian_1d(yy, sy, half)
            gx = pixel_gaussian_1d(xx, sx, half)
            part = w * gy[:, :, None] * gx[:, None, :]
            stamp = part if stamp is None else stamp + part
        stamp *= ff[:, None, None]
        iy = (np.floor(yy + 0.5).astype(np.int64)[:, None] + k)[:, :, None]
        ix = (np.floor(xx + 0.5).astype(np.int64)[:, None] + k)[:, None, :]
        iy, ix = np.broadcast_arrays(iy, ix)
        ok = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
        img += np.bincount((iy[ok] * nx + ix[ok]), weights=stamp[ok], minlength=ny * nx)
    return img.reshape(ny, nx)


def _render_wing(shape: tuple[int, int], y: np.ndarray, x: np.ndarray, flux: np.ndarray,
                 sigma: float) -> np.ndarray:
    """The broad wing (``flux`` already weighted) as a float64 ``shape`` image.

    The wing is smooth, so it is rendered on a coarser grid: sources are splatted
    bilinearly there (keeping their centroids exact, so the wing moves with the
    dithers), blurred, and interpolated back.
    """
    ny, nx = shape
    b = _WING_BIN
    m = math.ceil(4 * sigma / b) + 2  # coarse margin: sources off the chip shine in
    by, bx = -(-ny // b) + 2 * m, -(-nx // b) + 2 * m
    # coarse-grid coordinates: pixel centre j of coarse pixel k sits at (j + 0.5)/b - 0.5
    cy = (y + 0.5) / b - 0.5 + m
    cx = (x + 0.5) / b - 0.5 + m
    ok = (cy >= 0) & (cy < by - 1) & (cx >= 0) & (cx < bx - 1)
    cy, cx, ff = cy[ok], cx[ok], flux[ok]
    y0, x0 = np.floor(cy).astype(np.int64), np.floor(cx).astype(np.int64)
    fy, fx = cy - y0, cx - x0
    coarse = np.zeros(by * bx)
    for dy_, wy in ((0, 1 - fy), (1, fy)):
        for dx_, wx in ((0, 1 - fx), (1, fx)):
            coarse += np.bincount((y0 + dy_) * bx + (x0 + dx_), weights=ff * wy * wx,
                                  minlength=by * bx)
    coarse = ndimage.gaussian_filter(coarse.reshape(by, bx), sigma / b, mode="constant")
    # back to full resolution by bilinear interpolation at the fine pixel centres
    fy_ = (np.arange(ny) + 0.5) / b - 0.5 + m
    fx_ = (np.arange(nx) + 0.5) / b - 0.5 + m
    tmp = np.empty((by, nx))
    for r in range(by):
        tmp[r] = np.interp(fx_, np.arange(bx), coarse[r])
    fine = np.empty((ny, nx))
    iy0 = np.clip(np.floor(fy_).astype(np.int64), 0, by - 2)
    t = (fy_ - iy0)[:, None]
    for c0 in range(0, nx, 512):
        sl = slice(c0, min(c0 + 512, nx))
        fine[:, sl] = tmp[iy0, sl] * (1 - t) + tmp[iy0 + 1, sl] * t
    return fine / (b * b)


def _sersic_bn(n: float) -> float:
    """Ciotti & Bertin (1999) approximation of the Sersic ``b_n``."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n)


def _sersic_stamp(flux: float, yi: float, xi: float, r_e: float, n: float, q: float,
                  pa: float, box: tuple[int, int, int, int]) -> np.ndarray:
    """Sersic profile of total ``flux`` sampled 3x3 per pixel on ``box`` = ``(y0, y1, x0, x1)``.

    Truncated at 4 effective radii; normalised to the full profile's flux
    (analytic), so that truncation by the chip edge does not brighten what remains.
    """
    y0, y1, x0, x1 = box
    sub = (np.arange(3) - 1) / 3.0
    gy = (np.arange(y0, y1)[:, None] + sub[None, :]).ravel() - yi
    gx = (np.arange(x0, x1)[:, None] + sub[None, :]).ravel() - xi
    c, s = math.cos(pa), math.sin(pa)
    u = gx[None, :] * c + gy[:, None] * s
    v = (-gx[None, :] * s + gy[:, None] * c) / q
    r = np.sqrt(u * u + v * v)
    bn = _sersic_bn(n)
    prof = np.exp(-bn * ((r / r_e) ** (1.0 / n) - 1.0))
    prof[r > 4 * r_e] = 0.0
    prof = prof.reshape(y1 - y0, 3, x1 - x0, 3).sum(axis=(1, 3))
    total = (2 * math.pi * r_e**2 * q * n * math.exp(bn) / bn ** (2 * n)
             * math.gamma(2 * n)) * 9.0
    return flux * prof / total


def render_galaxies(
    shape: tuple[int, int],
    y: np.ndarray,
    x: np.ndarray,
    flux: np.ndarray,
    r_e: np.ndarray,
    n: np.ndarray,
    q: np.ndarray,
    pa: np.ndarray,
    fwhm: float | tuple[float, float],
) -> np.ndarray:
    """Render elliptical Sersic galaxies convolved with the PSF (float32 image).

    Parameters
    ----------
    shape : tuple
        ``(ny, nx)`` of the image.
    y, x : ndarray
        Centres in 0-based pixel coordinates.
    flux : ndarray
        Total flux of each galaxy; the image carries its unit.
    r_e, n, q, pa : ndarray
        Effective radius (pixels), Sersic index, axis ratio and position angle (rad).
    fwhm : float or (float, float)
        Core FWHM of the PSF in pixels, or ``(fwhm_y, fwhm_x)``.

    Notes
    -----
    Profiles are sampled 3x3 per pixel, truncated at 4 effective radii, then
    convolved with the core+halo PSF (the wing is left out: galaxies are faint).
    """
    ny, nx = shape
    img = np.zeros(shape, dtype=np.float32)
    for yi, xi, fi, ri, ni, qi, pai in zip(y, x, flux, r_e, n, q, pa):
        rad = int(min(max(4.0 * ri, 4), 200))
        y0, y1 = max(int(yi) - rad, 0), min(int(yi) + rad + 1, ny)
        x0, x1 = max(int(xi) - rad, 0), min(int(xi) + rad + 1, nx)
        if y0 >= y1 or x0 >= x1:
            continue
        stamp = _sersic_stamp(fi, yi, xi, ri, ni, qi, pai, (y0, y1, x0, x1))
        img[y0:y1, x0:x1] += stamp.astype(np.float32)
    return signal.oaconvolve(img, psf_kernel(fwhm).astype(np.float32),
                             mode="same").astype(np.float32)
