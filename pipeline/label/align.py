"""Relative alignment of a visit's exposures before AstroDrizzle: the STScI tools, offline.

The header WCS of the exposures of one visit disagree by a few milli-arcseconds
(guide-star reacquisition, velocity aberration, thermal breathing). AstroDrizzle takes
the WCS as it is: a tenth of a pixel of error leaves a dipole on every sharp star in
the exposure-minus-median residual, which its CR test reads as cosmic rays. So, as
the HST pipeline does with TweakReg, :func:`align_exposures` aligns the exposures to
the first one before the median is built:

- sources are found on every chip with drizzlepac's own TweakReg finder
  (:func:`drizzlepac.tweakutils.ndfind`) with TweakReg's ``conv_width`` and
  ``threshold`` and its sky sigma (``sqrt(2 |mode|)`` of the chip), so the per-visit
  settings published with TweakReg (e.g. deepCR's, in ``data_manifests/``) mean here
  what they meant there; pixels flagged in DQ are left out;
- the catalogues are matched and fitted by :func:`tweakwcs.align_wcs` (the matcher
  and fitter drizzlepac's own alignment uses), all chips of an exposure fitted as one
  group, each exposure against the first. Matching starts from the header WCS
  (tweakwcs' 2-D histogram search for a large offset is off: on crowded, CR-laden
  chips it locked onto spurious offsets of half a pixel), so the headers must agree
  to within ``align_tolerance`` pixels, as they do within a visit;
- a fit that fails, matches fewer than ``align_min_matches`` sources, leaves a
  residual rms above ``align_max_rms`` pixels or a shift less certain than
  ``align_max_shift_error`` raises :class:`AlignmentError` naming
  the visit and the exposure: the visit is not labelled on a WCS known to be bad;
- a good fit is written into the scratch copies' SCI headers (``CRVAL``, ``CD``:
  tweakwcs corrects the linear part of the WCS; SIP and lookup-table distortions are
  left as they are) before AstroDrizzle reads them; the raw files are never touched.

The fit of every exposure (status, matches, shift, rotation, scale, rms) goes into
``labels.json``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from crforge.pipeline.fitsfile import open_exposure
from crforge.pipeline.label.config import LabelConfig
from crforge.pipeline.label.validate import ExposureInfo, VisitError

logger = logging.getLogger(__name__)

__all__ = ["AlignmentError", "ExposureAlignment", "align_exposures", "aligned_infos", "WCS_KEYS"]

#: WCS keywords an alignment rewrites in a chip's SCI header.
WCS_KEYS = ("CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2")


class AlignmentError(VisitError):
    """The exposures of a visit could not be aligned well enough to label it (bad input: exit 2)."""


@dataclass(frozen=True)
class ExposureAlignment:
    """The fit of one exposure's WCS to the reference exposure.

    Parameters
    ----------
    rootname : str
        The exposure.
    status : str
        ``REFERENCE`` (the exposure aligned to), ``SUCCESS`` or tweakwcs' failure.
    n_sources : int
        Sources found on its chips.
    n_matches : int
        Sources matched to the reference and kept by the fit's clipping (0 for the
        reference).
    shift : tuple of float
        ``(dx, dy)`` of the correction in the reference's tangent plane, pixels.
    rotation_deg, scale : float
        Rotation and scale of the correction (0 and 1 for a shift-only fit).
    rms : float
        Residual rms of the matched sources after the fit, pixels (both axes together).
    """

    rootname: str
    status: str
    n_sources: int
    n_matches: int = 0
    shift: tuple[float, float] = (0.0, 0.0)
    rotation_deg: float = 0.0
    scale: float = 1.0
    rms: float = 0.0

    @property
    def shift_error(self) -> float:
        """Standard error of the fitted shift, pixels: ``rms / sqrt(n_matches)``."""
        return self.rms / np.sqrt(self.n_matches) if self.n_matches else float("inf")

    def to_json(self) -> dict:
        """The exposure's ``alignment`` entry of ``labels.json``."""
        return {"rootname": self.rootname, "status": self.status, "n_sources": self.n_sources,
                "n_matches": self.n_matches, "shift": list(self.shift),
                "rotation_deg": self.rotation_deg, "scale": self.scale, "rms": self.rms}

    @classmethod
    def from_json(cls, doc: dict) -> ExposureAlignment:
        """Inverse of :meth:`to_json`."""
        return cls(rootname=str(doc["rootname"]), status=str(doc["status"]),
                   n_sources=int(doc["n_sources"]), n_matches=int(doc["n_matches"]),
                   shift=(float(doc["shift"][0]), float(doc["shift"][1])),
                   rotation_deg=float(doc["rotation_deg"]), scale=float(doc["scale"]),
                   rms=float(doc["rms"]))


def find_sources(sci: np.ndarray, good: np.ndarray, conv_width: float, threshold: float) -> Table:
    """Point sources of one chip with TweakReg's finder and its sky sigma.

    Parameters
    ----------
    sci : ndarray
        The chip (any units; the sigma is TweakReg's ``sqrt(2 |mode|)`` of it).
    good : ndarray of bool
        Pixels that may hold a source (not flagged in DQ).
    conv_width, threshold : float
        TweakReg's ``imagefindpars``: kernel FWHM in pixels; peak of the convolved
        image in sky sigmas.

    Returns
    -------
    astropy.table.Table
        Columns ``x``, ``y`` (0-based pixels) and ``flux``.
    """
    from drizzlepac.tweakutils import ndfind
    from stsci.imagestats import ImageStats

    data = np.where(good, sci, 0.0).astype(np.float32)
    finite = data[good & np.isfinite(data)]
    if finite.size == 0:
        return Table(names=("x", "y", "flux"), dtype=(float, float, float))
    mode = ImageStats(finite, nclip=3, fields="mode", binwidth=0.01).mode
    sigma = float(np.sqrt(2.0 * abs(mode))) or 1.0
    # the finder prints to stdout, and warns on an empty chip: the caller reports counts
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        x, y, flux, *_ = ndfind(data, sigma * threshold, conv_width, sigma**2, mask=good,
                                use_sharp_round=True)
    return Table({"x": np.asarray(x, float), "y": np.asarray(y, float), "flux": np.asarray(flux, float)})


def default_conv_width(info: ExposureInfo) -> float:
    """TweakReg's rule for ``conv_width``: about twice the PSF FWHM (3.5 for ACS/WFC).

    The FWHM is the instrument table's for the exposure's filter; 3.5 pixels (TweakReg's
    ACS/WFC value) for a filter the table does not know.
    """
    try:
        return round(2.0 * float(info.instrument.fwhm(info.filter)), 2)
    except (ValueError, KeyError):
        return 3.5


def _correctors(infos: list[ExposureInfo], scratch: Path, cfg: LabelConfig, conv_width: float,
                threshold: float) -> tuple[list, dict[str, int]]:
    """A tweakwcs corrector per chip (grouped by exposure), and the sources found per exposure."""
    from tweakwcs.correctors import FITSWCSCorrector

    correctors, counts = [], {}
    for j, info in enumerate(infos):
        counts[info.rootname] = 0
        # open_exposure: WFPC2's DQ lives in the c1m copied beside the c0m
        with open_exposure(scratch / info.scratch_name, verify=False) as hdul:
            for ev in info.chips:
                sci, dq = hdul["SCI", ev].data, hdul["DQ", ev].data
                good = (dq.astype(np.int64) & ~cfg.align_good_bits) == 0
                cat = find_sources(sci, good, conv_width, threshold)
                counts[info.rootname] += len(cat)
                wcs = WCS(hdul["SCI", ev].header, hdul)
                wcs.pixel_shape = sci.shape[::-1]
                correctors.append(FITSWCSCorrector(wcs, meta={
                    "catalog": cat, "group_id": j, "name": f"{info.path.name}[SCI,{ev}]",
                    "path": scratch / info.scratch_name, "extver": ev}))
    return correctors, counts


def align_exposures(infos: list[ExposureInfo], scratch: Path, cfg: LabelConfig,
                    visit: str) -> tuple[ExposureAlignment, ...]:
    """Align the scratch copies of a visit's exposures to the first one, in place.

    Parameters
    ----------
    infos : list of ExposureInfo
        The exposures, whose copies are in ``scratch``; the first is the reference.
    scratch : pathlib.Path
        AstroDrizzle's directory, holding the copies (their SCI headers are updated).
    cfg : LabelConfig
        ``align_*`` settings (``align_conv_width`` 0: the instrument's default).
    visit : str
        The visit's name, for messages.

    Returns
    -------
    tuple of ExposureAlignment
        One per exposure, in ``infos`` order.

    Raises
    ------
    AlignmentError
        No source found in an exposure, a fit failed, kept fewer than
        ``cfg.align_min_matches`` sources, left an rms above ``cfg.align_max_rms`` or a
        shift less certain than ``cfg.align_max_shift_error``; the message names the
        visit, the exposure and why.
    """
    conv_width = cfg.align_conv_width or default_conv_width(infos[0])
    try:
        correctors, counts = _correctors(infos, scratch, cfg, conv_width, cfg.align_threshold)
    except ValueError as exc:  # a WCS tweakwcs cannot correct (unknown distortion)
        raise AlignmentError(f"visit {visit}: cannot align ({exc}); the visit is not labelled on an "
                             "unchecked WCS") from None
    empty = [r for r, n in counts.items() if n == 0]
    if empty:
        raise AlignmentError(f"visit {visit}: no sources found to align on in {', '.join(empty)} "
                             f"(align_conv_width={conv_width}, align_threshold={cfg.align_threshold}); "
                             "the visit is not labelled on an unchecked WCS")
    _fit(correctors, cfg, visit)
    results = tuple(_result(info, counts[info.rootname],
                            next(c for c in correctors if c.meta["group_id"] == j).meta["fit_info"])
                    for j, info in enumerate(infos))
    _check(results, cfg, visit)
    for c in correctors:
        _write_wcs(c.meta["path"], c.meta["extver"], c.wcs)
    for r in results:
        logger.info("%s %s: %s, %d matches, shift (%.3f, %.3f) px, rms %.3f px", visit, r.rootname,
                    r.status, r.n_matches, r.shift[0], r.shift[1], r.rms)
    return results


def _fit(correctors: list, cfg: LabelConfig, visit: str) -> None:
    """:func:`tweakwcs.align_wcs` on the correctors, each exposure against the first."""
    from tweakwcs import align_wcs
    from tweakwcs.matchutils import XYXYMatch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            align_wcs(correctors, enforce_user_order=True, expand_refcat=False, minobj=cfg.align_min_matches,
                      match=XYXYMatch(separation=0.5, tolerance=cfg.align_tolerance, use2dhist=False),
                      fitgeom=cfg.align_fitgeom, nclip=3, sigma=(3.0, "rmse"))
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:  # too few or degenerate matches
        raise AlignmentError(f"visit {visit}: tweakwcs could not fit the exposures ({type(exc).__name__}: "
                             f"{exc}); the visit is not labelled on an unchecked WCS") from None


def _result(info: ExposureInfo, n_sources: int, fit: dict) -> ExposureAlignment:
    """The :class:`ExposureAlignment` of a tweakwcs ``fit_info``."""
    status = str(fit.get("status", "FAILED: no fit"))
    if status != "SUCCESS":
        return ExposureAlignment(info.rootname, status, n_sources)
    rot = np.atleast_1d(fit.get("proper_rot", 0.0))
    scale = np.atleast_1d(fit.get("<scale>", 1.0))
    kept = int(np.count_nonzero(fit["fitmask"])) if "fitmask" in fit else int(fit.get("nmatches", 0))
    return ExposureAlignment(
        info.rootname, status, n_sources, n_matches=kept,
        shift=(round(float(fit["shift"][0]), 5), round(float(fit["shift"][1]), 5)),
        rotation_deg=round(float(rot[0]), 6), scale=round(float(scale[0]), 8),
        rms=round(float(fit["rmse"]), 5))


def _check(results: tuple[ExposureAlignment, ...], cfg: LabelConfig, visit: str) -> None:
    """Raise :class:`AlignmentError` for the first exposure whose fit is not good enough."""
    for r in results:
        if r.status == "REFERENCE":
            continue
        if r.status != "SUCCESS":
            why = f"the fit failed ({r.status})"
        elif r.n_matches < cfg.align_min_matches:
            why = f"{r.n_matches} matched sources, fewer than align_min_matches={cfg.align_min_matches}"
        elif r.rms > cfg.align_max_rms:
            why = f"residual rms {r.rms:.3f} px above align_max_rms={cfg.align_max_rms}"
        elif r.shift_error > cfg.align_max_shift_error:
            why = (f"shift uncertain by {r.shift_error:.3f} px ({r.n_matches} matches, rms {r.rms:.3f} px), "
                   f"above align_max_shift_error={cfg.align_max_shift_error}")
        else:
            continue
        raise AlignmentError(f"visit {visit}: exposure {r.rootname} could not be aligned to "
                             f"{results[0].rootname}: {why} ({r.n_sources} sources found); "
                             "the visit is not labelled on a bad WCS")


def _write_wcs(path: Path, ev: int, wcs: WCS) -> None:
    """Write an aligned chip WCS's ``CRVAL`` and ``CD`` into the SCI header of ``path``."""
    cd = wcs.wcs.cd if wcs.wcs.has_cd() else wcs.pixel_scale_matrix
    with fits.open(path, mode="update") as hdul:
        h = hdul["SCI", ev].header
        h["CRVAL1"], h["CRVAL2"] = float(wcs.wcs.crval[0]), float(wcs.wcs.crval[1])
        for (i, k), v in np.ndenumerate(cd):
            h[f"CD{i + 1}_{k + 1}"] = float(v)
        h["CRFALIGN"] = (True, "WCS aligned by crforge (tweakwcs)")


def aligned_infos(infos: list[ExposureInfo], scratch: Path) -> list[ExposureInfo]:
    """``infos`` with the WCS of their aligned scratch copies (for coverage and residual maps)."""
    out = []
    for info in infos:
        with fits.open(scratch / info.scratch_name) as hdul:
            wcs = {ev: WCS(hdul["SCI", ev].header, hdul) for ev in info.chips}
        out.append(replace(info, wcs=wcs))
    return out
