"""``crforge publish``: a trained, evaluated run's models into a user zoo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crforge.deepcr_models import registry as reg
from crforge.deepcr_models.publish import publish

CONFIG = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crforge publish``."""
    parser.add_argument("run", type=Path, help="the run directory (runs/<run>: mask/best.pt, "
                        "inpaint/best.pt, evaluation.json)")
    parser.add_argument("--name", required=True, help="published name")
    parser.add_argument("--zoo", type=Path, default=None, help="zoo directory to publish into (default: "
                        "the user zoo, $CRFORGE_ZOO or the per-user data directory; never the zoo shipped "
                        "inside the package)")
    parser.add_argument("--overwrite", action="store_true", help="replace models already published "
                        "under this name, or publish under a shipped model's name (yours then takes "
                        "precedence)")
    parser.add_argument("--description", help="one line describing the models (default: made from "
                        "the architecture and the data)")
    parser.add_argument("--ship", action="store_true", help="maintainers: publish into the models shipped "
                        "with crforge (deepcr_models/ of a git checkout; refused for an installed package)")
    parser.add_argument("--wait", action="store_true", help="wait for another publication into the "
                        "zoo instead of refusing (exit 2)")



def run(args: argparse.Namespace, cfg: None = None) -> int:
    """Entry point of ``crforge publish``."""
    records = publish(args.run, args.name, zoo=args.zoo, overwrite=args.overwrite,
                      description=args.description, ship=args.ship, wait=args.wait)
    zdir = reg.writable_zoo(args.zoo, ship=args.ship)
    for r in records:
        extra = f", threshold {r.threshold:.6g} at FPR {r.threshold_fpr:g}" if r.threshold is not None else ""
        sys.stdout.write(f"{r.key}: {zdir / r.weights} (sha256 {r.sha256[:12]}...{extra})\n")
    sys.stdout.write(f"card: {zdir / records[0].card}\n")
    return 0
