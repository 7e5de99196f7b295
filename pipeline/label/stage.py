"""The labelling stage: AstroDrizzle on a visit -> per-exposure CR and ignore masks.

``label_visit`` validates every exposure of a visit, copies the usable ones into a
scratch directory (AstroDrizzle edits its inputs in place), runs AstroDrizzle offline
(``updatewcs=False``: no MAST astrometry service, no CRDS files) through separate
drizzling, median, blot and ``driz_cr`` (the final drizzle is skipped: it adds about a
third to the run time and nothing to the masks), and writes one label file per
exposure::

    <labels>/<visit>/<root>_label.fits   PRIMARY + per chip SCI (float32, input BUNIT),
                                         CR (uint8, 1 = cosmic ray) and
                                         IGNORE (uint8, bits 1 bad / 2 saturated / 4 no data)
    <labels>/<visit>/labels.json         what was run, on what, with which settings

The masks themselves are computed by the pure functions of :mod:`crforge.pipeline.masks`.

Two-exposure visits
-------------------
With two exposures the median is the mean, so half of every CR stays in the reference
and AstroDrizzle's default ``minmed`` settings label only bright events. For visits of
``refine_max_exposures`` or fewer exposures (default 2) crforge therefore runs
AstroDrizzle with ``combine_type='minimum'`` (the reference holds no CR charge at all)
and replaces its CR test by :func:`crforge.pipeline.masks.refine_cr_mask`: hysteresis
thresholding with a noise model that includes the other exposure's noise, and a
threshold raised where the other exposure shows the same residual (sharp stars that
the blotted reference smooths leave a residual in every exposure; a CR in one only).

Three or more exposures
-----------------------
AstroDrizzle's ``driz_cr`` labels CR cores well but only grows them by one pixel with
a second threshold. crforge grows its mask further, by hysteresis into connected
neighbours ``grow_snr`` sigma above the blotted median (the faint charge-diffusion
wings of bright hits), keeping a gradient term off sharp stars.

Figures for both are in the README ("Label quality").
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

from crforge.errors import InputError
from crforge.pipeline import masks
from crforge.pipeline.instruments import Instrument, instrument_for_header
from crforge.pipeline.label.config import LabelConfig

logger = logging.getLogger(__name__)

__all__ = [
    "ExposureError",
    "VisitError",
    "DrizzleError",
    "ExposureInfo",
    "validate_exposure",
    "find_exposures",
    "label_visit",
    "astrodrizzle_kwargs",
]

LABEL_SUFFIX = "_label.fits"
REPORT_NAME = "labels.json"




class ExposureError(InputError):
    """An exposure that cannot be labelled; the message names file, extension, keyword."""


class VisitError(InputError):
    """A visit that cannot be labelled (e.g. fewer than two usable exposures)."""


class DrizzleError(RuntimeError):
    """AstroDrizzle failed; the message carries the tail of its log."""


@dataclass
class ExposureInfo:
    """What validation learnt about one exposure."""

    path: Path
    rootname: str
    instrument: Instrument
    exptime: float
    bunit: str
    chips: list[int]
    filter: str
    target: str
    gain: dict[int, float] = field(default_factory=dict)
    readnoise: dict[int, float] = field(default_factory=dict)
    wcs: dict[int, WCS] = field(default_factory=dict, repr=False)
    shape: dict[int, tuple[int, int]] = field(default_factory=dict)


_ELECTRON_UNITS = ("ELECTRONS", "ELECTRONS/S")


def validate_exposure(path: str | os.PathLike) -> ExposureInfo:
    """Check that an FLC/FLT file has everything AstroDrizzle needs to label it right.

    AstroDrizzle fails silently on several of these (no ``BUNIT``: electrons are
    treated as e-/s and every label is wrong; no ``EXPTIME``: the file is dropped and
    the run "succeeds" without masks), hence the checks before drizzling.

    Raises
    ------
    ExposureError
        Naming the file, the extension and the keyword or what was expected.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ExposureError(f"{path}: file not found")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
            hdul.verify("exception")
    except Exception as exc:  # astropy raises OSError, VerifyError, TypeError...
        raise ExposureError(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from None
    # astropy only warns about a file cut short (an interrupted download) and drops
    # the HDUs it could not read: that is an error here.
    cut = [str(w.message) for w in caught if "truncat" in str(w.message).lower()]
    if cut:
        hdul.close()
        raise ExposureError(f"{path}: truncated FITS file ({cut[0]})")
    with hdul:
        ph = hdul[0].header
        for key in ("TELESCOP", "INSTRUME", "DETECTOR"):
            if key not in ph:
                raise ExposureError(f"{name}[PRIMARY]: keyword {key} missing")
        try:
            inst = instrument_for_header(ph)
        except ValueError as exc:
            raise ExposureError(f"{name}[PRIMARY]: {exc}") from None
        if "EXPTIME" not in ph:
            raise ExposureError(f"{name}[PRIMARY]: keyword EXPTIME missing "
                                "(AstroDrizzle would silently drop this exposure)")
        try:
            exptime = float(ph["EXPTIME"])
        except (TypeError, ValueError):
            raise ExposureError(f"{name}[PRIMARY]: EXPTIME={ph['EXPTIME']!r} is not a number") from None
        if not exptime > 0:
            raise ExposureError(f"{name}[PRIMARY]: EXPTIME={exptime!r}, expected > 0 s")
        if ("EXPSTART" in ph) != ("EXPEND" in ph):
            missing = "EXPEND" if "EXPSTART" in ph else "EXPSTART"
            raise ExposureError(f"{name}[PRIMARY]: keyword {missing} missing (EXPSTART and EXPEND go together)")
        gains, rns = {}, {}
        for a in inst.amps:
            for key, store in ((f"ATODGN{a}", gains), (f"READNSE{a}", rns)):
                if key not in ph:
                    raise ExposureError(f"{name}[PRIMARY]: keyword {key} missing")
                try:
                    store[a] = float(ph[key])
                except (TypeError, ValueError):
                    raise ExposureError(f"{name}[PRIMARY]: {key}={ph[key]!r} is not a number") from None
        filt = ""
        for key in inst.filter_keywords:
            v = str(ph.get(key, "")).strip().upper()
            if v and not v.startswith("CLEAR"):
                filt = v
        bunit = None
        chips = []
        wcss, shapes = {}, {}
        ext_names = {(h.name, h.ver) for h in hdul[1:]}
        for chip in inst.chips:
            ev = chip.extver
            if ("SCI", ev) not in ext_names:
                raise ExposureError(f"{name}[SCI,{ev}]: extension missing")
            for ext in ("ERR", "DQ"):
                if (ext, ev) not in ext_names:
                    raise ExposureError(f"{name}[{ext},{ev}]: extension missing")
            sh = hdul["SCI", ev].header
            where = f"{name}[SCI,{ev}]"
            if "BUNIT" not in sh:
                raise ExposureError(f"{where}: keyword BUNIT missing (AstroDrizzle would "
                                    "treat electrons as electrons/s and mislabel)")
            bu = str(sh["BUNIT"]).strip().upper()
            if bu not in _ELECTRON_UNITS:
                raise ExposureError(f"{where}: BUNIT={sh['BUNIT']!r}, expected one of {_ELECTRON_UNITS}")
            if bunit is not None and bu != bunit:
                raise ExposureError(f"{where}: BUNIT={bu!r} differs from the other chips ({bunit!r})")
            bunit = bu
            for key in ("EXPNAME", "MEANDARK", "NGOODPIX"):
                if key not in sh:
                    raise ExposureError(f"{where}: keyword {key} missing")
            if not int(sh["NGOODPIX"]) > 0:
                raise ExposureError(f"{where}: NGOODPIX={sh['NGOODPIX']!r}, expected > 0")
            try:
                w = WCS(sh, naxis=2)
            except Exception as exc:
                raise ExposureError(f"{where}: unusable WCS ({exc})") from None
            if not w.has_celestial or "TAN" not in "".join(w.wcs.ctype):
                raise ExposureError(f"{where}: CTYPE1/CTYPE2={tuple(w.wcs.ctype)!r}, expected a TAN WCS")
            data = hdul["SCI", ev].data
            if data is None or data.ndim != 2:
                raise ExposureError(f"{where}: no 2-D image data")
            dq = hdul["DQ", ev].data
            if dq is None or dq.shape != data.shape:
                raise ExposureError(f"{name}[DQ,{ev}]: shape {None if dq is None else dq.shape} "
                                    f"does not match SCI {data.shape}")
            chips.append(ev)
            wcss[ev], shapes[ev] = w, data.shape
        rootname = str(ph.get("ROOTNAME", name.split("_")[0])).strip().lower()
        info = ExposureInfo(path=path, rootname=rootname, instrument=inst, exptime=exptime,
                            bunit=bunit, chips=chips, filter=filt,
                            target=str(ph.get("TARGNAME", "")).strip(), wcs=wcss, shape=shapes)
        for ev in chips:
            amps = inst.chip(ev).amps
            info.gain[ev] = sum(gains[a] for a in amps) / len(amps)
            info.readnoise[ev] = sum(rns[a] for a in amps) / len(amps)
        return info


def find_exposures(raw_dir: str | os.PathLike) -> list[Path]:
    """The calibrated exposures of a visit directory: ``*_flc.fits``, else ``*_flt.fits``."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: visit directory not found")
    files = sorted(raw_dir.glob("*_flc.fits")) or sorted(raw_dir.glob("*_flt.fits"))
    return files


def astrodrizzle_kwargs(cfg: LabelConfig, n_exposures: int, output: str) -> dict:
    """The AstroDrizzle keyword arguments crforge uses for one visit."""
    refine = 0 < n_exposures <= cfg.refine_max_exposures
    return dict(
        output=output,
        runfile=f"{output}_astrodrizzle.log",
        updatewcs=False,  # True queries MAST's astrometry service and stalls offline
        build=False,
        in_memory=False,  # the crmask and blot files are our products
        clean=False,
        num_cores=cfg.num_cores,
        context=False,
        restore=False,
        preserve=False,
        resetbits=4096,
        static=True,
        skysub=cfg.skysub,
        skymethod="localmin",
        driz_separate=True,
        driz_sep_bits=cfg.driz_sep_bits,
        driz_sep_kernel="turbo",
        median=True,
        combine_type="minimum" if refine else cfg.combine_type,
        combine_nhigh=0 if refine else cfg.combine_nhigh,
        combine_nsigma=cfg.combine_nsigma,
        blot=True,
        driz_cr=True,
        driz_cr_snr=cfg.driz_cr_snr,
        driz_cr_scale=cfg.driz_cr_scale,
        driz_cr_grow=cfg.driz_cr_grow,
        driz_cr_corr=False,
        driz_combine=False,  # the final drizzle adds ~1/3 to the time and nothing to labels
    )


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
                    residuals: dict) -> np.ndarray:
    """Smallest residual of the other exposures at the sky position of each pixel."""
    from scipy.ndimage import map_coordinates

    best = np.full(shape, np.nan, np.float32)
    ny, nx = shape
    corners_y = np.array([0, 0, ny - 1, ny - 1, ny // 2], float)
    corners_x = np.array([0, nx - 1, 0, nx - 1, nx // 2], float)
    ra, dec = infos[i].wcs[ev].all_pix2world(corners_x, corners_y, 0)
    for j, other in enumerate(infos):
        if j == i:
            continue
        for ev2 in other.chips:
            res = residuals[(j, ev2)]
            # skip chips that do not overlap this one (the other chip of a dithered pair)
            px, py = other.wcs[ev2].all_world2pix(ra, dec, 0)
            oy, ox = res.shape
            if px.max() < 0 or px.min() > ox - 1 or py.max() < 0 or py.min() > oy - 1:
                continue
            py, px = _pixel_map(infos[i], ev, other, ev2, shape)
            inside = (py >= 0) & (py <= oy - 1) & (px >= 0) & (px <= ox - 1)
            if not inside.any():
                continue
            vals = map_coordinates(res, [py[inside], px[inside]], order=1)
            cur = best[inside]
            best[inside] = np.where(np.isnan(cur), vals, np.minimum(cur, vals))
    return best


def _run_astrodrizzle(files: list[str], scratch: Path, kwargs: dict) -> None:
    from drizzlepac import astrodrizzle

    cwd = os.getcwd()
    os.chdir(scratch)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings():
            # cosmetic warnings of AstroDrizzle's own (a long header comment it
            # truncates, NaN casts in its median of empty pixels), once per file
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
            astrodrizzle.AstroDrizzle(input=files, **kwargs)
    except Exception as exc:
        tail = _log_tail(scratch / kwargs["runfile"], buf.getvalue())
        raise DrizzleError(f"AstroDrizzle failed ({type(exc).__name__}: {exc}); log tail:\n{tail}") from exc
    finally:
        os.chdir(cwd)
    logger.debug("AstroDrizzle output:\n%s", buf.getvalue()[-4000:])


def _log_tail(path: Path, fallback: str, n: int = 25) -> str:
    text = path.read_text(errors="replace") if path.exists() else fallback
    return "\n".join(text.strip().splitlines()[-n:])


def _drizzlepac_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("drizzlepac")
    except PackageNotFoundError:  # pragma: no cover - drizzlepac is a dependency
        return "unknown"


def _labels_complete(out: Path) -> bool:
    rep = out / REPORT_NAME
    if not rep.exists():
        return False
    try:
        meta = json.loads(rep.read_text())
    except ValueError:
        return False
    return all((out / e["label"]).exists() for e in meta.get("exposures", []))


def label_visit(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: LabelConfig | None = None,
    *,
    overwrite: bool = False,
) -> dict:
    """Label every exposure of one visit.

    Parameters
    ----------
    raw_dir : path-like
        Directory holding the visit's ``*_flc.fits`` (or ``*_flt.fits``) files.
        They are only read.
    out_dir : path-like
        Directory for this visit's label files (created; a complete previous
        result is kept unless ``overwrite``).
    cfg : LabelConfig, optional
        Settings; defaults if ``None``.
    overwrite : bool
        Redo a visit whose labels are complete.

    Returns
    -------
    dict
        The report also written to ``out_dir/labels.json``.

    Raises
    ------
    VisitError
        Fewer than ``cfg.min_exposures`` usable exposures; the message lists why
        each unusable one was refused.
    DrizzleError
        AstroDrizzle failed; the message has the tail of its log.
    """
    cfg = LabelConfig() if cfg is None else cfg
    if not isinstance(cfg, LabelConfig):
        raise TypeError(f"cfg must be a LabelConfig, got {type(cfg).__name__}")
    cfg.validate()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if _labels_complete(out_dir) and not overwrite:
        logger.info("%s: labels complete, kept", out_dir)
        return json.loads((out_dir / REPORT_NAME).read_text())
    files = find_exposures(raw_dir)
    if not files:
        raise VisitError(f"{raw_dir}: no *_flc.fits or *_flt.fits exposures")
    infos, refused = [], []
    for f in files:
        try:
            infos.append(validate_exposure(f))
        except ExposureError as exc:
            logger.warning("refused %s", exc)
            refused.append(str(exc))
    if len({i.instrument.name for i in infos}) > 1:
        raise VisitError(f"{raw_dir}: exposures of several instruments "
                         f"{sorted({i.instrument.name for i in infos})}")
    if len({i.filter for i in infos}) > 1:
        raise VisitError(f"{raw_dir}: exposures through several filters {sorted({i.filter for i in infos})}")
    if len(infos) < cfg.min_exposures:
        why = "; ".join(refused) if refused else "nothing else in the directory"
        raise VisitError(f"{raw_dir}: {len(infos)} usable exposure(s), at least "
                         f"{cfg.min_exposures} needed to label cosmic rays ({why})")
    inst = infos[0].instrument
    visit = raw_dir.name
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".scratch-", dir=out_dir))
    t0 = time.perf_counter()
    try:
        names = []
        for info in infos:
            _pristine_copy(info, scratch / info.path.name)
            names.append(info.path.name)
        kwargs = astrodrizzle_kwargs(cfg, len(infos), visit)
        _run_astrodrizzle(names, scratch, kwargs)
        missing = [f"{Path(n).name.rsplit('_', 1)[0]}_sci{ev}_crmask.fits"
                   for n, info in zip(names, infos) for ev in info.chips
                   if not (scratch / f"{n.rsplit('_', 1)[0]}_sci{ev}_crmask.fits").exists()]
        if missing:
            # AstroDrizzle drops some bad inputs with only a printed warning.
            tail = _log_tail(scratch / kwargs["runfile"], "")
            raise DrizzleError(f"{visit}: AstroDrizzle wrote no CR mask for {missing}; log tail:\n{tail}")
        t_driz = time.perf_counter() - t0
        refine = len(infos) <= cfg.refine_max_exposures
        residuals = _residuals(infos, scratch) if refine else {}
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=cfg.threads) as pool:
            exposures = list(pool.map(
                lambda i: _write_label(infos[i], i, infos, scratch, out_dir, cfg, refine, residuals),
                range(len(infos))))
    except BaseException:
        if not cfg.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    if cfg.keep_scratch:
        logger.info("scratch kept in %s", scratch)
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "visit": visit,
        "instrument": inst.name,
        "filter": infos[0].filter,
        "target": infos[0].target,
        "n_exposures": len(infos),
        "refined": refine,
        "refused": refused,
        "config": cfg.result_dict(),
        "astrodrizzle": {k: v for k, v in kwargs.items() if k not in ("output", "runfile")},
        "drizzlepac_version": _drizzlepac_version(),
        "seconds_astrodrizzle": round(t_driz, 2),
        "seconds_total": round(time.perf_counter() - t0, 2),
        "exposures": exposures,
    }
    tmp = out_dir / (REPORT_NAME + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out_dir / REPORT_NAME)
    logger.info("labelled %s: %d exposures in %.1f s", visit, len(infos), report["seconds_total"])
    return json.loads(json.dumps(report))  # the same types as a report read back later


def _pristine_copy(info: ExposureInfo, dest: Path) -> None:
    """Copy an exposure for AstroDrizzle, which edits its inputs in place.

    A ``MDRIZSKY`` left by an earlier drizzle would be read as "sky already
    subtracted", so it is removed from the copy.
    """
    shutil.copyfile(info.path, dest)
    os.chmod(dest, 0o644)
    with fits.open(dest, mode="update") as hdul:
        for hdu in hdul[1:]:
            if "MDRIZSKY" in hdu.header:
                del hdu.header["MDRIZSKY"]


def _residuals(infos: list[ExposureInfo], scratch: Path) -> dict:
    """Exposure minus blotted reference, in electrons, per (exposure index, chip)."""
    out = {}
    for j, info in enumerate(infos):
        to_e = info.exptime if info.bunit == "ELECTRONS/S" else 1.0
        stem = info.path.name.rsplit("_", 1)[0]
        for ev in info.chips:
            sci = fits.getdata(info.path, ("SCI", ev)).astype(np.float32)
            blot = fits.getdata(scratch / f"{stem}_sci{ev}_blt.fits").astype(np.float32)
            out[(j, ev)] = (sci - blot) * np.float32(to_e)
    return out


def _write_label(info: ExposureInfo, i: int, infos: list[ExposureInfo], scratch: Path,
                 out_dir: Path, cfg: LabelConfig, refine: bool, residuals: dict) -> dict:
    inst = info.instrument
    hdus = []
    chips = []
    with fits.open(info.path, memmap=False) as src:
        ph = src[0].header.copy()
        ph["CRFSTAGE"] = ("label", "crforge stage that wrote this file")
        ph["CRFDRIZ"] = (_drizzlepac_version(), "drizzlepac version")
        ph["CRFNEXP"] = (len(infos), "exposures drizzled together")
        ph["CRFREFIN"] = (refine, "labels refined on the minimum stack")
        hdus.append(fits.PrimaryHDU(header=ph))
        for ev in info.chips:
            sci_h = src["SCI", ev].header
            sci = src["SCI", ev].data.astype(np.float32)
            dq = src["DQ", ev].data
            crmask = fits.getdata(scratch / f"{info.path.name.rsplit('_', 1)[0]}_sci{ev}_crmask.fits")
            if crmask.shape != sci.shape:
                raise DrizzleError(f"{info.path.name}[SCI,{ev}]: crmask shape {crmask.shape} != {sci.shape}")
            cr = masks.cr_from_crmask(crmask).astype(bool)
            sky = float(fits.getheader(scratch / info.path.name, ("SCI", ev)).get("MDRIZSKY", 0.0))
            to_e = info.exptime if info.bunit == "ELECTRONS/S" else 1.0
            if refine:
                blot = fits.getdata(scratch / f"{info.path.name.rsplit('_', 1)[0]}_sci{ev}_blt.fits")
                other = _other_residual(infos, i, ev, sci.shape, residuals)
                cr = masks.refine_cr_mask(
                    sci * to_e, blot.astype(np.float32) * to_e, info.readnoise[ev],
                    snr=tuple(cfg.refine_snr), deriv_scale=cfg.refine_deriv_scale,
                    other_residual=other, other_scale=cfg.refine_other_scale)
            elif cfg.grow_snr > 0:
                blot = fits.getdata(scratch / f"{info.path.name.rsplit('_', 1)[0]}_sci{ev}_blt.fits")
                blot = blot.astype(np.float32) * to_e
                # the reference is a median of the other exposures: its variance is
                # about 1.5/(n-1) of one exposure's
                var_ref = (np.abs(blot) + info.readnoise[ev] ** 2) * np.float32(1.5 / (len(infos) - 1))
                cr = masks.refine_cr_mask(
                    sci * to_e, blot, info.readnoise[ev], reference_var=var_ref,
                    snr=(np.inf, cfg.grow_snr), deriv_scale=cfg.grow_deriv_scale, initial=cr)
            nocov = _no_coverage(infos, i, ev, sci.shape)
            ignore = masks.ignore_mask(dq, inst, cfg.saturation_grow, no_coverage=nocov)
            keep = [k for k in ("CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2",
                                "CD1_1", "CD1_2", "CD2_1", "CD2_2", "WCSNAME", "CCDCHIP",
                                "EXPNAME", "BUNIT", "LTV1", "LTV2")
                    if k in sci_h]
            h = fits.Header([(k, sci_h[k]) for k in keep])
            h["GAIN"] = (info.gain[ev], "mean gain of the amplifiers, e-/DN")
            h["RDNOISE"] = (info.readnoise[ev], "mean read noise, e-")
            h["SKY"] = (sky, "AstroDrizzle MDRIZSKY, input units")
            frac = float(cr[ignore == 0].mean()) if np.any(ignore == 0) else 0.0
            h["CRFRAC"] = (frac, "fraction of usable pixels labelled CR")
            hdus.append(fits.ImageHDU(sci, header=h, name="SCI", ver=ev))
            hdus.append(fits.ImageHDU(cr.astype(np.uint8), header=h.copy(), name="CR", ver=ev))
            hdus.append(fits.ImageHDU(ignore, header=h.copy(), name="IGNORE", ver=ev))
            chips.append({"extver": ev, "cr_fraction": frac, "sky": sky,
                          "ignore_fraction": float(np.mean(ignore != 0))})
    name = f"{info.rootname}{LABEL_SUFFIX}"
    tmp = out_dir / (name + ".tmp")
    fits.HDUList(hdus).writeto(tmp, overwrite=True)
    os.replace(tmp, out_dir / name)
    return {"rootname": info.rootname, "input": str(info.path), "label": name, "chips": chips}


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------




