"""The readable outputs of an evaluation: the Markdown report, the ROC plot, the summary.

All three read the evaluation document (what ``evaluation.json`` holds); the report is
laid out like the deepCR paper's Tables 1 and 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from crforge.atomic import atomic_path, write_text
from crforge.pipeline.names import FIELD_TYPES
from crforge.training.evaluate.names import (
    INPAINT_METHODS,
    MASK_METHODS,
    METHOD_LABELS,
    TRUTH_BIN_NAMES,
    fpr_key,
)

__all__ = ["write_report", "report_text", "plot_roc", "summary_text"]


def _pct(v) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _fields(doc: dict) -> list[str]:
    """The field types of the evaluated stamps in the usual order, then ``all``."""
    ft = list(doc["data"]["stamps_by_field_type"])
    return [f for f in FIELD_TYPES if f in ft] + [f for f in ft if f not in FIELD_TYPES] + ["all"]


def _nice(field: str) -> str:
    return field.replace("_", " ")


def _table_head(head: list[str]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


# --------------------------------------------------------------------------- report


def write_report(doc: dict, path: str | os.PathLike) -> Path:
    """Write the Markdown report of an evaluation (:func:`report_text`); return the path."""
    return write_text(path, report_text(doc))


def report_text(doc: dict) -> str:
    """The Markdown report of an evaluation (the paper's Tables 1 and 2)."""
    fields = _fields(doc)
    lines = _header(doc)
    if doc["mask"]:
        lines += _detection_section(doc, fields)
        if "vs_truth" in doc:
            lines += _label_quality_section(doc, fields)
    if doc["inpaint"]:
        lines += _inpaint_section(doc, fields)
    ph = doc.get("photometry")
    if ph and ph.get("methods"):
        lines += _photometry_section(ph, fields)
    if doc.get("real"):
        lines += _real_section(doc["real"])
    lines.append("")
    return "\n".join(lines)


def _real_section(real: dict) -> list[str]:
    from crforge.training.evaluate.realpixels import STAR_SNR, markdown_table

    return ["", "## Real pixels: real HST frames, every method on the same pixels", "",
            "ACS/HRC j8bt06nyq (47 Tuc, F606W 60 s) against AstroDrizzle's CR flags (blobs of at most "
            "30 pixels); STIS/CCD o4k19a010 (M33, a 2 x 150 s pair) against the pair difference; WFPC2 "
            f"u40x010hm PC1 (omega Cen) without a CR reference. Stars: peaks > {STAR_SNR:g} sigma; "
            "'star cores touched': the mask at the method's recommended threshold covers a pixel of the "
            "3x3 core. None of these frames was used in training. Crops: real.png.", ""] + markdown_table(real)


def _header(doc: dict) -> list[str]:
    """Title and the list of what was evaluated, with what, where."""
    d = doc["data"]
    by_type = ", ".join(f"{_nice(k)} {v}" for k, v in d["stamps_by_field_type"].items())
    origin = "simulated (truth available)" if d["simulated"] else "real data (AstroDrizzle labels only)"
    lines = [f"# Evaluation: {d['manifest_name']} ({d['split']} split)", "",
             f"- Data: `{d['path']}` (sha256 `{d['sha256'][:16]}…`), {d['instrument']}, "
             f"{', '.join(d['filters'])} ({', '.join(d['split_filters'])} in this split); {d['n_stamps']} "
             f"of the split's {d['split_stamps']} stamps ({by_type}); {origin}."]
    for kind, m in doc["models"].items():
        lines.append(f"- {kind} model: `{m['checkpoint']}` (deepCR-{kind}-{m['depth']}-{m['width']}, "
                     f"epoch {m['epoch']})")
    if "threshold" in doc:
        t = doc["threshold"]
        views = t.get("views", 1)
        lines.append(f"- Recommended mask threshold: {t['value']:.4g} (FPR {t['fpr']} on the "
                     f"{t['split']} split"
                     + (f"; the network's probability is the mean of {views} symmetric views of each image, "
                        "deepCR's of one)." if views > 1 else ")."))
    lines.append(f"- Machine: {doc['machine']['cpu_count']} CPUs, {doc['machine']['threads']} threads; "
                 f"evaluation took {doc.get('seconds', 0):.0f} s.")
    return lines


def _tpr_table(results: dict, doc: dict, fields: list[str], timing: bool) -> list[str]:
    """TPR at the document's FPRs, plain and dilated rows, per detector and field."""
    lines = _table_head(["method"] + [_nice(f) for f in fields] + (["s / 100 stamps"] if timing else []))
    for m in MASK_METHODS:
        if m not in results:
            continue
        r = results[m]
        label = METHOD_LABELS[m] + (f" `{doc['mask_peer']['model']}`" if m == "deepcr" and "mask_peer" in doc
                                    else "")
        for variant, suffix in (("tpr", ""), ("tpr_dilated", ", dilated")):
            if variant not in r:
                continue
            cells = [" / ".join(_pct(r[variant].get(f, {}).get(fpr_key(fpr))) for fpr in doc["fprs"])
                     for f in fields]
            t = [f"{r['seconds_per_100']:.2f}" if not suffix else ""] if timing else []
            lines.append(f"| {label}{suffix} | " + " | ".join(cells + t) + " |")
    return lines


def _detection_section(doc: dict, fields: list[str]) -> list[str]:
    """Table 1 against the labels, and LACosmic's default operating point."""
    fp = " / ".join(f"{100 * f:g}%" for f in doc["fprs"])
    lines = ["", f"## Table 1: CR detection, TPR (%) at {fp} FPR against the data set's labels", "",
             "FPR is always that of the undilated mask; the dilated rows count a CR pixel as found "
             "when the 3x3-dilated mask covers it. Ignored pixels are excluded. LACosmic is "
             "interpolated between its swept operating points.", ""]
    lines += _tpr_table(doc["mask"], doc, fields, timing=True)
    if "astroscrappy" in doc["mask"]:
        a = doc["mask"]["astroscrappy"]
        i = next(j for j, p in enumerate(a["params"]) if p["default"])
        pts = ", ".join(f"{_nice(f)} TPR {_pct(a['points'][f][i]['tpr'])}% at FPR "
                        f"{100 * a['points'][f][i]['fpr']:.3f}%" for f in fields)
        p = a["params"][i]
        lines += ["", f"LACosmic's default point (sigclip {p['sigclip']}, sigfrac {p['sigfrac']}, "
                      f"objlim {p['objlim']}): {pts}."]
    return lines


def _label_quality_section(doc: dict, fields: list[str]) -> list[str]:
    """Table 1 again against the injected truth, and the labels scored against it."""
    vt = doc["vs_truth"]
    snr = TRUTH_BIN_NAMES[1:]
    lines = ["", f"## Label quality: against the injected truth (CR pixels > {vt['min_snr']} sigma)", "",
             f"The same figures with the simulated truth as the target (CR pixels above "
             f"{vt['min_snr']} sigma; fainter CR pixels left out): the gap between a "
             "method's rows here and in Table 1 is label noise.", ""]
    lines += _tpr_table(vt, doc, fields, timing=False)
    lines += ["", "The AstroDrizzle labels scored as a detector against the truth, and their "
                  "recall by the SNR of the CR pixel:", "",
              "| field | TPR (%) | TPR dilated (%) | FPR (%) | " + " | ".join(
                  f"recall {k} sigma (%)" for k in snr) + " |", "|---|---|---|---|" + "---|" * len(snr)]
    for f in fields:
        r = vt["labels"].get(f)
        if r:
            lines.append(f"| {_nice(f)} | {_pct(r['tpr'])} | {_pct(r.get('tpr_dilated'))} | "
                         f"{100 * r['fpr']:.4f} | " + " | ".join(
                             _pct(r["recall_by_snr"].get(k)) for k in snr) + " |")
    return lines


def _mse_cells(per: dict, fields: list[str]) -> str:
    return " | ".join("–" if per.get(f) is None or not np.isfinite(per[f]) else f"{per[f]:.4g}"
                      for f in fields)


def _inpaint_section(doc: dict, fields: list[str]) -> list[str]:
    """Table 2: MSE of each fill per field (against the noiseless and the observed pixels), runtime."""
    units = doc.get("inpaint_units", "")
    lines = ["", f"## Table 2: inpainting MSE, units {units}", "",
             "Under evaluation masks of 1-9 borrowed CR masks, where the observed pixel is known "
             "(not a CR of the stamp, not ignored)."]
    methods = [m for m in INPAINT_METHODS if m in doc["inpaint"]]
    if all("mse_truth" in doc["inpaint"][m] for m in methods) and methods:
        lines += ["", "Against the noiseless pixels (sky + source model of the simulation):", ""]
        lines += _table_head(["method"] + [_nice(f) for f in fields])
        lines += [f"| {METHOD_LABELS[m]} | {_mse_cells(doc['inpaint'][m]['mse_truth'], fields)} |"
                  for m in methods]
        lines += ["", "Against the observed pixel values; no fill can go below the noise floor (the "
                  "noiseless pixels' own MSE against them):", ""]
    else:
        lines += [""]
    lines += _table_head(["method"] + [_nice(f) for f in fields] + ["s / 100 stamps"])
    for m in methods:
        r = doc["inpaint"][m]
        lines.append(f"| {METHOD_LABELS[m]} | {_mse_cells(r['mse'], fields)} | {r['seconds_per_100']:.2f} |")
    if "inpaint_noise_floor" in doc:
        lines.append(f"| noise floor | {_mse_cells(doc['inpaint_noise_floor'], fields)} | |")
    return lines


def _photometry_section(ph: dict, fields: list[str]) -> list[str]:
    """Aperture-flux errors of each fill per field."""
    lines = ["", "## Photometric fidelity of the fills", "",
             f"{ph['hit_stars']} stars (peak > {ph['min_snr']:g} sigma, clean aperture of radius "
             f"{ph['aperture_radius']:g} px) hit by real CR shapes; absolute fractional error of the "
             "aperture flux after filling, median / 90th percentile (%), and the median signed error.", ""]
    lines += _table_head(["method"] + [_nice(f) for f in fields])
    for m, per in ph["methods"].items():
        cells = ["–" if per.get(f) is None else
                 f"{100 * per[f]['median_abs']:.2f} / {100 * per[f]['p90_abs']:.2f} "
                 f"({100 * per[f]['median']:+.2f}; n={per[f]['n']})" for f in fields]
        lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    return lines


# --------------------------------------------------------------------------- summary


def summary_text(doc: dict) -> str:
    """The headline figures in a few lines: TPR at the largest FPR and MSE, per method."""
    lines = []
    fpr = fpr_key(doc["fprs"][-1])
    for m, r in doc["mask"].items():
        if "tpr" in r:
            per = ", ".join(f"{f} {_pct(v.get(fpr))}%" for f, v in r["tpr"].items())
            lines.append(f"{METHOD_LABELS[m]}: TPR at {100 * float(fpr):g}% FPR: {per}; "
                         f"{r.get('seconds_per_100', 0):.2f} s/100 stamps")
    for m, r in doc["inpaint"].items():
        for key, what in (("mse_truth", "vs noiseless"), ("mse", "vs observed")):
            if key in r:
                per = ", ".join(f"{f} {v:.4g}" for f, v in r[key].items() if v is not None)
                lines.append(f"{METHOD_LABELS[m]} inpaint MSE {what}: {per}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plot

#: Colour of each detector in the ROC plot.
_COLOURS = {"crforge": "C0", "deepcr": "C1", "astroscrappy": "C2", "labels": "k"}


def _roc_panel(ax, doc: dict, field: str) -> None:
    """One field's ROC curves: the networks, LACosmic's points, the labels' point."""
    for m in ("crforge", "deepcr"):
        r = doc["mask"].get(m)
        if r and field in r["roc"]:
            roc = r["roc"][field]
            ax.plot(roc["fpr"], roc["tpr"], color=_COLOURS[m], label=METHOD_LABELS[m])
            if "tpr_dilated" in roc:
                ax.plot(roc["fpr"], roc["tpr_dilated"], color=_COLOURS[m], ls="--", lw=1,
                        label=f"{METHOD_LABELS[m]}, 3x3 dilated")
    a = doc["mask"].get("astroscrappy")
    if a and field in a["points"]:
        pts = sorted(a["points"][field], key=lambda p: p["fpr"])
        ax.plot([p["fpr"] for p in pts], [p["tpr"] for p in pts], "o-", color=_COLOURS["astroscrappy"],
                ms=4, label=METHOD_LABELS["astroscrappy"])
    lab = doc["mask"].get("labels")
    if lab and field in lab["points"]:
        p = lab["points"][field][0]
        # a label set with no false label sits on the left edge of the log axis
        ax.plot([max(p["fpr"], 1.2e-5)], [p["tpr"]], "k*", ms=9, clip_on=False,
                label="AstroDrizzle labels vs truth")
    for fpr in doc["fprs"]:
        ax.axvline(fpr, color="0.8", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(1e-5, 1e-1)
    ax.set_ylim(0, 1.01)
    ax.set_title(_nice(field))
    ax.set_xlabel("false-positive rate")
    ax.grid(alpha=0.3)


def plot_roc(doc: dict, path: str | os.PathLike) -> Path:
    """ROC curves, one panel per field type (and all), log FPR axis; return the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fields = _fields(doc)
    fig, axes = plt.subplots(1, len(fields), figsize=(4.2 * len(fields), 4), sharey=True, squeeze=False)
    try:
        for ax, f in zip(axes[0], fields):
            _roc_panel(ax, doc, f)
        axes[0][0].set_ylabel("true-positive rate")
        axes[0][-1].legend(loc="lower right", fontsize=7)
        fig.suptitle(f"{doc['data']['manifest_name']}: {doc['data']['split']} split, "
                     f"{doc['data']['n_stamps']} stamps (targets: AstroDrizzle labels)")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)
