"""``crforge models``: the models of the zoo (shipped and user zoo), one line each."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONFIG = None

_COLUMNS = ("name", "kind", "instrument", "filters", "threshold", "data", "where")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crforge models``."""
    parser.add_argument("--zoo", type=Path, default=None, help="list this zoo directory alone (default: "
                        "the shipped zoo, then the user zoo: $CRFORGE_ZOO or the per-user data directory)")
    parser.add_argument("--kind", choices=("mask", "inpaint"), default=None, help="only models of this kind")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def _rows(zoo: Path | None, kind: str | None) -> list[dict]:
    from crforge.deepcr_models import registry as reg

    shipped = reg.shipped_zoo().resolve()
    rows = []
    for rec, zdir in reg.all_records(zoo):
        if kind is not None and rec.kind != kind:
            continue
        rows.append({"name": rec.name, "kind": rec.kind, "instrument": rec.instrument,
                     "filters": list(rec.filters), "threshold": rec.threshold,
                     "data": "simulated" if rec.simulated else "real",
                     "where": "shipped" if Path(zdir).resolve() == shipped else str(zdir),
                     "weights": str(Path(zdir) / rec.weights)})
    return rows


def _table(rows: list[dict]) -> str:
    def cell(row: dict, key: str) -> str:
        v = row[key]
        if key == "filters":
            return ",".join(v) or "-"
        if key == "threshold":
            return "-" if v is None else f"{v:.4g}"
        return str(v)

    cells = [list(_COLUMNS)] + [[cell(r, k) for k in _COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_COLUMNS))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() + "\n" for line in cells)


def run(args: argparse.Namespace, cfg: None = None) -> int:
    """Print the zoo's models (``where``: ``shipped`` or the user zoo's directory)."""
    if args.zoo is not None and not args.zoo.is_dir():
        raise FileNotFoundError(2, "No such zoo directory", str(args.zoo))
    rows = _rows(args.zoo, args.kind)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif rows:
        sys.stdout.write(_table(rows))
    else:
        where = args.zoo if args.zoo is not None else "the shipped and user zoos"
        sys.stderr.write(f"crforge models: no {args.kind or ''}{' ' if args.kind else ''}model in {where}\n")
    return 0
