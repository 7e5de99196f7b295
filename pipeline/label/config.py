"""The ``[label]`` table: settings of the labelling stage (standard library only)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from crforge.errors import InputError

__all__ = ["LabelConfig"]


#: Version of the labelling code, recorded with the settings in every ``labels.json``:
#: bump it when a change of code (not of settings) changes the labels, so that labels
#: made before are made anew by ``crforge dataset`` and refused by ``crforge label``,
#: never reused. 2: the per-imager refinement factors and the raised minimum
#: reference of more than two exposures (labels without the key are version 1).
LABELLER_VERSION = 2


@dataclass
class LabelConfig:
    """Settings of the labelling stage (AstroDrizzle and mask building).

    Parameters
    ----------
    combine_type : str
        AstroDrizzle's median combination (``minmed``, ``median``, ``minimum``...)
        for visits with more than ``refine_max_exposures`` exposures.
    combine_nhigh : int
        High pixels rejected before the median (the HST pipeline uses 1 for 3-5).
    combine_nsigma : str
        ``minmed`` thresholds.
    driz_cr_snr, driz_cr_scale : str
        AstroDrizzle's CR thresholds and derivative scales (its defaults).
    driz_cr_grow : int
        AstroDrizzle's CR growth (1 = none).
    driz_sep_bits : str
        DQ bits treated as good when building the median (warm pixels are fine).
    skysub : bool
        Let AstroDrizzle subtract the sky before the median.
    refine_max_exposures : int
        Visits with at most this many exposures use the minimum reference and
        :func:`crforge.pipeline.masks.refine_cr_mask` (0 disables refinement).
    refine_snr : tuple of float
        Seed and grow thresholds of the refinement, in sigma of the difference.
    refine_deriv_scale : float
        Gradient term of the refinement (interpolation errors on stars).
    refine_other_scale : float
        Weight of the other exposures' residual at the same sky position (what
        sharp stars leave in every exposure) in the refinement's threshold. With
        ``refine_snr = (4.0, 2.25)``, 1.5 keeps the false labels of 2-exposure
        globular-cluster visits with PSFs as sharp as ACS/WFC's (core 1.5-1.9 pixels)
        at 30-55 per million with 95-97% recall above 5 sigma; 1 let them reach
        95-245 per million.
    grow_snr : float
        For visits refined no further, AstroDrizzle's CR pixels grow into connected
        neighbours standing this many sigma above the blotted median (the faint
        diffusion wings of bright hits); 0 keeps AstroDrizzle's mask as it is.
    grow_deriv_scale : float
        Gradient term of that growth (keeps it off sharp stars).
    saturation_grow : int
        Radius in pixels by which saturated pixels grow in the ignore mask.
    min_exposures : int
        Fewer usable exposures than this refuses the visit.
    num_cores : int
        Processes AstroDrizzle may use (1: on 2 cores, 2 is slower than 1).
    threads : int
        Threads that build and write the label files of the exposures after
        AstroDrizzle (NumPy and file I/O release the GIL).
    keep_scratch : bool
        Keep AstroDrizzle's scratch directory (for debugging); removed otherwise.
    align : bool
        Align the exposures to the first one before AstroDrizzle
        (:mod:`crforge.pipeline.label.align`: TweakReg's source finder, tweakwcs' fit);
        a visit that cannot be aligned is refused, never labelled on its header WCS.
        Off by default: simulated visits have exact headers unless simulated with a
        ``pointing_error``, and small test chips hold too few sources to fit; real
        visits should turn it on (the rows of ``data_manifests/deepcr-acs-wfc.csv`` do).
    align_conv_width : float
        TweakReg's ``conv_width``: FWHM in pixels of the finder's kernel; 0 takes
        twice the PSF FWHM of the instrument table in the exposure's filter (3.4 for
        ACS/WFC F606W; TweakReg recommends 3.5 for ACS/WFC, 2.5 for WFC3/UVIS).
        Per visit from the manifest's ``label`` cell (deepCR's published values).
    align_threshold : float
        TweakReg's ``threshold``: detection peak in sky sigmas (``sqrt(2 |mode|)``).
    align_good_bits : int
        DQ bits of pixels the finder may still use (sum); others are left out.
    align_fitgeom : str
        tweakwcs fit geometry: ``shift``, ``rshift`` (shift and rotation), ``rscale``
        or ``general``.
    align_tolerance : float
        Matching tolerance in pixels, from the header WCS: the largest relative
        pointing error the alignment can correct.
    align_min_matches : int
        Fewer matched sources than this (per exposure, after clipping) refuses the visit.
    align_max_rms : float
        A fit residual rms above this (pixels) refuses the visit.
    align_max_shift_error : float
        A fitted shift less certain than this (pixels; the rms over the square root of
        the matches) refuses the visit: a sparse field's few matches cannot pin the
        shift down to the tenth of a pixel that matters.
    """

    combine_type: str = "minmed"
    combine_nhigh: int = 0
    combine_nsigma: str = "4 3"
    driz_cr_snr: str = "3.5 3.0"
    driz_cr_scale: str = "1.2 0.7"
    driz_cr_grow: int = 1
    driz_sep_bits: str = "64"
    skysub: bool = True
    refine_max_exposures: int = 2
    refine_snr: tuple[float, ...] = (4.0, 2.25)
    refine_deriv_scale: float = 0.4
    refine_other_scale: float = 1.5
    grow_snr: float = 3.0
    grow_deriv_scale: float = 0.4
    saturation_grow: int = 2
    min_exposures: int = 2
    num_cores: int = 1
    threads: int = 2
    keep_scratch: bool = False
    align: bool = False
    align_conv_width: float = 0.0
    align_threshold: float = 10.0
    align_good_bits: int = 64
    align_fitgeom: str = "shift"
    align_tolerance: float = 1.0
    align_min_matches: int = 5
    align_max_rms: float = 0.5
    align_max_shift_error: float = 0.03

    #: How the work is run, not what it gives: left out of result comparisons.
    EXECUTION_ONLY = ("num_cores", "threads", "keep_scratch")

    def result_dict(self) -> dict:
        """The settings that decide the labels (JSON types), for reuse checks."""
        d = json.loads(json.dumps(asdict(self)))
        for k in self.EXECUTION_ONLY:
            d.pop(k, None)
        if not self.align:  # unused then: labels made before alignment existed stay reusable
            for k in [k for k in d if k.startswith("align")]:
                d.pop(k)
        d["labeller"] = LABELLER_VERSION
        return d

    def validate(self) -> None:
        """Raise :class:`~crforge.errors.InputError` naming a bad parameter."""
        if self.combine_type not in ("minmed", "median", "mean", "minimum", "imedian", "imean", "iminmed"):
            raise InputError(f"combine_type={self.combine_type!r}: not an AstroDrizzle combine type")
        for name in ("combine_nhigh", "refine_max_exposures", "saturation_grow"):
            if getattr(self, name) < 0:
                raise InputError(f"{name}={getattr(self, name)!r}: expected >= 0")
        if self.min_exposures < 2:
            raise InputError(f"min_exposures={self.min_exposures!r}: CR labels need >= 2")
        if self.threads < 1:
            raise InputError(f"threads={self.threads!r}: expected >= 1")
        if self.num_cores < 1:
            raise InputError(f"num_cores={self.num_cores!r}: expected >= 1")
        if self.grow_snr < 0 or self.grow_deriv_scale < 0:
            raise InputError(f"grow_snr={self.grow_snr!r}, grow_deriv_scale={self.grow_deriv_scale!r}: expected >= 0")
        if len(self.refine_snr) != 2 or not self.refine_snr[0] >= self.refine_snr[1] > 0:
            raise InputError(f"refine_snr={self.refine_snr!r}: expected (seed, grow), seed >= grow > 0")
        self._validate_align()
        for name in ("driz_cr_snr", "driz_cr_scale", "combine_nsigma"):
            parts = str(getattr(self, name)).replace(",", " ").split()
            try:
                ok = len(parts) == 2 and all(float(p) >= 0 for p in parts)
            except ValueError:
                ok = False
            if not ok:
                raise InputError(f"{name}={getattr(self, name)!r}: expected two numbers, e.g. '3.5 3.0'")

    def _validate_align(self) -> None:
        """The ``align_*`` settings."""
        if self.align_fitgeom not in ("shift", "rshift", "rscale", "general"):
            raise InputError(f"align_fitgeom={self.align_fitgeom!r}: expected shift, rshift, rscale "
                             "or general")
        for name in ("align_threshold", "align_tolerance", "align_max_rms", "align_max_shift_error"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name}={getattr(self, name)!r}: expected > 0")
        if not self.align_conv_width >= 0:
            raise InputError(f"align_conv_width={self.align_conv_width!r}: expected pixels > 0 (0: default)")
        if self.align_min_matches < 2:
            raise InputError(f"align_min_matches={self.align_min_matches!r}: expected >= 2")
        if self.align_good_bits < 0:
            raise InputError(f"align_good_bits={self.align_good_bits!r}: expected a sum of DQ bits >= 0")
