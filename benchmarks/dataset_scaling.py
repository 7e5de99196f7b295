"""Dataset stage scaling: wall time with 1 and 2 dask workers, peak memory vs visits.

In one run, on the same manifest (default: the ``make dataset`` one):

1. the whole data set with a LocalCluster of 1 worker, then of 2 workers, each from an
   empty work directory: wall times and their ratio (target >= 1.8 on 2 cores);
2. N and 2N visits (the same mix of field types: rows taken round-robin by type), each
   built on a 2-worker LocalCluster from a fresh process: peak RSS of that process,
   which schedules the visits and streams their stamps one visit at a time into the
   HDF5 (target: flat). A worker holds one visit at a time, so its memory depends on
   the visit, not on how many there are.

    python benchmarks/dataset_scaling.py --work /tmp/dscale
    python benchmarks/dataset_scaling.py --work /tmp/dscale --limit 6 --memory-n 3
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path


def _subset(manifest: Path, n: int):
    """The first ``n`` visits taken round-robin over field types (same mix for any n)."""
    from crforge.pipeline.manifest import load_manifest

    man = load_manifest(manifest)
    by_type: dict[str, list] = {}
    for v in man.visits:
        by_type.setdefault(v.field_type, []).append(v)
    order = [v for group in zip(*by_type.values()) for v in group]
    order += [v for v in man.visits if v not in order]
    return replace(man, visits=order[:n], name=f"{man.name}-{n}")


def _child(args) -> dict:
    logging.basicConfig(level=logging.WARNING)
    from crforge.pipeline.dataset.config import DatasetConfig
    from crforge.pipeline.dataset.stage import build_dataset

    man = _subset(args.manifest, args.child_n)
    dataset = DatasetConfig(scheduler=args.child_scheduler, workers=args.child_workers)
    t0 = time.perf_counter()
    rep = build_dataset(man, args.work, dataset=dataset)
    return {"seconds": time.perf_counter() - t0, "stamps": sum(rep.stamps.values()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def _spawn(args, work: Path, n: int, scheduler: str, workers: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, __file__, "--work", str(work), "--manifest", str(args.manifest),
           "--child-n", str(n), "--child-scheduler", scheduler, "--child-workers", str(workers)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--manifest", type=Path, default=Path("data_manifests/synthetic-acs-wfc.toml"))
    ap.add_argument("--limit", type=int, default=0, help="use only the first visits (0 = all)")
    ap.add_argument("--memory-n", type=int, default=6, help="N of the N vs 2N memory runs")
    ap.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-scheduler", help=argparse.SUPPRESS)
    ap.add_argument("--child-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_n:
        print(json.dumps(_child(args)))
        return
    from crforge.pipeline.manifest import load_manifest

    n_all = len(load_manifest(args.manifest).visits)
    n = args.limit or n_all
    print(f"manifest {args.manifest} ({n} of {n_all} visits)", flush=True)
    one = _spawn(args, args.work / "w1", n, "local", 1)
    print(f"1 worker : {one['seconds']:7.1f} s  ({one['stamps']} stamps)", flush=True)
    two = _spawn(args, args.work / "w2", n, "local", 2)
    print(f"2 workers: {two['seconds']:7.1f} s  ({two['stamps']} stamps)", flush=True)
    print(f"speed-up 1 -> 2 workers: {one['seconds'] / two['seconds']:.2f}x", flush=True)
    m = args.memory_n
    small = _spawn(args, args.work / "m1", m, "local", 2)
    big = _spawn(args, args.work / "m2", 2 * m, "local", 2)
    print(f"peak RSS of the building process, {m:2d} visits: {small['peak_rss_mb']:7.0f} MB ({small['stamps']} stamps)")
    print(f"peak RSS of the building process, {2 * m:2d} visits: {big['peak_rss_mb']:7.0f} MB ({big['stamps']} stamps)")
    print(f"memory ratio 2N/N: {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
