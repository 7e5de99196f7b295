"""Simulated HST visits: dithered FLC-style exposures with exact cosmic-ray truth.

The simulator is crforge's offline data source and the yardstick for label quality.
A visit is N exposures of one field through one filter, each written as a calibrated
(FLC-like) multi-extension FITS file that AstroDrizzle accepts, plus a truth file with
every injected cosmic-ray pixel and the noiseless source image.

This module is the orchestration: it plans the visit (one scene, the dithers, the
detector defects), simulates every chip of every exposure and writes the files.  What
is modelled, and from where, is told by the modules doing it:

- :mod:`crforge.pipeline.simulate.scene`: the three field types;
- :mod:`crforge.pipeline.simulate.sources`: the PSF, stars and galaxies;
- :mod:`crforge.pipeline.simulate.wcs`: chip layout, dithers and WCS;
- :mod:`crforge.pipeline.simulate.detector`: sky, dark, noise, defects, saturation;
- :mod:`crforge.pipeline.simulate.cosmics`: cosmic rays;
- :mod:`crforge.pipeline.simulate.truth`: the truth file.

Randomness: one seed sequence from ``(seed, proposal_id, field type)`` is split into
independent streams for the scene, the detector defects, the dithers and each
exposure, so that the scene and the detector do not change when, say, the number of
exposures does.  Within an exposure the chips draw in extension order.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from crforge.atomic import remove_stale, temporary_name, write_json
from crforge.errors import InputError
from crforge.lock import hold
from crforge.pipeline.instruments import Instrument
from crforge.pipeline.names import FIELD_TYPES
from crforge.pipeline.simulate.config import SimulateConfig
from crforge.pipeline.simulate.cosmics import cosmic_ray_image
from crforge.pipeline.simulate.detector import (
    Defects,
    draw_defects,
    expose,
    read_out,
    readnoise_image,
    saturate,
)
from crforge.pipeline.simulate.scene import Scene, build_scene, render_scene
from crforge.pipeline.simulate.truth import ChipInjection, write_truth
from crforge.pipeline.simulate.wcs import (
    ChipPlacement,
    SkyFrame,
    chip_layout,
    dither_offsets,
    sky_frame,
    wcs_header,
)

logger = logging.getLogger(__name__)

__all__ = ["simulate_visit"]

_MJD0 = 57000.0  # EXPSTART of the first exposure, plus seed % 3000 days
_OVERHEAD_S = 100.0  # between exposures


def simulate_visit(cfg: SimulateConfig, out_dir: str | os.PathLike, *,
                   overwrite: bool = False, name: str | None = None, wait: bool = False) -> Path:
    """Simulate one visit into ``out_dir/<visit>/``.

    Writes ``<root>_flc.fits`` and ``<root>_truth.fits`` per exposure and
    ``visit.json`` (config, dithers, files). The visit directory is built under a
    temporary name unique to the call and renamed when complete, so a half-written
    visit never looks finished. An existing complete visit simulated with the same
    settings is kept (and the log says so); one simulated with other settings is
    refused unless ``overwrite``. While it works the call holds the visit's lock
    (``out_dir/.<visit>.lock``, :mod:`crforge.lock`).

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
    wait : bool
        Wait for another run simulating the same visit instead of refusing.

    Returns
    -------
    Path
        The visit directory.

    Raises
    ------
    InputError
        A bad config value or ``name``, the visit there with other settings (and not
        ``overwrite``); a :class:`crforge.lock.LockedError` while another run simulates it.
    """
    if not isinstance(cfg, SimulateConfig):  # a caller's bug, not bad input
        raise TypeError(f"cfg must be a SimulateConfig, got {type(cfg).__name__}")
    inst = cfg.validate()
    visit = cfg.visit_name if name is None else _check_name(name)
    final = Path(out_dir) / visit
    final.parent.mkdir(parents=True, exist_ok=True)
    with hold(final.parent, what="crforge simulate", wait=wait, lock_file=final.parent / f".{visit}.lock"):
        if (final / "visit.json").exists() and not overwrite:
            _check_same_settings(final, cfg)
            logger.info("%s: already simulated with the same settings, kept", final)
            return final
        remove_stale(final.parent)  # what killed runs left
        tmp = temporary_name(final)
        tmp.mkdir()
        try:
            meta = _simulate_into(_plan_visit(cfg, inst), tmp)
            write_json(tmp / "visit.json", meta, indent=2)
            _publish(tmp, final, overwrite=overwrite)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("simulated %s: %d exposures in %s", visit, cfg.n_exposures, final)
    return final


def _check_same_settings(final: Path, cfg: SimulateConfig) -> None:
    """Refuse an existing visit whose ``visit.json`` records other settings than ``cfg``."""
    try:
        old = json.loads((final / "visit.json").read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{final / 'visit.json'}: unreadable ({exc}); pass --overwrite to simulate "
                         "the visit anew") from None
    new = json.loads(json.dumps(asdict(cfg)))
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        shown = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
        raise InputError(f"{final} was simulated with other settings ({shown}); pass --overwrite to "
                         "replace it, or simulate into another --out")


def _check_name(name: str) -> str:
    """``name`` if it is a plain, visible directory name."""
    plain = isinstance(name, str) and name and not name.startswith(".")
    if not plain or "/" in name or os.sep in name:
        raise InputError(f"name={name!r}: expected a directory name (no '/', not hidden)")
    return name


def _publish(tmp: Path, final: Path, *, overwrite: bool) -> None:
    """Rename the finished visit ``tmp`` to ``final``, replacing what is there.

    Without ``overwrite``, a complete visit that another run published meanwhile (same
    config, same files) is kept and ``tmp`` is left for the caller to remove.
    """
    finished = final / "visit.json"
    if final.exists():
        if finished.exists() and not overwrite:
            logger.info("%s: simulated meanwhile by another run, kept", final)
            return
        shutil.rmtree(final)
    try:
        os.replace(tmp, final)
    except OSError:  # a directory is not replaced when not empty: another run won the race
        if not finished.exists() or overwrite:
            raise
        logger.info("%s: simulated meanwhile by another run, kept", final)


@dataclass(frozen=True)
class _Plan:
    """What every exposure of a visit shares."""

    cfg: SimulateConfig
    inst: Instrument
    filt: str
    target: str
    layout: list[ChipPlacement]
    frame: SkyFrame
    offsets: np.ndarray  # (n_exposures, 2) dithers (dy, dx) in pixels
    pointing_errors: np.ndarray  # (n_exposures, 2) header WCS minus true pointing (dy, dx), pixels
    scene: Scene
    defects: dict[int, Defects]  # by extver
    exposure_seeds: list[np.random.SeedSequence]
    psfs: list[tuple[float, float]]  # per exposure: core (fwhm_y, fwhm_x), pixels
    cr_diffusion: float
    cr_charge: float
    sky_e: float
    dark_e: float
    cr_rate: float


def _optics(cfg: SimulateConfig, fwhm: float, ss: np.random.SeedSequence
            ) -> tuple[list[tuple[float, float]], float, float]:
    """Each exposure's PSF ``(fwhm_y, fwhm_x)``, the visit's CR charge diffusion and charge factor.

    From their own random stream, so that the other draws of a visit do not depend on
    these settings.
    """
    rng = np.random.default_rng(ss)
    scale = rng.uniform(*cfg.psf_scale)
    ell = rng.uniform(0.0, cfg.psf_ellipticity)
    along_y = rng.random() < 0.5
    diffusion = float(rng.uniform(*cfg.cr_diffusion))
    jitter = np.maximum(1.0 + cfg.psf_jitter * rng.standard_normal(cfg.n_exposures), 0.5)
    major = [fwhm * scale * j for j in jitter]
    psfs = [(m, m * (1.0 - ell)) if along_y else (m * (1.0 - ell), m) for m in major]
    charge = float(rng.uniform(*cfg.cr_charge))  # drawn last: earlier draws stay as they were
    return psfs, diffusion, charge


def _plan_visit(cfg: SimulateConfig, inst: Instrument) -> _Plan:
    """Draw the dithers, the scene, the defects and the optics; seed the exposures."""
    filt = (cfg.filter or inst.default_filter).upper()
    ss = np.random.SeedSequence([cfg.seed, cfg.proposal_id, FIELD_TYPES.index(cfg.field_type)])
    # a sixth stream for the pointing errors: the first five children are what they were
    scene_ss, det_ss, dith_ss, exp_ss, optics_ss, point_ss = ss.spawn(6)
    offsets = dither_offsets(cfg.n_exposures, cfg.dither, np.random.default_rng(dith_ss))
    layout = chip_layout(inst, cfg.chip_shape)
    frame = sky_frame(layout)
    scene = build_scene(np.random.default_rng(scene_ss), cfg.field_type, frame.shape,
                        density=cfg.density, zeropoint=inst.zp(filt))
    rng_det = np.random.default_rng(det_ss)
    defects = {c.extver: draw_defects(rng_det, c.shape, hot_fraction=cfg.hot_fraction,
                                      warm_fraction=cfg.warm_fraction,
                                      n_bad_columns=cfg.n_bad_columns) for c in layout}
    psfs, diffusion, charge = _optics(cfg, inst.fwhm(filt), optics_ss)
    return _Plan(
        cfg=cfg, inst=inst, filt=filt,
        target=cfg.target or f"SIM-{cfg.field_type.upper().replace('_', '-')}-{cfg.seed}",
        layout=layout, frame=frame, offsets=offsets, scene=scene, defects=defects,
        pointing_errors=_pointing_errors(cfg, point_ss),
        exposure_seeds=exp_ss.spawn(cfg.n_exposures), psfs=psfs, cr_diffusion=diffusion, cr_charge=charge,
        sky_e=inst.sky(filt) * cfg.exptime, dark_e=inst.dark_rate * cfg.exptime,
        cr_rate=inst.cr_rate if cfg.cr_rate is None else cfg.cr_rate)


def _pointing_errors(cfg: SimulateConfig, ss: np.random.SeedSequence) -> np.ndarray:
    """Per exposure, how far the header WCS is off the true pointing ``(dy, dx)`` (pixels)."""
    if cfg.pointing_error == 0:
        return np.zeros((cfg.n_exposures, 2))
    return np.random.default_rng(ss).normal(0.0, cfg.pointing_error, size=(cfg.n_exposures, 2))


def _simulate_into(plan: _Plan, out: Path) -> dict:
    """Write every exposure into ``out``; return the contents of ``visit.json``.

    An imager that packs exposures as imsets (STIS) gets one file holding all of them,
    as a CR-split FLT; the others one file per exposure.
    """
    cfg = plan.cfg
    suffix = plan.inst.products[0]
    if plan.inst.packing == "imsets":
        name = f"{cfg.visit_name}010_{suffix}.fits"
        exposures = [_simulate_exposure(plan, e, out) for e in range(cfg.n_exposures)]
        _imset_file([x[0] for x in exposures], cfg).writeto(out / name)
        files = [{**x[1], "flc": name} for x in exposures]
    else:
        files = []
        dq_suffix = plan.inst.dq_files.get(suffix)
        for e in range(cfg.n_exposures):
            hdus, entry = _simulate_exposure(plan, e, out)
            if dq_suffix:  # WFPC2: the DQ arrays go to their own file (c0m -> c1m)
                dqs = [h for h in hdus if h.name == "DQ"]
                fits.HDUList([hdus[0].copy()] + dqs).writeto(out / f"{entry['rootname']}_{dq_suffix}.fits")
                hdus = [h for h in hdus if h.name != "DQ"]
            fits.HDUList(hdus).writeto(out / entry["flc"])
            files.append(entry)
    return {"visit": cfg.visit_name, "instrument": plan.inst.name, "filter": plan.filt,
            "field_type": cfg.field_type, "target": plan.target, "config": asdict(cfg),
            "sky_e": plan.sky_e, "psf_fwhm_yx": [list(p) for p in plan.psfs],
            "cr_diffusion": plan.cr_diffusion, "cr_charge": plan.cr_charge, "exposures": files}


def _imset_file(exposures: list[list], cfg: SimulateConfig) -> fits.HDUList:
    """One file of several exposures, one SCI/ERR/DQ imset each (EXTVER = exposure number).

    Each imset's SCI header carries its exposure time and timing; the primary the total
    (``TEXPTIME``), as in a STIS CR-split FLT file.
    """
    prim = exposures[0][0].copy()
    for key in ("EXPTIME", "EXPSTART", "EXPEND"):
        prim.header.remove(key, ignore_missing=True)
    prim.header["TEXPTIME"] = cfg.exptime * len(exposures)
    prim.header["NRPTEXP"] = len(exposures)
    prim.header["ROOTNAME"] = f"{cfg.visit_name}010"
    prim.header["FILENAME"] = f"{cfg.visit_name}010_flt.fits"
    hdus = [prim]
    for e, exp_hdus in enumerate(exposures):
        for h in exp_hdus[1:]:
            h.ver = e + 1
            hdus.append(h)
    return fits.HDUList(hdus)


def _simulate_exposure(plan: _Plan, e: int, out: Path) -> tuple[list, dict]:
    """Simulate exposure ``e`` and write its truth; return its HDUs and ``visit.json`` entry."""
    rng = np.random.default_rng(plan.exposure_seeds[e])
    root = plan.cfg.rootnames[e]
    dy, dx = plan.offsets[e]
    hdus: list = [_primary_hdu(plan, e, root)]
    truth = []
    ey, ex = plan.pointing_errors[e]
    for chip in plan.layout:
        chip_hdus, injected = _simulate_chip(plan, rng, chip, (dy, dx), root, plan.psfs[e], (ey, ex))
        hdus.extend(chip_hdus)
        truth.append(injected)
    write_truth(out / f"{root}_truth.fits", truth, rootname=root, sky_e=plan.sky_e,
                dark_e=plan.dark_e, pointing_error=(float(ey), float(ex)))
    return hdus, {"rootname": root, "flc": f"{root}_{plan.inst.products[0]}.fits",
                  "truth": f"{root}_truth.fits", "dither_dy": float(dy), "dither_dx": float(dx),
                  "pointing_error_dy": float(ey), "pointing_error_dx": float(ex)}


def _primary_hdu(plan: _Plan, e: int, root: str) -> fits.PrimaryHDU:
    """Primary HDU of exposure ``e``: the keywords AstroDrizzle and the labeller read."""
    cfg, inst = plan.cfg, plan.inst
    dy, dx = plan.offsets[e]
    prim = fits.PrimaryHDU()
    ph = prim.header
    ph["TELESCOP"] = "HST"
    ph["INSTRUME"] = inst.instrume
    ph["DETECTOR"] = inst.detector
    ph["ROOTNAME"] = root
    ph["FILENAME"] = f"{root}_{inst.products[0]}.fits"
    ph["FILETYPE"] = "SCI"
    ph["PRIMESI"] = inst.instrume
    ph["TARGNAME"] = plan.target
    ph["RA_TARG"], ph["DEC_TARG"] = cfg.ra, cfg.dec
    ph["PROPOSID"] = cfg.proposal_id
    ph["LINENUM"] = f"{cfg.obset_id}.{e + 1:03d}"
    ph["OBSTYPE"], ph["OBSMODE"] = "IMAGING", "ACCUM"
    ph[inst.filter_keywords[0]] = plan.filt
    if len(inst.filter_keywords) == 2:
        ph[inst.filter_keywords[1]] = inst.extra_primary.get(inst.filter_keywords[1], "CLEAR")
    ph.update(_timing(plan, e))
    ph["CCDAMP"] = inst.amps
    ph["SUBARRAY"] = False
    ph["FLASHDUR"] = 0.0
    ph["SHUTRPOS"] = "A"
    _gain_keywords(ph, inst)
    ph["PA_V3"] = (cfg.orient, "drizzlepac wants it or an _spt file")
    ph["POSTARG1"], ph["POSTARG2"] = dx * inst.pixel_scale, dy * inst.pixel_scale
    ph["CRFSIM"] = (True, "simulated by crforge")
    ph["CRFSEED"] = cfg.seed
    ph["CRFFIELD"] = cfg.field_type
    return prim


def _timing(plan: _Plan, e: int) -> dict:
    """``EXPTIME`` (the instrument's keyword), ``EXPSTART`` and ``EXPEND`` of exposure ``e``."""
    cfg = plan.cfg
    start = _MJD0 + (cfg.seed % 3000) + e * (cfg.exptime + _OVERHEAD_S) / 86400.0
    return {plan.inst.exptime_keyword: cfg.exptime, "EXPSTART": start,
            "EXPEND": start + cfg.exptime / 86400.0, "DATE-OBS": "2015-01-01", "TIME-OBS": "00:00:00",
            "DARKTIME": cfg.exptime}


def _gain_keywords(ph: fits.Header, inst: Instrument) -> None:
    """The gain and read-noise keywords the instrument's files carry (0 for amplifiers that did not read)."""
    for a in inst.header_amps or inst.amps:
        ph[inst.gain_keyword.format(amp=a)] = inst.gain.get(a, 0.0)
        if inst.readnoise_keyword:
            ph[inst.readnoise_keyword.format(amp=a)] = inst.readnoise.get(a, 0.0)
    for key, value in inst.extra_primary.items():  # e.g. WFPC2's gain mode, ACS's FILTER2
        if key not in inst.filter_keywords:
            ph[key] = value


def _simulate_chip(plan: _Plan, rng: np.random.Generator, chip: ChipPlacement,
                   dither: tuple[float, float], root: str, psf: tuple[float, float],
                   pointing_error: tuple[float, float] = (0.0, 0.0)) -> tuple[list, ChipInjection]:
    """One chip of one exposure: its ``SCI``, ``ERR``, ``DQ`` extensions and its truth.

    Draws from ``rng`` in a fixed order: photon noise and the hot pixels' dark
    residuals, the cosmic rays, the read noise, the bad columns.
    """
    cfg, inst = plan.cfg, plan.inst
    dy, dx = dither
    src = render_scene(plan.scene, chip.shape, plan.frame.offset(chip, dy, dx),
                       exptime=cfg.exptime, fwhm=psf, scale=chip.scale)
    defects = plan.defects[chip.extver]
    sky_e = plan.sky_e * chip.scale**2  # the table's sky is per pixel of the instrument's scale
    expected = src.source.astype(np.float64) + sky_e + plan.dark_e
    signal_e = expose(rng, expected, defects, exptime=cfg.exptime, dark_e=plan.dark_e)
    crimg, n_cr = cosmic_ray_image(rng, chip.shape, rate=plan.cr_rate, exptime=cfg.exptime,
                                   depletion_um=inst.depletion_um, pixel_um=inst.pixel_size_um,
                                   diffusion=plan.cr_diffusion)
    crimg *= np.float32(plan.cr_charge)
    signal_e += crimg
    # saturation: charge (incl. sky and CRs) above the full well bleeds
    gain, _ = inst.chip_gain_readnoise(chip.extver)
    sat, adc_sat = saturate(signal_e, full_well=inst.full_well, adc_limit_e=inst.adc_max_dn * gain)
    rn_img = readnoise_image(chip.shape, inst.readnoise[chip.amps[0]],
                             inst.readnoise[chip.amps[-1]])
    sci, dq = read_out(rng, signal_e, rn_img, defects, sat, adc_sat, dict(inst.sim_dq))
    err = np.sqrt(np.maximum(sci, 0.0) + rn_img**2)
    # the scene is seen at the dither; the header believes the dither plus the pointing error
    wcs_h = wcs_header(inst, plan.frame, chip, dy + pointing_error[0], dx + pointing_error[1],
                       ra=cfg.ra, dec=cfg.dec, orient=cfg.orient)
    if inst.exptime_ext == "SCI":  # STIS: each imset's own exposure time and timing
        wcs_h.update(_timing(plan, cfg.rootnames.index(root)))
    to_unit = 1.0 / gain if inst.sim_bunit == "COUNTS" else 1.0  # calibrated files in DN
    hdus = _image_hdus(chip, root, sci * to_unit, err * to_unit, dq, wcs_h, plan.dark_e, inst=inst,
                       expname=root if inst.packing == "imsets" else root[:-1] + "j")
    injected = ChipInjection.from_images(
        chip.extver, crimg, n_cr, expected=expected, readnoise=rn_img, star_y=src.star_y,
        star_x=src.star_x, star_e=src.star_e, source=src.source)
    return hdus, injected


def _image_hdus(chip: ChipPlacement, root: str, sci: np.ndarray, err: np.ndarray,
                dq: np.ndarray, wcs_h: fits.Header, dark_e: float, *, inst: Instrument,
                expname: str) -> list[fits.ImageHDU]:
    """The ``SCI``, ``ERR`` and ``DQ`` extensions of one chip (float32, float32, int16).

    The instrument's ``extensions`` (WFPC2: no ERR), unit and chip-number keyword.
    """
    ev = chip.extver
    bunit = inst.sim_bunit
    sci_h = fits.Header()
    sci_h["BUNIT"] = bunit
    sci_h[inst.chip_keyword] = chip.ccdchip
    sci_h["EXPNAME"] = expname
    sci_h["MEANDARK"] = dark_e
    good = dq == 0
    sci_h["NGOODPIX"] = int(np.count_nonzero(good))
    sci_h["GOODMEAN"] = float(np.mean(sci[good])) if sci_h["NGOODPIX"] else 0.0
    sci_h["SNRMEAN"] = 0.0
    sci_h.update(wcs_h)
    err_h = fits.Header()
    err_h["BUNIT"] = bunit
    err_h.update(wcs_h)
    hdus = [fits.ImageHDU(sci.astype(np.float32), header=sci_h, name="SCI", ver=ev),
            fits.ImageHDU(err.astype(np.float32), header=err_h, name="ERR", ver=ev),
            fits.ImageHDU(dq, header=wcs_h.copy(), name="DQ", ver=ev)]
    return [h for h in hdus if h.name in inst.extensions]
