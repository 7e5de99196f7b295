"""CSV manifests of archive visits: written by ``crforge query``, resolved on MAST.

A manifest written here lists each visit's exposures (rootnames), their product sizes
and the product type, so that ``crforge fetch`` and ``crforge dataset`` need no query
to fetch and verify them (:mod:`crforge.pipeline.manifest` reads it).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from crforge.atomic import atomic_path
from crforge.errors import InputError
from crforge.pipeline.archive.config import ArchiveConfig, checked_config
from crforge.pipeline.archive.query import resolve_specs
from crforge.pipeline.archive.visits import Visit
from crforge.pipeline.manifest import Manifest, load_manifest
from crforge.pipeline.names import FIELD_TYPES

logger = logging.getLogger(__name__)

__all__ = ["MANIFEST_COLUMNS", "manifest_row", "sizes_cell", "write_manifest", "resolve_manifest"]

#: Columns of a manifest written by ``crforge query``, in order.
MANIFEST_COLUMNS = ("instrument", "filter", "proposal_id", "obset_id", "field_type", "split",
                    "exposures", "sizes", "product", "target", "label")


def sizes_cell(archive: Mapping) -> str:
    """The ``sizes`` cell of a manifest row's archive fields (``VisitSpec.archive``)."""
    comp = archive.get("companion_sizes") or [()] * len(archive["sizes"])
    return " ".join("+".join(str(b) for b in (s, *c)) for s, c in zip(archive["sizes"], comp))


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
            "sizes": " ".join(e.sizes_cell for e in visit.exposures),
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
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        try:
            load_manifest(tmp)  # never leave a manifest the dataset stage cannot read
        except InputError as exc:
            raise InputError(f"{path}: not written, it would not load ({exc})") from None
    return path


def _read_csv_rows(path: Path) -> tuple[list[str], list[str], list[dict]]:
    """(comment lines, header columns, rows as dicts) of a CSV manifest, in file order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    comments = [ln for ln in lines if ln.lstrip().startswith("#")]
    data = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(data)))
    rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    return comments, [c.strip() for c in (reader.fieldnames or [])], rows


def _toml_rows(man: Manifest) -> tuple[list[str], list[str], list[dict]]:
    """(comment lines, extra columns, rows as dicts) of a TOML manifest written as CSV."""
    comments = [f"{man.name}: {man.description}".rstrip(": ")] if man.description else []
    rows = []
    for v in man.visits:
        a = v.archive
        rows.append({"instrument": a["instrument"], "filter": a["filter"],
                     "proposal_id": str(a["proposal_id"]), "obset_id": a["obset_id"],
                     "field_type": v.field_type, "split": v.split or "",
                     "exposures": " ".join(a["exposures"]),
                     "sizes": sizes_cell(a), "product": a["product"],
                     "target": a["target"], "label": _label_cell(v.label)})
        if v.name != f"{a['proposal_id']}_{a['obset_id']}_{a['filter'].lower()}":
            rows[-1]["name"] = v.name  # a visit named by its row keeps its name
    return comments, ["name"] if any("name" in r for r in rows) else [], rows


def _resolved_row(row: Mapping[str, str], v: Visit | str | None) -> dict:
    """A manifest row with the exposures, sizes and product of its resolved visit ``v``
    (a row that was not resolved, or could not be, as it is)."""
    row = dict(row)
    if isinstance(v, Visit):
        row.update(exposures=" ".join(e.rootname for e in v.exposures),
                   sizes=" ".join(e.sizes_cell for e in v.exposures), product=v.product)
        if not row.get("target"):
            row["target"] = v.target
        # rows name the obset with two characters, as MAST's rootnames do
        row["obset_id"] = v.obset_id
    return row


def resolve_manifest(manifest: str | os.PathLike, out: str | os.PathLike,
                     cfg: ArchiveConfig | None = None, *, refresh: bool = False
                     ) -> tuple[Path, dict[str, str]]:
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
    cfg = checked_config(cfg)
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
        comments, header, raw_rows = _toml_rows(man)
    columns = list(MANIFEST_COLUMNS) + [c for c in header if c not in MANIFEST_COLUMNS]
    rows = [_resolved_row(raw, resolved.get(spec.name)) for spec, raw in zip(man.visits, raw_rows)]
    return write_manifest(out, rows, comments=comments, columns=columns), failures
