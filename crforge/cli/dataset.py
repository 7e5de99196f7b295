"""``crforge dataset``: the HDF5 training set of a manifest."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from crforge.cli.runconfig import RunConfig
from crforge.paths import check_writable_dir

CONFIG = RunConfig
SECTION = "dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crforge dataset``."""
    parser.add_argument("--manifest", type=Path, required=True, help="data set manifest (.toml or .csv)")
    parser.add_argument("--work", type=Path, default=Path("work"), help="work directory (default: work)")
    parser.add_argument("--output", type=Path, help="HDF5 file (default: WORK/<manifest name>.h5)")
    parser.add_argument("--scheduler", help="local (default), serial, or tcp://host:port of a dask scheduler")
    parser.add_argument("--workers", type=int, help="LocalCluster workers (default: one per core)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output that is "
                        "not a rebuild of this data set (same manifest and settings)")
    parser.add_argument("--wait", action="store_true", help="wait for another run using the work "
                        "directory instead of refusing (exit 2)")


def run(args: argparse.Namespace, cfg: RunConfig) -> int:
    """Build the data set; exit 1 when too many visits failed."""
    from crforge.pipeline.dataset.stage import DatasetError, build_dataset

    check_writable_dir(args.work, what="--work directory")
    if args.output is not None:
        check_writable_dir(Path(args.output).parent, what="--output directory")
    flags = {k: getattr(args, k) for k in ("scheduler", "workers") if getattr(args, k) is not None}
    try:
        report = build_dataset(args.manifest, args.work, output=args.output,
                               dataset=dataclasses.replace(cfg.dataset, **flags), label=cfg.label,
                               stamps=cfg.stamps, archive=cfg.archive, overwrite=args.overwrite,
                               wait=args.wait)
    except DatasetError as exc:
        sys.stderr.write(f"crforge dataset: {exc}\n")
        return 1
    for f in report.visits_failed:
        sys.stderr.write(f"crforge dataset: warning: visit {f['visit']} skipped: {f['reason']}\n")
    sys.stdout.write(f"{report.output}: {report.stamps} stamps from {report.visits_done} "
                     f"of {report.visits_total} visits in {report.seconds_total:.0f} s\n")
    return 0
