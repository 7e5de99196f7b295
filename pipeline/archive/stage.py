"""The archive stage: find multi-exposure HST visits on MAST and fetch verified exposures.

Two commands::

    crforge query   find visits by criteria, or resolve the rows of a manifest, and
                    write a manifest with the exposures' rootnames and product sizes
    crforge fetch   download a manifest's exposures into <work>/raw/<visit>/

and ``crforge dataset`` does both for the archive visits of its manifest that are not
on disk yet (:func:`prepare_visits`).

Finding goes through ``astroquery.mast.Observations`` (the real client: the Mashup
``columnsconfig`` request, ``Mast.Caom.Filtered`` for the observations and
``Mast.Caom.Products`` for their products, all on ``astroquery.mast.conf.server`` or
``[archive] server``). Observations are taken from the ``HST`` collection only and
only when their ``obs_id`` is an HST rootname (``ipppssoot``): the HAP observations
(``hst_<proposal>_<obset>_...``) and their ``hst_..._flc.fits`` copies are not the
exposures to use. Exposures are grouped into visits by (proposal, obset, filter),
the obset being the ``ss`` of the rootname; a visit is made of one product type, FLC
(CTE-corrected) when every member has one, else FLT (``[archive] products``): a
median of CTE-corrected and uncorrected frames would label the CTE trails.

Fetching uses MAST's download URL (``<server>/api/v0.1/Download/file?uri=
mast:HST/product/<file>``, the URL astroquery builds) with crforge's own HTTP code,
because astroquery's downloader cannot do what a data set of 25 GB needs:

- every file is written as ``<file>.part`` and renamed only when its size is the size
  MAST lists for the product (astroquery's cache only compares the server's
  Content-Length, so a transfer that ends early without an error looks complete);
- a ``.part`` file is resumed with a ``Range`` request (by the next attempt and by a
  rerun), never restarted;
- 5xx answers, timeouts (connect, or no byte for ``timeout`` seconds) and broken
  connections are retried with exponential backoff; a 4xx (a listed product that is
  not served, data that are not public) fails at once, with the reason;
- at most ``concurrency`` downloads run at once, with one progress bar in bytes.

A file that cannot be fetched is reported with its reason and never gets its final
name, so AstroDrizzle never sees it. A visit with fewer than ``min_exposures``
verified exposures fails (with ``partial_visits = false``, the default, any missing
exposure fails the visit: the data set does not depend on which transfers happened
to succeed).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from crforge.errors import InputError
from crforge.pipeline.archive.config import ArchiveConfig
from crforge.pipeline.manifest import VisitSpec, load_manifest
from crforge.pipeline.names import ARCHIVE_PRODUCTS, FIELD_TYPES

logger = logging.getLogger(__name__)

__all__ = [ "Criteria", "Exposure", "Visit", "FileResult", "VisitResult",
    "ArchiveError", "mast_criteria", "normalise_filter", "group_visits", "download_url",
    "find_visits", "resolve_specs", "resolve_manifest", "write_manifest", "manifest_row",
    "fetch_file", "fetch_visits", "fetch_specs", "prepare_visits", "MANIFEST_COLUMNS",
]

#: Where MAST serves a product (astroquery's ``MAST_DOWNLOAD_URL``), below the server.
DOWNLOAD_PATH = "/api/v0.1/Download/file"
#: The CAOM data URI of an HST product.
PRODUCT_URI = "mast:HST/product/{}"
#: Columns of a manifest written by ``crforge query``, in order.
MANIFEST_COLUMNS = ("instrument", "filter", "proposal_id", "obset_id", "field_type", "split",
                    "exposures", "sizes", "product", "target", "label")
#: Per-visit record of a resolution, in ``<work>/raw/<visit>/``.
RESOLUTION_FILE = "archive.json"

_ROOTNAME = re.compile(r"^[a-z][a-z0-9]{8}$")
_PRODUCT_FILE = re.compile(r"^([a-z][a-z0-9]{8})_(flc|flt)\.fits$")


class ArchiveError(RuntimeError):
    """MAST could not be queried, or answered something unusable."""


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------




@dataclass
class Criteria:
    """What to look for on MAST (``crforge query`` without a manifest).

    Parameters
    ----------
    instrument : str
        MAST ``instrument_name`` (``ACS/WFC``, ``WFC3/UVIS``): one of crforge's imagers.
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
        """Raise ``ValueError`` naming a bad parameter and its value."""
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
    out: dict[str, Any] = {"obs_collection": "HST", "instrument_name": criteria.instrument,
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
# Visits (pure)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exposure:
    """One exposure's product: ``<rootname>_<product>.fits`` of ``size`` bytes."""

    rootname: str
    filename: str
    size: int

    @property
    def uri(self) -> str:
        """MAST's data URI of the product."""
        return PRODUCT_URI.format(self.filename)


@dataclass
class Visit:
    """The exposures of one (proposal, obset, filter) on MAST.

    Attributes
    ----------
    instrument, filter : str
        ``ACS/WFC``, ``F606W``.
    proposal_id : int
    obset_id : str
        Two characters, the ``ss`` of the rootnames ``ipppssoot``.
    product : str
        ``flc`` or ``flt``: every exposure is of this type.
    exposures : list of Exposure
    target, classification : str
        MAST's ``target_name`` and ``target_classification``.
    """

    instrument: str
    filter: str
    proposal_id: int
    obset_id: str
    product: str
    exposures: list[Exposure]
    target: str = ""
    classification: str = ""

    @property
    def name(self) -> str:
        """The visit's directory name, as :mod:`crforge.pipeline.manifest` names it."""
        return f"{self.proposal_id}_{self.obset_id}_{self.filter.lower()}"

    @property
    def size(self) -> int:
        """Bytes of all exposures."""
        return sum(e.size for e in self.exposures)

    def to_json(self) -> dict:
        """Plain data (for ``archive.json``)."""
        return {"instrument": self.instrument, "filter": self.filter,
                "proposal_id": self.proposal_id, "obset_id": self.obset_id,
                "product": self.product, "target": self.target,
                "classification": self.classification,
                "exposures": [{"rootname": e.rootname, "filename": e.filename, "size": e.size}
                              for e in self.exposures]}

    @classmethod
    def from_json(cls, doc: Mapping) -> "Visit":
        """Inverse of :meth:`to_json`."""
        return cls(instrument=doc["instrument"], filter=doc["filter"],
                   proposal_id=int(doc["proposal_id"]), obset_id=doc["obset_id"],
                   product=doc["product"], target=doc.get("target", ""),
                   classification=doc.get("classification", ""),
                   exposures=[Exposure(e["rootname"], e["filename"], int(e["size"]))
                              for e in doc["exposures"]])


def normalise_filter(filters: Any) -> str | None:
    """The one filter of MAST's ``filters`` value, or ``None``.

    ``"F606W"`` and ``"F606W;CLEAR2L"`` give ``"F606W"``; two real elements
    (``"F435W;POL0V"``: a polarizer) or none give ``None``: not a plain imaging visit.
    """
    if filters is None:
        return None
    parts = [p.strip().upper() for p in str(filters).replace(",", ";").split(";")]
    real = [p for p in parts if p and not p.startswith("CLEAR") and p not in ("N/A", "DETECTION")]
    return real[0] if len(real) == 1 else None


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in ("", "--")


def _collect(observations: Iterable[Mapping], products: Iterable[Mapping]
             ) -> dict[tuple[int, str, str], dict]:
    """Member products per (proposal, obset, filter) key.

    Returns key -> ``{"instrument", "target", "classification", "members": {root:
    {kind: Exposure}}}``. Only observations whose ``obs_id`` is an HST rootname, and
    only products named ``<rootname>_flc.fits``/``_flt.fits``, count.
    """
    obs_by_id: dict[str, Mapping] = {}
    for o in observations:
        oid = str(o.get("obs_id") or "").strip().lower()
        if not _ROOTNAME.match(oid):
            continue  # HAP (hst_...) and other non-exposure observations
        obs_by_id[str(o.get("obsid")).strip()] = o
    groups: dict[tuple[int, str, str], dict] = {}
    for p in products:
        parent = p.get("parent_obsid")
        if _is_missing(parent):
            parent = p.get("obsID")
        o = obs_by_id.get(str(parent).strip())
        if o is None:
            continue
        fname = str(p.get("productFilename") or "").strip().lower()
        m = _PRODUCT_FILE.match(fname)
        if not m:
            continue  # ASN, DRC, RAW, HAP copies hst_..._flc.fits
        root, kind = m.groups()
        sub = str(p.get("productSubGroupDescription") or kind).strip().lower()
        if sub != kind:
            continue
        size = p.get("size")
        if _is_missing(size) or int(size) <= 0:
            logger.warning("%s: MAST lists no size; left out (it could not be verified)", fname)
            continue
        filt = normalise_filter(o.get("filters"))
        if filt is None:
            logger.debug("%s: filters %r is not one filter; left out", fname, o.get("filters"))
            continue
        try:
            pid = int(str(o.get("proposal_id")).strip())
        except ValueError:
            continue
        key = (pid, root[4:6], filt)
        g = groups.setdefault(key, {"instrument": str(o.get("instrument_name") or ""),
                                    "target": "" if _is_missing(o.get("target_name")) else str(o["target_name"]),
                                    "classification": "" if _is_missing(o.get("target_classification"))
                                    else str(o["target_classification"]),
                                    "members": {}})
        g["members"].setdefault(root, {})[kind] = Exposure(root, fname, int(size))
    return groups


def _choose(members: Mapping[str, Mapping[str, Exposure]], prefs: Sequence[str]
            ) -> tuple[str, list[Exposure], list[str]]:
    """One product type for the whole visit: the first one every member has, else the
    one most members have (ties: preference order). Returns (kind, exposures, left out)."""
    roots = sorted(members)
    best = None
    for kind in prefs:
        have = [r for r in roots if kind in members[r]]
        if len(have) == len(roots):
            best = kind
            break
        if best is None or len(have) > sum(best in members[r] for r in roots):
            best = kind
    kind = best or prefs[0]
    chosen = [members[r][kind] for r in roots if kind in members[r]]
    left = [r for r in roots if kind not in members[r]]
    return kind, chosen, left


def group_visits(observations: Iterable[Mapping], products: Iterable[Mapping], *,
                 products_pref: Sequence[str] = ("flc", "flt"), min_exposures: int = 2
                 ) -> list[Visit]:
    """Group MAST products into visits by (proposal, obset, filter) (pure).

    Parameters
    ----------
    observations : iterable of mapping
        Rows of ``Mast.Caom.Filtered`` (``obsid``, ``obs_id``, ``proposal_id``,
        ``filters``, ``instrument_name``, ``target_name``, ``target_classification``).
    products : iterable of mapping
        Rows of ``Mast.Caom.Products`` (``parent_obsid`` or ``obsID``,
        ``productFilename``, ``productSubGroupDescription``, ``size``).
    products_pref : sequence of str
        Product types in order of preference; one type per visit.
    min_exposures : int
        Visits with fewer exposures are left out.

    Returns
    -------
    list of Visit
        Sorted by proposal, obset and filter.
    """
    prefs = [p.lower() for p in products_pref]
    if not prefs or any(p not in ARCHIVE_PRODUCTS for p in prefs):
        raise InputError(f"products_pref={products_pref!r}: expected values from {ARCHIVE_PRODUCTS}")
    if isinstance(min_exposures, bool) or not isinstance(min_exposures, int) or min_exposures < 1:
        raise InputError(f"min_exposures={min_exposures!r}: expected an integer >= 1")
    visits = []
    for (pid, obset, filt), g in sorted(_collect(observations, products).items()):
        kind, chosen, left = _choose(g["members"], prefs)
        name = f"{pid}_{obset}_{filt.lower()}"
        if left:
            logger.warning("visit %s: %s have no %s product; left out", name, " ".join(left), kind.upper())
        if len(chosen) < min_exposures:
            logger.info("visit %s: %d exposure(s), fewer than %d; left out", name, len(chosen), min_exposures)
            continue
        visits.append(Visit(g["instrument"], filt, pid, obset, kind, chosen, g["target"], g["classification"]))
    return visits


def download_url(server: str, filename: str) -> str:
    """MAST's download URL of an HST product (as astroquery builds it).

    >>> download_url("https://mast.stsci.edu", "j9l9ab01q_flc.fits")
    'https://mast.stsci.edu/api/v0.1/Download/file?uri=mast:HST/product/j9l9ab01q_flc.fits'
    """
    if not isinstance(server, str) or not re.match(r"^https?://", server):
        raise InputError(f"server={server!r}: expected an http(s):// URL")
    if not isinstance(filename, str) or not filename or "/" in filename:
        raise InputError(f"filename={filename!r}: expected a product file name")
    return f"{server.rstrip('/')}{DOWNLOAD_PATH}?uri=" + quote(PRODUCT_URI.format(filename), safe=":/")


# --------------------------------------------------------------------------------------
# MAST queries (astroquery)
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
    from astroquery.exceptions import NoResultsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoResultsWarning)
        table = obs.query_criteria(pagesize=cfg.pagesize, **criteria)
    return _rows(table)


def _products(obs, cfg: ArchiveConfig, observations: list[dict]) -> list[dict]:
    """The FLC/FLT products of observations (``Mast.Caom.Products``, then astroquery's
    own ``filter_products``)."""
    from astroquery.exceptions import NoResultsWarning

    if not observations:
        return []
    out: list[dict] = []
    # both types: a row may ask for a product the preference leaves out
    kinds = [p.upper() for p in ARCHIVE_PRODUCTS]
    # a few hundred obsids per request keeps the request small
    for i in range(0, len(observations), 200):
        batch = observations[i:i + 200]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoResultsWarning)
            prods = obs.get_product_list([str(o["obsid"]) for o in batch])
            if len(prods):
                prods = obs.filter_products(prods, productSubGroupDescription=kinds, extension="fits")
        out.extend(_rows(prods))
    return out


def _exposure_observations(rows: list[dict]) -> list[dict]:
    return [o for o in rows if _ROOTNAME.match(str(o.get("obs_id") or "").strip().lower())]


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
    ValueError, TypeError
        Bad criteria or config.
    ArchiveError
        MAST could not be queried.
    """
    cfg = ArchiveConfig() if cfg is None else cfg
    if not isinstance(cfg, ArchiveConfig):
        raise TypeError(f"cfg must be an ArchiveConfig, got {type(cfg).__name__}")
    cfg.validate()
    kw = mast_criteria(criteria)
    obs = _observations(cfg)
    try:
        rows = _exposure_observations(_query(obs, cfg, **kw))
        logger.info("MAST: %d observation(s) match %s", len(rows), kw)
        prods = _products(obs, cfg, rows)
    except Exception as exc:  # requests and astroquery errors: MAST did not answer usably
        raise _mast_error(exc, cfg) from exc
    visits = group_visits(rows, prods, products_pref=cfg.products, min_exposures=cfg.min_exposures)
    return [v for v in visits if v.instrument.upper() == criteria.instrument.upper()]


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
    cfg = ArchiveConfig() if cfg is None else cfg
    if not isinstance(cfg, ArchiveConfig):
        raise TypeError(f"cfg must be an ArchiveConfig, got {type(cfg).__name__}")
    cfg.validate()
    for s in specs:
        if not isinstance(s, VisitSpec) or s.source != "archive":
            raise InputError(f"specs: {getattr(s, 'name', s)!r} is not an archive visit")
    out: dict[str, Visit | str] = {}
    batches: dict[tuple[str, int], list[VisitSpec]] = {}
    for s in specs:
        batches.setdefault((s.archive["instrument"], s.archive["proposal_id"]), []).append(s)
    obs = _observations(cfg) if batches else None
    for (inst, pid), rows in batches.items():
        obsets = {s.archive["obset_id"] for s in rows}
        filters = sorted({s.archive["filter"] for s in rows})
        try:
            found = _exposure_observations(_query(obs, cfg, obs_collection="HST", instrument_name=inst,
                                                  proposal_id=str(pid), filters=filters))
            found = [o for o in found if str(o["obs_id"]).strip().lower()[4:6] in obsets]
            prods = _products(obs, cfg, found)
        except Exception as exc:  # requests, astroquery: every row of the batch fails
            err = _mast_error(exc, cfg)
            for s in rows:
                out[s.name] = str(err)
            continue
        groups = _collect(found, prods)
        for s in rows:
            a = s.archive
            where = f"proposal {pid} obset {a['obset_id']} {a['filter']} ({inst})"
            g = groups.get((pid, a["obset_id"], a["filter"]))
            if g is None:
                out[s.name] = (f"{where}: no FLC/FLT exposures on MAST (the obset is the 'ss' of "
                               "the rootnames ipppssoot; check it against MAST)")
                continue
            members = dict(g["members"])
            if a["exposures"]:
                missing = [r for r in a["exposures"] if r not in members]
                if missing:
                    out[s.name] = f"{where}: exposure(s) {' '.join(missing)} not found on MAST"
                    continue
                members = {r: members[r] for r in a["exposures"]}
            prefs = [a["product"]] if a["product"] else list(cfg.products)
            kind, chosen, left = _choose(members, prefs)
            if a["exposures"] and left:
                out[s.name] = f"{where}: no {kind.upper()} product for {' '.join(left)}"
                continue
            if len(chosen) < cfg.min_exposures:
                out[s.name] = (f"{where}: {len(chosen)} {kind.upper()} exposure(s) on MAST, "
                               f"at least {cfg.min_exposures} needed")
                continue
            if left:
                logger.warning("visit %s: %s have no %s product; left out", s.name, " ".join(left), kind.upper())
            out[s.name] = Visit(inst, a["filter"], pid, a["obset_id"], kind, chosen,
                                a["target"] or g["target"], g["classification"])
    return out


# --------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------


def _label_cell(label: Mapping) -> str:
    return ";".join(f"{k}={json.dumps(v) if not isinstance(v, (list, tuple)) else json.dumps(list(v))}"
                    for k, v in label.items())


def manifest_row(visit: Visit, field_type: str, split: str = "", label: str = "",
                 target: str | None = None) -> dict:
    """A CSV manifest row (``MANIFEST_COLUMNS``) of a resolved visit."""
    if field_type not in FIELD_TYPES:
        raise InputError(f"field_type={field_type!r}: expected one of {FIELD_TYPES}")
    return {"instrument": visit.instrument, "filter": visit.filter,
            "proposal_id": str(visit.proposal_id), "obset_id": visit.obset_id,
            "field_type": field_type, "split": split or "",
            "exposures": " ".join(e.rootname for e in visit.exposures),
            "sizes": " ".join(str(e.size) for e in visit.exposures),
            "product": visit.product, "target": visit.target if target is None else target,
            "label": label}


def write_manifest(path: str | os.PathLike, rows: Sequence[Mapping[str, str]], *,
                   comments: Sequence[str] = (), columns: Sequence[str] = MANIFEST_COLUMNS) -> Path:
    """Write a CSV manifest atomically; it is read back with :func:`load_manifest` first.

    Parameters
    ----------
    path : path-like
        ``.csv`` file (its directory must exist).
    rows : sequence of mapping
        Cells by column name.
    comments : sequence of str
        Lines written first, as ``#`` comments (a line that already starts with
        ``#`` is written as it is).
    columns : sequence of str
        Column order.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise InputError(f"path={str(path)!r}: a written manifest is a .csv file")
    if not rows:
        raise InputError(f"{path}: no rows to write (a manifest needs at least one visit)")
    buf = io.StringIO()
    for c in comments:
        buf.write((c if c.startswith("#") else f"# {c}".rstrip()) + "\n")
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="raise")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in columns})
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.csv")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    try:
        load_manifest(tmp)  # never leave a manifest the dataset stage cannot read
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read_csv_rows(path: Path) -> tuple[list[str], list[str], list[dict]]:
    """(comment lines, header columns, rows as dicts) of a CSV manifest, in file order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    comments = [ln for ln in lines if ln.lstrip().startswith("#")]
    data = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(data)))
    rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    return comments, [c.strip() for c in (reader.fieldnames or [])], rows


def resolve_manifest(manifest: str | os.PathLike, out: str | os.PathLike,
                     cfg: ArchiveConfig | None = None, *, refresh: bool = False
                     ) -> tuple[Path | None, dict[str, str]]:
    """Resolve a manifest's archive rows on MAST and write the result as a CSV manifest.

    Rows that already list exposures with sizes are kept as they are unless
    ``refresh``; the others get ``exposures``, ``sizes`` and ``product`` from MAST.
    Every other cell (field type, split, label overrides, target) and the comments of
    a CSV manifest are kept. A row that cannot be resolved is written unchanged and
    reported.

    Parameters
    ----------
    manifest : path-like
        CSV or TOML manifest of archive visits.
    out : path-like
        The ``.csv`` to write (may be ``manifest`` itself, replaced atomically).
    cfg : ArchiveConfig, optional
        Server, product preference, ``min_exposures``.
    refresh : bool
        Resolve every row again.

    Returns
    -------
    (Path, dict)
        The file written, and visit name -> reason for each row not resolved.
    """
    cfg = ArchiveConfig() if cfg is None else cfg
    cfg.validate()
    man = load_manifest(manifest)
    sim = [v.name for v in man.visits if v.source != "archive"]
    if sim:
        raise InputError(f"{man.path}: simulated visit(s) {sim[:3]} cannot be resolved on MAST; "
                         "query takes manifests of archive visits only")
    todo = [v for v in man.visits if refresh or not (v.archive["exposures"] and v.archive["sizes"])]
    resolved = resolve_specs(todo, cfg) if todo else {}
    failures = {k: v for k, v in resolved.items() if isinstance(v, str)}
    if man.path.suffix.lower() == ".csv":
        comments, header, raw_rows = _read_csv_rows(man.path)
    else:
        comments = [f"{man.name}: {man.description}".rstrip(": ")] if man.description else []
        header, raw_rows = [], []
        for v in man.visits:
            a = v.archive
            raw_rows.append({"instrument": a["instrument"], "filter": a["filter"],
                             "proposal_id": str(a["proposal_id"]), "obset_id": a["obset_id"],
                             "field_type": v.field_type, "split": v.split or "",
                             "exposures": " ".join(a["exposures"]),
                             "sizes": " ".join(str(s) for s in a["sizes"]), "product": a["product"],
                             "target": a["target"], "label": _label_cell(v.label)})
            if v.name != f"{a['proposal_id']}_{a['obset_id']}_{a['filter'].lower()}":
                raw_rows[-1]["name"] = v.name  # a visit named by its row keeps its name
        if any("name" in r for r in raw_rows):
            header = ["name"]
    columns = list(MANIFEST_COLUMNS) + [c for c in header if c not in MANIFEST_COLUMNS]
    rows = []
    for spec, raw in zip(man.visits, raw_rows):
        row = dict(raw)
        v = resolved.get(spec.name)
        if isinstance(v, Visit):
            row.update(exposures=" ".join(e.rootname for e in v.exposures),
                       sizes=" ".join(str(e.size) for e in v.exposures), product=v.product)
            if not row.get("target"):
                row["target"] = v.target
            # rows name the obset with two characters, as MAST's rootnames do
            row["obset_id"] = v.obset_id
        rows.append(row)
    return write_manifest(out, rows, comments=comments, columns=columns), failures


# --------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------


@dataclass
class FileResult:
    """What became of one file.

    Attributes
    ----------
    filename : str
    size : int
        Bytes MAST lists.
    status : str
        ``verified`` (fetched now, size checked), ``present`` (already there with
        the listed size) or ``failed``.
    transferred : int
        Bytes of file content received by this call (a resumed file: only the rest).
    attempts : int
        Requests of the file's content (GET) made, retries included.
    reason : str
        Why it failed.
    path : str
        The final file (``verified``/``present``) or the ``.part`` kept for a
        resume (``failed``; empty when there is nothing to resume).
    """

    filename: str
    size: int
    status: str
    transferred: int = 0
    attempts: int = 0
    reason: str = ""
    path: str = ""

    @property
    def ok(self) -> bool:
        """Verified or already present."""
        return self.status in ("verified", "present")


@dataclass
class VisitResult:
    """The files of one visit."""

    name: str
    files: list[FileResult] = field(default_factory=list)
    reason: str = ""

    @property
    def verified(self) -> list[FileResult]:
        """The files with the listed size on disk."""
        return [f for f in self.files if f.ok]

    @property
    def failed(self) -> list[FileResult]:
        """The files that could not be fetched."""
        return [f for f in self.files if not f.ok]


class _Retry(Exception):
    """A transient failure (5xx, timeout, broken or short transfer)."""


class _Fail(Exception):
    """A permanent failure (4xx, a size that cannot be the listed one)."""


class _Cancelled(Exception):
    pass


def _status_check(resp, name: str) -> None:
    code = resp.status_code
    if code in (200, 206):
        return
    if code in (408, 425, 429) or code >= 500:
        raise _Retry(f"HTTP {code} {resp.reason}")
    if code in (404, 410):
        raise _Fail(f"HTTP {code}: listed by MAST but not served (the product is missing)")
    if code in (401, 403):
        raise _Fail(f"HTTP {code}: not public (exclusive-access data need a MAST token)")
    raise _Fail(f"HTTP {code} {resp.reason}")


def _chunks(resp, size: int):
    """The body as it arrives: ``read1`` returns what the socket has (up to ``size``),
    so the bytes received before a stall are written, not lost in a half-filled
    buffer when the read times out."""
    read1 = getattr(resp.raw, "read1", None)
    if read1 is None:  # urllib3 < 2
        yield from resp.iter_content(size)
        return
    while True:
        b = read1(size, decode_content=True)
        if not b:
            return
        yield b


def _attempt(session, url: str, dest: Path, part: Path, size: int, cfg: ArchiveConfig,
             progress: Callable[[int], None], cancel: threading.Event | None, got: list[int]) -> None:
    """One try at completing ``part``; returns when ``dest`` is verified, else raises."""
    import requests
    import urllib3

    have = part.stat().st_size if part.exists() else 0
    if have > size:
        logger.warning("%s: %d bytes of a %d-byte product: starting again", part.name, have, size)
        part.unlink()
        progress(-have)
        have = 0
    if have < size:
        timeout = (cfg.timeout, cfg.timeout)
        try:
            head = session.head(url, timeout=timeout, allow_redirects=True)
            head.close()
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise _Retry(f"HEAD: {type(exc).__name__}: {exc}") from None
        _status_check(head, dest.name)
        length = head.headers.get("Content-Length")
        if length is not None and head.status_code == 200 and int(length) != size:
            # the file MAST serves is not the product it lists: nothing to resume
            part.unlink(missing_ok=True)
            raise _Fail(f"MAST lists {size} bytes but serves {int(length)}: not the listed product")
        ranges = "bytes" in head.headers.get("Accept-Ranges", "").lower()
        headers = {}
        if have and ranges:
            headers["Range"] = f"bytes={have}-"
        elif have:
            logger.info("%s: the server does not resume; starting again", dest.name)
            part.unlink()
            progress(-have)
            have = 0
        try:
            resp = session.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise _Retry(f"GET: {type(exc).__name__}: {exc}") from None
        with resp:
            if resp.status_code == 416 and have:
                part.unlink(missing_ok=True)
                progress(-have)
                raise _Retry(f"HTTP 416: the server refused to resume at byte {have}; starting again")
            _status_check(resp, dest.name)
            mode = "ab"
            if resp.status_code == 206:
                m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != have:
                    part.unlink(missing_ok=True)
                    progress(-have)
                    raise _Retry(f"resumed at {resp.headers.get('Content-Range')!r}, not byte {have}")
            elif have:  # 200 to a Range request: the whole file comes again
                mode = "wb"
                progress(-have)
                have = 0
            chunks = _chunks(resp, cfg.chunk_size)
            with open(part, mode) as fh:
                while True:
                    try:
                        chunk = next(chunks, b"")
                    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                        # what arrived stays in the .part file: the next attempt resumes
                        raise _Retry(f"transfer broken at byte {have} of {size}: "
                                     f"{type(exc).__name__}: {exc}") from None
                    if not chunk:
                        break
                    if cancel is not None and cancel.is_set():
                        raise _Cancelled()
                    if have + len(chunk) > size:
                        fh.close()
                        part.unlink(missing_ok=True)
                        raise _Fail(f"the server sent more than the {size} bytes MAST lists")
                    fh.write(chunk)
                    have += len(chunk)
                    got[0] += len(chunk)
                    progress(len(chunk))
        if have < size:
            raise _Retry(f"transfer ended at byte {have} of {size} (the size MAST lists)")
    # complete: a FITS file of exactly the listed size gets its name
    with open(part, "rb") as fh:
        magic = fh.read(6)
    if dest.suffix == ".fits" and magic != b"SIMPLE":
        part.unlink()
        raise _Fail(f"{size} bytes but not a FITS file (starts with {magic!r})")
    os.replace(part, dest)


def fetch_file(url: str, dest: str | os.PathLike, size: int, cfg: ArchiveConfig | None = None, *,
               session=None, progress: Callable[[int], None] | None = None,
               cancel: threading.Event | None = None,
               sleep: Callable[[float], None] = time.sleep) -> FileResult:
    """Download one product into ``dest``: verified size, resume, retries.

    The bytes go to ``<dest>.part``; a ``.part`` left by an earlier attempt (or run)
    is resumed with a ``Range`` request. ``dest`` appears only when the file has
    exactly ``size`` bytes (and, for ``.fits``, starts like a FITS file).

    Parameters
    ----------
    url : str
        The product's download URL (:func:`download_url`).
    dest : path-like
        Final file name (its directory is created).
    size : int
        Bytes MAST lists for the product.
    cfg : ArchiveConfig, optional
        Retries, backoff, timeout, chunk size.
    session : requests.Session, optional
        Connection pool to use (one per thread).
    progress : callable, optional
        Called with the number of bytes received (negative when a transfer restarts).
    cancel : threading.Event, optional
        Set to abandon the transfer (the ``.part`` file is kept).
    sleep : callable
        ``time.sleep`` (tests pass a recorder).

    Returns
    -------
    FileResult
        ``verified``, ``present`` or ``failed`` with the reason.
    """
    import requests

    cfg = ArchiveConfig() if cfg is None else cfg
    cfg.validate()
    if not isinstance(url, str) or not re.match(r"^https?://", url):
        raise InputError(f"url={url!r}: expected an http(s):// URL")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InputError(f"size={size!r}: expected the product's size in bytes (> 0)")
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    progress = progress or (lambda n: None)
    if dest.exists():
        if dest.stat().st_size == size:
            return FileResult(dest.name, size, "present", path=str(dest))
        logger.warning("%s: %d bytes on disk but MAST lists %d: fetching it again",
                       dest, dest.stat().st_size, size)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    own = session is None
    session = session or requests.Session()
    got = [0]
    attempts = 0
    last = ""
    try:
        while attempts <= cfg.retries:
            if attempts:
                delay = min(cfg.max_backoff, cfg.backoff * 2 ** (attempts - 1))
                # a little jitter, so that parallel retries do not hit the server together
                sleep(delay * (1 + 0.25 * random.random()))
            attempts += 1
            try:
                _attempt(session, url, dest, part, size, cfg, progress, cancel, got)
            except _Retry as exc:
                last = str(exc)
                logger.info("%s: attempt %d of %d: %s", dest.name, attempts, cfg.retries + 1, last)
                continue
            except _Fail as exc:
                return FileResult(dest.name, size, "failed", got[0], attempts, str(exc),
                                  str(part) if part.exists() else "")
            except _Cancelled:
                return FileResult(dest.name, size, "failed", got[0], attempts, "cancelled",
                                  str(part) if part.exists() else "")
            logger.debug("%s: verified, %d bytes (%d received)", dest.name, size, got[0])
            return FileResult(dest.name, size, "verified", got[0], attempts, path=str(dest))
    finally:
        if own:
            session.close()
    have = part.stat().st_size if part.exists() else 0
    return FileResult(dest.name, size, "failed", got[0], attempts,
                      f"{attempts} attempt(s) failed, {have} of {size} bytes kept in {part.name} "
                      f"for a resume; last: {last}", str(part) if part.exists() else "")


def fetch_visits(visits: Sequence[Visit], raw_root: str | os.PathLike, cfg: ArchiveConfig | None = None,
                 *, progress: bool | None = None, names: Sequence[str] | None = None) -> list[VisitResult]:
    """Download the exposures of visits into ``raw_root/<visit>/``.

    Parameters
    ----------
    visits : sequence of Visit
        What to fetch (sizes as MAST lists them).
    raw_root : path-like
        The raw area (``<work>/raw``).
    cfg : ArchiveConfig, optional
        Server, concurrency, retries, backoff, timeout.
    progress : bool, optional
        Show a progress bar in bytes (default: when stderr is a terminal).
    names : sequence of str, optional
        Directory names of the visits under ``raw_root`` (a manifest row may name
        its visit); default :attr:`Visit.name`.

    Returns
    -------
    list of VisitResult
        In the order of ``visits``; every file is ``verified``, ``present`` or
        ``failed`` with its reason.
    """
    import requests
    from tqdm.auto import tqdm

    cfg = ArchiveConfig() if cfg is None else cfg
    if not isinstance(cfg, ArchiveConfig):
        raise TypeError(f"cfg must be an ArchiveConfig, got {type(cfg).__name__}")
    cfg.validate()
    for v in visits:
        if not isinstance(v, Visit):
            raise TypeError(f"visits: expected Visit objects, got {type(v).__name__}")
    raw_root = Path(raw_root)
    names = [v.name for v in visits] if names is None else list(names)
    if len(names) != len(visits) or len(set(names)) != len(names):
        raise InputError(f"names={names!r}: expected one distinct directory name per visit")
    server = cfg.mast_server()
    jobs = []
    results = {n: VisitResult(n) for n in names}
    for n, v in zip(names, visits):
        for e in v.exposures:
            jobs.append((n, e, raw_root / n / e.filename))
    todo = [j for j in jobs if not (j[2].exists() and j[2].stat().st_size == j[1].size)]
    total = sum(j[1].size for j in todo)
    initial = sum(min(j[1].size, _part_size(j[2])) for j in todo)
    lock = threading.Lock()
    local = threading.local()
    sessions: list = []
    cancel = threading.Event()
    bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
               desc="fetch", disable=None if progress is None else not progress, leave=False)

    def update(n: int) -> None:
        with lock:
            bar.update(n)

    def work(job):
        name, exp, dest = job
        if not hasattr(local, "session"):
            local.session = requests.Session()
            with lock:
                sessions.append(local.session)
        return name, fetch_file(download_url(server, exp.filename), dest, exp.size, cfg,
                                session=local.session, progress=update, cancel=cancel)

    out: dict[tuple[str, str], FileResult] = {}
    pending = {(j[0], j[1].filename) for j in todo}
    for name, exp, dest in jobs:
        if (name, exp.filename) not in pending:
            out[(name, exp.filename)] = FileResult(exp.filename, exp.size, "present", path=str(dest))
    pool = ThreadPoolExecutor(max_workers=max(1, min(cfg.concurrency, len(todo) or 1)),
                              thread_name_prefix="crforge-fetch")
    try:
        for name, res in pool.map(work, todo):
            out[(name, res.filename)] = res
            if res.status == "failed":
                logger.warning("visit %s: %s: %s", name, res.filename, res.reason)
    except BaseException:
        cancel.set()  # Ctrl-C: stop the transfers, keep the .part files for the rerun
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
        for s in sessions:
            s.close()
    for name, exp, _ in jobs:
        results[name].files.append(out[(name, exp.filename)])
    return [results[n] for n in names]


def _part_size(dest: Path) -> int:
    part = dest.with_name(dest.name + ".part")
    return part.stat().st_size if part.exists() else 0


# --------------------------------------------------------------------------------------
# Manifest visits on disk (crforge fetch, crforge dataset)
# --------------------------------------------------------------------------------------


def _planned(spec: VisitSpec, raw: Path) -> Visit | None:
    """The exposures to fetch of a manifest row, when known without a query."""
    a = spec.archive
    if a["exposures"] and a["sizes"]:
        kind = a["product"] or "flc"  # sizes without a product: written for FLC files
        return Visit(a["instrument"], a["filter"], a["proposal_id"], a["obset_id"], kind,
                     [Exposure(r, f"{r}_{kind}.fits", s) for r, s in zip(a["exposures"], a["sizes"])],
                     a["target"])
    rec = raw / RESOLUTION_FILE
    if rec.exists():
        try:
            doc = json.loads(rec.read_text())
            v = Visit.from_json(doc["visit"])
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("%s: unreadable (%s); resolving again", rec, exc)
            return None
        same = (v.proposal_id, v.obset_id, v.filter) == (a["proposal_id"], a["obset_id"], a["filter"])
        listed = not a["exposures"] or [e.rootname for e in v.exposures] == a["exposures"]
        if same and listed and (not a["product"] or a["product"] == v.product):
            return v
    return None


def _on_disk(spec: VisitSpec, raw: Path) -> bool:
    """Exposures already there for a row that says nothing to verify them with."""
    a = spec.archive
    if a["exposures"]:
        return all(any((raw / f"{r}_{k}.fits").exists() for k in ARCHIVE_PRODUCTS) for r in a["exposures"])
    return raw.is_dir() and (any(raw.glob("*_flc.fits")) or any(raw.glob("*_flt.fits")))


def _complete(v: Visit, raw: Path) -> bool:
    return all((raw / e.filename).exists() and (raw / e.filename).stat().st_size == e.size
               for e in v.exposures)


def _write_resolution(raw: Path, v: Visit, server: str) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    doc = {"visit": v.to_json(), "server": server,
           "resolved_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = raw / f".{RESOLUTION_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, raw / RESOLUTION_FILE)


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
        Visit name -> :class:`VisitResult`; its ``reason`` is empty when the visit
        is ready to label, else says why not (naming the files and their reasons).
    """
    cfg = ArchiveConfig() if cfg is None else cfg
    if not isinstance(cfg, ArchiveConfig):
        raise TypeError(f"cfg must be an ArchiveConfig, got {type(cfg).__name__}")
    cfg.validate()
    raw_root = Path(work) / "raw"
    out: dict[str, VisitResult] = {}
    plans: dict[str, Visit] = {}
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
            out[s.name] = VisitResult(s.name)
        else:
            unresolved.append(s)
    if unresolved:
        logger.info("resolving %d visit(s) on MAST", len(unresolved))
        server = cfg.mast_server()
        for name, v in resolve_specs(unresolved, cfg).items():
            if isinstance(v, str):
                out[name] = VisitResult(name, reason=f"not resolved on MAST: {v}")
            else:
                _write_resolution(raw_root / name, v, server)
                plans[name] = v
    need = [n for n, v in plans.items() if not _complete(v, raw_root / n)]
    fetched = ({r.name: r for r in fetch_visits([plans[n] for n in need], raw_root, cfg,
                                                progress=progress, names=need)} if need else {})
    for name, v in plans.items():
        res = fetched.get(name) or VisitResult(name, [FileResult(e.filename, e.size, "present",
                                                                 path=str(raw_root / name / e.filename))
                                                      for e in v.exposures])
        n_ok, n = len(res.verified), len(res.files)
        why = "; ".join(f"{f.filename}: {f.reason}" for f in res.failed)
        if n_ok < cfg.min_exposures:
            res.reason = (f"{n_ok} of {n} exposure(s) verified, at least {cfg.min_exposures} needed"
                          + (f"; {why}" if why else ""))
        elif res.failed and not cfg.partial_visits:
            res.reason = (f"{n - n_ok} of {n} exposure(s) could not be fetched: {why} "
                          "(rerun to resume; archive.partial_visits=true labels the verified ones)")
        elif res.failed:
            logger.warning("visit %s: labelled from %d of %d exposures; %s", name, n_ok, n, why)
        out[name] = res
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


# --------------------------------------------------------------------------------------
# CLI: crforge query
# --------------------------------------------------------------------------------------






