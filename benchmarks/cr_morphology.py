"""Cosmic rays: the simulator beside the real ones flagged on the ACS/HRC frame.

Real: the AstroDrizzle-flagged blobs (DQ 4096, at most 30 pixels) of the ACS/HRC frame
j8bt06nyq (:mod:`crforge.pipeline.realframes`) that lie at least 5 pixels from any
artefact, saturated or bad pixel, measured above the median of a 3-6 pixel ring.
Simulated: the cosmic rays of ``crforge.pipeline.simulate`` on a blank chip for the
same 60 s, found at the HRC frame's noise (5 sigma seeds, where pure noise gives
none, grown into 3 sigma neighbours), for the charge diffusion of ACS/WFC's 15 um
pixels (0.45), of the 21 um pixels of ACS/HRC and STIS (0.3), the simulator's range, and that
range with every deposit of a chip multiplied by a factor drawn in 1-3 (``cr_charge``). Medians,
and the 90th and 99th percentiles of the peaks.

    .venv/bin/python benchmarks/cr_morphology.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
_EIGHT = np.ones((3, 3), bool)


def _stats(img: np.ndarray, lab: np.ndarray, ids, ring_mask: np.ndarray | None = None) -> dict:
    """Median size, peak, total, peak/total, neighbours/peak and single-pixel share of blobs."""
    rows = []
    objs = ndimage.find_objects(lab)
    for i in ids:
        sl = objs[i - 1]
        ys, xs = slice(max(sl[0].start - 7, 0), sl[0].stop + 7), slice(max(sl[1].start - 7, 0), sl[1].stop + 7)
        m = lab[ys, xs] == i
        sub = img[ys, xs]
        ring = ndimage.binary_dilation(m, iterations=6) & ~ndimage.binary_dilation(m, iterations=3)
        if ring_mask is not None:
            ring &= ~ring_mask[ys, xs]
        v = sub[m] - (np.median(sub[ring]) if ring.sum() >= 8 else 0.0)
        py, px = np.argwhere(m)[np.argmax(v)]
        full = sub - (np.median(sub[ring]) if ring.sum() >= 8 else 0.0)
        n4 = np.mean([full[py + dy, px + dx] for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
                      if 0 <= py + dy < full.shape[0] and 0 <= px + dx < full.shape[1]])
        rows.append((m.sum(), v.max(), v.sum(), v.max() / v.sum(), n4 / v.max()))
    a = np.array(rows)
    return {"blobs": len(a), "size": np.median(a[:, 0]), "single_pixel": float((a[:, 0] == 1).mean()),
            "peak_e": np.median(a[:, 1]), "peak_e_90": np.percentile(a[:, 1], 90),
            "peak_e_99": np.percentile(a[:, 1], 99), "total_e": np.median(a[:, 2]),
            "peak/total": np.median(a[:, 3]), "n4/peak": np.median(a[:, 4])}


def real_hrc() -> tuple[dict, float]:
    from crforge.pipeline.realframes import fetch
    from crforge.training.evaluate.realpixels import load_real_images

    hrc = load_real_images(fetch(["acs-hrc"]))[0]
    lab, n = ndimage.label(hrc.reference, _EIGHT)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    near_bad = ndimage.binary_dilation(hrc.ignore | np.isin(lab, np.flatnonzero(sizes > 30)), iterations=5)
    clean = [i for i in range(1, n + 1) if 0 < sizes[i] <= 30 and not near_bad[lab == i].any()]
    sky = float(np.median(hrc.image[~hrc.ignore & ~hrc.reference]))
    return _stats(hrc.image, lab, clean, hrc.reference | hrc.ignore), float(np.sqrt(sky + hrc.readnoise ** 2))


def simulated(diffusion: tuple[float, float], noise: float, seed: int = 0,
              charge: tuple[float, float] = (1.0, 1.0)) -> dict:
    from crforge.pipeline.instruments import ACS_WFC
    from crforge.pipeline.simulate.cosmics import cosmic_ray_image

    rng = np.random.default_rng(seed)
    shape = (1024, 1024)
    images = []
    charges = np.random.default_rng(seed + 1).uniform(*charge, 4)  # apart: the other rows' draws stay
    for d, q in zip(rng.uniform(*diffusion, 4), charges):
        cr, _ = cosmic_ray_image(rng, shape, rate=ACS_WFC.cr_rate, exptime=60.0 * 8,
                                 depletion_um=ACS_WFC.depletion_um, pixel_um=ACS_WFC.pixel_size_um, diffusion=d)
        images.append(q * cr + rng.normal(0, noise, shape))
    img = np.concatenate(images)
    seed_mask = img > 5.0 * noise  # 3.5 sigma seeds on pure noise would add ~1000 false blobs
    grown = ndimage.binary_propagation(seed_mask, structure=_EIGHT, mask=img > 3.0 * noise)
    lab, n = ndimage.label(grown, _EIGHT)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    return _stats(img, lab, [i for i in range(1, n + 1) if sizes[i] <= 30])


def main() -> int:
    real, noise = real_hrc()
    rows = {"real ACS/HRC j8bt06nyq (AstroDrizzle flags, clean blobs)": real}
    for label, d in (("simulated, diffusion 0.45 (15 um ACS/WFC pixels; the simulator before)", (0.45, 0.45)),
                     ("simulated, diffusion 0.30 (21 um HRC/STIS pixels)", (0.30, 0.30)),
                     ("simulated, the simulator's default range 0.25-0.45", (0.25, 0.45))):
        rows[label] = simulated(d, noise)
    rows["simulated, 0.25-0.45, charge x1-3 per chip (`cr_charge = [1, 3]`)"] = simulated((0.25, 0.45), noise,
                                                                                          charge=(1.0, 3.0))
    keys = ("blobs", "size", "single_pixel", "peak_e", "peak_e_90", "peak_e_99", "total_e", "peak/total",
            "n4/peak")
    sys.stdout.write(f"noise of the HRC frame's sky: {noise:.1f} e-\n")
    sys.stdout.write("| cosmic rays | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n")
    for label, r in rows.items():
        sys.stdout.write(f"| {label} | " + " | ".join(f"{r[k]:.3g}" for k in keys) + " |\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
