"""``crforge clean``: mask (and inpaint) the cosmic rays of a calibrated HST file; CRs into DQ."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crforge.deepcr_models.hstfile import clean_fits
from crforge.deepcr_models.inference import DEFAULT_TILE

CONFIG = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crforge clean``."""
    parser.add_argument("file", type=Path, help="calibrated HST file (FLC/FLT: SCI and DQ per chip)")
    parser.add_argument("--model", required=True, help="zoo name (crforge.deepcr_models.list_models()), a "
                        "crforge checkpoint or weights file, or deepcr:ACS-WFC")
    parser.add_argument("--inpaint", nargs="?", const="", default=None, metavar="MODEL",
                        help="also replace the CR pixels of SCI with the inpaint model (default: "
                        "the --model name's inpaint model)")
    parser.add_argument("--output", "-o", type=Path, help="output file (default <stem>_crclean.fits)")
    parser.add_argument("--in-place", action="store_true", help="write over the input file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--dq-bit", type=int, default=None, help="DQ bit of the CR mask (default: the "
                        "instrument's: 16384 ACS/WFC, 8 WFC3/UVIS)")
    parser.add_argument("--threshold", type=float, default=None, help="CR probability threshold "
                        "(default: the model's recommended one)")
    parser.add_argument("--views", type=int, choices=(1, 2, 4, 8), default=None, help="average the CR "
                        "probability over this many symmetric views of each chip, one pass of the network "
                        "each (default: the model's, the number its recommended threshold was chosen for)")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help=f"largest tile side (default {DEFAULT_TILE})")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap (default: the "
                        "network's receptive radius)")
    parser.add_argument("--batch-size", type=int, default=1, help="tiles per forward pass")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    parser.add_argument("--zoo", type=Path, default=None, help="search this zoo directory alone for "
                        "--model names (default: the shipped zoo, then the user zoo: $CRFORGE_ZOO or "
                        "the per-user data directory)")
    parser.add_argument("--force", action="store_true", help="clean a file whose instrument, detector, "
                        "filter or unit (BUNIT) is not what the model was trained on (a warning per "
                        "mismatch) instead of refusing it")


def run(args: argparse.Namespace, cfg: None = None) -> int:
    """Entry point of ``crforge clean``."""
    inpaint_model = None
    if args.inpaint is not None:
        inpaint_model = args.inpaint or args.model
    res = clean_fits(args.file, args.model, inpaint_model=inpaint_model, output=args.output,
                     in_place=args.in_place, overwrite=args.overwrite, dq_bit=args.dq_bit,
                     threshold=args.threshold, tile=args.tile, overlap=args.overlap,
                     batch_size=args.batch_size, threads=args.threads, precision=args.precision,
                     device=args.device, zoo=args.zoo, allow_mismatch=args.force, views=args.views)
    for c in res["chips"]:
        sys.stdout.write(f"SCI,{c['extver']}: {c['cr_pixels']} CR pixels ({100 * c['fraction']:.3f}%)\n")
    sys.stdout.write(f"wrote {res['output']} (DQ bit {res['dq_bit']}, threshold {res['threshold']:.6g}, "
                     f"{res['views']} view{'s' if res['views'] > 1 else ''}"
                     f"{', inpainted' if res['inpainted'] else ''})\n")
    return 0
