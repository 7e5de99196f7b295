"""Publish a trained and evaluated run into the model zoo (``crforge publish``).

``crforge publish runs/<run> --name NAME`` reads

    runs/<run>/mask/best.pt       the mask network (crforge checkpoint)
    runs/<run>/inpaint/best.pt    the inpaint network (optional)
    runs/<run>/evaluation.json    ``crforge evaluate``'s figures (required)

A ``best.pt`` may also be a zoo weights file: a published model given new figures (or
a new inference setting, such as the inpaint network's ``step_floor``) and published
again. Its record keeps the training provenance (run, epoch, step, init, versions) of
the zoo record whose weights are the same tensors, and names that file; without one it
has none.

and writes into a user zoo (``--zoo DIR``, else ``$CRFORGE_ZOO``, else the per-user
data directory; see :mod:`crforge.deepcr_models.registry`), never into the zoo shipped
inside the package

    <NAME>-mask-<sha12>.pt, <NAME>-inpaint-<sha12>.pt   weights (state dict, architecture, normalisation)
    <NAME>.md                                          the model card
    registry.json                                      one record per model (updated atomically)

A run without ``evaluation.json`` is refused: a model without figures cannot be
published. So is a checkpoint whose architecture differs from the one evaluated, a
name already in the zoo or shipped with crforge (unless ``--overwrite``: a model
published under a shipped name takes precedence over the shipped one wherever the
user zoo is searched) and a name that is not a safe file name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crforge import atomic
from crforge.deepcr_models import registry as reg
from crforge.errors import InputError
from crforge.lock import hold
from crforge.training import checkpoint
from crforge.training.config import check_views
from crforge.training.evaluate.document import read_evaluation

logger = logging.getLogger(__name__)

__all__ = ["publish", "model_card"]

FIELDS = ("all", "extragalactic", "globular_cluster", "resolved_galaxy")


def _figures(ev: dict, kind: str, path: Path) -> dict:
    figs = ev.get(kind, {}).get("crforge") if isinstance(ev.get(kind), dict) else None
    if not isinstance(figs, dict) or not figs:
        raise InputError(f"{path}: no {kind}.crforge figures: evaluate the {kind} model "
                         "(`crforge evaluate`) before publishing it")
    return figs


def _threshold(ev: dict, path: Path) -> tuple[float, float, str, int, dict]:
    th = ev.get("threshold")
    if not isinstance(th, dict) or "value" not in th:
        raise InputError(f"{path}: no threshold.value: the mask model's recommended threshold is "
                         "chosen by `crforge evaluate`")
    value = float(th["value"])
    if not 0 < value < 1:
        raise InputError(f"{path}: threshold.value={value!r}: expected a probability in (0, 1)")
    try:  # evaluations before symmetric views scored one view
        views = check_views(th.get("views", 1), name="threshold.views")
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    by_views = {str(k): float(v) for k, v in dict(th.get("by_views") or {}).items()}
    return value, float(th.get("fpr", float("nan"))), str(th.get("split", "val")), int(views), by_views


def _one_view(rec: reg.ModelRecord) -> str:
    """What the card says of the faster single view."""
    one = rec.threshold_for(1)
    if one is None:
        return "."
    return (f"; `views=1` (`crforge clean --views 1`) runs one pass instead of {rec.views}, with its own "
            f"threshold {one:.6g} chosen the same way.")


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _save_weights(ckpt: checkpoint.Checkpoint, name: str, zoo: Path) -> tuple[str, str]:
    """Write the weights file of ``ckpt`` into ``zoo``; its name and sha256."""
    blob = checkpoint.weights_bytes(ckpt)  # deterministic: republishing gives the same sha256
    digest = hashlib.sha256(blob).hexdigest()
    fname = reg.weights_file_name(name, ckpt.kind, digest)
    atomic.write_bytes(zoo / fname, blob)
    return fname, digest


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{100 * float(v):.1f}"


def _num(v: Any, fmt: str = "{:.4g}") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(float(v))


def _card_intro(name: str, records: list[reg.ModelRecord], data: dict, inst: str) -> list[str]:
    lines = [f"# {name}", ""]
    inits = {r.kind: r.source.get("init") for r in records if r.source.get("init")}
    if data.get("simulated", False):
        lines += [f"**Trained on simulated {inst} data**, not on real HST exposures: crforge's "
                  f"simulator (`crforge.pipeline.simulate`), data set manifest `{data.get('manifest_name', '?')}`"
                  + "".join(f"; the {kind} network started from `{src}`"
                            + (" (deepCR 0.3.1's published model, trained by Zhang & Bloom on real "
                               "ACS/WFC exposures)" if str(src).startswith("deepcr:") else "")
                            for kind, src in inits.items())
                  + ". The tables below are measured on simulated exposures, except the real-pixel "
                  "figures, which are measured on real HST frames none of the models was trained on. "
                  "Check it on your own data before relying on it.", ""]
    else:
        lines += [f"Trained on {inst} exposures of the data set `{data.get('manifest_name', '?')}` "
                  "(labels from AstroDrizzle).", ""]
    lines += ["| model | kind | architecture | weights | sha256 |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| `{r.name}` | {r.kind} | deepCR-{r.kind}-{r.depth}-{r.width}"
                     f"{' (batch norm)' if r.batch_norm else ''}"
                     f"{f', {r.stretch} input' if r.stretch != 'linear' else ''} | `{r.weights}` | `{r.sha256}` |")
    return lines


def _card_use(name: str, records: list[reg.ModelRecord], inst: str) -> list[str]:
    first = records[0]
    norm = first.normalisation
    inpaint = any(r.kind == "inpaint" for r in records)
    lines = ["", "## Use", "", "```python", "from crforge import deepcr_models",
             f"mask, cleaned = deepcr_models.clean(image_in_electrons, mask_model={name!r}"
             + (f", inpaint_model={name!r}" if inpaint else "") + ")",
             "```", "", "```", f"crforge clean FILE_flc.fits --model {name}"
             + (" --inpaint" if inpaint else ""), "```", "",
             f"- Instrument: {inst}; filters of the training data: {', '.join(first.filters)}.",
             f"- Input: `{norm.get('scheme', '(image - sky) / scale')}` with scale "
             f"{_num(norm.get('scale'))} {str(norm.get('bunit', 'ELECTRONS')).lower()}; the sky is "
             "estimated per chip (sigma-clipped median). Images in electrons/s are multiplied by "
             "EXPTIME first (`crforge clean` does it from BUNIT)."]
    mask_rec = next((r for r in records if r.kind == "mask"), None)
    if mask_rec is not None and mask_rec.stretch == "asinh":
        lines.append("- The mask network takes `asinh` of that input (linear up to the scale, "
                     "logarithmic above) before its first convolution; it is part of the network.")
    if mask_rec is not None:
        lines.append(f"- Recommended threshold: {mask_rec.threshold:.6g} (CR probability), chosen at a "
                     f"false-positive rate of {_num(mask_rec.threshold_fpr)} on the "
                     f"`{mask_rec.threshold_split}` split"
                     + (f", for the mean of {mask_rec.views} symmetric views of the image (the default of "
                        "`clean`, one pass of the network each)" + _one_view(mask_rec) if mask_rec.views > 1
                        else "."))
        if mask_rec.depth == 2 and mask_rec.stretch == "linear":  # deepCR's network has no stretch
            lines.append(f"- deepCR: `crforge export {name} --to deepcr --output {name}.pth` writes a file "
                         f"that `deepCR(mask='{name}.pth', hidden={mask_rec.width})` loads (see the README "
                         "for the sky caveat).")
    return lines


def _table_header() -> list[str]:
    return ["| method | " + " | ".join(FIELDS) + " | s per 100 stamps |", "|---" * (len(FIELDS) + 2) + "|"]


def _table_row(method: str, cells: list[str], figs: dict) -> str:
    label = f"**{method} (this model)**" if method == "crforge" else method
    return f"| {label} | " + " | ".join(cells) + f" | {_num(figs.get('seconds_per_100'), '{:.2f}')} |"


def _card_mask(ev: dict, roc: str | None) -> list[str]:
    data = ev["data"]
    lines = ["", f"## Mask: true-positive rate (%) at fixed false-positive rates ({data.get('split', 'test')} "
             f"split, {data.get('n_stamps', '?')} stamps)", "", "3x3-dilated figures in parentheses.", ""]
    for fpr in ev.get("fprs", []):
        key = str(fpr)
        lines += [f"FPR {100 * float(fpr):g}%:", "", *_table_header()]
        for method, figs in ev["mask"].items():
            if "tpr" not in figs:  # an operating point (the labels against the truth)
                continue
            cells = []
            for f in FIELDS:
                t = figs.get("tpr", {}).get(f, {}).get(key)
                d = figs.get("tpr_dilated", {}).get(f, {}).get(key)
                cells.append(_pct(t) + (f" ({_pct(d)})" if d is not None else ""))
            lines.append(_table_row(method, cells, figs))
        lines.append("")
    if roc:
        lines += [f"![ROC curves of the evaluation, one panel per field type]({roc})", ""]
    return lines


def _card_real(ev: dict, real_png: str | None) -> list[str]:
    from crforge.training.evaluate.realpixels import PEER_LABELS, STAR_SNR, markdown_table

    scored = {method for image in ev["real"].values() for method in image["methods"]}
    peers = [label for key, label in PEER_LABELS.items() if key in scored]
    # a run evaluated with --no-baselines has no peer rows: the card must not promise them
    listed = " and ".join(filter(None, [", ".join(peers[:-1]), peers[-1]])) if peers else ""
    peer_line = (f"{listed} on the same pixels, in the same run." if peers else
                 "No other method was scored in this run (`--no-baselines`).")
    lines = ["", "## Real pixels (real HST frames; none of them used in training)", "",
             "ACS/HRC j8bt06nyq (47 Tuc, F606W 60 s) against AstroDrizzle's CR flags (blobs of at most 30 "
             "pixels); STIS/CCD o4k19a010 (M33, a 2 x 150 s pair) against the pair difference; WFPC2 "
             f"u40x010hm PC1 (omega Cen), no CR reference. Stars: peaks > {STAR_SNR:g} sigma; 'star cores "
             f"touched': the mask at the recommended threshold covers a pixel of the 3x3 core. {peer_line}", ""]
    lines += markdown_table(ev["real"]) + [""]
    if real_png:
        lines += [f"![Real crops, each method's mask in red, reference CRs in cyan]({real_png})", ""]
    return lines


def _card_inpaint(ev: dict) -> list[str]:
    lines = [f"## Inpaint: mean squared error under the masks ({ev['data'].get('split', 'test')} split)", ""]
    if all("mse_truth" in figs for figs in ev["inpaint"].values()) and ev["inpaint"]:
        lines += ["Against the noiseless pixels (sky + source model of the simulation):", "", *_table_header()]
        lines += [_table_row(method, [_num(figs["mse_truth"].get(f)) for f in FIELDS], figs)
                  for method, figs in ev["inpaint"].items()]
        lines += ["", "Against the observed pixel values (no fill goes below the noise floor):", ""]
    lines += _table_header()
    for method, figs in ev["inpaint"].items():
        lines.append(_table_row(method, [_num(figs.get("mse", {}).get(f)) for f in FIELDS], figs))
    if "inpaint_noise_floor" in ev:
        floor = ev["inpaint_noise_floor"]
        lines.append("| noise floor | " + " | ".join(_num(floor.get(f)) for f in FIELDS) + " | |")
    units = ev.get("inpaint_units")
    lines += ["", (f"Units: {units} (normalised pixels squared)." if units else
                   "Units as in the run's `report.md` (`crforge evaluate`).")
              + " The run's `report.md` also holds the photometric fidelity of the fills.", ""]
    return lines


def _card_provenance(records: list[reg.ModelRecord], ev: dict, inst: str) -> list[str]:
    data, first = ev["data"], records[0]
    lines = ["## Data", "", f"- Manifest: `{data.get('manifest_name', '?')}` (sha256 "
             f"`{data.get('manifest_sha256', '?')}`)",
             f"- Data set: `{data.get('path', '?')}` (sha256 `{data.get('sha256', '?')}`)",
             f"- Simulated: {'yes' if data.get('simulated', False) else 'no'}", "",
             "## Provenance", ""]
    for r in records:
        src = r.source
        state = f"epoch {src.get('epoch')}, step {src.get('step')}"
        if src.get("republished_from"):
            state += f"; published again from `{src['republished_from']}`"
        lines.append(f"- {r.kind}: `{src.get('checkpoint')}` ({state})")
    sw = first.software
    lines += [f"- Evaluation: `{first.source.get('evaluation')}` ({ev.get('created_utc', '?')})",
              f"- Published {first.created_utc} with crforge {sw.get('crforge')}, torch {sw.get('torch')}, "
              f"numpy {sw.get('numpy')}, Python {sw.get('python')}", "",
              "## Limitations", "",
              f"- Trained for {inst} in {', '.join(first.filters)}; other imagers or filters need "
              "fine-tuning (`crforge train --init`).",
              _ignored_line(records), ""]
    return lines


def _ignored_line(records: list[reg.ModelRecord]) -> str:
    """How each network of the card is shown the pixels DQ flags (its record's ``fill_ignored``)."""
    seen = ", ".join(f"the {r.kind} network as "
                     + ("the sky" if r.normalisation.get("fill_ignored", True) else "they are") for r in records)
    return ("- Pixels flagged bad, saturated or without data in DQ are never masked; "
            f"they reach {seen}, as in training.")


def model_card(name: str, records: list[reg.ModelRecord], ev: dict, roc: str | None = None,
               real_png: str | None = None) -> str:
    """The Markdown model card of a published name (``roc``, ``real_png``: its pictures' file names)."""
    inst = ev["data"].get("instrument", records[0].instrument)
    lines = _card_intro(name, records, ev["data"], inst) + _card_use(name, records, inst)
    if "mask" in ev and any(r.kind == "mask" for r in records):
        lines += _card_mask(ev, roc)
        if ev.get("real"):
            lines += _card_real(ev, real_png)
    if "inpaint" in ev and any(r.kind == "inpaint" for r in records):
        lines += _card_inpaint(ev)
    return "\n".join(lines + _card_provenance(records, ev, inst))


# --------------------------------------------------------------------------- publish


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not reg.NAME_PATTERN.match(name):
        raise InputError(f"name={name!r}: expected letters, digits, '.', '_' or '-' (starting with a "
                         "letter or digit)")


def _check_taken(name: str, zdir: Path, existing: list[reg.ModelRecord], overwrite: bool) -> None:
    """Refuse a name in the target zoo or the shipped zoo, unless ``overwrite``."""
    if overwrite:
        return
    taken = [r for r in existing if r.name == name]
    if taken:
        raise InputError(f"{name!r} is already in the zoo {zdir} ({', '.join(r.key for r in taken)}); "
                         "pass --overwrite to replace it or choose another --name")
    shipped = [r for r in reg.read_registry(reg.shipped_zoo()) if r.name == name]
    if shipped:
        raise InputError(f"{name!r} is already in the zoo shipped with crforge "
                         f"({', '.join(r.key for r in shipped)}); pass --overwrite to publish yours "
                         f"under that name in {zdir}, where it takes precedence over the shipped one, "
                         "or choose another --name")


def _run_checkpoints(run_dir: Path) -> dict[str, Path]:
    ckpts = {kind: run_dir / kind / "best.pt" for kind in ("mask", "inpaint")}
    ckpts = {kind: path for kind, path in ckpts.items() if path.is_file()}
    if not ckpts:
        raise InputError(f"{run_dir}: no mask/best.pt or inpaint/best.pt (train the run first: crforge train)")
    return ckpts


@dataclass
class _Publication:
    """One :func:`publish` call: the run it reads and the zoo it writes."""

    run_dir: Path
    name: str
    ev: dict
    zdir: Path
    description: str | None
    created_utc: str = field(default_factory=_utc_now)
    written: list[Path] = field(default_factory=list)

    @property
    def ev_path(self) -> Path:
        return self.run_dir / "evaluation.json"


def _read_evaluated(pub: _Publication, kind: str, path: Path) -> checkpoint.Checkpoint:
    """The run's checkpoint of ``kind``, checked against the architecture evaluated."""
    ckpt = checkpoint.read(path, kind=kind)
    evm = pub.ev["models"].get(kind, {})
    for key in ("depth", "width"):
        if key in evm and int(evm[key]) != int(ckpt.model_config[key]):
            raise InputError(f"{pub.ev_path}: evaluated a {kind} model with {key} {evm[key]}, but "
                             f"{path} has {key} {ckpt.model_config[key]}: re-run crforge evaluate")
    _check_same_weights(pub, kind, path, ckpt)
    return ckpt


def _check_same_weights(pub: _Publication, kind: str, path: Path, ckpt: checkpoint.Checkpoint) -> None:
    """Refuse figures that ``evaluation.json`` holds of other weights than ``path``'s."""
    evm = pub.ev["models"].get(kind, {})
    redo = f"re-run `crforge evaluate --run {pub.run_dir}` before publishing"
    if evm.get("sha256") is not None:
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if evm["sha256"] != actual:
            raise InputError(f"{pub.ev_path} holds the figures of {evm.get('checkpoint')} (sha256 "
                             f"{evm['sha256'][:12]}..., epoch {evm.get('epoch')}), not of {path} (sha256 "
                             f"{actual[:12]}..., epoch {ckpt.epoch}): the {kind} weights changed since the "
                             f"evaluation; {redo}")
    elif evm.get("epoch") is not None:  # a document of an older crforge: epoch and step
        if (evm.get("epoch"), evm.get("step")) != (ckpt.epoch, ckpt.step):
            raise InputError(f"{pub.ev_path} holds the figures of the {kind} model at epoch "
                             f"{evm.get('epoch')} (step {evm.get('step')}), but {path} is epoch {ckpt.epoch} "
                             f"(step {ckpt.step}); {redo}")
    else:
        logger.warning("%s records neither the sha256 nor the epoch of the %s model it evaluated: cannot "
                       "check that its figures are of %s", pub.ev_path, kind, path)


def _software(ev: dict, ckpt: checkpoint.Checkpoint, earlier: reg.ModelRecord | None) -> dict:
    from crforge import __version__

    trained = dict(ckpt.training.versions) if ckpt.training else \
        dict(earlier.software.get("trained_with", {})) if earlier else {}
    return {"crforge": str(__version__), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "evaluated_with": ev.get("crforge_version"),
            "trained_with": trained}


def _earlier_record(kind: str, ckpt: checkpoint.Checkpoint, zoos: list[Path]) -> reg.ModelRecord | None:
    """For zoo weights: the record in ``zoos`` of a ``kind`` model with the same tensors."""
    if ckpt.training is not None:
        return None
    mine = ckpt.state_dict
    for zdir in zoos:
        for r in reg.read_registry(zdir):
            if r.kind != kind or not (zdir / r.weights).is_file():
                continue
            theirs = checkpoint.read(zdir / r.weights).state_dict
            if theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in mine):
                return r
    return None


def _source(pub: _Publication, path: Path, ckpt: checkpoint.Checkpoint,
            earlier: reg.ModelRecord | None) -> dict:
    """Where the record's model and figures come from (a republished model: its training's)."""
    kind = ckpt.kind
    if ckpt.training is not None:
        trained = {"run": str(pub.run_dir), "checkpoint": str(path), "epoch": ckpt.epoch, "step": ckpt.step,
                   "init": ckpt.training.config.get(f"init_{kind}") or None}
    elif earlier is not None:
        trained = {k: earlier.source.get(k) for k in ("run", "checkpoint", "epoch", "step", "init")}
        trained["republished_from"] = earlier.weights
    else:
        trained = {"run": str(pub.run_dir), "checkpoint": str(path), "epoch": None, "step": None,
                   "init": None}
    return {**trained, "evaluation": str(pub.ev_path), "evaluation_created_utc": pub.ev.get("created_utc")}


def _record(pub: _Publication, path: Path, ckpt: checkpoint.Checkpoint, evaluation: dict,
            threshold: tuple, weights: tuple[str, str]) -> reg.ModelRecord:
    """The registry record of one model (``weights``: its file name and sha256)."""
    kind, mc, data = ckpt.kind, ckpt.model_config, dict(pub.ev["data"])
    earlier = _earlier_record(kind, ckpt, [pub.zdir, reg.shipped_zoo()])
    sim = "simulated" if data.get("simulated") else "real"
    desc = pub.description or (f"deepCR-{kind} {mc['depth']}-{mc['width']} for {data['instrument']} "
                               f"({', '.join(data['filters'])}), trained on {sim} data "
                               f"({data.get('manifest_name', '?')})")
    return reg.ModelRecord(
        name=pub.name, kind=kind, instrument=str(data["instrument"]), filters=tuple(data["filters"]),
        depth=int(mc["depth"]), width=int(mc["width"]), batch_norm=bool(mc["batch_norm"]),
        normalisation=dict(ckpt.normalisation), threshold=threshold[0], threshold_fpr=threshold[1],
        threshold_split=threshold[2], data=data, evaluation=evaluation,
        software=_software(pub.ev, ckpt, earlier),
        created_utc=pub.created_utc, weights=weights[0], sha256=weights[1], card=f"{pub.name}.md",
        description=desc,
        source=_source(pub, path, ckpt, earlier), views=threshold[3], view_thresholds=threshold[4],
        stretch=checkpoint.mask_stretch(mc))


def _stage(pub: _Publication) -> list[reg.ModelRecord]:
    """Write the weights of the run's models into the zoo; their records."""
    ev, data, records = pub.ev, pub.ev["data"], []
    for kind, path in _run_checkpoints(pub.run_dir).items():
        evaluation = {"split": data.get("split"), "n_stamps": data.get("n_stamps"),
                      **({"fprs": list(ev.get("fprs", []))} if kind == "mask" else {}),
                      "crforge": _figures(ev, kind, pub.ev_path),
                      "baselines": {m: f for m, f in ev.get(kind, {}).items() if m != "crforge"},
                      **({"real": ev["real"]} if kind == "mask" and ev.get("real") else {}),
                      **({"noise_floor": ev["inpaint_noise_floor"]}
                         if kind == "inpaint" and "inpaint_noise_floor" in ev else {})}
        ckpt = _read_evaluated(pub, kind, path)
        threshold = _threshold(ev, pub.ev_path) if kind == "mask" else (None, None, None, 1, {})
        fname, digest = _save_weights(ckpt, pub.name, pub.zdir)
        pub.written.append(pub.zdir / fname)
        records.append(_record(pub, path, ckpt, evaluation, threshold, (fname, digest)))
    return records


def _write_card(pub: _Publication, records: list[reg.ModelRecord]) -> None:
    pictures = {}
    for picture in ("roc", "real"):
        if (pub.run_dir / f"{picture}.png").is_file() and any(r.kind == "mask" for r in records):
            pictures[picture] = f"{pub.name}-{picture}.png"
            atomic.write_bytes(pub.zdir / pictures[picture], (pub.run_dir / f"{picture}.png").read_bytes())
    atomic.write_text(pub.zdir / f"{pub.name}.md",
                      model_card(pub.name, records, pub.ev, pictures.get("roc"), pictures.get("real")))


def publish(run_dir: str | os.PathLike, name: str, *, zoo: str | os.PathLike | None = None,
            overwrite: bool = False, description: str | None = None, ship: bool = False,
            wait: bool = False) -> list[reg.ModelRecord]:
    """Publish a run's models with their evaluation into a (user) zoo directory.

    Parameters
    ----------
    run_dir : path-like
        ``runs/<run>``: ``mask/best.pt`` and/or ``inpaint/best.pt`` and ``evaluation.json``.
    name : str
        Published name (letters, digits, ``.``, ``_``, ``-``).
    zoo : path-like, optional
        Zoo directory (default: the user zoo, :func:`~crforge.deepcr_models.registry.default_zoo`);
        never the zoo shipped inside the package.
    overwrite : bool
        Replace models already published under ``name``, or publish under a shipped name.
    description : str, optional
        One line for the records (default: made from the kind, architecture and data).
    ship : bool
        Publish into the zoo shipped with the package: a maintainer's release step,
        allowed only in a source checkout (:func:`~crforge.deepcr_models.registry.writable_zoo`).
    wait : bool
        Wait for another publication into the zoo instead of refusing; the call holds
        the zoo's lock (:mod:`crforge.lock`) while it reads and writes the registry.

    Returns
    -------
    list of ModelRecord
        The new records.

    Raises
    ------
    FileNotFoundError
        No run directory.
    InputError
        No evaluation (the message says to run ``crforge evaluate``), an evaluation
        of other weights (sha256) or another architecture than the checkpoints', no
        checkpoint, a bad or taken name, or the shipped zoo as ``zoo``.
    crforge.lock.LockedError
        Another process is publishing into the zoo (and not ``wait``).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(2, "No such file or directory", str(run_dir))
    _check_name(name)
    pub = _Publication(run_dir, name, read_evaluation(run_dir), reg.writable_zoo(zoo, ship=ship), description)
    with hold(pub.zdir, what="crforge publish", wait=wait):
        records = _publish_locked(pub, overwrite=overwrite, ship=ship)
    for r in records:
        logger.info("published %s -> %s (sha256 %s)", r.key, pub.zdir / r.weights, r.sha256)
    return records


def _publish_locked(pub: _Publication, *, overwrite: bool, ship: bool) -> list[reg.ModelRecord]:
    """:func:`publish` once the zoo is locked: weights, card, registry; the new records."""
    name = pub.name
    existing = reg.read_registry(pub.zdir)
    _check_taken(name, pub.zdir, existing, overwrite)
    kept = {pub.zdir / r.weights for r in existing}
    try:
        records = _stage(pub)
        _write_card(pub, records)
        reg.write_registry([r for r in existing if r.name != name] + records, None if ship else pub.zdir,
                           ship=ship)
    except BaseException:
        for path in pub.written:  # leave no orphan weights behind a failed publication
            if path not in kept:
                path.unlink(missing_ok=True)
        raise
    # the replaced models' weights, unless the new records use the same file
    for path in kept - set(pub.written):
        if any(r.name == name and pub.zdir / r.weights == path for r in existing):
            path.unlink(missing_ok=True)
    return records
