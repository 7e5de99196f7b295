"""Check and summarise a crforge HDF5 training set (``crforge inspect FILE.h5``).

The file layout is DESIGN.md's "HDF5 schema, version 1", as written by
:mod:`crforge.pipeline.dataset`::

    / attrs  schema_version=1, created_utc, crforge_version, manifest_name,
             manifest_sha256, config (JSON), software (JSON object), stamp_size,
             failed_visits (JSON list of {"visit", "reason"})
    /fields  compound [F]: field_id, target, ra, dec, field_type, split, visits
    /train /val /test  groups with image f4 [N,S,S] (chunks (1,S,S), attr BUNIT),
             cr u1, ignore u1 (bits 1 bad, 2 saturated, 4 no data), optional truth u1
             (0 none, 1 + SNR bin of an injected CR pixel: <3, 3-5, 5-10, >10 sigma)
             and meta compound [N]

:func:`validate` lists every problem it finds (an empty list means the file is
valid); the key property is that no field has stamps in two splits.
:func:`summarise` gives stamp, field and pixel statistics and, where the truth of
simulated visits exists, the label recall per SNR bin and the false-label rate.
Both stream the stamps in blocks (``block`` stamps at a time), so a file of any size
is checked in constant memory.  :func:`format_summary` renders a summary as a
plain-text report.  :func:`add_arguments` and :func:`run` are the CLI hooks.

Counting conventions of :func:`summarise`
-----------------------------------------
- ``cr_fraction`` and ``ignore_fraction`` are over all pixels of a split;
  ``cr_fraction_unignored`` is the CR-labelled fraction of the pixels with
  ``ignore == 0``.
- Truth statistics use only pixels with ``ignore == 0``.  Recall in a bin is
  (``cr == 1`` and ``truth == bin``) / (``truth == bin``); ``recall_above_5sigma``
  pools bins 3 and 4.  ``false_labels_per_million`` is 1e6 x (``cr == 1`` and
  ``truth == 0``) / (``truth == 0``), i.e. the false-positive rate over the
  non-ignored negative pixels; the raw counts are reported next to it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from crforge.errors import InputError
from crforge.pipeline.schema import (
    FIELDS_DTYPE,
    META_DTYPE,
    PIXEL_DTYPES,
    ROOT_ATTRS,
    SCHEMA_VERSION,
    SPLITS,
    TRUTH_SNR_BINS,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEMA_VERSION",
    "SPLITS",
    "FIELD_TYPES",
    "SNR_BINS",
    "validate",
    "summarise",
    "format_summary",
]

#: The field types crforge simulates and labels (others are reported, not rejected).
FIELD_TYPES: tuple[str, ...] = ("extragalactic", "globular_cluster", "resolved_galaxy")
SNR_BINS = TRUTH_SNR_BINS

#: Default number of stamps read at a time.
DEFAULT_BLOCK = 64

_ROOT_ATTRS = ROOT_ATTRS
_FIELDS_DTYPE: dict[str, str] = {n: FIELDS_DTYPE[n].str.lstrip("<>|=") for n in FIELDS_DTYPE.names}
_META_DTYPE: dict[str, str] = {n: META_DTYPE[n].str.lstrip("<>|=") for n in META_DTYPE.names}
_PIXEL_DTYPE: dict[str, str] = {n: d.str.lstrip("<>|=") for n, d in PIXEL_DTYPES.items()}
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_MAX_LISTED = 10  # ids listed in one message before "..."


# --------------------------------------------------------------------------- helpers


def _check_path(path: Any) -> Path:
    """Return ``path`` as a Path of an existing HDF5 file, or raise."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path: no such file: {p}")
    if not p.is_file():
        raise InputError(f"path: not a regular file: {p}")
    if not h5py.is_hdf5(p):
        raise InputError(f"path: not an HDF5 file: {p}")
    return p


def _check_block(block: Any) -> int:
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)):
        raise TypeError(f"block must be an int, got {type(block).__name__}")
    if block < 1:
        raise InputError(f"block must be >= 1, got {block}")
    return int(block)


def _text(value: Any) -> str | None:
    """An HDF5 string attribute or field as str (None if it is not a string)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        return value
    return None


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


def _blocks(n: int, block: int) -> Iterator[slice]:
    for start in range(0, n, block):
        yield slice(start, min(start + block, n))


def _progress(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    # disable=None: shown only when stderr is a TTY
    return tqdm(total=total, desc=desc, unit="stamp", file=sys.stderr,
                disable=None if progress else True, leave=False)


def _read_fields(f: h5py.File) -> dict[int, dict[str, Any]]:
    """The /fields table as {field_id: {"split", "field_type", "target"}} (best effort)."""
    out: dict[int, dict[str, Any]] = {}
    ds = f.get("fields")
    if not isinstance(ds, h5py.Dataset) or ds.dtype.fields is None:
        return out
    names = ds.dtype.fields
    if "field_id" not in names:
        return out
    rows = ds[()]
    if rows.ndim != 1:
        return out
    for row in rows:
        fid = int(row["field_id"])
        out.setdefault(fid, {
            "split": _text(row["split"]) if "split" in names else None,
            "field_type": _text(row["field_type"]) if "field_type" in names else None,
            "target": _text(row["target"]) if "target" in names else None,
        })
    return out


# -------------------------------------------------------------------------- validate


def _validate_root(f: h5py.File) -> tuple[list[str], int | None]:
    """Problems in the root attributes, and the stamp size (None if unusable)."""
    probs: list[str] = []
    attrs = f.attrs
    for key in _ROOT_ATTRS:
        if key not in attrs:
            probs.append(f"/: missing attribute {key!r}")

    def intattr(key: str) -> int | None:
        v = attrs[key]
        if isinstance(v, np.ndarray) and v.shape == ():
            v = v[()]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            probs.append(f"/: attribute {key!r} is {v!r} ({type(v).__name__}), expected an int")
            return None
        return int(v)

    if "schema_version" in attrs:
        v = intattr("schema_version")
        if v is not None and v != SCHEMA_VERSION:
            probs.append(f"/: attribute 'schema_version' is {v}, expected {SCHEMA_VERSION}")
    stamp_size = None
    if "stamp_size" in attrs:
        v = intattr("stamp_size")
        if v is not None:
            if v < 1:
                probs.append(f"/: attribute 'stamp_size' is {v}, expected a positive int (256)")
            else:
                stamp_size = v

    for key in ("created_utc", "crforge_version", "manifest_name", "manifest_sha256",
                "config", "software", "failed_visits"):
        if key in attrs and _text(attrs[key]) is None:
            probs.append(f"/: attribute {key!r} is not a string")
    s = _text(attrs["created_utc"]) if "created_utc" in attrs else None
    if s is not None:
        try:
            datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            probs.append(f"/: attribute 'created_utc' is {s!r}, expected an ISO 8601 time")
    s = _text(attrs["manifest_sha256"]) if "manifest_sha256" in attrs else None
    if s is not None and not _HEX64.match(s):
        probs.append(f"/: attribute 'manifest_sha256' is {s!r}, expected 64 hex digits")
    for key, kind in (("config", None), ("software", dict), ("failed_visits", list)):
        s = _text(attrs[key]) if key in attrs else None
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
    return probs, stamp_size


def _validate_fields(f: h5py.File) -> list[str]:
    if "fields" not in f:
        return ["/fields: missing (expected a compound table of fields)"]
    ds = f["fields"]
    if not isinstance(ds, h5py.Dataset):
        return ["/fields: is a group, expected a compound dataset"]
    probs = _compound_problems(ds, "/fields", _FIELDS_DTYPE)
    if ds.ndim != 1:
        probs.append(f"/fields: shape {ds.shape}, expected one dimension [F]")
        return probs
    names = ds.dtype.fields or {}
    if "field_id" not in names:
        return probs
    rows = ds[()]
    ids, counts = np.unique(rows["field_id"], return_counts=True)
    dup = {int(i) for i in ids[counts > 1]}
    if dup:
        probs.append(f"/fields: field_id listed more than once: {_ids(dup)}; expected unique ids")
    if "split" in names:
        bad = {}
        for row in rows:
            s = _text(row["split"])
            if s not in SPLITS:
                bad[int(row["field_id"])] = s
        if bad:
            probs.append(f"/fields: split not one of {', '.join(SPLITS)} for field_id "
                         f"{_ids(set(bad))} (e.g. {next(iter(bad.values()))!r})")
    return probs


def _value_problem(name: str, arr: np.ndarray, bad: np.ndarray, offset: int,
                   expected: str, acc: dict[str, list]) -> None:
    """Accumulate count and first example of bad values of one dataset."""
    n = int(np.count_nonzero(bad))
    if not n:
        return
    entry = acc.setdefault(name, [0, None, expected])
    entry[0] += n
    if entry[1] is None:
        idx = np.argwhere(bad)[0]
        entry[1] = (offset + int(idx[0]), arr[tuple(idx)].item())


def _validate_split(f: h5py.File, split: str, stamp_size: int | None,
                    fields: dict[int, dict[str, Any]], block: int, bar
                    ) -> tuple[list[str], bool, set[int], set[str]]:
    """Problems of one split, whether it has truth, its field ids and visits."""
    gname = f"/{split}"
    if split not in f:
        return [f"{gname}: missing group (all of train, val and test must exist)"], False, set(), set()
    g = f[split]
    if not isinstance(g, h5py.Group):
        return [f"{gname}: is a dataset, expected a group"], False, set(), set()
    probs: list[str] = []
    has_truth = "truth" in g
    pix: dict[str, h5py.Dataset] = {}
    for key in ("image", "cr", "ignore", "truth"):
        if key not in g:
            if key != "truth":
                probs.append(f"{gname}/{key}: missing dataset (expected {_PIXEL_DTYPE[key]} [N,S,S])")
            continue
        ds = g[key]
        if not isinstance(ds, h5py.Dataset):
            probs.append(f"{gname}/{key}: is a group, expected a dataset")
            continue
        if not _dtype_ok(ds.dtype, _PIXEL_DTYPE[key]):
            probs.append(f"{gname}/{key}: dtype {ds.dtype.str}, expected {_PIXEL_DTYPE[key]}")
        if ds.ndim != 3:
            probs.append(f"{gname}/{key}: shape {ds.shape}, expected [N,S,S]")
            continue
        pix[key] = ds

    # stamp size: from the attribute, else from the first pixel dataset
    size = stamp_size
    if size is None and pix:
        size = next(iter(pix.values())).shape[1]
    for key, ds in list(pix.items()):
        if size is not None and ds.shape[1:] != (size, size):
            probs.append(f"{gname}/{key}: stamps are {ds.shape[1]}x{ds.shape[2]}, "
                         f"expected {size}x{size} (stamp_size)")
            del pix[key]
    if "image" in pix:
        img = pix["image"]
        if size is not None and img.chunks != (1, size, size):
            probs.append(f"{gname}/image: chunks {img.chunks}, expected (1, {size}, {size})")
        if "BUNIT" not in img.attrs:
            probs.append(f"{gname}/image: missing attribute 'BUNIT'")
        elif _text(img.attrs["BUNIT"]) is None:
            probs.append(f"{gname}/image: attribute 'BUNIT' is not a string")

    meta = None
    if "meta" not in g:
        probs.append(f"{gname}/meta: missing dataset (expected a compound table [N])")
    elif not isinstance(g["meta"], h5py.Dataset):
        probs.append(f"{gname}/meta: is a group, expected a compound dataset")
    else:
        meta = g["meta"]
        mp = _compound_problems(meta, f"{gname}/meta", _META_DTYPE)
        probs += mp
        if meta.ndim != 1:
            probs.append(f"{gname}/meta: shape {meta.shape}, expected [N]")
            meta = None
        elif meta.dtype.fields is None:
            meta = None

    # N must agree across image, cr, ignore, truth and meta
    lengths = {f"{gname}/{k}": ds.shape[0] for k, ds in pix.items()}
    if meta is not None:
        lengths[f"{gname}/meta"] = meta.shape[0]
    if len(set(lengths.values())) > 1:
        probs.append(f"{gname}: datasets disagree on the number of stamps ("
                     + ", ".join(f"{k} has {v}" for k, v in lengths.items())
                     + "); expected the same N in all")
        n = min(lengths.values())
    else:
        n = next(iter(lengths.values()), 0)

    # stream the stamps
    acc: dict[str, list] = {}
    unknown: set[int] = set()
    wrong_split: dict[int, str | None] = {}
    wrong_type: dict[int, tuple[str | None, str | None]] = {}
    seen_ids: set[int] = set()
    visits: set[str] = set()
    mfields = (meta.dtype.fields or {}) if meta is not None else {}
    for sl in _blocks(n, block):
        try:
            cr = pix["cr"][sl] if "cr" in pix else None
            ign = pix["ignore"][sl] if "ignore" in pix else None
            tr = pix["truth"][sl] if "truth" in pix else None
            img = pix["image"][sl] if "image" in pix else None
            rows = meta[sl] if meta is not None else None
        except (OSError, RuntimeError) as exc:
            probs.append(f"{gname}: cannot read stamps {sl.start}-{sl.stop - 1}: {exc}")
            bar.update(sl.stop - sl.start)
            continue
        if cr is not None:
            _value_problem(f"{gname}/cr", cr, (cr != 0) & (cr != 1), sl.start, "0 or 1", acc)
        if ign is not None:
            bad = (ign < 0) | (ign > 7)
            if not np.issubdtype(ign.dtype, np.integer):
                bad |= ign != np.floor(ign)
            _value_problem(f"{gname}/ignore", ign, bad, sl.start, "0..7 (bits 1, 2, 4)", acc)
        if tr is not None:
            bad = (tr < 0) | (tr > 4)
            if not np.issubdtype(tr.dtype, np.integer):
                bad |= tr != np.floor(tr)
            _value_problem(f"{gname}/truth", tr, bad, sl.start, "0..4", acc)
        if img is not None and np.issubdtype(img.dtype, np.floating):
            bad = ~np.isfinite(img)
            if ign is not None:
                bad &= ign == 0
            _value_problem(f"{gname}/image", img, bad, sl.start,
                           "finite values wherever ignore == 0", acc)
        if rows is not None and "field_id" in mfields:
            for fid in np.unique(rows["field_id"]):
                fid = int(fid)
                seen_ids.add(fid)
                if fid not in fields:
                    unknown.add(fid)
                elif fields[fid]["split"] != split:
                    wrong_split[fid] = fields[fid]["split"]
            if "field_type" in mfields:
                for fid, ft in zip(rows["field_id"], rows["field_type"]):
                    fid = int(fid)
                    if fid in fields and fields[fid]["field_type"] is not None:
                        ft = _text(ft)
                        if ft != fields[fid]["field_type"]:
                            wrong_type.setdefault(fid, (ft, fields[fid]["field_type"]))
        if rows is not None and "visit" in mfields:
            visits.update(v for v in (_text(x) for x in np.unique(rows["visit"])) if v)
        bar.update(sl.stop - sl.start)

    for name, (count, first, expected) in acc.items():
        stamp, value = first
        probs.append(f"{name}: {count} pixel(s) with invalid values (first: {value!r} in "
                     f"stamp {stamp}); expected {expected}")
    if unknown:
        probs.append(f"{gname}/meta: field_id not in /fields: {_ids(unknown)}")
    for fid, want in sorted(wrong_split.items()):
        probs.append(f"{gname}/meta: field_id {fid} has stamps in {split!r} but /fields "
                     f"puts it in {want!r}; expected every stamp of a field in its /fields split")
    for fid, (got, want) in sorted(wrong_type.items()):
        probs.append(f"{gname}/meta: field_id {fid} has field_type {got!r}, but /fields "
                     f"says {want!r}")
    return probs, has_truth, seen_ids, visits


def validate(path: str | os.PathLike, *, block: int = DEFAULT_BLOCK,
             progress: bool = True) -> list[str]:
    """Check a crforge HDF5 training set against the version-1 schema.

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file.
    block : int, optional
        Stamps read at a time (memory is proportional to it); default 64.
    progress : bool, optional
        Show a tqdm progress bar over stamps when stderr is a TTY (default True).

    Returns
    -------
    list of str
        Every problem found, each naming the dataset path and what was expected; an
        empty list means the file is valid.

    Raises
    ------
    TypeError
        If ``path`` is not a str or path, or ``block`` not an int.
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` is not an HDF5 file, or ``block`` < 1.

    Notes
    -----
    Checked: root attributes (``schema_version`` must be 1, ``stamp_size`` gives the
    stamp shape S, JSON attributes parse); ``/fields`` columns, unique ids and split
    names; in each split the datasets, dtypes, shapes (N and SxS), image chunking
    (1, S, S) and ``BUNIT``; values (``cr`` in {0, 1}, ``ignore`` <= 7, ``truth`` <= 4,
    finite ``image`` wherever ``ignore == 0``); that every ``meta.field_id`` is in
    ``/fields`` with the same split and field type; that no field and no visit has
    stamps in two splits; and that ``truth`` is in all splits or in none.
    """
    p = _check_path(path)
    block = _check_block(block)
    probs: list[str] = []
    with h5py.File(p, "r") as f:
        root_probs, stamp_size = _validate_root(f)
        probs += root_probs
        probs += _validate_fields(f)
        fields = _read_fields(f)
        total = 0
        for split in SPLITS:
            g = f.get(split)
            if isinstance(g, h5py.Group) and isinstance(g.get("cr"), h5py.Dataset) and g["cr"].ndim:
                total += g["cr"].shape[0]
        truth_in: dict[str, bool] = {}
        ids_in: dict[str, set[int]] = {}
        visits_in: dict[str, set[str]] = {}
        with _progress(total, f"validate {p.name}", progress) as bar:
            for split in SPLITS:
                sp, has_truth, ids, visits = _validate_split(f, split, stamp_size, fields,
                                                             block, bar)
                probs += sp
                if split in f:
                    truth_in[split] = has_truth
                ids_in[split] = ids
                visits_in[split] = visits

    if len(set(truth_in.values())) > 1:
        with_t = [s for s, t in truth_in.items() if t]
        without = [s for s, t in truth_in.items() if not t]
        probs.append(f"/{'/truth, /'.join(with_t)}/truth present but /"
                     f"{'/truth, /'.join(without)}/truth missing; expected truth in all "
                     "splits or in none")
    where: dict[int, list[str]] = {}
    for split, ids in ids_in.items():
        for fid in ids:
            where.setdefault(fid, []).append(split)
    for fid, splits in sorted(where.items()):
        if len(splits) > 1:
            probs.append(f"/{', /'.join(splits)}: field_id {fid} has stamps in two splits "
                         f"({', '.join(splits)}); expected every field in exactly one split")
    vwhere: dict[str, list[str]] = {}
    for split, vs in visits_in.items():
        for v in vs:
            vwhere.setdefault(v, []).append(split)
    for v, splits in sorted(vwhere.items()):
        if len(splits) > 1:
            probs.append(f"/{', /'.join(splits)}: visit {v!r} has stamps in two splits "
                         f"({', '.join(splits)}); expected every visit in exactly one split")
    for msg in probs:
        logger.debug("%s: %s", p, msg)
    logger.info("%s: %d problem(s)", p, len(probs))
    return probs


# ------------------------------------------------------------------------- summarise


def _ratio(num: int, den: int, scale: float = 1.0) -> float | None:
    return None if den == 0 else scale * num / den


def _truth_stats(counts: np.ndarray) -> dict[str, Any]:
    """Truth statistics from counts[t, c] over non-ignored pixels (t 0..4, c 0/1)."""
    bins = []
    for b, label in SNR_BINS.items():
        inj = int(counts[b].sum())
        lab = int(counts[b, 1])
        bins.append({"bin": b, "snr": label, "injected": inj, "labelled": lab,
                     "recall": _ratio(lab, inj)})
    inj = int(counts[1:].sum())
    lab = int(counts[1:, 1].sum())
    inj5 = int(counts[3:].sum())
    lab5 = int(counts[3:, 1].sum())
    neg = int(counts[0].sum())
    fl = int(counts[0, 1])
    return {
        "pixels": int(counts.sum()),
        "injected": inj,
        "labelled": lab,
        "recall": _ratio(lab, inj),
        "bins": bins,
        "injected_above_5sigma": inj5,
        "labelled_above_5sigma": lab5,
        "recall_above_5sigma": _ratio(lab5, inj5),
        "negatives": neg,
        "false_labels": fl,
        "false_labels_per_million": _ratio(fl, neg, 1e6),
    }


def _pixel_stats(pixels: int, cr: int, ignored: int, cr_unignored: int) -> dict[str, Any]:
    return {
        "pixels": pixels,
        "cr_pixels": cr,
        "ignored_pixels": ignored,
        "cr_fraction": _ratio(cr, pixels),
        "ignore_fraction": _ratio(ignored, pixels),
        "cr_fraction_unignored": _ratio(cr_unignored, pixels - ignored),
    }


def summarise(path: str | os.PathLike, *, block: int = DEFAULT_BLOCK,
              progress: bool = True) -> dict[str, Any]:
    """Stamp, field, label and truth statistics of a crforge HDF5 training set.

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file (assumed valid: run :func:`validate` first).
    block : int, optional
        Stamps read at a time (memory is proportional to it); default 64.
    progress : bool, optional
        Show a tqdm progress bar over stamps when stderr is a TTY (default True).

    Returns
    -------
    dict
        JSON-serialisable summary with keys ``file``, the root attributes
        (``schema_version``, ``created_utc``, ``crforge_version``, ``manifest_name``,
        ``manifest_sha256``, ``stamp_size``), ``splits`` (per split: ``stamps``,
        ``stamps_by_field_type``, ``fields``, ``fields_by_field_type`` (from
        ``/fields``), ``fields_with_stamps``, ``pixels``, ``cr_pixels``,
        ``ignored_pixels``, ``cr_fraction``, ``ignore_fraction``,
        ``cr_fraction_unignored`` and ``truth``), ``total`` (the same over all
        splits), ``has_truth``, ``truth`` (all splits pooled, or None) and
        ``failed_visits``.  A truth entry holds ``injected``, ``labelled``,
        ``recall``, ``bins`` (per SNR bin: ``bin``, ``snr``, ``injected``,
        ``labelled``, ``recall``), ``recall_above_5sigma``, ``negatives``,
        ``false_labels`` and ``false_labels_per_million``, all over pixels with
        ``ignore == 0``.  Ratios with a zero denominator are None.

    Raises
    ------
    TypeError
        If ``path`` is not a str or path, or ``block`` not an int.
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` is not an HDF5 file, or ``block`` < 1.
    """
    p = _check_path(path)
    block = _check_block(block)
    out: dict[str, Any] = {"file": str(p)}
    with h5py.File(p, "r") as f:
        attrs = f.attrs
        for key in ("schema_version", "stamp_size"):
            v = attrs.get(key)
            out[key] = int(v) if isinstance(v, (int, np.integer)) else None
        for key in ("created_utc", "crforge_version", "manifest_name", "manifest_sha256"):
            out[key] = _text(attrs[key]) if key in attrs else None
        failed: list[Any] = []
        if "failed_visits" in attrs:
            try:
                failed = json.loads(_text(attrs["failed_visits"]) or "[]")
            except json.JSONDecodeError:
                logger.warning("%s: attribute failed_visits is not JSON", p)
        out["failed_visits"] = failed

        fields = _read_fields(f)
        total_stamps = sum(f[s]["cr"].shape[0] for s in SPLITS
                           if s in f and "cr" in f[s])
        splits: dict[str, Any] = {}
        all_counts = np.zeros((5, 2), dtype=np.int64)
        tot = {"pixels": 0, "cr": 0, "ignored": 0, "cr_unignored": 0}
        has_truth_all = True
        with _progress(total_stamps, f"summarise {p.name}", progress) as bar:
            for split in SPLITS:
                g = f[split]
                n = g["cr"].shape[0]
                has_truth = "truth" in g
                has_truth_all &= has_truth
                s_ft: dict[str, int] = {}
                ids: set[int] = set()
                counts = np.zeros((5, 2), dtype=np.int64)
                pixels = cr_n = ign_n = cr_u = 0
                for sl in _blocks(n, block):
                    cr = g["cr"][sl] != 0
                    ok = g["ignore"][sl] == 0
                    rows = g["meta"][sl]
                    for ft, c in zip(*np.unique(rows["field_type"], return_counts=True)):
                        key = _text(ft) or ""
                        s_ft[key] = s_ft.get(key, 0) + int(c)
                    ids.update(int(i) for i in np.unique(rows["field_id"]))
                    pixels += cr.size
                    cr_n += int(np.count_nonzero(cr))
                    ign_n += int(ok.size - np.count_nonzero(ok))
                    cr_u += int(np.count_nonzero(cr & ok))
                    if has_truth:
                        t = np.minimum(g["truth"][sl][ok].astype(np.int64), 5)
                        c = np.bincount(t * 2 + cr[ok], minlength=12)
                        counts += c[:10].reshape(5, 2)  # truth > 4 (invalid) dropped
                    bar.update(sl.stop - sl.start)
                f_ft: dict[str, int] = {}
                for info in fields.values():
                    if info["split"] == split:
                        key = info["field_type"] or ""
                        f_ft[key] = f_ft.get(key, 0) + 1
                entry = {
                    "stamps": int(n),
                    "stamps_by_field_type": dict(sorted(s_ft.items())),
                    "fields": sum(f_ft.values()),
                    "fields_by_field_type": dict(sorted(f_ft.items())),
                    "fields_with_stamps": len(ids),
                }
                entry.update(_pixel_stats(pixels, cr_n, ign_n, cr_u))
                entry["truth"] = _truth_stats(counts) if has_truth else None
                splits[split] = entry
                all_counts += counts
                for k, v in zip(("pixels", "cr", "ignored", "cr_unignored"),
                                (pixels, cr_n, ign_n, cr_u)):
                    tot[k] += v
    out["splits"] = splits
    s_ft_all: dict[str, int] = {}
    f_ft_all: dict[str, int] = {}
    for e in splits.values():
        for k, v in e["stamps_by_field_type"].items():
            s_ft_all[k] = s_ft_all.get(k, 0) + v
        for k, v in e["fields_by_field_type"].items():
            f_ft_all[k] = f_ft_all.get(k, 0) + v
    total = {
        "stamps": sum(e["stamps"] for e in splits.values()),
        "stamps_by_field_type": dict(sorted(s_ft_all.items())),
        "fields": sum(e["fields"] for e in splits.values()),
        "fields_by_field_type": dict(sorted(f_ft_all.items())),
        "fields_with_stamps": sum(e["fields_with_stamps"] for e in splits.values()),
    }
    total.update(_pixel_stats(tot["pixels"], tot["cr"], tot["ignored"], tot["cr_unignored"]))
    out["has_truth"] = bool(has_truth_all)
    total["truth"] = _truth_stats(all_counts) if has_truth_all else None
    out["total"] = total
    out["truth"] = total["truth"]
    logger.info("%s: %d stamps summarised", p, total["stamps"])
    return out


# ---------------------------------------------------------------------------- format


def _table(headers: list[str], rows: list[list[Any]], left: int = 1) -> list[str]:
    """Aligned columns: the first ``left`` columns left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths)))

    return [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]


def _pct(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """Render a :func:`summarise` result as a plain-text report.

    Parameters
    ----------
    summary : mapping
        The output of :func:`summarise` (or the same after a JSON round trip).

    Returns
    -------
    str
        The report: file attributes, a table of stamps, fields and pixel fractions per
        split, stamps and fields per (split, field type), label recall per truth SNR
        bin where truth exists, and the failed visits.  Ends with a newline.

    Raises
    ------
    TypeError
        If ``summary`` is not a mapping.
    ValueError
        If ``summary`` lacks the ``splits`` or ``total`` entries.
    """
    if not isinstance(summary, Mapping):
        raise TypeError(f"summary must be a mapping, got {type(summary).__name__}")
    for key in ("splits", "total"):
        if key not in summary:
            raise InputError(f"summary: missing key {key!r} (expected summarise() output)")
    splits: Mapping[str, Any] = summary["splits"]
    total: Mapping[str, Any] = summary["total"]
    lines = [f"crforge training set: {summary.get('file', '?')}"]
    for key in ("schema_version", "created_utc", "crforge_version", "manifest_name",
                "manifest_sha256", "stamp_size"):
        if key in summary:
            lines.append(f"  {key + ':':17s} {summary[key]}")

    lines += ["", "Stamps and pixels per split"]
    rows = []
    for name, e in [*splits.items(), ("total", total)]:
        rows.append([name, e["stamps"], e["fields"], e["fields_with_stamps"],
                     _pct(e["cr_fraction"]), _pct(e["cr_fraction_unignored"]),
                     _pct(e["ignore_fraction"])])
    lines += _table(["split", "stamps", "fields", "fields w/ stamps", "CR frac",
                     "CR frac (unignored)", "ignore frac"], rows)

    lines += ["", "Stamps and fields per field type"]
    rows = []
    for name, e in [*splits.items(), ("total", total)]:
        types = sorted(set(e["stamps_by_field_type"]) | set(e["fields_by_field_type"]))
        for ft in types:
            rows.append([name, ft or "(none)", e["fields_by_field_type"].get(ft, 0),
                         e["stamps_by_field_type"].get(ft, 0)])
        if not types:
            rows.append([name, "-", 0, 0])
    lines += _table(["split", "field type", "fields", "stamps"], rows, left=2)

    if summary.get("has_truth"):
        lines += ["", "Labels against injected truth (pixels with ignore == 0)"]
        rows = []
        for name, e in [*splits.items(), ("total", total)]:
            t = e.get("truth")
            if not t:
                continue
            rows.append([name, t["injected"], _num(t["recall"]),
                         *[_num(b["recall"]) for b in t["bins"]],
                         _num(t["recall_above_5sigma"]), t["false_labels"],
                         _num(t["false_labels_per_million"], 1)])
        lines += _table(["split", "injected", "recall",
                         *[f"{SNR_BINS[b]} sig" for b in SNR_BINS], ">5 sig",
                         "false", "false/1e6"], rows)
    else:
        lines += ["", "No truth (not every visit is simulated): recall not computed"]

    failed = summary.get("failed_visits") or []
    lines += ["", f"Failed visits: {len(failed)}"]
    if failed:
        lines += _table(["visit", "reason"],
                        [[str(x.get("visit", "?")) if isinstance(x, Mapping) else str(x),
                          str(x.get("reason", "")) if isinstance(x, Mapping) else ""]
                         for x in failed], left=2)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- CLI




