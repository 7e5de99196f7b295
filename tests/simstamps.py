"""Stamps of crforge's own simulator without AstroDrizzle: for the inpainting figures of a model.

Each field type's scene is drawn on a full ACS/WFC chip's frame (so a globular cluster or
a resolved galaxy is as crowded as in the default data set) and imaged onto stamps at
random places: the noiseless pixels (sources and sky), the observed ones (Poisson and
read noise, cosmic rays of :func:`~crforge.pipeline.simulate.cosmics.cosmic_ray_image`)
and CR labels (the hits more than 5 sigma above the noise), written with
:func:`~crforge.pipeline.datafile.writer.write_arrays`. Seeded: the same arguments give
the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crforge.pipeline.datafile.schema import META_DTYPE
from crforge.pipeline.datafile.writer import write_arrays
from crforge.pipeline.instruments import ACS_WFC
from crforge.pipeline.names import FIELD_TYPES
from crforge.pipeline.simulate.cosmics import cosmic_ray_image
from crforge.pipeline.simulate.scene import build_scene, render_scene

#: Gain (e-/DN) and read noise (e-) of the stamps: about ACS/WFC's.
GAIN, READNOISE = 2.0, 4.0


def simulated_stamps(path: Path, n_per_field: int, seed: int, *, size: int = 256, exptime: float = 500.0,
                     filt: str = "F606W", split: str = "test") -> Path:
    """Write ``n_per_field`` stamps of each field type as the ``split`` of a data set at ``path``."""
    rng = np.random.default_rng(seed)
    inst = ACS_WFC
    sky = inst.sky(filt) * exptime
    image, cr, noiseless, types = [], [], [], []
    for ft in FIELD_TYPES:
        frame = (2048, 4096)
        scene = build_scene(rng, ft, frame, density=1.0, zeropoint=inst.zp(filt))
        for _ in range(n_per_field):
            off = (rng.uniform(0, frame[0] - size), rng.uniform(0, frame[1] - size))
            src = render_scene(scene, (size, size), off, exptime=exptime, fwhm=inst.fwhm(filt)).source
            clean = src.astype(np.float64) + sky
            observed = rng.poisson(clean * GAIN) / GAIN + rng.normal(0.0, READNOISE, clean.shape)
            hits, _ = cosmic_ray_image(rng, (size, size), rate=inst.cr_rate, exptime=exptime,
                                       depletion_um=inst.depletion_um, pixel_um=inst.pixel_size_um,
                                       diffusion=0.35)
            image.append((observed + hits).astype(np.float32))
            cr.append((hits > 5.0 * np.sqrt(clean + READNOISE ** 2)).astype(np.uint8))
            noiseless.append(clean.astype(np.float32))
            types.append(ft)
    n = len(image)
    meta = np.zeros(n, META_DTYPE)
    meta["sky"], meta["exptime"], meta["readnoise"], meta["gain"] = sky, exptime, READNOISE, GAIN
    meta["field_type"], meta["filter"] = types, filt
    labels = np.stack(cr)
    meta["cr_fraction"] = labels.reshape(n, -1).mean(1)
    arrays = {"image": np.stack(image), "cr": labels, "ignore": np.zeros_like(labels), "truth": 4 * labels,
              "noiseless": np.stack(noiseless), "meta": meta}
    return write_arrays(path, {split: arrays}, manifest_name=f"simstamps-{seed}")
