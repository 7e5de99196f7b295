"""Reading an HDF5 training set (:mod:`.schema`): one reader for the trainer, the evaluation and tools.

- :func:`split_info` reads a split's ``meta`` table and shapes, and closes the file.
- :class:`StampReader` reads stamps one at a time through a handle opened on first
  use in each process (and reopened after a fork), never in the constructor, so it is
  safe inside ``DataLoader(num_workers > 0)`` workers.
- :func:`read_stamps` reads a set of stamps at once (evaluation).
- :func:`read_attrs` gives the root attributes with the JSON ones decoded.

Nothing here checks a file in depth: :func:`crforge.pipeline.datafile.validate.validate`
does, and the commands call it before they train or evaluate.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crforge.errors import InputError
from crforge.pipeline.datafile.schema import SPLITS

__all__ = ["text", "check_file", "read_attrs", "file_instruments", "SplitInfo", "split_info",
           "StampReader", "read_stamps", "read_fields", "blocks", "check_block", "progress_bar"]

_PIXELS = ("image", "cr", "ignore")
_JSON_ATTRS = ("config", "software", "instruments", "failed_visits")


def text(value: Any) -> str | None:
    """An HDF5 string attribute or field as ``str`` (None if it is not a string)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def check_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path of an existing HDF5 file.

    Raises
    ------
    FileNotFoundError
        No such file.
    InputError
        Not a regular file, or not HDF5.
    """
    import h5py

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    if not p.is_file():
        raise InputError(f"{p}: not a regular file (an HDF5 training set expected)")
    if not h5py.is_hdf5(p):
        raise InputError(f"{p}: not an HDF5 file (an HDF5 training set expected)")
    return p


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The root attributes, strings decoded and JSON attributes parsed (bad JSON: the text)."""
    import h5py

    out: dict[str, Any] = {}
    with h5py.File(check_file(path), "r") as h5:
        for key, value in h5.attrs.items():
            s = text(value)
            if s is not None and key in _JSON_ATTRS:
                try:
                    out[key] = json.loads(s)
                    continue
                except json.JSONDecodeError:
                    pass
            out[key] = s if s is not None else (value.item() if hasattr(value, "item") else value)
    return out


def file_instruments(attrs: dict[str, Any], exposures: Iterable[str]) -> str:
    """The imager of a file's stamps: its ``instruments`` attribute, else the rootnames' letter.

    Returns ``"ACS/WFC"``, ``"WFC3/UVIS"``..., ``"mixed"`` or ``"unknown"``.
    """
    inst = attrs.get("instruments")
    if isinstance(inst, list) and inst:
        return inst[0] if len(inst) == 1 else "mixed"
    # files written before the attribute: HST rootnames start with the instrument's letter
    first = {str(e)[:1].lower() for e in exposures}
    return {"j": "ACS/WFC", "i": "WFC3/UVIS"}.get(first.pop(), "unknown") if len(first) == 1 else "mixed"


@dataclass(frozen=True)
class SplitInfo:
    """What a split holds, read without its pixels.

    Attributes
    ----------
    path : Path
    split : str
    n : int
        Stamps.
    stamp_size : int
    bunit : str
        Unit of ``image``.
    has_truth : bool
    meta : numpy.ndarray
        The ``meta`` table (one row per stamp).
    has_noiseless : bool
        The split carries ``noiseless`` (simulated, schema version 2).
    """

    path: Path
    split: str
    n: int
    stamp_size: int
    bunit: str
    has_truth: bool
    meta: np.ndarray
    has_noiseless: bool = False

    def column(self, name: str, default: Any = None) -> np.ndarray:
        """A ``meta`` column (byte strings decoded), or ``default`` repeated when absent."""
        if name not in (self.meta.dtype.names or ()):
            return np.array([default] * self.n)
        col = self.meta[name]
        if col.dtype.kind == "S":
            return np.array([text(v) for v in col])
        return col


def split_info(path: str | os.PathLike, split: str) -> SplitInfo:
    """Read a split's shapes and ``meta`` table, checking the datasets the readers need.

    Raises
    ------
    InputError
        No such split, a missing dataset, stamps of the wrong size, or a ``meta``
        table of another length than the stamps; the message names the dataset.
    """
    import h5py

    p = check_file(path)
    if split not in SPLITS:
        raise InputError(f"split={split!r}: expected one of {SPLITS}")
    with h5py.File(p, "r") as h5:
        if split not in h5:
            raise InputError(f"{p}: no split {split!r} (not an HDF5 training set of schema v1 or v2?)")
        g = h5[split]
        for name in _PIXELS + ("meta",):
            if name not in g:
                raise InputError(f"{p}: /{split}/{name} missing (schema v1 and v2 have it)")
        shape = g["image"].shape
        size = int(h5.attrs.get("stamp_size", shape[-1]))
        if shape[1:] != (size, size):
            raise InputError(f"{p}: /{split}/image has shape {shape}, expected stamps of "
                             f"stamp_size={size}")
        meta = g["meta"][()]
        bunit = text(g["image"].attrs.get("BUNIT", "ELECTRONS")) or "ELECTRONS"
        has_truth, has_noiseless = "truth" in g, "noiseless" in g
    if len(meta) != shape[0]:
        raise InputError(f"{p}: /{split}/meta has {len(meta)} rows for {shape[0]} stamps")
    return SplitInfo(p, split, int(shape[0]), size, bunit, has_truth, meta, has_noiseless)


class StampReader:
    """Stamps of one split, read one at a time through a per-process handle.

    Parameters
    ----------
    path : path-like
        The HDF5 file.
    split : str
        The split.
    """

    def __init__(self, path: str | os.PathLike, split: str) -> None:
        self.path, self.split = Path(path), split
        self._h5 = None
        self._pid = None

    def _group(self):
        import h5py

        # one handle per process: reopened after a fork (DataLoader workers)
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5[self.split]

    def read(self, name: str, index: int) -> np.ndarray:
        """Stamp ``index`` of dataset ``name`` (``image``, ``cr``, ``ignore``, ``truth``, ``noiseless``)."""
        try:
            return self._group()[name][int(index)]
        except (OSError, RuntimeError) as exc:  # a damaged chunk: name it
            raise InputError(f"{self.path}: cannot read /{self.split}/{name}[{index}] "
                             f"({type(exc).__name__}: {exc})") from exc

    def close(self) -> None:
        """Close this process's handle (reopened on the next read)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __getstate__(self) -> dict:
        # a spawned worker gets no handle and opens its own
        return {"path": self.path, "split": self.split, "_h5": None, "_pid": None}

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass


def read_stamps(info: SplitInfo, index: np.ndarray, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Read the stamps ``index`` (sorted rows) of datasets ``names`` of a split into memory."""
    import h5py

    index = np.asarray(index)
    with h5py.File(info.path, "r") as h5:
        g = h5[info.split]
        out = {}
        for name in names:
            if name in g:
                try:
                    out[name] = g[name][index]
                except (OSError, RuntimeError) as exc:
                    raise InputError(f"{info.path}: cannot read /{info.split}/{name} "
                                     f"({type(exc).__name__}: {exc})") from exc
    return out


def check_block(block: Any) -> int:
    """``block`` (stamps read at a time) as a positive int, or raise naming it."""
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)):
        raise TypeError(f"block must be an int, got {type(block).__name__}")
    if block < 1:
        raise InputError(f"block must be >= 1, got {block}")
    return int(block)


def blocks(n: int, block: int) -> Iterator[slice]:
    """Slices of ``block`` stamps covering ``range(n)`` (files of any size in constant memory)."""
    for start in range(0, n, block):
        yield slice(start, min(start + block, n))


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar over stamps on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="stamp", file=sys.stderr,
                disable=None if enabled else True, leave=False)


def read_fields(h5) -> dict[int, dict[str, Any]]:
    """The ``/fields`` table of an open file as {field_id: {"split", "field_type", "target"}}.

    Best effort: a missing or malformed table gives what can be read (the validator
    reports the problems).
    """
    import h5py

    ds = h5.get("fields")
    if not isinstance(ds, h5py.Dataset) or ds.dtype.fields is None or "field_id" not in ds.dtype.fields:
        return {}
    rows = ds[()]
    if rows.ndim != 1:
        return {}
    names = ds.dtype.fields
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        out.setdefault(int(row["field_id"]), {
            key: text(row[key]) if key in names else None for key in ("split", "field_type", "target")})
    return out
