"""deepCR 0.3.1's published mask models as crforge MaskNets (``--init deepcr:ACS-WFC``).

deepCR's ``ACS-WFC`` mask model is ``UNet2SigmoidBatchNorm(1, 1, 32)`` (batch norm,
convolutions with biases) taking electrons unscaled; ``WFC3-UVIS`` is
``UNet2Sigmoid(1, 1, 32)`` (weight norm, no batch norm) taking each image standardised
by its own mean and standard deviation. The conversion maps the keys onto our MaskNet
(depth 2, width 32, batch norm as in the source), moves the convolution biases of the
batch-norm model into the running means (our convolutions before batch norm have no
bias), and multiplies the first convolution by our ``scale`` (divided by a reference
standard deviation for WFC3-UVIS, default ``scale`` itself, i.e. the network sees our
input where it saw its standardised one: deepCR's per-image standardisation has no
fixed equivalent). The converted ACS-WFC model applied to ``(image - sky) / scale``
gives deepCR's probabilities on ``image - sky`` exactly.

deepCR 0.3.1 also ships ``ACS-WFC-F606W-2-4.pth``, the paper's fast model (batch norm,
width 4), without an entry in its own model table: it takes electrons divided by 100
(deepCR 0.2's table said so, and only that divisor gives sensible masks on the real
HRC frame: docs/real-pixels.md). :data:`DEEPCR_MODELS` is the one table of what
crforge reads.

The key table (:data:`KEY_PREFIXES`) is shared with the export to deepCR's format
(:mod:`crforge.deepcr_models.interop`).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from crforge.errors import InputError
from crforge.training.config import ModelConfig, TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["DeepCRModel", "DEEPCR_MODELS", "KEY_PREFIXES", "FIRST_CONV", "our_key", "deepcr_key",
           "from_deepcr_state_dict", "deepcr_file", "deepcr_init_state", "init_state_for",
           "load_mask_model"]


@dataclass(frozen=True)
class DeepCRModel:
    """One of deepCR 0.3.1's published mask files, as crforge reads it.

    Parameters
    ----------
    instrument : str
        The imager its training data came from.
    width : int
        Channels of its first layer (depth 2 throughout).
    batch_norm : bool
        Batch norm (``UNet2SigmoidBatchNorm``) or weight norm (``UNet2Sigmoid``).
    divisor : float
        deepCR divides the image in electrons by this before its network.
    standardised : bool
        deepCR standardises each image by its own mean and standard deviation instead.
    in_deepcr_table : bool
        Whether deepCR 0.3.1's own ``mask_dict`` names it (``deepCR(mask=name)`` loads it).
    """

    instrument: str
    width: int
    batch_norm: bool
    divisor: float = 1.0
    standardised: bool = False
    in_deepcr_table: bool = True


#: deepCR 0.3.1's published mask models crforge can import, by deepCR's name
DEEPCR_MODELS = {"ACS-WFC": DeepCRModel("ACS/WFC", 32, True),
                 "WFC3-UVIS": DeepCRModel("WFC3/UVIS", 32, False, standardised=True),
                 "ACS-WFC-F606W-2-4": DeepCRModel("ACS/WFC", 4, True, divisor=100.0, in_deepcr_table=False)}

#: deepCR UNet2Sigmoid module prefix -> our UNet module prefix (depth 2); the indices
#: inside the Sequential blocks agree (conv 0, [bn 1,] relu, conv, [bn,] relu)
KEY_PREFIXES = (("inc.conv.conv.", "unet.inc."), ("down1.mpconv.1.conv.", "unet.downs.0."),
                ("up8.up.", "unet.ups.0."), ("up8.conv.conv.", "unet.up_convs.0."),
                ("outc.conv.", "unet.outc."))
#: Our first convolution, where the input normalisation is folded in.
FIRST_CONV = "unet.inc.0."


def our_key(key: str) -> str:
    """deepCR's state-dict key as ours (no ``module.`` prefix)."""
    for theirs, ours in KEY_PREFIXES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    raise InputError(f"deepCR state dict: unexpected key {key!r} (not a depth-2 UNet2Sigmoid)")


def deepcr_key(key: str) -> str:
    """Our state-dict key as deepCR's (no ``module.`` prefix)."""
    for theirs, ours in KEY_PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours):]
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


def _biases_into_running_means(ours: dict) -> None:
    # our convolutions before batch norm have no bias: BN(Wx + b) with running mean m
    # equals BN(Wx) with running mean m - b
    for k in [k for k in ours if k.endswith(".weight") and ours[k].dim() == 4]:
        prefix, idx = k[:-len(".weight")].rsplit(".", 1)
        if not idx.isdigit():
            continue
        bn = f"{prefix}.{int(idx) + 1}."
        if bn + "running_mean" in ours:
            ours[bn + "running_mean"] = ours[bn + "running_mean"] - ours.pop(f"{prefix}.{idx}.bias")


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
    sd = {k.removeprefix("module."): v.detach().float().clone() for k, v in sd.items()}
    ours = {our_key(k): v for k, v in _resolve_weight_norm(sd).items()}
    batch_norm = any(k.endswith("running_mean") for k in ours)
    w0 = ours[FIRST_CONV + "weight"]
    shift = w0.sum(dim=(1, 2, 3)) * ((sky - mean) / std)
    ours[FIRST_CONV + "weight"] = w0 * (scale / std)
    ours[FIRST_CONV + "bias"] = ours[FIRST_CONV + "bias"] + shift
    if batch_norm:
        _biases_into_running_means(ours)
    return ours, batch_norm, int(w0.shape[0])


def deepcr_file(name: str) -> Path:
    """The ``.pth`` file of deepCR's published mask model ``name`` (needs the deepCR package)."""
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
    name : str
        deepCR 0.3.1's model (a key of :data:`DEEPCR_MODELS`).
    scale : float
        Our normalisation scale.
    std : float, optional
        Standardised models only (WFC3-UVIS): the standard deviation deepCR's per-image
        standardisation is taken to have (default ``scale``: the network then sees our
        normalised input where it saw its standardised one).

    Returns
    -------
    (state_dict, batch_norm, width)
    """
    path = deepcr_file(name)
    spec = DEEPCR_MODELS[name]
    # deepCR's own file (a plain state dict), not one of crforge's formats
    sd = torch.load(path, map_location="cpu", weights_only=True)
    ref_std = (scale if std is None else float(std)) if spec.standardised else spec.divisor
    ours, batch_norm, width = from_deepcr_state_dict(sd, scale=scale, std=ref_std)
    if (batch_norm, width) != (spec.batch_norm, spec.width):
        raise InputError(f"{path}: batch_norm={batch_norm}, width {width}, but deepCR's {name} has "
                         f"batch_norm={spec.batch_norm}, width {spec.width}")
    return ours, batch_norm, width


def init_state_for(init: str, cfg: TrainConfig) -> dict:
    """The starting weights of a run with ``--init deepcr:<name>``.

    The first convolution is rescaled for the run's ``norm_scale`` (deepCR's ACS-WFC
    model takes electrons unscaled).

    Raises
    ------
    InputError
        An unknown model, or a run that is not a mask model of deepCR's architecture
        (depth 2, its width and batch norm setting).
    """
    name = init.split(":", 1)[1]
    if name not in DEEPCR_MODELS:
        raise InputError(f"init={init!r}: deepCR models crforge can start from are "
                         f"{', '.join('deepcr:' + k for k in DEEPCR_MODELS)}")
    mc = cfg.model
    spec = DEEPCR_MODELS[name]
    if cfg.kind != "mask" or mc.depth != 2 or mc.width != spec.width or mc.batch_norm != spec.batch_norm:
        raise InputError(f"init={init!r}: deepCR's {name} is a mask model, depth 2, width {spec.width}, "
                         f"batch_norm={spec.batch_norm}; this run is a {cfg.kind} model {asdict(mc)} (set "
                         f"--kind mask, train.model.width={spec.width} and "
                         f"train.model.batch_norm={str(spec.batch_norm).lower()}, or start elsewhere: "
                         "--init CHECKPOINT, or --set train.init_mask='' for a random start)")
    return deepcr_init_state(name, scale=cfg.norm_scale)[0]


def load_mask_model(name: str, *, scale: float) -> tuple[nn.Module, dict, dict]:
    """A crforge MaskNet holding deepCR's published mask model ``name`` (eval mode).

    Returns
    -------
    (net, model_config, normalisation)
        The network, its architecture and its normalisation record: deepCR's input as
        deepCR takes it, the image in electrons with its sky (``image / scale``; a
        standardised model: ``(image - sky) / scale``) and its ignored pixels as they
        are, so that ``clean()`` with it is deepCR's own mask.
    """
    from crforge.training.data import normalisation_info
    from crforge.training.models import build_model

    state, bn, width = deepcr_init_state(name, scale=scale)
    # the momentum only matters to a run that trains on from here: crforge's default
    mc = {"depth": 2, "width": width, "batch_norm": bn, "bn_momentum": ModelConfig().bn_momentum}
    net = build_model("mask", mc["depth"], width, bn, mc["bn_momentum"])
    net.load_state_dict(state)
    keep_sky = not DEEPCR_MODELS[name].standardised
    return net.eval(), mc, normalisation_info(scale, False, "ELECTRONS", keep_sky=keep_sky)
