"""One process against N ``torchrun`` processes with the same global batch: the loss curves.

Runs the real ``crforge train`` twice on the same data set and settings, once as one
process and once under ``torch.distributed.run`` with N processes (gloo on CPUs, NCCL on
GPUs), and prints both curves (train and validation loss per epoch), their largest
relative difference and the wall times.

    python benchmarks/ddp_curves.py --data work/synthetic-acs-wfc.h5 --work /tmp/ddp
    python benchmarks/ddp_curves.py --data work/synthetic-acs-wfc.h5 --work /tmp/ddp --procs 2 \\
        --set train.model.width=32 --set train.epochs=4

Settings default to a small, deterministic run (float32, batch norm trained all along,
no DataLoader workers, one thread per process); ``--set`` adds or overrides any.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULTS = ["train.epochs=3", "train.batch_size=8", "train.stamps_per_epoch=64", "train.val_stamps=32",
            "train.lr=0.005", "train.seed=0", "train.init_mask=''", "train.cpu_bf16='off'",
            "train.threads=1", "train.num_workers=0", "train.bn_freeze_epoch=0",
            "train.model.depth=2", "train.model.width=8"]


def _run(cmd: list[str], args, runs: Path) -> float:
    shutil.rmtree(runs, ignore_errors=True)
    full = cmd + ["train", "--data", str(args.data), "--runs", str(runs), "--name", "r", "--kind", args.kind]
    for s in DEFAULTS + args.set:
        full += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(full, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{' '.join(full)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def _curve(runs: Path, kind: str) -> list[dict]:
    text = (runs / "r" / kind / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="HDF5 training set")
    ap.add_argument("--work", type=Path, required=True, help="scratch directory (its runs are replaced)")
    ap.add_argument("--procs", type=int, default=2, help="processes of the distributed run (default 2)")
    ap.add_argument("--kind", choices=("mask", "inpaint"), default="mask")
    ap.add_argument("--set", action="append", default=[], help="a train.KEY=VALUE setting (repeatable)")
    args = ap.parse_args()
    one = [sys.executable, "-m", "crforge.cli"]
    many = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.procs),
            "-m", "crforge.cli"]
    t1 = _run(one, args, args.work / "one")
    tn = _run(many, args, args.work / "many")
    a, b = _curve(args.work / "one", args.kind), _curve(args.work / "many", args.kind)
    print(f"{args.data}, {args.kind}, settings: {' '.join(DEFAULTS + args.set)}")
    print(f"| epoch | train loss, 1 process | train loss, {args.procs} | val loss, 1 | val loss, {args.procs} |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for x, y in zip(a, b):
        print(f"| {x['epoch']} | {x['train_loss']:.7g} | {y['train_loss']:.7g} | "
              f"{x.get('val_loss', float('nan')):.7g} | {y.get('val_loss', float('nan')):.7g} |")
        for key in ("train_loss", "val_loss"):
            if key in x and key in y:
                worst = max(worst, abs(x[key] - y[key]) / max(abs(x[key]), 1e-12))
    print(f"largest relative difference: {worst:.2e}; wall time 1 process {t1:.1f} s, "
          f"{args.procs} processes {tn:.1f} s (on this machine's {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
