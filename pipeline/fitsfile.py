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

__all__ = ["open_verified"]


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
