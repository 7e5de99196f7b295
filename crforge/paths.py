"""Checking, before any work, that an output directory can be written.

A run that computes for an hour and then fails to write its result, or fails with
the name of a temporary file the user never chose, breaks the exit-status contract
in spirit: the directory the user named is the culprit, and it can be tested first.
:func:`check_writable_dir` creates (and removes) a uniquely named empty file in the
directory, or in its nearest existing ancestor when the directory is still to be
made: the one test that holds for permissions, read-only mounts, full quotas of
inodes and superusers alike.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from crforge.errors import InputError

__all__ = ["check_writable_dir"]


def check_writable_dir(path: str | os.PathLike, *, what: str = "output directory") -> Path:
    """Refuse an output directory that cannot be created or written.

    Parameters
    ----------
    path : path-like
        The directory (it may not exist yet: then the directory it would be made in
        is tested, and nothing is created).
    what : str
        How the message names it (``"--runs directory"``).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        ``path`` (or an ancestor) is not a directory, or files cannot be created in
        it; the message names ``path`` and the reason.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{what} {path}: {probe} is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".crforge-write-test-", dir=probe)
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot write in {probe} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(name)
    return path
