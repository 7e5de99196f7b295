"""Checking an HDF5 training set against its schema (:mod:`.schema`), in constant memory.

:func:`validate` lists every problem it finds, each naming the dataset or attribute and
what was expected; an empty list means the file is valid.  The key property is that no
field (visits grouped by sky overlap) and no visit has stamps in two splits.  Stamps
are streamed ``block`` at a time, so a file of any size is checked in bounded memory;
a chunk that cannot be read (a truncated or damaged file) is reported, not raised.

Checked: root attributes (``schema_version``, ``stamp_size`` giving the stamp shape S,
ISO time, 64-hex sha256, JSON attributes that parse); ``/fields`` columns, unique ids
and split names; in each split the datasets, dtypes, shapes (N and SxS), image
chunking (1, S, S) and ``BUNIT``; values (``cr`` in {0, 1}, ``ignore`` <= 7, ``truth``
<= 4, finite ``image`` and ``noiseless`` wherever ``ignore == 0``); that every ``meta.field_id`` is in
``/fields`` with the same split and field type; that no field and no visit has stamps
in two splits; that ``truth`` and ``noiseless`` are each in all splits or in none
(``noiseless`` only with ``truth``, and not in a version-1 file); that no two stamps, in one
split or in two, have identical images (an exposure cut twice, e.g. listed under two
visits; hashed stamp by stamp).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from crforge.errors import InputError
from crforge.pipeline.datafile.reader import blocks, check_block, check_file, progress_bar, read_fields, text
from crforge.pipeline.datafile.schema import (
    FIELDS_DTYPE,
    META_DTYPE,
    OPTIONAL_PIXELS,
    PIXEL_DTYPES,
    READABLE_VERSIONS,
    ROOT_ATTRS,
    SPLITS,
)

logger = logging.getLogger(__name__)

__all__ = ["validate", "require_valid", "DEFAULT_BLOCK"]

#: Default number of stamps read at a time.
DEFAULT_BLOCK = 64

_FIELDS_SPEC = {n: FIELDS_DTYPE[n].str.lstrip("<>|=") for n in FIELDS_DTYPE.names}
_META_SPEC = {n: META_DTYPE[n].str.lstrip("<>|=") for n in META_DTYPE.names}
_PIXEL_SPEC = {n: d.str.lstrip("<>|=") for n, d in PIXEL_DTYPES.items()}
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_MAX_LISTED = 10  # ids listed in one message before "..."


def _dtype_ok(actual: np.dtype, expected: str) -> bool:
    """Same kind and item size (byte order ignored)."""
    exp = np.dtype(expected)
    return actual.kind == exp.kind and actual.itemsize == exp.itemsize


def _compound_problems(ds: h5py.Dataset, name: str, spec: Mapping[str, str]) -> list[str]:
    """Missing or wrongly typed fields of a compound dataset."""
    fields = ds.dtype.fields
    if fields is None:
        return [f"{name}: not a compound table; expected fields "
                f"{', '.join(f'{k} {v}' for k, v in spec.items())}"]
    out = []
    for key, exp in spec.items():
        if key not in fields:
            out.append(f"{name}: missing field {key!r} (expected {exp})")
        elif not _dtype_ok(fields[key][0], exp):
            out.append(f"{name}: field {key!r} has dtype {fields[key][0].str}, expected {exp}")
    return out


def _ids(values: set[int] | list[int]) -> str:
    vals = sorted(values)
    shown = ", ".join(str(v) for v in vals[:_MAX_LISTED])
    return shown + (f", ... ({len(vals)} in all)" if len(vals) > _MAX_LISTED else "")


# ------------------------------------------------------------------------------ root


def _int_attr(attrs, key: str, probs: list[str]) -> int | None:
    v = attrs[key]
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        probs.append(f"/: attribute {key!r} is {v!r} ({type(v).__name__}), expected an int")
        return None
    return int(v)


def _validate_root_ints(attrs, probs: list[str]) -> int | None:
    """``schema_version`` and ``stamp_size``; return the usable stamp size."""
    if "schema_version" in attrs:
        v = _int_attr(attrs, "schema_version", probs)
        if v is not None and v not in READABLE_VERSIONS:
            probs.append(f"/: attribute 'schema_version' is {v}, expected one of {READABLE_VERSIONS}")
    if "stamp_size" not in attrs:
        return None
    v = _int_attr(attrs, "stamp_size", probs)
    if v is not None and v < 1:
        probs.append(f"/: attribute 'stamp_size' is {v}, expected a positive int (256)")
        return None
    return v


def _validate_root_json(attrs, probs: list[str]) -> None:
    for key, kind in (("config", None), ("software", dict), ("failed_visits", list)):
        s = text(attrs[key]) if key in attrs else None
        if s is None:
            continue
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as exc:
            probs.append(f"/: attribute {key!r} is not valid JSON ({exc})")
            continue
        if kind is not None and not isinstance(obj, kind):
            probs.append(f"/: attribute {key!r} is JSON {type(obj).__name__}, "
                         f"expected a JSON {'object' if kind is dict else 'list'}")
        elif key == "failed_visits":
            for i, item in enumerate(obj):
                if not (isinstance(item, dict) and "visit" in item and "reason" in item):
                    probs.append(f"/: attribute 'failed_visits' item {i} is {item!r}, "
                                 "expected an object with 'visit' and 'reason'")


def _validate_root(f: h5py.File) -> tuple[list[str], int | None]:
    """Problems in the root attributes, and the stamp size (None if unusable)."""
    attrs = f.attrs
    probs = [f"/: missing attribute {key!r}" for key in ROOT_ATTRS if key not in attrs]
    stamp_size = _validate_root_ints(attrs, probs)
    for key in ("created_utc", "crforge_version", "manifest_name", "manifest_sha256",
                "config", "software", "failed_visits"):
        if key in attrs and text(attrs[key]) is None:
            probs.append(f"/: attribute {key!r} is not a string")
    s = text(attrs["created_utc"]) if "created_utc" in attrs else None
    if s is not None:
        try:
            datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            probs.append(f"/: attribute 'created_utc' is {s!r}, expected an ISO 8601 time")
    s = text(attrs["manifest_sha256"]) if "manifest_sha256" in attrs else None
    if s is not None and not _HEX64.match(s):
        probs.append(f"/: attribute 'manifest_sha256' is {s!r}, expected 64 hex digits")
    _validate_root_json(attrs, probs)
    return probs, stamp_size


def _validate_fields(f: h5py.File) -> list[str]:
    if "fields" not in f:
        return ["/fields: missing (expected a compound table of fields)"]
    ds = f["fields"]
    if not isinstance(ds, h5py.Dataset):
        return ["/fields: is a group, expected a compound dataset"]
    probs = _compound_problems(ds, "/fields", _FIELDS_SPEC)
    if ds.ndim != 1:
        return probs + [f"/fields: shape {ds.shape}, expected one dimension [F]"]
    names = ds.dtype.fields or {}
    if "field_id" not in names:
        return probs
    rows = ds[()]
    ids, counts = np.unique(rows["field_id"], return_counts=True)
    dup = {int(i) for i in ids[counts > 1]}
    if dup:
        probs.append(f"/fields: field_id listed more than once: {_ids(dup)}; expected unique ids")
    if "split" in names:
        bad = {int(row["field_id"]): text(row["split"]) for row in rows if text(row["split"]) not in SPLITS}
        if bad:
            probs.append(f"/fields: split not one of {', '.join(SPLITS)} for field_id "
                         f"{_ids(set(bad))} (e.g. {next(iter(bad.values()))!r})")
    return probs


# ---------------------------------------------------------------------------- splits


def _split_datasets(g: h5py.Group, gname: str, stamp_size: int | None
                    ) -> tuple[list[str], dict[str, h5py.Dataset]]:
    """Problems of the pixel datasets of a split, and the usable ones."""
    probs: list[str] = []
    pix: dict[str, h5py.Dataset] = {}
    for key in ("image", "cr", "ignore") + OPTIONAL_PIXELS:
        if key not in g:
            if key not in OPTIONAL_PIXELS:
                probs.append(f"{gname}/{key}: missing dataset (expected {_PIXEL_SPEC[key]} [N,S,S])")
            continue
        ds = g[key]
        if not isinstance(ds, h5py.Dataset):
            probs.append(f"{gname}/{key}: is a group, expected a dataset")
            continue
        if not _dtype_ok(ds.dtype, _PIXEL_SPEC[key]):
            probs.append(f"{gname}/{key}: dtype {ds.dtype.str}, expected {_PIXEL_SPEC[key]}")
        if ds.ndim != 3:
            probs.append(f"{gname}/{key}: shape {ds.shape}, expected [N,S,S]")
            continue
        pix[key] = ds
    # stamp size: from the attribute, else from the first pixel dataset
    size = stamp_size if stamp_size is not None or not pix else next(iter(pix.values())).shape[1]
    for key, ds in list(pix.items()):
        if size is not None and ds.shape[1:] != (size, size):
            probs.append(f"{gname}/{key}: stamps are {ds.shape[1]}x{ds.shape[2]}, "
                         f"expected {size}x{size} (stamp_size)")
            del pix[key]
    if "image" in pix:
        probs += _image_attrs(pix["image"], gname, size)
    return probs, pix


def _image_attrs(img: h5py.Dataset, gname: str, size: int | None) -> list[str]:
    probs = []
    if size is not None and img.chunks != (1, size, size):
        probs.append(f"{gname}/image: chunks {img.chunks}, expected (1, {size}, {size})")
    if "BUNIT" not in img.attrs:
        probs.append(f"{gname}/image: missing attribute 'BUNIT'")
    elif text(img.attrs["BUNIT"]) is None:
        probs.append(f"{gname}/image: attribute 'BUNIT' is not a string")
    return probs


def _split_meta(g: h5py.Group, gname: str) -> tuple[list[str], h5py.Dataset | None]:
    if "meta" not in g:
        return [f"{gname}/meta: missing dataset (expected a compound table [N])"], None
    meta = g["meta"]
    if not isinstance(meta, h5py.Dataset):
        return [f"{gname}/meta: is a group, expected a compound dataset"], None
    probs = _compound_problems(meta, f"{gname}/meta", _META_SPEC)
    if meta.ndim != 1:
        return probs + [f"{gname}/meta: shape {meta.shape}, expected [N]"], None
    return probs, (meta if meta.dtype.fields is not None else None)


def _stamp_count(gname: str, pix: dict, meta, probs: list[str]) -> int:
    """N, which must agree across image, cr, ignore, truth and meta."""
    lengths = {f"{gname}/{k}": ds.shape[0] for k, ds in pix.items()}
    if meta is not None:
        lengths[f"{gname}/meta"] = meta.shape[0]
    if len(set(lengths.values())) > 1:
        probs.append(f"{gname}: datasets disagree on the number of stamps ("
                     + ", ".join(f"{k} has {v}" for k, v in lengths.items())
                     + "); expected the same N in all")
        return min(lengths.values())
    return next(iter(lengths.values()), 0)


@dataclass
class _Scan:
    """What streaming one split's stamps found."""

    split: str
    fields: dict[int, dict[str, Any]]
    values: dict[str, list] = field(default_factory=dict)  # dataset -> [count, first, expected]
    unknown: set[int] = field(default_factory=set)
    wrong_split: dict[int, str | None] = field(default_factory=dict)
    wrong_type: dict[int, tuple[str | None, str | None]] = field(default_factory=dict)
    seen_ids: set[int] = field(default_factory=set)
    visits: set[str] = field(default_factory=set)
    unreadable: list[str] = field(default_factory=list)
    digests: dict[bytes, int] = field(default_factory=dict)  # image hash -> first stamp with it
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (stamp, the earlier identical one)

    def bad_values(self, name: str, arr: np.ndarray, bad: np.ndarray, offset: int, expected: str) -> None:
        """Count bad values of a dataset, keeping the first example."""
        n = int(np.count_nonzero(bad))
        if not n:
            return
        entry = self.values.setdefault(name, [0, None, expected])
        entry[0] += n
        if entry[1] is None:
            idx = np.argwhere(bad)[0]
            entry[1] = (offset + int(idx[0]), arr[tuple(idx)].item())

    def pixels(self, gname: str, arrays: dict[str, np.ndarray], offset: int) -> None:
        cr, ign, tr, img = (arrays.get(k) for k in ("cr", "ignore", "truth", "image"))
        if cr is not None:
            self.bad_values(f"{gname}/cr", cr, (cr != 0) & (cr != 1), offset, "0 or 1")
        for name, arr, top, expected in (("ignore", ign, 7, "0..7 (bits 1, 2, 4)"),
                                         ("truth", tr, 4, "0..4")):
            if arr is not None:
                bad = (arr < 0) | (arr > top)
                if not np.issubdtype(arr.dtype, np.integer):
                    bad |= arr != np.floor(arr)
                self.bad_values(f"{gname}/{name}", arr, bad, offset, expected)
        for name in ("image", "noiseless"):
            arr = arrays.get(name)
            if arr is not None and np.issubdtype(arr.dtype, np.floating):
                bad = ~np.isfinite(arr) if ign is None else ~np.isfinite(arr) & (ign == 0)
                self.bad_values(f"{gname}/{name}", arr, bad, offset, "finite values wherever ignore == 0")
        if img is not None:
            self.hash_stamps(img, offset)

    def hash_stamps(self, img: np.ndarray, offset: int) -> None:
        """Remember each stamp's hash; two equal images are one exposure cut twice."""
        for k in range(len(img)):
            digest = hashlib.blake2b(np.ascontiguousarray(img[k]).tobytes(), digest_size=16).digest()
            first = self.digests.setdefault(digest, offset + k)
            if first != offset + k:
                self.duplicates.append((offset + k, first))

    def rows(self, rows: np.ndarray) -> None:
        names = rows.dtype.fields or {}
        if "field_id" in names:
            for fid in (int(i) for i in np.unique(rows["field_id"])):
                self.seen_ids.add(fid)
                if fid not in self.fields:
                    self.unknown.add(fid)
                elif self.fields[fid]["split"] != self.split:
                    self.wrong_split[fid] = self.fields[fid]["split"]
        if "field_id" in names and "field_type" in names:
            for fid, ft in zip((int(i) for i in rows["field_id"]), rows["field_type"]):
                want = self.fields.get(fid, {}).get("field_type")
                if want is not None and text(ft) != want:
                    self.wrong_type.setdefault(fid, (text(ft), want))
        if "visit" in names:
            self.visits.update(v for v in (text(x) for x in np.unique(rows["visit"])) if v)

    def problems(self, gname: str) -> list[str]:
        probs = list(self.unreadable)
        for name, (count, (stamp, value), expected) in self.values.items():
            probs.append(f"{name}: {count} pixel(s) with invalid values (first: {value!r} in "
                         f"stamp {stamp}); expected {expected}")
        if self.unknown:
            probs.append(f"{gname}/meta: field_id not in /fields: {_ids(self.unknown)}")
        for fid, want in sorted(self.wrong_split.items()):
            probs.append(f"{gname}/meta: field_id {fid} has stamps in {self.split!r} but /fields "
                         f"puts it in {want!r}; expected every stamp of a field in its /fields split")
        for fid, (got, want) in sorted(self.wrong_type.items()):
            probs.append(f"{gname}/meta: field_id {fid} has field_type {got!r}, but /fields says {want!r}")
        if self.duplicates:
            shown = ", ".join(f"{j} = {i}" for j, i in self.duplicates[:5])
            probs.append(f"{gname}/image: {len(self.duplicates)} duplicate stamp(s), identical to an earlier "
                         f"one ({shown}); expected every stamp once (an exposure listed under two visits?)")
        return probs


def _scan_split(scan: _Scan, gname: str, pix: dict, meta, n: int, block: int, bar) -> None:
    for sl in blocks(n, block):
        try:
            arrays = {k: ds[sl] for k, ds in pix.items()}
            rows = meta[sl] if meta is not None else None
        except (OSError, RuntimeError) as exc:  # a damaged chunk: report it and go on
            scan.unreadable.append(f"{gname}: cannot read stamps {sl.start}-{sl.stop - 1}: {exc}")
        else:
            scan.pixels(gname, arrays, sl.start)
            if rows is not None:
                scan.rows(rows)
        bar.update(sl.stop - sl.start)


def _validate_split(f: h5py.File, split: str, stamp_size: int | None, fields: dict, block: int,
                    bar) -> tuple[list[str], tuple[str, ...], _Scan]:
    """Problems of one split, the optional datasets it has, and what its stamps hold."""
    gname, scan = f"/{split}", _Scan(split, fields)
    if split not in f:
        return [f"{gname}: missing group (all of train, val and test must exist)"], (), scan
    g = f[split]
    if not isinstance(g, h5py.Group):
        return [f"{gname}: is a dataset, expected a group"], (), scan
    probs, pix = _split_datasets(g, gname, stamp_size)
    meta_probs, meta = _split_meta(g, gname)
    probs += meta_probs
    n = _stamp_count(gname, pix, meta, probs)
    _scan_split(scan, gname, pix, meta, n, block, bar)
    return probs + scan.problems(gname), tuple(k for k in OPTIONAL_PIXELS if k in g), scan


# ---------------------------------------------------------------------------- file


def _optional_problems(optional_in: dict[str, tuple[str, ...]], version: Any) -> list[str]:
    """``truth`` and ``noiseless`` each in all splits or none; ``noiseless`` only with truth, in v2."""
    probs = []
    for key in OPTIONAL_PIXELS:
        with_t = [s for s, t in optional_in.items() if key in t]
        without = [s for s, t in optional_in.items() if key not in t]
        if with_t and without:
            probs.append(f"/{f'/{key}, /'.join(with_t)}/{key} present but /"
                         f"{f'/{key}, /'.join(without)}/{key} missing; expected {key} in all "
                         "splits or in none")
    for split, names in optional_in.items():
        if "noiseless" in names and "truth" not in names:
            probs.append(f"/{split}/noiseless present without /{split}/truth; expected both "
                         "(simulated data) or neither")
        if "noiseless" in names and version == 1:
            probs.append(f"/{split}/noiseless in a file of schema_version 1; expected schema_version 2")
    return probs


def _across_splits(optional_in: dict[str, tuple[str, ...]], scans: dict[str, _Scan],
                   version: Any = None) -> list[str]:
    """Truth and noiseless in all splits or none; no field and no visit in two splits."""
    probs = _optional_problems(optional_in, version)
    probs += _duplicates_across_splits(scans)
    for what, key in (("field_id", "seen_ids"), ("visit", "visits")):
        where: dict[Any, list[str]] = {}
        for split, scan in scans.items():
            for item in getattr(scan, key):
                where.setdefault(item, []).append(split)
        for item, splits in sorted(where.items()):
            if len(splits) > 1:
                shown = item if what == "field_id" else repr(item)
                probs.append(f"/{', /'.join(splits)}: {what} {shown} has stamps in two splits "
                             f"({', '.join(splits)}); expected every {what.split('_')[0]} in exactly "
                             "one split")
    return probs


def _duplicates_across_splits(scans: dict[str, _Scan]) -> list[str]:
    """Stamps of one split identical to stamps of another (the same pixels trained and tested on)."""
    probs, first = [], {}
    for split, scan in scans.items():
        found = [(first[d], i) for d, i in scan.digests.items() if d in first]
        if found:
            shown = ", ".join(f"/{s}/image {j} = /{split}/image {i}" for (s, j), i in found[:5])
            probs.append(f"/{split}/image: {len(found)} stamp(s) identical to stamps of another split "
                         f"({shown}); expected every stamp once")
        for d, i in scan.digests.items():
            first.setdefault(d, (split, i))
    return probs


def _total_stamps(f: h5py.File) -> int:
    total = 0
    for split in SPLITS:
        g = f.get(split)
        if isinstance(g, h5py.Group) and isinstance(g.get("cr"), h5py.Dataset) and g["cr"].ndim:
            total += g["cr"].shape[0]
    return total


def _validate_open(p, block: int, progress: bool) -> tuple[list[str], dict[str, tuple], dict, Any]:
    """The per-file and per-split checks of :func:`validate`, on the opened file."""
    with h5py.File(p, "r") as f:
        probs, stamp_size = _validate_root(f)
        probs += _validate_fields(f)
        fields = read_fields(f)
        truth_in: dict[str, tuple] = {}
        version = f.attrs.get("schema_version")
        scans: dict[str, _Scan] = {}
        with progress_bar(_total_stamps(f), f"validate {p.name}", progress) as bar:
            for split in SPLITS:
                sp, has_truth, scans[split] = _validate_split(f, split, stamp_size, fields, block, bar)
                probs += sp
                if split in f:
                    truth_in[split] = has_truth
    return probs, truth_in, scans, version


#: Files :func:`require_valid` found valid: (path, size, mtime) -> True (train --kind both reads one twice).
_VALID: dict[tuple[str, int, int], bool] = {}


def require_valid(path: str | os.PathLike, *, what: str = "data set", block: int = DEFAULT_BLOCK,
                  progress: bool = True) -> Path:
    """Validate a training set before a stage uses it; refuse it, naming every problem, if invalid.

    ``crforge train`` and ``crforge evaluate`` call this before they create anything,
    so a damaged file is refused at once instead of failing mid-epoch. A file found
    valid once in this process (same size and modification time) is not read again.

    Raises
    ------
    FileNotFoundError
        No such file.
    InputError
        Not HDF5, damaged, truncated, or not a valid training set: the message names
        the file and its problems (the first five, and how many there are).
    """
    p = check_file(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VALID:
        return p
    probs = validate(p, block=block, progress=progress)
    if probs:
        shown = "; ".join(probs[:5]) + (f"; ... ({len(probs)} problems in all)" if len(probs) > 5 else "")
        raise InputError(f"{p}: not a valid {what} ({shown}); `crforge inspect {p}` lists every problem")
    _VALID[key] = True
    return p


def validate(path: str | os.PathLike, *, block: int = DEFAULT_BLOCK, progress: bool = True) -> list[str]:
    """Check an HDF5 training set against the schema; every problem found, [] if valid.

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file.
    block : int, optional
        Stamps read at a time (memory is proportional to it).
    progress : bool, optional
        Show a progress bar over stamps when stderr is a terminal.

    Returns
    -------
    list of str
        Each problem names the dataset or attribute and what was expected.

    Raises
    ------
    FileNotFoundError
        No such file.
    InputError
        Not an HDF5 file (or not a file), or ``block`` < 1.
    """
    p = check_file(path)
    block = check_block(block)
    try:
        probs, truth_in, scans, version = _validate_open(p, block, progress)
    except InputError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        # h5py's errors of a truncated or bit-flipped file: its superblock, object headers
        # or B-trees, before any chunk is read (damaged chunks are listed as problems)
        raise InputError(f"{p}: damaged or truncated HDF5 file ({type(exc).__name__}: {exc})") from None
    probs += _across_splits(truth_in, scans, version)
    for msg in probs:
        logger.debug("%s: %s", p, msg)
    logger.info("%s: %d problem(s)", p, len(probs))
    return probs
