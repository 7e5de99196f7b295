"""The deepCR networks: a UNet with configurable depth and width, and its two uses.

The architecture follows deepCR (Zhang & Bloom 2020, ApJ 889, 24): at every level two
3x3 convolutions (each followed by batch norm and ReLU), 2x2 max pooling between
levels, a stride-2 transposed convolution up, the skip connection concatenated, and a
1x1 convolution out. ``depth`` counts the resolution levels and ``width`` the channels
of the first level (doubled at every level down), so the paper's models are
``deepCR-2-4`` = ``UNet(depth=2, width=4)``, ``deepCR-2-32`` and ``deepCR-3-32``.

- :class:`MaskNet`: one channel in (the normalised image, see
  :func:`crforge.training.data.normalise`), one channel of logits out; :meth:`MaskNet.predict`
  applies the sigmoid and gives the CR probability.
- :class:`InpaintNet`: image and mask in, pixels out; :meth:`InpaintNet.inpaint`
  keeps the unmasked pixels and takes the network's only under the mask. With
  ``fill='median5'`` (the default) it is residual: the masked pixels are first filled
  by the 5x5 masked median (:func:`crforge.training.torchfill.masked_median_fill`), the
  UNet sees that filled image, its harmonic smoothing
  (:func:`crforge.training.torchfill.harmonic_fill`: what follows a star's profile) and
  the mask, and its outputs, the weight of the harmonic smoothing against the median
  and a correction added to that blend, start at exactly zero (its last layer is zero-initialised), so an untrained
  network is the masked median and training can only move it from there. The
  correction (``head='asinh'``) is added in asinh-compressed units, so it can restore
  a star's core hidden under a mask; ``head='linear'`` (the first residual design)
  bounds it by where the two fills disagree; ``head='both'`` (the default) adds that
  bounded correction after the asinh one, for the pixels where a factor is too coarse. When
  the network is evaluated, asinh steps under ``step_floor`` are not applied, nor, with
  ``core_guard``, positive ones where the visible pixels fit a galaxy's core. With
  ``fill='none'`` (crforge's first inpaint models) the masked pixels are zeroed and
  the UNet's output is the prediction itself.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from crforge.errors import InputError
from crforge.training.config import (
    INPAINT_FILLS,
    INPAINT_HEADS,
    KINDS,
    MASK_STRETCHES,
    STAR_FIT_INPUTS,
    VIEWS,
    ModelConfig,
    check_views,
)

logger = logging.getLogger(__name__)

__all__ = ["UNet", "MaskNet", "InpaintNet", "VIEWS", "SYMMETRIC_VIEWS", "build_model", "check_views",
           "fuse_batch_norm", "symmetric_mean"]


def _double_conv(in_ch: int, out_ch: int, batch_norm: bool, momentum: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for cin in (in_ch, out_ch):
        # no conv bias before batch norm: BN's shift makes it redundant
        layers.append(nn.Conv2d(cin, out_ch, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch, momentum=momentum))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """deepCR's UNet.

    Parameters
    ----------
    in_ch, out_ch : int
        Input and output channels.
    depth : int
        Resolution levels (>= 1); the input's height and width must be multiples of
        ``2 ** (depth - 1)``.
    width : int
        Channels of the first level; level ``k`` has ``width * 2**k``.
    batch_norm : bool
        Batch norm after every 3x3 convolution.
    bn_momentum : float
        Momentum of the batch-norm running statistics.
    """

    def __init__(self, in_ch: int, out_ch: int, depth: int = 2, width: int = 32,
                 batch_norm: bool = True, bn_momentum: float = 0.1) -> None:
        super().__init__()
        for name, value in (("in_ch", in_ch), ("out_ch", out_ch), ("depth", depth), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise InputError(f"{name}={value!r}: expected >= 1")
        self.depth = depth
        chans = [width * 2 ** k for k in range(depth)]
        self.inc = _double_conv(in_ch, chans[0], batch_norm, bn_momentum)
        self.downs = nn.ModuleList(
            _double_conv(chans[k - 1], chans[k], batch_norm, bn_momentum) for k in range(1, depth))
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(chans[k], chans[k - 1], 2, stride=2) for k in range(depth - 1, 0, -1))
        self.up_convs = nn.ModuleList(
            _double_conv(2 * chans[k - 1], chans[k - 1], batch_norm, bn_momentum)
            for k in range(depth - 1, 0, -1))
        self.outc = nn.Conv2d(chans[0], out_ch, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, in_ch, H, W]`` to ``[B, out_ch, H, W]``."""
        if self.depth == 1:
            return self.outc(self.inc(self._checked(x)))
        skip, up = self._last_inputs(x)
        return self.outc(self.up_convs[-1](torch.cat([skip, up], dim=1)))

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise InputError(f"x: expected [B, C, H, W], got shape {tuple(x.shape)}")
        step = 2 ** (self.depth - 1)
        if x.shape[-1] % step or x.shape[-2] % step:
            raise InputError(f"x: height and width must be multiples of {step} for depth "
                             f"{self.depth}, got {tuple(x.shape[-2:])}")
        # the second convolution: its weight has C > 1 and k > 1, so its layout is unambiguous
        probe = [m for m in self.inc if isinstance(m, nn.Conv2d)][1].weight
        if probe.is_contiguous(memory_format=torch.channels_last) and not probe.is_contiguous():
            # a channels-last model (train.channels_last) is fastest on channels-last input
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _last_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two inputs of the last full-resolution block (depth >= 2): the first
        level's features (the skip) and the upsampled ones from below."""
        skips = [self.inc(self._checked(x))]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))
        y = skips.pop()
        for up, conv in list(zip(self.ups, self.up_convs))[:-1]:
            y = conv(torch.cat([skips.pop(), up(y)], dim=1))
        return skips.pop(), self.ups[-1](y)

    #: :meth:`forward_at` runs the whole network where more than this fraction of the
    #: pixels is asked for: gathering windows costs more per pixel than a convolution,
    #: and on a 704x840 tile of the shipped 2-32 network (2 threads, pixels in 3x3 blobs)
    #: the two took the same time at 5% (0.23 s at 1%, 0.57 s at 10%; the whole 0.38 s).
    DENSE_FRACTION = 0.04

    def forward_at(self, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """The output at the pixels of ``at`` only: ``[N, out_ch]``, in the order of
        ``torch.nonzero(at)`` (``at``: ``[B, H, W]`` bool). Eval mode only.

        The last full-resolution block (two 3x3 convolutions on the skip and the
        upsampled features, then the 1x1 output) is nearly half of the network's work;
        here it runs at those pixels (the first convolution also at their neighbours),
        from windows gathered as matrices (:func:`_block_at`). An inpaint network's
        output is used only under the mask, about 1% of a chip. The same as
        :meth:`forward` there to float rounding (tests/test_zoo.py).
        """
        if self.training:
            raise RuntimeError("UNet.forward_at: eval mode only (batch norm on single pixels)")
        if self.depth == 1 or int(at.sum()) > self.DENSE_FRACTION * at.numel():
            return self.forward(x).permute(0, 2, 3, 1)[at]
        h = _block_at(self.up_convs[-1], list(self._last_inputs(x)), at)
        return F.linear(h, self.outc.weight[:, :, 0, 0], self.outc.bias)


def _conv_at(conv: nn.Conv2d, sources: list[tuple[torch.Tensor, torch.Tensor | None]],
             shape: tuple[int, int], b: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
             chunk: int = 65536) -> torch.Tensor:
    """A 3x3 convolution (padding 1) at the pixels ``(b, y, x)`` of ``[B, C, H, W]`` features
    (``shape`` = ``(H, W)``): ``[N, out]``.

    ``sources``: the input channels, in order, as ``(table, rows)``: pixel ``k`` (flat
    index over ``B, H, W``) has ``table[rows[k]]``, or ``table[k]`` when ``rows`` is
    ``None`` (a dense tensor seen channels-last). Each pixel's 3x3 window is gathered
    (zeros beyond the image, as the padding) and multiplied by the weight as one
    matrix, ``chunk`` pixels at a time.
    """
    h, w = shape
    t = torch.arange(-1, 2, device=b.device)
    dy, dx = t.repeat_interleave(3), t.repeat(3)  # the kernel's (row, column) order
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)  # [out, 9 * C]
    outs = []
    for i in range(0, len(b), chunk):
        wy, wx = y[i:i + chunk, None] + dy, x[i:i + chunk, None] + dx  # [n, 9]
        inside = ((wy >= 0) & (wy < h) & (wx >= 0) & (wx < w))[..., None]
        idx = (b[i:i + chunk, None] * h + wy.clamp(0, h - 1)) * w + wx.clamp(0, w - 1)
        win = torch.cat([table[idx if rows is None else rows[idx]] for table, rows in sources], dim=2)
        win = win * inside  # [n, 9, C]
        outs.append(F.linear(win.reshape(len(win), -1), weight.to(win.dtype), conv.bias))
    return torch.cat(outs) if outs else weight.new_zeros((0, conv.out_channels))


def _block_at(block: nn.Sequential, parts: list[torch.Tensor], at: torch.Tensor) -> torch.Tensor:
    """A :func:`_double_conv` block (folded or not) on the channels of ``parts`` (dense
    ``[B, C_i, H, W]``, concatenated in that order) at the pixels of ``at``: ``[N, out]``.

    The first convolution runs at those pixels and their 8 neighbours; the second reads
    its result through a map from pixel to row (zeros elsewhere, as beyond the image).
    """
    stages: list[list[nn.Module]] = []
    for mod in block:
        if isinstance(mod, nn.Conv2d):
            stages.append([mod])
        else:
            stages[-1].append(mod)  # batch norm (eval), ReLU, or the identity left by folding

    def post(v: torch.Tensor, mods: list[nn.Module]) -> torch.Tensor:
        v = v[:, :, None, None]
        for mod in mods:
            v = mod(v)
        return v[:, :, 0, 0]

    bsz, _, h, w = parts[0].shape
    dense = [(p.permute(0, 2, 3, 1).reshape(-1, p.shape[1]), None) for p in parts]  # views if channels-last
    near = F.max_pool2d(at[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
    b1, y1, x1 = torch.nonzero(near, as_tuple=True)
    first = post(_conv_at(stages[0][0], dense, (h, w), b1, y1, x1), stages[0][1:])
    rows = torch.full((bsz * h * w,), len(b1), dtype=torch.long, device=at.device)
    rows[(b1 * h + y1) * w + x1] = torch.arange(len(b1), device=at.device)
    table = torch.cat([first, first.new_zeros((1, first.shape[1]))])  # the last row: zeros
    b, y, x = torch.nonzero(at, as_tuple=True)
    return post(_conv_at(stages[1][0], [(table, rows)], (h, w), b, y, x), stages[1][1:])


#: ``(quarter turns, mirrored)`` of each view of :meth:`MaskNet.predict`, in the order they
#: are taken: the first 2 are a half turn apart, the first 4 the rotations, all 8 the
#: symmetries of the square.
SYMMETRIC_VIEWS = ((0, False), (2, False), (1, False), (3, False), (0, True), (2, True), (1, True), (3, True))


def symmetric_mean(fn, image: torch.Tensor, views: int) -> torch.Tensor:
    """The mean of ``fn`` over the first ``views`` of :data:`SYMMETRIC_VIEWS` of ``image``.

    ``fn`` maps a ``[..., H, W]`` tensor to one of the same shape; each view of the image
    is turned (and mirrored) before ``fn`` and its result turned back, so that the mean
    is of maps aligned with ``image``.
    """
    check_views(views)
    total = None
    for quarter, mirror in SYMMETRIC_VIEWS[:views]:
        p = torch.rot90(fn(torch.rot90(image.flip(-1) if mirror else image, quarter, (-2, -1))),
                        -quarter, (-2, -1))
        p = p.flip(-1) if mirror else p
        total = p if total is None else total + p
    return total if views == 1 else total / views


class MaskNet(nn.Module):
    """deepCR-mask: normalised image in, CR logits out.

    Parameters
    ----------
    depth, width, batch_norm, bn_momentum
        As :class:`UNet`.
    stretch : {'linear', 'asinh'}
        What the first convolution sees of the normalised image: the image
        (``linear``, deepCR's network) or ``asinh`` of it (:class:`ModelConfig`).
    """

    kind = "mask"
    #: CR probability the untrained network starts from (about the CR pixel fraction
    #: of HST exposures): the output bias starts at its log-odds instead of 0, so the
    #: first steps are not spent pushing every background pixel down from p = 0.5
    prior = 0.01

    def __init__(self, depth: int = 2, width: int = 32, batch_norm: bool = True,
                 bn_momentum: float = 0.1, *, stretch: str = ModelConfig.stretch) -> None:
        super().__init__()
        if stretch not in MASK_STRETCHES:
            raise InputError(f"stretch={stretch!r}: expected one of {MASK_STRETCHES}")
        self.stretch = stretch
        self.unet = UNet(1, 1, depth, width, batch_norm, bn_momentum)
        with torch.no_grad():
            self.unet.outc.bias.fill_(math.log(self.prior / (1 - self.prior)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 1, H, W]`` of a normalised image ``[B, 1, H, W]``.

        Logits (not probabilities) so that the loss can use the numerically stable
        ``binary_cross_entropy_with_logits`` (and stay safe under float16 autocast).
        """
        return self.unet(torch.asinh(image) if self.stretch == "asinh" else image)

    @torch.no_grad()
    def predict(self, image: torch.Tensor, *, views: int = 1) -> torch.Tensor:
        """CR probability ``[B, 1, H, W]`` in [0, 1], the mean over ``views`` symmetric views.

        ``views`` (1, 2, 4 or 8, :data:`VIEWS`): the network sees the image as it is,
        turned by 180 degrees, by 90 and 270, then all four mirrored (the symmetries
        training augments with), and each probability map is turned back before the
        mean. A trained network is not exactly symmetric: the views disagree most on
        the pixels it is least sure of, and their mean ranks those better (on the real
        frames of docs/real-pixels.md, 8 views raised TPR at 0.05% FPR by 0.6-5.4
        points). ``H`` and ``W`` must both be multiples of ``2**depth`` (as for one
        view), since a quarter turn swaps them.
        """
        return symmetric_mean(lambda x: torch.sigmoid(self.forward(x)), image, views)


class InpaintNet(nn.Module):
    """deepCR-inpaint: image and mask in, pixels out.

    Parameters
    ----------
    depth, width, batch_norm, bn_momentum
        As :class:`UNet`.
    fill : {'median5', 'none'}
        The classical fill the network corrects (``none``: no base, the masked pixels
        zeroed; the design of crforge's first inpaint models).
    head : {'asinh', 'linear', 'both'}
        How the correction is applied (:class:`crforge.training.config.ModelConfig`).
    context : int
        Half-width (pixels) of the box over which the compressed median-filled image is
        averaged into a fourth input channel; 0 = none (``ModelConfig.context``).
    step_floor : float
        In eval mode, asinh steps smaller than this are not applied (:meth:`step`,
        ``ModelConfig.step_floor``).
    star_fit : float
        Sigma (pixels) of the Gaussian point source fitted, with a pedestal, to the
        visible pixels around every masked pixel (:func:`star_fit`,
        ``ModelConfig.star_fit``). 0 = none.
    star_fit_input : {'amplitudes', 'fraction'}
        What of that fit the UNet sees: its two amplitudes (two channels) or the
        pedestal's fraction of the fitted light (one; ``ModelConfig.star_fit_input``).
    core_guard, core_guard_sigma : float
        In eval mode, where a point source of sigma ``core_guard_sigma`` fitted with a
        pedestal to the visible pixels around a masked pixel (and around each of its
        neighbours, the smallest kept) puts more than
        ``core_guard`` of the light in a pedestal above its surroundings
        (:meth:`pedestal`), positive asinh steps are not applied (:meth:`step`,
        ``ModelConfig.core_guard``). 0 = off.
    """

    kind = "inpaint"
    #: Normalised units in which the residual network's inputs are compressed and its
    #: correction is measured: about the sky noise of an ACS/WFC exposure (10 e- / 100 e-).
    INPUT_SOFTENING = 0.1
    #: The largest correction of ``head='asinh'``, in asinh units: a factor of about
    #: e^4 = 55 on a bright pixel (a star's core restored from the wings around a
    #: mask), 2.7 normalised units (270 e-) at the sky.
    ASINH_RANGE = 4.0
    #: The mask's channel in the residual network's input (:meth:`planes`).
    MASK_CHANNEL = 2

    def __init__(self, depth: int = 2, width: int = 32, batch_norm: bool = True,
                 bn_momentum: float = 0.1, fill: str = ModelConfig.fill,
                 head: str = ModelConfig.head, context: int = ModelConfig.context,
                 step_floor: float = ModelConfig.step_floor,
                 star_fit: float = ModelConfig.star_fit,
                 star_fit_input: str = ModelConfig.star_fit_input,
                 core_guard: float = ModelConfig.core_guard,
                 core_guard_sigma: float = ModelConfig.core_guard_sigma) -> None:
        super().__init__()
        if fill not in INPAINT_FILLS:
            raise InputError(f"fill={fill!r}: expected one of {INPAINT_FILLS}")
        if head not in INPAINT_HEADS:
            raise InputError(f"head={head!r}: expected one of {INPAINT_HEADS}")
        if context and fill == "none":
            raise InputError(f"context={context!r}: a context channel needs a base fill, got fill='none'")
        if star_fit and fill == "none":
            raise InputError(f"star_fit={star_fit!r}: the star-fit channels need a base fill, "
                             "got fill='none'")
        if star_fit_input not in STAR_FIT_INPUTS:
            raise InputError(f"star_fit_input={star_fit_input!r}: expected one of {STAR_FIT_INPUTS}")
        self.fill = fill
        self.head = head
        self.context = int(context)
        self.step_floor = float(step_floor)
        self.star_fit = float(star_fit)
        self.star_fit_input = star_fit_input
        self.core_guard = float(core_guard)
        self.core_guard_sigma = float(core_guard_sigma)
        # residual: the median-filled image, its harmonic smoothing and the mask in; out a
        # correction and the weight of the harmonic smoothing against the median (and for
        # head='both' a second correction)
        residual = fill != "none"
        outputs = (3 if head == "both" else 2) if residual else 1
        fit_ch = (2 if star_fit_input == "amplitudes" else 1) if star_fit else 0
        in_ch = (3 + bool(context) + fit_ch) if residual else 2
        self.unet = UNet(in_ch, outputs, depth, width, batch_norm, bn_momentum)
        if fill != "none":
            # the correction starts at zero: the untrained network is the classical fill
            with torch.no_grad():
                self.unet.outc.weight.zero_()
                self.unet.outc.bias.zero_()

    def base(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The image with the masked pixels filled classically (zeroed for ``fill='none'``)."""
        if self.fill == "none":
            return image * (1 - mask)
        from crforge.training.torchfill import masked_median_fill

        return masked_median_fill(image, mask)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predicted pixels ``[B, 1, H, W]``: :meth:`correct` of the UNet run on :meth:`planes`.

        Parameters
        ----------
        image : torch.Tensor
            Normalised image ``[B, 1, H, W]``.
        mask : torch.Tensor
            ``[B, 1, H, W]``, 1 where the pixel is to be replaced. The pixels under
            the mask are replaced by the base fill (zeros for ``fill='none'``) before
            the network sees them, so that whatever they held (a CR) cannot leak
            into the prediction.
        """
        inputs, base, smooth = self.planes(image, mask)
        out = self.unet(inputs)
        guard = None
        if self.guarded:
            # fitted only where the guard could act: a positive asinh step on a masked pixel
            guard = self.guard_at(image, mask, (mask > 0) & (self.step(out) > 0))
        return self.correct(out, base, smooth, guard)

    @property
    def guarded(self) -> bool:
        """Whether the core guard acts (``core_guard`` set, an asinh step, eval mode)."""
        return bool(self.core_guard) and self.fill != "none" and self.head != "linear" and not self.training

    def planes(self, image: torch.Tensor, mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The UNet's input ``[B, C, H, W]``, the base fill and its harmonic smoothing.

        Everything here that looks beyond the UNet's receptive field (the fills, the
        context box, the star fits) is in these planes, so a full frame can be prepared
        whole and only the UNet and :meth:`correct` run tile by tile
        (:mod:`crforge.deepcr_models.inference`; the core guard, which looks further
        too, is fitted on the whole frame after them, :meth:`guard_at`). For
        ``fill='none'`` the smoothing is the base (the masked pixels zeroed).
        """
        if image.shape != mask.shape:
            raise InputError(f"mask: shape {tuple(mask.shape)} differs from image "
                             f"{tuple(image.shape)}")
        mask = mask.to(image.dtype)
        base = self.base(image, mask)
        if self.fill == "none":
            return torch.cat([base, mask], dim=1), base, base
        from crforge.training.torchfill import harmonic_fill

        smooth = harmonic_fill(base, mask)
        # the UNet sees the fills compressed (asinh: linear within the noise, logarithmic
        # on stars), so a bright star cannot swamp its batch-norm statistics
        k = self.INPUT_SOFTENING
        a_base = torch.asinh(base / k)
        a_smooth = a_base.clone()
        under = mask > 0  # the smoothing differs from the base only there: asinh there alone
        a_smooth[under] = torch.asinh(smooth[under] / k)
        inputs = [a_base, a_smooth, mask]  # the mask at MASK_CHANNEL
        if self.context:
            inputs.append(_box_mean(inputs[0], self.context))
        if self.star_fit:
            a, b = star_fit(image, mask, self.star_fit)
            if self.star_fit_input == "amplitudes":
                inputs += [torch.asinh(a / k).to(a_base.dtype), torch.asinh(b / k).to(a_base.dtype)]
            else:
                inputs.append(pedestal_fraction(a, b, k).to(a_base.dtype))
        return torch.cat(inputs, dim=1), base, smooth

    def guard_at(self, image: torch.Tensor, mask: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """The core guard at the masked pixels of ``at``: 1 where :meth:`pedestal` exceeds
        ``core_guard`` (the asinh step is held back), 0 elsewhere (float32 ``[B, 1, H, W]``).

        Callers pass the pixels where the guard could act (a positive step), about a
        tenth of a chip's masked pixels: the fits take about 0.2 s of a chip there,
        where fitting every masked pixel and its neighbours took 1.5 s.
        """
        return (self.pedestal(image, mask, at=at) > self.core_guard).float()

    def pedestal(self, image: torch.Tensor, mask: torch.Tensor,
                 at: torch.Tensor | None = None) -> torch.Tensor:
        """The pedestal's fraction of the light the core guard fits at each masked pixel
        (of ``at``, default all; 0 elsewhere).

        :func:`pedestal_fraction` of :func:`star_fit` with sigma ``core_guard_sigma``, the
        pedestal measured above the mean of the visible pixels in a ring beyond the
        fitted window (:func:`ring_mean`): a star on a galaxy's diffuse light has no
        pedestal of its own, a compact galaxy's core does. The smallest of the fractions
        of the fits centred on the pixel and its 8 neighbours, so that every pixel of a
        star's core reads the fit centred on its peak. :meth:`guard_at` holds the asinh
        step back where it exceeds ``core_guard``. Each fit centre is fitted once, from
        index vectors (:func:`star_fit_at`, :func:`ring_mean`).
        """
        where = (mask > 0) if at is None else (mask > 0) & (at > 0)
        n, _, h, w = image.shape
        b, y, x = torch.nonzero(where[:, 0], as_tuple=True)
        # the 9 fit centres of each pixel, fitted once each (neighbours share them)
        t = torch.arange(-1, 2, device=image.device)
        cy, cx = (y[:, None] + t.repeat_interleave(3)), (x[:, None] + t.repeat(3))  # [N, 9]
        inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
        key = ((b[:, None] * h + cy.clamp(0, h - 1)) * w + cx.clamp(0, w - 1))
        centres, back = torch.unique(key, return_inverse=True)
        cb, cy_, cx_ = centres // (h * w), centres // w % h, centres % w
        a, ped, ok = star_fit_at(image, mask, self.core_guard_sigma, STAR_FIT_RADIUS, cb, cy_, cx_)
        ped = ped - ring_mean(image, mask, STAR_FIT_RADIUS, GUARD_RING_RADIUS, cb, cy_, cx_)
        fraction = torch.where(ok, pedestal_fraction(a, ped, self.INPUT_SOFTENING), math.inf)[back]
        low = torch.where(inside, fraction, math.inf).amin(1)
        out = torch.zeros((n, 1, h, w), dtype=torch.float32, device=image.device)
        out[b, 0, y, x] = torch.where(torch.isfinite(low), low, 0.0)
        return out

    def step(self, out: torch.Tensor, guard: torch.Tensor | None = None) -> torch.Tensor:
        """The asinh step (asinh units, float32) of the UNet's output ``out``.

        Zeros where the design has none (``head='linear'``, ``fill='none'``). In eval
        mode, steps smaller than ``step_floor`` are not applied: the trained network's
        small steps on bright pixels are a jitter of a few per cent over a galaxy's core
        that costs isolated objects their photometry (docs/training.md). Not while
        training: the step starts at zero and could not grow out of a floor. Where
        ``guard`` (:meth:`guard_at`) is 1, no positive step is applied: the visible pixels
        fit a core on a broad pedestal, a galaxy's, whose hidden pixels the network
        would otherwise brighten as a star's.
        """
        if self.fill == "none" or self.head == "linear":
            return torch.zeros_like(out[:, :1], dtype=torch.float32)
        # float32: a bfloat16 output would round a factor on a bright pixel to about 1%
        step = self.ASINH_RANGE * torch.tanh(out[:, :1].float())
        if self.step_floor and not self.training:
            step = torch.where(step.abs() < self.step_floor, torch.zeros_like(step), step)
        if guard is not None and not self.training:
            step = torch.where(guard > 0, step.clamp(max=0), step)
        return step

    def correct(self, out: torch.Tensor, base: torch.Tensor, smooth: torch.Tensor,
                guard: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction from the UNet's output, the two fills and the core guard (pixel by pixel)."""
        if self.fill == "none":
            return out
        k = self.INPUT_SOFTENING
        diff = smooth - base
        if self.head == "linear":
            # the weight of the harmonic fill and a correction in units of where the two
            # fills disagree (plus the sky noise): both start at zero, so the untrained
            # network is the masked median exactly, and on flat sky no step can move it
            # far (bounded by tanh: early in training a star's fill cannot be thrown off)
            return base + torch.tanh(out[:, 1:2]) * diff + torch.tanh(out[:, :1]) * (diff.abs() + k)
        # the same weight, then a bounded correction in asinh units: linear within the
        # noise on flat sky, a factor on a star, whose hidden core may be many times
        # brighter than both fills (the linear head's bound held back 90% of its error)
        out = out.float()
        blend = base + torch.tanh(out[:, 1:2]) * diff
        step = self.step(out, guard)
        # k sinh(asinh(blend / k) + step), expanded: exactly the blend at step 0
        pred = blend * torch.cosh(step) + torch.hypot(blend, torch.full_like(blend, k)) * torch.sinh(step)
        if self.head == "both":
            # then the linear head's bounded correction: an error in the asinh step is an
            # error of a fraction of the pixel, coarse on a faint core, where this one is
            # fine (in units of where the two fills disagree)
            pred = pred + torch.tanh(out[:, 2:3]) * (diff.abs() + k)
        return pred

    @torch.no_grad()
    def inpaint(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The image with the pixels under ``mask`` replaced by the network's."""
        mask = mask.to(image.dtype)
        return image * (1 - mask) + self.forward(image, mask) * mask


def _box_mean(x: torch.Tensor, half: int) -> torch.Tensor:
    """The mean of ``x`` over a ``2 * half + 1`` box around each pixel, within the image.

    Separable (two 1-D passes), and the edge boxes average only the pixels they hold,
    so the value at a pixel depends on nothing beyond ``half`` of it.
    """
    n = 2 * half + 1
    x = F.avg_pool2d(x, (1, n), stride=1, padding=(0, half), count_include_pad=False)
    return F.avg_pool2d(x, (n, 1), stride=1, padding=(half, 0), count_include_pad=False)


#: Half-width (pixels) of the window :func:`star_fit` fits.
STAR_FIT_RADIUS = 3
#: Outer half-width (pixels) of the ring whose mean the core guard's pedestal is measured above.
GUARD_RING_RADIUS = 10


def ring_mean(image: torch.Tensor, mask: torch.Tensor, inner: int, outer: int,
              b: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The mean of the unmasked pixels of ``image`` beyond ``inner`` and within ``outer``
    pixels (square boxes) of each pixel ``(b, y, x)`` (index vectors into ``[B, 1, H, W]``).

    Row prefix sums (float64) and two lookups per row of a box, at those pixels only:
    the masked pixels of a chip cost a few tens of milliseconds, where box filters over
    the whole chip took 0.65 s. 0 where the ring holds no unmasked pixel. Float32
    ``[N]``, no gradient.
    """
    _, _, h, w = image.shape
    with torch.no_grad():
        vis = mask[:, 0] == 0
        # inclusive row prefix sums: float64 for the light (exact enough over a 4096-pixel
        # row), int32 for the counts; cast inside cumsum, the chip is not copied first
        rows = [(image[:, 0].float() * vis).cumsum(2, dtype=torch.float64), vis.cumsum(2, dtype=torch.int32)]
        b, y, x = b[:, None], y[:, None], x[:, None]

        def box(r: int) -> list[torch.Tensor]:
            ys = y + torch.arange(-r, r + 1, device=image.device)  # [N, 2r + 1]
            inside = (ys >= 0) & (ys < h)
            start = (b * h + ys.clamp(0, h - 1)) * w  # flat indices: one gather each
            x0, x1 = (x - r).clamp(0, w), (x + r + 1).clamp(1, w)  # the row's [x0, x1)
            before = x0 > 0  # the sum up to x0 - 1; nothing before the row's start
            return [((t.reshape(-1)[start + x1 - 1] - t.reshape(-1)[start + (x0 - 1).clamp_min(0)] * before)
                     * inside).sum(1) for t in rows]

        (s_out, n_out), (s_in, n_in) = box(outer), box(inner)
        total, n = s_out - s_in, n_out - n_in
        return torch.where(n > 0.5, total / n.clamp_min(1), torch.zeros_like(total)).float()


def star_fit(image: torch.Tensor, mask: torch.Tensor, sigma: float,
             radius: int = STAR_FIT_RADIUS) -> tuple[torch.Tensor, torch.Tensor]:
    """Point source plus pedestal fitted to the visible pixels around each masked pixel.

    At each masked pixel, the least-squares fit of ``a * exp(-r^2 / (2 sigma^2)) + b``
    (``r``: the distance to that pixel) to the unmasked pixels of the ``2 * radius + 1``
    window around it (:func:`star_fit_at`). A star's light is nearly all ``a`` (its
    pedestal is the sky); a galaxy's core sits on a broad pedestal ``b`` (a fifth of
    its peak in the median on the simulated extragalactic fields). The UNet alone does
    not tell the two apart well enough: it restores a star's core under a mask beside a
    galaxy's visible peak (docs/training.md). Only the masked pixels are fitted: that
    is where the network decides, and it keeps a full chip's cost small. The window is
    part of a trained model's design: changing ``radius`` changes what its weights see.

    Returns
    -------
    a, b : torch.Tensor
        ``[B, 1, H, W]``, 0 at the pixels not fitted and where fewer than ``2 * radius + 2``
        pixels of the window are visible (pixels beyond the image are not).
    """
    n, _, h, w = image.shape
    b_i, y_i, x_i = torch.nonzero(mask[:, 0] > 0, as_tuple=True)
    a, b, _ = star_fit_at(image, mask, sigma, radius, b_i, y_i, x_i)
    out_a = torch.zeros((n, 1, h, w), dtype=torch.float32, device=image.device)
    out_b = torch.zeros_like(out_a)
    out_a[b_i, 0, y_i, x_i] = a  # 0 where not fitted (star_fit_at)
    out_b[b_i, 0, y_i, x_i] = b
    return out_a, out_b


def star_fit_at(image: torch.Tensor, mask: torch.Tensor, sigma: float, radius: int,
                b: torch.Tensor, y: torch.Tensor, x: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`star_fit` centred on the pixels ``(b, y, x)`` (index vectors into
    ``[B, 1, H, W]``, masked or not), their windows gathered (float32, no gradient).

    Returns
    -------
    a, b, ok : torch.Tensor
        ``[N]``: the point source's and the pedestal's amplitudes, and whether the
        window held enough visible pixels to fit them (``a`` and ``b`` are 0 where not).
    """
    _, _, h, w = image.shape
    with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
        t = torch.arange(-radius, radius + 1, device=image.device)
        dy, dx = (u.reshape(1, -1) for u in torch.meshgrid(t, t, indexing="ij"))
        wy, wx = y[:, None] + dy, x[:, None] + dx  # [N, window]
        inside = (wy >= 0) & (wy < h) & (wx >= 0) & (wx < w)
        flat = (b[:, None] * h + wy.clamp(0, h - 1)) * w + wx.clamp(0, w - 1)
        dw = image[:, 0].float().reshape(-1)[flat] * inside
        vw = (1 - mask[:, 0].float().reshape(-1)[flat]) * inside  # pixels beyond the image unseen
        g = torch.exp(-(dy * dy + dx * dx).float() / (2 * sigma * sigma))
        s1, sp, spp = vw.sum(1), (vw * g).sum(1), (vw * g * g).sum(1)
        sd, sdp = (vw * dw).sum(1), (vw * dw * g).sum(1)
        det = s1 * spp - sp * sp
        ok = (s1 >= 2 * radius + 2) & (det > 1e-6)
        det = torch.where(ok, det, torch.ones_like(det))
        a = torch.where(ok, (s1 * sdp - sp * sd) / det, torch.zeros_like(det))
        ped = torch.where(ok, (sd - a * sp) / s1.clamp_min(1), torch.zeros_like(det))
    return a, ped, ok


def pedestal_fraction(a: torch.Tensor, b: torch.Tensor, softening: float) -> torch.Tensor:
    """``b / (|a| + |b| + softening)``: the pedestal's share of :func:`star_fit`'s light.

    Near 0 for a star (its pedestal is the sky), larger for a galaxy's core (a fifth on
    the simulated extragalactic fields, with ``b`` measured from zero); ``softening``
    (the sky noise) keeps empty sky, where both amplitudes are noise, near 0.
    """
    return b / (a.abs() + b.abs() + softening)


def build_model(kind: Literal["mask", "inpaint"], depth: int = 2, width: int = 32,
                batch_norm: bool = True, bn_momentum: float = 0.1, *,
                fill: str = ModelConfig.fill, head: str = ModelConfig.head,
                context: int = ModelConfig.context,
                step_floor: float = ModelConfig.step_floor,
                star_fit: float = ModelConfig.star_fit,
                star_fit_input: str = ModelConfig.star_fit_input,
                core_guard: float = ModelConfig.core_guard,
                core_guard_sigma: float = ModelConfig.core_guard_sigma,
                stretch: str = ModelConfig.stretch) -> MaskNet | InpaintNet:
    """Build a mask or inpaint network.

    Parameters
    ----------
    kind : {'mask', 'inpaint'}
        Which network.
    depth, width, batch_norm, bn_momentum
        As :class:`UNet` (the paper's models: depth 2 width 4, 2-32, 3-32).
    fill : {'median5', 'none'}
        The inpaint network's base fill (:class:`InpaintNet`); ignored for ``mask``.
    head : {'asinh', 'linear', 'both'}
        How the residual inpaint network applies its correction; ignored for ``mask``.
    context : int
        The residual inpaint network's context box half-width (0: none); ignored for
        ``mask``.
    step_floor : float
        The residual inpaint network's smallest asinh step applied in eval mode;
        ignored for ``mask``.
    star_fit : float
        The residual inpaint network's star-fit sigma (0: no such channels); ignored
        for ``mask``.
    star_fit_input : {'amplitudes', 'fraction'}
        What the residual inpaint network sees of the star fit; ignored for ``mask``.
    core_guard, core_guard_sigma : float
        The residual inpaint network's core guard (eval mode only; 0: off); ignored for
        ``mask``.
    stretch : {'linear', 'asinh'}
        The mask network's input stretch (:class:`MaskNet`); ignored for ``inpaint``.

    Returns
    -------
    MaskNet or InpaintNet
        A freshly initialised network (PyTorch's default initialisation, drawn from
        the global torch RNG: seed it first for reproducible weights).
    """
    if kind == "mask":
        return MaskNet(depth, width, batch_norm, bn_momentum, stretch=stretch)
    if kind == "inpaint":
        return InpaintNet(depth, width, batch_norm, bn_momentum, fill=fill, head=head, context=context,
                          step_floor=step_floor, star_fit=star_fit, star_fit_input=star_fit_input,
                          core_guard=core_guard, core_guard_sigma=core_guard_sigma)
    raise InputError(f"kind={kind!r}: expected one of {KINDS}")


def fuse_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Conv2d + BatchNorm2d pair folded into one Conv2d.

    The copy is in eval mode and computes what ``model.eval()`` computes (batch norm
    with its running statistics) with one convolution instead of two passes.
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for mod in model.modules():
        if not isinstance(mod, nn.Sequential):
            continue
        items = list(mod._modules.items())
        for (n1, a), (n2, b) in zip(items, items[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                mod._modules[n1] = fuse_conv_bn_eval(a, b)
                mod._modules[n2] = nn.Identity()
    return model
