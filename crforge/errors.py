"""The one exception class for bad input, which the command line turns into exit status 2.

Every stage raises :class:`InputError` (or a subclass) when what it was given is not
what it expects: a file, FITS extension, keyword, HDF5 dataset, manifest row or config
key.  The message names the culprit and what was expected.  Anything else that escapes
a command is a fault of crforge's (exit status 1, traceback with ``-v``).

``InputError`` is a ``ValueError``, so Python callers that catch ``ValueError`` keep
working.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input; the message names the file, extension, key or row and what was expected."""
