"""Clean a calibrated HST FITS file (FLC/FLT) with a zoo model (``crforge clean``).

Every SCI extension is run through the mask model (and, with ``--inpaint``, the
inpaint model) with :func:`crforge.deepcr_models.clean`; the CR mask is OR-ed into the DQ
extension of the same EXTVER with one bit (default: the instrument table's
``clean_dq_bit``, 16384 on ACS/WFC and 8 on WFC3/UVIS, bits their pipelines never
set; ``--dq-bit`` overrides), and with ``--inpaint`` the SCI pixels under the mask are
replaced by the inpainted ones. Every other pixel, bit and extension is copied
unchanged. The result goes to a new file (``<input stem>_crclean.fits`` or
``--output``), written under a temporary name and renamed when complete
(:mod:`crforge.atomic`); the input is never modified unless ``--in-place``.

Pixels in electrons/s (``BUNIT='ELECTRONS/S'``) are multiplied by ``EXPTIME`` before
the networks see them, pixels in counts (STIS, WFPC2: ``BUNIT='COUNTS'``, or no BUNIT
where the instrument table's ``default_bunit`` says so) by the chip's gain from the
table's gain keyword, and the inpainted values are converted back. The exposure time
is read where the table says (a STIS imset's own SCI header). Files of imagers that
keep DQ apart (WFPC2's c0f/c0m, ``Instrument.dq_files``) are read with their c1f/c1m
DQ file when it is there (waivered files converted as AstroDrizzle does); the output is
then a multi-extension file with SCI and DQ per chip, the DQ all zero but for the
clean bit when no DQ file was found. Pixels the DQ
marks bad, saturated (grown by ``label.saturation_grow`` pixels, as in the training
labels) or without data are shown to each network as in its training (as they are, or as
the sky where its record says ``fill_ignored``) and never masked.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crforge import atomic
from crforge.deepcr_models.inference import (
    DEFAULT_TILE,
    ZooModel,
    chosen_views,
    clean,
    count_tiles,
    load,
    recommended_threshold,
)
from crforge.errors import InputError
from crforge.paths import check_writable_dir

logger = logging.getLogger(__name__)

__all__ = ["clean_fits", "default_output",]


def default_output(path: str | os.PathLike) -> Path:
    """``<dir>/<stem>_crclean.fits`` for ``<dir>/<stem>.fits``."""
    path = Path(path)
    stem = path.name[:-5] if path.name.lower().endswith(".fits") else path.stem
    return path.with_name(f"{stem}_crclean.fits")


def _check_bit(bit: Any) -> int:
    if not isinstance(bit, (int, np.integer)) or isinstance(bit, bool):
        raise TypeError(f"dq_bit must be an int, got {type(bit).__name__}")
    if bit <= 0 or bit & (bit - 1) or bit > 16384:
        raise InputError(f"dq_bit={bit!r}: expected one power of two from 1 to 16384 (HST DQ "
                         "arrays are int16)")
    return int(bit)


def _output_path(path: Path, output: str | os.PathLike | None, in_place: bool, overwrite: bool) -> Path:
    if in_place:
        if output is not None and Path(output).resolve() != path.resolve():
            raise InputError("in_place=True writes over the input: give no output")
        return path
    out = Path(output) if output is not None else default_output(path)
    if out.resolve() == path.resolve():
        raise InputError(f"output {out} is the input file: pass --in-place to write over it")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists (pass --overwrite to replace it)")
    return out


@dataclass
class _Chip:
    """One SCI extension, its DQ, its unit (normalised spelling) and exposure time.

    ``gain`` turns counts into electrons (1 for data in electrons); ``bunit`` is then
    the unit after that factor.
    """

    sci: Any
    dq: Any
    bunit: str
    exptime: float | None
    gain: float = 1.0


def _counts_gain(path: Path, hdul, ver: int, inst) -> float:
    """e-/DN of SCI,``ver`` from the instrument table's gain keywords in the primary header."""
    from crforge.pipeline.instruments import Instrument

    if not isinstance(inst, Instrument) or "COUNTS" not in inst.units:
        return 0.0
    chip = inst.chips[0] if inst.packing == "imsets" or len(inst.chips) == 1 else inst.chip(ver)
    try:
        gains, _ = inst.header_gains(hdul[0].header)
    except InputError as exc:
        raise InputError(f"{path}[PRIMARY]: {exc}: the gain (e-/DN) is needed to turn counts into "
                         "electrons") from None
    g = sum(gains[a] for a in chip.amps) / len(chip.amps)
    return g


def _instrument_and_bit(path: Path, primary, dq_bit: int | None):
    """The DQ bits of the file's imager (its table entry, else the HST pipelines') and the bit to set."""
    from crforge.pipeline.instruments import Instrument, dq_convention

    conv = dq_convention(primary)
    if dq_bit is not None:
        return conv, _check_bit(dq_bit)
    if not isinstance(conv, Instrument):
        raise InputError(f"{path}: INSTRUME/DETECTOR {primary.get('INSTRUME')!r}/"
                         f"{primary.get('DETECTOR')!r} is not in crforge's instrument table; pass --dq-bit")
    return conv, conv.clean_dq_bit


def _dq_of(path: Path, hdul, sci, inst):
    """DQ,``ver`` of SCI,``ver``; a new all-zero one for an imager whose DQ file is missing (WFPC2)."""
    from astropy.io import fits

    ver = sci.ver
    try:
        return hdul["DQ", ver]
    except KeyError:
        if not getattr(inst, "dq_files", None) or sci.data is None:
            raise InputError(f"{path}: SCI,{ver} has no DQ,{ver} extension") from None
    logger.warning("%s: no DQ file (%s): DQ,%d written with crforge's bit only", path,
                   "/".join(inst.dq_files.values()), ver)
    dq = fits.ImageHDU(np.zeros(sci.data.shape, np.int16), name="DQ", ver=ver)
    hdul.append(dq)
    return dq


def _chip(path: Path, hdul, sci, forced: bool, inst=None) -> _Chip:
    """Check one SCI extension and its DQ partner (``forced``: a unit in counts read as electrons)."""
    from crforge.pipeline.instruments import normalise_unit

    ver, primary = sci.ver, hdul[0].header
    dq = _dq_of(path, hdul, sci, inst)
    if sci.data is None or sci.data.ndim != 2 or dq.data is None or dq.data.shape != sci.data.shape:
        raise InputError(f"{path}: SCI,{ver} and DQ,{ver} are not two 2-D arrays of one shape")
    if not np.issubdtype(dq.data.dtype, np.integer):
        raise InputError(f"{path}: DQ,{ver} is not an integer array ({dq.data.dtype})")
    bunit = sci.header.get("BUNIT", primary.get("BUNIT")) or getattr(inst, "default_bunit", "") or None
    key = normalise_unit(bunit)
    gain = _counts_gain(path, hdul, ver, inst) if key == "COUNTS" else 0.0
    if gain:  # the instrument table knows where the gain is: counts become electrons
        key = "ELECTRONS"
    elif key not in ("ELECTRONS", "ELECTRONS/S"):
        what = "has no BUNIT" if bunit is None else f"BUNIT={bunit!r}"
        if not forced:
            raise InputError(f"{path}: SCI,{ver} {what}: expected ELECTRONS or ELECTRONS/S "
                             "(counts must be calibrated to electrons first; --force reads them as electrons)")
        logger.warning("%s: SCI,%d %s: read as electrons (--force)", path, ver, what)
        key = "ELECTRONS"
    exptime = primary.get("EXPTIME", sci.header.get("EXPTIME"))
    if getattr(inst, "exptime_ext", "PRIMARY") == "SCI":  # STIS: each imset's own
        exptime = sci.header.get(inst.exptime_keyword, exptime)
    if key != "ELECTRONS" and not (exptime is not None and float(exptime) > 0):
        raise InputError(f"{path}: SCI,{ver} is in {bunit} but EXPTIME is {exptime!r}: "
                         "a positive exposure time is needed")
    if not np.isfinite(sci.data).any():
        raise InputError(f"{path}: SCI,{ver} has no finite pixel (all NaN or infinite)")
    return _Chip(sci, dq, key, exptime, gain or 1.0)


def _chips(path: Path, hdul, forced: bool, inst=None) -> list[_Chip]:
    scis = [h for h in hdul if h.name == "SCI"]
    if not scis:
        raise InputError(f"{path}: no SCI extension (not a calibrated FLC/FLT file?)")
    return [_chip(path, hdul, sci, forced, inst) for sci in scis]


def _check_fitness(path: Path, hdul, models: list[ZooModel], allow_mismatch: bool, inst=None) -> bool:
    """Refuse (or warn about) a file its models were not trained for; True when forced past a mismatch.

    Counts of an imager whose table entry has the gain are described as electrons:
    :func:`_chip` converts them.
    """
    from crforge.deepcr_models.fitness import check_fitness, describe_header
    from crforge.pipeline.instruments import normalise_unit

    sci = next((h for h in hdul if h.name == "SCI"), None)
    bunit = None if sci is None else sci.header.get("BUNIT", hdul[0].header.get("BUNIT"))
    bunit = bunit or getattr(inst, "default_bunit", "") or None
    unit = "ELECTRONS" if bunit and normalise_unit(bunit) in getattr(inst, "units", ()) and \
        normalise_unit(bunit) == "COUNTS" else None
    desc = describe_header(hdul[0].header, sci.header if sci is not None else None, where=str(path),
                           ext_name=f"SCI,{sci.ver}" if sci is not None else "SCI", unit=unit)
    found = False
    for m in models:
        found = bool(check_fitness(m, desc, allow_mismatch=allow_mismatch)) or found
    return found or allow_mismatch


def _clean_chip(chip: _Chip, path: Path, inst, dq_bit: int, mm: ZooModel, im: ZooModel | None,
                options: dict) -> dict:
    """Clean one chip in place (DQ bit, SCI when inpainting); its summary."""
    from crforge.pipeline.label.config import LabelConfig
    from crforge.pipeline.masks import ignore_mask

    sci, dq, ver = chip.sci, chip.dq, chip.sci.ver
    image, dqa = sci.data, dq.data
    if chip.gain != 1.0:  # counts -> electrons (and back for the inpainted pixels)
        image = image.astype(np.float32) * np.float32(chip.gain)
    # always, whatever the imager: saturation grown as in the training labels; the clean
    # bit itself is not a defect (a file cleaned twice)
    ign = ignore_mask(dqa, inst, saturation_grow=LabelConfig().saturation_grow,
                      bad_bits=inst.bad_bits & ~dq_bit) != 0
    mask, cleaned = clean(image, mm, im, ignore=ign, bunit=chip.bunit, exptime=chip.exptime, **options)
    already = int(((dqa & dq_bit) != 0).sum())
    if already:
        logger.warning("%s DQ,%d: %d pixels already have bit %d; it is OR-ed in anyway",
                       path.name, ver, already, dq_bit)
    dq.data = (dqa | np.asarray(dq_bit, dtype=dqa.dtype) * mask.astype(dqa.dtype)).astype(dqa.dtype)
    if cleaned is not None:
        sci.data = (cleaned / np.float32(chip.gain)).astype(sci.data.dtype, copy=False)
        sci.header["CRINPNT"] = (True, "CR pixels inpainted by crforge clean")
    sci.header["CRNPIX"] = (int(mask.sum()), "CR pixels found by crforge clean")
    return {"extver": int(ver), "cr_pixels": int(mask.sum()), "fraction": float(mask.mean()),
            "bunit": chip.bunit}


def _clean_chips(path: Path, chips: list[_Chip], inst, dq_bit: int, mm: ZooModel, im: ZooModel | None,
                 options: dict, progress: bool | None) -> list[dict]:
    """Clean every chip, with one progress bar over all their tiles."""
    from tqdm.auto import tqdm

    tile, overlap = options["tile"], options["overlap"]
    total = sum(count_tiles(c.sci.data.shape, tile, m.overlap if overlap is None else overlap, m.depth)
                for m in (mm, im) if m is not None for c in chips)
    bar = tqdm(total=total, unit="tile", disable=None if progress is None else not progress, desc=path.name)
    try:
        out = []
        for chip in chips:
            bar.set_description(f"{path.name} SCI,{chip.sci.ver}")
            out.append(_clean_chip(chip, path, inst, dq_bit, mm, im, {**options, "progress": bar.update}))
        return out
    finally:
        bar.close()


def _stamp_primary(primary, mm: ZooModel, im: ZooModel | None, threshold: float, dq_bit: int,
                   views: int) -> None:
    """Record in the primary header what cleaned the file."""
    def model_name(m: ZooModel) -> str:
        return str(m.record.name if m.record else Path(m.source).name)[:68]

    primary["CRMODEL"] = (model_name(mm), "crforge clean mask model")
    primary["CRTHRESH"] = (float(threshold), "crforge clean probability threshold")
    primary["CRVIEWS"] = (int(views), "crforge clean symmetric views averaged")
    primary["CRDQBIT"] = (int(dq_bit), "DQ bit of crforge clean CR mask")
    if im is not None:
        primary["CRINPMOD"] = (model_name(im), "crforge clean inpaint model")
    primary.add_history(f"crforge clean: CR mask OR-ed into DQ bit {dq_bit}"
                        + ("; CR pixels inpainted" if im is not None else ""))


def _write(hdul, out: Path, overwrite: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    checksum = any("CHECKSUM" in h.header for h in hdul)
    with atomic.atomic_path(out, overwrite=overwrite) as tmp:
        hdul.writeto(tmp, checksum=checksum, output_verify="silentfix")


def clean_fits(path: str | os.PathLike, mask_model: str | os.PathLike | ZooModel, *,
               inpaint_model: str | os.PathLike | ZooModel | None = None,
               output: str | os.PathLike | None = None, in_place: bool = False, overwrite: bool = False,
               dq_bit: int | None = None, threshold: float | None = None, tile: int = DEFAULT_TILE,
               overlap: int | None = None, batch_size: int = 1, threads: int | None = None,
               precision: str = "float32", device: str | None = None, zoo: str | os.PathLike | None = None,
               allow_mismatch: bool = False, progress: bool | None = None, views: int | None = None) -> dict:
    """Clean every chip of a calibrated HST file and write the result.

    Parameters
    ----------
    path : path-like
        An FLC/FLT file: SCI and DQ extensions per chip (matched by EXTVER).
    mask_model, inpaint_model
        As :func:`crforge.deepcr_models.clean`; with an inpaint model the SCI pixels
        under the mask are replaced.
    output : path-like, optional
        Where to write; default ``<stem>_crclean.fits`` next to the input.
    in_place, overwrite : bool
        Write over the input (still through a temporary file and a rename); replace
        an existing output file.
    dq_bit : int, optional
        The DQ bit of the CR mask; default the instrument's ``clean_dq_bit``.
    threshold, tile, overlap, batch_size, threads, precision, device, zoo, views
        As :func:`crforge.deepcr_models.clean`.
    allow_mismatch : bool
        Clean a file whose instrument, detector, filter or unit is not what the
        models were trained on (``crforge clean --force``), with a warning per
        mismatch, instead of refusing it.
    progress : bool, optional
        A progress bar over chips and tiles (None: only on a terminal).

    Returns
    -------
    dict
        ``output``, ``model``, ``threshold``, ``views``, ``dq_bit``, ``inpainted`` and ``chips``
        (per chip: ``extver``, ``cr_pixels``, ``fraction``, ``bunit``).

    Raises
    ------
    FileNotFoundError
        No input file.
    InputError
        Not a readable or a truncated FITS file; no SCI extension, a SCI without its
        DQ, a missing or unknown BUNIT, a rate without EXPTIME, a SCI without a finite
        pixel, an unknown instrument without ``dq_bit``, an output that is the input
        (without ``in_place``), exists (without ``overwrite``) or cannot be written;
        data the models were not trained for (without ``allow_mismatch``:
        :class:`~crforge.deepcr_models.fitness.FitnessError`).
    """
    from crforge.pipeline.fitsfile import open_exposure

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    out = _output_path(path, output, in_place, overwrite)
    check_writable_dir(out.parent, what="output directory")
    dq_bit = _check_bit(dq_bit) if dq_bit is not None else None
    mm = load(mask_model, kind="mask", zoo=zoo, device=device or "cpu")
    im = load(inpaint_model, kind="inpaint", zoo=zoo, device=device or "cpu") if inpaint_model is not None else None
    views = chosen_views(mm, views)
    threshold = recommended_threshold(mm, threshold, views)
    options = {"threshold": threshold, "tile": tile, "overlap": overlap, "batch_size": batch_size,
               "threads": threads, "precision": precision, "views": views}
    with open_exposure(path, verify=False) as hdul:
        inst, dq_bit = _instrument_and_bit(path, hdul[0].header, dq_bit)
        forced = _check_fitness(path, hdul, [m for m in (mm, im) if m is not None], allow_mismatch, inst)
        chips = _clean_chips(path, _chips(path, hdul, forced, inst), inst, dq_bit, mm, im, options, progress)
        _stamp_primary(hdul[0].header, mm, im, threshold, dq_bit, views)
        _write(hdul, out, overwrite or in_place)
    logger.info("%s -> %s: %s CR pixels (DQ bit %d)", path, out,
                ", ".join(f"SCI,{c['extver']} {c['cr_pixels']}" for c in chips), dq_bit)
    return {"output": str(out), "model": mm.source, "threshold": float(threshold), "views": views,
            "dq_bit": dq_bit,
            "inpainted": im is not None, "chips": chips}
