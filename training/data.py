"""Stamps from the HDF5 training set (schema v1 or v2) as a torch Dataset, with augmentation.

Reading
    :class:`StampDataset` reads one stamp (and, for inpainting, the CR masks it
    borrows) per item from the HDF5 file. The file handle used for reading is opened
    on first use in each process (and reopened after a fork), never in the
    constructor, so the dataset is safe with ``DataLoader(num_workers>0)``; only the
    split's small ``meta`` table is read (and the file closed again) at construction.
    The splits are the file's: the loader never re-splits.

Normalisation (stored with every checkpoint, see :func:`normalisation_info`)
    ``x = (image - sky) / norm_scale`` with ``sky`` the stamp's recorded sky level
    (``meta['sky']``, the image's unit) and ``norm_scale`` a fixed number of the same
    unit (default 100 electrons). A fixed scale, like deepCR's, keeps the contrast of
    a CR against the noise unchanged (a per-image standardisation would not), and
    subtracting the sky keeps the inputs near zero. At inference subtract a sky
    estimate (e.g. a sigma-clipped median) and divide by the stored scale
    (:func:`normalise`). Pixels that are not finite become 0 after normalisation;
    with ``fill_ignored`` every ignored pixel reads as the sky, so that a pixel without
    a label (bad, saturated, outside the footprint) cannot steer the network either.
    The inpaint network is trained so; the mask network is not by default
    (``TrainConfig.fill_ignored``): a filled saturated star is a hole with a sharp rim.

Sky augmentation (deepCR, Zhang & Bloom 2020, section 3.3)
    Training stamps get ``f * sky`` added with ``f`` uniform in ``augment.sky_range``
    (default -0.9 to 3), so the network sees more sky levels (equivalently exposure
    times) than the data set holds. Because the recorded sky (not the augmented one)
    is subtracted by the normalisation, the network sees background offsets in that
    range too, which makes it tolerant of imperfect sky subtraction. When ``f > 0``,
    Gaussian noise of variance ``f * sky`` electrons (``f * sky / exptime`` in
    electrons/s units) is added so that the noise matches the brighter sky. When
    ``f < 0`` the noise of the removed sky cannot be taken out again: those stamps
    are a little noisier than a real exposure with that sky (a limitation deepCR
    shares).

Geometry
    Optional flips and 90-degree rotations (``augment.flip``, ``augment.rot90``),
    applied to the image and every mask together.

Inpainting masks (deepCR eq. 2)
    The mask of a stamp is the union of 4 to 20 (``augment.n_masks``; 1 to 9 without
    augmentation, as deepCR, in validation and evaluation) CR masks borrowed from
    other stamps of the same split that have CRs (each borrowed mask
    independently flipped/rotated when geometric augmentation is on; CR labels on a
    donor's ignored pixels are left out, as everywhere: an ignored pixel has no
    label). The loss is taken only under that mask and outside the stamp's ignored
    pixels (``loss_mask``). Its target (``target``) is the noiseless pixel (sky +
    source model) where the data set has it (simulated, schema v2): known under the
    stamp's own CRs too, and free of the noise no network can predict; otherwise the
    observed pixel, and then the stamp's own CR pixels are left out of ``loss_mask``.
    With ``augment.star_masks`` a borrowed mask is, with that probability, shifted so
    that one of its CR pixels lies on one of the stamp's brightest peaks
    (:func:`bright_peaks`), or with ``augment.star_mask_offset`` within that many
    pixels of it.

Cosmic rays on star wings (mask network, simulated data sets)
    With ``augment.star_crs`` a training stamp gets, with that probability, up to
    :data:`STAR_CRS` cosmic rays of another stamp (cut out by its injected charge,
    ``image - noiseless`` where ``truth > 0``) added 1-3 pixels from its brightest
    peaks (:func:`wing_crs`); their pixels 5 sigma above the star's noise are labelled
    CRs, their fainter ones weigh nothing.

Brighter cosmic rays (mask network, simulated data sets)
    With ``augment.cr_boost`` a training stamp's own cosmic rays are, with that
    probability, each brightened by a factor drawn log-uniformly between 1 and
    ``augment.cr_boost_max`` (:func:`brightened`), so that hits as bright as stars
    are seen and labelled; pixels 5 sigma above the noise are labelled CRs, fainter
    brightened ones weigh nothing.

Determinism
    Every random choice of item ``i`` comes from ``numpy.random.default_rng([seed,
    epoch, i])``, so an item depends only on (seed, epoch, index), whatever the
    worker or process; :class:`EpochSampler` makes the order depend only on (seed,
    epoch). Call :meth:`StampDataset.set_epoch` (and the sampler's) before each epoch.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, Literal

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset, Sampler

from crforge.errors import InputError
from crforge.pipeline.datafile.reader import StampReader, split_info
from crforge.pipeline.names import SPLITS
from crforge.training.config import EVAL_N_MASKS, TARGETS, AugmentConfig

logger = logging.getLogger(__name__)

__all__ = ["StampDataset", "EpochSampler", "normalise", "normalisation_info", "network_input", "estimate_sky",
           "NORM_SCHEME", "SPLITS"]

#: How the inputs are normalised (stored with every model).
NORM_SCHEME = "(image - sky) / scale"

# salts of the independent random streams of one item
_SALT_ITEM = 0
_SALT_ORDER = 1
_EIGHT = np.ones((3, 3), bool)




def normalise(image: np.ndarray | torch.Tensor, sky: float, scale: float):
    """The network input of an image: ``(image - sky) / scale``.

    Parameters
    ----------
    image : numpy.ndarray or torch.Tensor
        Pixels in the unit of the training set (``BUNIT``, normally electrons).
    sky : float
        The image's sky level (same unit).
    scale : float
        The model's ``normalisation['scale']``.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Normalised pixels (float32 for NumPy input); non-finite pixels become 0.
    """
    if not scale > 0:
        raise InputError(f"scale={scale!r}: expected > 0")
    if isinstance(image, torch.Tensor):
        return torch.nan_to_num((image.float() - sky) / scale, nan=0.0, posinf=0.0, neginf=0.0)
    x = (np.asarray(image, dtype=np.float32) - np.float32(sky)) / np.float32(scale)
    x[~np.isfinite(x)] = 0.0
    return x


def normalisation_info(scale: float, fill_ignored: bool, bunit: str = "ELECTRONS", *,
                       keep_sky: bool = False) -> dict:
    """The normalisation record stored with a model.

    Returns
    -------
    dict
        ``scheme`` (:data:`NORM_SCHEME`, or ``image / scale`` with ``keep_sky``), ``scale``,
        ``sky`` (what ``sky`` is), ``keep_sky``, ``bunit`` and ``fill_ignored``.
    """
    return {"scheme": "image / scale" if keep_sky else NORM_SCHEME, "scale": float(scale), "bunit": bunit,
            "sky": "the image's sky level (training: meta['sky'] of the stamp)",
            "keep_sky": bool(keep_sky), "fill_ignored": bool(fill_ignored)}


def network_input(image: np.ndarray, sky: float, normalisation: dict,
                  ignore: np.ndarray | None = None) -> np.ndarray:
    """An image as a network with this ``normalisation`` record takes it (float32).

    ``(image - sky) / scale``, or ``image / scale`` for a network trained with its sky
    kept (``keep_sky``: the network then sees the sky level, and so the noise it
    implies, as deepCR's published models do); ignored pixels read as the sky when the
    record says ``fill_ignored``.
    """
    keep = bool(normalisation.get("keep_sky", False))
    scale = float(normalisation["scale"])
    x = normalise(image, 0.0 if keep else sky, scale)
    if ignore is not None and normalisation.get("fill_ignored", True):
        x[ignore] = np.float32(sky / scale) if keep else 0.0
    return x


class StampDataset(Dataset):
    """One split of an HDF5 training set, read lazily, one stamp per item.

    Parameters
    ----------
    path : str or path-like
        The HDF5 file (schema v1 or v2).
    split : {'train', 'val', 'test'}
        The split to read.
    kind : {'mask', 'inpaint'}
        What the items are for (inpaint items carry a borrowed mask).
    augment : AugmentConfig or None
        Augmentation; ``None`` for none (validation). Inpaint masks are drawn either
        way.
    seed : int
        Seed of every random choice.
    norm_scale : float
        Normalisation scale, see :func:`normalise`. This and the next two have no
        default: they are the training run's (:meth:`TrainConfig.data_options
        <crforge.training.config.TrainConfig.data_options>` gives all of a run's), and
        the data set must not hold a second copy. ``target``, ``truth_min_bin`` and
        ``cr_fringe`` default to off (the labels as they are).
    fill_ignored : bool
        Set ignored pixels of the input to the (normalised) sky.
    keep_sky : bool
        The input is ``image / norm_scale`` with its sky (:func:`network_input`), not the
        sky-subtracted image.
    target : {'labels', 'truth', 'labels-known'}
        What a CR is: the file's AstroDrizzle labels (``cr``), or, for simulated data,
        the injected cosmic rays (``truth``) of at least ``truth_min_bin``; the injected
        charge below that bin (too faint to tell) then weighs nothing; or the labels,
        with the injected charge they leave unlabelled weighing nothing
        (``labels-known``).
    truth_min_bin : int
        With ``target='truth'``: the faintest truth bin that is a CR (2: 3-5 sigma).
    cr_fringe : float
        Mask network, simulated data only: the target probability of a CR's fringe, the
        pixels next to a CR pixel of the target that hold injected charge of the stamp's
        own cosmic rays which the target leaves out (:func:`cr_fringe`); 0 = none. A file
        without truth (real data) has no fringe: its labels are taught as they are.
    star_weight : float
        Mask network, simulated data only: the extra loss weight of a star core's pixels
        that are not CRs (:func:`star_cores` of the stamp's noiseless pixels); a core
        pixel weighs ``1 + star_weight``; 0 = none.

    Notes
    -----
    An item is a dict of tensors: ``image`` ``[1,S,S]`` float32 normalised, ``cr``
    ``[1,S,S]`` float32 (1 = CR, ``cr_fringe`` on a fringe pixel, else 0; never on an
    ignored pixel), ``weight`` ``[1,S,S]`` float32 (0 where ignored, ``1 +
    star_weight`` on a star core's non-CR pixels, else 1), ``index`` (int) and, for
    inpaint, ``mask`` (the borrowed CR masks) and ``loss_mask`` (``mask`` and not
    ignored, and not own CR unless the target is noiseless), both float32, and
    ``target`` (the normalised noiseless pixels) where the file has them. ``S`` is the
    file's ``stamp_size``.
    """

    def __init__(self, path: str | os.PathLike, split: str, kind: Literal["mask", "inpaint"] = "mask",
                 augment: AugmentConfig | None = None, seed: int = 0, *, norm_scale: float,
                 fill_ignored: bool, keep_sky: bool, target: str = "labels",
                 truth_min_bin: int = 2, cr_fringe: float = 0.0, star_weight: float = 0.0) -> None:
        if split not in SPLITS:
            raise InputError(f"split={split!r}: expected one of {SPLITS}")
        if kind not in ("mask", "inpaint"):
            raise InputError(f"kind={kind!r}: expected 'mask' or 'inpaint'")
        if augment is not None and not isinstance(augment, AugmentConfig):
            raise TypeError(f"augment must be an AugmentConfig or None, got {type(augment).__name__}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not norm_scale > 0:
            raise InputError(f"norm_scale={norm_scale!r}: expected > 0")
        if augment is not None:
            augment.validate()
        info = split_info(path, split)
        self.path, self.stamp_size, self.bunit = info.path, info.stamp_size, info.bunit
        self.split, self.kind, self.augment, self.seed = split, kind, augment, int(seed)
        self.norm_scale, self.fill_ignored = float(norm_scale), bool(fill_ignored)
        self.normalisation = normalisation_info(norm_scale, fill_ignored, info.bunit, keep_sky=keep_sky)
        if target not in TARGETS:
            raise InputError(f"target={target!r}: expected one of {TARGETS}")
        if target != "labels" and not info.has_truth:
            raise InputError(f"{info.path}: /{split} has no truth (only simulated data sets do); "
                             "train on the labels (train.target='labels')")
        self.target, self.truth_min_bin = target, int(truth_min_bin)
        if not 0.0 <= cr_fringe <= 1.0:
            raise InputError(f"cr_fringe={cr_fringe!r}: expected a number in [0, 1]")
        # the fringe is read from the injected truth: a real data set's labels are all it has
        self.cr_fringe = float(cr_fringe) if kind == "mask" and info.has_truth else 0.0
        if cr_fringe and kind == "mask" and not info.has_truth:
            logger.info("%s: /%s has no truth (real data): train.cr_fringe = %g does not apply, the labels "
                        "are taught as they are", info.path, split, cr_fringe)
        if not star_weight >= 0:
            raise InputError(f"star_weight={star_weight!r}: expected >= 0")
        self.star_weight = float(star_weight) if kind == "mask" else 0.0
        if self.star_weight and not info.has_noiseless:
            raise InputError(f"{info.path}: /{split} has no noiseless pixels (only simulated data sets do), "
                             "which train.star_weight needs to find star cores; set train.star_weight = 0")
        self.epoch = 0
        self._n = info.n
        self.sky = np.nan_to_num(info.column("sky", 0.0).astype(np.float64))
        self.exptime = info.column("exptime", 1.0).astype(np.float64)
        self.field_types = info.column("field_type", "unknown").astype(str)
        # inpaint targets: the noiseless pixels where the file has them
        self._noiseless = kind == "inpaint" and info.has_noiseless
        self._star_crs = kind == "mask" and augment is not None and augment.star_crs > 0
        self._cr_boost = kind == "mask" and augment is not None and augment.cr_boost > 0
        for name, on in (("star_crs", self._star_crs), ("cr_boost", self._cr_boost)):
            if on and not (info.has_noiseless and info.has_truth):
                raise InputError(f"{info.path}: /{split} has no noiseless pixels and truth (only simulated data "
                                 f"sets do), which augment.{name} needs; set train.augment.{name} = 0")
        self.readnoise = info.column("readnoise", 0.0).astype(np.float64)
        crf = info.column("cr_fraction", 1.0)
        # inpaint masks are borrowed only from stamps with CRs (an empty one adds nothing)
        self._donors = np.flatnonzero(crf > 0)
        if self._n > 1 and self._donors.size == 0:
            self._donors = np.arange(self._n)
        # e-/s data: the sky's Poisson variance in the image's unit is sky / exptime
        self._per_second = "/S" in self.bunit.upper().replace(" ", "")
        # the file is opened on first read in each process (DataLoader workers fork)
        self._reader = StampReader(self.path, split)

    # ------------------------------------------------------------------ plumbing

    def __len__(self) -> int:
        return self._n

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws the next items use."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise InputError(f"epoch={epoch!r}: expected an int >= 0")
        self.epoch = int(epoch)

    def close(self) -> None:
        """Close this process's file handle (reopened on the next read)."""
        self._reader.close()

    # ------------------------------------------------------------------ items

    def _geometry(self, rng: np.random.Generator) -> tuple[int, bool]:
        k = int(rng.integers(4)) if (self.augment is not None and self.augment.rot90) else 0
        flip = bool(rng.random() < 0.5) if (self.augment is not None and self.augment.flip) else False
        return k, flip

    @staticmethod
    def _apply(arr: np.ndarray, k: int, flip: bool) -> np.ndarray:
        if k:
            arr = np.rot90(arr, k)
        if flip:
            arr = arr[:, ::-1]
        return arr

    def _borrowed_mask(self, index: int, rng: np.random.Generator, peaks: np.ndarray) -> np.ndarray:
        """The union of CR masks of other stamps; ``peaks``: flat indices for ``star_masks``."""
        s = self.stamp_size
        donors = self._donors[self._donors != index]
        if donors.size == 0:
            return np.zeros((s, s), bool)
        lo, hi = self.augment.n_masks if self.augment is not None else EVAL_N_MASKS
        star_p = self.augment.star_masks if self.augment is not None else 0.0
        n = int(rng.integers(lo, hi + 1))
        picks = rng.choice(donors, size=min(n, donors.size), replace=False)
        mask = np.zeros((s, s), bool)
        for j in np.sort(picks):  # sorted: h5py reads forward faster
            k, flip = self._geometry(rng)
            # a label under the ignore mask is no label (same rule as the stamp's own)
            donor = self._apply((self._reader.read("cr", j) != 0) & (self._reader.read("ignore", j) == 0), k, flip)
            if star_p > 0 and peaks.size and rng.random() < star_p:
                donor = _onto_peak(donor, peaks, rng, self.augment.star_mask_offset)
            mask |= donor
        return mask

    def _electrons(self, index: int) -> float:
        """Electrons per image unit of a stamp (its exposure time for e-/s data)."""
        return float(self.exptime[index]) if self._per_second else 1.0

    def _noise(self, index: int, clean: np.ndarray) -> np.ndarray:
        """A stamp's noise per pixel (photon noise of its noiseless pixels and read noise), its unit."""
        e = self._electrons(index)
        return np.sqrt(np.maximum(clean, 0) * e + self.readnoise[index] ** 2) / e

    def _add_star_crs(self, index: int, rng: np.random.Generator, image: np.ndarray, cr: np.ndarray,
                      faint: np.ndarray, ignore: np.ndarray) -> None:
        """``augment.star_crs``: another stamp's cosmic rays onto this one's star wings, in place."""
        donors = self._donors[self._donors != index]
        clean = self._reader.read("noiseless", index).astype(np.float32)
        peaks = bright_peaks(clean, ~ignore)
        if donors.size == 0 or peaks.size == 0:
            return
        j = int(rng.choice(donors))
        k, flip = self._geometry(rng)
        truth = self._apply(self._reader.read("truth", j), k, flip)
        charge = self._reader.read("image", j).astype(np.float32) - self._reader.read("noiseless", j)
        # in this stamp's unit: the donor's charge in electrons, over this stamp's electrons per unit
        charge = self._apply(charge, k, flip) * np.float32(self._electrons(j) / self._electrons(index))
        added, strong = wing_crs(np.where(truth > 0, charge, 0), truth >= self.truth_min_bin, peaks, rng)
        added[ignore] = 0
        image += added
        hit = strong & (added >= STAR_CR_SNR * self._noise(index, clean)) & ~ignore
        cr |= hit
        # injected charge too faint to tell from the star's noise is no example either way
        faint |= added > 0
        faint &= ~cr

    def _boost_crs(self, index: int, rng: np.random.Generator, image: np.ndarray, cr: np.ndarray,
                   faint: np.ndarray, ignore: np.ndarray) -> None:
        """``augment.cr_boost``: this stamp's own cosmic rays brightened, in place."""
        clean = self._reader.read("noiseless", index).astype(np.float32)
        truth = self._reader.read("truth", index)
        charge = np.where((truth > 0) & ~ignore, np.maximum(image - clean, 0), 0).astype(np.float32)
        added = brightened(charge, rng, self.augment.cr_boost_max)
        image += added
        cr |= (added > 0) & (charge + added >= STAR_CR_SNR * self._noise(index, clean))
        # brightened charge still too faint to tell from the noise is no example either way
        faint |= added > 0
        faint &= ~cr

    def _target(self, index: int, ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The CR pixels of a stamp, and those that count neither way (weight 0)."""
        if self.target == "truth":
            truth = self._reader.read("truth", index)
            return (truth >= self.truth_min_bin) & ~ignore, (truth > 0) & (truth < self.truth_min_bin)
        labels = (self._reader.read("cr", index) != 0) & ~ignore
        if self.target == "labels":
            return labels, np.zeros_like(ignore)
        return labels, (self._reader.read("truth", index) > 0) & ~labels  # labels-known

    def _weight(self, index: int, weight: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Loss weight of a stamp's pixels: ``weight`` (bool), star cores' non-CR pixels raised."""
        if not self.star_weight:
            return weight
        clean = self._reader.read("noiseless", index).astype(np.float32)
        sky = float(max(self.sky[index], 0.0))
        # a star's significance against its background's noise, as the real-pixel figures find stars
        noise = self._noise(index, np.full_like(clean, sky))
        cores = star_cores(clean - np.float32(sky), noise, weight) & (target == 0)
        return np.where(cores, np.float32(1 + self.star_weight), weight.astype(np.float32))

    def _fringed(self, index: int, cr: np.ndarray, faint: np.ndarray, ignore: np.ndarray) -> np.ndarray:
        """``cr`` as float32 with its fringe at ``cr_fringe``; a fringe pixel weighs 1 (``faint`` updated)."""
        fringe = cr_fringe(cr, self._reader.read("truth", index) > 0) & ~ignore
        faint &= ~fringe
        return np.where(cr, np.float32(1), np.where(fringe, np.float32(self.cr_fringe), np.float32(0)))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self._n:
            raise IndexError(f"index {index} out of range for {self._n} stamps")
        index = int(index)
        rng = np.random.default_rng([self.seed, self.epoch, index, _SALT_ITEM])
        image = self._reader.read("image", index).astype(np.float32)
        # a non-finite pixel holds no data: treated as ignored
        ignore = (self._reader.read("ignore", index) != 0) | ~np.isfinite(image)
        # an ignored pixel has no label: a CR flag there must not reach the model in
        # any way (inpaint input mask included), so it is dropped here
        cr, faint = self._target(index, ignore)
        if self._cr_boost and rng.random() < self.augment.cr_boost:
            self._boost_crs(index, rng, image, cr, faint, ignore)
        if self._star_crs and rng.random() < self.augment.star_crs:
            self._add_star_crs(index, rng, image, cr, faint, ignore)
        target = self._fringed(index, cr, faint, ignore) if self.cr_fringe else cr
        sky = float(max(self.sky[index], 0.0))
        level = sky  # the background of the (augmented) stamp
        aug = self.augment
        if aug is not None and aug.sky_range != (0.0, 0.0):
            f = float(rng.uniform(*aug.sky_range))
            image += np.float32(f * sky)
            level = sky * (1.0 + f)
            if aug.sky_noise and f > 0 and sky > 0:
                var = f * sky / self._electrons(index)
                image += rng.normal(0.0, np.sqrt(var), image.shape).astype(np.float32)
        ref = level if self.normalisation["keep_sky"] else sky
        # the recorded sky is subtracted: the network sees the augmented offsets too
        x = network_input(image, ref, self.normalisation, ignore)
        k, flip = self._geometry(rng)
        arrays = {"image": x, "cr": target, "weight": self._weight(index, ~ignore & ~faint, target)}
        if self._noiseless:
            clean = self._reader.read("noiseless", index).astype(np.float32) + np.float32(level - sky)
            arrays["target"] = network_input(clean, ref, self.normalisation)
        if self.kind == "inpaint":
            # drawn after the stamp's own geometry, in its final orientation
            arrays = {k_: self._apply(v, k, flip) for k_, v in arrays.items()}
            peaks = np.zeros(0, np.int64)
            if aug is not None and aug.star_masks > 0:
                peaks = bright_peaks(arrays.get("target", np.where(arrays["cr"], np.nan, arrays["image"])),
                                     arrays["weight"])
            mask = self._borrowed_mask(index, rng, peaks)
            arrays["mask"] = mask
            own = np.zeros_like(mask) if self._noiseless else arrays["cr"]
            arrays["loss_mask"] = mask & ~own & arrays["weight"]
        else:
            arrays = {k_: self._apply(v, k, flip) for k_, v in arrays.items()}
        item = {name: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]
                for name, a in arrays.items()}
        item["index"] = index
        return item


def cr_fringe(cr: np.ndarray, charge: np.ndarray) -> np.ndarray:
    """The fringe of the cosmic rays ``cr``: pixels next to one (8-connected) that hold CR charge.

    Parameters
    ----------
    cr : ndarray of bool
        The CR pixels a network is taught (the labels).
    charge : ndarray of bool
        Pixels holding injected CR charge, however faint (a simulated stamp's ``truth > 0``).

    Returns
    -------
    ndarray of bool
        ``charge`` pixels outside ``cr`` that touch it. AstroDrizzle's labels stop where
        a hit's charge falls below about 3 sigma; a pair difference (the STIS reference,
        docs/real-pixels.md) and deepCR's masks reach one pixel further.
    """
    return ndimage.binary_dilation(cr, structure=_EIGHT) & charge & ~cr


#: How many of a stamp's brightest peaks ``augment.star_masks`` aims CR masks at.
STAR_PEAKS = 16


#: :func:`star_cores`: a star's peak is this many sigma of its background's noise up
#: (half the real-pixel figures' ``STAR_SNR``: the faint stars are where a network errs).
STAR_CORE_SNR = 10.0


def bright_peaks(image: np.ndarray, valid: np.ndarray, n: int = STAR_PEAKS) -> np.ndarray:
    """Flat indices of the ``n`` brightest local maxima (5x5) of ``image`` among ``valid`` pixels.

    Parameters
    ----------
    image : numpy.ndarray
        A stamp (NaN where nothing is known, e.g. its own CRs).
    valid : numpy.ndarray
        Pixels that may be peaks (not ignored).
    n : int
        At most this many peaks, the brightest first.
    """
    from scipy.ndimage import maximum_filter

    ok = valid & np.isfinite(image)
    ref = np.where(ok, image, -np.inf)
    idx = np.flatnonzero((ref == maximum_filter(ref, size=5, mode="nearest")) & ok)
    order = np.argsort(ref.ravel()[idx])[::-1]
    return idx[order[:n]]


def star_cores(signal: np.ndarray, noise: np.ndarray, valid: np.ndarray, *,
               snr: float = STAR_CORE_SNR) -> np.ndarray:
    """The 3x3 cores of a stamp's stars: around each local maximum (5x5) more than ``snr`` sigma up.

    Parameters
    ----------
    signal : numpy.ndarray
        The stamp's noiseless pixels minus its sky.
    noise : numpy.ndarray
        The noise per pixel ``signal`` is compared with (same shape and unit): the
        sky's, so that a peak's brighter neighbour is as significant as it.
    valid : numpy.ndarray
        Pixels that may be peaks and cores (not ignored).
    snr : float
        How significant a peak must be.

    Returns
    -------
    numpy.ndarray
        Boolean, True on the core pixels among ``valid``.
    """
    from scipy.ndimage import binary_dilation

    peaks = np.zeros(signal.shape, bool)
    # a significant pixel's brighter neighbour is significant too (noise of the sky, not
    # of the star): the peaks among significant pixels are the stamp's significant peaks
    peaks.flat[bright_peaks(signal, valid & (signal > snr * noise), n=signal.size)] = True
    return binary_dilation(peaks, np.ones((3, 3), bool)) & valid


#: At most how many cosmic rays ``augment.star_crs`` adds to a stamp's star wings.
STAR_CRS = 8

#: A cosmic ray added by ``augment.star_crs`` is a CR where it stands this many sigma
#: above the star's noise (photon noise of the noiseless pixel and read noise).
STAR_CR_SNR = 5.0


def wing_crs(charge: np.ndarray, strong: np.ndarray, peaks: np.ndarray, rng: np.random.Generator,
             n: int = STAR_CRS) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` cosmic rays of ``charge`` moved onto the wings of ``peaks``.

    Parameters
    ----------
    charge : numpy.ndarray
        A stamp's injected CR charge (0 where none); its 8-connected groups are the CRs.
    strong : numpy.ndarray
        Pixels of ``charge`` bright enough to be labelled (only CRs holding one are moved).
    peaks : numpy.ndarray
        Flat indices of the target stamp's stars (:func:`bright_peaks`).
    rng : numpy.random.Generator
        Chooses the CRs, the peaks and the offsets.
    n : int
        At most this many CRs.

    Returns
    -------
    added, strong : numpy.ndarray
        The charge to add to the target stamp (float32), and where the moved CRs'
        ``strong`` pixels landed. Each CR's brightest pixel lands 1 to 3 pixels (in x,
        y or both) from a peak; pixels that would leave the stamp are dropped.
    """
    from scipy.ndimage import label

    shape = charge.shape
    groups, count = label(charge > 0, structure=np.ones((3, 3), bool))
    usable = np.unique(groups[strong & (groups > 0)])
    added, landed = np.zeros(shape, np.float32), np.zeros(shape, bool)
    if usable.size == 0 or peaks.size == 0:
        return added, landed
    for g in rng.choice(usable, size=min(n, usable.size), replace=False):
        ys, xs = np.nonzero(groups == g)
        top = int(np.argmax(charge[ys, xs]))
        py, px = divmod(int(peaks[rng.integers(peaks.size)]), shape[1])
        dy, dx = 0, 0
        while dy == 0 and dx == 0:  # on the wing, not the core
            dy, dx = (int(v) for v in rng.integers(-3, 4, size=2))
        ty, tx = ys + (py + dy - ys[top]), xs + (px + dx - xs[top])
        inside = (ty >= 0) & (ty < shape[0]) & (tx >= 0) & (tx < shape[1])
        added[ty[inside], tx[inside]] += charge[ys[inside], xs[inside]]
        landed[ty[inside], tx[inside]] |= strong[ys[inside], xs[inside]]
    return added, landed


def brightened(charge: np.ndarray, rng: np.random.Generator, largest: float) -> np.ndarray:
    """The charge that makes each cosmic ray of ``charge`` brighter by its own factor.

    Parameters
    ----------
    charge : numpy.ndarray
        A stamp's injected CR charge (0 where none); its 8-connected groups are the CRs.
    rng : numpy.random.Generator
        Draws one factor per CR, log-uniform between 1 and ``largest``.
    largest : float
        The largest factor (``augment.cr_boost_max``).

    Returns
    -------
    numpy.ndarray
        float32, ``(factor - 1) * charge`` on each CR's pixels, 0 elsewhere.
    """
    from scipy.ndimage import label

    groups, count = label(charge > 0, structure=np.ones((3, 3), bool))
    factor = np.exp(rng.uniform(0.0, np.log(largest), count + 1)).astype(np.float32)
    factor[0] = 1.0
    return ((factor[groups] - 1) * charge).astype(np.float32)


def _onto_peak(donor: np.ndarray, peaks: np.ndarray, rng: np.random.Generator, offset: int = 0) -> np.ndarray:
    """``donor`` shifted (cyclically) so that one of its CR pixels, drawn at random, lies on a peak.

    With ``offset`` > 0, on a pixel drawn uniformly within ``offset`` pixels of the peak
    in y and x instead.
    """
    hit = np.flatnonzero(donor)
    if hit.size == 0:
        return donor
    src = divmod(int(hit[rng.integers(hit.size)]), donor.shape[1])
    dst = divmod(int(peaks[rng.integers(peaks.size)]), donor.shape[1])
    if offset > 0:  # drawn only then: runs without an offset keep their random stream
        dy, dx = rng.integers(-offset, offset + 1, size=2)
        dst = (dst[0] + int(dy), dst[1] + int(dx))
    return np.roll(donor, (dst[0] - src[0], dst[1] - src[1]), axis=(0, 1))


class EpochSampler(Sampler[int]):
    """Indices in an order that depends only on (seed, epoch).

    Parameters
    ----------
    n : int
        Number of items.
    seed : int
        Seed of the order.
    shuffle : bool
        Shuffle (else ``0..n-1``).
    limit : int
        Yield only the first ``limit`` indices of each epoch's order (0 = all): a
        different subset every epoch when shuffling.
    rank, world_size : int
        With several training processes, this one's share of the order: every
        ``world_size``-th index from ``rank``, after cutting the order to a multiple of
        ``world_size`` (:mod:`crforge.training.distributed`). The whole order is the
        same whatever ``world_size``.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, limit: int = 0, *,
                 rank: int = 0, world_size: int = 1) -> None:
        if n < 0:
            raise InputError(f"n={n!r}: expected >= 0")
        if limit < 0:
            raise InputError(f"limit={limit!r}: expected >= 0 (0 = all)")
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"rank={rank!r}, world_size={world_size!r}: expected 0 <= rank < world_size")
        self.n, self.seed, self.shuffle, self.limit = int(n), int(seed), bool(shuffle), int(limit)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def _total(self) -> int:
        return min(self.n, self.limit) if self.limit else self.n

    def __len__(self) -> int:
        total = self._total()
        return (total - total % self.world_size) // self.world_size

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, _SALT_ORDER]).permutation(self.n)
        else:
            order = np.arange(self.n)
        total = self._total()
        # strided: the k-th local batches of the ranks together are the k-th global batch
        return iter(order[:total - total % self.world_size][self.rank::self.world_size].tolist())


def estimate_sky(image: np.ndarray, ignore: np.ndarray | None = None, *, sigma: float = 3.0,
                 maxiters: int = 5, max_pixels: int = 1 << 21) -> float:
    """Sky level of an image: the sigma-clipped median of its good pixels.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image.
    ignore : numpy.ndarray of bool, optional
        Pixels to leave out (bad, saturated, no data).
    sigma : float
        Clipping threshold in standard deviations (as astropy's
        ``sigma_clipped_stats``: median centre, standard deviation).
    maxiters : int
        Clipping iterations at most.
    max_pixels : int
        Use an evenly strided subset of at most this many pixels: the sky of a full
        chip to well under a read-noise electron, in a fraction of the time.

    Returns
    -------
    float
        The sky (0.0 for an image without good pixels, with a warning).
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"image: expected a 2-D array, got shape {image.shape}")
    if not sigma > 0:
        raise InputError(f"sigma={sigma!r}: expected > 0")
    flat = image.reshape(-1)
    good = np.isfinite(flat)
    if ignore is not None:
        ignore = np.asarray(ignore, bool)
        if ignore.shape != image.shape:
            raise InputError(f"ignore: shape {ignore.shape} differs from image {image.shape}")
        good &= ~ignore.reshape(-1)
    stride = max(1, flat.size // max_pixels)
    v = flat[::stride][good[::stride]].astype(np.float64)
    if v.size == 0:
        logger.warning("estimate_sky: no good pixels; sky = 0")
        return 0.0
    for _ in range(maxiters):
        med, std = np.median(v), v.std()
        keep = np.abs(v - med) <= sigma * std
        if keep.all() or keep.sum() < 10:
            break
        v = v[keep]
    return float(np.median(v))
