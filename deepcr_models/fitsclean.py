"""Clean calibrated HST files (FLC/FLT) with a zoo model (``crforge clean``).

Every SCI extension is run through the mask model (and, with ``--inpaint``, the
inpaint model) with :func:`crforge.deepcr_models.clean`; the CR mask is OR-ed into the DQ
extension of the same EXTVER with one bit (default: the instrument table's
``clean_dq_bit``, 16384 on ACS/WFC and 8 on WFC3/UVIS, bits their pipelines never
set; ``--dq-bit`` overrides), and with ``--inpaint`` the SCI pixels under the mask are
replaced by the inpainted ones. Every other pixel, bit and extension is copied
unchanged. The result goes to a new file (``<input stem>_crclean.fits`` or
``--output``), written under a temporary name and renamed when complete; the input
is never modified unless ``--in-place``.

Pixels in electrons/s (``BUNIT='ELECTRONS/S'``) are multiplied by ``EXPTIME`` before
the networks see them and the inpainted values are converted back. Pixels the DQ
marks bad, saturated (grown by 2 pixels) or without data are shown to the networks
as sky, as in training, and never masked.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from crforge.deepcr_models.inference import DEFAULT_TILE, ZooModel, clean, count_tiles, load
from crforge.errors import InputError

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


def clean_fits(path: str | os.PathLike, mask_model: str | os.PathLike | ZooModel, *,
               inpaint_model: str | os.PathLike | ZooModel | None = None,
               output: str | os.PathLike | None = None, in_place: bool = False, overwrite: bool = False,
               dq_bit: int | None = None, threshold: float | None = None, tile: int = DEFAULT_TILE,
               overlap: int | None = None, batch_size: int = 1, threads: int | None = None,
               precision: str = "float32", device: str | None = None, zoo: str | os.PathLike | None = None,
               progress: bool | None = None) -> dict:
    """Clean every chip of a calibrated HST file and write the result.

    Parameters
    ----------
    path : path-like
        An FLC/FLT file: SCI and DQ extensions per chip (matched by EXTVER).
    mask_model, inpaint_model
        As :func:`crforge.deepcr_models.clean`; with an inpaint model the SCI pixels under the
        mask are replaced.
    output : path-like, optional
        Where to write; default ``<stem>_crclean.fits`` next to the input.
    in_place : bool
        Write over the input (still through a temporary file and a rename).
    overwrite : bool
        Replace an existing output file.
    dq_bit : int, optional
        The DQ bit of the CR mask; default the instrument's ``clean_dq_bit``.
    threshold, tile, overlap, batch_size, threads, precision, device, zoo
        As :func:`crforge.deepcr_models.clean`.
    progress : bool, optional
        A progress bar over chips and tiles (None: only on a terminal).

    Returns
    -------
    dict
        ``output``, ``model``, ``threshold``, ``dq_bit``, ``inpainted`` and ``chips``
        (per chip: ``extver``, ``cr_pixels``, ``fraction``, ``bunit``).

    Raises
    ------
    FileNotFoundError
        No input file.
    ValueError
        No SCI extension, a SCI without its DQ, a missing or unknown BUNIT, a rate
        without EXPTIME, an unknown instrument without ``dq_bit``, an output that is
        the input (without ``in_place``) or exists (without ``overwrite``).
    """
    from astropy.io import fits
    from tqdm.auto import tqdm

    from crforge.pipeline.instruments import instrument_for_header
    from crforge.pipeline.masks import ignore_mask

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if in_place:
        if output is not None and Path(output).resolve() != path.resolve():
            raise InputError("in_place=True writes over the input: give no output")
        out = path
    else:
        out = Path(output) if output is not None else default_output(path)
        if out.resolve() == path.resolve():
            raise InputError(f"output {out} is the input file: pass --in-place to write over it")
        if out.exists() and not overwrite:
            raise InputError(f"{out} exists (pass --overwrite to replace it)")
    if dq_bit is not None:
        dq_bit = _check_bit(dq_bit)

    mm = load(mask_model, kind="mask", zoo=zoo, device=device or "cpu")
    im = load(inpaint_model, kind="inpaint", zoo=zoo, device=device or "cpu") if inpaint_model is not None else None
    if threshold is None:
        threshold = mm.threshold if mm.threshold is not None else 0.5

    with fits.open(path, memmap=False) as hdul:
        primary = hdul[0].header
        try:
            inst = instrument_for_header(primary)
        except ValueError:
            inst = None
        if dq_bit is None:
            if inst is None:
                raise InputError(f"{path}: INSTRUME/DETECTOR {primary.get('INSTRUME')!r}/"
                                 f"{primary.get('DETECTOR')!r} is not in crforge's instrument table; "
                                 "pass --dq-bit")
            dq_bit = inst.clean_dq_bit
        scis = [h for h in hdul if h.name == "SCI"]
        if not scis:
            raise InputError(f"{path}: no SCI extension (not a calibrated FLC/FLT file?)")
        plan = []
        for sci in scis:
            ver = sci.ver
            try:
                dq = hdul["DQ", ver]
            except KeyError:
                raise InputError(f"{path}: SCI,{ver} has no DQ,{ver} extension") from None
            if sci.data is None or sci.data.ndim != 2 or dq.data is None or dq.data.shape != sci.data.shape:
                raise InputError(f"{path}: SCI,{ver} and DQ,{ver} are not two 2-D arrays of one shape")
            if not np.issubdtype(dq.data.dtype, np.integer):
                raise InputError(f"{path}: DQ,{ver} is not an integer array ({dq.data.dtype})")
            bunit = sci.header.get("BUNIT", primary.get("BUNIT"))
            if bunit is None:
                raise InputError(f"{path}: SCI,{ver} has no BUNIT (expected ELECTRONS or ELECTRONS/S)")
            key = str(bunit).strip().upper().replace(" ", "")
            if key not in ("ELECTRONS", "ELECTRONS/S", "ELECTRONS/SEC"):
                raise InputError(f"{path}: SCI,{ver} BUNIT={bunit!r}: expected ELECTRONS or ELECTRONS/S "
                                 "(counts must be calibrated to electrons first)")
            exptime = primary.get("EXPTIME", sci.header.get("EXPTIME"))
            if key != "ELECTRONS" and not (exptime is not None and float(exptime) > 0):
                raise InputError(f"{path}: SCI,{ver} is in {bunit} but EXPTIME is {exptime!r}: "
                                 "a positive exposure time is needed")
            plan.append((sci, dq, key, exptime))

        per_chip = sum(count_tiles(s.data.shape, tile, overlap, mm.depth) for s, *_ in plan)
        if im is not None:
            per_chip += sum(count_tiles(s.data.shape, tile, overlap, im.depth) for s, *_ in plan)
        bar = tqdm(total=per_chip, unit="tile", disable=None if progress is None else not progress,
                   desc=path.name)
        chips = []
        try:
            for sci, dq, bunit, exptime in plan:
                ver = sci.ver
                bar.set_description(f"{path.name} SCI,{ver}")
                image = sci.data
                dqa = dq.data
                if inst is not None:
                    # the clean bit itself is not a defect (a file cleaned twice)
                    ign = ignore_mask(dqa, inst, bad_bits=inst.bad_bits & ~dq_bit) != 0
                else:
                    ign = None
                mask, cleaned = clean(image, mm, im, threshold=threshold, tile=tile, overlap=overlap,
                                      ignore=ign, bunit=bunit, exptime=exptime, batch_size=batch_size,
                                      threads=threads, precision=precision, progress=bar.update)
                already = int(((dqa & dq_bit) != 0).sum())
                if already:
                    logger.warning("%s DQ,%d: %d pixels already have bit %d; it is OR-ed in anyway",
                                   path.name, ver, already, dq_bit)
                dq.data = (dqa | np.asarray(dq_bit, dtype=dqa.dtype) * mask.astype(dqa.dtype)).astype(dqa.dtype)
                if cleaned is not None:
                    sci.data = cleaned.astype(image.dtype, copy=False)
                    sci.header["CRINPNT"] = (True, "CR pixels inpainted by crforge clean")
                sci.header["CRNPIX"] = (int(mask.sum()), "CR pixels found by crforge clean")
                chips.append({"extver": int(ver), "cr_pixels": int(mask.sum()),
                              "fraction": float(mask.mean()), "bunit": bunit})
        finally:
            bar.close()
        primary["CRMODEL"] = (str(mm.record.name if mm.record else Path(mm.source).name)[:68],
                              "crforge clean mask model")
        primary["CRTHRESH"] = (float(threshold), "crforge clean probability threshold")
        primary["CRDQBIT"] = (int(dq_bit), "DQ bit of crforge clean CR mask")
        if im is not None:
            primary["CRINPMOD"] = (str(im.record.name if im.record else Path(im.source).name)[:68],
                                   "crforge clean inpaint model")
        primary.add_history(f"crforge clean: CR mask OR-ed into DQ bit {dq_bit}"
                            + ("; CR pixels inpainted" if im is not None else ""))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        checksum = any("CHECKSUM" in h.header for h in hdul)
        try:
            hdul.writeto(tmp, overwrite=True, checksum=checksum, output_verify="silentfix")
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    logger.info("%s -> %s: %s CR pixels (DQ bit %d)", path, out,
                ", ".join(f"SCI,{c['extver']} {c['cr_pixels']}" for c in chips), dq_bit)
    return {"output": str(out), "model": mm.source, "threshold": float(threshold), "dq_bit": dq_bit,
            "inpainted": im is not None, "chips": chips}


# --------------------------------------------------------------------------- CLI




