"""Load zoo models and clean full frames: ``load()``, ``clean()`` and their parts.

Inference on a full HST chip (4096x2048) runs tile by tile so that memory stays
bounded: the frame is cut into windows of at most ``tile`` pixels a side that overlap
by ``overlap`` pixels on every side, and only the centre (core) of each window's
prediction is kept. A UNet's output at a pixel depends only on the input within its
receptive field (radius 9 pixels for depth 2, 23 for depth 3, 51 for depth 4), so
with an overlap at least that large the tiled result equals the untiled one up to
float rounding; the default overlap is exactly the receptive radius (rounded up to a
multiple of ``2**(depth-1)``, so that every window sits on the pooling grid of the
whole frame), which keeps the extra work small (about 5% for a 2-32 model on
1024-pixel tiles). A residual inpaint network looks further, through the classical
fills it corrects (:mod:`crforge.training.torchfill`) and its context box: those are
computed on the whole frame first (cheap: the fills only at the masked pixels), so
its tiles too overlap by the UNet's receptive radius alone (:attr:`ZooModel.overlap`),
and inpainting skips the tiles whose core holds no masked pixel.

The input is normalised once per chip, with one sky level per chip (a sigma-clipped
median, :func:`estimate_sky`), never per tile, so that neighbouring tiles see the
same numbers. Batch norm is folded into the convolutions and the tensors are
channels-last, which is what makes the CPU fast (about 2.3x against the same network
unfolded in the default layout, float32).
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from crforge.deepcr_models import fitness
from crforge.deepcr_models import registry as reg
from crforge.errors import InputError
from crforge.training import checkpoint
from crforge.training.data import estimate_sky
from crforge.training.models import check_views, fuse_batch_norm

logger = logging.getLogger(__name__)

__all__ = ["ZooModel", "load", "list_models", "clean", "mask_probability", "inpaint",
           "estimate_sky", "receptive_radius", "tile_windows", "count_tiles", "unit_factor",
           "fuse_batch_norm", "DEFAULT_TILE", "BUNITS"]

#: Default largest tile side in pixels (a 2-32 mask model needs about 1.3 GB for one).
DEFAULT_TILE = 1024
#: Units an image may be in (FITS ``BUNIT``), and whether they are per second.
BUNITS = {"ELECTRONS": False, "ELECTRONS/S": True, "ELECTRONS/SEC": True}


# --------------------------------------------------------------------------- models


@dataclass
class ZooModel:
    """A loaded mask or inpaint network with what is needed to apply it.

    Attributes
    ----------
    net : torch.nn.Module
        The network (a :class:`crforge.training.models.MaskNet` or ``InpaintNet``), eval mode.
    kind : {'mask', 'inpaint'}
        Which network.
    model_config : dict
        ``depth``, ``width``, ``batch_norm``, ``bn_momentum``.
    normalisation : dict
        The input normalisation (``scale``, ``bunit``, ``fill_ignored``, ...).
    record : ModelRecord or None
        The registry record (None for a model loaded from a file path).
    source : str
        Where it was loaded from.
    device : torch.device
        Where it runs.
    """

    net: nn.Module
    kind: str
    model_config: dict
    normalisation: dict
    record: reg.ModelRecord | None = None
    source: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _fast: nn.Module | None = field(default=None, repr=False)

    @property
    def threshold(self) -> float | None:
        """The recommended threshold of the record (None without one)."""
        return self.record.threshold if self.record is not None else None

    @property
    def views(self) -> int:
        """Symmetric views the record's threshold was chosen for (1 without a record)."""
        return int(self.record.views) if self.record is not None else 1

    @property
    def depth(self) -> int:
        return int(self.model_config["depth"])

    @property
    def overlap(self) -> int:
        """The default tile overlap: the UNet's receptive radius.

        A residual inpaint network looks further, through the classical fills it
        corrects and its context box, but :func:`inpaint` computes those on the whole
        frame first (:meth:`InpaintNet.planes <crforge.training.models.InpaintNet.planes>`)
        and runs only the UNet tile by tile.
        """
        return receptive_radius(self.depth)

    @property
    def scale(self) -> float:
        return float(self.normalisation["scale"])

    @property
    def bunit(self) -> str:
        return str(self.normalisation.get("bunit", "ELECTRONS")).upper()

    def fast(self) -> nn.Module:
        """The inference copy: batch norm folded, channels-last (built once)."""
        if self._fast is None:
            fast = fuse_batch_norm(self.net).to(self.device)
            self._fast = fast.to(memory_format=torch.channels_last).eval()
        return self._fast


def _from_file(path: Path, kind: str | None, device: torch.device, *, sha256: str | None = None,
               record: reg.ModelRecord | None = None) -> ZooModel:
    """A model from a crforge checkpoint or zoo weights file, its sha256 checked first.

    A ``.pt`` file is checked against ``sha256`` (a record's) or, without it, the 12
    hex digits in its name (if it has them): a missing or altered file raises
    :class:`~crforge.deepcr_models.registry.WeightsError`.
    """
    if path.suffix == ".pt" or sha256 is not None:
        digest = reg.verify_weights(path, sha256)
        if record is None:
            # a zoo file given by its path is the published model: its record (threshold,
            # instrument) applies, not the defaults of a bare checkpoint
            found = reg.record_for_weights(path, digest)
            if found is not None:
                record = found[0]
                logger.info("%s is %s of the zoo %s", path, record.key, found[1])
    ckpt = checkpoint.read(path, kind=kind)
    if record is not None:
        mc = ckpt.model_config
        if ckpt.kind != record.kind or (int(mc["depth"]), int(mc["width"])) != (record.depth, record.width):
            raise InputError(f"{path}: holds a {ckpt.kind} {mc['depth']}-{mc['width']} model; "
                             f"the record says {record.kind} {record.depth}-{record.width}")
    net = checkpoint.build_model(ckpt, device=device)
    return ZooModel(net, ckpt.kind, ckpt.model_config, ckpt.normalisation, record,
                    record.key if record is not None else str(path), device)


def _from_deepcr(text: str, kind: str | None, device: torch.device) -> ZooModel:
    """deepCR 0.3.1's published mask model ``deepcr:<name>``, converted."""
    from crforge.training import deepcr
    from crforge.training.config import TrainConfig

    if kind not in (None, "mask"):
        raise InputError(f"{text}: deepCR's published models are mask models")
    net, mc, norm = deepcr.load_mask_model(text.split(":", 1)[1], scale=TrainConfig().norm_scale)
    return ZooModel(net.to(device).eval(), "mask", mc, norm, None, text, device)


def _on_device(m: ZooModel, kind: str | None, device: torch.device) -> ZooModel:
    if kind is not None and m.kind != kind:
        raise InputError(f"model {m.source!r} is a {m.kind} model, not {kind}")
    if m.device == device:
        return m
    return ZooModel(m.net.to(device), m.kind, m.model_config, m.normalisation, m.record, m.source, device)


def load(name_or_path: str | os.PathLike | ZooModel, *, kind: str | None = None,
         device: str | torch.device = "cpu", zoo: str | os.PathLike | None = None) -> ZooModel:
    """Load a model: a zoo name, a weights or checkpoint file, or ``deepcr:<model>``.

    Parameters
    ----------
    name_or_path : str, path-like or ZooModel
        A published name (see :func:`list_models`), a path to a crforge checkpoint
        (``runs/<run>/mask/best.pt``) or zoo weights file, or ``deepcr:ACS-WFC`` /
        ``deepcr:WFC3-UVIS`` (deepCR 0.3.1's published mask models, converted; needs
        the ``deepCR`` package). A ZooModel is returned as it is (moved to ``device``).
    kind : {'mask', 'inpaint'}, optional
        For a name: which of its models (default ``'mask'``). For a file: checked
        against the file's kind if given.
    device : str or torch.device
        Where to run (``'cpu'``, ``'cuda'``).
    zoo : path-like, optional
        Search this zoo directory alone for names (default: the shipped zoo, then the
        user zoo; see :mod:`crforge.deepcr_models.registry`).

    Returns
    -------
    ZooModel

    Raises
    ------
    InputError
        An unknown name (the message lists the zoos' models), a file that is not a
        crforge model, or a kind mismatch.
    WeightsError
        (an InputError) The weights file is missing or its sha256 differs from the
        record's (the message names the file and both hashes).
    """
    if kind is not None and kind not in ("mask", "inpaint"):
        raise InputError(f"kind={kind!r}: expected 'mask' or 'inpaint'")
    device = torch.device(device)
    if isinstance(name_or_path, ZooModel):
        return _on_device(name_or_path, kind, device)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str, path or ZooModel, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    if text.lower().startswith("deepcr:"):
        return _from_deepcr(text, kind, device)
    path = Path(text)
    if path.suffix in (".pt", ".pth") or os.sep in text or path.exists():
        return _from_file(path, kind, device)
    rec, zdir = reg.find_record(text, kind or "mask", zoo)
    return _from_file(zdir / rec.weights, None, device, sha256=rec.sha256, record=rec)


def list_models(zoo: str | os.PathLike | None = None, *, kind: str | None = None) -> list[reg.ModelRecord]:
    """The model records of the zoos (optionally only one ``kind``), sorted by name and kind.

    Without ``zoo``: the shipped zoo's and the user zoo's (a model in both: the
    user's); with it, that directory's alone.
    """
    if kind is not None and kind not in ("mask", "inpaint"):
        raise InputError(f"kind={kind!r}: expected 'mask', 'inpaint' or None")
    return [r for r, _ in reg.all_records(zoo) if kind is None or r.kind == kind]


# --------------------------------------------------------------------------- tiling


def receptive_radius(depth: int) -> int:
    """An upper bound of the UNet's receptive radius in pixels.

    Each 3x3 convolution at level ``k`` adds ``2**k`` pixels, each 2x2 pooling or
    transposed convolution up to ``2**(k-1)``. Measured radii (gradient support):
    2, 9, 23, 51 for depths 1-4; this bound gives 2, 10, 26, 58.
    """
    if not isinstance(depth, int) or depth < 1:
        raise InputError(f"depth={depth!r}: expected an int >= 1")
    r = 2
    for k in range(1, depth):
        r += 2 ** (k - 1) + 2 * 2 ** k  # pool, two convolutions going down
        r += 2 ** (k - 1) + 2 * 2 ** (k - 1)  # transposed convolution, two convolutions going up
    return r


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _axis_windows(n: int, tile: int, overlap: int, step: int) -> tuple[list[tuple[int, int, int]], int]:
    """(window start, core start, core end) along one axis of padded length ``n``, and the window length.

    All windows have the same length (so they batch); every window starts on a
    multiple of ``step``; every core has at least ``overlap`` pixels of window on
    each side, except at the frame's edges.
    """
    if n <= tile:
        return [(0, 0, n)], n
    core_max = tile - 2 * overlap
    if core_max < step:
        raise InputError(f"tile={tile}: too small for overlap={overlap} (need tile > 2 * overlap + {step})")
    k = -(-n // core_max)
    core = _round_up(-(-n // k), step)
    window = min(core + 2 * overlap, n)
    out = []
    c0 = 0
    while c0 < n:
        c1 = min(c0 + core, n)
        w0 = min(max(c0 - overlap, 0), n - window)
        out.append((w0, c0, c1))
        c0 = c1
    return out, window


def _check_tiling(tile: Any, overlap: Any, depth: int) -> tuple[int, int, int]:
    step = 2 ** (depth - 1)
    if not isinstance(tile, (int, np.integer)) or isinstance(tile, bool) or tile < 8 * step:
        raise InputError(f"tile={tile!r}: expected an int >= {8 * step}")
    if overlap is None:
        overlap = receptive_radius(depth)
    if not isinstance(overlap, (int, np.integer)) or isinstance(overlap, bool) or overlap < 0:
        raise InputError(f"overlap={overlap!r}: expected an int >= 0 (or None: the receptive radius)")
    if overlap < receptive_radius(depth):
        logger.warning("overlap=%d is below the depth-%d receptive radius %d: tile seams may show",
                       overlap, depth, receptive_radius(depth))
    return int(tile) // step * step, _round_up(int(overlap), step), step


def tile_windows(shape: tuple[int, int], tile: int = DEFAULT_TILE, overlap: int | None = None,
                 depth: int = 2) -> tuple[tuple[int, int], list[tuple[int, int, int, int, int, int]], tuple[int, int]]:
    """The windows :func:`clean` runs the network on.

    Parameters
    ----------
    shape : (int, int)
        Image shape.
    tile, overlap, depth
        As :func:`clean`.

    Returns
    -------
    (padded_shape, windows, window_shape)
        The shape after padding to a multiple of ``2**(depth-1)``; a list of
        ``(wy, wx, cy0, cy1, cx0, cx1)`` (window origin and core bounds); and the
        common window shape.
    """
    tile, overlap, step = _check_tiling(tile, overlap, depth)
    hp, wp = _round_up(shape[0], step), _round_up(shape[1], step)
    ys, wy = _axis_windows(hp, tile, overlap, step)
    xs, wx = _axis_windows(wp, tile, overlap, step)
    wins = [(y0, x0, cy0, cy1, cx0, cx1) for (y0, cy0, cy1) in ys for (x0, cx0, cx1) in xs]
    return (hp, wp), wins, (wy, wx)


def count_tiles(shape: tuple[int, int], tile: int = DEFAULT_TILE, overlap: int | None = None,
                depth: int = 2) -> int:
    """How many windows :func:`clean` runs for an image of ``shape`` (per network)."""
    return len(tile_windows(shape, tile, overlap, depth)[1])


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_tiled(net: nn.Module, planes: list[np.ndarray], depth: int, tile: int, overlap: int | None,
               batch_size: int, device: torch.device, precision: str,
               progress: Callable[[int], None] | None, out_fn: Callable[[torch.Tensor], torch.Tensor],
               *, needed: np.ndarray | None = None, channels: int = 1) -> np.ndarray:
    """Run ``net`` over ``planes`` (same-shape 2-D inputs, one channel each) tile by tile.

    ``out_fn(net, batch)`` gives ``[B, channels, H, W]``; the result is ``[channels, H, W]``.
    ``needed``: the pixels whose output is used (inpainting: the masked ones); a tile
    whose core holds none is not run (its output is left 0).
    """
    shape = planes[0].shape
    (hp, wp), wins, (wy, wx) = tile_windows(shape, tile, overlap, depth)
    if needed is not None:
        skipped = [w for w in wins if not needed[w[2]:w[3], w[4]:w[5]].any()]
        wins = [w for w in wins if needed[w[2]:w[3], w[4]:w[5]].any()]
        if progress is not None and skipped:
            progress(len(skipped))
    if (hp, wp) != shape:
        # zeros = the sky after normalisation (and "not masked" for a mask plane)
        planes = [np.pad(p, ((0, hp - shape[0]), (0, wp - shape[1]))) for p in planes]
    out = np.zeros((channels, hp, wp), np.float32)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bfloat16"
                else nullcontext())
    with torch.inference_mode(), autocast:
        for b0 in range(0, len(wins), batch_size):
            chunk = wins[b0:b0 + batch_size]
            x = np.stack([np.stack([p[y0:y0 + wy, x0:x0 + wx] for p in planes])
                          for (y0, x0, *_rest) in chunk])
            t = torch.from_numpy(x).to(device)
            y = out_fn(net, t).float().cpu().numpy()
            for j, (y0, x0, cy0, cy1, cx0, cx1) in enumerate(chunk):
                out[:, cy0:cy1, cx0:cx1] = y[j, :, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
            if progress is not None:
                progress(len(chunk))
    return out[:, :shape[0], :shape[1]]


# --------------------------------------------------------------------------- sky, units




def unit_factor(bunit: str, model_bunit: str, exptime: float | None) -> float:
    """Factor that converts pixels in ``bunit`` to the model's unit.

    Raises
    ------
    ValueError
        An unknown unit (the known ones are :data:`BUNITS`), or a rate/count
        conversion without a positive ``exptime``.
    """
    units = []
    for name, value in (("bunit", bunit), ("model bunit", model_bunit)):
        key = str(value).strip().upper().replace(" ", "")
        if key not in BUNITS:
            raise InputError(f"{name}={value!r}: expected one of {sorted(BUNITS)}")
        units.append(BUNITS[key])
    rate_in, rate_model = units
    if rate_in == rate_model:
        return 1.0
    if exptime is None or not float(exptime) > 0:
        raise InputError(f"exptime={exptime!r}: a positive exposure time is needed to convert "
                         f"{bunit} to {model_bunit}")
    return float(exptime) if rate_in else 1.0 / float(exptime)


# --------------------------------------------------------------------------- inference


def _mask_out(views: int) -> Callable:
    def out(net, t):
        return net.predict(t, views=views)
    return out


def chosen_views(m: ZooModel, views: int | None) -> int:
    """``views`` (checked), else the record's."""
    return m.views if views is None else check_views(views)


def _inpaint_planes(net, x: np.ndarray, mask: np.ndarray, device: torch.device) -> list[np.ndarray]:
    """The inpaint UNet's input planes, then the base fill and its smoothing, of the whole frame.

    The fills and the context box look further than the UNet (up to
    :data:`~crforge.training.torchfill.REACH` pixels and more): computed once here, the
    tiles need to overlap only by the UNet's receptive radius, and tiled equals untiled.
    """
    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None].to(device)
        mk = torch.from_numpy(mask.astype(np.float32))[None, None].to(device)
        inputs, base, smooth = net.planes(t, mk)
        return [p.float().cpu().numpy() for p in (*inputs[0], base[0, 0], smooth[0, 0])]


def _inpaint_out(net, t):
    # the UNet's input channels, then the base fill and its smoothing; out the prediction
    # and, with the core guard, the prediction with it holding every positive step back
    c = net.unet.inc[0].in_channels
    # the network and its head only where their output is used (the masked pixels; the
    # first design's mask is its last input channel): as [N, C, 1, 1] columns
    under = t[:, net.MASK_CHANNEL if net.fill != "none" else c - 1] > 0
    out = net.unet.forward_at(t[:, :c], under)[:, :, None, None]
    if net.fill == "none":
        pred = torch.zeros_like(t[:, :1], dtype=torch.float32)
        pred[:, 0][under] = out[:, 0, 0, 0].float()
        return pred
    column = lambda a: a.permute(0, 2, 3, 1)[under][:, :, None, None]  # noqa: E731
    args = out, column(t[:, c:c + 1]), column(t[:, c + 1:c + 2])
    guards = (None, torch.ones_like(args[1])) if net.guarded else (None,)
    pred = torch.zeros((t.shape[0], len(guards), *t.shape[2:]), dtype=torch.float32, device=t.device)
    for i, guard in enumerate(guards):
        pred[:, i][under] = net.correct(*args, guard)[:, 0, 0, 0].float()
    return pred


def _guarded(net, x: np.ndarray, mask: np.ndarray, pred: np.ndarray, device: torch.device) -> np.ndarray:
    """The prediction with the core guard applied: where the guard holds a positive step
    back (the two predictions of :func:`_inpaint_out` differ), :meth:`InpaintNet.guard_at
    <crforge.training.models.InpaintNet.guard_at>` decides on the whole frame (its fits
    look beyond the tiles' overlap), and only there."""
    if pred.shape[0] == 1:
        return pred[0]
    free, held = pred
    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None].to(device)
        mk = torch.from_numpy(mask.astype(np.float32))[None, None].to(device)
        at = torch.from_numpy(mask & (free != held))[None, None].to(device)
        guard = net.guard_at(t, mk, at)[0, 0].cpu().numpy() > 0
    return np.where(guard, held, free)


def _as_image(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"image: expected a 2-D array, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise TypeError(f"image: expected real numbers, got dtype {image.dtype}")
    return image


def _normalised(image: np.ndarray, model: ZooModel, factor: float, sky_in: float,
                ignore: np.ndarray | None) -> np.ndarray:
    from crforge.training.data import network_input

    # as in training: an ignored pixel reads as the sky where the record says fill_ignored
    x = network_input(image.astype(np.float32) * np.float32(factor), sky_in * factor, model.normalisation,
                      ignore)
    bad = ~np.isfinite(x)
    if bad.any():  # a model trained without filling ignored pixels still never sees NaN
        x[bad] = np.float32(sky_in * factor / model.scale) if model.normalisation.get("keep_sky") else 0.0
    return x


def _check_common(batch_size, precision, threads):
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r}: expected an int >= 1")
    if precision not in ("float32", "bfloat16"):
        raise InputError(f"precision={precision!r}: expected 'float32' or 'bfloat16'")
    if threads is not None and (not isinstance(threads, int) or threads < 0):
        raise InputError(f"threads={threads!r}: expected an int >= 0 or None")


def _progress(progress, total: int, desc: str):
    """(callback, closer) for ``progress``: False/None, True (a tqdm bar) or a callable."""
    if progress is None or progress is False:
        return None, lambda: None
    if callable(progress):
        return progress, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="tile", leave=False)
    return bar.update, bar.close


def mask_probability(image: np.ndarray, model: str | os.PathLike | ZooModel, *, sky: float | None = None,
                     ignore: np.ndarray | None = None, bunit: str | None = None,
                     exptime: float | None = None, tile: int = DEFAULT_TILE, overlap: int | None = None,
                     batch_size: int = 1, threads: int | None = None, precision: str = "float32",
                     device: str | torch.device | None = None, progress: Any = None,
                     zoo: str | os.PathLike | None = None, views: int | None = None) -> np.ndarray:
    """CR probability of every pixel of a full frame (see :func:`clean` for the parameters).

    Returns
    -------
    numpy.ndarray
        float32, the image's shape, in [0, 1]; 0 on ignored pixels.
    """
    image = _as_image(image)
    _check_common(batch_size, precision, threads)
    m = load(model, kind="mask", zoo=zoo, device=device or _default_device(model))
    views = chosen_views(m, views)
    ign = _with_nonfinite(image, _check_ignore(ignore, image.shape))
    factor = unit_factor(bunit or m.bunit, m.bunit, exptime)
    sky_in = estimate_sky(image, ign) if sky is None else float(sky)
    x = _normalised(image, m, factor, sky_in, ign)
    cb, close = _progress(progress, count_tiles(image.shape, tile, overlap, m.depth), "mask")
    try:
        with _threads(threads):
            p = _run_tiled(m.fast(), [x], m.depth, tile, overlap, batch_size, m.device, precision, cb,
                           _mask_out(views))[0]
    finally:
        close()
    if ign is not None:
        p[ign] = 0.0  # no label is possible there (bad, saturated, no data)
    return p


def inpaint(image: np.ndarray, mask: np.ndarray, model: str | os.PathLike | ZooModel, *,
            sky: float | None = None, ignore: np.ndarray | None = None, bunit: str | None = None,
            exptime: float | None = None, tile: int = DEFAULT_TILE, overlap: int | None = None,
            batch_size: int = 1, threads: int | None = None, precision: str = "float32",
            device: str | torch.device | None = None, progress: Any = None,
            zoo: str | os.PathLike | None = None) -> np.ndarray:
    """Replace the pixels under ``mask`` by the inpaint network's (others untouched).

    Returns
    -------
    numpy.ndarray
        float32 image in the input's unit: the input where ``mask`` is False, the
        network's prediction where it is True.
    """
    image = _as_image(image)
    mask = np.asarray(mask, bool)
    if mask.shape != image.shape:
        raise InputError(f"mask: shape {mask.shape} differs from image {image.shape}")
    _check_common(batch_size, precision, threads)
    m = load(model, kind="inpaint", zoo=zoo, device=device or _default_device(model))
    ign = _with_nonfinite(image, _check_ignore(ignore, image.shape))
    factor = unit_factor(bunit or m.bunit, m.bunit, exptime)
    sky_in = estimate_sky(image, ign) if sky is None else float(sky)
    x = _normalised(image, m, factor, sky_in, ign)
    cb, close = _progress(progress, count_tiles(image.shape, tile, overlap, m.depth), "inpaint")
    try:
        with _threads(threads):
            net = m.fast()
            planes = _inpaint_planes(net, x, mask, m.device)
            pred = _run_tiled(net, planes, m.depth, tile, overlap, batch_size, m.device, precision, cb,
                              _inpaint_out, needed=mask, channels=2 if net.guarded else 1)
            del planes
            pred = _guarded(net, x, mask, pred, m.device)
    finally:
        close()
    # back to the input's unit: x = (image * f - sky * f) / scale (or image * f / scale, sky kept)
    offset = 0.0 if m.normalisation.get("keep_sky", False) else sky_in
    filled = (pred * np.float32(m.scale) / np.float32(factor) + np.float32(offset)).astype(np.float32)
    return np.where(mask, filled, image.astype(np.float32))


def _check_ignore(ignore, shape) -> np.ndarray | None:
    if ignore is None:
        return None
    ign = np.asarray(ignore, bool)
    if ign.shape != shape:
        raise InputError(f"ignore: shape {ign.shape} differs from image {shape}")
    return ign


def _default_device(model) -> torch.device:
    if isinstance(model, ZooModel):
        return model.device
    return torch.device("cpu")


def recommended_threshold(m: ZooModel, threshold: float | None, views: int = 1) -> float:
    """``threshold``, else the record's recommended one for ``views``, else 0.5; checked."""
    if threshold is None:
        threshold = m.record.threshold_for(views) if m.record is not None else None
        if threshold is None and m.threshold is not None:
            threshold = m.threshold
            logger.warning("%s: its recommended threshold %.4g was chosen for the mean of %d symmetric "
                           "views, not %d: give a threshold of your own", m.source, threshold, m.views, views)
        if threshold is None:
            threshold = 0.5
            logger.info("%s has no recommended threshold: using 0.5", m.source)
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) or not 0 <= threshold < 1:
        raise InputError(f"threshold={threshold!r}: expected a probability in [0, 1)")
    return float(threshold)


def clean(image: Any, mask_model: str | os.PathLike | ZooModel,
          inpaint_model: str | os.PathLike | ZooModel | None = None, *, threshold: float | None = None,
          tile: int = DEFAULT_TILE, overlap: int | None = None, sky: float | None = None,
          ignore: np.ndarray | None = None, bunit: str | None = None, exptime: float | None = None,
          header: Mapping | None = None, allow_mismatch: bool = False,
          batch_size: int = 1, threads: int | None = None, precision: str = "float32",
          device: str | torch.device | None = None, progress: Any = None,
          zoo: str | os.PathLike | None = None, views: int | None = None) -> Any:
    """Find (and optionally inpaint) the cosmic rays of a full frame.

    Parameters
    ----------
    image : numpy.ndarray or astropy.nddata.NDData
        One chip, 2-D, any size. An ``NDData``/``CCDData`` brings its unit (electrons,
        or electrons/s with ``meta['EXPTIME']``), mask (ignored pixels), uncertainty
        (non-finite: ignored; carried over) and ``meta`` (checked as ``header``).
    mask_model, inpaint_model : str, path-like or ZooModel
        A zoo name, a checkpoint or weights file (a zoo's brings its record),
        ``deepcr:ACS-WFC`` (mask), or a loaded model (:func:`load`).
    threshold : float, optional
        CR probability threshold; default the record's recommended one, else 0.5.
    tile, overlap : int
        Largest window side in pixels (about 1.3 kB per pixel for a 2-32 network),
        and the context around a window's kept core (default the receptive radius:
        the result equals the untiled one).
    sky : float, optional
        The sky in the image's unit; default :func:`estimate_sky` (one value per frame).
    ignore : numpy.ndarray of bool, optional
        Pixels without a usable value (DQ bad, saturated, no data): each network sees
        them as in its training (as the sky where its record says ``fill_ignored``) and
        they are never in the mask. Non-finite pixels are always ignored.
    bunit, exptime : str, float, optional
        The image's unit (``'ELECTRONS'`` or ``'ELECTRONS/S'``; default ``header``'s
        ``BUNIT``, else the model's) and the seconds that convert it to the model's
        (default ``header``'s ``EXPTIME``).
    header : mapping, optional
        The frame's FITS header (primary and SCI keywords merged): its ``INSTRUME``,
        ``DETECTOR``, filter and ``BUNIT`` are checked against the model's record
        (:mod:`crforge.deepcr_models.fitness`).
    allow_mismatch : bool
        Apply the model to data it was not trained for (another imager, filter or a
        unit in counts) with a warning instead of refusing.
    batch_size, threads, precision, device
        Windows per forward pass; ``torch.set_num_threads`` for the call;
        ``'bfloat16'`` autocast (about 1.8x faster on CPUs with bfloat16 instructions,
        probabilities moved by up to about 1e-2) or ``'float32'``; where to run
        (default the model's: CPU for names and paths).
    progress : bool or callable, optional
        True: a tqdm bar over the tiles; a callable gets the tiles done per batch.
    zoo : path-like, optional
        Zoo directory for names (as :func:`load`).
    views : int, optional
        Mean CR probability of 1, 2, 4 or 8 symmetric views (a network pass each;
        ``MaskNet.predict``); default the record's, which its threshold was chosen for.

    Returns
    -------
    (mask, cleaned) or NDData
        For an array: ``mask``, bool, True = cosmic ray; ``cleaned``, float32 in the
        input's unit with the masked pixels inpainted (others exactly the input's), or
        None without an inpaint model. For an ``NDData``: a new one of its class (as
        ccdproc's ``cosmicray_lacosmic``): mask = the input's OR the CR mask, data
        inpainted (with an inpaint model), unit, uncertainty and WCS kept.

    Raises
    ------
    InputError
        A bad argument or unit; data the model was not trained for (``FitnessError``).
    """
    options = {"threshold": threshold, "tile": tile, "overlap": overlap, "sky": sky, "batch_size": batch_size,
               "threads": threads, "precision": precision, "device": device, "progress": progress, "zoo": zoo,
               "views": views}
    if _is_nddata(image):
        return _clean_nddata(image, mask_model, inpaint_model, ignore=ignore, exptime=exptime,
                             allow_mismatch=allow_mismatch, options=options, header=header, bunit=bunit)
    image = _as_image(image)
    m = load(mask_model, kind="mask", zoo=zoo, device=device or _default_device(mask_model))
    if header is not None:
        bunit, exptime = _header_unit(header, bunit, exptime, m=m, allow_mismatch=allow_mismatch)
    return _clean_array(image, m, inpaint_model, ignore=ignore, bunit=bunit, exptime=exptime, **options)


def _header_unit(header: Mapping, bunit: str | None, exptime: float | None, *, m: ZooModel,
                 allow_mismatch: bool) -> tuple[str | None, float | None]:
    """The header checked against ``m``'s record; ``bunit`` and ``exptime``, else the header's.

    A unit in counts, let through by ``allow_mismatch``, is read as the model's.
    """
    desc = fitness.describe_header(header, where="header")
    forced = bool(fitness.check_fitness(m, desc, allow_mismatch=allow_mismatch))
    if bunit is None and header.get("BUNIT") is not None:
        bunit = fitness.normalise_bunit(header["BUNIT"])
        if bunit is None and not forced:
            raise InputError(f"header BUNIT={header['BUNIT']!r}: expected electrons or electrons/s")
    if exptime is None and header.get("EXPTIME") is not None:
        exptime = float(header["EXPTIME"])
    return bunit, exptime


def _clean_array(image: np.ndarray, m: ZooModel, inpaint_model: str | os.PathLike | ZooModel | None, *,
                 threshold: float | None, sky: float | None, ignore: np.ndarray | None, bunit: str | None,
                 exptime: float | None, tile: int, overlap: int | None, batch_size: int, threads: int | None,
                 precision: str, device: str | torch.device | None, progress: Any,
                 zoo: str | os.PathLike | None, views: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`clean` of a checked array with a loaded mask model (parameters as :func:`clean`)."""
    views = chosen_views(m, views)
    threshold = recommended_threshold(m, threshold, views)
    ign = _with_nonfinite(image, _check_ignore(ignore, image.shape))
    if sky is None:
        unit_factor(bunit or m.bunit, m.bunit, exptime)  # a bad unit fails before any work
        sky = estimate_sky(image, ign)
    common = {"sky": sky, "ignore": ign, "bunit": bunit, "exptime": exptime, "tile": tile, "overlap": overlap,
              "batch_size": batch_size, "threads": threads, "precision": precision, "progress": progress,
              "zoo": zoo}
    mask = mask_probability(image, m, device=m.device, views=views, **common) > threshold
    logger.info("%s: %d CR pixels (%.3g%%) at threshold %.4g (%d views), sky %.4g", m.source,
                int(mask.sum()), 100 * mask.mean(), threshold, views, sky)
    if inpaint_model is None:
        return mask, None
    im = load(inpaint_model, kind="inpaint", zoo=zoo, device=device or _default_device(inpaint_model))
    return mask, inpaint(image, mask, im, device=im.device, **common)


def _with_nonfinite(image: np.ndarray, ign: np.ndarray | None) -> np.ndarray | None:
    """``ign`` with the non-finite pixels added (NaN has no CR to find); none finite: an error."""
    bad = ~np.isfinite(image)
    if not bad.any():
        return ign
    if bad.all():
        raise InputError(f"image: no finite pixel (all {image.size} are NaN or infinite)")
    return bad if ign is None else ign | bad


def _is_nddata(obj: Any) -> bool:
    try:
        from astropy.nddata import NDData
    except ImportError:  # pragma: no cover - astropy is a dependency
        return False
    return isinstance(obj, NDData)


def _clean_nddata(nd: Any, mask_model, inpaint_model, *, ignore, exptime, allow_mismatch: bool,
                  options: dict, header: Mapping | None = None, bunit: str | None = None) -> Any:
    """:func:`clean` of an ``NDData``/``CCDData``: its unit, mask, uncertainty and meta respected."""
    if header is not None or bunit is not None:
        raise InputError("an NDData image brings its own unit and meta: give neither bunit nor header")
    meta = dict(nd.meta or {})
    image = _as_image(np.asarray(nd.data))
    m = load(mask_model, kind="mask", zoo=options["zoo"],
             device=options["device"] or _default_device(mask_model))
    desc = fitness.describe_header(meta, where=type(nd).__name__, unit=nd.unit)
    found = fitness.check_fitness(m, desc, allow_mismatch=allow_mismatch)
    bunit = fitness.normalise_bunit(desc.bunit) if desc.bunit is not None else None
    if desc.bunit is not None and bunit is None and not found:
        raise InputError(f"{type(nd).__name__}: unit {desc.bunit!r}: expected electrons or electrons/s")
    if exptime is None and meta.get("EXPTIME") is not None:
        exptime = float(meta["EXPTIME"])
    ign = _check_ignore(ignore, image.shape)
    for extra in (nd.mask, _bad_uncertainty(nd, image.shape)):
        if extra is not None and np.ndim(extra) == 2:
            ign = _check_ignore(extra, image.shape) if ign is None else ign | _check_ignore(extra, image.shape)
    # resolved once here, so that a warning about it is given once
    views = chosen_views(m, options["views"])
    options = {**options, "threshold": recommended_threshold(m, options["threshold"], views)}
    mask, cleaned = _clean_array(image, m, inpaint_model, ignore=ign, bunit=bunit, exptime=exptime, **options)
    return _nddata_result(nd, meta, mask, cleaned, m, options["threshold"], views)


def _bad_uncertainty(nd: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """Pixels whose uncertainty is not a finite number (no usable value there)."""
    unc = getattr(nd, "uncertainty", None)
    arr = getattr(unc, "array", None)
    if arr is None or np.shape(arr) != shape:
        return None
    return ~np.isfinite(np.asarray(arr, dtype=float))


def _nddata_result(nd: Any, meta: dict, mask: np.ndarray, cleaned: np.ndarray | None, m: ZooModel,
                   threshold: float, views: int) -> Any:
    """A new NDData of ``nd``'s class: CR mask OR-ed into its mask, inpainted data, meta noted."""
    import copy

    old = np.zeros(mask.shape, bool) if nd.mask is None or np.ndim(nd.mask) != 2 else np.asarray(nd.mask, bool)
    data = np.array(nd.data, copy=True) if cleaned is None else cleaned
    meta.update({"CRMODEL": str(m.record.name if m.record else m.source)[:68], "CRTHRESH": float(threshold),
                 "CRVIEWS": int(views), "CRNPIX": int(mask.sum())})
    if cleaned is not None:
        meta["CRINPNT"] = True
    return type(nd)(data, unit=nd.unit, mask=old | mask, uncertainty=copy.deepcopy(nd.uncertainty),
                    wcs=nd.wcs, meta=meta)
