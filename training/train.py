"""Train deepCR-mask and deepCR-inpaint on an HDF5 training set (``crforge train``).

One run trains one network on the file's ``train`` split and validates it on its
``val`` split after every epoch (the splits are the file's; nothing is re-split)::

    runs/<run>/config.toml      the resolved configuration ([train] table)
    runs/<run>/train.log        what happened, one line per event
    runs/<run>/metrics.jsonl    one JSON line per epoch (losses, lr, TPR, timing)
    runs/<run>/last.pt          after every epoch: everything needed to resume
    runs/<run>/best.pt          the best epoch: the lowest validation loss (mask), or
                                the lowest MSE relative to the base fill (inpaint)

Losses
    mask: binary cross-entropy on the logits, weighted by ``weight`` (0 on ignored
    pixels, which therefore contribute neither loss nor gradient), divided by the sum
    of the weights. inpaint: squared error under ``loss_mask`` (the borrowed CR masks
    minus ignored pixels and, against observed values, the stamp's own CRs; deepCR
    eq. 2) against ``target`` (the noiseless pixels of a simulated data set, else the
    observed ones). ``inpaint_loss='relative'`` (default) divides each stamp's squared
    error by that of the network's base fill (the masked median) on the same pixels
    and averages over stamps, so that a flat-sky stamp, where the fill is already
    close, weighs as much as a crowded one, where its errors are 10^4 times larger
    (plain MSE over the batch, ``'mse'``, is all crowded fields: the network then
    learnt to add noise to flat sky). The inpaint network's input mask is the
    borrowed mask together with the stamp's own CRs, so that it never sees CR charge,
    as at inference where every CR is masked. Validation reports the plain MSE, and
    per field type its ratio to the base fill's; the geometric mean of those ratios
    (``val_score``) chooses the inpaint network's best epoch.

Weight averaging
    With ``inpaint_ema`` (default 0.9 per step) the inpaint network that is validated,
    saved as the checkpoints' model and published is the running average of the
    trained weights over the last steps (:mod:`crforge.training.averaging`); the
    trained weights travel in ``last.pt`` too, so a resumed run continues both.

Schedule
    Adam; the learning rate is ``lr`` times a per-epoch factor: ``constant``,
    ``step`` (``gamma`` every ``step_epochs``) or ``cosine`` (down to
    ``min_lr_factor``). The paper's two-phase batch norm: from epoch
    ``bn_freeze_epoch`` on (0 = never) the batch-norm layers use and keep their
    running statistics (eval mode) while the rest trains on, with the learning rate
    multiplied by ``bn_freeze_lr_factor`` (deepCR: 1/2.5). The default (-1, "auto")
    freezes the inpaint network from half-way and never the mask network: a regression
    network trained on batch statistics alone learns the batch-mean background of the
    sky-augmented batches, and in eval mode it was off by a constant 0.8 x sky on
    extragalactic stamps (measured; MSE 5x that of a masked median), which the second
    phase removes; the mask network's sigmoid output does not care.

Determinism and resuming
    The weights are initialised from ``seed``; the data order depends only on (seed,
    epoch) and every augmentation draw on (seed, epoch, stamp), so a run stopped after
    any epoch and resumed (``--resume``, from ``last.pt``: model, optimizer,
    scheduler, gradient scaler, Python/NumPy/torch RNG states, step, epoch) ends with
    the same weights as an uninterrupted one (on the same device and thread count).

The checkpoints' format is :mod:`crforge.training.checkpoint`'s: they hold the model's
architecture and normalisation, so :func:`crforge.training.checkpoint.load_checkpoint`
rebuilds the model from the file alone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from crforge import atomic, interrupts
from crforge.errors import InputError
from crforge.lock import hold
from crforge.pipeline.datafile.validate import require_valid
from crforge.training import checkpoint
from crforge.training import distributed as ddp
from crforge.training.averaging import WeightAverage
from crforge.training.config import TrainConfig
from crforge.training.data import EpochSampler, StampDataset, normalisation_info
from crforge.training.metrics import rates_at_threshold, tpr_at_fpr
from crforge.training.models import build_model

logger = logging.getLogger(__name__)

__all__ = ["train_one_epoch", "evaluate", "main", "mask_loss", "inpaint_loss", "relative_inpaint_loss", "batch_loss",
           "lr_factor", "cpu_bf16_enabled"]

# config keys that may differ when resuming: they do not change the numbers
# (epochs: a run may be extended; the lr schedule is recomputed from the new value)
_RESUMABLE_CHANGES = {"epochs", "inpaint_epochs", "num_workers", "device", "threads", "init_mask", "init_inpaint"}


# --------------------------------------------------------------------------- losses


def mask_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
              reduction: Literal["mean", "sum"] = "mean"):
    """Weighted binary cross-entropy of the mask network.

    Parameters
    ----------
    logits, target, weight : torch.Tensor
        Same shape; ``target`` 1 = CR; ``weight`` 0 on ignored pixels.
    reduction : {'mean', 'sum'}
        ``mean``: the weighted sum divided by the sum of the weights (a batch of only
        ignored pixels gives 0). ``sum``: ``(weighted sum, sum of weights)``.

    Notes
    -----
    An ignored pixel gets weight 0, so neither its label nor its logit changes the
    loss or its gradient (its BCE term is computed and multiplied by 0; the
    cross-entropy with logits is finite for any finite logit).
    """
    if logits.shape != target.shape or logits.shape != weight.shape:
        raise InputError(f"logits, target, weight: shapes differ ({tuple(logits.shape)}, "
                         f"{tuple(target.shape)}, {tuple(weight.shape)})")
    # a label under weight 0 may be anything (NaN included): make it harmless first
    target = torch.where(weight > 0, target, torch.zeros_like(target))
    terms = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    total = (terms * weight).sum()
    wsum = weight.sum()
    if reduction == "sum":
        return total, wsum
    return total / wsum.clamp_min(1.0)


def inpaint_loss(pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor,
                 reduction: Literal["mean", "sum"] = "mean"):
    """Squared error of the inpaint network under ``loss_mask`` (deepCR eq. 2).

    Parameters
    ----------
    pred, target, loss_mask : torch.Tensor
        Same shape; ``loss_mask`` is 1 under the borrowed mask and outside the
        stamp's own CRs and ignored pixels (:class:`crforge.training.data.StampDataset`).
    reduction : {'mean', 'sum'}
        ``mean``: divided by the number of pixels in the mask (0 when empty).
        ``sum``: ``(sum of squares, pixel count)``.
    """
    if pred.shape != target.shape or pred.shape != loss_mask.shape:
        raise InputError(f"pred, target, loss_mask: shapes differ ({tuple(pred.shape)}, "
                         f"{tuple(target.shape)}, {tuple(loss_mask.shape)})")
    inside = loss_mask > 0
    # where(): values outside the mask (a CR's charge, NaN) never reach the sum
    diff = torch.where(inside, pred.float() - target.float(), torch.zeros_like(pred, dtype=torch.float32))
    total = (diff * diff).sum()
    count = inside.sum().to(torch.float32)
    if reduction == "sum":
        return total, count
    return total / count.clamp_min(1.0)


def relative_inpaint_loss(pred: torch.Tensor, base: torch.Tensor, target: torch.Tensor,
                          loss_mask: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Mean over stamps of the squared error under ``loss_mask`` relative to ``base``'s.

    ``sum((pred - target)^2) / (sum((base - target)^2) + eps * n)`` per stamp (``n`` its
    masked pixels; ``eps`` in normalised units squared keeps a perfect base finite),
    averaged over the stamps with masked pixels: 1 for the base fill itself.
    """
    inside = loss_mask > 0
    zero = torch.zeros_like(pred, dtype=torch.float32)
    err = torch.where(inside, pred.float() - target.float(), zero)
    ref = torch.where(inside, base.float() - target.float(), zero)
    dims = tuple(range(1, pred.dim()))
    n = inside.sum(dim=dims).to(torch.float32)
    se, se_base = (err * err).sum(dim=dims), (ref * ref).sum(dim=dims) + eps * n
    ratio = se / se_base.clamp_min(1e-12)
    has = n > 0
    per_stamp = (ratio * has).sum() / has.sum().clamp_min(1)
    # the batch's error relative to the base's: the MSE, made 1 at the start (crowded stamps lead it)
    return per_stamp + se.sum() / se_base.sum().clamp_min(1e-12)


def flux_inpaint_loss(pred: torch.Tensor, base: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor,
                      radius: int = 3, min_peak: float = 1.0) -> torch.Tensor:
    """Fractional aperture-flux error of the objects a mask touches, relative to ``base``'s.

    At every peak of ``target`` (a 3x3 local maximum above ``min_peak``, normalised
    units) whose aperture (a disc of ``radius`` pixels, the aperture of
    :mod:`crforge.training.evaluate.photometry`) holds masked pixels: the absolute error
    of the aperture's sum over the target's, summed over the batch and divided by the
    same for the base fill; 0 without such a peak. Each object weighs by its fractional
    error, as in the photometry, where the squared error of the pixels lets bright star
    cores outweigh fainter, smoother galaxies.
    """
    inside = (loss_mask > 0).float()
    r = int(radius)
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    disc = ((yy ** 2 + xx ** 2) <= radius ** 2).float().to(pred.device)[None, None]
    t = target.float()
    flux = F.conv2d(t, disc, padding=r)
    peak = (t == F.max_pool2d(t, 3, stride=1, padding=1)) & (t > min_peak)
    site = peak & (F.conv2d(inside, disc, padding=r) > 0)
    if not bool(site.any()):
        return pred.sum() * 0.0
    denom = flux.clamp_min(min_peak)[site]
    fe = F.conv2d((pred.float() - t) * inside, disc, padding=r)[site] / denom
    fe_base = F.conv2d((base.float() - t) * inside, disc, padding=r)[site] / denom
    return fe.abs().sum() / fe_base.abs().sum().clamp_min(1e-12)


def _inpaint_mask(batch: dict) -> torch.Tensor:
    """The inpaint network's input mask: the borrowed mask and the stamp's own CRs
    (hidden from the input too: at inference every CR is masked)."""
    return torch.maximum(batch["mask"], batch["cr"])


def batch_loss(model: nn.Module, batch: dict, kind: str, reduction: Literal["mean", "sum"] = "mean",
               *, relative: bool = False, flux_weight: float = 0.0):
    """Run ``model`` on a collated batch (already on the device) and return its loss.

    ``relative`` (inpaint, ``reduction='mean'``): :func:`relative_inpaint_loss` against
    the network's base fill instead of the MSE.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        As :func:`mask_loss` / :func:`inpaint_loss`; with ``reduction='sum'`` the
        network output is returned too: ``(sum, count, output)``.
    """
    if kind == "mask":
        out = model(batch["image"])
        loss = mask_loss(out, batch["cr"], batch["weight"], reduction)
    elif kind == "inpaint":
        mask_in = _inpaint_mask(batch)
        out = model(batch["image"], mask_in)
        # the noiseless pixels where the data set has them (simulated), else the observed
        target = batch.get("target", batch["image"])
        if relative and reduction == "mean":
            base = ddp.unwrap(model).base(batch["image"], mask_in)
            loss = relative_inpaint_loss(out, base, target, batch["loss_mask"])
            if flux_weight:
                loss = loss + flux_weight * flux_inpaint_loss(out, base, target, batch["loss_mask"])
        else:
            loss = inpaint_loss(out, target, batch["loss_mask"], reduction)
    else:
        raise InputError(f"kind={kind!r}: expected 'mask' or 'inpaint'")
    return (*loss, out) if reduction == "sum" else loss


# --------------------------------------------------------------------------- schedule


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """The learning-rate factor of ``epoch`` (0-based): schedule times phase."""
    if cfg.schedule == "constant":
        f = 1.0
    elif cfg.schedule == "step":
        f = cfg.gamma ** (epoch // cfg.step_epochs)
    elif cfg.schedule == "cosine":
        t = min(epoch / max(cfg.epochs - 1, 1), 1.0)
        f = cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t))
    else:
        raise InputError(f"train.schedule={cfg.schedule!r}: expected constant, step or cosine")
    if cfg.freeze_epoch() and epoch >= cfg.freeze_epoch():
        f *= cfg.bn_freeze_lr_factor
    if cfg.kind == "inpaint" and cfg.model.fill != "none":
        f *= cfg.inpaint_lr_factor
    return f


def cpu_bf16_enabled(setting: str) -> bool:
    """Whether bfloat16 autocast is used on the CPU for ``train.cpu_bf16 = setting``."""
    if setting not in ("auto", "on", "off"):
        raise InputError(f"cpu_bf16={setting!r}: expected 'auto', 'on' or 'off'")
    if setting != "auto":
        return setting == "on"
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no native bf16
        return False


def _set_bn_frozen(model: nn.Module, frozen: bool) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(not frozen)


# --------------------------------------------------------------------------- epochs


def _to(batch: dict, device: torch.device) -> dict:
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}


def _autocast(device: torch.device, cfg: TrainConfig) -> tuple[bool, torch.dtype]:
    """(enabled, dtype) of mixed precision: float16 on CUDA (``amp``), bfloat16 on the CPU."""
    if device.type == "cuda":
        return cfg.amp, torch.float16
    return device.type == "cpu" and cpu_bf16_enabled(cfg.cpu_bf16), torch.bfloat16


def _train_step(model: nn.Module, batch: dict, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, device: torch.device, autocast: tuple[bool, torch.dtype],
                cfg: TrainConfig) -> float:
    """One optimizer step on one batch; the batch's loss."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=autocast[1], enabled=autocast[0]):
        if cfg.kind == "inpaint" and cfg.inpaint_loss == "relative":
            loss = batch_loss(model, batch, cfg.kind, relative=True, flux_weight=cfg.inpaint_flux_weight)
            # not a sum over pixels: with several processes, the mean of the ranks' losses
            value = ddp.all_sum(loss.detach()) / ddp.current().size
        else:
            total, count, _ = batch_loss(model, batch, cfg.kind, reduction="sum")
            # with several processes: this rank's share of the global batch's mean (distributed.py)
            loss, value = ddp.global_mean(total, count)
    scaler.scale(loss).backward()
    if cfg.clip_grad_norm:
        # a batch of bright stars can give the inpaint loss a spike that undoes
        # several epochs; clipping the gradient norm keeps one batch from doing that
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return float(value)


@torch.no_grad()
def _distilled(batch: dict, teacher: nn.Module, weight: float, views: int) -> dict:
    """The batch with its mask targets blended with the teacher's probabilities (mean of ``views``)."""
    p = teacher.predict(batch["image"], views=views).float()
    return {**batch, "cr": (1 - weight) * batch["cr"].float() + weight * p}


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, device: torch.device | str, epoch: int,
                    cfg: TrainConfig, *, average: WeightAverage | None = None,
                    teacher: nn.Module | None = None) -> dict:
    """Train ``model`` for one epoch.

    Parameters
    ----------
    model : nn.Module
        A :class:`~crforge.training.models.MaskNet` or
        :class:`~crforge.training.models.InpaintNet` (``cfg.kind``).
    loader : DataLoader
        Over a :class:`~crforge.training.data.StampDataset`; its dataset's and
        sampler's ``set_epoch`` are called with ``epoch``.
    optimizer, scaler
        The optimizer and the gradient scaler (disabled unless mixed precision on CUDA).
    device : torch.device or str
        Where the model is.
    epoch : int
        0-based epoch (decides the augmentation draws, the order and the BN phase).
    cfg : TrainConfig
        ``kind``, ``epochs``, ``amp``, ``cpu_bf16``, ``clip_grad_norm`` and
        ``bn_freeze_epoch`` are used.
    average : WeightAverage, optional
        Updated with the network's weights after every step.
    teacher : nn.Module, optional
        Mask network only: a frozen mask network; each pixel's target becomes
        ``(1 - cfg.teacher_weight) * label + cfg.teacher_weight * p`` with ``p`` its
        probability, the mean over ``cfg.teacher_views`` symmetric views (knowledge
        distillation).

    Returns
    -------
    dict
        ``train_loss`` (mean over the epoch's batches, weighted by their stamps),
        ``steps``, ``stamps``, ``seconds``, ``stamps_per_s``.
    """
    from tqdm.auto import tqdm

    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    device = torch.device(device)
    for obj in (loader.dataset, loader.sampler):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    model.train()
    if cfg.freeze_epoch() and epoch >= cfg.freeze_epoch():
        _set_bn_frozen(model, True)
    autocast = _autocast(device, cfg)
    world = ddp.current()
    total, stamps, steps = 0.0, 0, 0
    t0 = time.perf_counter()
    bar = tqdm(loader, desc=f"{cfg.kind} epoch {epoch + 1}/{cfg.epochs}", unit="batch",
               disable=None if world.main else True, leave=False)
    for batch in bar:
        interrupts.check()  # a Ctrl-C whose exception Python dropped still stops the run
        batch = _to(batch, device)
        if teacher is not None:
            batch = _distilled(batch, teacher, cfg.teacher_weight, cfg.teacher_views)
        value = _train_step(model, batch, optimizer, scaler, device, autocast, cfg)
        if average is not None:
            average.update(ddp.unwrap(model))
        if not math.isfinite(value):
            raise FloatingPointError(f"{cfg.kind} loss is {value} at epoch {epoch + 1}, step {steps + 1}: "
                                     "lower train.lr or check the data")
        n = batch["image"].shape[0] * world.size  # the global batch (equal shares)
        total, stamps, steps = total + value * n, stamps + n, steps + 1
        bar.set_postfix(loss=f"{value:.4g}")
    bar.close()
    seconds = time.perf_counter() - t0
    return {"train_loss": total / max(stamps, 1), "steps": steps, "stamps": stamps,
            "seconds": round(seconds, 3), "stamps_per_s": round(stamps / seconds, 3) if seconds else None}


class _Figures:
    """What a validation pass collects per field type: mask scores and labels, inpaint errors."""

    def __init__(self, kind: str, field_types) -> None:
        self.kind, self.field_types = kind, field_types
        self.scores: dict[str, list[np.ndarray]] = {}
        self.labels: dict[str, list[np.ndarray]] = {}
        self.sq: dict[str, list[float]] = {}

    def add(self, batch: dict, out: torch.Tensor, base: torch.Tensor | None = None) -> int:
        """Collect one batch (network output ``out``, inpaint base fill ``base``); the number of stamps."""
        idx = batch["index"].tolist() if isinstance(batch["index"], torch.Tensor) else list(batch["index"])
        for j, i in enumerate(idx):
            ft = str(self.field_types[i]) if self.field_types is not None else "all"
            if self.kind == "mask":
                keep = batch["weight"][j, 0] > 0
                # float16 scores would tie many pixels at the threshold
                self.scores.setdefault(ft, []).append(torch.sigmoid(out[j, 0].float())[keep].cpu().numpy())
                # a CR's fringe (``train.cr_fringe``, a target below 1) is no positive here
                self.labels.setdefault(ft, []).append((batch["cr"][j, 0][keep] >= 1).cpu().numpy())
            else:
                lm = batch["loss_mask"][j, 0] > 0
                target = batch.get("target", batch["image"])[j, 0]
                d = (out[j, 0].float() - target)[lm]
                acc = self.sq.setdefault(ft, [0.0, 0.0, 0.0])
                acc[0] += float((d * d).sum())
                acc[1] += float(lm.sum())
                if base is not None:
                    acc[2] += float(((base[j, 0].float() - target)[lm] ** 2).sum())
        return len(idx)

    def summary(self, fpr: float) -> dict[str, Any]:
        """The figures :func:`evaluate` returns beside the loss."""
        result: dict[str, Any] = {}
        if self.kind == "mask" and self.scores:
            all_s = np.concatenate([np.concatenate(v) for v in self.scores.values()])
            all_l = np.concatenate([np.concatenate(v) for v in self.labels.values()])
            result["tpr_at_fpr"] = tpr_at_fpr(all_s, all_l, fpr)
            result["fpr"] = fpr
            result["tpr_at_0.5"], result["fpr_at_0.5"] = rates_at_threshold(all_s, all_l, 0.5)
            result["by_field_type"] = {
                ft: {"tpr_at_fpr": tpr_at_fpr(np.concatenate(self.scores[ft]), np.concatenate(self.labels[ft]), fpr),
                     "cr_pixels": int(sum(int(x.sum()) for x in self.labels[ft])),
                     "pixels": int(sum(x.size for x in self.labels[ft]))}
                for ft in sorted(self.scores)}
        elif self.kind == "inpaint" and self.sq:
            result["by_field_type"] = {ft: {"mse": a / b if b else float("nan"), "pixels": int(b),
                                            "base_mse": c / b if b else float("nan")}
                                       for ft, (a, b, c) in sorted(self.sq.items())}
            # each field type's error relative to the base fill's, geometric mean: the
            # plain MSE is all globular clusters, whose errors are 10^3 times the others'
            logs = [math.log(a / c) for a, b, c in self.sq.values() if b and a > 0 and c > 0]
            if logs:
                result["val_score"] = math.exp(sum(logs) / len(logs))
        return result


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str, kind: str, *,
             fpr: float) -> dict:
    """Validation figures of ``model`` on ``loader`` (eval mode, no augmentation).

    Parameters
    ----------
    model : nn.Module
        The network.
    loader : DataLoader
        Over a :class:`~crforge.training.data.StampDataset` (items carry ``index``, which
        gives each stamp's field type).
    device : torch.device or str
        Where the model is.
    kind : {'mask', 'inpaint'}
        Which network.
    fpr : float
        False-positive rate of the TPR figure (mask; ``train.val_fpr``).

    Returns
    -------
    dict
        ``val_loss`` (the loss of :func:`batch_loss` over every pixel of the split,
        not a mean of batch means) and ``val_stamps``; for ``mask`` also
        ``tpr_at_fpr`` (over non-ignored pixels), ``tpr_at_0.5``/``fpr_at_0.5``
        (threshold 0.5) and ``by_field_type`` ({type: {"tpr_at_fpr", "pixels"}});
        for ``inpaint`` ``by_field_type`` ({type: {"mse", "base_mse", "pixels"}}:
        the network's and its base fill's MSE) and ``val_score``, the geometric mean
        over field types of ``mse / base_mse``, on which a run chooses its best epoch.
        Inpaint MSE is in normalised units (times ``norm_scale**2`` gives the image
        unit squared).
    """
    device = torch.device(device)
    figures = _Figures(kind, getattr(loader.dataset, "field_types", None))
    model.eval()
    total, count, stamps = 0.0, 0.0, 0
    for batch in loader:
        interrupts.check()
        batch = _to(batch, device)
        s, c, out = batch_loss(model, batch, kind, reduction="sum")
        total += float(s)
        count += float(c)
        base = None
        if kind == "inpaint":
            base = ddp.unwrap(model).base(batch["image"], _inpaint_mask(batch))
        stamps += figures.add(batch, out, base)
    return {"val_loss": total / count if count else float("nan"), "val_stamps": stamps,
            **figures.summary(fpr)}


# --------------------------------------------------------------------------- the run


class _RunLog:
    """Lines to ``train.log`` (always) and the module logger (shown with -v)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled

    def __call__(self, msg: str, *args, level: int = logging.INFO) -> None:
        if not self.enabled:  # another process than rank 0 of a distributed run
            return
        text = msg % args if args else msg
        logger.log(level, text)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        # appended, not rewritten: a log keeps every line of every attempt
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {logging.getLevelName(level)[0]} {text}\n")


@dataclass
class _Run:
    """One training run while it trains: its files, data, network and progress."""

    cfg: TrainConfig
    data: Path
    out: Path
    device: torch.device
    train_loader: DataLoader
    val_loader: DataLoader | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    average: WeightAverage | None = None
    teacher: nn.Module | None = None
    history: list[dict] = field(default_factory=list)
    start: int = 0
    step: int = 0
    best: dict = field(default_factory=lambda: {"epoch": None, "val_loss": float("inf"), "score": float("inf")})
    data_sha256: str = ""
    log: _RunLog = field(init=False)
    norm: dict = field(init=False)

    def __post_init__(self) -> None:
        self.log = _RunLog(self.out / "train.log", enabled=ddp.current().main)
        self.norm = normalisation_info(self.cfg.norm_scale, self.cfg.fills_ignored(),
                                       self.train_loader.dataset.bunit, keep_sky=self.cfg.sky_kept())

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def amp(self) -> bool:
        return self.cfg.amp and self.device.type == "cuda"

    @property
    def net(self) -> nn.Module:
        """The network itself (inside the DDP wrapper of a distributed run)."""
        return ddp.unwrap(self.model)

    @property
    def served(self) -> nn.Module:
        """The network the run validates and saves as its model: the average, if any."""
        return self.average.model if self.average is not None else self.net


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device='cuda' but torch sees no CUDA device")
    kind = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and ddp.current().active:  # one GPU per process
        return torch.device("cuda", ddp.current().local_rank)
    return torch.device(kind)


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def _loaders(cfg: TrainConfig, data: Path, device: torch.device) -> tuple[DataLoader, DataLoader | None]:
    common = cfg.data_options()
    train_ds = StampDataset(data, "train", cfg.kind, cfg.augment, cfg.seed, **common)
    if len(train_ds) == 0:
        raise InputError(f"{data}: the train split has no stamps")
    if train_ds.stamp_size % 2 ** (cfg.model.depth - 1):
        raise InputError(f"{data}: stamp_size {train_ds.stamp_size} is not a multiple of "
                         f"2**(model.depth-1) = {2 ** (cfg.model.depth - 1)}")
    val_ds = StampDataset(data, "val", cfg.kind, None, cfg.seed, **common)
    world = ddp.current()
    kw = {"batch_size": ddp.local_batch_size(cfg.batch_size, world), "num_workers": cfg.workers(device),
          "pin_memory": device.type == "cuda", "persistent_workers": False}
    # non-persistent workers: each epoch's workers are forked after set_epoch, so they
    # see the epoch (and no worker RNG is involved: draws come from (seed, epoch, index))
    order = EpochSampler(len(train_ds), cfg.seed, shuffle=True, limit=cfg.stamps_per_epoch,
                         rank=world.rank, world_size=world.size)
    train = DataLoader(train_ds, sampler=order, **kw)
    if len(val_ds) == 0:
        return train, None
    n = len(val_ds) if not cfg.val_stamps else min(cfg.val_stamps, len(val_ds))
    # evenly spaced: a subset that still covers every field of the split
    idx = np.unique(np.linspace(0, len(val_ds) - 1, n).round().astype(int)).tolist()
    val = DataLoader(val_ds, sampler=idx, **kw)
    return train, val


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block (0: leave as is), restored afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_inputs(cfg: TrainConfig, data: str | os.PathLike, out_dir: str | os.PathLike,
                  stop_after: int | None, validate: bool = True) -> tuple[Path, Path]:
    """The data file and the run directory (created), after checking the arguments."""
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    cfg.validate()
    data = Path(data)
    if not data.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(data))
    if stop_after is not None and stop_after < 0:
        raise InputError(f"stop_after={stop_after!r}: expected >= 0")
    # the whole file before anything is written: a damaged chunk refused now, not mid-epoch
    if validate:  # (rank 0 of a distributed run checks it for all)
        require_valid(data, what="training set")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return data, out


def _resume_point(cfg: TrainConfig, out: Path, resume: bool, data: Path,
                  data_sha256: str) -> checkpoint.Checkpoint | None:
    """``out/last.pt`` to resume from, or None for a new run (an existing run needs ``resume``)."""
    from crforge import config as cfgmod

    last = out / "last.pt"
    if resume and last.exists():
        ckpt = checkpoint.read(last, expect="train")
        diff = [k for k in _config_diff(ckpt.training.config, cfgmod.to_dict(cfg))
                if k not in _RESUMABLE_CHANGES]
        if diff:
            raise InputError(f"{last}: cannot resume with a different configuration "
                             f"({', '.join(diff)}); use the run's {out / 'config.toml'}")
        _check_resumable(ckpt, last, data, data_sha256)
        return ckpt
    if resume:
        logger.warning("%s: no last.pt to resume from; starting a new run", out)
    elif last.exists():
        raise InputError(f"{out} already holds a run (last.pt): pass --resume to continue it, "
                         "or choose another run name")
    return None


def _check_resumable(ckpt: checkpoint.Checkpoint, last: Path, data: Path, data_sha256: str) -> None:
    """Refuse to resume on another data set or with another crforge than the checkpoint's."""
    from crforge import __version__

    recorded = ckpt.training.data.get("sha256")
    if recorded is None:
        logger.warning("%s records no data sha256 (an older crforge): cannot check that %s is the "
                       "data set it was trained on", last, data)
    elif recorded != data_sha256:
        raise InputError(f"{last}: cannot resume on {data} (sha256 {data_sha256[:12]}...): the run was "
                         f"trained on {ckpt.training.data.get('path')} (sha256 {recorded[:12]}...); resume "
                         "with that data set, or start a new run under another --name")
    written_by = ckpt.training.versions.get("crforge")
    if written_by is not None and written_by != str(__version__):
        raise InputError(f"{last}: written by crforge {written_by}, this is crforge {__version__}: a run "
                         "is resumed by the code that started it; start a new run (another --name, "
                         "--init from its best.pt to keep the weights)")


def _file_sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _initial_weights(model: nn.Module, init: str | os.PathLike, cfg: TrainConfig) -> None:
    """Load the weights a fine-tuning run starts from (a checkpoint, weights file or deepCR's)."""
    from crforge.training import deepcr

    if str(init).lower().startswith("deepcr:"):
        model.load_state_dict(deepcr.init_state_for(str(init), cfg))
        return
    src = checkpoint.read(init)
    mc = cfg.model
    # what the weights fit (not step_floor or core_guard, inference settings)
    design = ("fill", "head", "context", "star_fit", "star_fit_input")
    if src.kind != cfg.kind or any(src.model_config[k] != getattr(mc, k) for k in ("depth", "width", "batch_norm")) \
            or (cfg.kind == "inpaint" and any(checkpoint.inpaint_design(src.model_config)[k] != getattr(mc, k)
                                              for k in design)):
        raise InputError(f"init={str(init)!r}: a {src.kind} model {src.model_config} "
                         f"cannot start a {cfg.kind} model {asdict(mc)}")
    model.load_state_dict(src.state_dict)


def _teacher(cfg: TrainConfig, device: torch.device) -> nn.Module | None:
    """The frozen mask network whose probabilities the run also learns (``teacher_mask``)."""
    from crforge.training import deepcr

    spec = cfg.teacher_mask if cfg.kind == "mask" else ""
    if not spec:
        return None
    if spec.lower().startswith("deepcr:"):
        name = spec.split(":", 1)[1]
        if name not in deepcr.DEEPCR_MODELS:
            raise InputError(f"train.teacher_mask={spec!r}: deepCR models are "
                             f"{', '.join('deepcr:' + k for k in deepcr.DEEPCR_MODELS)}")
        net, _, norm = deepcr.load_mask_model(name, scale=cfg.norm_scale)
    else:
        net, ckpt = checkpoint.load_checkpoint(spec, kind="mask")
        norm = ckpt.normalisation
    # the teacher (deepCR's too: its record says what deepCR takes) reads the student's
    # input as it is: it must have learnt that input. Keys an older record lacks read as
    # network_input reads them.
    ours = normalisation_info(cfg.norm_scale, cfg.fills_ignored(), keep_sky=cfg.sky_kept())
    theirs = {"keep_sky": False, "fill_ignored": True, **norm}
    differ = [k for k in ("scale", "keep_sky", "fill_ignored") if theirs[k] != ours[k]]
    if differ:
        raise InputError(f"train.teacher_mask={spec!r}: its input normalisation differs from this run's in "
                         + ", ".join(f"{k} ({theirs[k]!r} against {ours[k]!r}: train."
                                     f"{'norm_scale' if k == 'scale' else k})" for k in differ))
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _new_model(cfg: TrainConfig, device: torch.device, init: str | os.PathLike | None) -> nn.Module:
    """The network, seeded from ``cfg.seed`` (or started from ``init``), on ``device``."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    mc = cfg.model
    model = build_model(cfg.kind, mc.depth, mc.width, mc.batch_norm, mc.bn_momentum, fill=mc.fill,
                        head=mc.head, context=mc.context, step_floor=mc.step_floor,
                        star_fit=mc.star_fit, star_fit_input=mc.star_fit_input,
                        core_guard=mc.core_guard, core_guard_sigma=mc.core_guard_sigma,
                        stretch=mc.stretch)
    if init is not None:
        _initial_weights(model, init, cfg)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _build_run(cfg: TrainConfig, data: Path, out: Path, init: str | os.PathLike | None) -> _Run:
    """Data loaders, network, optimizer, scheduler and scaler of a run at epoch 0."""
    device = _device(cfg)
    train_loader, val_loader = _loaders(cfg, data, device)
    # every process builds the same seeded network; DDP checks it and averages gradients
    model = ddp.wrap(_new_model(cfg, device, init), device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    average = WeightAverage(ddp.unwrap(model), cfg.inpaint_ema) \
        if cfg.kind == "inpaint" and cfg.inpaint_ema else None
    return _Run(cfg, data, out, device, train_loader, val_loader, model, optimizer, scheduler, scaler,
                average, teacher=_teacher(cfg, device))


def _write_metrics(run: _Run) -> None:
    if not ddp.current().main:
        return
    atomic.write_text(run.metrics_path, "".join(json.dumps(h) + "\n" for h in run.history))


def _restore(run: _Run, ckpt: checkpoint.Checkpoint) -> None:
    """Continue ``run`` from ``ckpt`` (its ``last.pt``): weights, optimizer, RNG, history."""
    state = ckpt.training
    if (state.trained is not None) != (run.average is not None):
        # (inpaint_ema is part of the configuration a resumed run must keep; this is a damaged file)
        raise InputError(f"{run.last_path}: its weights {'are' if state.trained is not None else 'are not'} "
                         f"an average, train.inpaint_ema={run.cfg.inpaint_ema!r} says otherwise")
    run.net.load_state_dict(ckpt.state_dict if state.trained is None else state.trained)
    if run.average is not None:
        run.average.load_state_dict(ckpt.state_dict, updates=state.step)
    run.optimizer.load_state_dict(state.optimizer)
    run.scheduler.load_state_dict(state.scheduler)
    run.scaler.load_state_dict(state.scaler)
    checkpoint.set_rng_state(state.rng)
    run.start, run.step, run.best = state.epoch, state.step, dict(state.best)
    # the schedule may have been extended (epochs): recompute this epoch's rate
    for g, base in zip(run.optimizer.param_groups, run.scheduler.base_lrs):
        g["lr"] = base * lr_factor(run.start, run.cfg)
    if run.metrics_path.exists():
        lines = run.metrics_path.read_text().splitlines()
        # an epoch redone is logged once
        run.history = [h for h in map(json.loads, filter(str.strip, lines)) if h["epoch"] <= run.start]
    _write_metrics(run)
    run.log("resumed %s from %s at epoch %d (step %d)", run.cfg.kind, run.last_path, run.start, run.step)


def _start(run: _Run, init: str | os.PathLike | None) -> None:
    """Begin a new run's files: an empty ``metrics.jsonl`` and the first log lines."""
    _write_metrics(run)
    size, mc = run.train_loader.dataset.stamp_size, run.cfg.model
    run.log("new %s run: %s on %s, %d train / %d val stamps of %dx%d, %d-%d UNet, device %s%s",
            run.cfg.kind, run.out, run.data, len(run.train_loader.sampler),
            len(run.val_loader.sampler) if run.val_loader else 0, size, size, mc.depth, mc.width,
            run.device, " (amp)" if run.amp else "")
    if init is not None:
        run.log("initialised from %s", init)


def _write_config(run: _Run) -> None:
    from crforge import config as cfgmod

    if not ddp.current().main:
        return
    if run.val_loader is None:
        run.log("%s: the val split is empty; no validation (best.pt = last.pt)", run.data, level=logging.WARNING)
    cfgmod.write_toml({"train": run.cfg}, run.out / "config.toml",
                      header=f"crforge train: resolved configuration of {run.out.name}\ndata: {run.data}")


def _save_checkpoints(run: _Run, rec: dict, improved: bool) -> None:
    """``last.pt`` after every epoch, ``best.pt`` too when the epoch is the best so far."""
    from crforge import __version__
    from crforge import config as cfgmod

    if not ddp.current().main:
        return
    state = checkpoint.TrainingState(
        optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
        scaler=run.scaler.state_dict(), rng=checkpoint.rng_state(), epoch=rec["epoch"], step=run.step,
        best=run.best, config=cfgmod.to_dict(run.cfg), metrics=rec,
        data={"path": str(run.data), "sha256": run.data_sha256, "train_stamps": len(run.train_loader.dataset)},
        versions={"crforge": str(__version__), "torch": str(torch.__version__)},
        trained=run.net.state_dict() if run.average is not None else None)
    ckpt = checkpoint.Checkpoint(kind=run.cfg.kind, model_config=asdict(run.cfg.model),
                                 state_dict=run.served.state_dict(), normalisation=run.norm,
                                 stamp_size=run.train_loader.dataset.stamp_size, training=state)
    checkpoint.write_training(run.last_path, ckpt)
    if improved:
        checkpoint.write_training(run.best_path, ckpt)


def _one_epoch(run: _Run, epoch: int) -> None:
    """Train, validate, log and checkpoint epoch ``epoch`` (0-based)."""
    cfg = run.cfg
    if cfg.freeze_epoch() and epoch == cfg.freeze_epoch():
        run.log("epoch %d: batch norm frozen (running statistics), lr x %g", epoch + 1, cfg.bn_freeze_lr_factor)
    lr = run.optimizer.param_groups[0]["lr"]
    tr = train_one_epoch(run.model, run.train_loader, run.optimizer, run.scaler, run.device, epoch, cfg,
                         average=run.average, teacher=run.teacher)
    run.step += tr["steps"]
    run.scheduler.step()
    # validation on rank 0 alone, on the bare network (a DDP forward would wait for the others)
    main_rank = ddp.current().main
    val = evaluate(run.served, run.val_loader, run.device, cfg.kind, fpr=cfg.val_fpr) \
        if run.val_loader and main_rank else {}
    rec = {"epoch": epoch + 1, "step": run.step, "lr": lr, **tr, **val}
    run.history.append(rec)
    _write_metrics(run)
    vloss = val.get("val_loss", float("nan"))
    # inpaint: on the error relative to the base fill per field type (val_score), not the plain MSE
    score = val.get("val_score", vloss)
    improved = (not val) or (math.isfinite(score) and score < run.best["score"])
    if improved:
        run.best = {"epoch": epoch + 1, "val_loss": vloss if val else float("nan"),
                    "score": score if val else float("nan")}
    _save_checkpoints(run, rec, improved)
    ddp.barrier()  # the others start the next epoch once rank 0 has its checkpoint
    extra = f", TPR@{cfg.val_fpr:.1%}FPR {val['tpr_at_fpr']:.4f}" if "tpr_at_fpr" in val else ""
    if "val_score" in val:
        extra = f", MSE / base fill's {val['val_score']:.4f}"
    run.log("epoch %d/%d: train loss %.5g, val loss %.5g%s, %.1f stamps/s%s", epoch + 1, cfg.epochs,
            tr["train_loss"], vloss, extra, tr["stamps_per_s"] or 0.0, " (best)" if improved else "")


def _finish(run: _Run, seconds: float) -> dict:
    """Log how the run ended and return :func:`main`'s summary."""
    cfg, best = run.cfg, run.best
    done = run.history[-1]["epoch"] if run.history else run.start
    if done >= cfg.epochs:
        run.log("finished %s: best epoch %s (val loss %.5g) -> %s", cfg.kind, best["epoch"],
                best["val_loss"], run.best_path)
    else:
        run.log("stopped %s after epoch %d of %d (resume with --resume)", cfg.kind, done, cfg.epochs)
    best_rec = next((h for h in run.history if h["epoch"] == best["epoch"]), {})
    return {"run_dir": str(run.out), "kind": cfg.kind, "best": str(run.best_path), "last": str(run.last_path),
            "best_epoch": best["epoch"], "epochs_done": done, "step": run.step,
            "val": {k: v for k, v in best_rec.items() if k.startswith(("val", "tpr", "fpr", "by_"))},
            "history": run.history, "seconds": round(seconds, 2)}


def main(cfg: TrainConfig, data: str | os.PathLike, out_dir: str | os.PathLike, resume: bool = False,
         *, init: str | os.PathLike | None = None, stop_after: int | None = None, wait: bool = False) -> dict:
    """Train one network (``cfg.kind``) and write the run directory.

    Parameters
    ----------
    cfg : TrainConfig
        The resolved configuration.
    data : str or path-like
        The HDF5 training set (schema v1 or v2).
    out_dir : str or path-like
        The run directory (created).
    resume : bool
        Continue from ``out_dir/last.pt`` (a run directory without one starts
        afresh). Without it, a directory that already holds a run is refused.
    init : str or path-like, optional
        Start from the weights of this checkpoint or zoo weights file (same kind and
        architecture) instead of ``cfg.init_mask``/``cfg.init_inpaint`` (fine-tuning), or
        ``"deepcr:ACS-WFC"`` / ``"deepcr:WFC3-UVIS"`` for deepCR 0.3.1's published mask
        models (mask, depth 2, width 32; see :mod:`crforge.training.deepcr`). Ignored
        when resuming.
    stop_after : int, optional
        Stop once this many epochs are complete, as if interrupted (``last.pt`` is
        then resumable); for tests and time-boxed runs.
    wait : bool
        Wait for another run training into ``out_dir`` instead of refusing. The call
        holds the run directory's lock (:mod:`crforge.lock`) while it trains.

    Returns
    -------
    dict
        ``run_dir``, ``kind``, ``best``/``last`` (checkpoint paths), ``best_epoch``,
        ``epochs_done``, ``step``, ``val`` (the best epoch's validation figures),
        ``history`` (every epoch's metrics record) and ``seconds`` (this call).

    Raises
    ------
    FileNotFoundError
        No data file.
    InputError
        A bad configuration or ``init``, an existing run without ``resume``, or a
        resumed run whose configuration differs in anything but ``epochs``,
        ``num_workers``, ``device`` or ``threads``, whose data set is another file
        (sha256) or whose checkpoint another crforge version wrote.
    crforge.lock.LockedError
        Another process is training into ``out_dir`` (and not ``wait``).
    """
    if init is not None:  # recorded in the run's config, the checkpoints and the model card
        cfg = replace(cfg, **{f"init_{cfg.kind}": str(init)})
    world = ddp.current()
    data, out = _check_inputs(cfg, data, out_dir, stop_after, validate=world.main)
    if not world.main:
        # rank 0 locks, cleans and checks the run directory first (distributed.py)
        ddp.barrier()
        data_sha256 = _file_sha256(data)
        return _train(cfg, data, out, _resume_point(cfg, out, resume, data, data_sha256), data_sha256,
                      stop_after)
    with hold(out, what=f"crforge train ({cfg.kind})", wait=wait):
        atomic.remove_stale(out)  # what killed runs left
        data_sha256 = _file_sha256(data)
        resumed = _resume_point(cfg, out, resume, data, data_sha256)
        ddp.barrier()
        return _train(cfg, data, out, resumed, data_sha256, stop_after)


def _train(cfg: TrainConfig, data: Path, out: Path, resumed: checkpoint.Checkpoint | None,
           data_sha256: str, stop_after: int | None) -> dict:
    """:func:`main` once the run directory is locked and the resume point checked."""
    init = cfg.init()
    t_start = time.perf_counter()
    with _torch_threads(cfg.threads):
        run = _build_run(cfg, data, out, init=init if resumed is None else None)
        run.data_sha256 = data_sha256
        if resumed is not None:
            _restore(run, resumed)
        else:
            _start(run, init)
        _write_config(run)
        end = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
        for epoch in range(run.start, end):
            _one_epoch(run, epoch)
        return _finish(run, time.perf_counter() - t_start)
