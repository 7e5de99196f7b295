"""Opening a FITS file that a user gave: unreadable, truncated and damaged files refused.

astropy opens a file that is not FITS with an ``OSError`` about a missing ``SIMPLE``
card, and one cut short (an interrupted download or copy) with only a warning,
dropping the extensions it could not read: the caller then reports a "missing
extension" that is not the problem. :func:`open_verified` turns both into an
:class:`~crforge.errors.InputError` that names the file and says what is wrong.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from astropy.io import fits

from crforge.errors import InputError

__all__ = ["open_verified", "open_exposure", "is_waivered"]


def open_verified(path: str | Path, *, error: type[InputError] = InputError,
                  verify: bool = True) -> fits.HDUList:
    """Open a FITS file completely (every extension's data read), refusing what is not sound.

    Parameters
    ----------
    path : path-like
        The file.
    error : type
        The :class:`InputError` subclass to raise.
    verify : bool
        Also run astropy's standard verification (``verify('exception')``).

    Returns
    -------
    astropy.io.fits.HDUList
        Open, in memory (no memory map): the caller closes it.

    Raises
    ------
    InputError (``error``)
        No such file, not FITS, truncated, or an extension whose data cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
            if verify:
                hdul.verify("exception")
    except Exception as exc:  # astropy raises OSError, VerifyError, TypeError...
        raise error(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from None
    # astropy only warns about a file cut short and drops the HDUs it could not read
    cut = [str(w.message) for w in caught if "truncat" in str(w.message).lower()]
    if cut:
        hdul.close()
        raise error(f"{path}: truncated FITS file ({cut[0]})")
    for i, hdu in enumerate(hdul):
        try:
            hdu.data  # noqa: B018 - reading it is the check
        except Exception as exc:  # a data block cut short or damaged
            hdul.close()
            name = f"{hdu.name},{hdu.ver}" if i else "PRIMARY"
            raise error(f"{path}[{name}]: data cannot be read ({type(exc).__name__}: {exc})") from None
    return hdul


def is_waivered(hdul: fits.HDUList) -> bool:
    """Whether ``hdul`` is "waivered" FITS (WFPC2 c0f/c1f: a cube of chips and an ASCII group table)."""
    prim = hdul[0]
    return (prim.data is not None and prim.data.ndim == 3 and len(hdul) > 1
            and isinstance(hdul[1], fits.TableHDU))


def open_exposure(path: str | Path, *, error: type[InputError] = InputError,
                  verify: bool = True) -> fits.HDUList:
    """:func:`open_verified`, then in the layout crforge reads: SCI (and DQ) per chip.

    A waivered file is converted in memory (``stsci.tools.convertwaiveredfits``, as
    AstroDrizzle does) into one ``SCI`` extension per chip; an imager that keeps its
    DQ arrays in another file (``Instrument.dq_files``: WFPC2's c1f/c1m) gets them
    attached as ``DQ`` extensions of the same EXTVER when that file is there. The file
    on disk is never changed.
    """
    path = Path(path)
    hdul = open_verified(path, error=error, verify=verify and not _waivered_on_disk(path))
    if is_waivered(hdul):
        hdul.close()
        hdul = _convert_waivered(path, error)
    _attach_dq(path, hdul, error)
    return hdul


def _waivered_on_disk(path: Path) -> bool:
    """A cheap look at the primary header: NAXIS=3 and GROUPS-style table (astropy's verify fails on them)."""
    try:
        h = fits.getheader(path)
    except Exception:  # open_verified reports it
        return False
    return h.get("NAXIS") == 3 and h.get("NEXTEND", 0) >= 1


def _convert_waivered(path: Path, error: type[InputError]) -> fits.HDUList:
    from stsci.tools import convertwaiveredfits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convertwaiveredfits.convertwaiveredfits(str(path))
    except Exception as exc:
        raise error(f"{path}[PRIMARY]: waivered FITS that cannot be converted ({type(exc).__name__}: "
                    f"{exc})") from None


def _attach_dq(path: Path, hdul: fits.HDUList, error: type[InputError]) -> None:
    """DQ extensions from the imager's separate DQ file (``Instrument.dq_files``), if there is one."""
    from crforge.pipeline.instruments import instrument_for_header

    try:
        inst = instrument_for_header(hdul[0].header)
    except InputError:
        return
    stem, _, suffix = path.name[:-5].rpartition("_") if path.name.lower().endswith(".fits") else ("", "", "")
    dq_suffix = inst.dq_files.get(suffix.lower())
    if not dq_suffix or any(h.name == "DQ" for h in hdul):
        return
    dq_path = path.with_name(f"{stem}_{dq_suffix}.fits")
    if not dq_path.is_file():
        return
    dq = open_exposure(dq_path, error=error)
    try:
        for h in [h for h in dq[1:] if h.name in ("SCI", "DQ") and h.data is not None]:
            hdul.append(fits.ImageHDU(h.data.astype("int16"), header=h.header.copy(), name="DQ", ver=h.ver))
    finally:
        dq.close()
