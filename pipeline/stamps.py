"""Cut labelled chips into fixed-size stamps (pure NumPy).

Tiling: a chip is tiled from its (0, 0) corner with a stride of ``size``. When a
chip's side is not a multiple of ``size`` (WFC3/UVIS has 2051 rows) the last row or
column of stamps is moved back to end exactly at the chip edge, overlapping its
neighbour, so every pixel is in at least one stamp and no stamp reaches outside the
chip. Chips are cut one at a time, so no stamp spans the gap between two chips; the
strip of each exposure that no other exposure covers (dither edges, the gap) is in
the ignore mask (bit 4) and not dropped by the cutting.

A stamp is dropped when more than ``max_ignored`` of its pixels are ignored (default
one half: a stamp that is mostly bad pixels, saturation or uncovered edge teaches
the networks nothing).
"""

from __future__ import annotations

import numpy as np

from crforge.errors import InputError
from crforge.pipeline.dataset.config import StampConfig

__all__ = [ "stamp_origins", "cut_stamps", "snr_class"]




def _starts(n: int, size: int) -> list[int]:
    if n < size:
        return []
    starts = list(range(0, n - size + 1, size))
    if starts[-1] + size < n:
        starts.append(n - size)  # flush with the edge, overlapping the previous stamp
    return starts


def stamp_origins(shape: tuple[int, int], size: int = 256) -> list[tuple[int, int]]:
    """``(y0, x0)`` of every stamp of a chip of ``shape``, row by row.

    Raises
    ------
    ValueError
        If ``size`` is not a positive int.
    """
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"size={size!r}: expected a positive int")
    ny, nx = shape
    return [(y, x) for y in _starts(ny, size) for x in _starts(nx, size)]


def snr_class(truth_snr: np.ndarray) -> np.ndarray:
    """uint8 truth code: 0 no CR, else 1 + bin of the SNR (<3, 3-5, 5-10, >10)."""
    snr = np.asarray(truth_snr)
    code = np.zeros(snr.shape, np.uint8)
    hit = snr > 0
    code[hit] = 1 + np.digitize(snr[hit], (3.0, 5.0, 10.0)).astype(np.uint8)
    return code


def cut_stamps(
    sci: np.ndarray,
    cr: np.ndarray,
    ignore: np.ndarray,
    truth: np.ndarray | None = None,
    cfg: StampConfig | None = None,
    *,
    noiseless: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Cut one chip's arrays into stamps, dropping the mostly ignored ones.

    Parameters
    ----------
    sci : ndarray
        Science pixels (float32 kept).
    cr, ignore : ndarray of uint8
        The labels of the chip.
    truth : ndarray of uint8, optional
        Truth codes (see :func:`snr_class`) of a simulated chip.
    cfg : StampConfig, optional
        Size and dropping rule.
    noiseless : ndarray of float32, optional
        The chip without noise and cosmic rays (a simulated chip's sky + source).

    Returns
    -------
    dict
        ``image``, ``cr``, ``ignore`` (and ``truth``, ``noiseless``) as ``[N, size, size]`` arrays,
        ``y0``, ``x0`` origins and ``cr_fraction`` (CR labels over usable pixels).
    """
    cfg = StampConfig() if cfg is None else cfg
    cfg.validate()
    arrays = {"image": np.asarray(sci, np.float32), "cr": np.asarray(cr, np.uint8),
              "ignore": np.asarray(ignore, np.uint8)}
    if truth is not None:
        arrays["truth"] = np.asarray(truth, np.uint8)
    if noiseless is not None:
        arrays["noiseless"] = np.asarray(noiseless, np.float32)
    shape = arrays["image"].shape
    for k, a in arrays.items():
        if a.ndim != 2 or a.shape != shape:
            raise InputError(f"{k} has shape {a.shape}, expected the chip shape {shape}")
    s = cfg.size
    keep = []
    for y0, x0 in stamp_origins(shape, s):
        ign = arrays["ignore"][y0:y0 + s, x0:x0 + s]
        if np.count_nonzero(ign) > cfg.max_ignored * s * s:
            continue
        keep.append((y0, x0))
    out: dict[str, np.ndarray] = {}
    for k, a in arrays.items():
        out[k] = (np.stack([a[y:y + s, x:x + s] for y, x in keep]) if keep
                  else np.zeros((0, s, s), a.dtype))
    out["y0"] = np.array([y for y, _ in keep], np.int32)
    out["x0"] = np.array([x for _, x in keep], np.int32)
    usable = (out["ignore"] == 0).sum(axis=(1, 2))
    crs = ((out["cr"] > 0) & (out["ignore"] == 0)).sum(axis=(1, 2))
    out["cr_fraction"] = (crs / np.maximum(usable, 1)).astype(np.float32)
    return out
