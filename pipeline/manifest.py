"""Manifests: what a data set is made of, versioned in ``data_manifests/``.

Two formats, one row per visit (see ``data_manifests/README.md`` for the full reference):

TOML (simulated and real visits)::

    name = "synthetic-acs-wfc"          # default: the file name
    [defaults]                          # applied to every [[visit]], which may override
    source = "simulate"
    chip_shape = [1024, 2048]
    [[visit]]
    field_type = "globular_cluster"
    seed = 3
    n_exposures = 4
    split = "test"                      # optional: explicit split wins
    [visit.label]                       # optional per-visit LabelConfig overrides
    refine_max_exposures = 0

CSV (real visits): columns ``instrument, filter, proposal_id, obset_id, field_type``
and optionally ``split``, ``exposures`` (space-separated rootnames), ``sizes``
(space-separated byte counts of the exposures' products as MAST lists them, parallel
to ``exposures``; an imager whose product needs another file beside it gives both,
joined by ``+``: WFPC2's ``c0m+c1m``), ``product`` (one of the imager's
``Instrument.products``: ``flc`` or ``flt``, WFPC2 ``c0m``), ``target``, ``label``
(``key=value;key=value`` LabelConfig overrides). ``crforge.pipeline.archive`` fills
``exposures``, ``sizes`` and ``product`` from MAST (``crforge query``), so that a
fetch needs no query.

A simulated visit takes every :class:`crforge.pipeline.simulate.config.SimulateConfig` key; its
pointing defaults to a distinct patch of sky per row (so separate rows are separate
fields unless they say otherwise with ``ra``/``dec``), its seed to the manifest's
``seed`` plus the row index.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from crforge import config as cfgmod
from crforge.errors import InputError
from crforge.pipeline.instruments import Instrument, get_instrument
from crforge.pipeline.label.config import LabelConfig
from crforge.pipeline.names import ARCHIVE_PRODUCTS, FIELD_TYPES, SPLITS
from crforge.pipeline.simulate.config import SimulateConfig, base36

logger = logging.getLogger(__name__)

__all__ = ["Manifest", "VisitSpec", "load_manifest", "SPLITS", "ARCHIVE_PRODUCTS"]

_SIM_KEYS = {f.name for f in fields(SimulateConfig)}
_ARCHIVE_KEYS = {"instrument", "filter", "proposal_id", "obset_id", "exposures", "sizes", "product",
                 "target"}
_COMMON_KEYS = {"source", "field_type", "split", "label", "name"}


@dataclass
class VisitSpec:
    """One visit of a manifest.

    Attributes
    ----------
    name : str
        Directory name of the visit under ``raw/`` and ``labels/``.
    source : str
        ``simulate`` or ``archive``.
    field_type : str
        ``extragalactic``, ``globular_cluster`` or ``resolved_galaxy``.
    split : str or None
        Explicit split, or ``None`` to let the data set assign one.
    label : dict
        LabelConfig overrides for this visit.
    simulate : SimulateConfig or None
        For simulated visits.
    archive : dict
        For real visits: instrument, filter, proposal_id, obset_id (two characters),
        exposures (rootnames), sizes (bytes of each exposure's product as MAST lists
        them, or empty when not known), companion_sizes (per exposure, the bytes of
        the files its product needs beside it, ``Instrument.companions``: WFPC2's
        ``c1m``; empty tuples otherwise), product (one of ``Instrument.products``, or
        empty: decided when the visit is resolved against MAST), target.
    row : int
        Row number in the manifest (for messages).
    """

    name: str
    source: str
    field_type: str
    split: str | None = None
    label: dict = field(default_factory=dict)
    simulate: SimulateConfig | None = None
    archive: dict = field(default_factory=dict)
    row: int = 0

    def label_config(self, base: LabelConfig) -> LabelConfig:
        """``base`` with this visit's overrides applied (unknown keys refused)."""
        return cfgmod.merge(base, self.label, where=f"visit {self.name}: label") if self.label else base


@dataclass
class Manifest:
    """A parsed manifest."""

    name: str
    path: Path
    sha256: str
    visits: list[VisitSpec]
    description: str = ""

    @property
    def simulated(self) -> bool:
        """True when every visit is simulated (the data set then carries truth)."""
        return all(v.source == "simulate" for v in self.visits)


def _check_common(where: str, row: dict) -> tuple[str, str | None]:
    ft = row.get("field_type")
    if ft not in FIELD_TYPES:
        raise InputError(f"{where}: field_type={ft!r}, expected one of {FIELD_TYPES}")
    split = row.get("split") or None
    if split is not None and split not in SPLITS:
        raise InputError(f"{where}: split={split!r}, expected one of {SPLITS} or empty")
    lab = row.get("label", {})
    if not isinstance(lab, dict):
        raise InputError(f"{where}: label must be a table of LabelConfig overrides")
    cfgmod.merge(LabelConfig(), lab, where=f"{where}: label")  # unknown keys fail here
    return ft, split


def _sim_visit(where: str, i: int, row: dict, base_seed: int) -> VisitSpec:
    ft, split = _check_common(where, row)
    unknown = set(row) - _SIM_KEYS - _COMMON_KEYS
    if unknown:
        raise InputError(f"{where}: unknown key(s) {sorted(unknown)} for a simulated visit; "
                         f"valid: {sorted(_SIM_KEYS | _COMMON_KEYS)}")
    sim = {k: v for k, v in row.items() if k in _SIM_KEYS}
    sim.setdefault("seed", base_seed + i)
    sim.setdefault("obset_id", base36(i, 2))
    # distinct sky per row unless told otherwise: rows 0.25 deg apart in RA
    sim.setdefault("ra", 150.0 + 0.25 * i)
    sim.setdefault("dec", 2.2)
    cfg = cfgmod.from_dict(SimulateConfig, sim, where=where)
    cfg.validate()
    name = row.get("name") or cfg.visit_name
    return VisitSpec(name=name, source="simulate", field_type=ft, split=split,
                     label=dict(row.get("label", {})), simulate=cfg, row=i)


def _archive_sizes(where: str, cell: Any, exps: list[str], inst: Instrument,
                   product: str) -> list[tuple[int, ...]]:
    """The ``sizes`` of an archive row: per exposure, the product's bytes then its
    companions' (``7862400+3931200`` for WFPC2's c0m and c1m); empty when not given."""
    entries = cell or []
    if isinstance(entries, str):
        entries = entries.split()
    try:
        sizes = [tuple(int(p) for p in str(e).split("+")) for e in entries]
    except (TypeError, ValueError):
        raise InputError(f"{where}: sizes={cell!r}: expected byte counts (integers)") from None
    if sizes and len(sizes) != len(exps):
        raise InputError(f"{where}: sizes has {len(sizes)} entries for {len(exps)} exposures; "
                         "give one size per exposure (or none)")
    if any(b <= 0 for s in sizes for b in s):
        raise InputError(f"{where}: sizes={cell!r}: every size must be > 0 bytes")
    files = (product,) + inst.companions(product)
    for root, s in zip(exps, sizes):
        if len(s) != len(files):
            raise InputError(f"{where}: sizes entry {'+'.join(map(str, s))!r} of exposure {root}: "
                             f"{inst.name} {product} exposures list {len(files)} size(s) ({'+'.join(files)})")
    return sizes


def _archive_visit(where: str, i: int, row: dict) -> VisitSpec:
    ft, split = _check_common(where, row)
    unknown = set(row) - _ARCHIVE_KEYS - _COMMON_KEYS
    if unknown:
        raise InputError(f"{where}: unknown key(s) {sorted(unknown)} for an archive visit; "
                         f"valid: {sorted(_ARCHIVE_KEYS | _COMMON_KEYS)}")
    for key in ("instrument", "filter", "proposal_id", "obset_id"):
        if row.get(key) in (None, ""):
            raise InputError(f"{where}: {key} is required for an archive visit")
    inst = get_instrument(str(row["instrument"]))
    try:
        pid = int(row["proposal_id"])
    except (TypeError, ValueError):
        raise InputError(f"{where}: proposal_id={row['proposal_id']!r} is not an integer") from None
    obset = str(row["obset_id"]).strip().lower().zfill(2)
    if len(obset) != 2 or not obset.isalnum():
        raise InputError(f"{where}: obset_id={row['obset_id']!r}: expected one or two letters/digits "
                         "(the 'ss' of an HST rootname ipppssoot)")
    exps = row.get("exposures") or []
    if isinstance(exps, str):
        exps = exps.split()
    exps = [str(e).strip().lower() for e in exps]
    if len(set(exps)) != len(exps):
        raise InputError(f"{where}: exposures lists a rootname twice: {exps!r}")
    product = str(row.get("product", "") or "").strip().lower()
    if product and product not in inst.products:
        raise InputError(f"{where}: product={row.get('product')!r}, expected one of {inst.products} "
                         f"({inst.name}) or empty")
    sizes = _archive_sizes(where, row.get("sizes"), exps, inst, product or inst.products[0])
    arch = {"instrument": str(row["instrument"]), "filter": str(row["filter"]).upper(),
            "proposal_id": pid, "obset_id": obset, "exposures": exps, "sizes": [s[0] for s in sizes],
            "companion_sizes": [s[1:] for s in sizes], "product": product,
            "target": str(row.get("target", ""))}
    name = row.get("name") or f"{pid}_{obset}_{arch['filter'].lower()}"
    return VisitSpec(name=name, source="archive", field_type=ft, split=split,
                     label=dict(row.get("label", {})), archive=arch, row=i)


def _parse_label_cell(where: str, text: str) -> dict:
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        if "=" not in part:
            raise InputError(f"{where}: label entry {part!r} is not key=value")
        key, value = (s.strip() for s in part.split("=", 1))
        out[key] = cfgmod.parse_override(f"{key}={value}")[1]
    return out


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read and check a manifest (TOML or CSV).

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        Naming the file, the row and the key of anything wrong; two visits with the
        same name are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    raw = path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    visits: list[VisitSpec] = []
    name, description = path.stem, ""
    if path.suffix.lower() == ".toml":
        try:
            doc = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid TOML ({exc})") from None
        unknown = set(doc) - {"name", "description", "defaults", "visit", "seed"}
        if unknown:
            raise InputError(f"{path}: unknown top-level key(s) {sorted(unknown)}")
        name = str(doc.get("name", name))
        description = str(doc.get("description", ""))
        base_seed = int(doc.get("seed", 0))
        defaults = doc.get("defaults", {})
        rows = doc.get("visit", [])
        if not isinstance(rows, list) or not rows:
            raise InputError(f"{path}: no [[visit]] rows")
        for i, row in enumerate(rows):
            merged = {**defaults, **row}
            if "label" in defaults and "label" in row:
                merged["label"] = {**defaults["label"], **row["label"]}
            where = f"{path.name}: visit {i + 1}"
            source = merged.pop("source", "simulate")
            if source == "simulate":
                visits.append(_sim_visit(where, i, merged, base_seed))
            elif source == "archive":
                visits.append(_archive_visit(where, i, merged))
            else:
                raise InputError(f"{where}: source={source!r}, expected 'simulate' or 'archive'")
    elif path.suffix.lower() == ".csv":
        text = raw.decode()
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        reader = csv.DictReader(io.StringIO("\n".join(lines)))
        for i, row in enumerate(reader):
            where = f"{path.name}: row {i + 2}"
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            row = {k: v for k, v in row.items() if v != ""}
            if "label" in row:
                row["label"] = _parse_label_cell(where, row["label"])
            visits.append(_archive_visit(where, i, row))
        if not visits:
            raise InputError(f"{path}: no visit rows")
    else:
        raise InputError(f"{path}: manifest must be .toml or .csv")
    seen: dict[str, int] = {}
    for v in visits:
        if v.name in seen:
            raise InputError(f"{path}: visits {seen[v.name] + 1} and {v.row + 1} are both named {v.name!r}")
        seen[v.name] = v.row
    return Manifest(name=name, path=path, sha256=sha, visits=visits, description=description)
