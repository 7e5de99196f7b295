"""AstroDrizzle for the labelling stage: its keyword arguments, and one offline run.

AstroDrizzle edits its inputs in place, so :func:`run_astrodrizzle` copies the
exposures into a scratch directory first, and runs it there offline
(``updatewcs=False``: no MAST astrometry service, no CRDS files) through separate
drizzling, median, blot and ``driz_cr``. The final drizzle is skipped: it adds about
a third to the run time and nothing to the masks. Its products, read by
:mod:`crforge.pipeline.label.labelfile`, are named by :func:`scratch_file`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import warnings
from pathlib import Path

from astropy.io import fits

from crforge.pipeline.label.config import LabelConfig
from crforge.pipeline.label.validate import ExposureInfo

logger = logging.getLogger(__name__)

__all__ = ["DrizzleError", "astrodrizzle_kwargs", "refines", "run_astrodrizzle", "scratch_file",
           "drizzlepac_version", "copy_inputs"]


class DrizzleError(RuntimeError):
    """AstroDrizzle failed; the message carries the tail of its log."""


def refines(cfg: LabelConfig, n_exposures: int, always: bool = False) -> bool:
    """Whether a visit of ``n_exposures`` uses the minimum stack and crforge's refinement.

    ``always``: the imager's ``Instrument.always_refine`` (WFPC2).
    """
    return 0 < n_exposures and (always or n_exposures <= cfg.refine_max_exposures)


def astrodrizzle_kwargs(cfg: LabelConfig, n_exposures: int, output: str, always_refine: bool = False) -> dict:
    """The AstroDrizzle keyword arguments crforge uses for one visit."""
    refine = refines(cfg, n_exposures, always_refine)
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


def scratch_file(scratch: Path, info: ExposureInfo, ev: int, product: str) -> Path:
    """AstroDrizzle's ``product`` (``crmask``, ``blt``) of chip ``ev`` of an exposure."""
    name = info.scratch_name
    stem = name[:-5] if info.instrument.drizzle_stem == "filename" else name.rsplit("_", 1)[0]
    return scratch / f"{stem}_sci{ev}_{product}.fits"


def run_astrodrizzle(infos: list[ExposureInfo], scratch: Path, kwargs: dict) -> None:
    """Run AstroDrizzle on pristine copies of the exposures in ``scratch``.

    Parameters
    ----------
    infos : list of ExposureInfo
        The validated exposures (only read).
    scratch : pathlib.Path
        An empty directory for the copies and every product.
    kwargs : dict
        :func:`astrodrizzle_kwargs`.

    Raises
    ------
    DrizzleError
        AstroDrizzle raised, or wrote no CR mask for some chip (it drops some bad
        inputs with only a printed warning); the message has the tail of its log.
    """
    for info in infos:
        if not (scratch / info.scratch_name).exists():  # copied (and aligned) already
            _pristine_copy(info, scratch / info.scratch_name)
    _call(infos, scratch, kwargs)
    missing = [scratch_file(scratch, info, ev, "crmask").name
               for info in infos for ev in info.chips
               if not scratch_file(scratch, info, ev, "crmask").exists()]
    if missing:
        tail = _log_tail(scratch / kwargs["runfile"], "")
        raise DrizzleError(f"{kwargs['output']}: AstroDrizzle wrote no CR mask for {missing}; "
                           f"log tail:\n{tail}")


def copy_inputs(infos: list[ExposureInfo], scratch: Path) -> None:
    """Pristine copies of the exposures in ``scratch`` (what alignment and AstroDrizzle edit)."""
    for info in infos:
        _pristine_copy(info, scratch / info.scratch_name)


def _pristine_copy(info: ExposureInfo, dest: Path) -> None:
    """Copy an exposure for AstroDrizzle, which edits its inputs in place.

    An exposure that is one imset of a file of several (STIS) is written alone, as
    AstroDrizzle's own ``splitStis`` does, so that crforge names and reads its products.
    A ``MDRIZSKY`` left by an earlier drizzle would be read as "sky already
    subtracted", so it is removed from the copy.
    """
    if info.imset:
        _imset_copy(info, dest)
    else:
        shutil.copyfile(info.path, dest)
        stem, _, suffix = info.path.name[:-5].rpartition("_")
        dq_suffix = info.instrument.dq_files.get(suffix)
        if dq_suffix:  # WFPC2: AstroDrizzle reads the DQ from the c1m beside the c0m
            dq_name = f"{stem}_{dq_suffix}.fits"
            shutil.copyfile(info.path.with_name(dq_name), dest.with_name(dq_name))
            os.chmod(dest.with_name(dq_name), 0o644)
    os.chmod(dest, 0o644)
    with fits.open(dest, mode="update") as hdul:
        for hdu in hdul[1:]:
            if "MDRIZSKY" in hdu.header:
                del hdu.header["MDRIZSKY"]


def _imset_copy(info: ExposureInfo, dest: Path) -> None:
    """Imset ``info.imset`` of ``info.path`` as a one-exposure file (EXTVER 1) at ``dest``.

    The primary header gets the imset's exposure time and timing (the primary of a
    STIS file has only the total ``TEXPTIME``), as ``stsci.tools`` does on a split.
    """
    with fits.open(info.path, memmap=False) as src:
        prim = fits.PrimaryHDU(header=src[0].header.copy())
        sci_h = src["SCI", info.imset].header
        for key in (info.instrument.exptime_keyword, "EXPSTART", "EXPEND", "DATE-OBS", "TIME-OBS"):
            if key in sci_h:
                prim.header[key] = sci_h[key]
        prim.header["ROOTNAME"] = info.rootname
        hdus = [prim]
        for ext in ("SCI", "ERR", "DQ"):
            h = src[ext, info.imset]
            hdus.append(fits.ImageHDU(h.data, header=h.header.copy(), name=ext, ver=1))
        fits.HDUList(hdus).writeto(dest)


def _call(infos: list[ExposureInfo], scratch: Path, kwargs: dict) -> None:
    """``AstroDrizzle`` in ``scratch`` (it writes to the working directory), output captured."""
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
            astrodrizzle.AstroDrizzle(input=[info.scratch_name for info in infos], **kwargs)
    except Exception as exc:
        tail = _log_tail(scratch / kwargs["runfile"], buf.getvalue())
        raise DrizzleError(f"AstroDrizzle failed ({type(exc).__name__}: {exc}); log tail:\n{tail}") from exc
    finally:
        os.chdir(cwd)
    logger.debug("AstroDrizzle output:\n%s", buf.getvalue()[-4000:])


def _log_tail(path: Path, fallback: str, n: int = 25) -> str:
    """The last ``n`` lines of AstroDrizzle's log (``fallback``, its captured output, if none)."""
    text = path.read_text(errors="replace") if path.exists() else fallback
    return "\n".join(text.strip().splitlines()[-n:])


def drizzlepac_version() -> str:
    """The installed drizzlepac's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("drizzlepac")
    except PackageNotFoundError:  # pragma: no cover - drizzlepac is a dependency
        return "unknown"
