"""What MAST has: exposures, visits, and how MAST's rows make visits (pure).

Observations count only when they come from the ``HST`` collection with an
``obs_id`` that is an HST rootname (``ipppssoot``): the HAP observations
(``hst_<proposal>_<obset>_...``) and their ``hst_..._flc.fits`` copies are not the
exposures to use. Exposures are grouped into visits by (proposal, obset, filter), the
obset being the ``ss`` of the rootname; a visit is made of one product type, FLC
(CTE-corrected) when every member has one, else FLT (``[archive] products``): a
median of CTE-corrected and uncorrected frames would label the CTE trails. Which
product types an imager has, and which files an exposure needs beside its product
(WFPC2: the ``c1m`` DQ file of each ``c0m``), is its instrument table entry's
(``Instrument.products``, ``Instrument.companions``); MAST's ``instrument_name``
is mapped to the entry by ``Instrument.mast_names`` (``WFPC2/WFC``, ``WFPC2/PC``).

Standard library only: :mod:`crforge.pipeline.archive.query` fills these from
astroquery, :mod:`crforge.pipeline.archive.download` fetches them.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from crforge.errors import InputError
from crforge.pipeline.archive.config import ArchiveConfig
from crforge.pipeline.instruments import Instrument, get_instrument, instrument_for_mast
from crforge.pipeline.names import ARCHIVE_PRODUCTS

logger = logging.getLogger(__name__)

__all__ = ["Exposure", "Visit", "normalise_filter", "min_files", "collect_members", "product_prefs",
           "choose_product", "group_visits", "download_url", "is_rootname", "DOWNLOAD_PATH", "PRODUCT_URI"]

#: Where MAST serves a product (astroquery's ``MAST_DOWNLOAD_URL``), below the server.
DOWNLOAD_PATH = "/api/v0.1/Download/file"
#: The CAOM data URI of an HST product.
PRODUCT_URI = "mast:HST/product/{}"

_ROOTNAME = re.compile(r"^[a-z][a-z0-9]{8}$")
_PRODUCT_FILE = re.compile(r"^([a-z][a-z0-9]{8})_([a-z0-9]{3})\.fits$")

#: (proposal, obset, filter): the key of a visit.
VisitKey = tuple[int, str, str]


@dataclass(frozen=True)
class Exposure:
    """One exposure's product: ``<rootname>_<product>.fits`` of ``size`` bytes.

    ``companions``: (file name, bytes) of the files fetched with it, which hold what
    the product lacks (WFPC2: the ``c1m`` DQ file of a ``c0m``).
    """

    rootname: str
    filename: str
    size: int
    companions: tuple[tuple[str, int], ...] = ()

    @property
    def uri(self) -> str:
        """MAST's data URI of the product."""
        return PRODUCT_URI.format(self.filename)

    @property
    def files(self) -> tuple[tuple[str, int], ...]:
        """(file name, bytes) of the product and its companions: what a fetch downloads."""
        return ((self.filename, self.size),) + tuple(self.companions)

    @property
    def sizes_cell(self) -> str:
        """The exposure's entry of a manifest's ``sizes``: the product's bytes, then each
        companion's after a ``+`` (``7862400+3931200``)."""
        return "+".join(str(size) for _, size in self.files)


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
        """Bytes of all exposures' files (companions included)."""
        return sum(size for e in self.exposures for _, size in e.files)

    def to_json(self) -> dict:
        """Plain data (for ``archive.json``)."""
        return {"instrument": self.instrument, "filter": self.filter,
                "proposal_id": self.proposal_id, "obset_id": self.obset_id,
                "product": self.product, "target": self.target,
                "classification": self.classification,
                "exposures": [{"rootname": e.rootname, "filename": e.filename, "size": e.size,
                               "companions": [list(c) for c in e.companions]}
                              for e in self.exposures]}

    @classmethod
    def from_json(cls, doc: Mapping) -> "Visit":
        """Inverse of :meth:`to_json`."""
        return cls(instrument=doc["instrument"], filter=doc["filter"],
                   proposal_id=int(doc["proposal_id"]), obset_id=doc["obset_id"],
                   product=doc["product"], target=doc.get("target", ""),
                   classification=doc.get("classification", ""),
                   exposures=[Exposure(e["rootname"], e["filename"], int(e["size"]),
                                       tuple((str(n), int(b)) for n, b in e.get("companions", ())))
                              for e in doc["exposures"]])


def is_rootname(obs_id: Any) -> bool:
    """Whether MAST's ``obs_id`` is an HST exposure rootname (``ipppssoot``), not HAP's."""
    return bool(_ROOTNAME.match(str(obs_id or "").strip().lower()))


def normalise_filter(filters: Any) -> str | None:
    """The one filter of MAST's ``filters`` value, or ``None``.

    ``"F606W"`` and ``"F606W;CLEAR2L"`` give ``"F606W"``; two real elements
    (``"F435W;POL0V"``: a polarizer) or none give ``None``: not a plain imaging visit.
    A lone ``"CLEAR"`` is a filter of its own (STIS/CCD's unfiltered 50CCD imaging).
    """
    if filters is None:
        return None
    parts = [p.strip().upper() for p in str(filters).replace(",", ";").split(";")]
    if parts == ["CLEAR"]:
        return "CLEAR"
    real = [p for p in parts if p and not p.startswith("CLEAR") and p not in ("N/A", "DETECTION")]
    return real[0] if len(real) == 1 else None


def min_files(instrument: str, min_exposures: int) -> int:
    """Product files a visit needs for ``min_exposures`` exposures.

    An imager that packs several exposures into one file (``Instrument.packing ==
    "imsets"``: a STIS CR-split FLT) may have them all in one; how many a file holds
    MAST does not say, so the labelling stage counts them.
    """
    from crforge.pipeline.instruments import INSTRUMENTS

    inst = INSTRUMENTS.get(str(instrument).strip().upper())
    return 1 if inst is not None and inst.packing == "imsets" else min_exposures


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in ("", "--")


def _text(o: Mapping, key: str) -> str:
    """A text cell of a MAST row, ``""`` when masked or empty."""
    return "" if _is_missing(o.get(key)) else str(o[key])


def _member(p: Mapping, o: Mapping, inst: Instrument) -> tuple[VisitKey, Exposure, str] | None:
    """(visit key, exposure, file type) of one product row of observation ``o``, or
    ``None`` when it is not a member's product (or companion) file that can be verified."""
    fname = str(p.get("productFilename") or "").strip().lower()
    m = _PRODUCT_FILE.match(fname)
    if not m or m.group(2) not in inst.archive_kinds:
        return None  # ASN, DRC, RAW, HAP copies hst_..._flc.fits
    root, kind = m.groups()
    if str(p.get("productSubGroupDescription") or kind).strip().lower() != kind:
        return None
    size = p.get("size")
    if _is_missing(size) or int(size) <= 0:
        logger.warning("%s: MAST lists no size; left out (it could not be verified)", fname)
        return None
    filt = normalise_filter(o.get("filters"))
    if filt is None:
        logger.debug("%s: filters %r is not one filter; left out", fname, o.get("filters"))
        return None
    try:
        pid = int(str(o.get("proposal_id")).strip())
    except ValueError:
        return None
    return (pid, root[4:6], filt), Exposure(root, fname, int(size)), kind


def collect_members(observations: Iterable[Mapping], products: Iterable[Mapping]
                    ) -> dict[VisitKey, dict]:
    """Member products per (proposal, obset, filter) key.

    Parameters
    ----------
    observations : iterable of mapping
        Rows of ``Mast.Caom.Filtered``.
    products : iterable of mapping
        Rows of ``Mast.Caom.Products``.

    Returns
    -------
    dict
        Key -> ``{"instrument", "target", "classification", "members": {root:
        {kind: Exposure}}}``. Only observations of an imager of the instrument table
        (by MAST's ``instrument_name``; ``"instrument"`` is the table's name) whose
        ``obs_id`` is an HST rootname count, and only its product files
        (``<rootname>_<product>.fits``, ``Instrument.products``), each with its
        companions (WFPC2's ``c1m``) attached; a product whose companion MAST does not
        list is left out.
    """
    # HAP (hst_...) and other non-exposure observations are not parents of members
    obs_by_id = {str(o.get("obsid")).strip(): o for o in observations if is_rootname(o.get("obs_id"))}
    groups: dict[VisitKey, dict] = {}
    for p in products:
        parent = p.get("parent_obsid")
        if _is_missing(parent):
            parent = p.get("obsID")
        o = obs_by_id.get(str(parent).strip())
        inst = None if o is None else instrument_for_mast(o.get("instrument_name"))
        member = None if inst is None else _member(p, o, inst)
        if member is None:
            continue
        key, exposure, kind = member
        g = groups.setdefault(key, {"instrument": inst.name, "target": _text(o, "target_name"),
                                    "classification": _text(o, "target_classification"),
                                    "members": {}})
        g["members"].setdefault(exposure.rootname, {})[kind] = exposure
    for g in groups.values():
        g["members"] = _with_companions(g["members"], get_instrument(g["instrument"]))
    return groups


def _with_companions(members: Mapping[str, Mapping[str, Exposure]], inst: Instrument
                     ) -> dict[str, dict[str, Exposure]]:
    """Each member's products with their companion files attached (companions are no
    products of their own); a product missing a companion on MAST is left out (the
    member stays, so that a row listing it is told which product it lacks)."""
    out: dict[str, dict[str, Exposure]] = {}
    for root, files in members.items():
        kinds = {}
        for kind in inst.products:
            if kind not in files:
                continue
            need = inst.companions(kind)
            missing = [c for c in need if c not in files]
            if missing:
                logger.warning("%s: MAST lists no %s file beside it; left out", files[kind].filename,
                               "/".join(c.upper() for c in missing))
                continue
            kinds[kind] = replace(files[kind], companions=tuple((files[c].filename, files[c].size)
                                                                for c in need))
        out[root] = kinds
    return out


def product_prefs(instrument: str, prefs: Sequence[str]) -> list[str]:
    """The product types to choose from for a visit of ``instrument``, preferred first.

    ``prefs`` (``[archive] products``) orders the types of the imager's table entry it
    names (FLC, FLT); an imager none of whose types it names has its own
    (``Instrument.products``: WFPC2's ``c0m``, ``c0f``).
    """
    inst = get_instrument(instrument)
    wanted = [p for p in prefs if p in inst.products]
    return wanted or list(inst.products)


def choose_product(members: Mapping[str, Mapping[str, Exposure]], prefs: Sequence[str]
                   ) -> tuple[str, list[Exposure], list[str]]:
    """One product type for the whole visit.

    The first type of ``prefs`` every member has, else the one most members have
    (ties: preference order).

    Returns
    -------
    (str, list of Exposure, list of str)
        The type, the exposures of that type (by rootname), and the rootnames left
        out for having none.
    """
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
                 products_pref: Sequence[str] = ArchiveConfig.products,
                 min_exposures: int = ArchiveConfig.min_exposures) -> list[Visit]:
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
        Product types in order of preference; one type per visit (default: the
        ``[archive] products`` default).
    min_exposures : int
        Visits with fewer exposures are left out (default: ``[archive]
        min_exposures``'s).

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
    for (pid, obset, filt), g in sorted(collect_members(observations, products).items()):
        kind, chosen, left = choose_product(g["members"], product_prefs(g["instrument"], prefs))
        name = f"{pid}_{obset}_{filt.lower()}"
        if left:
            logger.warning("visit %s: %s have no %s product; left out", name, " ".join(left), kind.upper())
        if len(chosen) < min_files(g["instrument"], min_exposures):
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
