"""Atomic writes: nothing half-written ever carries its final name.

Every file crforge writes goes through :func:`atomic_path`: the writer fills a
temporary file in the destination's directory, under a name unique to the process and
call (``.<name>.<pid>-<random>.tmp<suffix>``, so two runs never share one), and only a
complete file is moved onto the final name.  A failure or an interrupt removes the
temporary file; a killed process leaves only a hidden ``.tmp`` file that no reader
takes for a result.

``overwrite=False`` publishes with a hard link, which fails when the name exists, so
of two runs racing to create the same file exactly one wins and the other gets
:class:`FileExistsError`; nothing is ever replaced silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json", "temporary_name", "remove_stale"]

#: This host, in temporary names: a process of another host sharing the directory (a
#: dask worker on a shared file system) is never taken for a dead one of this host.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_TEMPORARY = re.compile(r"^\..+\.([0-9a-f]{6})-(\d+)-[0-9a-f]{8}\.tmp")


def temporary_name(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``path``, keeping its suffix (``np.savez`` needs it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and directories that dead processes of this host left.

    Parameters
    ----------
    directory : path-like
        Where to look (not recursively); a missing directory holds nothing.

    Returns
    -------
    list of Path
        What was removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        m = _TEMPORARY.match(entry.name)
        if not m or m.group(1) != _HOST or _alive(int(m.group(2))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it becomes ``path``.

    Parameters
    ----------
    path : path-like
        The final file.  Its directory must exist.
    overwrite : bool
        Replace an existing ``path`` (``os.replace``).  When False, an existing
        ``path`` raises :class:`FileExistsError` and is left as it was, even when
        another process creates it while this one writes.

    Yields
    ------
    pathlib.Path
        Where to write.  It does not exist yet; whatever the block leaves there is
        published when the block ends without an exception.

    Raises
    ------
    FileExistsError
        ``overwrite`` is False and ``path`` exists.
    FileNotFoundError
        The block wrote nothing at the temporary path.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(2, "nothing was written for", str(path))
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _publish_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if nothing has it (atomic where links work)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(17, "exists (pass --overwrite to replace it)", str(path)) from None
    except OSError:  # a file system without hard links: check, then rename
        if path.exists():
            raise FileExistsError(17, "exists (pass --overwrite to replace it)", str(path)) from None
        os.replace(tmp, path)


def write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; return the path."""
    return write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def write_json(path: str | os.PathLike, doc: Any, *, overwrite: bool = True, indent: int | None = 2,
               **dumps_kwargs: Any) -> Path:
    """Write ``doc`` as JSON to ``path`` atomically; return the path."""
    return write_text(path, json.dumps(doc, indent=indent, **dumps_kwargs), overwrite=overwrite)
