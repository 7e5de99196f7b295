"""The ``[evaluate]`` table: settings of ``crforge evaluate`` (standard library only)."""

from __future__ import annotations

from dataclasses import dataclass

from crforge.errors import InputError
from crforge.pipeline.names import SPLITS
from crforge.training.config import check_views

__all__ = ["EvaluateConfig", "BASELINES"]


BASELINES = ("deepcr", "astroscrappy", "median5", "biharmonic")


@dataclass
class EvaluateConfig:
    """Settings of ``crforge evaluate`` (the ``[evaluate]`` table).

    Parameters
    ----------
    split : {'test', 'val', 'train'}
        The split evaluated.
    stamps_per_field_type : int
        Evaluate a seeded random subset of this many stamps per field type (0 = all):
        LACosmic's sweep costs about 3 s per stamp on 2 cores, and every method is
        scored on the same stamps.
    fprs : tuple of float
        False-positive rates of the TPR figures (deepCR: 0.05% and 0.5%).
    dilation : int
        Kernel size of the dilated variant (deepCR: 3; 0 = no dilated figures).
    threshold_fpr : float
        The recommended threshold of the mask model is the one giving this
        false-positive rate on the ``val`` split. 0.05%, deepCR's lower operating point:
        on the real frames (docs/real-pixels.md) a network that sees ignored pixels as
        they are (``train.fill_ignored = false``) touches at 0.1% the cores of 31% of
        WFPC2's undersampled PC1 stars (deepCR at its 0.5: 28%), at 0.05% 22%; at 0.5%
        networks flagged 3-5 times as many pixels as deepCR and touched the cores of
        5-13% of the ACS/HRC stars.
    views : int
        The mask network's probability of a pixel is the mean over this many symmetric
        views of the image (1, 2, 4 or 8; :meth:`~crforge.training.models.MaskNet.predict`)
        wherever the evaluation scores it: the recommended threshold, the figures and
        the real frames. The threshold is chosen for this number and published with it
        (``ModelRecord.views``). 8 raised TPR at 0.05% FPR on the real frames by
        0.6-5.4 points (docs/real-pixels.md) for 8 times the network's time.
    checkpoint : {'best', 'last'}
        Which checkpoint of each network.
    baselines : tuple of str
        Baselines to run: ``deepcr``, ``astroscrappy`` (detection), ``median5``,
        ``biharmonic`` (inpainting).
    lacosmic_sigclip : tuple of float
        ``sigclip`` values swept to trace LACosmic's ROC.
    truth_min_bin : int
        Against the injected truth, CR pixels of ``truth >= truth_min_bin`` are the
        positives (``crforge.pipeline.datafile.schema.TRUTH_SNR_BINS``: 2 = 3-5 sigma, 3 = 5-10 sigma,
        4 = above 10) and fainter CR pixels are left out.
    photometry : bool
        Measure the photometric fidelity of the inpainting.
    aperture_radius : float
        Aperture radius in pixels (ACS/WFC's PSF FWHM is about 2 px).
    star_min_snr : float
        A star's peak must stand this many sigma above the sky.
    stars_per_stamp : int
        At most this many stars hit per stamp.
    batch_size : int
        Stamps per network forward pass.
    threads : int
        Threads for torch and the baselines (0 = all cores).
    seed : int
        Seed of the subset, the evaluation masks and the hits.
    real_frames : bool
        Also score the mask network, beside deepCR and LACosmic (when they are among
        ``baselines``), on the real HST frames of :mod:`crforge.pipeline.realframes`
        (ACS/HRC, STIS/CCD, WFPC2): TPR at ``(0.05%, 0.5%)`` FPR and the star cores
        its mask touches at the recommended threshold (``real.png`` shows crops).
    """

    split: str = "test"
    stamps_per_field_type: int = 64
    fprs: tuple[float, ...] = (0.0005, 0.005)
    dilation: int = 3
    threshold_fpr: float = 0.0005
    views: int = 8
    checkpoint: str = "best"
    baselines: tuple[str, ...] = BASELINES
    # 3 already calls about 0.5-1% of the sky pixels CRs on ACS/WFC stamps; below it
    # astroscrappy slows down tenfold (2 s per stamp) for FPRs nobody uses
    lacosmic_sigclip: tuple[float, ...] = (3.0, 4.5, 6.0, 9.0, 15.0)
    truth_min_bin: int = 3
    photometry: bool = True
    aperture_radius: float = 3.0
    star_min_snr: float = 30.0
    stars_per_stamp: int = 4
    batch_size: int = 16
    threads: int = 0
    seed: int = 0
    real_frames: bool = True

    def validate(self) -> None:
        """Raise :class:`~crforge.errors.InputError` naming a bad parameter."""
        if self.split not in SPLITS:
            raise InputError(f"evaluate.split={self.split!r}: expected one of {SPLITS}")
        if self.stamps_per_field_type < 0:
            raise InputError(f"evaluate.stamps_per_field_type={self.stamps_per_field_type!r}: expected >= 0")
        if not self.fprs or not all(0 < f < 1 for f in self.fprs):
            raise InputError(f"evaluate.fprs={self.fprs!r}: expected rates in (0, 1)")
        if self.dilation < 0 or (self.dilation and self.dilation % 2 == 0):
            raise InputError(f"evaluate.dilation={self.dilation!r}: expected 0 or an odd size")
        if not 0 < self.threshold_fpr < 1:
            raise InputError(f"evaluate.threshold_fpr={self.threshold_fpr!r}: expected (0, 1)")
        check_views(self.views, name="evaluate.views")
        if self.checkpoint not in ("best", "last"):
            raise InputError(f"evaluate.checkpoint={self.checkpoint!r}: expected 'best' or 'last'")
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise InputError(f"evaluate.baselines: unknown {sorted(unknown)}; valid: {list(BASELINES)}")
        if not self.lacosmic_sigclip or not all(s > 0 for s in self.lacosmic_sigclip):
            raise InputError(f"evaluate.lacosmic_sigclip={self.lacosmic_sigclip!r}: expected values > 0")
        if not self.aperture_radius > 0:
            raise InputError(f"evaluate.aperture_radius={self.aperture_radius!r}: expected > 0")
        if not self.star_min_snr > 0:
            raise InputError(f"evaluate.star_min_snr={self.star_min_snr!r}: expected > 0")
        for name in ("stars_per_stamp", "threads"):
            if getattr(self, name) < 0:
                raise InputError(f"evaluate.{name}={getattr(self, name)!r}: expected >= 0")
        if self.truth_min_bin not in (2, 3, 4):
            raise InputError(f"evaluate.truth_min_bin={self.truth_min_bin!r}: expected 2, 3 or 4")
        if self.batch_size < 1:
            raise InputError(f"evaluate.batch_size={self.batch_size!r}: expected >= 1")
