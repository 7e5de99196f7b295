"""``crforge label``: AstroDrizzle labels of one visit."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from crforge.cli.runconfig import RunConfig
from crforge.paths import check_writable_dir

logger = logging.getLogger(__name__)

CONFIG = RunConfig
SECTION = "label"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crforge label``."""
    parser.add_argument("visit", type=Path, help="directory with the visit's *_flc.fits files")
    parser.add_argument("--out", type=Path, required=True,
                        help="parent directory of the labels (writes OUT/<visit>/)")
    parser.add_argument("--overwrite", action="store_true", help="redo complete labels (kept when made "
                        "with the same settings; refused when made with other settings)")
    parser.add_argument("--wait", action="store_true", help="wait for another run labelling into "
                        "the same directory instead of refusing (exit 2)")
    parser.add_argument("--keep-scratch", action="store_true", help="keep AstroDrizzle's files")


def run(args: argparse.Namespace, cfg: RunConfig) -> int:
    """Label the visit into ``OUT/<visit>/``."""
    from crforge.pipeline.label.stage import label_visit

    label = dataclasses.replace(cfg.label, keep_scratch=True) if args.keep_scratch else cfg.label
    out = Path(args.out) / Path(args.visit).name
    check_writable_dir(args.out, what="--out directory")
    labels = label_visit(args.visit, out, label, overwrite=args.overwrite, wait=args.wait)
    logger.info("labels of %d exposures in %s", len(labels.exposures), out)
    return 0
