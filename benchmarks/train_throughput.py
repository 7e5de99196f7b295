"""Training throughput: crforge's trainer against deepCR's own, on the same stamps.

Both trainers train a 2-32 mask network (deepCR-2-32) for the same number of stamps at
the same batch size on the CPU; each runs in its own child process so that its peak
memory (the child's maximum resident set size) is its own. Afterwards both models are
scored on the same validation stamps with one metric: the binary cross-entropy of the
CR probability over non-ignored pixels (and the TPR at 0.5% FPR), each model seeing
its own input normalisation.

- crforge: :func:`crforge.training.train.train_one_epoch` over a
  :class:`crforge.training.data.StampDataset` streaming from the HDF5 file (sky
  augmentation, flips and rotations on), our :class:`crforge.training.models.MaskNet`
  (channels-last), once in float32 (``train.cpu_bf16 = "off"``) and once with
  bfloat16 autocast (``"on"``, what the default ``"auto"`` picks on CPUs with
  bfloat16 instructions) unless ``--no-bf16``.
- deepCR: ``deepCR.training.train`` (pip package ``deepCR``) built on the same
  stamps as in-memory arrays (its ``dataset`` holds the whole set), its sky
  augmentation over the same range, and its own training step
  (``train.optimize_network``: per-batch standardisation, ``UNet2Sigmoid``, BCE).
  Its constructor hard-codes ``DataLoader(num_workers=8)``; the loader is rebuilt
  with ``--deepcr-workers`` (default: the same as ours) over the same dataset object,
  and the loop calls its ``optimize_network`` directly rather than ``train()``, which
  would also validate, plot and write TensorBoard logs every epoch. deepCR 0.3.1
  passes ``verbose=True`` to ``ReduceLROnPlateau``, which torch 2.13 no longer
  accepts, so it is built with ``auto_lr_decay=False`` (no schedule: irrelevant over
  the one pass measured here).

Usage::

    python benchmarks/train_throughput.py [--data FILE.h5] [--stamps 128] [--batch-size 16]
                                          [--threads 1] [--val-split val]

deepCR 0.3.1 is in crforge's ``test`` extra (``make install`` installs it); its
``torch>=1.1`` requirement is met by the ``torch==2.13.0`` CPU wheel installed first.

Without ``--data`` a file of simple synthetic 256x256 stamps (sky, noise, stars, CR
hits and tracks, a bad column) is written to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _synth_stamp(rng, yy, xx, size: int) -> tuple:
    """One stamp: sky, 30 Gaussian stars, 40-120 short CR tracks, a bad column."""
    sky = rng.uniform(15, 60)
    img = sky + rng.normal(0, np.sqrt(sky), (size, size))
    for _ in range(30):
        y, x, f = rng.uniform(0, size, 2).tolist() + [rng.lognormal(7, 1)]
        s = rng.uniform(1.0, 2.5)
        sl = np.s_[max(int(y) - 10, 0):int(y) + 10, max(int(x) - 10, 0):int(x) + 10]
        r2 = (yy[sl] - y) ** 2 + (xx[sl] - x) ** 2
        img[sl] += f / (2 * np.pi * s * s) * np.exp(-r2 / (2 * s * s))
    cr = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(40, 120))):
        y, x = rng.integers(3, size - 3, 2)
        dy, dx = rng.integers(-1, 2, 2)
        for t in range(int(rng.integers(1, 5))):
            img[y + t * dy, x + t * dx] += rng.lognormal(6.9, 0.6)
            cr[y + t * dy, x + t * dx] = 1
    ignore = np.zeros((size, size), np.uint8)
    ignore[:, int(rng.integers(size))] = 1
    return img, cr, ignore, sky


def synth_file(path: Path, n_train: int, n_val: int, size: int = 256, seed: int = 0) -> Path:
    """A valid HDF5 training set of simple synthetic stamps (crforge's writer)."""
    from crforge.pipeline.datafile.schema import META_DTYPE
    from crforge.pipeline.datafile.writer import write_arrays

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    types = ("extragalactic", "globular_cluster", "resolved_galaxy")
    splits = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", 0)):
        arrays = {"image": np.zeros((n, size, size), np.float32), "cr": np.zeros((n, size, size), np.uint8),
                  "ignore": np.zeros((n, size, size), np.uint8), "meta": np.zeros(n, META_DTYPE)}
        for i in range(n):
            img, cr, ignore, sky = _synth_stamp(rng, yy, xx, size)
            arrays["image"][i], arrays["cr"][i], arrays["ignore"][i] = img, cr, ignore
            arrays["meta"][i] = (b"", b"e", 1, 0, 0, 0, types[i % 3].encode(), b"F606W", 500.0, sky,
                                 2.0, 4.5, cr.mean())
        splits[split] = arrays
    return write_arrays(path, splits, manifest_name="synthetic-throughput")


def _read(path: Path, split: str, n: int) -> dict:
    import h5py

    with h5py.File(path) as h5:
        g = h5[split]
        n = min(n, len(g["meta"]))
        return {"image": g["image"][:n], "cr": g["cr"][:n], "ignore": g["ignore"][:n],
                "sky": g["meta"]["sky"][:n].astype(np.float64), "n": n}


def _score(prob_batches: list, val: dict) -> dict:
    """BCE of probabilities and TPR at 0.5% FPR over non-ignored val pixels."""
    from crforge.training.metrics import tpr_at_fpr

    p = np.concatenate([b.reshape(-1) for b in prob_batches]).astype(np.float64)
    y = (val["cr"] != 0).reshape(-1)
    keep = (val["ignore"] == 0).reshape(-1)
    p, y = np.clip(p[keep], 1e-7, 1 - 1e-7), y[keep]
    bce = float(-np.mean(y * np.log(p) + (~y) * np.log1p(-p)))
    return {"val_bce": bce, "val_tpr_at_0.5pct_fpr": tpr_at_fpr(p, y, 0.005)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker_ours(args) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from crforge.training.config import TrainConfig
    from crforge.training.data import EpochSampler, StampDataset
    from crforge.training.models import build_model
    from crforge.training.train import train_one_epoch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TrainConfig(kind="mask", epochs=1, batch_size=args.batch_size, lr=args.lr, device="cpu",
                      stamps_per_epoch=args.stamps, num_workers=args.workers,
                      cpu_bf16="on" if args.worker == "ours-bf16" else "off")
    ds = StampDataset(args.data, "train", "mask", cfg.augment, seed=0, **cfg.data_options())
    if len(ds) < args.stamps:
        raise SystemExit(f"{args.data}: {len(ds)} train stamps, fewer than --stamps {args.stamps}")
    loader = DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                        sampler=EpochSampler(len(ds), 0, True, args.stamps))
    model = build_model("mask", 2, 32)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    t0 = time.perf_counter()
    tr = train_one_epoch(model, loader, opt, scaler, "cpu", 0, cfg)
    seconds = time.perf_counter() - t0
    # score: the same val stamps, our normalisation, eval mode
    val_ds = StampDataset(args.data, args.val_split, "mask", None, seed=0, **cfg.data_options())
    val = _read(args.data, args.val_split, args.val_stamps)
    model.eval()
    probs = []
    with torch.no_grad():
        for i in range(0, val["n"], args.batch_size):
            x = torch.stack([val_ds[j]["image"] for j in range(i, min(i + args.batch_size, val["n"]))])
            probs.append(torch.sigmoid(model(x)).numpy())
    name = "crforge" + ("-bf16" if cfg.cpu_bf16 == "on" else "")
    return {"trainer": name, "stamps": tr["stamps"], "seconds": seconds,
            "stamps_per_s": tr["stamps"] / seconds, "peak_rss_mb": _peak_rss_mb(),
            "train_loss": tr["train_loss"], **_score(probs, val)}


def worker_deepcr(args) -> dict:
    import contextlib
    import io

    import torch
    from torch.utils.data import DataLoader

    with contextlib.redirect_stdout(io.StringIO()):  # deepCR prints on import/construction
        from deepCR.dataset import dataset as DeepCRDataset
        from deepCR.training import train as DeepCRTrain

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    tr = _read(args.data, "train", args.stamps)
    if tr["n"] < args.stamps:
        raise SystemExit(f"{args.data}: {tr['n']} train stamps, fewer than --stamps {args.stamps}")
    ignore = (tr["ignore"] != 0).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        trainer = DeepCRTrain(tr["image"], tr["cr"].astype(np.float32), ignore, tr["sky"],
                              aug_sky=(-0.9, 3.0), name="bench", hidden=32, epoch=1,
                              batch_size=args.batch_size, lr=args.lr, verbose=False,
                              # its ReduceLROnPlateau(verbose=True) fails on torch >= 2.7
                              # (argument removed); the schedule plays no part in one epoch
                              auto_lr_decay=False,
                              directory=tmp + "/", save_after=1e9, plot_every=10 ** 9)
        data = DeepCRDataset(tr["image"], tr["cr"].astype(np.float32), ignore, tr["sky"],
                             aug_sky=(-0.9, 3.0), part=None)
        trainer.TrainLoader = DataLoader(data, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.deepcr_workers)
        trainer.network.train()
        t0 = time.perf_counter()
        n = 0
        for dat in trainer.TrainLoader:
            trainer.optimize_network(dat)
            n += dat[0].shape[0]
        seconds = time.perf_counter() - t0
        trainer.writer.close()
    loss = float(trainer.backward_network().detach())
    val = _read(args.data, args.val_split, args.val_stamps)
    trainer.network.eval()
    probs = []
    with torch.no_grad():
        for i in range(0, val["n"], args.batch_size):
            sl = slice(i, min(i + args.batch_size, val["n"]))
            img = torch.from_numpy(val["image"][sl].astype(np.float32))
            trainer.set_input(img, torch.zeros_like(img), torch.zeros_like(img))  # its normalisation
            probs.append(trainer.network(trainer.img0).numpy())
    return {"trainer": "deepCR", "stamps": n, "seconds": seconds, "stamps_per_s": n / seconds,
            "peak_rss_mb": _peak_rss_mb(), "train_loss": loss, **_score(probs, val)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="HDF5 training set (default: synthetic stamps)")
    p.add_argument("--val-split", default="val", help="split to score on (default val)")
    p.add_argument("--stamps", type=int, default=128, help="training stamps per trainer (default 128)")
    p.add_argument("--val-stamps", type=int, default=32, help="validation stamps (default 32)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.005, help="Adam rate of both (deepCR's default)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each trainer (default 1)")
    p.add_argument("--workers", type=int, default=0, help="our DataLoader workers (default 0)")
    p.add_argument("--deepcr-workers", type=int, default=None,
                   help="deepCR's DataLoader workers (default: --workers; deepCR hard-codes 8)")
    p.add_argument("--no-bf16", action="store_true", help="skip the run of ours with train.cpu_bf16")
    p.add_argument("--worker", choices=("ours", "ours-bf16", "deepcr"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.deepcr_workers is None:
        args.deepcr_workers = args.workers
    if args.worker:
        out = worker_deepcr(args) if args.worker == "deepcr" else worker_ours(args)
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            args.data = synth_file(Path(tmp) / "stamps.h5", args.stamps, args.val_stamps)
            args.val_split = "val"
        results = {}
        for who in ("ours", "deepcr") + (() if args.no_bf16 else ("ours-bf16",)):
            cmd = [sys.executable, __file__, "--worker", who, "--data", str(args.data), "--val-split",
                   args.val_split, "--stamps", str(args.stamps), "--val-stamps", str(args.val_stamps),
                   "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--threads", str(args.threads),
                   "--workers", str(args.workers), "--deepcr-workers", str(args.deepcr_workers)]
            env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS=str(args.threads))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                sys.stderr.write(proc.stderr[-3000:])
                return proc.returncode
            results[who] = json.loads(proc.stdout.strip().splitlines()[-1])
    w = sys.stdout.write
    w(f"data: {args.data} ({args.stamps} train stamps, batch {args.batch_size}, {args.threads} thread(s), "
      f"2-32 mask network, CPU)\n")
    w(f"{'trainer':10s} {'stamps/s':>9s} {'peak RSS MB':>12s} {'val BCE':>9s} {'TPR@0.5%FPR':>12s}\n")
    for r in results.values():
        w(f"{r['trainer']:10s} {r['stamps_per_s']:9.2f} {r['peak_rss_mb']:12.0f} {r['val_bce']:9.4f} "
          f"{r['val_tpr_at_0.5pct_fpr']:12.4f}\n")
    for who in results:
        if who != "deepcr":
            ratio = results[who]["stamps_per_s"] / results["deepcr"]["stamps_per_s"]
            w(f"throughput ratio {results[who]['trainer']}/deepCR: {ratio:.2f}x\n")
    w(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
