"""``crforge simulate``: one simulated visit with injected cosmic rays and their truth."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from crforge.cli.runconfig import RunConfig
from crforge.errors import InputError
from crforge.paths import check_writable_dir
from crforge.pipeline.names import FIELD_TYPES

logger = logging.getLogger(__name__)

CONFIG = RunConfig
SECTION = "simulate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crforge simulate`` (each overrides its ``[simulate]`` key)."""
    parser.add_argument("--out", required=True, type=Path, help="parent directory of the visit")
    parser.add_argument("--field-type", choices=FIELD_TYPES, help="scene type")
    parser.add_argument("--n-exposures", type=int, help="exposures in the visit")
    parser.add_argument("--exptime", type=float, help="seconds per exposure")
    parser.add_argument("--filter", help="filter name, e.g. F606W")
    parser.add_argument("--instrument", help="ACS/WFC or WFC3/UVIS")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--size", help="chip shape NYxNX for small test visits (default: full size)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing visit (one "
                        "simulated with the same settings is kept; with other settings it is refused)")
    parser.add_argument("--wait", action="store_true", help="wait for another run simulating the "
                        "same visit instead of refusing (exit 2)")


def _chip_shape(text: str) -> tuple[int, int]:
    try:
        ny, nx = (int(t) for t in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size={text!r}: expected NYxNX, e.g. 256x512") from None
    return ny, nx


def run(args: argparse.Namespace, cfg: RunConfig) -> int:
    """Simulate the visit; print its directory."""
    from crforge.pipeline.simulate.visit import simulate_visit

    flags = {k: getattr(args, k) for k in ("field_type", "n_exposures", "exptime", "filter",
                                            "instrument", "seed") if getattr(args, k) is not None}
    if args.size:
        flags["chip_shape"] = _chip_shape(args.size)
    sim = dataclasses.replace(cfg.simulate, **flags)
    check_writable_dir(args.out, what="--out directory")
    path = simulate_visit(sim, args.out, overwrite=args.overwrite, wait=args.wait)
    logger.info("wrote %s", path)
    sys.stdout.write(f"{path}\n")  # the command's one line of output: where the visit is
    return 0
