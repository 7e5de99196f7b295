"""``crforge inspect``: validate an HDF5 training set, then summarise it.

(The module is not called ``inspect``, which would read as the standard library's.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONFIG = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crforge inspect``."""
    parser.add_argument("file", type=Path, help="HDF5 training set written by `crforge dataset`")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON instead of the text report")


def run(args: argparse.Namespace, cfg: None = None) -> int:
    """Validate, then summarise; 2 (each problem on stderr, no report) when the file is invalid."""
    from crforge.pipeline.datafile.validate import validate
    from crforge.pipeline.summary import format_summary, summarise

    problems = validate(args.file)
    if problems:
        for msg in problems:
            sys.stderr.write(f"{args.file}: {msg}\n")
        sys.stderr.write(f"{args.file}: INVALID ({len(problems)} problem(s))\n")
        return 2  # bad input, as every command's
    summary = summarise(args.file)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n" if args.json else format_summary(summary))
    return 0
