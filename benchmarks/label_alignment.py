"""Label quality under misalignment: pointing errors, with and without alignment.

For each field type and exposure count, simulates one visit per seed and pointing error (the
header WCS of every exposure off its true pointing by a normal draw of this rms per
axis; the same draws scaled, the same pixels), labels it with crforge's default
settings as they are (``align = false``) and aligned first (``align = true``), and
prints recall above 5 sigma, false labels per million clean pixels and false labels
per million star/galaxy pixels (pixels where the noiseless source stands 5 sigma above
the noise), with the ratio of the last to that of the perfectly pointed visit labelled
as it is (the target for aligned visits: at most 1.5).

    python benchmarks/label_alignment.py --work /tmp/la                      # 512x1024 chips, 2 seeds
    python benchmarks/label_alignment.py --work /tmp/la --size 256x512 --fields globular_cluster

Figures are in docs/benchmarks.md ("Label quality under misalignment").
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from crforge.pipeline.label.config import LabelConfig
from crforge.pipeline.label.stage import label_visit
from crforge.pipeline.label.validate import VisitError
from crforge.pipeline.quality import score_visit, summarise
from crforge.pipeline.simulate.config import SimulateConfig
from crforge.pipeline.simulate.visit import simulate_visit


def _add(total: dict, counts: dict) -> None:
    """Sum :func:`score_visit` counts (numbers and per-bin lists) into ``total``."""
    for k, v in counts.items():
        total[k] = v if k not in total else (
            [a + b for a, b in zip(total[k], v)] if isinstance(v, list) else total[k] + v)


def _row(field: str, n: int, pe: float, aligned: bool, raws: list[Path], out: Path) -> dict:
    """Label the visits of every seed (aligned or not), score them together; a refusal is reported."""
    t0 = time.perf_counter()
    total: dict = {}
    fits, skipped = [], []
    for raw in raws:
        dest = out / f"{raw.parent.name}-{raw.name}-{aligned}"
        try:
            rep = label_visit(raw, dest, LabelConfig(align=aligned), overwrite=True)
        except VisitError as exc:
            skipped.append(str(exc))
            continue
        _add(total, score_visit(dest, raw))
        fits += [a for a in rep.alignment if a["status"] == "SUCCESS"]
    row = {"field": field, "n": n, "pointing_rms": pe, "aligned": aligned, "visits": len(raws),
           "skipped": skipped, "seconds_label": round(time.perf_counter() - t0, 1)}
    if not total:
        return row
    s = summarise(total)
    return {**row, "recall_above_5sigma": s["recall_above_5sigma"],
            "false_per_million": s["false_per_million"],
            "false_star_per_million": s["false_source_per_million"],
            "fit_rms": max((a["rms"] for a in fits), default=None),
            "fit_matches": min((a["n_matches"] for a in fits), default=None)}


def _print(r: dict, perfect: dict) -> None:
    head = f"| {r['field']} | {r['n']} | {r['pointing_rms']:.1f} | {'yes' if r['aligned'] else 'no'} |"
    if "false_star_per_million" not in r:
        print(f"{head} all {r['visits']} skipped: {r['skipped'][0][:100]} | | | | | |", flush=True)
        return
    base = perfect.get((r["field"], r["n"]))
    ratio = (r["false_star_per_million"] / base if base else float("nan"))
    fit = f"{r['fit_rms']:.3f} / {r['fit_matches']}" if r["fit_rms"] is not None else "-"
    skipped = f" ({len(r['skipped'])} of {r['visits']} skipped)" if r["skipped"] else ""
    print(f"{head} {r['recall_above_5sigma']:.3f} | {r['false_per_million']:.1f} | "
          f"{r['false_star_per_million']:.1f}{skipped} | {ratio:.2f} | {fit} | {r['seconds_label']:.0f} |",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--size", default="512x1024", help="chip NYxNX ('full' for full-size chips)")
    ap.add_argument("--exposures", default="2,4")
    ap.add_argument("--errors", default="0,0.1,0.2", help="pointing error rms per axis, pixels")
    ap.add_argument("--fields", default="globular_cluster,resolved_galaxy,extragalactic")
    ap.add_argument("--seeds", default="11,12", help="one visit per seed, scored together")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shape = None if args.size == "full" else tuple(int(v) for v in args.size.split("x"))
    print("| field | n | pointing rms (px) | aligned | recall >5 sigma | false/M | false/M star px "
          "| star vs perfect | fit rms (px) / matches | label s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows, perfect = [], {}
    for fi, field in enumerate(args.fields.split(",")):
        for n in (int(v) for v in args.exposures.split(",")):
            for ei, pe in enumerate(float(v) for v in args.errors.split(",")):
                raws = [simulate_visit(SimulateConfig(
                    field_type=field, n_exposures=n, chip_shape=shape, seed=int(seed), obset_id=f"{fi}{n}",
                    dither="line" if n == 2 else "box", pointing_error=pe),
                    args.work / f"raw-{ei}-{seed}", overwrite=True) for seed in args.seeds.split(",")]
                for aligned in (False, True):
                    r = _row(field, n, pe, aligned, raws, args.work / "labels")
                    if pe == 0 and not aligned and "false_star_per_million" in r:
                        perfect[(field, n)] = r["false_star_per_million"]
                    rows.append(r)
                    _print(r, perfect)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
