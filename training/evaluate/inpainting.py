"""Inpainting figures (the deepCR paper's Table 2): MSE of each fill under evaluation masks.

The evaluation masks are the training's (the union of 1-9 CR masks borrowed from other
stamps of the split, seeded); the error counts only where the observed pixel is known
(not the stamp's own CRs, not ignored), in normalised units ``(norm_scale)^2``.

Two yardsticks: the observed pixel values (``mse``), whose MSE no fill can take below
the pixels' own noise variance (``noise_floor``: the MSE of the noiseless image
itself against the observed one), and, for simulated data sets (schema v2), the
noiseless pixels, sky plus source model (``mse_truth``), which has no such floor.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from crforge.training import metrics as M
from crforge.training.evaluate.config import EvaluateConfig
from crforge.training.evaluate.data import inference_copy
from crforge.training.evaluate.names import INPAINT_METHODS, METHOD_LABELS
from crforge.training.evaluate.runtime import mapped, progress_bar, thread_count

logger = logging.getLogger(__name__)

__all__ = ["inpaint_methods", "fill", "evaluate_inpaint"]


def inpaint_methods(cfg: EvaluateConfig) -> list[str]:
    """The fills evaluated: the network and the inpainting baselines ``cfg`` asks for."""
    return [m for m in INPAINT_METHODS if m == "crforge" or m in cfg.baselines]


def _network_fill(model, x: np.ndarray, masks: np.ndarray, *, batch_size: int,
                  progress: bool | None = False) -> np.ndarray:
    """The inpaint network's fill of the masked pixels of normalised stamps."""
    import torch

    fast = inference_copy(model)
    out = np.empty(x.shape, np.float32)
    cl = torch.channels_last
    with torch.inference_mode(), progress_bar(len(x), "crforge inpaint", progress) as bar:
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i:i + batch_size])[:, None].contiguous(memory_format=cl)
            mb = torch.from_numpy(masks[i:i + batch_size].astype(np.float32))[:, None].contiguous(memory_format=cl)
            out[i:i + batch_size] = fast.inpaint(xb, mb)[:, 0].float().numpy()
            bar.update(len(xb))
    return out


def fill(method: str, x: np.ndarray, masks: np.ndarray, *, model=None, batch_size: int, threads: int,
         progress: bool | None = False) -> np.ndarray:
    """Stamps ``x`` with the pixels of ``masks`` filled by one method.

    Parameters
    ----------
    method : {'crforge', 'median5', 'biharmonic', 'none'}
        The inpaint network ``model``, the 5x5 masked median, biharmonic inpainting, or
        no fill (the sky level, 0 in normalised units).
    x, masks : numpy.ndarray
        Normalised stamps ``[N,S,S]`` and the pixels to fill.
    model : torch.nn.Module, optional
        The inpaint network (``method='crforge'``).
    batch_size : int
        Stamps per forward pass of the network.
    threads : int
        Threads of the baselines.
    progress : bool or None
        A progress bar (``None``: only on a terminal).
    """
    from crforge.training.baselines import biharmonic_fill, median_fill

    if method == "crforge":
        return _network_fill(model, x, masks, batch_size=batch_size, progress=progress)
    if method == "none":
        return np.where(masks, np.float32(0), x)
    fn = {"median5": median_fill, "biharmonic": biharmonic_fill}[method]
    with ThreadPoolExecutor(threads) as pool:
        return np.stack(mapped(pool, lambda i: fn(x[i], masks[i]), len(x), METHOD_LABELS[method], progress))


def _eval_masks(data: dict, seed: int, norm_scale: float, fill_ignored: bool) -> tuple[np.ndarray, np.ndarray]:
    """The pixels each fill replaces, and those scored (as the training's masks, seeded).

    Every fill replaces the borrowed masks and the stamp's own CR labels (at inference
    all CRs are masked); the score counts the borrowed masks outside the stamp's own
    CRs and ignored pixels, where the observed value is known.
    """
    from crforge.training.data import StampDataset

    ds = StampDataset(data["path"], data["split"], kind="inpaint", augment=None, seed=seed,
                      norm_scale=norm_scale, fill_ignored=fill_ignored, keep_sky=False)  # inpaint: never
    try:
        masks, loss = [], []
        for i in data["index"]:
            item = ds[int(i)]
            own = item["cr"][0].numpy() > 0
            masks.append((item["mask"][0].numpy() > 0) | own)
            loss.append((item["loss_mask"][0].numpy() > 0) & ~own)
    finally:
        ds.close()
    return np.stack(masks), np.stack(loss)


def _scores(pred: np.ndarray, x: np.ndarray, truth: np.ndarray | None, loss: np.ndarray,
            groups: dict[str, np.ndarray]) -> dict:
    """MSE of a fill per group against the observed pixels and, when known, the noiseless ones."""
    out = {"mse": {name: M.masked_mse(pred[sel], x[sel], loss[sel])[0] for name, sel in groups.items()}}
    if truth is not None:
        out["mse_truth"] = {name: M.masked_mse(pred[sel], truth[sel], loss[sel])[0]
                            for name, sel in groups.items()}
    return out


def evaluate_inpaint(data: dict, x: np.ndarray, groups: dict[str, np.ndarray], model, ckpt,
                     cfg: EvaluateConfig, *, progress: bool | None = False) -> dict:
    """MSE of the network's and the baselines' fills under the evaluation masks.

    Parameters
    ----------
    data : dict
        The stamps (:func:`crforge.training.evaluate.data.load_stamps`).
    x : numpy.ndarray
        The stamps normalised for the network (:func:`crforge.training.evaluate.data.normalised`).
    groups : dict of str to numpy.ndarray
        Stamp selections the figures are given for (``all`` and each field type).
    model, ckpt
        The inpaint network and its :class:`~crforge.training.checkpoint.Checkpoint`.
    cfg : EvaluateConfig
        Settings.
    progress : bool or None
        Progress bars (``None``: only on a terminal).

    Returns
    -------
    dict
        The evaluation document's sections ``inpaint`` (per method: ``mse``, with the
        noiseless pixels ``mse_truth``, and ``pixels`` per group, ``seconds_per_100``),
        ``inpaint_units`` and, with the noiseless pixels, ``inpaint_noise_floor`` (per
        group: the MSE of the noiseless pixels against the observed ones).
    """
    from crforge.training.evaluate.data import normalised_noiseless

    norm = ckpt.normalisation
    truth = normalised_noiseless(data, ckpt)
    masks, loss = _eval_masks(data, cfg.seed, float(norm["scale"]), bool(norm.get("fill_ignored", True)))
    n = len(x)
    figures = {}
    for m in inpaint_methods(cfg):
        t0 = time.perf_counter()
        pred = fill(m, x, masks, model=model, batch_size=cfg.batch_size, threads=thread_count(cfg.threads),
                    progress=progress)
        sec = time.perf_counter() - t0
        logger.info("%s: filled %d stamps in %.1f s", METHOD_LABELS[m], n, sec)
        figures[m] = {**_scores(pred, x, truth, loss, groups), "seconds_per_100": round(100 * sec / n, 3),
                      "pixels": {name: int(loss[sel].sum()) for name, sel in groups.items()}}
    out = {"inpaint": figures, "inpaint_units": f"({norm['scale']:g} {data['bunit'].lower()})^2"}
    if truth is not None:
        out["inpaint_noise_floor"] = _scores(truth, x, None, loss, groups)["mse"]
    return out
