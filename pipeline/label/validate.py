"""Checks of a visit's exposures before AstroDrizzle sees them.

AstroDrizzle fails silently on several defects of its inputs (no ``BUNIT``: electrons
are treated as e-/s and every label is wrong; no ``EXPTIME``: the file is dropped and
the run "succeeds" without masks), hence :func:`validate_exposure`, which refuses such
a file with a message naming the file, the extension and the keyword.

What differs between imagers comes from their :class:`~crforge.pipeline.instruments.Instrument`
record, not from code paths here: where the exposure time is (``exptime_ext``,
``exptime_keyword``), the gain and read-noise keywords, the units the SCI arrays may be
in (``units``; COUNTS are turned into electrons with the gain), and how exposures are
packed (``packing``: one per file, or one per SCI imset as in STIS CR-split files, so
that :func:`validate_file` returns one :class:`ExposureInfo` per exposure).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from crforge.errors import InputError
from crforge.pipeline.fitsfile import open_exposure
from crforge.pipeline.instruments import (
    INSTRUMENTS,
    Instrument,
    instrument_for_header,
    normalise_unit,
    to_electrons,
)

logger = logging.getLogger(__name__)

__all__ = ["ExposureError", "VisitError", "ExposureInfo", "validate_exposure", "validate_file",
           "find_exposures", "validate_visit"]

#: Suffixes of calibrated exposures, in order of preference (every imager's ``products``).
_PRODUCTS = ("flc", "flt", "c0m")


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
    imset: int = 0

    def to_electrons(self, ev: int) -> float:
        """Factor from chip ``ev``'s SCI units to electrons (exposure time for a rate, gain for counts)."""
        return to_electrons(self.bunit, exptime=self.exptime, gain=self.gain[ev])

    def source_ext(self, ev: int) -> int:
        """EXTVER in :attr:`path` of this exposure's chip ``ev`` (its imset in a STIS file)."""
        return self.imset or ev

    @property
    def scratch_name(self) -> str:
        """The name of this exposure's file as AstroDrizzle sees it (one file per exposure)."""
        return f"{self.rootname}_{self.path.name.rsplit('_', 1)[-1]}" if self.imset else self.path.name


@dataclass
class _Primary:
    """What the primary header says: instrument, exposure time, amplifiers, filter."""

    instrument: Instrument
    exptime: float | None  # None: in each imset's SCI header
    gain: dict[str, float]
    readnoise: dict[str, float]
    filter: str


def validate_exposure(path: str | os.PathLike) -> ExposureInfo:
    """Check a file of one exposure (the first of a STIS file of several imsets).

    Raises
    ------
    ExposureError
        Naming the file, the extension and the keyword or what was expected.
    """
    return validate_file(path)[0]


def validate_file(path: str | os.PathLike) -> list[ExposureInfo]:
    """Check that an FLC/FLT file has everything AstroDrizzle needs to label it right.

    Returns
    -------
    list of ExposureInfo
        One per exposure: the file's, or one per SCI imset when the instrument
        packs exposures as imsets (STIS).

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
        inst = prim.instrument
        ext_names = {(h.name, h.ver) for h in hdul[1:]}
        if inst.packing == "imsets":
            groups = [(h.ver,) for h in hdul[1:] if h.name == "SCI"]
            if not groups:
                raise ExposureError(f"{name}: no SCI extension (expected one imset per exposure)")
        else:
            groups = [tuple(c.extver for c in inst.chips)]
        return [_exposure(path, hdul, ext_names, prim, vers) for vers in groups]


def _exposure(path: Path, hdul: fits.HDUList, ext_names: set, prim: _Primary,
              vers: tuple[int, ...]) -> ExposureInfo:
    """One exposure of a file: the chips (SCI EXTVERs) ``vers``."""
    name, ph, inst = path.name, hdul[0].header, prim.instrument
    imset = vers[0] if inst.packing == "imsets" else 0
    root = str(ph.get("ROOTNAME", name.split("_")[0])).strip().lower()
    exptime = prim.exptime
    if imset:
        sh = hdul["SCI", imset].header if ("SCI", imset) in ext_names else fits.Header()
        root = str(sh.get("EXPNAME", f"{root}{imset}")).strip().lower()
        exptime = _exptime(f"{name}[SCI,{imset}]", sh, inst)
    info = ExposureInfo(path=path, rootname=root, instrument=inst, exptime=exptime, bunit="", chips=[],
                        filter=prim.filter, target=str(ph.get("TARGNAME", "")).strip(), imset=imset)
    for chip, src in zip(inst.chips, vers):
        ev = chip.extver
        info.bunit, info.wcs[ev], info.shape[ev] = _check_chip(name, hdul, ext_names, src, info.bunit, inst)
        info.chips.append(ev)
        info.gain[ev] = sum(prim.gain[a] for a in chip.amps) / len(chip.amps)
        info.readnoise[ev] = sum(prim.readnoise[a] for a in chip.amps) / len(chip.amps)
    return info


def _open_verified(path: Path) -> fits.HDUList:
    """Open a FITS file completely, refusing unreadable and truncated files.

    Waivered files (WFPC2 c0f) are converted and a separate DQ file (c1f/c1m) attached
    (:func:`crforge.pipeline.fitsfile.open_exposure`).
    """
    return open_exposure(path, error=ExposureError)


def _number(where: str, header: fits.Header, key: str) -> float:
    """A keyword that must be present and a number."""
    if key not in header:
        raise ExposureError(f"{where}: keyword {key} missing")
    try:
        return float(header[key])
    except (TypeError, ValueError):
        raise ExposureError(f"{where}: {key}={header[key]!r} is not a number") from None


def _exptime(where: str, header: fits.Header, inst: Instrument) -> float:
    """The exposure time in ``header`` (the instrument's keyword), > 0 s, with its timing."""
    key = inst.exptime_keyword
    if key not in header:
        raise ExposureError(f"{where}: keyword {key} missing "
                            "(AstroDrizzle would silently drop this exposure)")
    exptime = _number(where, header, key)
    if not exptime > 0:
        raise ExposureError(f"{where}: {key}={exptime!r}, expected > 0 s")
    if ("EXPSTART" in header) != ("EXPEND" in header):
        missing = "EXPEND" if "EXPSTART" in header else "EXPSTART"
        raise ExposureError(f"{where}: keyword {missing} missing (EXPSTART and EXPEND go together)")
    for k in inst.exposure_keywords:
        if k not in header:
            raise ExposureError(f"{where}: keyword {k} missing (AstroDrizzle reads it beside {key})")
    return exptime


def _check_primary(name: str, ph: fits.Header) -> _Primary:
    """Instrument, exposure time and timing, amplifier gains and read noise, filter."""
    where = f"{name}[PRIMARY]"
    # WFPC2's primary has no DETECTOR (each group's is its chip number): its table entry has none
    detectorless = {i.instrume for i in INSTRUMENTS.values() if not i.detector}
    for key in ("TELESCOP", "INSTRUME", "DETECTOR"):
        if key not in ph and not (key == "DETECTOR" and str(ph.get("INSTRUME", "")).strip() in detectorless):
            raise ExposureError(f"{where}: keyword {key} missing")
    try:
        inst = instrument_for_header(ph)
    except ValueError as exc:
        raise ExposureError(f"{where}: {exc}") from None
    exptime = _exptime(where, ph, inst) if inst.exptime_ext == "PRIMARY" else None
    try:
        gains, rns = inst.header_gains(ph)
    except InputError as exc:
        raise ExposureError(f"{where}: {exc}") from None
    values = [str(ph.get(key, "")).strip().upper() for key in inst.filter_keywords]
    named = [v for v in values if v and not v.startswith("CLEAR")]
    filt = named[-1] if named else next((v for v in values if v), "")
    return _Primary(instrument=inst, exptime=exptime, gain=gains, readnoise=rns, filter=filt)


def _check_chip(name: str, hdul: fits.HDUList, ext_names: set, ev: int,
                bunit: str, inst: Instrument) -> tuple[str, WCS, tuple[int, int]]:
    """Extensions, units, keywords, WCS and data of the chip in SCI EXTVER ``ev``.

    ``bunit`` is the unit of the chips checked before ("" for the first): all must
    agree, and be one of the instrument's ``units``. Returns the chip's BUNIT
    (:func:`~crforge.pipeline.instruments.normalise_unit`), WCS and shape.
    """
    for ext in inst.extensions:
        if (ext, ev) not in ext_names:
            kept = f" ({inst.name} keeps it in the {'/'.join(inst.dq_files.values())} file, not found)" \
                if ext == "DQ" and inst.dq_files else ""
            raise ExposureError(f"{name}[{ext},{ev}]: extension missing{kept}")
    sh = hdul["SCI", ev].header
    where = f"{name}[SCI,{ev}]"
    if "BUNIT" not in sh and not inst.default_bunit:
        raise ExposureError(f"{where}: keyword BUNIT missing (AstroDrizzle would "
                            "treat electrons as electrons/s and mislabel)")
    bu = normalise_unit(sh.get("BUNIT", inst.default_bunit))
    if bu not in inst.units:
        raise ExposureError(f"{where}: BUNIT={sh.get('BUNIT')!r}, expected one of {inst.units} ({inst.name})")
    if bunit and bu != bunit:
        raise ExposureError(f"{where}: BUNIT={bu!r} differs from the other chips ({bunit!r})")
    for key in inst.sci_keywords:
        if key not in sh:
            raise ExposureError(f"{where}: keyword {key} missing")
    if "NGOODPIX" in inst.sci_keywords and not int(_number(where, sh, "NGOODPIX")) > 0:
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
        with warnings.catch_warnings():  # astropy's fixes (MJD-OBS from DATE-OBS) are harmless here
            warnings.simplefilter("ignore", FITSFixedWarning)
            w = WCS(sh, naxis=2)
    except Exception as exc:  # astropy raises ValueError, KeyError, wcs-specific errors...
        raise ExposureError(f"{where}: unusable WCS ({exc})") from None
    if not w.has_celestial or "TAN" not in "".join(w.wcs.ctype):
        raise ExposureError(f"{where}: CTYPE1/CTYPE2={tuple(w.wcs.ctype)!r}, expected a TAN WCS")
    return w


def find_exposures(raw_dir: str | os.PathLike) -> list[Path]:
    """The calibrated exposures of a visit directory: ``*_flc.fits``, else ``*_flt.fits``, else ``*_c0m``."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: visit directory not found")
    for suffix in _PRODUCTS:
        found = sorted(raw_dir.glob(f"*_{suffix}.fits"))
        if found:
            return found
    return []


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
        raise VisitError(f"{raw_dir}: no *_flc.fits, *_flt.fits or *_c0m.fits exposures")
    infos, refused = [], []
    for f in files:
        try:
            infos.extend(validate_file(f))
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
