"""Classical fills of masked pixels in torch: the base the inpaint network corrects.

:func:`masked_median_fill` is :func:`crforge.training.baselines.median_fill` (the 5x5
masked median, deepCR's baseline) on batches of tensors, computed only at the masked
pixels. Unlike the NumPy baseline, a pixel whose window is entirely masked grows its
window a bounded number of times (5, 11, 23, 47 pixels) and then takes 0, the sky of a
normalised image, instead of the whole image's median: the fill of a pixel then
depends only on the pixels within :data:`REACH` of it, so a tiled image is filled
exactly as the whole one (:mod:`crforge.deepcr_models.inference`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from crforge.errors import InputError

__all__ = ["masked_median_fill", "harmonic_fill", "REACH", "HARMONIC_ITERATIONS"]

#: Half-widths of the windows tried in turn (5x5, then each about twice as wide).
_HALVES = (2, 5, 11, 23)

#: Jacobi iterations of :func:`harmonic_fill` (each looks one pixel further).
HARMONIC_ITERATIONS = 16

#: How far (pixels) the fills look: the half-width of the median's largest window,
#: plus the harmonic fill's iterations (it starts from the median fill).
REACH = _HALVES[-1] + HARMONIC_ITERATIONS


def _window_median(vals: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Median of the ``ok`` entries of each row of ``vals`` ([K, n]; rows with none: NaN).

    The mean of the two middle values for an even count, as ``numpy.nanmedian``.
    """
    inf = torch.tensor(float("inf"), dtype=vals.dtype, device=vals.device)
    keyed = torch.where(ok, vals, inf)
    if keyed.device.type == "cpu":
        # NumPy sorts many short rows about 3x faster than torch on the CPU
        s = torch.from_numpy(np.sort(keyed.numpy(), axis=1))
    else:
        s, _ = torch.sort(keyed, dim=1)
    c = ok.sum(dim=1, keepdim=True)
    lo = torch.clamp((c - 1) // 2, min=0)
    hi = torch.clamp(c // 2, max=vals.shape[1] - 1)
    med = 0.5 * (s.gather(1, lo) + s.gather(1, hi))
    return torch.where(c > 0, med, torch.full_like(med, float("nan")))[:, 0]


def _gather_windows(flat_x: torch.Tensor, flat_ok: torch.Tensor, base: torch.Tensor, width: int,
                    half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(2 half + 1)^2`` window values and validity around pixels of a padded, flattened batch.

    ``base`` holds each pixel's flat index in the padded batch; ``width`` is the padded row length.
    """
    d = torch.arange(-half, half + 1, device=flat_x.device)
    offsets = (d[:, None] * width + d[None, :]).reshape(-1)
    idx = base[:, None] + offsets[None, :]
    return flat_x[idx], flat_ok[idx]  # [K, n]: advanced indexing (2-D)


@torch.no_grad()
def masked_median_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``image`` with each masked pixel replaced by the median of the unmasked ones around it.

    Parameters
    ----------
    image : torch.Tensor
        ``[B, 1, H, W]`` normalised pixels (sky 0).
    mask : torch.Tensor
        ``[B, 1, H, W]``, non-zero where a pixel is to be filled.

    Returns
    -------
    torch.Tensor
        The filled image, same shape and dtype. Windows of 5x5 first; a pixel whose
        window holds no unmasked pixel tries 11x11, 23x23, 47x47, and then takes 0
        (the sky).
    """
    if image.dim() != 4 or image.shape[1] != 1 or mask.shape != image.shape:
        raise InputError(f"image, mask: expected two [B, 1, H, W] tensors, got {tuple(image.shape)} "
                         f"and {tuple(mask.shape)}")
    m = mask[:, 0] != 0
    out = image.clone()
    if not bool(m.any()):
        return out
    img = image[:, 0].float()
    pad = REACH
    hp, wp = img.shape[1] + 2 * pad, img.shape[2] + 2 * pad
    # one flat padded copy: every window is a set of flat offsets from its centre
    flat_x = F.pad(img, (pad, pad, pad, pad)).reshape(-1)
    flat_ok = F.pad(~m, (pad, pad, pad, pad), value=False).reshape(-1)
    b, y, x = torch.nonzero(m, as_tuple=True)
    centre = b * (hp * wp) + (y + pad) * wp + (x + pad)
    filled = torch.zeros(len(b), dtype=img.dtype, device=img.device)
    todo = torch.arange(len(b), device=img.device)
    for half in _HALVES:
        vals, ok = _gather_windows(flat_x, flat_ok, centre[todo], wp, half)
        med = _window_median(vals, ok)
        done = ~torch.isnan(med)
        filled[todo[done]] = med[done]
        todo = todo[~done]
        if len(todo) == 0:
            break
    out[b, 0, y, x] = filled.to(out.dtype)
    return out


@torch.no_grad()
def harmonic_fill(start: torch.Tensor, mask: torch.Tensor, iterations: int = HARMONIC_ITERATIONS) -> torch.Tensor:
    """Smooth the masked pixels of ``start`` towards the harmonic fill (Jacobi iterations).

    Each iteration replaces every masked pixel by the mean of its four neighbours
    (outside the image: the pixel itself), the unmasked pixels fixed: started from
    the masked median this follows a star's or galaxy's profile across a cosmic ray
    where the median flattens it, at the price of passing on more of the boundary's
    noise (the network sees both).

    Parameters
    ----------
    start : torch.Tensor
        ``[B, 1, H, W]``, the masked pixels already filled (:func:`masked_median_fill`).
    mask : torch.Tensor
        ``[B, 1, H, W]``, non-zero where a pixel is filled.
    iterations : int
        Jacobi iterations; the fill at a pixel looks this many pixels beyond ``start``'s.
    """
    m = mask[:, 0] != 0
    u = start.float()
    if not bool(m.any()):
        return start.clone()
    # only the masked pixels change: iterate on them alone, through flat indices into
    # a copy padded by one pixel (outside the image: the edge pixel as it started)
    padded = F.pad(u[:, 0], (1, 1, 1, 1), mode="replicate")
    hp, wp = padded.shape[1:]
    flat = padded.reshape(-1).clone()
    b, y, x = torch.nonzero(m, as_tuple=True)
    idx = b * (hp * wp) + (y + 1) * wp + (x + 1)
    near = [idx - 1, idx + 1, idx - wp, idx + wp]
    for _ in range(iterations):
        total = sum(flat.index_select(0, j) for j in near)
        flat.index_copy_(0, idx, 0.25 * total)
    out = flat.reshape(padded.shape)[:, 1:-1, 1:-1][:, None]
    return out.to(start.dtype)
