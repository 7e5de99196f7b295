"""One exposure's label file, from AstroDrizzle's products::

    <labels>/<visit>/<root>_label.fits   PRIMARY + per chip SCI (float32, input BUNIT;
                                         COUNTS are turned into electrons with the gain),
                                         CR (uint8, 1 = cosmic ray) and
                                         IGNORE (uint8, bits 1 bad / 2 saturated / 4 no data)

The CR mask is AstroDrizzle's ``driz_cr`` mask, refined or grown by
:func:`crforge.pipeline.masks.refine_cr_mask` (see :mod:`crforge.pipeline.label.stage`
for when), with the other exposures' residuals at the same sky position resampled
through the WCS; the ignore mask comes from the DQ array and the pixels no other
exposure covers (:func:`crforge.pipeline.masks.ignore_mask`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy import ndimage

from crforge.atomic import atomic_path
from crforge.pipeline import masks
from crforge.pipeline.fitsfile import open_exposure
from crforge.pipeline.instruments import Instrument
from crforge.pipeline.label.astrodrizzle import DrizzleError, drizzlepac_version, scratch_file
from crforge.pipeline.label.config import LabelConfig
from crforge.pipeline.label.result import LABEL_SUFFIX, ChipLabels, ExposureLabels
from crforge.pipeline.label.validate import ExposureInfo

logger = logging.getLogger(__name__)

__all__ = ["residuals", "write_label"]

#: SCI header keywords copied into every extension of a label file.
_KEEP_KEYS = ("CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1",
              "CD2_2", "WCSNAME", "CCDCHIP", "EXPNAME", "BUNIT", "LTV1", "LTV2")

#: Residuals (exposure minus blotted reference, electrons) per (exposure index, chip).
Residuals = dict[tuple[int, int], np.ndarray]


def residuals(infos: list[ExposureInfo], scratch: Path) -> Residuals:
    """Exposure minus blotted reference, in electrons, per (exposure index, chip)."""
    out = {}
    for j, info in enumerate(infos):
        for ev in info.chips:
            sci = fits.getdata(info.path, ("SCI", info.source_ext(ev))).astype(np.float32)
            blot = fits.getdata(scratch_file(scratch, info, ev, "blt")).astype(np.float32)
            to_e = np.float32(info.to_electrons(ev))
            out[(j, ev)] = (sci - blot) * to_e
    return out


def write_label(infos: list[ExposureInfo], i: int, scratch: Path, out_dir: Path, cfg: LabelConfig,
                *, refine: bool, other: Residuals) -> ExposureLabels:
    """Build and write the label file of exposure ``infos[i]`` into ``out_dir``.

    Parameters
    ----------
    infos : list of ExposureInfo
        Every exposure drizzled together (the others give coverage and residuals).
    i : int
        Which exposure.
    scratch : pathlib.Path
        AstroDrizzle's directory (its CR masks, blotted references, sky values).
    out_dir : pathlib.Path
        The visit's label directory (exists).
    cfg : LabelConfig
        Settings of the refinement, growth and ignore mask.
    refine : bool
        Replace AstroDrizzle's CR test by the refinement (few exposures, minimum stack);
        else grow its mask (``cfg.grow_snr > 0``) or keep it.
    other : dict
        :func:`residuals` of every exposure (used when ``refine``).

    Returns
    -------
    ExposureLabels
    """
    info = infos[i]
    chips = []
    with open_exposure(info.path) as src:  # WFPC2: its c1m DQ attached
        hdus = [fits.PrimaryHDU(header=_primary_header(src[0].header.copy(), info, len(infos), refine))]
        for ev in info.chips:
            sci = src["SCI", info.source_ext(ev)].data.astype(np.float32)
            cr = _chip_cr(infos, i, ev, sci, scratch, cfg, refine=refine, other=other)
            nocov = _no_coverage(infos, i, ev, sci.shape)
            ignore = masks.ignore_mask(src["DQ", info.source_ext(ev)].data, info.instrument,
                                       saturation_grow=cfg.saturation_grow, no_coverage=nocov)
            drizzled = fits.getheader(scratch / info.scratch_name, ("SCI", ev))
            sky = float(drizzled.get("MDRIZSKY", 0.0))
            frac = float(cr[ignore == 0].mean()) if np.any(ignore == 0) else 0.0
            h = _chip_header(src["SCI", info.source_ext(ev)].header, info, ev, sky=sky, cr_fraction=frac)
            if drizzled.get("CRFALIGN"):  # the labels go with the WCS they were made on
                h.update({k: drizzled[k] for k in _KEEP_KEYS[:10] if k in drizzled})
                h["CRFALIGN"] = (True, "WCS aligned by crforge before AstroDrizzle")
            if info.bunit == "COUNTS":  # training data are in electrons: counts times the gain
                sci = sci * np.float32(info.to_electrons(ev))
                h["SKY"] = sky * info.to_electrons(ev)
                h["BUNIT"] = "ELECTRONS"
            hdus.append(fits.ImageHDU(sci, header=h, name="SCI", ver=ev))
            hdus.append(fits.ImageHDU(cr.astype(np.uint8), header=h.copy(), name="CR", ver=ev))
            hdus.append(fits.ImageHDU(ignore, header=h.copy(), name="IGNORE", ver=ev))
            chips.append(ChipLabels(extver=ev, cr_fraction=frac, sky=sky,
                                    ignore_fraction=float(np.mean(ignore != 0))))
    name = f"{info.rootname}{LABEL_SUFFIX}"
    with atomic_path(out_dir / name) as tmp:
        fits.HDUList(hdus).writeto(tmp)
    return ExposureLabels(rootname=info.rootname, input=info.path, label=name, chips=tuple(chips))


def _primary_header(ph: fits.Header, info: ExposureInfo, n_exposures: int, refine: bool) -> fits.Header:
    """The input's primary header ``ph`` (a copy), stamped with what the label stage did.

    ``EXPTIME`` and ``ROOTNAME`` are the exposure's (an imset's, in a STIS file).
    """
    ph["EXPTIME"] = info.exptime
    ph["ROOTNAME"] = info.rootname
    ph["CRFSTAGE"] = ("label", "crforge stage that wrote this file")
    ph["CRFDRIZ"] = (drizzlepac_version(), "drizzlepac version")
    ph["CRFNEXP"] = (n_exposures, "exposures drizzled together")
    ph["CRFREFIN"] = (refine, "labels refined on the minimum stack")
    return ph


def _chip_header(sci_h: fits.Header, info: ExposureInfo, ev: int, *, sky: float,
                 cr_fraction: float) -> fits.Header:
    """Header of a chip's SCI, CR and IGNORE extensions: WCS, units, noise, sky, CR fraction."""
    h = fits.Header([(k, sci_h[k]) for k in _KEEP_KEYS if k in sci_h])
    h["GAIN"] = (info.gain[ev], "mean gain of the amplifiers, e-/DN")
    h["RDNOISE"] = (info.readnoise[ev], "mean read noise, e-")
    h["SKY"] = (sky, "AstroDrizzle MDRIZSKY, SCI units")
    h["CRFRAC"] = (cr_fraction, "fraction of usable pixels labelled CR")
    return h


def _chip_cr(infos: list[ExposureInfo], i: int, ev: int, sci: np.ndarray, scratch: Path,
             cfg: LabelConfig, *, refine: bool, other: Residuals) -> np.ndarray:
    """CR mask (bool) of chip ``ev`` of exposure ``i``: AstroDrizzle's, refined or grown."""
    info = infos[i]
    crmask = fits.getdata(scratch_file(scratch, info, ev, "crmask"))
    if crmask.shape != sci.shape:
        raise DrizzleError(f"{info.path.name}[SCI,{ev}]: crmask shape {crmask.shape} != {sci.shape}")
    cr = masks.cr_from_crmask(crmask).astype(bool)
    if not refine and not cfg.grow_snr > 0:
        return cr
    to_e = info.to_electrons(ev)
    blot = fits.getdata(scratch_file(scratch, info, ev, "blt"))
    blot_e = np.float32(to_e)
    if refine:
        ref = blot.astype(np.float32) * blot_e
        # a minimum of more than two exposures sits further below each of them than the
        # 2-exposure minimum the thresholds were set on: restore that offset
        excess = masks.minimum_excess(len(infos))
        if excess:
            ref = ref + np.float32(excess) * np.sqrt(np.abs(ref) + np.float32(info.readnoise[ev]) ** 2)
        snr, deriv_scale = refine_settings(cfg, info.instrument)
        return masks.refine_cr_mask(
            sci * to_e, ref, info.readnoise[ev],
            snr=snr, deriv_scale=deriv_scale,
            other_residual=_other_residual(infos, i, ev, sci.shape, other),
            other_scale=cfg.refine_other_scale)
    blot = blot.astype(np.float32) * blot_e
    # the reference is a median of the other exposures: its variance is about
    # 1.5/(n-1) of one exposure's
    var_ref = (np.abs(blot) + info.readnoise[ev] ** 2) * np.float32(1.5 / (len(infos) - 1))
    return masks.refine_cr_mask(
        sci * to_e, blot, info.readnoise[ev], reference_var=var_ref,
        snr=(np.inf, cfg.grow_snr), deriv_scale=cfg.grow_deriv_scale, initial=cr)


def refine_settings(cfg: LabelConfig, inst: Instrument) -> tuple[tuple[float, float], float]:
    """The refinement's (seed, grow) thresholds and gradient weight on one imager.

    ``cfg.refine_snr`` and ``cfg.refine_deriv_scale`` scaled by the imager's
    ``refine_grow_factor`` and ``refine_deriv_factor`` (1 but for ACS/HRC and STIS/CCD:
    docs/instruments.md); the grow threshold never exceeds the seed threshold.
    """
    seed, grow = cfg.refine_snr
    return (seed, min(seed, grow * inst.refine_grow_factor)), cfg.refine_deriv_scale * inst.refine_deriv_factor


def _no_coverage(infos: list[ExposureInfo], i: int, ev: int, shape: tuple[int, int],
                 step: int = 16) -> np.ndarray:
    """Pixels of exposure ``i``, chip ``ev`` that no other exposure's chips cover."""
    ny, nx = shape
    ys = np.arange(0, ny + step - 1, step).clip(max=ny - 1)
    xs = np.arange(0, nx + step - 1, step).clip(max=nx - 1)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    ra, dec = infos[i].wcs[ev].all_pix2world(gx.ravel(), gy.ravel(), 0)
    covered = np.zeros(gy.size, bool)
    for j, other in enumerate(infos):
        if j == i:
            continue
        for ev2 in other.chips:
            oy, ox = other.shape[ev2]
            px, py = other.wcs[ev2].all_world2pix(ra, dec, 0)
            covered |= (px >= -0.5) & (px < ox - 0.5) & (py >= -0.5) & (py < oy - 0.5)
    cov = covered.reshape(gy.shape)
    # the coarse grid blurs the edge by up to a step: a node next to an uncovered node
    # counts as uncovered too (done on the small grid, not the full chip)
    uncovered = ndimage.binary_dilation(~cov, structure=np.ones((3, 3), bool))
    iy = np.clip(np.round(np.arange(ny) / step).astype(int), 0, cov.shape[0] - 1)
    ix = np.clip(np.round(np.arange(nx) / step).astype(int), 0, cov.shape[1] - 1)
    return uncovered[np.ix_(iy, ix)]


def _pixel_map(src: ExposureInfo, ev: int, dst: ExposureInfo, ev2: int,
               shape: tuple[int, int], step: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in ``dst[SCI,ev2]`` of every pixel of ``src[SCI,ev]``.

    The WCS mapping is smooth, so it is computed on a grid every ``step`` pixels and
    interpolated bilinearly (far below 0.01 pixel of error for HST distortion).
    """
    ny, nx = shape
    gy = np.arange(0, ny + step, step, dtype=float)
    gx = np.arange(0, nx + step, step, dtype=float)
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    ra, dec = src.wcs[ev].all_pix2world(xx.ravel(), yy.ravel(), 0)
    px, py = dst.wcs[ev2].all_world2pix(ra, dec, 0)
    return (_upsample(py.reshape(yy.shape), gy, gx, shape),
            _upsample(px.reshape(yy.shape), gy, gx, shape))


def _upsample(coarse: np.ndarray, gy: np.ndarray, gx: np.ndarray,
              shape: tuple[int, int]) -> np.ndarray:
    """Bilinear interpolation of a grid (nodes ``gy`` x ``gx``) onto every pixel.

    Separable: along x per grid row, then along y for all columns at once.
    """
    ny, nx = shape
    rows = np.stack([np.interp(np.arange(nx), gx, r) for r in coarse])
    fy = np.arange(ny, dtype=float)
    i0 = np.clip(np.searchsorted(gy, fy, side="right") - 1, 0, len(gy) - 2)
    t = ((fy - gy[i0]) / (gy[i0 + 1] - gy[i0]))[:, None]
    return rows[i0] * (1.0 - t) + rows[i0 + 1] * t


def _other_residual(infos: list[ExposureInfo], i: int, ev: int, shape: tuple[int, int],
                    resid: Residuals) -> np.ndarray:
    """Smallest residual of the other exposures at the sky position of each pixel."""
    best = np.full(shape, np.nan, np.float32)
    ny, nx = shape
    corners_y = np.array([0, 0, ny - 1, ny - 1, ny // 2], float)
    corners_x = np.array([0, nx - 1, 0, nx - 1, nx // 2], float)
    ra, dec = infos[i].wcs[ev].all_pix2world(corners_x, corners_y, 0)
    for j, other in enumerate(infos):
        if j == i:
            continue
        for ev2 in other.chips:
            res = resid[(j, ev2)]
            # skip chips that do not overlap this one (the other chip of a dithered pair)
            px, py = other.wcs[ev2].all_world2pix(ra, dec, 0)
            oy, ox = res.shape
            if px.max() < 0 or px.min() > ox - 1 or py.max() < 0 or py.min() > oy - 1:
                continue
            py, px = _pixel_map(infos[i], ev, other, ev2, shape)
            inside = (py >= 0) & (py <= oy - 1) & (px >= 0) & (px <= ox - 1)
            if not inside.any():
                continue
            vals = ndimage.map_coordinates(res, [py[inside], px[inside]], order=1)
            cur = best[inside]
            best[inside] = np.where(np.isnan(cur), vals, np.minimum(cur, vals))
    return best
