"""The methods crforge's networks are compared with (pure functions on stamps).

Detection
    :func:`lacosmic_mask`: LACosmic (van Dokkum 2001) through astroscrappy
    (``astroscrappy.detect_cosmics``), on images in electrons with the sky in them, as
    LACosmic expects. :data:`LACOSMIC_DEFAULT` is astroscrappy's documented default
    operating point; :mod:`crforge.training.evaluate` sweeps the detection threshold
    (``sigclip``) to trace its ROC curve, as the deepCR paper did.

    :class:`DeepCRPeer`: the published deepCR model of the ``deepCR`` package (0.3.1:
    ``ACS-WFC``, a 2-32 UNet with batch norm, and ``WFC3-UVIS``), giving CR
    probabilities on images in electrons.

Inpainting
    :func:`median_fill`: each masked pixel replaced by the median of the unmasked
    pixels of its 5x5 neighbourhood (deepCR's ``medmask``; the window grows when all
    of it is masked). :func:`biharmonic_fill`: scikit-image's biharmonic inpainting
    (``skimage.restoration.inpaint_biharmonic``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from crforge.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["LACOSMIC_DEFAULT", "lacosmic_mask", "median_fill", "biharmonic_fill",
           "DeepCRPeer"]

#: astroscrappy 1.x's defaults of ``detect_cosmics`` (its documented operating point).
LACOSMIC_DEFAULT: dict[str, Any] = {"sigclip": 4.5, "sigfrac": 0.3, "objlim": 5.0, "niter": 4}


def lacosmic_mask(image, *, readnoise: float, gain: float = 1.0, ignore=None, sigclip: float = 4.5, sigfrac: float = 0.3, objlim: float = 5.0, niter: int = 4
                  ) -> np.ndarray:
    """LACosmic's CR mask of one image (astroscrappy).

    Parameters
    ----------
    image : array_like
        2-D image in electrons (``gain=1``) or DN (with its ``gain``), sky included:
        LACosmic's noise model is the (median-filtered) image itself plus read noise.
    readnoise : float
        Read noise in electrons.
    gain : float
        Electrons per image unit.
    ignore : array_like of bool, optional
        Pixels to leave out (astroscrappy's ``inmask``: bad, saturated, no data).
    sigclip, sigfrac, objlim, niter
        astroscrappy's detection parameters.

    Returns
    -------
    numpy.ndarray
        bool mask, True = CR.
    """
    import astroscrappy

    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise InputError(f"image: expected a 2-D array, got shape {img.shape}")
    if not readnoise >= 0:
        raise InputError(f"readnoise={readnoise!r}: expected >= 0")
    if not gain > 0:
        raise InputError(f"gain={gain!r}: expected > 0")
    inmask = None
    if ignore is not None:
        inmask = np.asarray(ignore, dtype=bool)
        if inmask.shape != img.shape:
            raise InputError(f"ignore: shape {inmask.shape} differs from image {img.shape}")
    img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
    crmask, _ = astroscrappy.detect_cosmics(
        img, inmask=inmask, sigclip=float(sigclip), sigfrac=float(sigfrac), objlim=float(objlim),
        niter=int(niter), gain=float(gain), readnoise=float(readnoise), satlevel=np.inf,
        sepmed=True, cleantype="meanmask", fsmode="median", verbose=False)
    return np.asarray(crmask, dtype=bool)


def _check_fill_args(image, mask) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    if img.ndim != 2:
        raise InputError(f"image: expected a 2-D array, got shape {img.shape}")
    if m.shape != img.shape:
        raise InputError(f"mask: shape {m.shape} differs from image {img.shape}")
    return img, m


def median_fill(image, mask, size: int = 5) -> np.ndarray:
    """Replace masked pixels by the median of the unmasked ones around them.

    Parameters
    ----------
    image : array_like
        2-D image.
    mask : array_like of bool
        Pixels to replace.
    size : int
        Window size (odd; deepCR: 5). A pixel whose window is entirely masked is
        filled from a window twice as large (and so on), or with the median of the
        whole unmasked image as a last resort.

    Returns
    -------
    numpy.ndarray
        float32 copy of ``image`` with the masked pixels filled.
    """
    if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise InputError(f"size={size!r}: expected an odd int >= 1")
    img, m = _check_fill_args(image, mask)
    out = img.copy()
    todo = np.argwhere(m)
    if todo.size == 0:
        return out
    if m.all():
        raise InputError("mask: every pixel is masked; nothing to fill from")
    vals = np.where(m, np.nan, img).astype(np.float32)
    h, w = img.shape
    half = size // 2
    while todo.size and half <= max(h, w):
        pad = np.pad(vals, half, mode="constant", constant_values=np.nan)
        k = 2 * half + 1
        # gather only the windows of the masked pixels ([n, k, k]), not of all pixels
        rows = todo[:, 0, None, None] + np.arange(k)[None, :, None]
        cols = todo[:, 1, None, None] + np.arange(k)[None, None, :]
        win = pad[rows, cols].reshape(len(todo), -1)
        ok = np.isfinite(win).any(axis=1)
        if ok.any():
            with np.errstate(all="ignore"):
                med = np.nanmedian(win[ok], axis=1)
            out[todo[ok, 0], todo[ok, 1]] = med
        todo = todo[~ok]
        half = 2 * half + 1
    if todo.size:
        out[todo[:, 0], todo[:, 1]] = np.nanmedian(vals)
    return out


def biharmonic_fill(image, mask) -> np.ndarray:
    """Biharmonic inpainting of the masked pixels (scikit-image).

    Returns
    -------
    numpy.ndarray
        float32 copy of ``image`` with the masked pixels filled.
    """
    from skimage.restoration import inpaint_biharmonic

    img, m = _check_fill_args(image, mask)
    if not m.any():
        return img.copy()
    if m.all():
        raise InputError("mask: every pixel is masked; nothing to fill from")
    return inpaint_biharmonic(img.astype(np.float64), m).astype(np.float32)


class DeepCRPeer:
    """deepCR's published mask model (package ``deepCR`` 0.3.1) as a scorer.

    Parameters
    ----------
    instrument : str
        ``ACS/WFC`` or ``WFC3/UVIS``: deepCR's model of the same name; or another of
        deepCR's files by name (``ACS-WFC-F606W-2-4``, the paper's fast model, which
        deepCR 0.3.1 ships but does not load by name); see
        :data:`crforge.training.deepcr.DEEPCR_MODELS`, the one table of them.
    threads : int
        ``torch.set_num_threads`` while scoring (0 = leave as is).

    Raises
    ------
    ImportError
        When the ``deepCR`` package is not installed (``pip install deepCR==0.3.1``,
        part of crforge's ``test`` extra).
    ValueError
        For an instrument deepCR has no model for.
    """

    def __init__(self, instrument: str, threads: int = 0) -> None:
        from crforge.training.deepcr import DEEPCR_MODELS

        name = str(instrument).replace("/", "-")
        if name not in DEEPCR_MODELS:
            named = sorted(m.instrument for m in DEEPCR_MODELS.values() if m.in_deepcr_table)
            files = sorted(k for k, m in DEEPCR_MODELS.items() if not m.in_deepcr_table)
            raise InputError(f"instrument={instrument!r}: deepCR 0.3.1 publishes mask models for {named} "
                             f"only (and the files {files})")
        import warnings

        with warnings.catch_warnings():
            # deepCR 0.3.1 builds its nets with the deprecated weight_norm API
            warnings.simplefilter("ignore", FutureWarning)
            from deepCR import deepCR

            self.name = name
            spec = DEEPCR_MODELS[name]
            self._model = deepCR(mask=name if spec.in_deepcr_table else "ACS-WFC", device="CPU")
            if not spec.in_deepcr_table:
                self._own_network(spec)
        self.threads = int(threads)

    def _own_network(self, spec) -> None:
        """Put a file deepCR's table does not name into deepCR's own object (its own clean())."""
        import torch
        from deepCR.model import WrappedModel
        from deepCR.unet import UNet2Sigmoid
        from deepCR.unet_batchnorm import UNet2SigmoidBatchNorm

        from crforge.training.deepcr import deepcr_file

        net = WrappedModel((UNet2SigmoidBatchNorm if spec.batch_norm else UNet2Sigmoid)(1, 1, spec.width))
        net.load_state_dict(torch.load(deepcr_file(self.name), map_location="cpu", weights_only=True))
        self._model.maskNet = net.eval()
        self._model.scale = spec.divisor

    def scores(self, image) -> np.ndarray:
        """CR probability of every pixel of a 2-D image in electrons (sky included)."""
        import torch

        img = np.asarray(image, dtype=np.float32)
        if img.ndim != 2:
            raise InputError(f"image: expected a 2-D array, got shape {img.shape}")
        img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            prob = self._model.clean(img, binary=False, inpaint=False, segment=False)
        finally:
            torch.set_num_threads(before)
        return np.asarray(prob, dtype=np.float32)
