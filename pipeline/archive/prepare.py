"""A manifest's archive visits on disk, ready to label (``crforge fetch``, ``crforge dataset``).

For each row: the exposures it lists with sizes, or a resolution recorded in
``<work>/raw/<visit>/archive.json`` by an earlier run, are fetched where missing; a
row with neither is resolved on MAST first (and the resolution recorded). A visit
with fewer than ``min_exposures`` verified exposures fails (with ``partial_visits =
false``, the default, any missing exposure fails the visit: the data set does not
depend on which transfers happened to succeed).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from crforge.atomic import write_json
from crforge.errors import InputError
from crforge.pipeline.archive.config import ArchiveConfig, checked_config
from crforge.pipeline.archive.download import FileResult, VisitResult, fetch_visits
from crforge.pipeline.archive.query import resolve_specs
from crforge.pipeline.archive.visits import Exposure, Visit, min_files
from crforge.pipeline.instruments import get_instrument
from crforge.pipeline.manifest import VisitSpec

logger = logging.getLogger(__name__)

__all__ = ["RESOLUTION_FILE", "fetch_specs", "prepare_visits"]

#: Per-visit record of a resolution, in ``<work>/raw/<visit>/``.
RESOLUTION_FILE = "archive.json"


def _recorded(spec: VisitSpec, raw: Path) -> Visit | None:
    """The resolution recorded in ``raw`` for a manifest row, when it still fits the row."""
    rec = raw / RESOLUTION_FILE
    if not rec.exists():
        return None
    try:
        v = Visit.from_json(json.loads(rec.read_text())["visit"])
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("%s: unreadable (%s); resolving again", rec, exc)
        return None
    a = spec.archive
    same = (v.proposal_id, v.obset_id, v.filter) == (a["proposal_id"], a["obset_id"], a["filter"])
    listed = not a["exposures"] or [e.rootname for e in v.exposures] == a["exposures"]
    if same and listed and (not a["product"] or a["product"] == v.product):
        return v
    return None


def _planned(spec: VisitSpec, raw: Path) -> Visit | None:
    """The exposures to fetch of a manifest row, when known without a query."""
    a = spec.archive
    if a["exposures"] and a["sizes"]:
        inst = get_instrument(a["instrument"])
        kind = a["product"] or inst.products[0]  # sizes without a product: the imager's first
        comp = inst.companions(kind)
        exposures = [Exposure(r, f"{r}_{kind}.fits", s, tuple((f"{r}_{c}.fits", b) for c, b in zip(comp, cs)))
                     for r, s, cs in zip(a["exposures"], a["sizes"], a["companion_sizes"])]
        return Visit(a["instrument"], a["filter"], a["proposal_id"], a["obset_id"], kind, exposures, a["target"])
    return _recorded(spec, raw)


def _on_disk(spec: VisitSpec, raw: Path) -> bool:
    """Exposures already there for a row that says nothing to verify them with."""
    a = spec.archive
    kinds = get_instrument(a["instrument"]).products
    if a["exposures"]:
        return all(any((raw / f"{r}_{k}.fits").exists() for k in kinds) for r in a["exposures"])
    return raw.is_dir() and any(any(raw.glob(f"*_{k}.fits")) for k in kinds)


def _complete(v: Visit, raw: Path) -> bool:
    """Every file of every exposure of ``v`` in ``raw`` with its listed size."""
    return all((raw / name).exists() and (raw / name).stat().st_size == size
               for e in v.exposures for name, size in e.files)


def _write_resolution(raw: Path, v: Visit, server: str) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    write_json(raw / RESOLUTION_FILE, {"visit": v.to_json(), "server": server,
                                       "resolved_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def _plan(specs: Sequence[VisitSpec], raw_root: Path
          ) -> tuple[dict[str, Visit], dict[str, VisitResult], list[VisitSpec]]:
    """(visits whose files are known, visits used as they are on disk, rows to resolve)."""
    plans: dict[str, Visit] = {}
    as_is: dict[str, VisitResult] = {}
    unresolved: list[VisitSpec] = []
    for s in specs:
        if s.source != "archive":
            raise InputError(f"specs: visit {s.name!r} is not an archive visit")
        raw = raw_root / s.name
        plan = _planned(s, raw)
        if plan is not None:
            plans[s.name] = plan
        elif _on_disk(s, raw):
            logger.info("visit %s: exposures on disk, no sizes to verify them with: used as they are", s.name)
            as_is[s.name] = VisitResult(s.name)
        else:
            unresolved.append(s)
    return plans, as_is, unresolved


def _resolve(specs: Sequence[VisitSpec], cfg: ArchiveConfig, raw_root: Path
             ) -> tuple[dict[str, Visit], dict[str, VisitResult]]:
    """Resolve rows on MAST, recording each resolution: (visits, failures)."""
    logger.info("resolving %d visit(s) on MAST", len(specs))
    server = cfg.mast_server()
    plans: dict[str, Visit] = {}
    failed: dict[str, VisitResult] = {}
    for name, v in resolve_specs(specs, cfg).items():
        if isinstance(v, str):
            failed[name] = VisitResult(name, reason=f"not resolved on MAST: {v}")
        else:
            _write_resolution(raw_root / name, v, server)
            plans[name] = v
    return plans, failed


def _not_ready(name: str, res: VisitResult, cfg: ArchiveConfig, instrument: str = "") -> str:
    """Why a fetched visit cannot be labelled (empty when it can).

    An exposure counts when all its files are verified (WFPC2: c0m and c1m). A STIS
    CR-split file holds several exposures (:func:`min_files`); the labelling stage
    counts them.
    """
    n_ok, n = len(res.ready), len(res.exposures)
    why = "; ".join(f"{f.filename}: {f.reason}" for f in res.failed)
    if n_ok < min_files(instrument, cfg.min_exposures):
        return (f"{n_ok} of {n} exposure(s) verified, at least {cfg.min_exposures} needed"
                + (f"; {why}" if why else ""))
    if res.failed and not cfg.partial_visits:
        return (f"{n - n_ok} of {n} exposure(s) could not be fetched: {why} "
                "(rerun to resume; archive.partial_visits=true labels the verified ones)")
    if res.failed:
        logger.warning("visit %s: labelled from %d of %d exposures; %s", name, n_ok, n, why)
    return ""


def _fetch_plans(plans: dict[str, Visit], raw_root: Path, cfg: ArchiveConfig, progress: bool | None
                 ) -> dict[str, VisitResult]:
    """Fetch what is missing of the planned visits; each result says why it is not ready."""
    need = [n for n, v in plans.items() if not _complete(v, raw_root / n)]
    fetched = ({r.name: r for r in fetch_visits([plans[n] for n in need], raw_root, cfg,
                                                progress=progress, names=need)} if need else {})
    out = {}
    for name, v in plans.items():
        res = fetched.get(name) or VisitResult(name, [
            FileResult(f, size, "present", path=str(raw_root / name / f), rootname=e.rootname)
            for e in v.exposures for f, size in e.files])
        res.reason = _not_ready(name, res, cfg, v.instrument)
        out[name] = res
    return out


def fetch_specs(specs: Sequence[VisitSpec], work: str | os.PathLike, cfg: ArchiveConfig | None = None,
                *, progress: bool | None = None) -> dict[str, VisitResult]:
    """Make the archive visits of a manifest ready on disk: resolve, fetch, verify.

    For each row: the exposures it lists with sizes (or a resolution recorded in
    ``<work>/raw/<visit>/archive.json`` by an earlier run) are fetched where missing;
    a row with neither is resolved on MAST first (and the resolution recorded). A
    row whose visit directory already holds exposures and that gives nothing to check
    them with (no sizes, no record) is used as it is, without the network.

    Parameters
    ----------
    specs : sequence of VisitSpec
        Archive visits.
    work : path-like
        Work directory (files go to ``<work>/raw/<visit>/``).
    cfg : ArchiveConfig, optional
    progress : bool, optional
        Progress bar in bytes (default: when stderr is a terminal).

    Returns
    -------
    dict
        Visit name -> :class:`~crforge.pipeline.archive.download.VisitResult`; its
        ``reason`` is empty when the visit is ready to label, else says why not
        (naming the files and their reasons).
    """
    cfg = checked_config(cfg)
    raw_root = Path(work) / "raw"
    plans, out, unresolved = _plan(specs, raw_root)
    if unresolved:
        resolved, failed = _resolve(unresolved, cfg, raw_root)
        plans.update(resolved)
        out.update(failed)
    out.update(_fetch_plans(plans, raw_root, cfg, progress))
    return {s.name: out[s.name] for s in specs}


def prepare_visits(specs: Sequence[VisitSpec], work: str | os.PathLike, cfg: ArchiveConfig | None = None,
                   *, progress: bool | None = None) -> dict[str, str]:
    """The dataset stage's archive step: :func:`fetch_specs`, keeping the failures.

    Returns
    -------
    dict
        Visit name -> reason, for the visits that are not ready to label.
    """
    return {k: f"fetch failed: {r.reason}" for k, r in fetch_specs(specs, work, cfg, progress=progress).items()
            if r.reason}
