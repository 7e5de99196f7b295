"""The labelling stage: AstroDrizzle on a visit -> per-exposure CR and ignore masks.

:func:`label_visit` validates every exposure of a visit
(:mod:`crforge.pipeline.label.validate`), runs AstroDrizzle on copies of the usable
ones in a scratch directory (:mod:`crforge.pipeline.label.astrodrizzle`), writes one
label file per exposure (:mod:`crforge.pipeline.label.labelfile`) and returns a
:class:`~crforge.pipeline.label.result.VisitLabels`, also written as::

    <labels>/<visit>/<root>_label.fits   per chip SCI, CR and IGNORE
    <labels>/<visit>/labels.json         what was run, on what, with which settings

A visit whose ``labels.json`` and label files are all there is kept as it is.
The masks themselves are computed by the pure functions of :mod:`crforge.pipeline.masks`.

Two-exposure visits
-------------------
With two exposures the median is the mean, so half of every CR stays in the reference
and AstroDrizzle's default ``minmed`` settings label only bright events. For visits of
``refine_max_exposures`` or fewer exposures (default 2) crforge therefore runs
AstroDrizzle with ``combine_type='minimum'`` (the reference holds no CR charge at all)
and replaces its CR test by :func:`crforge.pipeline.masks.refine_cr_mask`: hysteresis
thresholding with a noise model that includes the other exposure's noise, and a
threshold raised where the other exposure shows the same residual (sharp stars that
the blotted reference smooths leave a residual in every exposure; a CR in one only).

Three or more exposures
-----------------------
AstroDrizzle's ``driz_cr`` labels CR cores well but only grows them by one pixel with
a second threshold. crforge grows its mask further, by hysteresis into connected
neighbours ``grow_snr`` sigma above the blotted median (the faint charge-diffusion
wings of bright hits), keeping a gradient term off sharp stars.

Figures for both are in the README ("Label quality").
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from crforge.atomic import remove_stale, temporary_name, write_json
from crforge.errors import InputError
from crforge.lock import hold
from crforge.pipeline.label.align import align_exposures, aligned_infos
from crforge.pipeline.label.astrodrizzle import (
    astrodrizzle_kwargs,
    copy_inputs,
    drizzlepac_version,
    refines,
    run_astrodrizzle,
)
from crforge.pipeline.label.config import LabelConfig
from crforge.pipeline.label.labelfile import residuals, write_label
from crforge.pipeline.label.result import REPORT_NAME, ExposureLabels, VisitLabels, read_labels
from crforge.pipeline.label.validate import ExposureInfo, validate_visit

logger = logging.getLogger(__name__)

__all__ = ["label_visit"]


def label_visit(raw_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: LabelConfig | None = None, *,
                overwrite: bool = False, wait: bool = False) -> VisitLabels:
    """Label every exposure of one visit.

    Parameters
    ----------
    raw_dir : path-like
        Directory holding the visit's ``*_flc.fits`` (or ``*_flt.fits``) files.
        They are only read.
    out_dir : path-like
        Directory for this visit's label files (created). A complete previous result
        made with the same settings from the same exposures is kept (the log says
        so); one made otherwise is refused unless ``overwrite``. The call holds the
        directory's lock (:mod:`crforge.lock`) while it works.
    cfg : LabelConfig, optional
        Settings; defaults if ``None``.
    overwrite : bool
        Redo a visit whose labels are complete.
    wait : bool
        Wait for another run labelling into ``out_dir`` instead of refusing.

    Returns
    -------
    VisitLabels
        What is also written to ``out_dir/labels.json``.

    Raises
    ------
    VisitError
        Fewer than ``cfg.min_exposures`` usable exposures; the message lists why
        each unusable one was refused. Its subclass
        :class:`~crforge.pipeline.label.align.AlignmentError` when ``cfg.align`` and
        the exposures could not be aligned (the message names the visit, the
        exposure and why); nothing is labelled.
    DrizzleError
        AstroDrizzle failed; the message has the tail of its log.
    InputError
        Labels made otherwise are in ``out_dir`` (and not ``overwrite``); a
        :class:`crforge.lock.LockedError` when another process labels into it.
    """
    cfg = LabelConfig() if cfg is None else cfg
    if not isinstance(cfg, LabelConfig):
        raise TypeError(f"cfg must be a LabelConfig, got {type(cfg).__name__}")
    cfg.validate()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    # the exposures are checked before the lock creates out_dir: a refused visit leaves nothing
    infos, refused = validate_visit(raw_dir, cfg.min_exposures)
    with hold(out_dir, what="crforge label", wait=wait):
        kept = None if overwrite else _complete_labels(out_dir)
        if kept is not None:
            _check_same_labels(kept, raw_dir, out_dir, cfg)
            logger.info("%s: labels complete, made with the same settings from the same exposures; kept",
                        out_dir)
            return kept
        report = _label(infos, refused, raw_dir.name, out_dir, cfg)
        write_json(out_dir / REPORT_NAME, report.to_json())
    logger.info("labelled %s: %d exposures in %.1f s", report.visit, len(infos), report.seconds_total)
    return report


def _label(infos: list[ExposureInfo], refused: list[str], visit: str, out_dir: Path,
           cfg: LabelConfig) -> VisitLabels:
    """AstroDrizzle in a scratch directory, then the label files; what was done."""
    always = infos[0].instrument.always_refine
    kwargs = astrodrizzle_kwargs(cfg, len(infos), visit, always)
    t0 = time.perf_counter()
    with _scratch_dir(out_dir, keep=cfg.keep_scratch) as scratch:
        alignment = ()
        if cfg.align:
            copy_inputs(infos, scratch)
            alignment = align_exposures(infos, scratch, cfg, visit)  # AlignmentError: not labelled
            infos = aligned_infos(infos, scratch)
        run_astrodrizzle(infos, scratch, kwargs)
        t_driz = time.perf_counter() - t0
        exposures = _write_labels(infos, scratch, out_dir, cfg)
    return VisitLabels(
        visit=visit, instrument=infos[0].instrument.name, filter=infos[0].filter,
        target=infos[0].target, n_exposures=len(infos), refined=refines(cfg, len(infos), always),
        refused=tuple(refused), config=cfg.result_dict(),
        astrodrizzle={k: v for k, v in kwargs.items() if k not in ("output", "runfile")},
        drizzlepac_version=drizzlepac_version(), seconds_astrodrizzle=round(t_driz, 2),
        seconds_total=round(time.perf_counter() - t0, 2), exposures=exposures,
        alignment=tuple(a.to_json() for a in alignment))


def _write_labels(infos: list[ExposureInfo], scratch: Path, out_dir: Path,
                  cfg: LabelConfig) -> tuple[ExposureLabels, ...]:
    """Write every exposure's label file, ``cfg.threads`` at a time."""
    refine = refines(cfg, len(infos), infos[0].instrument.always_refine)
    other = residuals(infos, scratch) if refine else {}
    with ThreadPoolExecutor(max_workers=cfg.threads) as pool:
        return tuple(pool.map(
            lambda i: write_label(infos, i, scratch, out_dir, cfg, refine=refine, other=other),
            range(len(infos))))


@contextlib.contextmanager
def _scratch_dir(out_dir: Path, *, keep: bool) -> Iterator[Path]:
    """A fresh hidden scratch directory in ``out_dir``, removed afterwards unless ``keep``.

    Scratch directories of killed runs (a few GB for a full visit) are removed first.
    """
    remove_stale(out_dir)
    scratch = temporary_name(out_dir / "scratch")
    scratch.mkdir()
    try:
        yield scratch
    finally:
        if keep:
            kept = out_dir / f"scratch-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            scratch.rename(kept)
            logger.info("scratch kept in %s", kept)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _check_same_labels(kept: VisitLabels, raw_dir: Path, out_dir: Path, cfg: LabelConfig) -> None:
    """Refuse complete labels made with other settings, or of other exposures than ``raw_dir``'s."""
    old, new = kept.config, cfg.result_dict()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        shown = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
        raise InputError(f"{out_dir} holds labels made with other settings ({shown}); pass --overwrite "
                         "to label the visit anew, or label into another --out")
    labelled = {Path(e.input).name for e in kept.exposures}
    missing = sorted(n for n in labelled if not (raw_dir / n).is_file())
    if missing:
        raise InputError(f"{out_dir} holds labels of exposures that are not in {raw_dir} "
                         f"({', '.join(missing[:4])}); pass --overwrite to label the visit anew")


def _complete_labels(out_dir: Path) -> VisitLabels | None:
    """The labels of a previous run in ``out_dir`` if its report and every label file are there."""
    if not (out_dir / REPORT_NAME).exists():
        return None
    try:
        report = read_labels(out_dir)
    except InputError as exc:
        logger.info("%s: redone (%s)", out_dir, exc)
        return None
    if all((out_dir / e.label).exists() for e in report.exposures):
        return report
    return None
