"""``crforge fetch``: download a manifest's exposures from MAST into the raw area.

The work is :func:`crforge.pipeline.archive.prepare.fetch_specs` (sizes verified against MAST's
listing, ``.part`` files resumed, retries with backoff, bounded concurrency); this
module is its command line. Rows that list exposures and sizes (a manifest written
by ``crforge query``) need no query; the others are resolved on MAST first.

Exit status: 0 when every visit is ready to label, 1 when a visit is not (each file
that failed is named on stderr with its reason; a rerun resumes), 2 for a bad
manifest or configuration. An exposure is ready when every file it needs is verified:
its product and the files the instrument table pairs with it (WFPC2's ``c1m``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crforge.cli.query import archive_config
from crforge.cli.runconfig import RunConfig
from crforge.errors import InputError

CONFIG = RunConfig
SECTION = "archive"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crforge fetch``."""
    parser.add_argument("--manifest", type=Path, required=True, help="data set manifest (.csv or .toml)")
    parser.add_argument("--work", type=Path, default=Path("work"),
                        help="work directory; files go to WORK/raw/<visit>/ (default: work)")
    parser.add_argument("--visit", action="append", default=[],
                        help="fetch only this visit (<proposal>_<obset>_<filter>; repeatable)")
    parser.add_argument("--concurrency", type=int, help="downloads at once (default 4)")
    parser.add_argument("--server", help="MAST base URL (default: astroquery.mast.conf.server)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, cfg: RunConfig) -> int:
    """Fetch every (or each ``--visit``) archive visit; 1 when one is not ready."""
    from crforge.pipeline.archive.prepare import fetch_specs
    from crforge.pipeline.manifest import load_manifest

    archive = archive_config(args, cfg)
    man = load_manifest(args.manifest)
    specs = [v for v in man.visits if v.source == "archive"]
    if args.visit:
        names = {v.name for v in specs}
        unknown = sorted(set(args.visit) - names)
        if unknown:
            raise InputError(f"--visit {unknown[0]!r}: not an archive visit of {args.manifest} "
                             f"(visits: {', '.join(sorted(names)[:5])}{', ...' if len(names) > 5 else ''})")
        specs = [v for v in specs if v.name in set(args.visit)]
    if not specs:
        raise InputError(f"{args.manifest}: no archive visits to fetch")
    results = fetch_specs(specs, args.work, archive, progress=False if args.no_progress else None)
    bad = 0
    for name, res in results.items():
        got = sum(f.transferred for f in res.files)
        fetched = sum(f.status == "verified" for f in res.files)
        present = sum(f.status == "present" for f in res.files)
        if res.files:
            # an exposure of several files (WFPC2: c0m and c1m) counts once
            files = f"{len(res.files)} files: " if len(res.files) != len(res.exposures) else ""
            line = (f"{name}: {len(res.ready)}/{len(res.exposures)} exposures verified "
                    f"({files}{fetched} fetched, {present} already present), {got / 1e6:.1f} MB transferred")
        else:
            line = (f"{name}: on disk (not verified: the manifest lists no sizes)" if not res.reason
                    else f"{name}: not ready")
        sys.stdout.write(line + "\n")
        for f in res.failed:
            sys.stderr.write(f"crforge fetch: visit {name}: {f.filename}: {f.reason}\n")
        if res.reason:
            bad += 1
            sys.stderr.write(f"crforge fetch: visit {name} not ready: {res.reason}\n")
    return 1 if bad else 0
