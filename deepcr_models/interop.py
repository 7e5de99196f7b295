"""Interoperability with the deepCR package (0.3.1): export a zoo mask model to its format.

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

Import (``crforge train --init deepcr:ACS-WFC``, ``load("deepcr:ACS-WFC")``)
    The conversion of deepCR's published mask models onto ours lives in
    :mod:`crforge.training.deepcr` (the trainer starts from them); this module shares
    its key table.
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

from crforge import atomic
from crforge.errors import InputError
from crforge.training.deepcr import FIRST_CONV, deepcr_key
from crforge.training.models import fuse_batch_norm

logger = logging.getLogger(__name__)

__all__ = ["to_deepcr_state_dict", "export_deepcr"]

_BLOCK_KEY = re.compile(r"^(unet\.(?:inc|downs\.0|up_convs\.0))\.(\d+)\.(.*)$")


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
    if getattr(net, "kind", None) != "mask":
        raise InputError("only mask models can be exported to deepCR (deepCR 0.3.1 loads no custom "
                         "inpaint model)")
    if net.unet.depth != 2:
        raise InputError(f"a depth-{net.unet.depth} model cannot be exported: deepCR 0.3.1 builds only "
                         "depth-2 networks (UNet2Sigmoid) for a custom model file")
    if getattr(net, "stretch", "linear") != "linear":
        raise InputError(f"a model with stretch={net.stretch!r} cannot be exported: deepCR's network "
                         "sees the normalised image itself, with no stretch before its first convolution")
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
    w0 = sd[FIRST_CONV + "weight"]
    sd[FIRST_CONV + "bias"] = sd[FIRST_CONV + "bias"] - w0.sum(dim=(1, 2, 3)) * (sky / scale)
    sd[FIRST_CONV + "weight"] = w0 / scale
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in sd.items():
        theirs = "module." + deepcr_key(k)
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
    if m.normalisation.get("keep_sky", False) and sky:
        raise InputError(f"sky={sky!r}: {m.source} takes the image with its sky, as deepCR does; "
                         "nothing to fold (leave --sky at 0): the export is exact but at the border")
    sd = to_deepcr_state_dict(m.net, scale=m.scale, sky=float(sky))
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(output, overwrite=overwrite) as tmp:
        torch.save(sd, tmp)  # deepCR's format (a plain state dict), not one of crforge's
    width = int(m.model_config["width"])
    info = {"path": str(output), "source": m.source, "hidden": width,
            "threshold": m.threshold if m.threshold is not None else 0.5, "sky": float(sky),
            "scale": m.scale, "usage": f"deepCR(mask={str(output)!r}, hidden={width})"
                                      ".clean(image_in_electrons, threshold=THRESHOLD)",
            "note": "sky folded into the first convolution's bias; exact except at the image border"
                    + (f"; the threshold was chosen for crforge's mean of {m.views} symmetric views of an "
                       "image, deepCR computes one" if m.views > 1 else "")}
    atomic.write_text(Path(str(output) + ".json"), json.dumps(info, indent=2) + "\n")
    logger.info("exported %s to %s", m.source, output)
    return info

