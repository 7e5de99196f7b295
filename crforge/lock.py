"""Exclusive use of a directory a run writes: one advisory lock file per directory.

A run that writes a work directory (``crforge dataset``), a visit (``crforge
simulate``, ``crforge label``), a run directory (``crforge train``, ``crforge
evaluate``) or a zoo (``crforge publish``) holds that directory's lock for as long as
it writes::

    with lock.hold(work, what="crforge dataset"):
        ...

The lock is ``fcntl.flock`` on ``<dir>/.crforge.lock`` (or a given lock file).  The
holder writes its pid, host, command and start time into the file, so a second run
that finds the lock taken is refused with :class:`LockedError` (an
:class:`~crforge.errors.InputError`: exit status 2) naming the directory and the
other process; with ``wait=True`` it waits for the lock instead.

The kernel releases the lock of a process that dies, even by SIGKILL, so a killed run
never leaves a directory locked.  The holder removes the lock file when it is done
(while still holding it); an acquirer that finds it has locked a file that was
removed meanwhile starts again, so two processes never both believe they hold it.
Locks on network file systems are advisory and as good as the file system's
``flock``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from crforge.errors import InputError

__all__ = ["LOCK_NAME", "LockedError", "hold", "holder"]

logger = logging.getLogger(__name__)

#: The lock file of a directory.
LOCK_NAME = ".crforge.lock"


class LockedError(InputError):
    """The directory is in use by another run (its lock is taken)."""


def holder(lock_file: str | os.PathLike) -> dict:
    """Who holds ``lock_file``: ``pid``, ``host``, ``what``, ``command``, ``since``; {} if unknown."""
    try:
        doc = json.loads(Path(lock_file).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _describe(doc: dict) -> str:
    if not doc:
        return "another process (it has not written its name yet)"
    return (f"{doc.get('what', 'another crforge run')} (pid {doc.get('pid', '?')} on host "
            f"{doc.get('host', '?')}, since {doc.get('since', '?')}: {doc.get('command', '?')})")


def _open_locked(path: Path, wait: bool) -> int | None:
    """An open descriptor of ``path`` holding its lock, or None if another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        # the previous holder may have removed the file between our open and our lock:
        # then we locked an orphan inode, which excludes nobody; start again
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _command() -> str:
    """This process' command line, as the user typed it (``python -m crforge.cli`` reads as crforge)."""
    if not sys.argv or not sys.argv[0]:
        return "python"
    prog = Path(sys.argv[0]).name
    prog = "crforge" if prog in ("__main__.py", "crforge") else prog
    return " ".join([prog, *sys.argv[1:]])[:300]


@contextlib.contextmanager
def hold(directory: str | os.PathLike, *, what: str, wait: bool = False,
         lock_file: str | os.PathLike | None = None) -> Iterator[Path]:
    """Hold the lock of ``directory`` for the block.

    Parameters
    ----------
    directory : path-like
        The directory the run writes (created if missing).
    what : str
        What holds it (``"crforge dataset"``), shown to a run that is refused.
    wait : bool
        Wait until the lock is free instead of raising :class:`LockedError`.
    lock_file : path-like, optional
        The lock file; default ``directory/.crforge.lock``.  A run that replaces
        ``directory`` as a whole (a simulated visit) locks a file beside it instead.

    Yields
    ------
    pathlib.Path
        The lock file.

    Raises
    ------
    LockedError
        Another process holds the lock and ``wait`` is False; the message names the
        directory, the lock file and the other process (pid, host, command).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = Path(lock_file) if lock_file is not None else directory / LOCK_NAME
    fd = _open_locked(path, wait=False)
    if fd is None and wait:
        logger.warning("%s is in use by %s; waiting", directory, _describe(holder(path)))
        fd = _open_locked(path, wait=True)
    if fd is None:
        raise LockedError(f"{directory} is in use by {_describe(holder(path))} (lock {path}); "
                          "wait for that run to finish, or pass --wait to wait for it")
    try:
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "command": _command(),
               "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(doc).encode(), 0)
        logger.debug("locked %s", path)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # still holding it: see _open_locked
        os.close(fd)
