"""Verified downloads of MAST products (``crforge fetch``).

Fetching uses MAST's download URL (``<server>/api/v0.1/Download/file?uri=
mast:HST/product/<file>``, the URL astroquery builds:
:func:`~crforge.pipeline.archive.visits.download_url`) with crforge's own HTTP code,
because astroquery's downloader cannot do what a data set of 25 GB needs:

- every file is written as ``<file>.part`` and renamed only when its size is the size
  MAST lists for the product (astroquery's cache only compares the server's
  Content-Length, so a transfer that ends early without an error looks complete);
- a ``.part`` file is resumed with a ``Range`` request (by the next attempt and by a
  rerun), never restarted;
- 5xx answers, timeouts (connect, or no byte for ``timeout`` seconds) and broken
  connections are retried with exponential backoff; a 4xx (a listed product that is
  not served, data that are not public) fails at once, with the reason;
- at most ``concurrency`` downloads run at once, with one progress bar in bytes.

A file that cannot be fetched is reported with its reason and never gets its final
name, so AstroDrizzle never sees it. The ``.part`` file is a resumable partial file,
not an atomic-write temporary: it keeps what arrived across attempts and runs.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from crforge.errors import InputError
from crforge.pipeline.archive.config import ArchiveConfig, checked_config
from crforge.pipeline.archive.visits import Visit, download_url

logger = logging.getLogger(__name__)

__all__ = ["FileResult", "VisitResult", "fetch_file", "fetch_visits", "part_path"]


@dataclass
class FileResult:
    """What became of one file.

    Attributes
    ----------
    filename : str
    size : int
        Bytes MAST lists.
    status : str
        ``verified`` (fetched now, size checked), ``present`` (already there with
        the listed size) or ``failed``.
    transferred : int
        Bytes of file content received by this call (a resumed file: only the rest).
    attempts : int
        Requests of the file's content (GET) made, retries included.
    reason : str
        Why it failed.
    path : str
        The final file (``verified``/``present``) or the ``.part`` kept for a
        resume (``failed``; empty when there is nothing to resume).
    rootname : str
        The exposure the file belongs to (its product or a companion, e.g. WFPC2's
        ``c1m``); empty: the file is an exposure of its own.
    """

    filename: str
    size: int
    status: str
    transferred: int = 0
    attempts: int = 0
    reason: str = ""
    path: str = ""
    rootname: str = ""

    @property
    def ok(self) -> bool:
        """Verified or already present."""
        return self.status in ("verified", "present")


@dataclass
class VisitResult:
    """The files of one visit."""

    name: str
    files: list[FileResult] = field(default_factory=list)
    reason: str = ""

    @property
    def verified(self) -> list[FileResult]:
        """The files with the listed size on disk."""
        return [f for f in self.files if f.ok]

    @property
    def failed(self) -> list[FileResult]:
        """The files that could not be fetched."""
        return [f for f in self.files if not f.ok]

    @property
    def exposures(self) -> list[str]:
        """The exposures (rootnames, in file order) the files belong to."""
        return list(dict.fromkeys(f.rootname or f.filename for f in self.files))

    @property
    def ready(self) -> list[str]:
        """The exposures every file of which is verified (WFPC2: the c0m and its c1m)."""
        bad = {f.rootname or f.filename for f in self.failed}
        return [e for e in self.exposures if e not in bad]


# --------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------


class _Retry(Exception):
    """A transient failure (5xx, timeout, broken or short transfer)."""


class _Fail(Exception):
    """A permanent failure (4xx, a size that cannot be the listed one)."""


class _Cancelled(Exception):
    """The transfer was abandoned (the ``.part`` file is kept)."""


def part_path(dest: Path) -> Path:
    """The resumable partial file of ``dest``: ``<dest>.part``."""
    return dest.with_name(dest.name + ".part")


@dataclass
class _Transfer:
    """One file's download: where from, where to, and how many bytes arrived."""

    session: Any
    url: str
    dest: Path
    size: int
    cfg: ArchiveConfig
    progress: Callable[[int], None]
    cancel: threading.Event | None
    received: int = 0

    @property
    def part(self) -> Path:
        return part_path(self.dest)

    def have(self) -> int:
        """Bytes in the ``.part`` file."""
        return self.part.stat().st_size if self.part.exists() else 0

    def restart(self, have: int) -> None:
        """Drop the ``.part`` file (its ``have`` bytes no longer count)."""
        self.part.unlink(missing_ok=True)
        self.progress(-have)

    def failed(self, attempts: int, reason: str) -> FileResult:
        """A ``failed`` result, naming the ``.part`` file kept for a resume."""
        return FileResult(self.dest.name, self.size, "failed", self.received, attempts, reason,
                          str(self.part) if self.part.exists() else "")


def _status_check(resp) -> None:
    """Raise :class:`_Retry` or :class:`_Fail` for an answer that is not 200/206."""
    code = resp.status_code
    if code in (200, 206):
        return
    if code in (408, 425, 429) or code >= 500:
        raise _Retry(f"HTTP {code} {resp.reason}")
    if code in (404, 410):
        raise _Fail(f"HTTP {code}: listed by MAST but not served (the product is missing)")
    if code in (401, 403):
        raise _Fail(f"HTTP {code}: not public (exclusive-access data need a MAST token)")
    raise _Fail(f"HTTP {code} {resp.reason}")


def _request(t: _Transfer, method: str, headers: dict | None = None):
    """A HEAD, or a streamed GET, of the product; a timeout or broken connection: retry."""
    import requests

    timeout = (t.cfg.timeout, t.cfg.timeout)
    try:
        if method == "HEAD":
            return t.session.head(t.url, timeout=timeout, allow_redirects=True)
        return t.session.get(t.url, headers=headers, stream=True, timeout=timeout, allow_redirects=True)
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise _Retry(f"{method}: {type(exc).__name__}: {exc}") from None


def _head(t: _Transfer) -> bool:
    """Check that the product is served with the listed size; whether the server resumes."""
    head = _request(t, "HEAD")
    head.close()
    _status_check(head)
    length = head.headers.get("Content-Length")
    if length is not None and head.status_code == 200 and int(length) != t.size:
        # the file MAST serves is not the product it lists: nothing to resume
        t.part.unlink(missing_ok=True)
        raise _Fail(f"MAST lists {t.size} bytes but serves {int(length)}: not the listed product")
    return "bytes" in head.headers.get("Accept-Ranges", "").lower()


def _resume_point(t: _Transfer, resp, have: int) -> int:
    """Where the body of the GET answer ``resp`` starts: ``have``, or 0 (the whole file)."""
    if resp.status_code == 416 and have:
        t.restart(have)
        raise _Retry(f"HTTP 416: the server refused to resume at byte {have}; starting again")
    _status_check(resp)
    if resp.status_code == 206:
        m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != have:
            t.restart(have)
            raise _Retry(f"resumed at {resp.headers.get('Content-Range')!r}, not byte {have}")
    elif have:  # 200 to a Range request: the whole file comes again
        t.restart(have)
        return 0
    return have


def _chunks(resp, size: int):
    """The body as it arrives: ``read1`` returns what the socket has (up to ``size``),
    so the bytes received before a stall are written, not lost in a half-filled
    buffer when the read times out."""
    read1 = getattr(resp.raw, "read1", None)
    if read1 is None:  # urllib3 < 2
        yield from resp.iter_content(size)
        return
    while True:
        b = read1(size, decode_content=True)
        if not b:
            return
        yield b


def _receive(t: _Transfer, resp, have: int) -> int:
    """Append the body of ``resp`` to the ``.part`` file; return the bytes it holds."""
    import requests
    import urllib3

    chunks = _chunks(resp, t.cfg.chunk_size)
    with open(t.part, "ab") as fh:
        while True:
            try:
                chunk = next(chunks, b"")
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                # what arrived stays in the .part file: the next attempt resumes
                raise _Retry(f"transfer broken at byte {have} of {t.size}: "
                             f"{type(exc).__name__}: {exc}") from None
            if not chunk:
                return have
            if t.cancel is not None and t.cancel.is_set():
                raise _Cancelled()
            if have + len(chunk) > t.size:
                fh.close()
                t.part.unlink(missing_ok=True)
                raise _Fail(f"the server sent more than the {t.size} bytes MAST lists")
            fh.write(chunk)
            have += len(chunk)
            t.received += len(chunk)
            t.progress(len(chunk))


def _download(t: _Transfer, have: int) -> int:
    """Fetch the rest of the product after the ``have`` bytes of the ``.part`` file
    (all of it when the server does not resume); return the bytes it holds then."""
    ranges = _head(t)
    headers = {}
    if have and ranges:
        headers["Range"] = f"bytes={have}-"
    elif have:
        logger.info("%s: the server does not resume; starting again", t.dest.name)
        t.restart(have)
        have = 0
    with _request(t, "GET", headers) as resp:
        return _receive(t, resp, _resume_point(t, resp, have))


def _publish(t: _Transfer) -> None:
    """Give the ``.part`` file its final name: only a FITS file of exactly the listed size."""
    have = t.have()
    if have != t.size:
        raise _Retry(f"{t.part.name} holds {have} bytes, not the {t.size} MAST lists")
    with open(t.part, "rb") as fh:
        magic = fh.read(6)
    if t.dest.suffix == ".fits" and magic != b"SIMPLE":
        t.part.unlink()
        raise _Fail(f"{t.size} bytes but not a FITS file (starts with {magic!r})")
    os.replace(t.part, t.dest)


def _attempt(t: _Transfer) -> None:
    """One try at completing the ``.part`` file; returns when ``dest`` is verified, else raises."""
    have = t.have()
    if have > t.size:
        logger.warning("%s: %d bytes of a %d-byte product: starting again", t.part.name, have, t.size)
        t.restart(have)
        have = 0
    if have < t.size:
        have = _download(t, have)
        if have < t.size:
            raise _Retry(f"transfer ended at byte {have} of {t.size} (the size MAST lists)")
    _publish(t)


def _backoff(cfg: ArchiveConfig, retry: int) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...): doubled each time."""
    delay = min(cfg.max_backoff, cfg.backoff * 2 ** (retry - 1))
    # a little jitter, so that parallel retries do not hit the server together
    return delay * (1 + 0.25 * random.random())


def _with_retries(t: _Transfer, sleep: Callable[[float], None]) -> FileResult:
    """Attempts of ``t`` until one verifies the file, one fails for good, or the retries run out."""
    attempts, last = 0, ""
    while attempts <= t.cfg.retries:
        if attempts:
            sleep(_backoff(t.cfg, attempts))
        attempts += 1
        try:
            _attempt(t)
        except _Retry as exc:
            last = str(exc)
            logger.info("%s: attempt %d of %d: %s", t.dest.name, attempts, t.cfg.retries + 1, last)
            continue
        except _Fail as exc:
            return t.failed(attempts, str(exc))
        except _Cancelled:
            return t.failed(attempts, "cancelled")
        logger.debug("%s: verified, %d bytes (%d received)", t.dest.name, t.size, t.received)
        return FileResult(t.dest.name, t.size, "verified", t.received, attempts, path=str(t.dest))
    return t.failed(attempts, f"{attempts} attempt(s) failed, {t.have()} of {t.size} bytes kept in "
                              f"{t.part.name} for a resume; last: {last}")


def _present(dest: Path, size: int) -> bool:
    """Whether ``dest`` is there with ``size`` bytes (a file of another size is removed)."""
    if not dest.exists():
        return False
    on_disk = dest.stat().st_size
    if on_disk == size:
        return True
    logger.warning("%s: %d bytes on disk but MAST lists %d: fetching it again", dest, on_disk, size)
    dest.unlink()
    return False


def fetch_file(url: str, dest: str | os.PathLike, size: int, cfg: ArchiveConfig | None = None, *,
               session=None, progress: Callable[[int], None] | None = None,
               cancel: threading.Event | None = None,
               sleep: Callable[[float], None] = time.sleep) -> FileResult:
    """Download one product into ``dest``: verified size, resume, retries.

    The bytes go to ``<dest>.part``; a ``.part`` left by an earlier attempt (or run)
    is resumed with a ``Range`` request. ``dest`` appears only when the file has
    exactly ``size`` bytes (and, for ``.fits``, starts like a FITS file).

    Parameters
    ----------
    url : str
        The product's download URL (:func:`~crforge.pipeline.archive.visits.download_url`).
    dest : path-like
        Final file name (its directory is created).
    size : int
        Bytes MAST lists for the product.
    cfg : ArchiveConfig, optional
        Retries, backoff, timeout, chunk size.
    session : requests.Session, optional
        Connection pool to use (one per thread).
    progress : callable, optional
        Called with the number of bytes received (negative when a transfer restarts).
    cancel : threading.Event, optional
        Set to abandon the transfer (the ``.part`` file is kept).
    sleep : callable
        ``time.sleep`` (tests pass a recorder).

    Returns
    -------
    FileResult
        ``verified``, ``present`` or ``failed`` with the reason.
    """
    import requests

    cfg = checked_config(cfg)
    if not isinstance(url, str) or not re.match(r"^https?://", url):
        raise InputError(f"url={url!r}: expected an http(s):// URL")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InputError(f"size={size!r}: expected the product's size in bytes (> 0)")
    dest = Path(dest)
    if _present(dest, size):
        return FileResult(dest.name, size, "present", path=str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    t = _Transfer(session or requests.Session(), url, dest, size, cfg,
                  progress or (lambda n: None), cancel)
    try:
        return _with_retries(t, sleep)
    finally:
        if session is None:
            t.session.close()


# --------------------------------------------------------------------------------------
# Many files
# --------------------------------------------------------------------------------------


class _Job(NamedTuple):
    """One file (an exposure's product or companion) of a visit to fetch into ``dest``."""

    visit: str
    rootname: str
    filename: str
    size: int
    dest: Path


class _Pool:
    """Downloads on at most ``cfg.concurrency`` threads, one HTTP session per thread,
    one progress bar; Ctrl-C stops the transfers and keeps their ``.part`` files."""

    def __init__(self, cfg: ArchiveConfig, server: str, bar) -> None:
        self.cfg, self.server, self.bar = cfg, server, bar
        self.lock = threading.Lock()
        self.local = threading.local()
        self.sessions: list = []
        self.cancel = threading.Event()

    def update(self, n: int) -> None:
        with self.lock:
            self.bar.update(n)

    def session(self):
        """This thread's session."""
        import requests

        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
            with self.lock:
                self.sessions.append(self.local.session)
        return self.local.session

    def fetch(self, job: _Job) -> tuple[_Job, FileResult]:
        return job, fetch_file(download_url(self.server, job.filename), job.dest, job.size, self.cfg,
                               session=self.session(), progress=self.update, cancel=self.cancel)

    def run(self, todo: Sequence[_Job]) -> dict[tuple[str, str], FileResult]:
        """Fetch every job; (visit, file name) -> result."""
        out: dict[tuple[str, str], FileResult] = {}
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.cfg.concurrency, len(todo) or 1)),
                                  thread_name_prefix="crforge-fetch")
        try:
            for job, res in pool.map(self.fetch, todo):
                out[(job.visit, res.filename)] = res
                if res.status == "failed":
                    logger.warning("visit %s: %s: %s", job.visit, res.filename, res.reason)
        except BaseException:
            self.cancel.set()  # Ctrl-C: stop the transfers, keep the .part files for the rerun
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
            self.bar.close()
            for s in self.sessions:
                s.close()
        return out


def _part_size(dest: Path) -> int:
    part = part_path(dest)
    return part.stat().st_size if part.exists() else 0


def _download_all(todo: Sequence[_Job], cfg: ArchiveConfig, server: str, progress: bool | None
                  ) -> dict[tuple[str, str], FileResult]:
    """Fetch the jobs with a progress bar in bytes (resumed bytes count as done)."""
    from tqdm.auto import tqdm

    total = sum(j.size for j in todo)
    initial = sum(min(j.size, _part_size(j.dest)) for j in todo)
    bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
               desc="fetch", disable=None if progress is None else not progress, leave=False)
    return _Pool(cfg, server, bar).run(todo)


def _jobs(visits: Sequence[Visit], names: Sequence[str] | None, raw_root: Path
          ) -> tuple[list[str], list[_Job]]:
    """The visits' directory names (default :attr:`Visit.name`) and their files (every
    exposure's product and companions), each in ``raw_root/<name>/``."""
    for v in visits:
        if not isinstance(v, Visit):
            raise TypeError(f"visits: expected Visit objects, got {type(v).__name__}")
    names = [v.name for v in visits] if names is None else list(names)
    if len(names) != len(visits) or len(set(names)) != len(names):
        raise InputError(f"names={names!r}: expected one distinct directory name per visit")
    return names, [_Job(n, e.rootname, f, size, raw_root / n / f)
                   for n, v in zip(names, visits) for e in v.exposures for f, size in e.files]


def fetch_visits(visits: Sequence[Visit], raw_root: str | os.PathLike, cfg: ArchiveConfig | None = None,
                 *, progress: bool | None = None, names: Sequence[str] | None = None) -> list[VisitResult]:
    """Download the exposures of visits into ``raw_root/<visit>/``.

    Parameters
    ----------
    visits : sequence of Visit
        What to fetch (sizes as MAST lists them).
    raw_root : path-like
        The raw area (``<work>/raw``).
    cfg : ArchiveConfig, optional
        Server, concurrency, retries, backoff, timeout.
    progress : bool, optional
        Show a progress bar in bytes (default: when stderr is a terminal).
    names : sequence of str, optional
        Directory names of the visits under ``raw_root`` (a manifest row may name
        its visit); default :attr:`Visit.name`.

    Returns
    -------
    list of VisitResult
        In the order of ``visits``; every file is ``verified``, ``present`` or
        ``failed`` with its reason.
    """
    cfg = checked_config(cfg)
    names, jobs = _jobs(visits, names, Path(raw_root))
    server = cfg.mast_server()
    todo = [j for j in jobs if not (j.dest.exists() and j.dest.stat().st_size == j.size)]
    pending = {(j.visit, j.filename) for j in todo}
    out = {(j.visit, j.filename): FileResult(j.filename, j.size, "present", path=str(j.dest))
           for j in jobs if (j.visit, j.filename) not in pending}
    out.update(_download_all(todo, cfg, server, progress))
    results = {n: VisitResult(n) for n in names}
    for j in jobs:
        res = out[(j.visit, j.filename)]
        res.rootname = j.rootname
        results[j.visit].files.append(res)
    return [results[n] for n in names]
