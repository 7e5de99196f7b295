"""What an evaluation reads: the evaluated stamps of the HDF5 file and the run's networks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from crforge.errors import InputError
from crforge.pipeline.datafile.reader import file_instruments, read_attrs, read_stamps, split_info
from crforge.pipeline.names import SPLITS

__all__ = ["load_stamps", "as_str", "in_electrons", "load_network", "normalised", "normalised_noiseless",
           "inference_copy"]

def as_str(value) -> str:
    """A string of an HDF5 value (fixed-length byte strings are decoded)."""
    return value.decode() if isinstance(value, bytes) else str(value)


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


def _filters(path: Path) -> list[str]:
    """The data set's filters (of every split, not only the evaluated one)."""
    out: set[str] = set()
    for split in SPLITS:
        try:
            out.update(split_info(path, split).column("filter", ""))
        except InputError:  # a split without stamps tables: no filters
            continue
    return sorted(f for f in out if f)


def load_stamps(path: str | os.PathLike, split: str, *, per_field_type: int = 0, seed: int = 0) -> dict:
    """Read (a seeded per-field-type subset of) one split into memory.

    Parameters
    ----------
    path : str or path-like
        HDF5 training set (docs/hdf5-schema.md).
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
        SNR bin of the injected CR, 0 on ignored pixels) and ``noiseless`` (float32: the
        pixels without noise and cosmic rays, simulated data of schema v2); ``meta`` (the rows),
        ``field_type`` (str array), ``bunit``, ``instrument``, ``filters`` (of every
        split), ``attrs`` (manifest name/sha256), ``path``, ``split`` and ``split_size``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    InputError
        A bad ``split`` or ``per_field_type``, or a file without the split's tables or
        without stamps in the split.
    """
    if per_field_type < 0:
        raise InputError(f"per_field_type={per_field_type!r}: expected >= 0")
    info = split_info(path, split)
    ftypes = info.column("field_type", "").astype(str)
    index = _subset(ftypes, per_field_type, seed)
    if index.size == 0:
        raise InputError(f"{info.path}: split {split!r} holds no stamps")
    arrays = read_stamps(info, index, ("image", "cr", "ignore", "truth", "noiseless"))
    image = arrays["image"].astype(np.float32)
    valid = (arrays["ignore"] == 0) & np.isfinite(image)
    attrs = read_attrs(info.path)
    out = {"path": info.path, "split": split, "index": index, "image": image, "valid": valid,
           "meta": info.meta[index], "field_type": ftypes[index], "split_size": info.n, "bunit": info.bunit,
           "instrument": file_instruments(attrs, info.column("exposure", "")), "filters": _filters(info.path),
           "attrs": {k: attrs.get(k, "") for k in ("manifest_name", "manifest_sha256")},
           # a label on an ignored pixel is no label (as in training)
           "cr": (arrays["cr"] != 0) & valid}
    if info.has_truth:
        # 0 = no injected CR, else 1 + the pixel's SNR bin (crforge.pipeline.datafile.schema.TRUTH_SNR_BINS)
        out["truth"] = np.where(valid, arrays["truth"], 0).astype(np.uint8)
    if "noiseless" in arrays:
        out["noiseless"] = arrays["noiseless"].astype(np.float32)
    return out


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


def normalised_noiseless(data: dict, ckpt) -> np.ndarray | None:
    """The noiseless pixels in the network's normalised units (None without them).

    Normalised like :func:`normalised` (the same sky and scale), without filling
    ignored pixels: they are never scored.
    """
    if "noiseless" not in data:
        return None
    from crforge.training.data import network_input

    sky = np.maximum(np.nan_to_num(data["meta"]["sky"].astype(np.float32)), 0)
    return np.stack([network_input(im, float(s), ckpt.normalisation) for im, s in zip(data["noiseless"], sky)])


def normalised(data: dict, ckpt) -> np.ndarray:
    """The network input of the stamps, normalised as the checkpoint's training was.

    Raises
    ------
    InputError
        The images are in another unit than the network was trained on.
    """
    from crforge.training.data import network_input

    norm = ckpt.normalisation
    if norm.get("bunit", "ELECTRONS").upper() != data["bunit"].upper():
        raise InputError(f"{data['path']}: images in {data['bunit']}, but the model was trained on "
                         f"{norm.get('bunit')}")
    sky = np.maximum(np.nan_to_num(data["meta"]["sky"].astype(np.float32)), 0)
    return np.stack([network_input(im, float(s), norm, ~ok) for im, s, ok in zip(data["image"], sky, data["valid"])])


def inference_copy(model):
    """The inference copy of a network: batch norm folded, channels-last (as ``clean``)."""
    import torch

    from crforge.training.models import fuse_batch_norm

    return fuse_batch_norm(model).to(memory_format=torch.channels_last).eval()
