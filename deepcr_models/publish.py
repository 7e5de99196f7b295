"""Publish a trained and evaluated run into the model zoo (``crforge publish``).

``crforge publish runs/<run> --name NAME`` reads

    runs/<run>/mask/best.pt       the mask network (crforge checkpoint)
    runs/<run>/inpaint/best.pt    the inpaint network (optional)
    runs/<run>/evaluation.json    ``crforge evaluate``'s figures (required)

and writes into the zoo directory (the package's ``deepcr_models/`` by default,
``--zoo DIR`` elsewhere)

    <NAME>-mask-<sha12>.pt, <NAME>-inpaint-<sha12>.pt   weights (state dict, architecture, normalisation)
    <NAME>.md                                          the model card
    registry.json                                      one record per model (updated atomically)

A run without ``evaluation.json`` is refused: a model without figures cannot be
published. So is a checkpoint whose architecture differs from the one evaluated, a
name already in the zoo (unless ``--overwrite``) and a name that is not a safe file
name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crforge.deepcr_models import registry as reg
from crforge.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["publish", "read_evaluation", "model_card", "EVALUATION_FORMAT",]

EVALUATION_FORMAT = "crforge-evaluation/1"
FIELDS = ("all", "extragalactic", "globular_cluster", "resolved_galaxy")


def read_evaluation(run_dir: str | os.PathLike) -> dict:
    """Read and check ``<run>/evaluation.json``.

    Raises
    ------
    ValueError
        No file (the message says to run ``crforge evaluate``), not JSON, another
        format, or missing the ``crforge`` figures / threshold.
    """
    run_dir = Path(run_dir)
    path = run_dir / "evaluation.json"
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


def _figures(ev: dict, kind: str, path: Path) -> dict:
    figs = ev.get(kind, {}).get("crforge") if isinstance(ev.get(kind), dict) else None
    if not isinstance(figs, dict) or not figs:
        raise InputError(f"{path}: no {kind}.crforge figures: evaluate the {kind} model "
                         "(`crforge evaluate`) before publishing it")
    return figs


def _threshold(ev: dict, path: Path) -> tuple[float, float, str]:
    th = ev.get("threshold")
    if not isinstance(th, dict) or "value" not in th:
        raise InputError(f"{path}: no threshold.value: the mask model's recommended threshold is "
                         "chosen by `crforge evaluate`")
    value = float(th["value"])
    if not 0 < value < 1:
        raise InputError(f"{path}: threshold.value={value!r}: expected a probability in (0, 1)")
    return value, float(th.get("fpr", float("nan"))), str(th.get("split", "val"))


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _save_weights(ckpt: dict, name: str, kind: str, zoo: Path) -> tuple[str, str]:
    state = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt["model"].items()}
    obj = {"format": reg.WEIGHTS_FORMAT, "kind": kind, "model_config": dict(ckpt["model_config"]),
           "normalisation": dict(ckpt["normalisation"]), "state_dict": state}
    # saved through a buffer: torch.save names the archive's root after the file it
    # writes, so a temporary file name would make the bytes (and the sha256) differ
    # from one publication of the same weights to the next
    buf = io.BytesIO()
    torch.save(obj, buf)
    blob = buf.getvalue()
    digest = hashlib.sha256(blob).hexdigest()
    tmp = zoo / f".{name}-{kind}.{os.getpid()}.tmp"
    tmp.write_bytes(blob)
    fname = reg.weights_file_name(name, kind, digest)
    os.replace(tmp, zoo / fname)
    return fname, digest


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{100 * float(v):.1f}"


def _num(v: Any, fmt: str = "{:.4g}") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(float(v))


def model_card(name: str, records: list[reg.ModelRecord], ev: dict, roc: str | None = None) -> str:
    """The Markdown model card of a published name (``roc``: the ROC plot's file name)."""
    first = records[0]
    data = ev["data"]
    simulated = bool(data.get("simulated", False))
    inst = data.get("instrument", first.instrument)
    filters = ", ".join(first.filters)
    lines = [f"# {name}", ""]
    if simulated:
        lines += [f"**Trained on simulated {inst} data**, not on real HST exposures: crforge's "
                  f"simulator (`pipeline/simulate.py`), data set manifest `{data.get('manifest_name', '?')}`. "
                  "Every figure below is measured on simulated exposures too. Check it on your own "
                  "data before relying on it.", ""]
    else:
        lines += [f"Trained on {inst} exposures of the data set `{data.get('manifest_name', '?')}` "
                  "(labels from AstroDrizzle).", ""]
    lines += ["| model | kind | architecture | weights | sha256 |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| `{r.name}` | {r.kind} | deepCR-{r.kind}-{r.depth}-{r.width}"
                     f"{' (batch norm)' if r.batch_norm else ''} | `{r.weights}` | `{r.sha256}` |")
    norm = first.normalisation
    lines += ["", "## Use", "", "```python", "from crforge import deepcr_models",
              f"mask, cleaned = deepcr_models.clean(image_in_electrons, mask_model={name!r}"
              + (f", inpaint_model={name!r}" if any(r.kind == "inpaint" for r in records) else "") + ")",
              "```", "", "```", f"crforge clean FILE_flc.fits --model {name}"
              + (" --inpaint" if any(r.kind == "inpaint" for r in records) else ""), "```", "",
              f"- Instrument: {inst}; filters of the training data: {filters}.",
              f"- Input: `{norm.get('scheme', '(image - sky) / scale')}` with scale "
              f"{_num(norm.get('scale'))} {str(norm.get('bunit', 'ELECTRONS')).lower()}; the sky is "
              "estimated per chip (sigma-clipped median). Images in electrons/s are multiplied by "
              "EXPTIME first (`crforge clean` does it from BUNIT)."]
    mask_rec = next((r for r in records if r.kind == "mask"), None)
    if mask_rec is not None:
        lines.append(f"- Recommended threshold: {mask_rec.threshold:.6g} (CR probability), chosen at a "
                     f"false-positive rate of {_num(mask_rec.threshold_fpr)} on the "
                     f"`{mask_rec.threshold_split}` split.")
        if mask_rec.depth == 2:
            lines.append(f"- deepCR: `crforge export {name} --to deepcr --output {name}.pth` writes a file "
                         f"that `deepCR(mask='{name}.pth', hidden={mask_rec.width})` loads (see the README "
                         "for the sky caveat).")
    split, n = data.get("split", "test"), data.get("n_stamps", "?")
    if "mask" in ev and mask_rec is not None:
        lines += ["", f"## Mask: true-positive rate (%) at fixed false-positive rates ({split} split, "
                  f"{n} stamps)", "", "3x3-dilated figures in parentheses.", ""]
        for fpr in ev.get("fprs", []):
            key = str(fpr)
            lines += [f"FPR {100 * float(fpr):g}%:", "", "| method | " + " | ".join(FIELDS) + " | s per 100 stamps |",
                      "|---" * (len(FIELDS) + 2) + "|"]
            for method, figs in ev["mask"].items():
                if "tpr" not in figs:  # an operating point (the labels against the truth)
                    continue
                cells = []
                for f in FIELDS:
                    t = figs.get("tpr", {}).get(f, {}).get(key)
                    d = figs.get("tpr_dilated", {}).get(f, {}).get(key)
                    cells.append(_pct(t) + (f" ({_pct(d)})" if d is not None else ""))
                label = f"**{method} (this model)**" if method == "crforge" else method
                lines.append(f"| {label} | " + " | ".join(cells) + f" | {_num(figs.get('seconds_per_100'), '{:.2f}')} |")
            lines.append("")
    if roc and "mask" in ev and mask_rec is not None:
        lines += [f"![ROC curves of the evaluation, one panel per field type]({roc})", ""]
    if "inpaint" in ev and any(r.kind == "inpaint" for r in records):
        lines += [f"## Inpaint: mean squared error under the masks ({split} split)", "",
                  "| method | " + " | ".join(FIELDS) + " | s per 100 stamps |", "|---" * (len(FIELDS) + 2) + "|"]
        for method, figs in ev["inpaint"].items():
            cells = [_num(figs.get("mse", {}).get(f)) for f in FIELDS]
            label = f"**{method} (this model)**" if method == "crforge" else method
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {_num(figs.get('seconds_per_100'), '{:.2f}')} |")
        units = ev.get("inpaint_units")
        lines += ["", (f"Units: {units} (normalised pixels squared)." if units else
                       "Units as in the run's `report.md` (`crforge evaluate`).")
                  + " The run's `report.md` also holds the photometric fidelity of the fills.", ""]
    lines += ["## Data", "", f"- Manifest: `{data.get('manifest_name', '?')}` (sha256 `{data.get('manifest_sha256', '?')}`)",
              f"- Data set: `{data.get('path', '?')}` (sha256 `{data.get('sha256', '?')}`)",
              f"- Simulated: {'yes' if simulated else 'no'}", "",
              "## Provenance", ""]
    for r in records:
        src = r.source
        lines.append(f"- {r.kind}: `{src.get('checkpoint')}` (epoch {src.get('epoch')}, step {src.get('step')})")
    sw = first.software
    lines += [f"- Evaluation: `{first.source.get('evaluation')}` ({ev.get('created_utc', '?')})",
              f"- Published {first.created_utc} with crforge {sw.get('crforge')}, torch {sw.get('torch')}, "
              f"numpy {sw.get('numpy')}, Python {sw.get('python')}", "",
              "## Limitations", "",
              f"- Trained for {inst} in {filters}; other imagers or filters need fine-tuning "
              "(`crforge train --init`).",
              "- Pixels flagged bad, saturated or without data in DQ are shown to the network as sky "
              "and never masked.", ""]
    return "\n".join(lines)


def publish(run_dir: str | os.PathLike, name: str, *, zoo: str | os.PathLike | None = None,
            overwrite: bool = False, description: str | None = None) -> list[reg.ModelRecord]:
    """Publish a run's models with their evaluation into a zoo directory.

    Parameters
    ----------
    run_dir : path-like
        ``runs/<run>``: ``mask/best.pt`` and/or ``inpaint/best.pt`` and ``evaluation.json``.
    name : str
        Published name (letters, digits, ``.``, ``_``, ``-``).
    zoo : path-like, optional
        Zoo directory (default: ``$CRFORGE_ZOO`` or the package's ``deepcr_models/``).
    overwrite : bool
        Replace models already published under ``name``.
    description : str, optional
        One line for the records (default: made from the kind, architecture and data).

    Returns
    -------
    list of ModelRecord
        The new records.

    Raises
    ------
    FileNotFoundError
        No run directory.
    ValueError
        No evaluation (the message says to run ``crforge evaluate``), no checkpoint,
        a checkpoint that is not the evaluated architecture, a bad or taken name.
    """
    from crforge import __version__
    from crforge.training.train import _read_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(2, "No such file or directory", str(run_dir))
    if not isinstance(name, str) or not reg.NAME_PATTERN.match(name):
        raise InputError(f"name={name!r}: expected letters, digits, '.', '_' or '-' (starting with a "
                         "letter or digit)")
    ev_path = run_dir / "evaluation.json"
    ev = read_evaluation(run_dir)
    zdir = reg.default_zoo() if zoo is None else Path(zoo)
    existing = reg.read_registry(zdir)
    taken = [r for r in existing if r.name == name]
    if taken and not overwrite:
        raise InputError(f"{name!r} is already in the zoo {zdir} ({', '.join(r.key for r in taken)}); "
                         "pass --overwrite to replace it or choose another --name")
    ckpts = {}
    for kind in ("mask", "inpaint"):
        path = run_dir / kind / "best.pt"
        if path.is_file():
            ckpts[kind] = path
    if not ckpts:
        raise InputError(f"{run_dir}: no mask/best.pt or inpaint/best.pt (train the run first: crforge train)")
    data = dict(ev["data"])
    now = _utc_now()
    software = {"crforge": str(__version__), "torch": torch.__version__, "numpy": np.__version__,
                "python": platform.python_version(), "evaluated_with": ev.get("crforge_version")}
    zdir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[reg.ModelRecord, str]] = []
    try:
        for kind, path in ckpts.items():
            figs = _figures(ev, kind, ev_path)
            ckpt = _read_checkpoint(path)
            if ckpt["kind"] != kind:
                raise InputError(f"{path}: holds a {ckpt['kind']} model, expected {kind}")
            mc = ckpt["model_config"]
            evm = ev["models"].get(kind, {})
            for key in ("depth", "width"):
                if key in evm and int(evm[key]) != int(mc[key]):
                    raise InputError(f"{ev_path}: evaluated a {kind} model with {key} {evm[key]}, but "
                                     f"{path} has {key} {mc[key]}: re-run crforge evaluate")
            if path.stat().st_mtime > ev_path.stat().st_mtime + 1:
                logger.warning("%s is newer than %s: the figures may be of an earlier model", path, ev_path)
            threshold = fpr = split = None
            if kind == "mask":
                threshold, fpr, split = _threshold(ev, ev_path)
            baselines = {m: f for m, f in ev.get(kind, {}).items() if m != "crforge"}
            evaluation = {"split": data.get("split"), "n_stamps": data.get("n_stamps"),
                          **({"fprs": list(ev.get("fprs", []))} if kind == "mask" else {}),
                          "crforge": figs, "baselines": baselines}
            fname, digest = _save_weights(ckpt, name, kind, zdir)
            sim = "simulated" if data.get("simulated") else "real"
            desc = description or (f"deepCR-{kind} {mc['depth']}-{mc['width']} for {data['instrument']} "
                                   f"({', '.join(data['filters'])}), trained on {sim} data "
                                   f"({data.get('manifest_name', '?')})")
            rec = reg.ModelRecord(
                name=name, kind=kind, instrument=str(data["instrument"]), filters=tuple(data["filters"]),
                depth=int(mc["depth"]), width=int(mc["width"]), batch_norm=bool(mc["batch_norm"]),
                normalisation=dict(ckpt["normalisation"]), threshold=threshold, threshold_fpr=fpr,
                threshold_split=split, data=data, evaluation=evaluation,
                software={**software, "trained_with": dict(ckpt.get("versions", {}))},
                created_utc=now, weights=fname, sha256=digest, card=f"{name}.md", description=desc,
                source={"run": str(run_dir), "checkpoint": str(path), "epoch": int(ckpt.get("epoch", 0)),
                        "step": int(ckpt.get("step", 0)), "evaluation": str(ev_path),
                        "evaluation_created_utc": ev.get("created_utc")})
            staged.append((rec, fname))
        records = [r for r, _ in staged]
        roc = None
        if (run_dir / "roc.png").is_file() and any(r.kind == "mask" for r in records):
            roc = f"{name}-roc.png"
            shutil.copyfile(run_dir / "roc.png", zdir / roc)
        card = zdir / f"{name}.md"
        tmp = card.with_name(f".{card.name}.{os.getpid()}.tmp")
        tmp.write_text(model_card(name, records, ev, roc), encoding="utf-8")
        os.replace(tmp, card)
        keep = [r for r in existing if r.name != name]
        reg.write_registry(keep + records, zdir)
    except BaseException:
        for _, fname in staged:  # leave no orphan weights behind a failed publication
            if not any(r.weights == fname for r in existing):
                (zdir / fname).unlink(missing_ok=True)
        raise
    # the replaced models' weights, unless the new records use the same file
    new_files = {r.weights for r in records}
    for r in taken:
        if r.weights not in new_files:
            (zdir / r.weights).unlink(missing_ok=True)
    for r in records:
        logger.info("published %s -> %s (sha256 %s)", r.key, zdir / r.weights, r.sha256)
    return records


# --------------------------------------------------------------------------- CLI




