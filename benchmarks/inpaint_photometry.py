"""Photometry of inpaint networks on every star of a split, each hit by several CR shapes.

``crforge evaluate`` hits each star once (30 extragalactic stars on its default 64
stamps per field type); the 90th percentile of so few moves by a point between seeds of
the same training. Here every stamp of the split is used and each star is hit by
``--hits`` CR shapes (the hits of ``crforge evaluate`` with ``evaluate.seed`` 0, 1, ...),
and the flux errors are pooled. ``--floor`` applies each given ``model.step_floor`` to
the same UNet output (the network runs once per hit seed), so a sweep costs one pass;
so does ``--core-guard`` (``model.core_guard``; every floor with every guard).

    .venv/bin/python benchmarks/inpaint_photometry.py --data work/synthetic-acs-wfc.h5 \\
        --model synthetic-acs-wfc --split val --floor 0 0.1 0.15 0.2 0.3 0.5
    .venv/bin/python benchmarks/inpaint_photometry.py --data work/synthetic-acs-wfc.h5 \\
        --model synthetic-acs-wfc --split val --core-guard 0 0.02 0.03 0.05 0.08 0.1 0.15

A ``--model`` is a zoo name (its inpaint model) or a checkpoint or weights file. Without
``--floor`` (``--core-guard``) each model runs with its own. Biharmonic, the best classical fill of
isolated objects, is in every run. Prints one line per model and floor: median /
90th percentile of the absolute fractional aperture-flux error (%) per field type.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np


def _network(spec: str):
    from crforge.deepcr_models import registry as reg
    from crforge.training import checkpoint

    for rec, zdir in reg.all_records():
        if rec.name == spec and rec.kind == "inpaint":
            return checkpoint.load_checkpoint(zdir / rec.weights, kind="inpaint")
    return checkpoint.load_checkpoint(spec, kind="inpaint")


def _network_fills(net, x: np.ndarray, hits: np.ndarray, keep: np.ndarray, floors: list[float],
                   guards: list[float]) -> dict:
    """The network's fill of the hit stamps at each (floor, guard), from one pass of its UNet."""
    import itertools

    import torch

    settings = list(itertools.product(floors, guards))
    fills = {fg: np.empty_like(x) for fg in settings}
    with torch.inference_mode():
        for i in range(0, len(keep), 16):
            idx = keep[i:i + 16]
            xb = torch.from_numpy(x[idx])[:, None]
            mb = torch.from_numpy(hits[idx].astype(np.float32))[:, None]
            inputs, base, smooth = net.planes(xb, mb)
            out = net.unet(inputs)
            pedestal = net.pedestal(xb, mb) if any(guards) else None
            for f, g in settings:
                net.step_floor = f
                guard = (pedestal > g).float() if g else None
                fills[f, g][idx] = (xb * (1 - mb) + net.correct(out, base, smooth, guard) * mb)[:, 0].numpy()
    return fills


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the HDF5 data set")
    p.add_argument("--model", action="append", required=True, help="zoo name or checkpoint (repeatable)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--hits", type=int, default=4, help="CR shapes per star (hit seeds 0..N-1)")
    p.add_argument("--floor", type=float, nargs="+", help="step floors to apply (default: each model's)")
    p.add_argument("--core-guard", type=float, nargs="+",
                   help="core guards to apply, 0 = none (default: each model's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from crforge.training.evaluate.config import EvaluateConfig
    from crforge.training.evaluate.data import inference_copy, load_stamps, normalised
    from crforge.training.evaluate.inpainting import fill
    from crforge.training.evaluate.photometry import (
        _cr_shapes,
        _error_stats,
        _flux_errors,
        _hits,
    )

    torch.set_num_threads(args.threads)
    data = load_stamps(args.data, args.split, per_field_type=0)
    shapes = _cr_shapes(data["cr"])
    nets = {spec: _network(spec) for spec in args.model}
    scales = {spec: float(ckpt.normalisation["scale"]) for spec, (_, ckpt) in nets.items()}
    if len(set(scales.values())) > 1:  # the hits and biharmonic's fill are in one normalisation
        sys.stderr.write(f"--model: the models normalise by different scales {scales}\n")
        return 2
    x = normalised(data, next(iter(nets.values()))[1])
    scale, cfg = next(iter(scales.values())), EvaluateConfig()
    rows: dict[str, list] = {"biharmonic": []}
    for seed in range(args.hits):
        cfg = dataclasses.replace(cfg, seed=seed, stamps_per_field_type=0)
        sites, hits = _hits(data, x, shapes, scale, cfg)
        keep = np.flatnonzero(hits.reshape(len(x), -1).any(axis=1))
        fills = {"biharmonic": np.empty_like(x)}
        fills["biharmonic"][keep] = fill("biharmonic", x[keep], hits[keep], batch_size=16,
                                         threads=args.threads)
        names = {"biharmonic": "biharmonic"}
        for spec, (model, _) in nets.items():
            net = inference_copy(model)
            floors = args.floor if args.floor is not None else [net.step_floor]
            guards = args.core_guard if args.core_guard is not None else [net.core_guard]
            for (f, g), filled in _network_fills(net, x, hits, keep, floors, guards).items():
                names[(spec, f, g)] = f"{spec} floor {f:g} core_guard {g:g}"
                fills[(spec, f, g)] = filled
        found = _flux_errors(x, hits, fills, sites, data["field_type"], cfg.aperture_radius)
        for key, name in names.items():
            rows.setdefault(name, []).extend(found[key])
    figures = {name: _error_stats(r) for name, r in rows.items()}
    for name, st in figures.items():
        cells = [f"{ft} {100 * v['median_abs']:.2f} / {100 * v['p90_abs']:.2f}% (n={v['n']})"
                 for ft, v in st.items()]
        sys.stdout.write(f"{name}: " + " | ".join(cells) + "\n")
    if args.json:
        doc = {"split": args.split, "hits": args.hits, "figures": figures}
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
