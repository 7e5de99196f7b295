"""Asking MAST: visits by criteria (``crforge query``) and the visits of manifest rows.

Finding goes through ``astroquery.mast.Observations`` (the real client: the Mashup
``columnsconfig`` request, ``Mast.Caom.Filtered`` for the observations and
``Mast.Caom.Products`` for their products, all on ``astroquery.mast.conf.server`` or
``[archive] server``). What the answers make is :mod:`crforge.pipeline.archive.visits`'
business: exposures of the ``HST`` collection only, grouped into visits of one product
type.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crforge.errors import InputError
from crforge.pipeline.archive.config import ArchiveConfig, checked_config
from crforge.pipeline.archive.visits import (
    DOWNLOAD_PATH,
    Visit,
    VisitKey,
    choose_product,
    collect_members,
    group_visits,
    is_rootname,
    min_files,
    product_prefs,
)
from crforge.pipeline.instruments import get_instrument
from crforge.pipeline.manifest import VisitSpec

logger = logging.getLogger(__name__)

__all__ = ["ArchiveError", "Criteria", "mast_criteria", "find_visits", "resolve_specs"]

#: Observations per ``Mast.Caom.Products`` request: a few hundred keep the request small.
_PRODUCTS_BATCH = 200


class ArchiveError(RuntimeError):
    """MAST could not be queried, or answered something unusable."""


@dataclass
class Criteria:
    """What to look for on MAST (``crforge query`` without a manifest).

    Parameters
    ----------
    instrument : str
        One of crforge's imagers (``ACS/WFC``, ``WFC3/UVIS``, ``ACS/HRC``, ``STIS/CCD``,
        ``WFPC2``); MAST is asked for its ``instrument_name`` values
        (``Instrument.mast_names``: ``WFPC2/WFC`` and ``WFPC2/PC`` for WFPC2).
    filters : tuple of str
        Filters (any of them); empty: every filter.
    exptime : tuple of float, optional
        ``(min, max)`` seconds of MAST's ``t_exptime`` of an observation (for an
        association: its combined exposure time).
    proposal_ids : tuple of int
        Proposals (any of them); empty: every proposal.
    dates : tuple of str, optional
        ``(start, end)`` of the observation start, ISO dates (``2005-01-31``) or MJD.
    target_classification : str
        MAST's ``target_classification`` (one of its ``;``-separated classes, e.g.
        ``GLOBULAR CLUSTER``; ``*`` is a wildcard).
    """

    instrument: str = "ACS/WFC"
    filters: tuple[str, ...] = ()
    exptime: tuple[float, float] | None = None
    proposal_ids: tuple[int, ...] = ()
    dates: tuple[str, str] | None = None
    target_classification: str = ""

    def validate(self) -> None:
        """Raise :class:`~crforge.errors.InputError` naming a bad parameter and its value."""
        from crforge.pipeline.instruments import get_instrument

        get_instrument(self.instrument)
        if self.exptime is not None:
            if len(self.exptime) != 2 or not 0 <= self.exptime[0] <= self.exptime[1]:
                raise InputError(f"exptime={self.exptime!r}: expected (min, max) seconds, 0 <= min <= max")
        for p in self.proposal_ids:
            if isinstance(p, bool) or not isinstance(p, int) or p <= 0:
                raise InputError(f"proposal_ids: {p!r} is not a proposal number")
        if self.dates is not None:
            if len(self.dates) != 2:
                raise InputError(f"dates={self.dates!r}: expected (start, end)")
            a, b = (_mjd(d, "dates") for d in self.dates)
            if a > b:
                raise InputError(f"dates={self.dates!r}: start after end")
        if not (self.filters or self.proposal_ids or self.target_classification or self.dates):
            raise InputError("criteria: give at least one of filters, proposal_ids, dates or "
                             "target_classification (a query of a whole instrument is too large)")


def _mast_names(instrument: str) -> str | list[str]:
    """MAST's ``instrument_name`` criterion for one of crforge's imagers (one value, or a list)."""
    names = list(get_instrument(instrument).mast_names)
    return names[0] if len(names) == 1 else names


def _kinds(instrument: str) -> list[str]:
    """MAST's ``productSubGroupDescription`` of the files fetched for an imager's exposures."""
    return [k.upper() for k in get_instrument(instrument).archive_kinds]


def _mjd(value: Any, name: str) -> float:
    """An ISO date/time or an MJD number as MJD."""
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    from astropy.time import Time

    try:
        return float(Time(str(value), scale="utc").mjd)
    except ValueError:
        raise InputError(f"{name}: {value!r} is neither an ISO date (2005-01-31) nor an MJD") from None


def mast_criteria(criteria: Criteria) -> dict:
    """The ``Observations.query_criteria`` keywords of a :class:`Criteria` (pure).

    Parameters
    ----------
    criteria : Criteria
        What to look for.

    Returns
    -------
    dict
        Keyword arguments for ``astroquery.mast.Observations.query_criteria``:
        science images of the HST collection, with the criteria's filters.
    """
    if not isinstance(criteria, Criteria):
        raise TypeError(f"criteria must be a Criteria, got {type(criteria).__name__}")
    criteria.validate()
    out: dict[str, Any] = {"obs_collection": "HST", "instrument_name": _mast_names(criteria.instrument),
                           "dataproduct_type": "image", "intentType": "science"}
    if criteria.filters:
        out["filters"] = [f.upper() for f in criteria.filters]
    if criteria.exptime is not None:
        out["t_exptime"] = [float(criteria.exptime[0]), float(criteria.exptime[1])]
    if criteria.proposal_ids:
        # proposal_id is a text column on MAST
        out["proposal_id"] = [str(p) for p in criteria.proposal_ids]
    if criteria.dates is not None:
        out["t_min"] = [_mjd(criteria.dates[0], "dates"), _mjd(criteria.dates[1], "dates")]
    if criteria.target_classification:
        out["target_classification"] = criteria.target_classification
    return out


# --------------------------------------------------------------------------------------
# astroquery
# --------------------------------------------------------------------------------------


def _observations(cfg: ArchiveConfig):
    """An ``astroquery.mast.ObservationsClass`` asking ``cfg.mast_server()``."""
    from astroquery.mast import ObservationsClass

    server = cfg.mast_server()
    obs = ObservationsClass()
    portal = obs._portal_api_connection
    # astroquery builds these URLs from conf.server once, when it is imported; set them
    # from the server in use now, so that conf.server (or [archive] server) changed
    # later is the one asked
    portal.MAST_REQUEST_URL = server + "/api/v0/invoke"
    portal.COLUMNS_CONFIG_URL = server + "/portal/Mashup/Mashup.asmx/columnsconfig"
    portal.MAST_DOWNLOAD_URL = server + DOWNLOAD_PATH
    portal.MAST_BUNDLE_URL = server + "/api/v0.1/Download/bundle"
    portal.PAGESIZE = cfg.pagesize
    # the column configuration is cached on the class, for every server: keep it per
    # connection, so that each server is asked for its own
    portal._column_configs = {}
    return obs


def _rows(table) -> list[dict]:
    """An astropy Table as plain dicts (masked values -> None)."""
    import numpy as np

    out = []
    if table is None:
        return out
    for r in table:
        d = {}
        for c in table.colnames:
            v = r[c]
            if v is np.ma.masked or isinstance(v, np.ma.core.MaskedConstant):
                v = None
            elif isinstance(v, np.generic):
                v = v.item()
            d[c] = v
        out.append(d)
    return out


def _query(obs, cfg: ArchiveConfig, **criteria) -> list[dict]:
    """The exposure observations (HST rootnames) that match ``criteria``."""
    from astroquery.exceptions import NoResultsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoResultsWarning)
        table = obs.query_criteria(pagesize=cfg.pagesize, **criteria)
    return [o for o in _rows(table) if is_rootname(o.get("obs_id"))]


def _products(obs, observations: list[dict], kinds: Sequence[str]) -> list[dict]:
    """The product files of ``kinds`` (:func:`_kinds`) of observations
    (``Mast.Caom.Products``, then astroquery's own ``filter_products``)."""
    from astroquery.exceptions import NoResultsWarning

    out: list[dict] = []
    kinds = list(kinds)  # every type: a row may ask for a product the preference leaves out
    for i in range(0, len(observations), _PRODUCTS_BATCH):
        batch = observations[i:i + _PRODUCTS_BATCH]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoResultsWarning)
            prods = obs.get_product_list([str(o["obsid"]) for o in batch])
            if len(prods):
                prods = obs.filter_products(prods, productSubGroupDescription=kinds, extension="fits")
        out.extend(_rows(prods))
    return out


def _mast_error(exc: BaseException, cfg: ArchiveConfig) -> ArchiveError:
    try:
        server = cfg.mast_server()
    except Exception:  # pragma: no cover - astroquery missing
        server = "MAST"
    return ArchiveError(f"cannot query MAST at {server}: {type(exc).__name__}: {exc}")


def find_visits(criteria: Criteria, cfg: ArchiveConfig | None = None) -> list[Visit]:
    """Find visits on MAST by criteria.

    Parameters
    ----------
    criteria : Criteria
        What to look for.
    cfg : ArchiveConfig, optional
        Server, product preference and ``min_exposures``.

    Returns
    -------
    list of Visit
        Visits with at least ``cfg.min_exposures`` exposures of one product type.

    Raises
    ------
    crforge.errors.InputError
        Bad criteria or config.
    ArchiveError
        MAST could not be queried.
    """
    cfg = checked_config(cfg)
    kw = mast_criteria(criteria)
    obs = _observations(cfg)
    try:
        rows = _query(obs, cfg, **kw)
        logger.info("MAST: %d observation(s) match %s", len(rows), kw)
        prods = _products(obs, rows, _kinds(criteria.instrument))
    except Exception as exc:  # requests and astroquery errors: MAST did not answer usably
        raise _mast_error(exc, cfg) from exc
    visits = group_visits(rows, prods, products_pref=cfg.products, min_exposures=cfg.min_exposures)
    name = get_instrument(criteria.instrument).name
    return [v for v in visits if v.instrument == name]


# --------------------------------------------------------------------------------------
# Manifest rows
# --------------------------------------------------------------------------------------


def resolve_specs(specs: Sequence[VisitSpec], cfg: ArchiveConfig | None = None
                  ) -> dict[str, Visit | str]:
    """Resolve archive rows of a manifest against MAST.

    One ``Mast.Caom.Filtered`` query per (instrument, proposal), one products
    request for the observations of the rows' obsets.

    Parameters
    ----------
    specs : sequence of VisitSpec
        Archive visits (``source == "archive"``).
    cfg : ArchiveConfig, optional
        Server, product preference, ``min_exposures``.

    Returns
    -------
    dict
        Visit name -> its :class:`Visit`, or a string saying why it could not be
        resolved (nothing on MAST, fewer than ``min_exposures`` exposures, listed
        exposures not found, MAST unreachable).
    """
    cfg = checked_config(cfg)
    for s in specs:
        if not isinstance(s, VisitSpec) or s.source != "archive":
            raise InputError(f"specs: {getattr(s, 'name', s)!r} is not an archive visit")
    batches: dict[tuple[str, int], list[VisitSpec]] = {}
    for s in specs:
        batches.setdefault((s.archive["instrument"], s.archive["proposal_id"]), []).append(s)
    out: dict[str, Visit | str] = {}
    obs = _observations(cfg) if batches else None
    for (inst, pid), rows in batches.items():
        try:
            groups = _proposal_members(obs, cfg, inst, pid, rows)
        except Exception as exc:  # requests, astroquery: every row of the batch fails
            err = _mast_error(exc, cfg)
            out.update((s.name, str(err)) for s in rows)
            continue
        out.update((s.name, _resolve_row(s, groups, cfg)) for s in rows)
    return out


def _proposal_members(obs, cfg: ArchiveConfig, instrument: str, proposal_id: int,
                      rows: Sequence[VisitSpec]) -> dict[VisitKey, dict]:
    """The members on MAST of the rows' obsets and filters of one proposal
    (:func:`~crforge.pipeline.archive.visits.collect_members`)."""
    obsets = {s.archive["obset_id"] for s in rows}
    filters = sorted({s.archive["filter"] for s in rows})
    found = _query(obs, cfg, obs_collection="HST", instrument_name=_mast_names(instrument),
                   proposal_id=str(proposal_id), filters=filters)
    found = [o for o in found if str(o["obs_id"]).strip().lower()[4:6] in obsets]
    return collect_members(found, _products(obs, found, _kinds(instrument)))


def _resolve_row(spec: VisitSpec, groups: dict[VisitKey, dict], cfg: ArchiveConfig) -> Visit | str:
    """The visit of one manifest row among its proposal's members, or why there is none."""
    a = spec.archive
    inst, pid = a["instrument"], a["proposal_id"]
    where = f"proposal {pid} obset {a['obset_id']} {a['filter']} ({inst})"
    g = groups.get((pid, a["obset_id"], a["filter"]))
    if g is None:
        return (f"{where}: no {'/'.join(get_instrument(inst).products).upper()} exposures on MAST "
                "(the obset is the 'ss' of the rootnames ipppssoot; check it against MAST)")
    members = dict(g["members"])
    if a["exposures"]:
        missing = [r for r in a["exposures"] if r not in members]
        if missing:
            return f"{where}: exposure(s) {' '.join(missing)} not found on MAST"
        members = {r: members[r] for r in a["exposures"]}
    prefs = [a["product"]] if a["product"] else product_prefs(inst, cfg.products)
    kind, chosen, left = choose_product(members, prefs)
    if a["exposures"] and left:
        beside = "".join(f" with its {c.upper()}" for c in get_instrument(inst).companions(kind))
        return f"{where}: no {kind.upper()} product{beside} for {' '.join(left)}"
    if len(chosen) < min_files(inst, cfg.min_exposures):
        return (f"{where}: {len(chosen)} {kind.upper()} exposure(s) on MAST, "
                f"at least {cfg.min_exposures} needed")
    if left:
        logger.warning("visit %s: %s have no %s product; left out", spec.name, " ".join(left), kind.upper())
    return Visit(inst, a["filter"], pid, a["obset_id"], kind, chosen,
                 a["target"] or g["target"], g["classification"])
