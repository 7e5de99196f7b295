"""``crforge evaluate``: a trained run against LACosmic, deepCR and the inpainting baselines."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from crforge.cli.runconfig import RunConfig
from crforge.paths import check_writable_dir
from crforge.pipeline.names import SPLITS

CONFIG = RunConfig
SECTION = "evaluate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crforge evaluate``."""
    parser.add_argument("--run", type=Path, required=True,
                        help="run directory (runs/<name>, holding mask/ and inpaint/)")
    parser.add_argument("--data", type=Path, required=True, help="HDF5 data set (schema v1 or v2)")
    parser.add_argument("--split", choices=SPLITS, help="split to evaluate (default: evaluate.split, test)")
    parser.add_argument("--out", type=Path, help="output directory (default: the run directory)")
    parser.add_argument("--no-baselines", action="store_true", help="evaluate crforge's models only")
    parser.add_argument("--overwrite", action="store_true", help="replace an evaluation already in the "
                        "output directory (evaluation.json, report.md, roc.png, real.png)")
    parser.add_argument("--wait", action="store_true", help="wait for another run writing the output "
                        "directory instead of refusing (exit 2)")


def run(args: argparse.Namespace, cfg: RunConfig) -> int:
    """Evaluate the run; print the headline figures and where the report is."""
    from crforge.training.evaluate.report import summary_text
    from crforge.training.evaluate.stage import evaluate_run

    flags = {}
    if args.split:
        flags["split"] = args.split
    if args.no_baselines:
        flags["baselines"] = ()
    check_writable_dir(args.out or args.run, what="output directory")
    doc = evaluate_run(args.run, args.data, dataclasses.replace(cfg.evaluate, **flags), args.out,
                       progress=None, wait=args.wait, overwrite=args.overwrite)
    out = Path(args.out or args.run)
    sys.stdout.write(summary_text(doc))
    sys.stdout.write(f"wrote {out / 'evaluation.json'}, {out / 'report.md'}"
                     + (f", {out / 'roc.png'}" if doc["mask"] else "") + "\n")
    return 0
