"""Training data from disk: the DataLoader's stamps/s against the network's own, side by side.

In one run on one data set:

1. the training loader alone (``StampDataset`` streaming stamps from the HDF5 file with
   sky augmentation, flips and rotations, batches of 16, pinned memory off), with 0, 1
   and 2 DataLoader workers: stamps/s over ``--stamps`` stamps (the same ones each
   time, read once untimed first so that every case sees the same warm page cache),
   workers started within the timing;
2. the 2-32 mask network's training step alone on one batch already in memory
   (float32 and, where the CPU has bfloat16 instructions, bfloat16 autocast): stamps/s.

The loader is not the limit while (1) with the workers you give it exceeds (2). On a
GPU, where (2) is some hundred times larger, (1) says how many workers a GPU needs.

With ``--cold`` (for a data set larger than the memory) each case reads other stamps
(another epoch's random order, none read before), after asking the kernel to drop its
page cache where that is allowed (root): the rate from disk, as in the first epochs
of a long training.

    python benchmarks/loader_throughput.py --data work/synthetic-acs-wfc.h5
    python benchmarks/loader_throughput.py --data big.h5 --stamps 2048 --workers 0 1 2 4 --cold
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _drop_page_cache() -> bool:
    """Ask the kernel to drop clean cached pages (root only); whether it did."""
    import os

    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def loader_rate(data: Path, workers: int, stamps: int, epoch: int = 0) -> dict:
    """Stamps/s of the training loader with ``workers`` workers over ``stamps`` stamps
    (the first ``stamps`` of epoch ``epoch``'s random order)."""
    import torch
    from torch.utils.data import DataLoader

    from crforge.training.config import TrainConfig
    from crforge.training.data import EpochSampler, StampDataset

    cfg = TrainConfig()
    ds = StampDataset(data, "train", "mask", cfg.augment, seed=0, **cfg.data_options())
    sampler = EpochSampler(len(ds), 0, True, stamps)
    sampler.set_epoch(epoch)
    loader = DataLoader(ds, batch_size=16, num_workers=workers, sampler=sampler)
    # one thread, as in a worker: with 0 workers the batches are collated here, and idle
    # OpenMP threads spinning on a busy machine would be timed instead of the loader
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    n = sum(batch["image"].shape[0] for batch in loader)
    seconds = time.perf_counter() - t0
    return {"what": f"loader, {workers} worker(s)", "stamps": n, "stamps_per_s": round(n / seconds, 1)}


def model_rate(bf16: bool, steps: int = 4) -> dict:
    """Stamps/s of the 2-32 mask network's training step on a batch of 16 in memory."""
    import torch

    from crforge.training.models import build_model
    from crforge.training.train import mask_loss

    torch.manual_seed(0)
    model = build_model("mask", 2, 32).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(16, 1, 256, 256).to(memory_format=torch.channels_last)
    y = (torch.rand(16, 1, 256, 256) < 0.01).float()
    w = torch.ones_like(y)

    def step():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = mask_loss(model(x), y, w)
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t0
    return {"what": f"2-32 mask network step ({'bfloat16' if bf16 else 'float32'})", "stamps": 16 * steps,
            "stamps_per_s": round(16 * steps / seconds, 2)}


def main(argv=None) -> int:
    from crforge.training.train import cpu_bf16_enabled

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="HDF5 training set")
    p.add_argument("--stamps", type=int, default=512, help="stamps per loader measurement (default 512)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cold", action="store_true", help="other stamps per case, page cache dropped first")
    args = p.parse_args(argv)
    if args.cold:
        rows = []
        for i, w in enumerate(args.workers):
            dropped = _drop_page_cache()
            r = loader_rate(args.data, w, args.stamps, epoch=1 + i)
            rows.append({**r, "what": r["what"] + (", cold (page cache dropped)" if dropped else
                                                   ", stamps not read before")})
    else:
        loader_rate(args.data, 0, args.stamps)  # warm the page cache: every case reads the same stamps
        rows = [loader_rate(args.data, w, args.stamps) for w in args.workers]
    rows.append(model_rate(False))
    if cpu_bf16_enabled("auto"):
        rows.append(model_rate(True))
    print(f"{args.data} ({args.data.stat().st_size / 2 ** 20:.0f} MiB)")
    print("| what | stamps | stamps/s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['stamps']} | {r['stamps_per_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
