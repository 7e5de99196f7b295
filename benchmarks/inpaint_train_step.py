"""Training step time of the residual inpaint network against crforge's first design.

Both 2-32 inpaint networks (``fill='median5'``: the masked median, its harmonic
smoothing, the relative loss; ``fill='none'``: masked pixels zeroed, the MSE) take
optimizer steps on the same batches of a data set's train split (batch 16, as ``make
train``), alternating one step each so that a machine shared with other work slows
both alike. Prints the median seconds per step of each and their ratio: the factor
by which the inpaint half of ``make train`` changes.

Usage::

    .venv/bin/python benchmarks/inpaint_train_step.py --data work/synthetic-acs-wfc.h5 [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import torch
    from torch.utils.data import DataLoader

    from crforge.training.config import TrainConfig
    from crforge.training.data import EpochSampler, StampDataset
    from crforge.training.models import build_model
    from crforge.training.train import batch_loss

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(kind="inpaint")
    ds = StampDataset(args.data, "train", "inpaint", cfg.augment, 0, **cfg.data_options())
    loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=EpochSampler(len(ds), 0, limit=args.steps * 16))
    nets = {}
    for fill in ("median5", "none"):
        torch.manual_seed(0)
        net = build_model("inpaint", 2, 32, fill=fill).to(memory_format=torch.channels_last).train()
        nets[fill] = (net, torch.optim.Adam(net.parameters(), lr=cfg.lr))
    times: dict[str, list[float]] = {k: [] for k in nets}
    for batch in loader:
        for fill, (net, opt) in nets.items():
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = batch_loss(net, batch, "inpaint", relative=fill != "none")
            loss.backward()
            opt.step()
            times[fill].append(time.perf_counter() - t)
    med = {k: statistics.median(v[1:] or v) for k, v in times.items()}
    print(f"{args.threads} threads, {len(times['none'])} steps of {cfg.batch_size} stamps")
    print(f"residual (fill=median5): {med['median5']:.2f} s/step; first design (fill=none): "
          f"{med['none']:.2f} s/step; ratio {med['median5'] / med['none']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
