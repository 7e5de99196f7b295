"""The ``[train]`` table: settings of one training run, its model and its augmentation.

Standard library only, so that reading a run configuration never imports torch.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, replace
from typing import Literal

from crforge.errors import InputError

__all__ = ["TrainConfig", "ModelConfig", "AugmentConfig", "KINDS", "INPAINT_FILLS", "INPAINT_HEADS",
           "STAR_FIT_INPUTS", "EVAL_N_MASKS", "MAX_CONTEXT", "VIEWS", "check_views"]


#: The two kinds of model.
KINDS = ("mask", "inpaint")

#: How many symmetric views a mask network's probabilities may be averaged over
#: (:meth:`crforge.training.models.MaskNet.predict`).
VIEWS = (1, 2, 4, 8)


def check_views(views, *, name: str = "views") -> int:
    """``views`` as an int if it is one of :data:`VIEWS`; else :class:`InputError` naming ``name``."""
    if isinstance(views, bool) or not isinstance(views, numbers.Integral) or int(views) not in VIEWS:
        raise InputError(f"{name}={views!r}: expected one of {VIEWS} (symmetric views averaged)")
    return int(views)

#: What the mask network may learn a CR to be (``train.target``).
TARGETS = ("labels", "truth", "labels-known")

#: Base fills the inpaint network corrects (``none``: crforge's first, non-residual design).
INPAINT_FILLS = ("median5", "none")

#: How the residual inpaint network applies its correction (``linear``: the first
#: residual design, bounded by where the two base fills disagree; ``both``: the asinh
#: step and that bounded one).
INPAINT_HEADS = ("asinh", "linear", "both")

#: What the star fit gives the inpaint network (``model.star_fit_input``): the fitted
#: point-source and pedestal amplitudes (two channels), or the pedestal's fraction of
#: the fitted light alone (one channel, no amplitude to copy into a core).
STAR_FIT_INPUTS = ("amplitudes", "fraction")
#: how a mask network stretches its normalised input before its first convolution
MASK_STRETCHES = ("linear", "asinh")

#: The largest ``model.context`` (pixels): it adds to how far a tile must overlap.
MAX_CONTEXT = 128

#: ``(low, high)``: the CR masks borrowed for one inpainting mask where nothing is
#: augmented (validation, ``crforge evaluate``): deepCR's 1 to 9.
EVAL_N_MASKS = (1, 9)



@dataclass
class ModelConfig:
    """Architecture of a deepCR network (the ``[train.model]`` table).

    Parameters
    ----------
    depth : int
        Resolution levels of the UNet (deepCR: 2 or 3).
    width : int
        Channels of the first level, doubled at each level down (deepCR: 4 or 32).
    batch_norm : bool
        Batch norm after every 3x3 convolution (deepCR's trained models have it).
    bn_momentum : float
        Momentum of the batch-norm running statistics. deepCR used 0.005 over a long
        run; with the short runs of ``make train`` the running statistics must have
        converged by the time they are frozen (``bn_freeze_epoch``) or used for
        validation, hence PyTorch's 0.1.
    fill : {'median5', 'none'}
        Inpaint network only: the classical fill it starts from and corrects (the 5x5
        masked median), or ``none`` for crforge's first design (masked pixels zeroed,
        the prediction made from scratch), which lost to the classical fills.
    head : {'asinh', 'linear', 'both'}
        Residual inpaint network only: how its correction is applied. ``asinh``: added
        in asinh-compressed units (linear within the sky noise, a factor on bright
        pixels), so that a star's core hidden under a mask can be restored from its
        wings; ``linear``: added in units of where the two base fills disagree (the
        first residual design: on the simulated test stamps about 90% of its remaining
        error was in pixels whose truth lay beyond that bound, docs/training.md);
        ``both``: the asinh correction, then a bounded linear one on top, which the
        network can use where a factor is too coarse (a faint core). Measured on two
        seeds (docs/training.md): the linear head alone beats biharmonic's photometry
        of isolated objects and misses 2x in resolved-galaxy fields; ``both`` meets the
        MSE bars and lowers that photometry's median error. The default ``both``: with
        ``step_floor`` and ``core_guard`` (the defaults too) the ``make train`` model
        holds every bar of issue 13 on the test split, where the asinh head alone
        missed the extragalactic photometry (docs/training.md).
    context : int
        Residual inpaint network only: the half-width (pixels) of a box over which the
        network is also given the mean of its compressed input, a fourth input channel
        that tells a sparse field from a crowded one; its UNet alone sees 9 pixels
        around a pixel (depth 2), too little to know whether a bright pixel beside a
        mask is the wing of a hidden star's core. 0 = no such channel. At 32, on two
        seeds (docs/training.md), it brought the extragalactic photometry's median to
        biharmonic's and lost the 2x bar in resolved-galaxy fields, hence off.
    step_floor : float
        Residual inpaint network only: asinh steps (``head`` ``asinh`` or ``both``)
        smaller than this are not applied when the network is evaluated (validation,
        ``crforge evaluate``, ``crforge clean``; never while training, where the step
        grows out of zero). The trained network's small steps over a bright object are
        a jitter of a few per cent that costs isolated galaxies their photometry; a
        star's core restored from its wings takes steps above 1. 0.2 by default (and in
        the shipped model), chosen on the validation split (docs/training.md), for
        ``head='both'``, whose linear correction carries the small corrections. With
        the asinh head alone the small steps are those corrections too (a resolved
        galaxy's diffuse light): 0.2 took such a ``make train`` model's resolved-galaxy
        ratio from 2.06x to 1.996x; set 0 (every step applied) for that head.
    star_fit : float
        Residual inpaint network only: the sigma (pixels) of a Gaussian point source
        fitted with a pedestal to the visible pixels around every masked pixel; the fitted
        point-source and pedestal amplitudes are two more input channels, which tell a
        star (no pedestal) from a galaxy's core (:func:`crforge.training.models.star_fit`).
        0 = no such channels. At 0.85 (ACS/WFC's PSF core), on the default data set
        (docs/training.md), it took the extragalactic photometry's 90th percentile
        below biharmonic's and lost the 2x bar in globular-cluster fields (crowded
        neighbours inside the fitted window), hence off.
    star_fit_input : {'amplitudes', 'fraction'}
        With ``star_fit``: what the network is given of the fit (:data:`STAR_FIT_INPUTS`).
        ``amplitudes``: ``asinh(a / 0.1)`` and ``asinh(b / 0.1)`` (point source,
        pedestal); ``fraction``: ``b / (|a| + |b| + 0.1)`` alone, which says whether a
        hidden core is a star's without an amplitude the network could copy into it.
        Measured side by side in docs/training.md.
    core_guard : float
        Residual inpaint network, asinh step only, when the network is evaluated (an
        inference setting like ``step_floor``): where a point source fitted with a
        pedestal to the visible pixels around a masked pixel (as ``star_fit``, sigma
        ``core_guard_sigma``; centred on the pixel and on each of its 8 neighbours, the
        smallest kept) puts more than this fraction of the light in the pedestal,
        measured above the visible pixels 4 to 10 pixels away
        (:meth:`crforge.training.models.InpaintNet.pedestal`), no positive asinh step is
        applied. Such pixels are in a compact galaxy's core, which the network can fill
        as a hidden star's, up to twice the visible peak; a star's core reads about
        0.001, on empty sky or on diffuse light. 0 = off. 0.03 by default (and in the
        shipped model), chosen on the validation split (docs/training.md); with the
        asinh head alone, whose small positive steps are fine corrections it would hold
        back, set 0. Fitted only where the network takes a positive step.
    core_guard_sigma : float
        The sigma (pixels) of the point source ``core_guard`` fits: ACS/WFC's core.
    stretch : {'linear', 'asinh'}
        Mask network only: what its first convolution sees of the normalised image
        (:data:`MASK_STRETCHES`). ``linear``: the image itself (deepCR); ``asinh``:
        ``asinh(x)``, linear within 1 (the normalisation's ``scale``, 100 electrons) and
        logarithmic above, so that a 3x3 filter's difference of neighbours measures how
        sharp a peak is (a ratio of pixels) whatever its brightness: a cosmic ray is
        sharper than any star of any brightness, and a narrow network cannot divide.
        A model with ``asinh`` cannot be exported to deepCR, whose network has no such
        step.
    """

    depth: int = 2
    width: int = 32
    batch_norm: bool = True
    bn_momentum: float = 0.1
    fill: str = "median5"
    head: str = "both"
    context: int = 0
    step_floor: float = 0.2
    star_fit: float = 0.0
    star_fit_input: str = "amplitudes"
    core_guard: float = 0.03
    core_guard_sigma: float = 0.85
    stretch: str = "linear"

    def validate(self) -> None:
        """Raise ``ValueError`` naming a bad parameter."""
        if not 1 <= self.depth <= 6:
            raise InputError(f"model.depth={self.depth!r}: expected 1..6")
        if self.width < 1:
            raise InputError(f"model.width={self.width!r}: expected >= 1")
        if not 0 < self.bn_momentum <= 1:
            raise InputError(f"model.bn_momentum={self.bn_momentum!r}: expected (0, 1]")
        if self.fill not in INPAINT_FILLS:
            raise InputError(f"model.fill={self.fill!r}: expected one of {INPAINT_FILLS}")
        if self.head not in INPAINT_HEADS:
            raise InputError(f"model.head={self.head!r}: expected one of {INPAINT_HEADS}")
        if not 0 <= self.context <= MAX_CONTEXT:
            raise InputError(f"model.context={self.context!r}: expected 0 to {MAX_CONTEXT} pixels")
        if not (isinstance(self.step_floor, (int, float)) and 0 <= self.step_floor < 1):
            raise InputError(f"model.step_floor={self.step_floor!r}: expected a number in [0, 1) "
                             "(asinh units)")
        if not (isinstance(self.star_fit, (int, float)) and 0 <= self.star_fit <= 3):
            raise InputError(f"model.star_fit={self.star_fit!r}: expected 0 (off) or a PSF sigma "
                             "up to 3 pixels")
        if not (isinstance(self.core_guard, (int, float)) and 0 <= self.core_guard < 1):
            raise InputError(f"model.core_guard={self.core_guard!r}: expected 0 (off) or a pedestal "
                             "fraction in (0, 1)")
        if not (isinstance(self.core_guard_sigma, (int, float)) and 0 < self.core_guard_sigma <= 3):
            raise InputError(f"model.core_guard_sigma={self.core_guard_sigma!r}: expected a PSF sigma "
                             "in (0, 3] pixels")
        if self.stretch not in MASK_STRETCHES:
            raise InputError(f"model.stretch={self.stretch!r}: expected one of {MASK_STRETCHES}")
        if self.star_fit_input not in STAR_FIT_INPUTS:
            raise InputError(f"model.star_fit_input={self.star_fit_input!r}: expected one of "
                             f"{STAR_FIT_INPUTS}")


@dataclass
class AugmentConfig:
    """Augmentation of the training stamps (the ``[train.augment]`` table).

    Parameters
    ----------
    sky_range : tuple of float
        ``(low, high)``: add ``f * sky`` with ``f`` uniform in this range (deepCR:
        -0.9 to 3). ``(0, 0)`` turns sky augmentation off.
    sky_noise : bool
        Add Gaussian noise of variance ``f * sky`` when ``f > 0`` (noise consistent
        with the brighter sky).
    flip : bool
        Random horizontal flip.
    rot90 : bool
        Random rotation by a multiple of 90 degrees (with ``flip``: all 8 symmetries).
    n_masks : tuple of int
        ``(low, high)``: a training inpainting mask is the union of this many
        (inclusive, uniform) CR masks of other stamps. deepCR trained and evaluated on
        1 to 9 (:data:`EVAL_N_MASKS`, which validation and ``crforge evaluate`` keep);
        4 to 20 puts about 2.5 times as many masked pixels, and so as much signal, in
        every training step at about the same cost (docs/training.md).
    star_masks : float
        The probability that a borrowed CR mask is shifted so that one of its CR
        pixels lands on one of the stamp's brightest peaks (a star's core) rather than
        where it fell: a CR on a star's core is what classical fills do worst and what
        the network must learn most, and random placement gives it rarely.
    star_mask_offset : int
        Where ``star_masks`` puts that CR pixel: on the peak (0), or on a pixel drawn
        uniformly within this many pixels of it (in x and y; at most 8), so that the
        network also sees masks beside a visible peak, where a CR hits a star or
        galaxy most often and where a fill above the peak is wrong. At 2 it did not
        improve the photometry of isolated objects (docs/training.md), hence off.
    star_crs : float
        Mask network, simulated data sets only: the probability that a training stamp
        gets up to 8 (:data:`crforge.training.data.STAR_CRS`) cosmic rays of another
        stamp, cut out by their injected charge, added 1-3 pixels from its brightest
        peaks and labelled where they stand 5 sigma above the star's noise. On real
        frames the hits the networks miss are small CRs on the wings of stars, which
        the simulated visits give rarely and their AstroDrizzle labels often miss; at
        0.5 it did not raise TPR on the real ACS/HRC frame (docs/real-pixels.md, run
        q3), hence off by default.
    cr_boost : float
        Mask network, simulated data sets only: the probability that a training
        stamp's own cosmic rays are brightened, each (8-connected group of injected
        charge) by a factor drawn log-uniformly between 1 and ``cr_boost_max``; their
        pixels that then stand 5 sigma above the noise are labelled CRs, their fainter
        ones weigh nothing. The simulated hits rarely peak above 3,000 e- while real
        ones often do (docs/real-pixels.md). At 0.3 it raised the network's probability
        at bright real hits, and at the rims of saturated stars with it; once the
        network saw ignored pixels as they are it added little (runs b3 and fb3),
        hence off by default.
    cr_boost_max : float
        The largest factor of ``cr_boost`` (> 1).
    """

    sky_range: tuple[float, float] = (-0.9, 3.0)
    sky_noise: bool = True
    flip: bool = True
    rot90: bool = True
    n_masks: tuple[int, int] = (4, 20)
    star_masks: float = 0.25
    star_mask_offset: int = 0
    star_crs: float = 0.0
    cr_boost: float = 0.0
    cr_boost_max: float = 30.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming a bad parameter."""
        lo, hi = self.sky_range
        if not lo <= hi:
            raise InputError(f"augment.sky_range={self.sky_range!r}: expected low <= high")
        if lo < -1:
            raise InputError(f"augment.sky_range={self.sky_range!r}: low < -1 would make "
                             "the sky negative")
        a, b = self.n_masks
        if not 1 <= a <= b:
            raise InputError(f"augment.n_masks={self.n_masks!r}: expected 1 <= low <= high")
        if not 0 <= self.star_masks <= 1:
            raise InputError(f"augment.star_masks={self.star_masks!r}: expected [0, 1]")
        if not 0 <= self.star_mask_offset <= 8:
            raise InputError(f"augment.star_mask_offset={self.star_mask_offset!r}: expected 0 to 8 pixels")
        if not 0 <= self.star_crs <= 1:
            raise InputError(f"augment.star_crs={self.star_crs!r}: expected [0, 1]")
        if not 0 <= self.cr_boost <= 1:
            raise InputError(f"augment.cr_boost={self.cr_boost!r}: expected [0, 1]")
        if not self.cr_boost_max > 1:
            raise InputError(f"augment.cr_boost_max={self.cr_boost_max!r}: expected > 1")


@dataclass
class TrainConfig:
    """Settings of one training run (the ``[train]`` table).

    Parameters
    ----------
    kind : {'mask', 'inpaint'}
        Which network (``crforge train --kind`` sets it).
    model : ModelConfig
        Architecture (``[train.model]``).
    augment : AugmentConfig
        Augmentation of the training stamps (``[train.augment]``).
    epochs : int
        Epochs to train: the mask network's under ``crforge train`` (the inpaint
        network's are ``inpaint_epochs``, see :meth:`for_kind`).
    inpaint_epochs : int
        Epochs of the inpaint network under ``crforge train``. An inpaint step costs
        about half a mask step on a CPU and the network keeps improving for longer:
        with the running average of its weights (``inpaint_ema``), two seeds of 18
        epochs both reached 2x below the best classical fill's MSE in globular-cluster
        and resolved-galaxy fields, of 12 epochs one did (docs/training.md).
    batch_size : int
        Stamps per optimisation step.
    stamps_per_epoch : int
        Training stamps per epoch, a different random subset each epoch (0 = the whole
        split); bounds the time of an epoch on a large data set.
    lr : float
        Adam's learning rate (deepCR: 0.005).
    weight_decay : float
        Adam's L2 weight decay.
    clip_grad_norm : float
        Largest gradient norm of a step (0 = no clipping).
    schedule : {'constant', 'step', 'cosine'}
        Learning-rate schedule over epochs.
    step_epochs : int
        ``step``: multiply the rate by ``gamma`` every this many epochs.
    gamma : float
        ``step``: the factor.
    min_lr_factor : float
        ``cosine``: the factor reached at the last epoch.
    bn_freeze_epoch : int
        First epoch (0-based) of the second phase, where the batch-norm layers use
        frozen running statistics; 0 = never; -1 (default) = ``epochs // 2`` for the
        inpaint network and never for the mask network (see :meth:`freeze_epoch`).
    bn_freeze_lr_factor : float
        Learning-rate factor of the second phase.
    norm_scale : float
        Input normalisation ``(image - sky) / norm_scale`` (image unit, e.g.
        electrons); stored with the model.
    fill_ignored : bool
        Mask network: set ignored pixels of the input to the sky (see
        :mod:`crforge.training.data`). Off by default: the network sees saturated stars
        and bad pixels as they are, as deepCR's published models do. Filled with the
        sky, a saturated star becomes a hole inside a ring of bright star light: with
        it on, the `make train` model's false positives on the real ACS/HRC frame
        crowded around saturated stars and its bright real hits scored low
        (docs/real-pixels.md, run f0).
    inpaint_fill_ignored : bool
        The same for the inpaint network (on: an ignored pixel cannot steer the fill).
    keep_sky : bool
        Give the mask network ``image / norm_scale`` with its sky, as deepCR does, instead
        of the sky-subtracted image: it then sees the sky level, and so the noise a pixel
        can have (:func:`crforge.training.data.network_input`). The inpaint network
        always sees the sky-subtracted image.
    inpaint_loss : {'relative', 'mse'}
        The inpaint network's loss: each stamp's squared error relative to that of the
        base fill (the masked median) on the same pixels, averaged over stamps
        (``relative``), or the squared error over all masked pixels of the batch
        (``mse``, deepCR's), which crowded fields dominate
        (:mod:`crforge.training.train`).
    inpaint_lr_factor : float
        Learning-rate factor of the residual inpaint network (``model.fill`` not
        ``none``): at ``lr`` itself its first steps, on crowded stamps whose errors are
        10^4 times those of flat sky, threw its fills far off (measured: validation MSE
        7x the masked median's after one epoch). With the asinh head (``model.head``)
        and stars under a quarter of the training masks (``augment.star_masks``), 0.4
        did better than 0.2 (docs/training.md).
    inpaint_flux_weight : float
        Weight of a second term of the relative inpaint loss: the absolute fractional
        aperture-flux error of every object a mask touches, relative to the base fill's
        (:func:`crforge.training.train.flux_inpaint_loss`; 0 = none). The squared pixel
        error lets bright star cores decide what the network does to every masked peak;
        this term weighs each object by the photometry error it would get.
    inpaint_ema : float
        Decay per step of the running average of the inpaint network's weights that
        the run validates, saves and publishes (:mod:`crforge.training.averaging`);
        0 = none (the weights of the epoch's last step, as the mask network).
    target : {'labels', 'truth', 'labels-known'}
        What the mask network learns a CR to be: the data set's AstroDrizzle labels, or,
        for simulated data sets only, the injected cosmic rays (``truth``) of at least
        ``truth_min_bin`` (2: 3-5 sigma; fainter injected charge then weighs nothing),
        which the labels miss where they are hard to find (on stars, in crowding), or
        the labels with the injected charge they leave unlabelled weighing nothing
        (``labels-known``, simulated only): a CR the labels missed is then no lesson
        either way. On real frames both alternatives raise TPR against the STIS pair
        difference and lower it against AstroDrizzle's ACS/HRC flags
        (docs/real-pixels.md, runs p6 and q4).
    truth_min_bin : int
        See ``target``: 2 (3-5 sigma), 3 (5-10) or 4 (> 10).
    cr_fringe : float
        Mask network, simulated data sets only (a data set without truth, real data, is
        taught its labels as they are, with a log line): the target probability of each taught
        CR's fringe, the pixels next to it that hold injected charge of the same stamp's
        cosmic rays which the target leaves out (:func:`crforge.training.data.cr_fringe`);
        0 = none, 1 = the CRs grown by a pixel. The labels stop where a hit falls below
        about 3 sigma; the STIS pair difference and deepCR's masks reach a pixel further.
        A fringe taught as certain costs ACS/HRC TPR, taught as uncertain it keeps it
        (docs/real-pixels.md, runs g1, s1, s3 and f15).
    star_weight : float
        Mask network, simulated data sets only: the extra loss weight of the pixels of
        star cores that are not CRs, the 3x3 around each peak of the stamp's noiseless
        pixels more than 10 sigma above its sky's noise
        (:func:`crforge.training.data.star_cores`); a core pixel weighs
        ``1 + star_weight``. 0 (default) = none.
    val_fpr : float
        False-positive rate of the mask model's validation TPR (deepCR: 0.005).
    val_stamps : int
        Validate on this many stamps, evenly spaced over the split (0 = all).
    seed : int
        Seed of the weights, the data order and the augmentation.
    device : {'auto', 'cpu', 'cuda'}
        ``auto``: CUDA when available.
    amp : bool
        Automatic mixed precision (float16, with gradient scaling) on CUDA; ignored
        on the CPU.
    cpu_bf16 : {'auto', 'on', 'off'}
        bfloat16 autocast of the training steps on the CPU. ``auto`` (default) turns
        it on where the CPU has bfloat16 instructions (AVX512-BF16/AMX, as oneDNN
        reports), where it is about 2x faster at the same validation loss
        (``benchmarks/train_throughput.py``), and off elsewhere, where it would be
        emulated and slow. Validation stays float32.
    num_workers : int
        DataLoader worker processes (0 = load in the training process); -1 (default) =
        automatic: none on the CPU, where workers would take cores from the network, and on
        a GPU enough to keep it fed (:meth:`workers`).
    threads : int
        ``torch.set_num_threads`` for the run (0 = leave torch's default).
    channels_last : bool
        Keep the network's tensors in channels-last memory layout: the same numbers,
        about 1.5x faster convolutions on the CPU (oneDNN).
    init_mask, init_inpaint : str
        Weights the network of that kind starts from (``crforge train --init`` wins):
        ``deepcr:ACS-WFC`` (deepCR 0.3.1's published mask model, trained by Zhang & Bloom
        on real ACS/WFC exposures; a 2-32 network with batch norm; its fast 2-4 file is
        ``deepcr:ACS-WFC-F606W-2-4``), a crforge checkpoint
        or zoo weights file of the same kind and architecture, or empty for a seeded
        random start. The mask default starts from deepCR's real-data weights: measured
        on real HST frames (docs/real-pixels.md), fine-tuning them on simulated visits
        beats a random start by a wide margin.
    teacher_mask : str
        Mask network only: a trained mask model whose probabilities the network also
        learns (knowledge distillation): ``deepcr:ACS-WFC`` or a crforge checkpoint or
        zoo weights file with this run's input normalisation, of any architecture; empty
        for none. For a network that cannot start from deepCR's weights (the 2-4 one),
        so that it learns what the fine-tuned 2-32 network does on the same stamps.
    teacher_weight : float
        With ``teacher_mask``: the target of a pixel is ``(1 - w) * label + w * p``, with
        ``p`` the teacher's probability.
    teacher_views : int
        With ``teacher_mask``: ``p`` is the mean of the teacher's probabilities over this
        many symmetric views of the stamp (1, 2, 4 or 8;
        :meth:`~crforge.training.models.MaskNet.predict`), each costing one teacher pass.
        Views ask a single pass of the student for what the view average of the teacher
        does: the average ranks the pixels a network is least sure of better.
    """

    kind: Literal["mask", "inpaint"] = "mask"
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # sized for `make train` on 2 CPU cores (<= 20 min for both models at about 3
    # stamps/s): 6 x 256 stamps = 96 steps of 16; raise both on a GPU
    epochs: int = 6
    inpaint_epochs: int = 18
    batch_size: int = 16
    stamps_per_epoch: int = 256
    lr: float = 0.005
    weight_decay: float = 0.0
    clip_grad_norm: float = 1.0
    schedule: Literal["constant", "step", "cosine"] = "cosine"
    step_epochs: int = 10
    gamma: float = 0.1
    min_lr_factor: float = 0.05
    bn_freeze_epoch: int = -1
    bn_freeze_lr_factor: float = 0.4
    norm_scale: float = 100.0
    fill_ignored: bool = False
    inpaint_fill_ignored: bool = True
    keep_sky: bool = True
    inpaint_loss: Literal["relative", "mse"] = "relative"
    inpaint_lr_factor: float = 0.4
    inpaint_flux_weight: float = 0.0
    inpaint_ema: float = 0.9
    target: Literal["labels", "truth", "labels-known"] = "labels"
    truth_min_bin: int = 2
    cr_fringe: float = 0.15
    star_weight: float = 0.0
    val_fpr: float = 0.005
    val_stamps: int = 96
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    cpu_bf16: Literal["auto", "on", "off"] = "auto"
    num_workers: int = -1
    threads: int = 0
    channels_last: bool = True
    init_mask: str = "deepcr:ACS-WFC"
    init_inpaint: str = ""
    teacher_mask: str = ""
    teacher_weight: float = 0.5
    teacher_views: int = 1

    def for_kind(self, kind: Literal["mask", "inpaint"]) -> "TrainConfig":
        """The settings of the run of one network: ``kind`` set, ``epochs`` its own."""
        if kind not in KINDS:
            raise InputError(f"kind={kind!r}: expected one of {KINDS}")
        return replace(self, kind=kind, epochs=self.inpaint_epochs if kind == "inpaint" else self.epochs)

    def fills_ignored(self) -> bool:
        """Whether this run's network sees its ignored pixels as the sky (``fill_ignored``)."""
        return self.fill_ignored if self.kind == "mask" else self.inpaint_fill_ignored

    def sky_kept(self) -> bool:
        """Whether this run's network sees the image with its sky (``keep_sky``, mask only)."""
        return self.keep_sky and self.kind == "mask"

    def data_options(self) -> dict:
        """What :class:`~crforge.training.data.StampDataset` needs to give this run's network
        its input and targets (keyword arguments), so that the data set keeps no defaults
        of its own beside these."""
        return {"norm_scale": self.norm_scale, "fill_ignored": self.fills_ignored(), "keep_sky": self.sky_kept(),
                "target": self.target if self.kind == "mask" else "labels", "truth_min_bin": self.truth_min_bin,
                "cr_fringe": self.cr_fringe, "star_weight": self.star_weight if self.kind == "mask" else 0.0}

    def init(self) -> str | None:
        """The starting weights of this run's kind (None: a seeded random start)."""
        return (self.init_mask if self.kind == "mask" else self.init_inpaint) or None

    def workers(self, device) -> int:
        """DataLoader workers on ``device`` (a ``torch.device``), resolving -1 (auto).

        On a GPU: up to 8 per training process, within the CPU cores this process may use
        divided among the node's processes (``LOCAL_WORLD_SIZE`` under ``torchrun``).
        """
        import os

        if self.num_workers >= 0:
            return self.num_workers
        if getattr(device, "type", device) != "cuda":
            return 0
        per_node = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
        # the cores this process may use (sched_getaffinity is Linux-only)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(8, cores // per_node - 1))

    def freeze_epoch(self) -> int:
        """The effective ``bn_freeze_epoch`` (0 = never), resolving -1 (auto) by ``kind``."""
        if self.bn_freeze_epoch >= 0:
            return self.bn_freeze_epoch
        return self.epochs // 2 if self.kind == "inpaint" and self.model.batch_norm else 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming a bad parameter."""
        self.model.validate()
        self.augment.validate()
        for name in ("epochs", "inpaint_epochs", "batch_size", "step_epochs"):
            if getattr(self, name) < 1:
                raise InputError(f"train.{name}={getattr(self, name)!r}: expected >= 1")
        if self.bn_freeze_epoch < -1:
            raise InputError(f"train.bn_freeze_epoch={self.bn_freeze_epoch!r}: expected >= 0, or -1 (auto)")
        if self.num_workers < -1:
            raise InputError(f"train.num_workers={self.num_workers!r}: expected >= 0, or -1 (auto)")
        for name in ("stamps_per_epoch", "val_stamps", "threads",
                     "weight_decay", "clip_grad_norm", "star_weight"):
            if getattr(self, name) < 0:
                raise InputError(f"train.{name}={getattr(self, name)!r}: expected >= 0")
        if not 0 <= self.teacher_weight <= 1:
            raise InputError(f"train.teacher_weight={self.teacher_weight!r}: expected [0, 1]")
        check_views(self.teacher_views, name="train.teacher_views")
        for name in ("lr", "norm_scale", "gamma", "bn_freeze_lr_factor", "inpaint_lr_factor"):
            if not getattr(self, name) > 0:
                raise InputError(f"train.{name}={getattr(self, name)!r}: expected > 0")
        if not 0 <= self.inpaint_ema < 1:
            raise InputError(f"train.inpaint_ema={self.inpaint_ema!r}: expected [0, 1)")
        if not 0 < self.min_lr_factor <= 1:
            raise InputError(f"train.min_lr_factor={self.min_lr_factor!r}: expected (0, 1]")
        if not 0 < self.val_fpr < 1:
            raise InputError(f"train.val_fpr={self.val_fpr!r}: expected (0, 1)")
        if not (isinstance(self.inpaint_flux_weight, (int, float)) and 0 <= self.inpaint_flux_weight <= 100):
            raise InputError(f"train.inpaint_flux_weight={self.inpaint_flux_weight!r}: "
                             "expected a number in [0, 100]")
        if self.inpaint_loss not in ("relative", "mse"):
            raise InputError(f"train.inpaint_loss={self.inpaint_loss!r}: expected 'relative' or 'mse'")
        if self.target not in TARGETS:
            raise InputError(f"train.target={self.target!r}: expected one of {TARGETS}")
        if self.truth_min_bin not in (1, 2, 3, 4):
            raise InputError(f"train.truth_min_bin={self.truth_min_bin!r}: expected 1, 2, 3 or 4")
        if isinstance(self.cr_fringe, bool) or not (isinstance(self.cr_fringe, (int, float))
                                                    and 0 <= self.cr_fringe <= 1):
            raise InputError(f"train.cr_fringe={self.cr_fringe!r}: expected a number in [0, 1]")
