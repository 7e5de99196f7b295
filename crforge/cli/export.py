"""``crforge export``: a zoo mask model in another package's format (deepCR 0.3.1)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crforge.deepcr_models.interop import export_deepcr
from crforge.paths import check_writable_dir

CONFIG = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crforge export``."""
    parser.add_argument("model", help="zoo name, or a crforge checkpoint / weights file (a mask model)")
    parser.add_argument("--to", choices=("deepcr",), required=True, help="target format (deepcr: "
                        "a state dict deepCR 0.3.1 loads with deepCR(mask=FILE, hidden=WIDTH))")
    parser.add_argument("--output", "-o", type=Path, required=True, help="the .pth file to write")
    parser.add_argument("--sky", type=float, default=0.0, help="sky level in electrons folded into "
                        "the first convolution (deepCR does not subtract a sky; default 0)")
    parser.add_argument("--zoo", type=Path, default=None, help="search this zoo directory alone for "
                        "the model name (default: the shipped zoo, then the user zoo: $CRFORGE_ZOO or "
                        "the per-user data directory)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")



def run(args: argparse.Namespace, cfg: None = None) -> int:
    """Entry point of ``crforge export``."""
    check_writable_dir(Path(args.output).parent, what="--output directory")
    info = export_deepcr(args.model, args.output, sky=args.sky, zoo=args.zoo, overwrite=args.overwrite)
    sys.stdout.write(f"wrote {info['path']}: {info['usage'].replace('THRESHOLD', str(round(info['threshold'], 6)))}\n")
    return 0
