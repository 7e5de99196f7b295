"""``evaluation.json``: the document ``crforge evaluate`` writes and ``crforge publish`` reads.

One module holds the format's name, its writer and its reader (which checks what a
publisher needs: the data set's instrument and filters, the models, the figures).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from crforge.atomic import write_text
from crforge.errors import InputError

__all__ = ["EVALUATION_FORMAT", "EVALUATION_FILE", "write_evaluation", "read_evaluation"]

EVALUATION_FORMAT = "crforge-evaluation/1"
EVALUATION_FILE = "evaluation.json"


def _jsonable(obj: Any) -> Any:
    """``obj`` with NumPy scalars as Python numbers and non-finite floats as None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_evaluation(out_dir: str | os.PathLike, doc: dict) -> Path:
    """Write ``doc`` (with ``format`` :data:`EVALUATION_FORMAT`) as ``out_dir/evaluation.json``."""
    if doc.get("format") != EVALUATION_FORMAT:
        raise InputError(f"evaluation document: format {doc.get('format')!r}, expected {EVALUATION_FORMAT!r}")
    path = Path(out_dir) / EVALUATION_FILE
    write_text(path, json.dumps(_jsonable(doc), indent=1, allow_nan=True) + "\n")
    return path


def read_evaluation(run_dir: str | os.PathLike) -> dict:
    """Read and check ``<run>/evaluation.json``.

    Raises
    ------
    InputError
        No file (the message says to run ``crforge evaluate``), not JSON, another
        format, or missing the ``crforge`` figures / threshold.
    """
    run_dir = Path(run_dir)
    path = run_dir / EVALUATION_FILE
    if not path.is_file():
        raise InputError(f"{path} not found: the run has no evaluation figures, and a model without "
                         f"them is not published; run `crforge evaluate --run {run_dir} --data DATA.h5` "
                         "(or `make evaluate`) first")
    try:
        ev = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(ev, dict) or ev.get("format") != EVALUATION_FORMAT:
        raise InputError(f"{path}: not a crforge evaluation (format {EVALUATION_FORMAT!r} expected, "
                         f"got {ev.get('format') if isinstance(ev, dict) else type(ev).__name__!r})")
    for key in ("data", "models"):
        if not isinstance(ev.get(key), dict):
            raise InputError(f"{path}: no {key!r} table")
    for key in ("instrument", "filters"):
        if key not in ev["data"]:
            raise InputError(f"{path}: data.{key} is missing")
    return ev
