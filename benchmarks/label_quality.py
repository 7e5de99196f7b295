"""Label quality of crforge's labelling stage against the simulator's injected truth.

For each field type and exposure count, simulates one visit (full-size ACS/WFC chips
unless ``--size``), labels it with crforge's default settings and with plain AstroDrizzle defaults
(``minmed``, no refinement, no growth), and prints
recall per signal-to-noise bin, recall above 5 sigma, false labels per million clean
pixels and false labels on star/galaxy pixels.

    python benchmarks/label_quality.py --work /tmp/lq            # full size, ~15 min
    python benchmarks/label_quality.py --work /tmp/lq --size 512x1024 --exposures 2
    python benchmarks/label_quality.py --work /tmp/lq-hrc --instrument ACS/HRC --exposures 2,4 \
        --crforge-only                                             # another imager of the table

Figures are in the README ("Label quality").
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from crforge.pipeline.label.config import LabelConfig
from crforge.pipeline.label.stage import label_visit
from crforge.pipeline.names import FIELD_TYPES
from crforge.pipeline.quality import score_visit, summarise
from crforge.pipeline.simulate.config import SimulateConfig
from crforge.pipeline.simulate.visit import simulate_visit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--size", default=None, help="chip NYxNX (default: full size)")
    ap.add_argument("--exposures", default="2,3,4")
    ap.add_argument("--fields", default=",".join(FIELD_TYPES))
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--instrument", default="ACS/WFC", help="an imager of the instrument table")
    ap.add_argument("--crforge-only", action="store_true", help="leave out the AstroDrizzle-default rows")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shape = tuple(int(v) for v in args.size.split("x")) if args.size else None
    rows = []
    header = (f"{'imager':9s} {'field':17s} {'n':>2s} {'settings':22s} {'<3':>6s} {'3-5':>6s} {'5-10':>6s} "
              f"{'>10':>6s} {'>5 all':>7s} {'false/M':>8s} {'on src':>7s} {'sim s':>6s} {'label s':>7s}")
    print(header, flush=True)
    for fi, field in enumerate(args.fields.split(",")):
        for n in (int(v) for v in args.exposures.split(",")):
            sim = SimulateConfig(instrument=args.instrument, field_type=field, n_exposures=n,
                                 chip_shape=shape, seed=args.seed, obset_id=f"{fi}{n}",
                                 dither="line" if n == 2 else "box")
            t0 = time.perf_counter()
            raw = simulate_visit(sim, args.work / "raw")
            t_sim = time.perf_counter() - t0
            plain = replace(LabelConfig(), refine_max_exposures=0, grow_snr=0.0)
            settings = [("crforge default", LabelConfig()), ("AstroDrizzle default", plain)]
            settings = settings[:1] if args.crforge_only else settings
            for name, cfg in settings:
                out = args.work / "labels" / name.split()[0] / raw.name
                t0 = time.perf_counter()
                label_visit(raw, out, cfg, overwrite=True)
                t_lab = time.perf_counter() - t0
                s = summarise(score_visit(out, raw))
                r = s["recall_by_snr"]
                rows.append({"instrument": args.instrument, "field": field, "n": n, "settings": name, **s,
                             "seconds_simulate": t_sim, "seconds_label": t_lab})
                print(f"{args.instrument:9s} {field:17s} {n:2d} {name:22s} {r['0-3']:6.3f} {r['3-5']:6.3f} "
                      f"{r['5-10']:6.3f} {r['>10']:6.3f} {s['recall_above_5sigma']:7.3f} "
                      f"{s['false_per_million']:8.1f} {s['false_source_pixels']:7d} "
                      f"({s['false_source_per_million']:.0f}/M) {t_sim:6.1f} {t_lab:7.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
