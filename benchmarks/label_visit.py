"""Wall time and peak memory of ``crforge label`` against a bare AstroDrizzle call.

Both run on the same full-size simulated ACS/WFC visit (4 exposures of 2x4096x2048
by default), each in its own process so that peak RSS is its own:

- ``bare``: copy the FLC files to a scratch directory and call
  ``drizzlepac.astrodrizzle.AstroDrizzle`` with the same keyword arguments crforge
  uses (median, blot, driz_cr; no final drizzle). Nothing else.
- ``crforge``: ``crforge.pipeline.label.stage.label_visit``: validation, the same copies and
  AstroDrizzle call, then CR and ignore masks, coverage and the label files.

    python benchmarks/label_visit.py --work /tmp/bench           # full size
    python benchmarks/label_visit.py --work /tmp/bench --size 512x1024 --repeat 3

Prints one line per method (median over ``--repeat`` runs) and crforge's overhead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(method: str, visit: Path, work: Path) -> dict:
    logging.basicConfig(level=logging.WARNING)
    from crforge.pipeline.label.astrodrizzle import astrodrizzle_kwargs
    from crforge.pipeline.label.config import LabelConfig
    from crforge.pipeline.label.stage import label_visit
    from crforge.pipeline.label.validate import find_exposures

    files = find_exposures(visit)
    t0 = time.perf_counter()
    if method == "bare":
        from drizzlepac import astrodrizzle

        scratch = Path(tempfile.mkdtemp(dir=work))
        for f in files:
            shutil.copyfile(f, scratch / f.name)
        kwargs = astrodrizzle_kwargs(LabelConfig(), len(files), visit.name)
        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            astrodrizzle.AstroDrizzle(input=[f.name for f in files], **kwargs)
        finally:
            os.chdir(cwd)
        shutil.rmtree(scratch)
    else:
        out = work / "labels"
        label_visit(visit, out, LabelConfig(), overwrite=True)
        shutil.rmtree(out)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"method": method, "seconds": wall, "peak_rss_mb": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--size", default=None, help="chip NYxNX (default: full size)")
    ap.add_argument("--exposures", type=int, default=4)
    ap.add_argument("--field", default="globular_cluster")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--child", choices=("bare", "crforge"), help=argparse.SUPPRESS)
    ap.add_argument("--visit", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.visit, args.work)))
        return

    from crforge.pipeline.simulate.config import SimulateConfig
    from crforge.pipeline.simulate.visit import simulate_visit

    shape = tuple(int(v) for v in args.size.split("x")) if args.size else None
    sim = SimulateConfig(field_type=args.field, n_exposures=args.exposures, chip_shape=shape,
                         seed=5, obset_id="b1")
    visit = simulate_visit(sim, args.work / "raw")
    results: dict[str, list[dict]] = {"bare": [], "crforge": []}
    for _ in range(args.repeat):
        for method in ("bare", "crforge"):  # interleaved, so drift hits both alike
            out = subprocess.run(
                [sys.executable, __file__, "--work", str(args.work), "--child", method,
                 "--visit", str(visit)], check=True, capture_output=True, text=True)
            results[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"visit: {args.field}, {args.exposures} exposures, chips "
          f"{'full size' if shape is None else args.size}, {args.repeat} run(s) each")
    med = {}
    for method, runs in results.items():
        sec = statistics.median(r["seconds"] for r in runs)
        mem = max(r["peak_rss_mb"] for r in runs)
        med[method] = (sec, mem)
        print(f"{method:8s} wall {sec:7.1f} s   peak RSS {mem:7.0f} MB")
    (bs, bm), (cs, cm) = med["bare"], med["crforge"]
    print(f"crforge overhead: {100 * (cs / bs - 1):+.1f}% wall, {100 * (cm / bm - 1):+.1f}% peak RSS")


if __name__ == "__main__":
    main()
