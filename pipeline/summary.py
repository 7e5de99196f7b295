"""A summary of an HDF5 training set: stamps, fields, labels and label quality (``crforge inspect``).

:func:`summarise` gives stamp, field and pixel statistics per split and, where the truth
of simulated visits exists, the label recall per SNR bin and the false-label rate,
streaming the stamps ``block`` at a time; :func:`format_summary` renders it as text.

Counting conventions
--------------------
- ``cr_fraction`` and ``ignore_fraction`` are over all pixels of a split;
  ``cr_fraction_unignored`` is the CR-labelled fraction of the pixels with
  ``ignore == 0``.
- Truth statistics use only pixels with ``ignore == 0``.  Recall in a bin is
  (``cr == 1`` and ``truth == bin``) / (``truth == bin``); ``recall_above_5sigma``
  pools bins 3 and 4.  ``false_labels_per_million`` is 1e6 x (``cr == 1`` and
  ``truth == 0``) / (``truth == 0``), i.e. the false-positive rate over the
  non-ignored negative pixels; the raw counts are reported next to it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from crforge.errors import InputError
from crforge.pipeline.datafile.reader import blocks, check_block, check_file, progress_bar, read_fields, text
from crforge.pipeline.datafile.schema import SPLITS, TRUTH_SNR_BINS
from crforge.pipeline.datafile.validate import DEFAULT_BLOCK

logger = logging.getLogger(__name__)

__all__ = ["summarise", "format_summary", "SNR_BINS"]

SNR_BINS = TRUTH_SNR_BINS

def _ratio(num: int, den: int, scale: float = 1.0) -> float | None:
    return None if den == 0 else scale * num / den



def _truth_stats(counts: np.ndarray) -> dict[str, Any]:
    """Truth statistics from counts[t, c] over non-ignored pixels (t 0..4, c 0/1)."""
    bins = []
    for b, label in SNR_BINS.items():
        inj = int(counts[b].sum())
        lab = int(counts[b, 1])
        bins.append({"bin": b, "snr": label, "injected": inj, "labelled": lab,
                     "recall": _ratio(lab, inj)})
    inj = int(counts[1:].sum())
    lab = int(counts[1:, 1].sum())
    inj5 = int(counts[3:].sum())
    lab5 = int(counts[3:, 1].sum())
    neg = int(counts[0].sum())
    fl = int(counts[0, 1])
    return {
        "pixels": int(counts.sum()),
        "injected": inj,
        "labelled": lab,
        "recall": _ratio(lab, inj),
        "bins": bins,
        "injected_above_5sigma": inj5,
        "labelled_above_5sigma": lab5,
        "recall_above_5sigma": _ratio(lab5, inj5),
        "negatives": neg,
        "false_labels": fl,
        "false_labels_per_million": _ratio(fl, neg, 1e6),
    }



def _pixel_stats(pixels: int, cr: int, ignored: int, cr_unignored: int) -> dict[str, Any]:
    return {
        "pixels": pixels,
        "cr_pixels": cr,
        "ignored_pixels": ignored,
        "cr_fraction": _ratio(cr, pixels),
        "ignore_fraction": _ratio(ignored, pixels),
        "cr_fraction_unignored": _ratio(cr_unignored, pixels - ignored),
    }



@dataclass
class _Counts:
    """Running pixel and truth counts of one split (or of all)."""

    pixels: int = 0
    cr: int = 0
    ignored: int = 0
    cr_unignored: int = 0
    truth: np.ndarray = field(default_factory=lambda: np.zeros((5, 2), np.int64))

    def add(self, other: _Counts) -> None:
        for k in ("pixels", "cr", "ignored", "cr_unignored"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.truth += other.truth

    def stats(self, with_truth: bool) -> dict[str, Any]:
        out = _pixel_stats(self.pixels, self.cr, self.ignored, self.cr_unignored)
        out["truth"] = _truth_stats(self.truth) if with_truth else None
        return out


def _count_block(g, sl: slice, has_truth: bool, counts: _Counts, by_type: dict[str, int],
                 ids: set[int]) -> None:
    cr = g["cr"][sl] != 0
    ok = g["ignore"][sl] == 0
    rows = g["meta"][sl]
    for ft, c in zip(*np.unique(rows["field_type"], return_counts=True)):
        key = text(ft) or ""
        by_type[key] = by_type.get(key, 0) + int(c)
    ids.update(int(i) for i in np.unique(rows["field_id"]))
    counts.pixels += cr.size
    counts.cr += int(np.count_nonzero(cr))
    counts.ignored += int(ok.size - np.count_nonzero(ok))
    counts.cr_unignored += int(np.count_nonzero(cr & ok))
    if has_truth:
        t = np.minimum(g["truth"][sl][ok].astype(np.int64), 5)
        c = np.bincount(t * 2 + cr[ok], minlength=12)
        counts.truth += c[:10].reshape(5, 2)  # truth > 4 (invalid) dropped


def _summarise_split(f, split: str, fields: dict, block: int, bar) -> tuple[dict, _Counts]:
    g = f[split]
    n, has_truth = g["cr"].shape[0], "truth" in g
    by_type: dict[str, int] = {}
    ids: set[int] = set()
    counts = _Counts()
    for sl in blocks(n, block):
        _count_block(g, sl, has_truth, counts, by_type, ids)
        bar.update(sl.stop - sl.start)
    fields_by_type: dict[str, int] = {}
    for info in fields.values():
        if info["split"] == split:
            key = info["field_type"] or ""
            fields_by_type[key] = fields_by_type.get(key, 0) + 1
    entry = {"stamps": int(n), "stamps_by_field_type": dict(sorted(by_type.items())),
             "fields": sum(fields_by_type.values()),
             "fields_by_field_type": dict(sorted(fields_by_type.items())),
             "fields_with_stamps": len(ids)}
    entry.update(counts.stats(has_truth))
    return entry, counts


def _root_summary(f, p: Path) -> dict[str, Any]:
    attrs = f.attrs
    out: dict[str, Any] = {"file": str(p)}
    for key in ("schema_version", "stamp_size"):
        v = attrs.get(key)
        out[key] = int(v) if isinstance(v, (int, np.integer)) else None
    for key in ("created_utc", "crforge_version", "manifest_name", "manifest_sha256"):
        out[key] = text(attrs[key]) if key in attrs else None
    out["failed_visits"] = []
    if "failed_visits" in attrs:
        try:
            out["failed_visits"] = json.loads(text(attrs["failed_visits"]) or "[]")
        except json.JSONDecodeError:
            logger.warning("%s: attribute failed_visits is not JSON", p)
    return out


def _merged(splits: dict[str, dict], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in splits.values():
        for k, v in e[key].items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def _total(splits: dict[str, dict], counts: _Counts, with_truth: bool) -> dict[str, Any]:
    total = {"stamps": sum(e["stamps"] for e in splits.values()),
             "stamps_by_field_type": _merged(splits, "stamps_by_field_type"),
             "fields": sum(e["fields"] for e in splits.values()),
             "fields_by_field_type": _merged(splits, "fields_by_field_type"),
             "fields_with_stamps": sum(e["fields_with_stamps"] for e in splits.values())}
    total.update(counts.stats(with_truth))
    return total


def summarise(path: str | os.PathLike, *, block: int = DEFAULT_BLOCK, progress: bool = True) -> dict[str, Any]:
    """Stamp, field, label and truth statistics of a training set (validate it first).

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file (assumed valid: run :func:`~crforge.pipeline.datafile.validate.validate`).
    block : int, optional
        Stamps read at a time (memory is proportional to it).
    progress : bool, optional
        Show a progress bar over stamps when stderr is a terminal.

    Returns
    -------
    dict
        JSON-serialisable: ``file``, the root attributes (``schema_version``,
        ``created_utc``, ``crforge_version``, ``manifest_name``, ``manifest_sha256``,
        ``stamp_size``), ``failed_visits``, ``splits`` (per split: ``stamps``,
        ``stamps_by_field_type``, ``fields``, ``fields_by_field_type`` (from
        ``/fields``), ``fields_with_stamps``, ``pixels``, ``cr_pixels``,
        ``ignored_pixels``, ``cr_fraction``, ``ignore_fraction``,
        ``cr_fraction_unignored`` and ``truth``), ``total`` (the same over all splits),
        ``has_truth`` and ``truth`` (all splits pooled, or None), ``has_noiseless``
        (every split holds the noiseless pixels, schema v2).  A truth entry holds
        ``injected``, ``labelled``, ``recall``, ``bins`` (per SNR bin), the recall
        above 5 sigma and the false labels per million (see the module's conventions).
        Ratios with a zero denominator are None.
    """
    p = check_file(path)
    block = check_block(block)
    with h5py.File(p, "r") as f:
        out = _root_summary(f, p)
        fields = read_fields(f)
        total_stamps = sum(f[s]["cr"].shape[0] for s in SPLITS if s in f and "cr" in f[s])
        splits: dict[str, Any] = {}
        counts = _Counts()
        with progress_bar(total_stamps, f"summarise {p.name}", progress) as bar:
            for split in SPLITS:
                splits[split], c = _summarise_split(f, split, fields, block, bar)
                counts.add(c)
        # schema v2: the inpaint networks' targets (noiseless sky + sources), simulated visits only
        out["has_noiseless"] = all("noiseless" in f[s] for s in SPLITS if s in f and "cr" in f[s])
    out["splits"] = splits
    out["has_truth"] = all(e["truth"] is not None for e in splits.values())
    out["total"] = _total(splits, counts, out["has_truth"])
    out["truth"] = out["total"]["truth"]
    logger.info("%s: %d stamps summarised", p, out["total"]["stamps"])
    return out


def _table(headers: list[str], rows: list[list[Any]], left: int = 1) -> list[str]:
    """Aligned columns: the first ``left`` columns left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths)))

    return [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]



def _pct(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"



def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"



def format_summary(summary: Mapping[str, Any]) -> str:
    """Render a :func:`summarise` result as a plain-text report.

    Parameters
    ----------
    summary : mapping
        The output of :func:`summarise` (or the same after a JSON round trip).

    Returns
    -------
    str
        The report: file attributes, a table of stamps, fields and pixel fractions per
        split, stamps and fields per (split, field type), label recall per truth SNR
        bin where truth exists, and the failed visits.  Ends with a newline.

    Raises
    ------
    TypeError
        If ``summary`` is not a mapping.
    ValueError
        If ``summary`` lacks the ``splits`` or ``total`` entries.
    """
    if not isinstance(summary, Mapping):
        raise TypeError(f"summary must be a mapping, got {type(summary).__name__}")
    for key in ("splits", "total"):
        if key not in summary:
            raise InputError(f"summary: missing key {key!r} (expected summarise() output)")
    rows = [*summary["splits"].items(), ("total", summary["total"])]
    lines = [f"crforge training set: {summary.get('file', '?')}"]
    for key in ("schema_version", "created_utc", "crforge_version", "manifest_name",
                "manifest_sha256", "stamp_size"):
        if key in summary:
            lines.append(f"  {key + ':':17s} {summary[key]}")
    if "has_noiseless" in summary:
        lines.append(f"  {'noiseless:':17s} " + ("yes (sky + sources per stamp: the inpaint targets)"
                                                 if summary["has_noiseless"] else
                                                 "no (inpaint is scored against the observed pixels)"))
    lines += _split_table(rows) + _field_type_table(rows)
    if summary.get("has_truth"):
        lines += _truth_table(rows)
    else:
        lines += ["", "No truth (not every visit is simulated): recall not computed"]
    failed = summary.get("failed_visits") or []
    lines += ["", f"Failed visits: {len(failed)}"]
    if failed:
        lines += _table(["visit", "reason"],
                        [[str(x.get("visit", "?")) if isinstance(x, Mapping) else str(x),
                          str(x.get("reason", "")) if isinstance(x, Mapping) else ""]
                         for x in failed], left=2)
    return "\n".join(lines) + "\n"


def _split_table(entries: list[tuple[str, Mapping]]) -> list[str]:
    rows = [[name, e["stamps"], e["fields"], e["fields_with_stamps"], _pct(e["cr_fraction"]),
             _pct(e["cr_fraction_unignored"]), _pct(e["ignore_fraction"])] for name, e in entries]
    return ["", "Stamps and pixels per split"] + _table(
        ["split", "stamps", "fields", "fields w/ stamps", "CR frac", "CR frac (unignored)",
         "ignore frac"], rows)


def _field_type_table(entries: list[tuple[str, Mapping]]) -> list[str]:
    rows = []
    for name, e in entries:
        types = sorted(set(e["stamps_by_field_type"]) | set(e["fields_by_field_type"]))
        for ft in types:
            rows.append([name, ft or "(none)", e["fields_by_field_type"].get(ft, 0),
                         e["stamps_by_field_type"].get(ft, 0)])
        if not types:
            rows.append([name, "-", 0, 0])
    return ["", "Stamps and fields per field type"] + _table(["split", "field type", "fields", "stamps"],
                                                             rows, left=2)


def _truth_table(entries: list[tuple[str, Mapping]]) -> list[str]:
    rows = []
    for name, e in entries:
        t = e.get("truth")
        if t:
            rows.append([name, t["injected"], _num(t["recall"]), *[_num(b["recall"]) for b in t["bins"]],
                         _num(t["recall_above_5sigma"]), t["false_labels"],
                         _num(t["false_labels_per_million"], 1)])
    return ["", "Labels against injected truth (pixels with ignore == 0)"] + _table(
        ["split", "injected", "recall", *[f"{SNR_BINS[b]} sig" for b in SNR_BINS], ">5 sig", "false",
         "false/1e6"], rows)
