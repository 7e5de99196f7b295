"""What an evaluation reads: the evaluated stamps of the HDF5 file and the run's networks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from crforge.errors import InputError
from crforge.pipeline.names import SPLITS

__all__ = ["load_stamps", "as_str", "in_electrons", "load_network", "normalised", "inference_copy"]

#: Datasets every split of the file must hold (``truth`` is optional: simulated data only).
_PIXELS = ("image", "cr", "ignore")


def as_str(value) -> str:
    """A string of an HDF5 value (fixed-length byte strings are decoded)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _instrument_of(h5, meta) -> str:
    if "instruments" in h5.attrs:
        names = json.loads(h5.attrs["instruments"])
        return names[0] if len(names) == 1 else "mixed"
    # files written before the attribute: HST rootnames start with the instrument's letter
    first = {as_str(e)[:1].lower() for e in meta["exposure"]}
    return {"j": "ACS/WFC", "i": "WFC3/UVIS"}.get(first.pop(), "unknown") if len(first) == 1 else "mixed"


def _subset(ftypes: np.ndarray, per_field_type: int, seed: int) -> np.ndarray:
    """Rows kept: at most ``per_field_type`` of each field type (0 = all), in file order."""
    rng = np.random.default_rng([seed, 7])
    keep: list[np.ndarray] = []
    for ft in sorted(set(ftypes)):
        idx = np.flatnonzero(ftypes == ft)
        if per_field_type and idx.size > per_field_type:
            idx = np.sort(rng.choice(idx, per_field_type, replace=False))
        keep.append(idx)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, int)


def _open_split(h5, path: Path, split: str):
    """The split's group, checked for the meta table and the pixel datasets."""
    if split not in h5 or "meta" not in h5[split]:
        raise InputError(f"{path}: no split {split!r} with a meta table (schema v1 expected)")
    missing = [name for name in _PIXELS if name not in h5[split]]
    if missing:
        raise InputError(f"{path}: split {split!r} lacks the datasets {missing} (schema v1 expected: "
                         f"{list(_PIXELS)})")
    return h5[split]


def _checked(path: Path, split: str, per_field_type: int) -> Path:
    """``path``, once it and the arguments of :func:`load_stamps` are checked."""
    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if split not in SPLITS:
        raise InputError(f"split={split!r}: expected one of {SPLITS}")
    if per_field_type < 0:
        raise InputError(f"per_field_type={per_field_type!r}: expected >= 0")
    return path


def load_stamps(path: str | os.PathLike, split: str, *, per_field_type: int = 0, seed: int = 0) -> dict:
    """Read (a seeded per-field-type subset of) one split into memory.

    Parameters
    ----------
    path : str or path-like
        HDF5 training set (schema v1).
    split : str
        ``train``, ``val`` or ``test``.
    per_field_type : int
        Keep at most this many stamps of each field type (0 = all), drawn at random
        with ``seed`` and kept in file order.
    seed : int
        Seed of the subset.

    Returns
    -------
    dict
        ``index`` (rows of the split), ``image`` float32 ``[N,S,S]``, ``cr``, ``valid``
        (not ignored, finite) and, if present, ``truth`` (uint8: 0 none, else 1 + the
        SNR bin of the injected CR, 0 on ignored pixels); ``meta`` (the rows),
        ``field_type`` (str array), ``bunit``, ``instrument``, ``filters`` (of every
        split), ``attrs`` (manifest name/sha256), ``path``, ``split`` and ``split_size``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    InputError
        A bad ``split`` or ``per_field_type``, or a file without the split's meta
        table and pixel datasets or without stamps in the split.
    """
    import h5py

    path = _checked(Path(path), split, per_field_type)
    with h5py.File(path, "r") as h5:
        g = _open_split(h5, path, split)
        meta = g["meta"][()]
        ftypes = np.array([as_str(v) for v in meta["field_type"]])
        index = _subset(ftypes, per_field_type, seed)
        if index.size == 0:
            raise InputError(f"{path}: split {split!r} holds no stamps")
        image = g["image"][index].astype(np.float32)
        valid = (g["ignore"][index] == 0) & np.isfinite(image)
        out = {
            "path": path, "split": split, "index": index, "image": image, "valid": valid,
            "meta": meta[index], "field_type": ftypes[index], "split_size": int(len(meta)),
            "bunit": as_str(g["image"].attrs.get("BUNIT", "ELECTRONS")),
            "instrument": _instrument_of(h5, meta), "filters": _filters(h5),
            "attrs": {k: as_str(h5.attrs.get(k, "")) for k in ("manifest_name", "manifest_sha256")},
            # a label on an ignored pixel is no label (as in training)
            "cr": (g["cr"][index] != 0) & valid,
        }
        if "truth" in g:
            # 0 = no injected CR, else 1 + the pixel's SNR bin (crforge.pipeline.datafile.schema.TRUTH_SNR_BINS)
            out["truth"] = np.where(valid, g["truth"][index], 0).astype(np.uint8)
    return out


def _filters(h5) -> list[str]:
    """The data set's filters (of every split, not only the evaluated one)."""
    return sorted({as_str(f) for sp in SPLITS if sp in h5 and "meta" in h5[sp]
                   for f in np.unique(h5[sp]["meta"]["filter"])})


def in_electrons(data: dict) -> np.ndarray:
    """The stamps' images in electrons (LACosmic and deepCR expect them)."""
    if "/S" in data["bunit"].upper().replace(" ", ""):
        return data["image"] * data["meta"]["exptime"].astype(np.float32)[:, None, None]
    return data["image"]


def load_network(run_dir: Path, kind: str, which: str):
    """A run's network: ``(model, checkpoint, path)``, or ``(None, None, path)`` when absent.

    The checkpoint is a :class:`crforge.training.checkpoint.Checkpoint`.

    Raises
    ------
    crforge.training.checkpoint.CheckpointError
        (an :class:`~crforge.errors.InputError`) The file is not a crforge checkpoint
        or holds a network of another kind.
    """
    from crforge.training.checkpoint import load_checkpoint

    path = Path(run_dir) / kind / f"{which}.pt"
    if not path.is_file():
        return None, None, path
    model, ckpt = load_checkpoint(path, kind=kind)
    return model, ckpt, path


def normalised(data: dict, ckpt) -> np.ndarray:
    """The network input of the stamps, normalised as the checkpoint's training was.

    Raises
    ------
    InputError
        The images are in another unit than the network was trained on.
    """
    from crforge.training.data import normalise

    norm = ckpt.normalisation
    if norm.get("bunit", "ELECTRONS").upper() != data["bunit"].upper():
        raise InputError(f"{data['path']}: images in {data['bunit']}, but the model was trained on "
                         f"{norm.get('bunit')}")
    sky = np.maximum(np.nan_to_num(data["meta"]["sky"].astype(np.float32)), 0)
    x = np.stack([normalise(im, float(s), norm["scale"]) for im, s in zip(data["image"], sky)])
    if norm.get("fill_ignored", True):
        x[~data["valid"]] = 0.0
    return x


def inference_copy(model):
    """The inference copy of a network: batch norm folded, channels-last (as ``clean``)."""
    import torch

    from crforge.training.models import fuse_batch_norm

    return fuse_batch_norm(model).to(memory_format=torch.channels_last).eval()
