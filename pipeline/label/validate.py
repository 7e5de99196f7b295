"""Checks of a visit's exposures before AstroDrizzle sees them.

AstroDrizzle fails silently on several defects of its inputs (no ``BUNIT``: electrons
are treated as e-/s and every label is wrong; no ``EXPTIME``: the file is dropped and
the run "succeeds" without masks), hence :func:`validate_exposure`, which refuses such
a file with a message naming the file, the extension and the keyword.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from crforge.errors import InputError
from crforge.pipeline.fitsfile import open_verified
from crforge.pipeline.instruments import Instrument, instrument_for_header

logger = logging.getLogger(__name__)

__all__ = ["ExposureError", "VisitError", "ExposureInfo", "validate_exposure", "find_exposures",
           "validate_visit"]

_ELECTRON_UNITS = ("ELECTRONS", "ELECTRONS/S")


class ExposureError(InputError):
    """An exposure that cannot be labelled; the message names file, extension, keyword."""


class VisitError(InputError):
    """A visit that cannot be labelled (e.g. fewer than two usable exposures)."""


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

    @property
    def to_electrons(self) -> float:
        """Factor from the SCI units to electrons (the exposure time for a rate)."""
        return self.exptime if self.bunit == "ELECTRONS/S" else 1.0


@dataclass
class _Primary:
    """What the primary header says: instrument, exposure time, amplifiers, filter."""

    instrument: Instrument
    exptime: float
    gain: dict[str, float]
    readnoise: dict[str, float]
    filter: str


def validate_exposure(path: str | os.PathLike) -> ExposureInfo:
    """Check that an FLC/FLT file has everything AstroDrizzle needs to label it right.

    Raises
    ------
    ExposureError
        Naming the file, the extension and the keyword or what was expected.
    """
    path = Path(path)
    name = path.name
    with _open_verified(path) as hdul:
        ph = hdul[0].header
        prim = _check_primary(name, ph)
        info = ExposureInfo(path=path, rootname=str(ph.get("ROOTNAME", name.split("_")[0])).strip().lower(),
                            instrument=prim.instrument, exptime=prim.exptime, bunit="", chips=[],
                            filter=prim.filter, target=str(ph.get("TARGNAME", "")).strip())
        ext_names = {(h.name, h.ver) for h in hdul[1:]}
        for chip in prim.instrument.chips:
            ev = chip.extver
            info.bunit, info.wcs[ev], info.shape[ev] = _check_chip(name, hdul, ext_names, ev, info.bunit)
            info.chips.append(ev)
            info.gain[ev] = sum(prim.gain[a] for a in chip.amps) / len(chip.amps)
            info.readnoise[ev] = sum(prim.readnoise[a] for a in chip.amps) / len(chip.amps)
    return info


def _open_verified(path: Path) -> fits.HDUList:
    """Open a FITS file completely, refusing unreadable and truncated files."""
    return open_verified(path, error=ExposureError)


def _number(where: str, header: fits.Header, key: str) -> float:
    """A keyword that must be present and a number."""
    if key not in header:
        raise ExposureError(f"{where}: keyword {key} missing")
    try:
        return float(header[key])
    except (TypeError, ValueError):
        raise ExposureError(f"{where}: {key}={header[key]!r} is not a number") from None


def _check_primary(name: str, ph: fits.Header) -> _Primary:
    """Instrument, exposure time and timing, amplifier gains and read noise, filter."""
    where = f"{name}[PRIMARY]"
    for key in ("TELESCOP", "INSTRUME", "DETECTOR"):
        if key not in ph:
            raise ExposureError(f"{where}: keyword {key} missing")
    try:
        inst = instrument_for_header(ph)
    except ValueError as exc:
        raise ExposureError(f"{where}: {exc}") from None
    if "EXPTIME" not in ph:
        raise ExposureError(f"{where}: keyword EXPTIME missing "
                            "(AstroDrizzle would silently drop this exposure)")
    exptime = _number(where, ph, "EXPTIME")
    if not exptime > 0:
        raise ExposureError(f"{where}: EXPTIME={exptime!r}, expected > 0 s")
    if ("EXPSTART" in ph) != ("EXPEND" in ph):
        missing = "EXPEND" if "EXPSTART" in ph else "EXPSTART"
        raise ExposureError(f"{where}: keyword {missing} missing (EXPSTART and EXPEND go together)")
    gains, rns = {}, {}
    for a in inst.amps:
        gains[a] = _number(where, ph, f"ATODGN{a}")
        rns[a] = _number(where, ph, f"READNSE{a}")
    filt = ""
    for key in inst.filter_keywords:
        v = str(ph.get(key, "")).strip().upper()
        if v and not v.startswith("CLEAR"):
            filt = v
    return _Primary(instrument=inst, exptime=exptime, gain=gains, readnoise=rns, filter=filt)


def _check_chip(name: str, hdul: fits.HDUList, ext_names: set, ev: int,
                bunit: str) -> tuple[str, WCS, tuple[int, int]]:
    """Extensions, units, keywords, WCS and data of chip ``ev``.

    ``bunit`` is the unit of the chips checked before ("" for the first): all must
    agree. Returns the chip's BUNIT (upper case), WCS and shape.
    """
    for ext in ("SCI", "ERR", "DQ"):
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
    if bunit and bu != bunit:
        raise ExposureError(f"{where}: BUNIT={bu!r} differs from the other chips ({bunit!r})")
    for key in ("EXPNAME", "MEANDARK", "NGOODPIX"):
        if key not in sh:
            raise ExposureError(f"{where}: keyword {key} missing")
    if not int(_number(where, sh, "NGOODPIX")) > 0:
        raise ExposureError(f"{where}: NGOODPIX={sh['NGOODPIX']!r}, expected > 0")
    wcs = _check_wcs(where, sh)
    data = hdul["SCI", ev].data
    if data is None or data.ndim != 2:
        raise ExposureError(f"{where}: no 2-D image data")
    if not np.isfinite(data).any():  # AstroDrizzle's median would be NaN and every label garbage
        raise ExposureError(f"{where}: no finite pixel (all {data.size} are NaN or infinite)")
    dq = hdul["DQ", ev].data
    if dq is None or dq.shape != data.shape:
        raise ExposureError(f"{name}[DQ,{ev}]: shape {None if dq is None else dq.shape} "
                            f"does not match SCI {data.shape}")
    return bu, wcs, data.shape


def _check_wcs(where: str, sh: fits.Header) -> WCS:
    """The chip's celestial TAN WCS (distortion included)."""
    try:
        w = WCS(sh, naxis=2)
    except Exception as exc:  # astropy raises ValueError, KeyError, wcs-specific errors...
        raise ExposureError(f"{where}: unusable WCS ({exc})") from None
    if not w.has_celestial or "TAN" not in "".join(w.wcs.ctype):
        raise ExposureError(f"{where}: CTYPE1/CTYPE2={tuple(w.wcs.ctype)!r}, expected a TAN WCS")
    return w


def find_exposures(raw_dir: str | os.PathLike) -> list[Path]:
    """The calibrated exposures of a visit directory: ``*_flc.fits``, else ``*_flt.fits``."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: visit directory not found")
    return sorted(raw_dir.glob("*_flc.fits")) or sorted(raw_dir.glob("*_flt.fits"))


def validate_visit(raw_dir: str | os.PathLike, min_exposures: int) -> tuple[list[ExposureInfo], list[str]]:
    """Validate every exposure of a visit directory.

    Parameters
    ----------
    raw_dir : path-like
        The visit directory.
    min_exposures : int
        Fewer usable exposures than this refuses the visit.

    Returns
    -------
    infos : list of ExposureInfo
        The usable exposures, in file-name order.
    refused : list of str
        Why each unusable exposure was refused.

    Raises
    ------
    VisitError
        No exposures, several instruments or filters, or too few usable exposures
        (the message lists why each unusable one was refused).
    """
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
    instruments = sorted({i.instrument.name for i in infos})
    if len(instruments) > 1:
        raise VisitError(f"{raw_dir}: exposures of several instruments {instruments}")
    if len({i.filter for i in infos}) > 1:
        raise VisitError(f"{raw_dir}: exposures through several filters {sorted({i.filter for i in infos})}")
    if len(infos) < min_exposures:
        why = "; ".join(refused) if refused else "nothing else in the directory"
        raise VisitError(f"{raw_dir}: {len(infos)} usable exposure(s), at least "
                         f"{min_exposures} needed to label cosmic rays ({why})")
    return infos, refused
