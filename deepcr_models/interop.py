"""Interoperability with the deepCR package (0.3.1): export to it, start from its weights.

Export (``crforge export MODEL --to deepcr --output model.pth``)
    deepCR 0.3.1 loads a user's mask model with ``deepCR(mask="model.pth",
    hidden=W)``: it builds ``WrappedModel(UNet2Sigmoid(1, 1, W))`` (keys prefixed
    ``module.``), a depth-2 UNet *without* batch norm whose 3x3 convolutions are
    weight-normalised (``weight_g``, ``weight_v``), and it feeds the image divided by
    1, with no sky subtraction. Our depth-2 UNet has the same structure (two 3x3
    convolutions per level, 2x2 max pooling, a 2x2 stride-2 transposed convolution,
    the skip concatenated first, a 1x1 convolution and a sigmoid), so the export

    1. folds batch norm (eval mode, running statistics) into each convolution;
    2. folds our input normalisation ``(image - sky) / scale`` into the first
       convolution: its weights are divided by ``scale``, and a *fixed* sky is folded
       into its bias as ``- sky * sum(weights) / scale``. That is exact except within
       one pixel of the image border, where the convolution's zero padding meets
       ``image`` instead of ``image - sky``. crforge subtracts each chip's own sky;
       deepCR cannot, so pick ``--sky`` close to your images' sky (default 0: the
       exported model then expects sky-subtracted images, or sees the sky as an
       offset, which the sky augmentation of training makes it tolerant of up to
       about three times the training sky);
    3. writes ``weight_v = W`` and ``weight_g = ||W||`` (per output channel), which
       deepCR's weight norm turns back into ``W``.

    Only depth-2 mask models can be exported: deepCR builds nothing else for a custom
    file (and no custom inpaint model at all).

Import (``crforge train --init deepcr:ACS-WFC`` / ``deepcr:WFC3-UVIS``)
    deepCR's ``ACS-WFC`` mask model is ``UNet2SigmoidBatchNorm(1, 1, 32)`` (batch norm,
    convolutions with biases) taking electrons unscaled; ``WFC3-UVIS`` is
    ``UNet2Sigmoid(1, 1, 32)`` (weight norm, no batch norm) taking each image
    standardised by its own mean and standard deviation. The conversion maps the
    keys onto our MaskNet (depth 2, width 32, batch norm as in the source), moves
    the convolution biases of the batch-norm model into the running means (our
    convolutions before batch norm have no bias), and multiplies the first
    convolution by our ``scale`` (divided by a reference standard deviation for
    WFC3-UVIS, default ``scale`` itself, i.e. the network sees our input where it saw
    its standardised one: deepCR's per-image standardisation has no fixed
    equivalent). The converted ACS-WFC model applied to ``(image - sky) / scale``
    gives deepCR's probabilities on ``image - sky`` exactly.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from crforge.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["to_deepcr_state_dict", "from_deepcr_state_dict", "export_deepcr", "load_deepcr_mask",
           "deepcr_init_state", "DEEPCR_MODELS",]

#: deepCR's published mask models we can import: name -> (batch norm, input standardised per image)
DEEPCR_MODELS = {"ACS-WFC": (True, False), "WFC3-UVIS": (False, True)}

# deepCR UNet2Sigmoid module prefix -> our UNet module prefix (depth 2); the
# indices inside the Sequential blocks agree (conv 0, [bn 1,] relu, conv, [bn,] relu)
_PREFIXES = [("inc.conv.conv.", "unet.inc."), ("down1.mpconv.1.conv.", "unet.downs.0."),
             ("up8.up.", "unet.ups.0."), ("up8.conv.conv.", "unet.up_convs.0."),
             ("outc.conv.", "unet.outc.")]
_FIRST_CONV = "unet.inc.0."
_BLOCK_KEY = re.compile(r"^(unet\.(?:inc|downs\.0|up_convs\.0))\.(\d+)\.(.*)$")


def _ours(key: str) -> str:
    for a, b in _PREFIXES:
        if key.startswith(a):
            return b + key[len(a):]
    raise InputError(f"deepCR state dict: unexpected key {key!r} (not a depth-2 UNet2Sigmoid)")


def _theirs(key: str) -> str:
    for a, b in _PREFIXES:
        if key.startswith(b):
            return a + key[len(b):]
    raise InputError(f"state dict: unexpected key {key!r} (not a depth-2 crforge UNet)")


def _resolve_weight_norm(sd: dict) -> dict:
    """Replace ``weight_g``/``weight_v`` pairs by the ``weight`` they stand for."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".weight_v"):
            base = k[:-len("_v")]
            g = sd[base + "_g"]
            norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
            out[base] = v * (g / norm)
        elif not k.endswith(".weight_g"):
            out[k] = v
    return out


def from_deepcr_state_dict(sd: dict, *, scale: float, sky: float = 0.0, mean: float = 0.0,
                           std: float = 1.0) -> tuple[dict, bool, int]:
    """Map a deepCR 0.3.1 depth-2 mask state dict onto a crforge MaskNet's.

    deepCR's network sees ``u = (image - mean) / std`` (ACS-WFC: mean 0, std 1); ours
    sees ``x = (image - sky) / scale``, i.e. ``u = (scale * x + sky - mean) / std``,
    which is folded into the first convolution (weights times ``scale / std``, bias
    plus ``sum(weights) * (sky - mean) / std``; exact away from the one-pixel border).

    Parameters
    ----------
    sd : dict
        deepCR's state dict (keys with or without the ``module.`` prefix; weight norm
        or batch norm).
    scale : float
        Our normalisation scale (``train.norm_scale``).
    sky, mean, std : float
        See above.

    Returns
    -------
    (state_dict, batch_norm, width)
        A state dict for ``MaskNet(2, width, batch_norm)``.
    """
    if not scale > 0 or not std > 0:
        raise InputError(f"scale={scale!r}, std={std!r}: expected > 0")
    sd = {k[len("module."):] if k.startswith("module.") else k: v.detach().float().clone()
          for k, v in sd.items()}
    sd = _resolve_weight_norm(sd)
    ours = {_ours(k): v for k, v in sd.items()}
    batch_norm = any(k.endswith("running_mean") for k in ours)
    w0 = ours[_FIRST_CONV + "weight"]
    width = int(w0.shape[0])
    shift = w0.sum(dim=(1, 2, 3)) * ((sky - mean) / std)
    ours[_FIRST_CONV + "weight"] = w0 * (scale / std)
    ours[_FIRST_CONV + "bias"] = ours[_FIRST_CONV + "bias"] + shift
    if batch_norm:
        # our convolutions before batch norm have no bias: BN(Wx + b) with running mean
        # m equals BN(Wx) with running mean m - b
        for k in [k for k in ours if k.endswith(".weight") and ours[k].dim() == 4]:
            prefix, idx = k[:-len(".weight")].rsplit(".", 1)
            if not idx.isdigit():
                continue
            bn = f"{prefix}.{int(idx) + 1}."
            if bn + "running_mean" in ours:
                ours[bn + "running_mean"] = ours[bn + "running_mean"] - ours.pop(f"{prefix}.{idx}.bias")
    return ours, batch_norm, width


def _deepcr_file(name: str) -> Path:
    import importlib.util

    if name not in DEEPCR_MODELS:
        raise InputError(f"deepcr:{name}: crforge can import {sorted(DEEPCR_MODELS)}")
    # deepCR ships its weights in a top-level package `learned_models`; find it without
    # importing it (importing it before deepCR is a circular import in deepCR 0.3.1)
    spec = importlib.util.find_spec("learned_models")
    if spec is None or spec.origin is None:
        raise InputError("deepcr:<model> needs the deepCR package (pip install deepCR==0.3.1)")
    path = Path(spec.origin).parent / "mask" / f"{name}.pth"
    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    return path


def deepcr_init_state(name: str, *, scale: float, std: float | None = None) -> tuple[dict, bool, int]:
    """deepCR's published mask model ``name`` as a crforge MaskNet state dict.

    Parameters
    ----------
    name : {'ACS-WFC', 'WFC3-UVIS'}
        deepCR 0.3.1's model.
    scale : float
        Our normalisation scale.
    std : float, optional
        WFC3-UVIS only: the standard deviation deepCR's per-image standardisation is
        taken to have (default ``scale``: the network then sees our normalised input
        where it saw its standardised one).

    Returns
    -------
    (state_dict, batch_norm, width)
    """
    has_bn, standardised = DEEPCR_MODELS.get(name, (None, None))
    sd = torch.load(_deepcr_file(name), map_location="cpu", weights_only=True)
    ref_std = (scale if std is None else float(std)) if standardised else 1.0
    ours, batch_norm, width = from_deepcr_state_dict(sd, scale=scale, std=ref_std)
    assert batch_norm == has_bn
    return ours, batch_norm, width


def load_deepcr_mask(name: str, scale: float = 100.0):
    """A crforge MaskNet holding deepCR's published mask model ``name`` (eval mode).

    Returns ``(net, model_config, normalisation)`` for :class:`~crforge.deepcr_models.inference.ZooModel`.
    """
    from crforge.training.data import normalisation_info
    from crforge.training.models import build_model

    state, bn, width = deepcr_init_state(name, scale=scale)
    net = build_model("mask", 2, width, bn)
    net.load_state_dict(state)
    mc = {"depth": 2, "width": width, "batch_norm": bn, "bn_momentum": 0.1}
    return net.eval(), mc, normalisation_info(scale, True, "ELECTRONS")


def to_deepcr_state_dict(net: nn.Module, *, scale: float, sky: float = 0.0) -> "OrderedDict[str, torch.Tensor]":
    """A crforge depth-2 MaskNet as the state dict of deepCR's ``WrappedModel(UNet2Sigmoid)``.

    Parameters
    ----------
    net : MaskNet
        Depth 2, with or without batch norm.
    scale : float
        The model's normalisation scale.
    sky : float
        Sky level folded into the first convolution's bias (see the module notes).
    """
    from crforge.deepcr_models.inference import fuse_batch_norm

    if getattr(net, "kind", None) != "mask":
        raise InputError("only mask models can be exported to deepCR (deepCR 0.3.1 loads no custom "
                         "inpaint model)")
    if net.unet.depth != 2:
        raise InputError(f"a depth-{net.unet.depth} model cannot be exported: deepCR 0.3.1 builds only "
                         "depth-2 networks (UNet2Sigmoid) for a custom model file")
    if not scale > 0:
        raise InputError(f"scale={scale!r}: expected > 0")
    fused = fuse_batch_norm(net)
    has_bn = any(isinstance(x, nn.BatchNorm2d) for x in net.modules())
    sd = {}
    for k, v in fused.state_dict().items():
        m = _BLOCK_KEY.match(k)
        if m and has_bn:
            # folded batch norm leaves its convolutions at 0 and 3 (conv, BN, ReLU twice);
            # deepCR's blocks without batch norm have them at 0 and 2
            k = f"{m.group(1)}.{ {0: 0, 3: 2}[int(m.group(2))] }.{m.group(3)}"
        sd[k] = v.detach().float().clone()
    w0 = sd[_FIRST_CONV + "weight"]
    sd[_FIRST_CONV + "bias"] = sd[_FIRST_CONV + "bias"] - w0.sum(dim=(1, 2, 3)) * (sky / scale)
    sd[_FIRST_CONV + "weight"] = w0 / scale
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in sd.items():
        theirs = "module." + _theirs(k)
        if k.endswith(".weight") and v.dim() == 4 and v.shape[-1] == 3:
            # weight norm: weight = g * v / ||v||; an all-zero filter gets v = 1, g = 0
            norm = v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            zero = norm == 0
            out[theirs[:-len("weight")] + "weight_g"] = norm.clone()
            out[theirs[:-len("weight")] + "weight_v"] = torch.where(zero, torch.ones_like(v), v)
        else:
            out[theirs] = v
    return out


def export_deepcr(model, output: str | os.PathLike, *, sky: float = 0.0, zoo=None,
                  overwrite: bool = False) -> dict:
    """Write a mask model as a file ``deepCR(mask=output, hidden=width)`` loads.

    Parameters
    ----------
    model : str, path-like or ZooModel
        As :func:`crforge.deepcr_models.load` (kind mask).
    output : path-like
        The ``.pth`` file; a JSON sidecar ``<output>.json`` records how it was made.
    sky : float
        Sky level (electrons) folded into the first convolution's bias.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    dict
        What was written: ``path``, ``hidden``, ``threshold`` (the record's, else
        0.5), ``sky``, ``scale`` and the deepCR call.
    """
    from crforge.deepcr_models.inference import load

    output = Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"{output} exists (pass --overwrite to replace it)")
    m = load(model, kind="mask", zoo=zoo)
    if m.bunit != "ELECTRONS":
        raise InputError(f"{m.source}: trained on {m.bunit}; deepCR's models take electrons, export "
                         "needs a model trained on electrons")
    sd = to_deepcr_state_dict(m.net, scale=m.scale, sky=float(sky))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    torch.save(sd, tmp)
    os.replace(tmp, output)
    width = int(m.model_config["width"])
    info = {"path": str(output), "source": m.source, "hidden": width,
            "threshold": m.threshold if m.threshold is not None else 0.5, "sky": float(sky),
            "scale": m.scale, "usage": f"deepCR(mask={str(output)!r}, hidden={width})"
                                      ".clean(image_in_electrons, threshold=THRESHOLD)",
            "note": "sky folded into the first convolution's bias; exact except at the image border"}
    Path(str(output) + ".json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("exported %s to %s", m.source, output)
    return info


# --------------------------------------------------------------------------- CLI




