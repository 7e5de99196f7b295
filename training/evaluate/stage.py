"""Evaluate a trained run as the deepCR paper does (``crforge evaluate``, ``make evaluate``).

On one split of an HDF5 training set (default ``test``), in one run and on the same
stamps:

Detection (the paper's Table 1 and Figure 4)
    ROC curves and the true-positive rate at fixed false-positive rates (default 0.05%
    and 0.5%), plain and with the 3x3-dilated prediction (:mod:`crforge.training.metrics`),
    per field type and overall, for crforge's mask model, deepCR's published model of
    the data set's instrument (package ``deepCR`` 0.3.1) and LACosmic (astroscrappy,
    swept over ``sigclip`` to trace its ROC; its default point is reported too).
    Ignored pixels (bad, saturated, no data) count for nobody. The figures are against
    the data set's labels (AstroDrizzle's, as in the paper); where the data set holds
    the injected truth (simulated visits) they are repeated against the truth, and
    the labels themselves are scored against it (label quality), so a reader sees how
    much of a model's error is label noise.

Inpainting (Table 2)
    Mean squared error under evaluation masks (the union of 1-9 CR masks borrowed
    from other stamps of the split, seeded; counted only where the true pixel is
    known: not the stamp's own CRs, not ignored) for crforge's inpaint model, the 5x5
    masked median and biharmonic inpainting; in normalised units, ``(norm_scale)^2``
    (``(100 e-)^2`` by default).

Photometric fidelity
    Stars (isolated peaks free of CRs and ignored pixels) are hit by real CR shapes
    taken from the split's labels, each method fills the hit pixels, and the aperture
    flux is compared with the flux before the hit: median and 90th percentile of the
    absolute fractional error per method and field type.

Runtimes
    Seconds per 100 stamps of each method, measured in this run on this machine.

Outputs in the run directory (``runs/<name>/``, holding ``mask/`` and ``inpaint/``):
``evaluation.json`` (format ``crforge-evaluation/1``), ``report.md`` (laid out like
the paper's Tables 1 and 2) and ``roc.png`` (one panel per field type, log FPR axis).
The recommended threshold of the mask model is chosen on the ``val`` split at
``threshold_fpr`` and stored with the figures (``crforge publish`` takes it from there).

This module runs the evaluation and writes its outputs; the work is in
:mod:`~crforge.training.evaluate.data` (stamps and networks),
:mod:`~crforge.training.evaluate.detection`, :mod:`~crforge.training.evaluate.inpainting`,
:mod:`~crforge.training.evaluate.photometry` and :mod:`~crforge.training.evaluate.report`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from crforge.errors import InputError
from crforge.lock import hold
from crforge.pipeline.datafile.validate import require_valid
from crforge.training.evaluate.config import EvaluateConfig
from crforge.training.evaluate.data import as_str, load_network, load_stamps, normalised
from crforge.training.evaluate.detection import evaluate_mask
from crforge.training.evaluate.document import EVALUATION_FILE, EVALUATION_FORMAT, write_evaluation
from crforge.training.evaluate.inpainting import evaluate_inpaint, inpaint_methods
from crforge.training.evaluate.photometry import photometric_fidelity
from crforge.training.evaluate.report import plot_roc, write_report
from crforge.training.evaluate.runtime import machine, thread_count

logger = logging.getLogger(__name__)

__all__ = ["EVALUATION_FORMAT", "OUTPUT_FILES", "evaluate_run"]


#: What an evaluation writes into its output directory.
OUTPUT_FILES = (EVALUATION_FILE, "report.md", "roc.png", "real.png")

#: The networks a run may hold, in the document's order.
_KINDS = ("mask", "inpaint")


def evaluate_run(run_dir: str | os.PathLike, data_path: str | os.PathLike, cfg: EvaluateConfig,
                 out_dir: str | os.PathLike | None = None, *, progress: bool | None = False,
                 wait: bool = False, overwrite: bool = False) -> dict:
    """Evaluate a run's models and the baselines; write JSON, report and ROC plot.

    Parameters
    ----------
    run_dir : str or path-like
        The run directory (``runs/<name>``, holding ``mask/`` and/or ``inpaint/``).
    data_path : str or path-like
        The HDF5 data set.
    cfg : EvaluateConfig
        Settings.
    out_dir : str or path-like, optional
        Where the outputs go (default: ``run_dir``).
    progress : bool or None
        Progress bars on stderr (``None``: only on a terminal).
    wait : bool
        Wait for another run writing the output directory instead of refusing; the
        call holds its lock (:mod:`crforge.lock`) while it evaluates and writes.
    overwrite : bool
        Replace an evaluation already in the output directory; without it such a
        directory is refused before any work is done.

    Returns
    -------
    dict
        The evaluation (what ``evaluation.json`` holds).

    Raises
    ------
    FileNotFoundError
        No run directory or data file at the path.
    InputError
        A bad setting in ``cfg``, a run directory without networks, a checkpoint or
        data file not as expected; an evaluation already in the output directory (and
        not ``overwrite``).
    crforge.lock.LockedError
        Another process is writing the output directory (and not ``wait``).
    """
    import torch

    if not isinstance(cfg, EvaluateConfig):
        raise TypeError(f"cfg must be an EvaluateConfig, got {type(cfg).__name__}")
    cfg.validate()
    run_dir, data_path = _check_paths(Path(run_dir), Path(data_path))
    out = Path(out_dir) if out_dir is not None else run_dir
    with hold(out, what="crforge evaluate", wait=wait):
        if not overwrite:
            _refuse_earlier_outputs(out)
        nets = _networks(run_dir, cfg.checkpoint)
        threads_before = torch.get_num_threads()
        torch.set_num_threads(thread_count(cfg.threads))
        try:
            doc = _evaluate(data_path, nets, cfg, progress)
        finally:
            torch.set_num_threads(threads_before)
        _write_outputs(doc, out)
    return doc


def _refuse_earlier_outputs(out: Path) -> None:
    """Raise if ``out`` already holds what an evaluation writes (checked under its lock)."""
    there = [name for name in OUTPUT_FILES if (out / name).exists()]
    if there:
        raise InputError(f"{out / there[0]}: an evaluation is already there ({', '.join(there)}); "
                         "pass --overwrite (evaluate_run(overwrite=True)) to replace it, or --out DIR")


def _check_paths(run_dir: Path, data_path: Path) -> tuple[Path, Path]:
    """The run directory and the data file, checked to be there."""
    if not run_dir.exists():
        raise FileNotFoundError(2, "No such run directory", str(run_dir))
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a directory (expected a run directory holding mask/ and/or inpaint/)")
    if not data_path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(data_path))
    require_valid(data_path, what="data set")  # before any network runs or any file is written
    return run_dir, data_path


def _networks(run_dir: Path, which: str) -> dict[str, tuple]:
    """The run's networks by kind: ``(model, checkpoint, path)``; at least one is there."""
    found = {kind: load_network(run_dir, kind, which) for kind in _KINDS}
    nets = {kind: net for kind, net in found.items() if net[0] is not None}
    if not nets:
        expected = " and/or ".join(str(path) for _, _, path in found.values())
        raise InputError(f"{run_dir}: no trained network (expected {expected}; train with `crforge train`)")
    return nets


def _evaluate(data_path: Path, nets: dict[str, tuple], cfg: EvaluateConfig, progress: bool | None) -> dict:
    """The evaluation document of the loaded networks on the configured split."""
    t0 = time.perf_counter()
    data = load_stamps(data_path, cfg.split, per_field_type=cfg.stamps_per_field_type, seed=cfg.seed)
    logger.info("%s: %d %s stamps (%s)", data_path, len(data["index"]), cfg.split, data["instrument"])
    groups = _groups(data["field_type"])
    doc = _document(data, data_path, groups, cfg)
    doc["models"] = {kind: _model_entry(ckpt, path) for kind, (_, ckpt, path) in nets.items()}
    if "mask" in nets:
        model, ckpt, _ = nets["mask"]
        doc.update(evaluate_mask(data, groups, model, ckpt, cfg, progress=progress))
        if cfg.real_frames:
            doc["real"], doc["_real_masks"] = _real_pixels(model, ckpt, doc["threshold"]["value"], cfg)
    if "inpaint" in nets:
        model, ckpt, _ = nets["inpaint"]
        x = normalised(data, ckpt)
        doc.update(evaluate_inpaint(data, x, groups, model, ckpt, cfg, progress=progress))
        if cfg.photometry:
            doc["photometry"] = photometric_fidelity(data, x, model, ckpt, cfg, inpaint_methods(cfg) + ["none"])
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    return doc


def _real_pixels(model, ckpt, threshold: float, cfg: EvaluateConfig) -> tuple[dict, dict]:
    """The mask network beside the baselines on the real frames; their figures and masks."""
    from crforge.pipeline.realframes import RealFramesError, fetch
    from crforge.training.evaluate.realpixels import load_real_images, real_pixel_figures

    try:
        images = load_real_images(fetch(["acs-hrc", "stis-ccd", "wfpc2"]))
    except RealFramesError as exc:
        raise InputError(f"the real frames could not be fetched ({exc}); `crforge realdata` fetches "
                         "them, or set evaluate.real_frames=false to evaluate without them") from exc
    masks: dict = {}
    baselines = tuple(b for b in ("deepcr", "astroscrappy") if b in cfg.baselines)
    # deepCR's fast file beside its 2-32 (on these few frames it costs seconds): the peer of a 2-4 model
    baselines += ("deepcr-2-4",) if "deepcr" in baselines else ()
    figures = real_pixel_figures({"crforge": (model, ckpt, threshold, cfg.views)}, images,
                                 baselines=baselines, masks=masks)
    return figures, {"images": images, "masks": masks}


def _groups(ftypes: np.ndarray) -> dict[str, np.ndarray]:
    """Stamp selections the figures are given for: ``all`` and each field type."""
    groups = {"all": np.ones(len(ftypes), bool)}
    for ft in sorted(set(ftypes)):
        groups[ft] = ftypes == ft
    return groups


def _document(data: dict, data_path: Path, groups: dict, cfg: EvaluateConfig) -> dict[str, Any]:
    """The document's head: format, provenance, data, settings and machine; empty figures."""
    from crforge import __version__
    from crforge import config as cfgmod

    return {
        "format": EVALUATION_FORMAT,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "crforge_version": __version__,
        "data": {"path": str(data_path), "sha256": _sha256(data_path),
                 "manifest_name": data["attrs"]["manifest_name"],
                 "manifest_sha256": data["attrs"]["manifest_sha256"],
                 "instrument": data["instrument"],
                 "filters": data["filters"],
                 "split_filters": sorted({as_str(f) for f in data["meta"]["filter"]}),
                 "split": cfg.split, "n_stamps": len(data["index"]), "split_stamps": data["split_size"],
                 "stamps_by_field_type": {k: int(v.sum()) for k, v in groups.items() if k != "all"},
                 "simulated": "truth" in data, "bunit": data["bunit"]},
        "config": cfgmod.to_dict(cfg),
        "fprs": list(cfg.fprs), "dilation": cfg.dilation,
        "models": {}, "mask": {}, "inpaint": {}, "machine": machine(),
    }


def _model_entry(ckpt, path: Path) -> dict:
    """What the document says of a network: its checkpoint, shape and training state."""
    mc = ckpt.model_config
    # the checkpoint's sha256: crforge publish refuses figures of other weights than it ships
    return {"checkpoint": str(path), "sha256": _sha256(path), "depth": mc["depth"], "width": mc["width"],
            "batch_norm": mc["batch_norm"], "epoch": ckpt.epoch, "step": ckpt.step,
            "normalisation": ckpt.normalisation}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_outputs(doc: dict, out: Path) -> None:
    """``evaluation.json``, ``report.md`` and (with detection figures) ``roc.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    real = doc.pop("_real_masks", None)
    write_report(doc, out / "report.md")
    if real is not None:
        from crforge.training.evaluate.realplots import pick_crops, plot_crops

        crops = [(img, c) for img in real["images"] for c in pick_crops(img, 2 if img.name == "acs-hrc" else 1)
                 if img.name in ("acs-hrc", "stis-ccd[1]", "wfpc2-pc1")]
        plot_crops(crops, real["masks"], out / "real.png")
    if doc["mask"]:
        plot_roc(doc, out / "roc.png")
    # an evaluation replaced with --overwrite must not leave the old one's plots beside it
    written = {EVALUATION_FILE, "report.md"} | ({"real.png"} if real is not None else set()) \
        | ({"roc.png"} if doc["mask"] else set())
    for name in set(OUTPUT_FILES) - written:
        (out / name).unlink(missing_ok=True)
    # last: crforge publish reads evaluation.json, so it appears only beside its own plots
    write_evaluation(out, doc)
