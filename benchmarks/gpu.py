"""GPU figures: training stamps/s, mask inference time and peak GPU memory, crforge beside deepCR 0.3.1.

In one run on one device (about 3-5 minutes on one GPU; the paper's anchors are 0.2 s per
100 stamps for deepCR 2-32 on a Titan X and "training in as short as 20 minutes"):

1. **Training**: the 2-32 mask network on the same synthetic 256x256 stamps, batch 16,
   one pass of ``--train-stamps`` after a warm-up of 128: crforge's
   :func:`~crforge.training.train.train_one_epoch` (HDF5 streaming with augmentation,
   ``train.num_workers`` automatic, pinned memory, float16 AMP) and deepCR 0.3.1's own
   training step (``train.optimize_network`` over its in-memory dataset, the same number
   of DataLoader workers). Stamps/s and peak GPU memory of each.
2. **Inference on stamps**: seconds per 100 stamps of 256x256 through each mask network
   (batches of 100, float32; crforge also with float16 autocast), median of 5 after a
   warm-up; peak GPU memory.
3. **Inference on a chip**: seconds for one 4096x2048 chip: crforge's
   :func:`crforge.deepcr_models.clean` and deepCR's ``clean`` (its defaults: 1024-pixel
   segments), best of 3.

    python benchmarks/gpu.py                       # on the GPU (refuses to run without one)
    python benchmarks/gpu.py --device cpu --quick  # a small CPU run: checks the script, no GPU figures
    python benchmarks/gpu.py --json out.json

The crforge mask model is the zoo's ``synthetic-acs-wfc`` (2-32); deepCR's is its
``ACS-WFC`` model. Figures depend on the GPU, the driver and torch; the script prints them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import synth_file  # noqa: E402  (the benchmarks' shared synthetic stamps)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if device.type == "cuda" else None


def train_crforge(data: Path, n: int, device) -> dict:
    """crforge's training loop over ``n`` stamps (after a warm-up pass of 128)."""
    import torch
    from torch.utils.data import DataLoader

    from crforge.training.config import TrainConfig
    from crforge.training.data import EpochSampler, StampDataset
    from crforge.training.models import build_model
    from crforge.training.train import train_one_epoch

    cfg = TrainConfig(kind="mask", epochs=2, batch_size=16, device=device.type, init_mask="")
    ds = StampDataset(data, "train", "mask", cfg.augment, seed=0, **cfg.data_options())
    model = build_model("mask", 2, 32).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.amp)
    workers = cfg.workers(device)

    def loader(limit: int) -> DataLoader:
        return DataLoader(ds, batch_size=cfg.batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                          sampler=EpochSampler(len(ds), 0, True, limit))

    train_one_epoch(model, loader(min(128, n)), opt, scaler, device, 0, cfg)  # warm-up (cuDNN autotune)
    _peak_reset(device)
    tr = train_one_epoch(model, loader(n), opt, scaler, device, 1, cfg)
    _sync(device)
    return {"trainer": "crforge", "stamps": tr["stamps"], "stamps_per_s": round(tr["stamps_per_s"], 1),
            "workers": workers, "amp": bool(scaler.is_enabled()), "peak_gpu_mb": _peak_mb(device)}


def train_deepcr(data: Path, n: int, device, workers: int) -> dict:
    """deepCR 0.3.1's training step over the same ``n`` stamps, held in memory as it holds them."""
    import h5py
    import torch
    from torch.utils.data import DataLoader

    with contextlib.redirect_stdout(io.StringIO()):
        from deepCR.dataset import dataset as DeepCRDataset
        from deepCR.training import train as DeepCRTrain
    with h5py.File(data) as h5:
        g = h5["train"]
        image, cr, ignore = g["image"][:n], g["cr"][:n].astype(np.float32), g["ignore"][:n].astype(np.float32)
        sky = g["meta"]["sky"][:n].astype(np.float64)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its constructor builds loaders of 8 workers (replaced below)
        trainer = DeepCRTrain(image, cr, ignore, sky, aug_sky=(-0.9, 3.0), name="bench", hidden=32, epoch=1,
                              batch_size=16, verbose=False, auto_lr_decay=False, directory=tmp + "/",
                              save_after=1e9, plot_every=10 ** 9)
        ds = DeepCRDataset(image, cr, ignore, sky, aug_sky=(-0.9, 3.0), part=None)
        trainer.network.train()

        def one_pass(limit: int) -> tuple[int, float]:
            loader = DataLoader(torch.utils.data.Subset(ds, range(limit)), batch_size=16, shuffle=True,
                                num_workers=workers, pin_memory=device.type == "cuda")
            t0, seen = time.perf_counter(), 0
            for batch in loader:
                trainer.optimize_network(batch)
                seen += batch[0].shape[0]
            _sync(device)
            return seen, time.perf_counter() - t0

        one_pass(min(128, n))
        _peak_reset(device)
        seen, seconds = one_pass(n)
        trainer.writer.close()
    return {"trainer": "deepCR 0.3.1", "stamps": seen, "stamps_per_s": round(seen / seconds, 1),
            "workers": workers, "amp": False, "peak_gpu_mb": _peak_mb(device)}


def _timed(fn, device, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def infer_stamps(device, n: int = 100, repeat: int = 5) -> list[dict]:
    """Seconds per 100 256x256 stamps through each mask network (batches of ``n``; median of ``repeat``)."""
    import torch

    from crforge import deepcr_models

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(0.4, 0.1, (n, 1, 256, 256)).astype(np.float32)).to(device)
    ours = deepcr_models.load("synthetic-acs-wfc", device=str(device)).net.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        from deepCR import deepCR
        theirs = deepCR(mask="ACS-WFC", device="GPU" if device.type == "cuda" else "CPU").maskNet.eval()
    rows = []
    cases = [("crforge float32", ours, False), ("deepCR 0.3.1", theirs, False)]
    if device.type == "cuda":
        cases.insert(1, ("crforge float16 autocast", ours, True))
    for name, net, half in cases:
        def call(net=net, half=half):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=half):
                return net(x)
        _timed(call, device, 1)
        _peak_reset(device)
        times = _timed(call, device, repeat)
        rows.append({"method": name, "batch": n, "s_per_100_stamps": round(statistics.median(times) * 100 / n, 4),
                     "peak_gpu_mb": _peak_mb(device)})
    return rows


def infer_chip(device, shape: tuple[int, int]) -> list[dict]:
    """Seconds for one chip of ``shape`` (best of 3): crforge ``clean`` and deepCR ``clean``."""
    from crforge import deepcr_models

    rng = np.random.default_rng(2)
    img = (rng.normal(60, 8, shape) + (rng.random(shape) < 2e-3) * 800).astype(np.float32)
    ours = deepcr_models.load("synthetic-acs-wfc", device=str(device))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        from deepCR import deepCR
        theirs = deepCR(mask="ACS-WFC", device="GPU" if device.type == "cuda" else "CPU")
    rows = []
    for name, call in (("crforge clean", lambda: deepcr_models.clean(img, ours)),
                       ("deepCR 0.3.1 clean", lambda: theirs.clean(img, threshold=0.5))):
        _timed(call, device, 1)
        _peak_reset(device)
        times = _timed(call, device, 3)
        rows.append({"method": name, "shape": list(shape), "seconds": round(min(times), 3),
                     "peak_gpu_mb": _peak_mb(device)})
    return rows


def _table(title: str, rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = [f"\n{title}", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--train-stamps", type=int, default=2048, help="stamps timed per trainer (default 2048)")
    p.add_argument("--quick", action="store_true", help="small sizes (a CPU check of the script)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("benchmarks/gpu.py: torch sees no CUDA device; --device cpu --quick checks the "
                         "script on the CPU\n")
        return 2
    device = torch.device(args.device)
    n_train = 32 if args.quick else args.train_stamps
    chip = (1024, 1024) if args.quick else (2048, 4096)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = synth_file(Path(tmp) / "stamps.h5", n_train=max(n_train, 128), n_val=0)
        ours = train_crforge(data, n_train, device)
        train = [ours, train_deepcr(data, n_train, device, ours["workers"])]
    stamps = infer_stamps(device, 16, 2) if args.quick else infer_stamps(device)
    chips = infer_chip(device, chip)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}; {time.perf_counter() - t0:.0f} s in all")
    print(_table("training, 2-32 mask network, batch 16, 256x256 stamps", train))
    print(_table("mask inference, 256x256 stamps, float32 unless said", stamps))
    print(_table(f"mask inference, one {chip[0]}x{chip[1]} chip", chips))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "train": train, "stamps": stamps, "chip": chips},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
