"""Writing an HDF5 training set: the one writer of the format (:mod:`.schema`).

::

    attrs = FileAttributes(manifest_name="m", manifest_sha256=sha, config={...}, ...)
    with DataFileWriter(path, attrs, fields=rows, truth=True, noiseless=True) as w:
        w.append("train", meta, image=image, cr=cr, ignore=ignore, truth=truth,
                 noiseless=noiseless)
        w.append_compressed("val", meta, compressed)   # chunks compressed elsewhere

The file is written under a temporary name beside ``path`` and gets its name only
when the ``with`` block ends without an exception (:mod:`crforge.atomic`), so a file
at ``path`` is always complete.  Stamps are stored one per chunk with HDF5's shuffle and
deflate filters; :func:`compress_stamps` makes exactly those chunks in another process
(a dask worker), so that the single writing process only copies bytes.

Splits are written in :data:`~.schema.SPLITS` order; appending to a later split
closes the earlier ones (their groups then exist even when empty), and the file's
layout, and so its bytes apart from ``created_utc``, depends only on what was appended.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from crforge import atomic
from crforge.errors import InputError
from crforge.pipeline.datafile.schema import (
    FIELDS_DTYPE,
    META_DTYPE,
    PIXEL_DTYPES,
    SCHEMA_VERSION,
    SPLITS,
    STAMP_SIZE,
)

__all__ = ["FileAttributes", "DataFileWriter", "compress_stamps", "decompress_stamps", "write_arrays", "GZIP_LEVEL"]

#: Deflate level of the stamp chunks: level 1 is several times faster than the default
#: 4 for a few per cent more bytes.
GZIP_LEVEL = 1


@dataclass(frozen=True)
class FileAttributes:
    """What the root of a training set records about how it was made.

    Parameters
    ----------
    manifest_name, manifest_sha256 : str
        The manifest the stamps come from.
    config : dict
        The settings that decide the stamps (JSON types).
    software : dict
        Package -> version.
    instruments : sequence of str
        The imagers of the stamps (the evaluation picks deepCR's peer model by it).
    failed_visits : sequence of dict
        ``{"visit", "reason"}`` of the visits left out.
    stamp_size : int
        Stamp side in pixels.
    crforge_version : str
        The writing crforge's version.
    created_utc : str, optional
        ISO 8601 time; default: now.
    """

    manifest_name: str
    manifest_sha256: str
    config: Mapping[str, Any] = field(default_factory=dict)
    software: Mapping[str, Any] = field(default_factory=dict)
    instruments: Sequence[str] = ()
    failed_visits: Sequence[Mapping[str, str]] = ()
    stamp_size: int = STAMP_SIZE
    crforge_version: str = "unknown"
    created_utc: str | None = None

    def write(self, h5) -> None:
        """Set the root attributes of an open ``h5py.File`` (in the schema's order)."""
        created = self.created_utc or datetime.now(timezone.utc).isoformat(timespec="seconds")
        h5.attrs["schema_version"] = SCHEMA_VERSION
        h5.attrs["created_utc"] = created
        h5.attrs["crforge_version"] = self.crforge_version
        h5.attrs["manifest_name"] = self.manifest_name
        h5.attrs["manifest_sha256"] = self.manifest_sha256
        h5.attrs["config"] = json.dumps(dict(self.config), sort_keys=True)
        h5.attrs["software"] = json.dumps(dict(self.software), sort_keys=True)
        h5.attrs["stamp_size"] = int(self.stamp_size)
        h5.attrs["instruments"] = json.dumps(sorted(self.instruments))
        h5.attrs["failed_visits"] = json.dumps([{"visit": f["visit"], "reason": f["reason"]}
                                                for f in self.failed_visits])


def _gzip_chunk(a: np.ndarray) -> bytes:
    """One chunk as HDF5's shuffle + deflate filters store it (``write_direct_chunk``)."""
    b = np.ascontiguousarray(a)
    if b.dtype.itemsize > 1:
        # shuffle: all first bytes of the elements, then all second bytes, ...
        b = b.view(np.uint8).reshape(-1, b.dtype.itemsize).T
    return zlib.compress(np.ascontiguousarray(b).tobytes(), GZIP_LEVEL)


def compress_stamps(stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compress ``[N,S,S]`` stamps into the chunks :meth:`DataFileWriter.append_compressed` takes.

    Returns
    -------
    blob : numpy.ndarray
        uint8, the N compressed chunks one after the other.
    lengths : numpy.ndarray
        int64 [N], the byte length of each chunk.
    """
    blobs = [_gzip_chunk(a) for a in stamps]
    return (np.frombuffer(b"".join(blobs), np.uint8),
            np.array([len(b) for b in blobs], np.int64))


def decompress_stamps(blob: np.ndarray, lengths: np.ndarray, *, dtype, size: int) -> np.ndarray:
    """The ``[N,size,size]`` stamps back from :func:`compress_stamps`' chunks (its inverse)."""
    dtype = np.dtype(dtype)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    out = np.empty((len(lengths), size, size), dtype)
    for i in range(len(lengths)):
        raw = np.frombuffer(zlib.decompress(blob[offsets[i]:offsets[i + 1]].tobytes()), np.uint8)
        if dtype.itemsize > 1:  # undo the shuffle
            raw = np.ascontiguousarray(raw.reshape(dtype.itemsize, -1).T)
        out[i] = raw.view(dtype).reshape(size, size)
    return out


class DataFileWriter:
    """Write one training set; a context manager that publishes the file on success.

    Parameters
    ----------
    path : path-like
        The file to write.
    attrs : FileAttributes
        The root attributes.
    fields : sequence of tuple
        The ``/fields`` rows in :data:`FIELDS_DTYPE` order.
    truth : bool
        Whether the splits carry ``truth`` (simulated visits only).
    noiseless : bool
        Whether the splits carry ``noiseless``, the pixels without noise and cosmic
        rays (simulated visits only; schema version 2).
    bunit : str
        Unit of the image pixels (the ``BUNIT`` attribute of every ``image``).
    compression : {'gzip', 'lzf'}
        HDF5 filter of the pixel datasets; only ``gzip`` takes pre-compressed chunks.
    overwrite : bool
        Replace an existing ``path``; otherwise an existing file raises
        :class:`FileExistsError` and is left as it was.
    """

    def __init__(self, path: str | os.PathLike, attrs: FileAttributes, *, fields: Sequence[tuple],
                 truth: bool, noiseless: bool = False, bunit: str = "ELECTRONS",
                 compression: str = "gzip", overwrite: bool = True) -> None:
        if compression not in ("gzip", "lzf"):
            raise InputError(f"compression={compression!r}: expected 'gzip' or 'lzf'")
        self.path, self.attrs, self.truth, self.bunit = Path(path), attrs, bool(truth), bunit
        self.compression, self.overwrite = compression, overwrite
        self.noiseless = bool(noiseless)
        self._rows = np.array(list(fields), dtype=FIELDS_DTYPE)
        self._stack = contextlib.ExitStack()
        self._h5 = None
        self._dsets: dict[str, dict] = {}
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------------ context

    def __enter__(self) -> DataFileWriter:
        import h5py

        atomic.remove_stale(self.path.parent)  # what killed runs left
        tmp = self._stack.enter_context(atomic.atomic_path(self.path, overwrite=self.overwrite))
        self._h5 = self._stack.enter_context(h5py.File(tmp, "w"))
        self.attrs.write(self._h5)
        self._h5.create_dataset("fields", data=self._rows)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        # the stack closes the HDF5 file (its last metadata is written then) before
        # the temporary file gets its name, or removes it after an exception
        if exc_type is None:
            try:
                self._group(SPLITS[-1])  # every split exists, even an empty one
            except BaseException as err:
                self._stack.__exit__(type(err), err, err.__traceback__)
                raise
        return self._stack.__exit__(exc_type, exc, tb)

    # ------------------------------------------------------------------ groups

    def _filters(self) -> dict:
        if self.compression == "gzip":
            return {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": True}
        return {"compression": self.compression}

    def _group(self, split: str) -> dict:
        """The datasets of ``split``, creating it (and every earlier split) on first use."""
        if split not in SPLITS:
            raise InputError(f"split={split!r}: expected one of {SPLITS}")
        for name in SPLITS[:SPLITS.index(split) + 1]:
            if name not in self._dsets:
                self._dsets[name] = self._create_group(name)
                self.counts[name] = 0
        return self._dsets[split]

    def _create_group(self, split: str) -> dict:
        s = int(self.attrs.stamp_size)
        g = self._h5.create_group(split)
        dsets = {name: g.create_dataset(name, (0, s, s), PIXEL_DTYPES[name], maxshape=(None, s, s),
                                        chunks=(1, s, s), **self._filters()) for name in self.names()}
        dsets["meta"] = g.create_dataset("meta", (0,), META_DTYPE, maxshape=(None,), chunks=(1024,))
        dsets["image"].attrs["BUNIT"] = self.bunit
        return dsets

    def names(self) -> tuple[str, ...]:
        """The pixel datasets of every split of this file."""
        return (("image", "cr", "ignore") + (("truth",) if self.truth else ())
                + (("noiseless",) if self.noiseless else ()))

    # ------------------------------------------------------------------ appending

    def _grow(self, split: str, meta: np.ndarray) -> tuple[dict, int, int]:
        if self._h5 is None:
            raise RuntimeError("DataFileWriter: append() outside its with block")
        dsets = self._group(split)
        n, k = self.counts[split], len(meta)
        for ds in dsets.values():
            ds.resize(n + k, axis=0)
        dsets["meta"][n:n + k] = np.asarray(meta, dtype=META_DTYPE)
        self.counts[split] = n + k
        return dsets, n, k

    def append(self, split: str, meta: np.ndarray, *, image: np.ndarray, cr: np.ndarray,
               ignore: np.ndarray, truth: np.ndarray | None = None,
               noiseless: np.ndarray | None = None) -> None:
        """Append stamps (``[k,S,S]`` arrays) and their ``meta`` rows to ``split``."""
        arrays = {"image": image, "cr": cr, "ignore": ignore}
        for name, a in (("truth", truth), ("noiseless", noiseless)):
            if name in self.names():
                if a is None:
                    raise InputError(f"{self.path}: this file carries {name}: append() needs {name}=")
                arrays[name] = a
        s = int(self.attrs.stamp_size)
        for name, a in arrays.items():
            if a.shape != (len(meta), s, s):
                raise InputError(f"{name}: shape {a.shape}, expected ({len(meta)}, {s}, {s})")
        dsets, n, k = self._grow(split, meta)
        for name, a in arrays.items():
            dsets[name][n:n + k] = a

    def append_compressed(self, split: str, meta: np.ndarray,
                          chunks: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Append stamps given as :func:`compress_stamps` chunks (gzip files only)."""
        if self.compression != "gzip":
            raise InputError("append_compressed() needs compression='gzip'")
        dsets, n, k = self._grow(split, meta)
        for name in self.names():
            blob, lengths = chunks[name]
            ends = np.cumsum(lengths)
            for i in range(k):
                dsets[name].id.write_direct_chunk((n + i, 0, 0), blob[ends[i] - lengths[i]:ends[i]].tobytes())


def write_arrays(path: str | os.PathLike, splits: Mapping[str, Mapping[str, np.ndarray]], *,
                 manifest_name: str = "arrays", instruments: Sequence[str] = ("ACS/WFC",),
                 bunit: str = "ELECTRONS", overwrite: bool = True) -> Path:
    """Write stamps held in memory as a complete, valid training set (tests, benchmarks, tools).

    Parameters
    ----------
    path : path-like
        The file.
    splits : mapping
        Split -> ``{"image", "cr", "ignore", "meta"[, "truth"[, "noiseless"]]}`` arrays (``[N,S,S]`` and
        a :data:`META_DTYPE` table).  Missing splits are written empty.  Every stamp's
        field is its (split, field type); empty ``visit`` names become ``<split>-<type>``.
    manifest_name : str
        Recorded as the manifest's name (its sha256 is that of the name).
    instruments : sequence of str
        The imagers recorded for the stamps.
    bunit : str
        Unit of the images.
    overwrite : bool
        As :class:`DataFileWriter`.
    """
    import hashlib

    given = [a for a in splits.values() if len(a["meta"])]
    size = int(given[0]["image"].shape[-1]) if given else STAMP_SIZE
    truth = bool(given) and all("truth" in a for a in given)
    noiseless = truth and all("noiseless" in a for a in given)
    fields, metas = _arrays_fields(splits)
    attrs = FileAttributes(manifest_name=manifest_name,
                           manifest_sha256=hashlib.sha256(manifest_name.encode()).hexdigest(),
                           instruments=list(instruments), stamp_size=size)
    with DataFileWriter(path, attrs, fields=fields, truth=truth, noiseless=noiseless, bunit=bunit,
                        overwrite=overwrite) as w:
        for split in SPLITS:
            if split in splits:
                a = splits[split]
                w.append(split, metas[split], image=a["image"], cr=a["cr"], ignore=a["ignore"],
                         truth=a.get("truth") if truth else None,
                         noiseless=a.get("noiseless") if noiseless else None)
    return Path(path)


def _arrays_fields(splits: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[list[tuple], dict]:
    """Field rows, one per (split, field type), and the meta tables pointing at them."""
    rows, metas = [], {}
    for split in SPLITS:
        if split not in splits:
            continue
        meta = np.array(splits[split]["meta"], dtype=META_DTYPE, copy=True)
        for ftype in sorted(set(meta["field_type"].tolist())):
            fid = len(rows)
            name = f"{split}-{ftype.decode()}"
            rows.append((fid, name, 0.0, 0.0, ftype.decode(), split, name))
            sel = meta["field_type"] == ftype
            meta["field_id"][sel] = fid
            meta["visit"][sel & (meta["visit"] == b"")] = name.encode()[:16]
        metas[split] = meta
    return rows, metas
