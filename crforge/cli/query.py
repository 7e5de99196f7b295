"""``crforge query``: find multi-exposure HST visits on MAST and write them as a manifest."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from crforge.cli.runconfig import RunConfig
from crforge.errors import InputError
from crforge.paths import check_writable_dir
from crforge.pipeline.archive.config import ArchiveConfig
from crforge.pipeline.names import FIELD_TYPES

CONFIG = RunConfig
SECTION = "archive"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crforge query``."""
    parser.add_argument("--out", type=Path, required=True,
                        help="manifest to write (.csv; may be --manifest itself)")
    parser.add_argument("--manifest", type=Path,
                        help="resolve this manifest's rows (exposures, sizes, product) instead of "
                             "searching by criteria")
    parser.add_argument("--refresh", action="store_true",
                        help="with --manifest: resolve rows that already list exposures and sizes too")
    g = parser.add_argument_group("criteria (without --manifest)")
    g.add_argument("--instrument", default="ACS/WFC",
                   help="an imager of the instrument table: ACS/WFC (default), WFC3/UVIS, ACS/HRC, STIS/CCD, "
                        "WFPC2 (asked for by its MAST instrument_name values)")
    g.add_argument("--filter", dest="filters", action="append", default=[],
                   help="filter (repeatable: any of them)")
    g.add_argument("--exptime", nargs=2, type=float, metavar=("MIN", "MAX"),
                   help="seconds of MAST's t_exptime")
    g.add_argument("--proposal", dest="proposals", action="append", type=int, default=[],
                   help="proposal id (repeatable)")
    g.add_argument("--dates", nargs=2, metavar=("START", "END"),
                   help="observation start between two ISO dates (or MJDs)")
    g.add_argument("--target-classification", default="",
                   help="MAST target_classification, e.g. 'GLOBULAR CLUSTER' (* wildcards)")
    g.add_argument("--min-exposures", type=int, help="exposures per visit and filter (default 2)")
    g.add_argument("--field-type", choices=FIELD_TYPES, help="field type of every visit found (required)")
    g.add_argument("--split", choices=("train", "val", "test"), help="explicit split of every visit found")
    parser.add_argument("--server", help="MAST base URL (default: astroquery.mast.conf.server)")


def archive_config(args: argparse.Namespace, cfg: RunConfig) -> ArchiveConfig:
    """The ``[archive]`` table with the flags ``--server``, ``--min-exposures``, ``--concurrency``."""
    flags = {k: getattr(args, k, None) for k in ("server", "min_exposures", "concurrency")}
    archive = dataclasses.replace(cfg.archive, **{k: v for k, v in flags.items() if v is not None})
    archive.validate()
    return archive


def run(args: argparse.Namespace, cfg: RunConfig) -> int:
    """Resolve a manifest (``--manifest``) or search by criteria; 1 when nothing was found."""
    archive = archive_config(args, cfg)
    check_writable_dir(Path(args.out).parent, what="--out directory")
    if args.manifest is not None:
        return _resolve(args, archive)
    if not args.field_type:
        raise InputError("--field-type is required when searching by criteria (it is written "
                         "into every row of the manifest)")
    return _search(args, archive)


def _resolve(args: argparse.Namespace, archive: ArchiveConfig) -> int:
    from crforge.pipeline.archive.manifests import resolve_manifest
    from crforge.pipeline.manifest import load_manifest

    path, failures = resolve_manifest(args.manifest, Path(args.out), archive, refresh=args.refresh)
    man = load_manifest(path)
    n_exp = sum(len(v.archive["exposures"]) for v in man.visits)
    size = sum(sum(v.archive["sizes"]) + sum(map(sum, v.archive["companion_sizes"])) for v in man.visits)
    for name, reason in failures.items():
        sys.stderr.write(f"crforge query: visit {name} not resolved: {reason}\n")
    sys.stdout.write(f"{path}: {len(man.visits) - len(failures)} of {len(man.visits)} visits "
                     f"resolved, {n_exp} exposures, {size / 1e9:.2f} GB\n")
    return 1 if failures else 0


def _search(args: argparse.Namespace, archive: ArchiveConfig) -> int:
    from crforge.pipeline.archive.manifests import manifest_row, write_manifest
    from crforge.pipeline.archive.query import ArchiveError, Criteria, find_visits, mast_criteria
    from crforge.pipeline.archive.visits import product_prefs

    crit = Criteria(instrument=args.instrument, filters=tuple(args.filters),
                    exptime=tuple(args.exptime) if args.exptime else None,
                    proposal_ids=tuple(args.proposals),
                    dates=tuple(args.dates) if args.dates else None,
                    target_classification=args.target_classification)
    try:
        visits = find_visits(crit, archive)
    except ArchiveError as exc:
        sys.stderr.write(f"crforge query: {exc}\n")
        return 1
    if not visits:
        sys.stderr.write("crforge query: no visit matches (nothing written)\n")
        return 1
    rows = [manifest_row(v, args.field_type, args.split or "") for v in visits]
    crit_text = json.dumps(mast_criteria(crit), sort_keys=True)
    prefs = " then ".join(product_prefs(crit.instrument, archive.products))
    write_manifest(args.out, rows, comments=[f"crforge query {datetime.now(timezone.utc):%Y-%m-%d}, "
                                             f"{archive.mast_server()}", f"criteria: {crit_text}",
                                             f"min_exposures: {archive.min_exposures}, products: {prefs}"])
    size = sum(v.size for v in visits)
    sys.stdout.write(f"{args.out}: {len(visits)} visits, {sum(len(v.exposures) for v in visits)} "
                     f"exposures, {size / 1e9:.2f} GB\n")
    return 0
