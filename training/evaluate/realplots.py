"""A picture of real crops with each method's CR mask drawn on them (report and model card)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from crforge.atomic import atomic_path
from crforge.training.evaluate.realpixels import RealImage, find_stars

__all__ = ["pick_crops", "plot_crops", "CROP"]

CROP = 96


def pick_crops(img: RealImage, n: int = 1, size: int = CROP) -> list[tuple[int, int]]:
    """Top-left corners of the ``n`` windows with most reference CRs and stars (no ignored pixels)."""
    stars = find_stars(img)
    starmap = np.zeros(img.image.shape, float)
    if len(stars):
        starmap[stars[:, 0], stars[:, 1]] = 1.0
    crs = img.reference if img.reference is not None else np.zeros(img.image.shape, bool)
    # a window to look at: stars and cosmic rays side by side, no bad pixels
    score = starmap + 0.5 * crs - 5.0 * img.ignore
    step = size // 2
    ny, nx = img.image.shape
    cands = [(float(score[y:y + size, x:x + size].sum()), y, x)
             for y in range(0, ny - size + 1, step) for x in range(0, nx - size + 1, step)]
    out: list[tuple[int, int]] = []
    for _, y, x in sorted(cands, reverse=True):
        if all(abs(y - a) >= size or abs(x - b) >= size for a, b in out):
            out.append((y, x))
        if len(out) == n:
            break
    return out


def _outline(ax, mask: np.ndarray, color: str) -> None:
    """Pixel-edge outline of a boolean mask."""
    ys, xs = np.nonzero(mask[:, 1:] != mask[:, :-1])
    for y, x in zip(ys, xs):
        ax.plot([x + 0.5, x + 0.5], [y - 0.5, y + 0.5], color=color, lw=0.8)
    ys, xs = np.nonzero(mask[1:, :] != mask[:-1, :])
    for y, x in zip(ys, xs):
        ax.plot([x - 0.5, x + 0.5], [y + 0.5, y + 0.5], color=color, lw=0.8)


def plot_crops(crops: list[tuple[RealImage, tuple[int, int]]], masks: dict[str, dict[str, np.ndarray]],
               path: str | os.PathLike) -> Path:
    """One row per crop: the image, then each method's mask (red) and the reference (cyan).

    Parameters
    ----------
    crops : list
        ``(image, (y0, x0))`` pairs (:func:`pick_crops`).
    masks : dict
        Image name -> method -> full-image boolean mask (at the method's recommended
        threshold).
    path : path-like
        The PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(next(iter(masks.values())))
    fig, axes = plt.subplots(len(crops), len(methods) + 1, figsize=(2.3 * (len(methods) + 1), 2.4 * len(crops)),
                             squeeze=False)
    for row, (img, (y0, x0)) in zip(axes, crops):
        win = np.s_[y0:y0 + CROP, x0:x0 + CROP]
        sub = img.image[win] - np.median(img.image[win])
        shown = np.arcsinh(sub / max(3.0 * img.readnoise, 1.0))
        for ax, method in zip(row, ["image"] + methods):
            ax.imshow(shown, cmap="gray", origin="lower", vmin=-1, vmax=np.percentile(shown, 99.9))
            if method != "image":
                _outline(ax, masks[img.name][method][win], "red")
            if img.reference is not None:
                _outline(ax, img.reference[win], "cyan")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{img.name} y={y0} x={x0}" if method == "image" else method, fontsize=7)
    fig.suptitle("real frames: each method's CR mask at its recommended threshold (red); reference CRs (cyan)",
                 fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
