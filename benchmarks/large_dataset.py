"""Build a large data set with ``crforge dataset`` and watch it: time per 1,000 stamps, every process's memory, disk.

The build runs as its own process (``crforge dataset --workers N``, the intermediate
files freed as it goes: ``dataset.keep_intermediate=false``). Every ``--interval``
seconds this script samples, with psutil, the resident memory of the building process
and of each of its child processes (the dask worker processes), the stamps finished
so far (from the per-visit ``stamps/<visit>.json`` records) and the work directory's
disk use. At the end it writes ``<out>.json`` (summary), ``<out>.csv`` (the samples)
and ``<out>.png`` (memory and stamps against time) and prints:

- wall time, stamps, seconds per 1,000 stamps over the whole run and per tenth of it;
- the peak resident memory of every process, and of each kind of process over the
  first and the last quarter of the stamps (flat memory: the two are alike) and
  while the HDF5 is written;
- the HDF5 writing time (the report's total minus the visits' time) and its stamps/s;
- the peak disk use of the work directory.

    python benchmarks/large_manifest.py --stamps 100000 --out /tmp/large.toml
    python benchmarks/large_dataset.py --manifest /tmp/large.toml --work /tmp/large --workers 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _stamps_done(stamps_dir: Path, seen: dict[str, int]) -> int:
    """Stamps of the visits finished so far (each visit's JSON record is read once)."""
    if stamps_dir.is_dir():
        for p in stamps_dir.glob("*.json"):
            if p.name not in seen and not p.name.startswith("."):
                try:
                    seen[p.name] = int(json.loads(p.read_text())["n_stamps"])
                except (ValueError, KeyError, OSError):  # being renamed into place: next time
                    pass
    return sum(seen.values())


def _disk(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:  # removed while walking
                pass
    return total


def _sample(proc, t0: float, work: Path, seen: dict, peaks: dict, disk_every: int, i: int, last_disk: int) -> dict:
    import psutil

    try:
        root = psutil.Process(proc.pid)
        procs = [(root, "builder")] + [(c, "worker") for c in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    rss = {"builder": 0.0, "worker": []}
    for p, kind in procs:
        try:
            mb = p.memory_info().rss / 1e6
        except psutil.NoSuchProcess:
            continue
        key = f"{kind} {p.pid}"
        peaks[key] = max(peaks.get(key, 0.0), mb)
        if kind == "builder":
            rss["builder"] = mb
        else:
            rss["worker"].append(mb)
    disk = _disk(work) if i % disk_every == 0 else last_disk
    return {"t": round(time.perf_counter() - t0, 1), "stamps": _stamps_done(work / "stamps", seen),
            "visits": len(seen), "builder_mb": round(rss["builder"], 1),
            "worker_max_mb": round(max(rss["worker"], default=0.0), 1),
            "workers_total_mb": round(sum(rss["worker"]), 1), "n_children": len(rss["worker"]),
            "disk_gb": round(disk / 1e9, 3)}


def _phase_peaks(rows: list[dict], total: int) -> dict:
    """Peak memory per kind of process over the first and the last quarter of the stamps
    (while visits run), and while the HDF5 is written (after the last visit)."""
    out = {}
    for name, lo, hi in (("first_quarter", 0, total / 4), ("last_quarter", 3 * total / 4, total)):
        sel = [r for r in rows if lo <= r["stamps"] < hi]
        out[name] = {k: max((r[k] for r in sel), default=None) for k in ("builder_mb", "worker_max_mb")}
    out["writing"] = {"builder_mb": max((r["builder_mb"] for r in rows if r["stamps"] >= total), default=None)}
    return out


def _per_tenth(rows: list[dict], total: int) -> list[float]:
    """Seconds per 1,000 stamps over each tenth of the stamps."""
    out, prev = [], (0.0, 0)
    for k in range(1, 11):
        r = next((r for r in rows if r["stamps"] >= k * total / 10), rows[-1])
        out.append(round(1000 * (r["t"] - prev[0]) / max(1, r["stamps"] - prev[1]), 1))
        prev = (r["t"], r["stamps"])
    return out


def _plot(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] / 60 for r in rows]
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    a.plot(t, [r["builder_mb"] for r in rows], label="building process")
    a.plot(t, [r["worker_max_mb"] for r in rows], label="largest worker process")
    a.set_ylabel("resident memory (MB)")
    a.legend()
    b.plot(t, [r["stamps"] / 1000 for r in rows], label="stamps finished (thousands)")
    b.plot(t, [r["disk_gb"] for r in rows], label="work directory (GB)")
    b.set_xlabel("minutes")
    b.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="work directory (must not exist)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--out", type=Path, help="results prefix (default <work>/large-dataset)")
    ap.add_argument("--keep-intermediate", action="store_true", help="keep labels and simulated exposures")
    args = ap.parse_args(argv)
    if args.work.exists():
        sys.stderr.write(f"--work {args.work}: exists; give a new directory\n")
        return 2
    out = args.out or args.work / "large-dataset"
    cmd = [sys.executable, "-m", "crforge.cli", "dataset", "--manifest", str(args.manifest), "--work",
           str(args.work), "--workers", str(args.workers),
           "--set", f"dataset.keep_intermediate={'true' if args.keep_intermediate else 'false'}"]
    args.work.mkdir(parents=True)
    t0 = time.perf_counter()
    rows, seen, peaks, i = [], {}, {}, 0
    with open(args.work / "large-dataset.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                rows.append(_sample(proc, t0, args.work, seen, peaks, max(1, int(30 / args.interval)), i,
                                    int(rows[-1]["disk_gb"] * 1e9) if rows else 0))
                i += 1
                time.sleep(args.interval)
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGTERM)
            raise
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(f"crforge dataset exited {proc.returncode}; see {args.work / 'large-dataset.log'}\n")
        return 1
    report = json.loads(next(args.work.glob("*.report.json")).read_text())
    total = sum(report["stamps"].values())
    rows.append({**rows[-1], "t": round(wall, 1), "stamps": _stamps_done(args.work / "stamps", seen),
                 "disk_gb": round(_disk(args.work) / 1e9, 3)})
    write_s = report["seconds_total"] - report["seconds_visits"]
    h5 = Path(report["output"])
    summary = {
        "manifest": str(args.manifest), "workers": args.workers, "visits": report["visits_done"],
        "visits_failed": len(report["visits_failed"]), "stamps": total, "wall_s": round(wall, 1),
        "s_per_1000_stamps": round(1000 * wall / total, 1),
        "s_per_1000_stamps_per_tenth": _per_tenth(rows, rows[-1]["stamps"]),
        "hdf5_write_s": round(write_s, 1), "hdf5_write_stamps_per_s": round(total / max(write_s, 1e-9), 0),
        "hdf5_gb": round(h5.stat().st_size / 1e9, 2), "peak_disk_gb": max(r["disk_gb"] for r in rows),
        "peak_rss_mb": {k: round(v, 1) for k, v in sorted(peaks.items())},
        "peak_rss_by_phase_mb": _phase_peaks(rows, rows[-1]["stamps"]),
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _plot(rows, out.with_suffix(".png"))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
