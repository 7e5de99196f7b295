"""``crforge train``: train the mask and inpaint networks on an HDF5 training set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crforge.cli.runconfig import RunConfig
from crforge.errors import InputError
from crforge.paths import check_writable_dir

CONFIG = RunConfig
SECTION = "train"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crforge train`` (the same under ``torchrun``, see docs/training.md)."""
    parser.add_argument("--data", type=Path, required=True, help="HDF5 training set (schema v1 or v2)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs directory (default: runs)")
    parser.add_argument("--kind", choices=("mask", "inpaint", "both"), default="both",
                        help="which network: mask, inpaint, or both one after the other (default); "
                        "the mask network trains train.epochs epochs, the inpaint network "
                        "train.inpaint_epochs")
    parser.add_argument("--name", help="run name (default: the data file's stem); the run directory "
                        "is RUNS/<name>, each network in RUNS/<name>/<kind>/")
    parser.add_argument("--resume", action="store_true", help="continue the run(s) from last.pt")
    parser.add_argument("--init", type=Path, help="start from the weights of this checkpoint or zoo "
                        "weights file (one --kind), or from deepCR 0.3.1's published mask model: "
                        "deepcr:ACS-WFC, deepcr:WFC3-UVIS or (a 2-4 network) deepcr:ACS-WFC-F606W-2-4 "
                        "(default: train.init_mask, "
                        "train.init_inpaint)")
    parser.add_argument("--wait", action="store_true", help="wait for another run training into the "
                        "same run directory instead of refusing (exit 2)")


def run(args: argparse.Namespace, cfg: RunConfig) -> int:
    """Train the network(s) one after the other; print where each best model is.

    Under ``torchrun`` every process runs this; they train together with DDP
    (:mod:`crforge.training.distributed`) and rank 0 alone writes and prints.
    """
    from crforge.training import distributed as ddp

    world = ddp.world_from_env()
    ddp.init_process_group(world, device=cfg.train.device)
    ok = False
    try:
        rc = _run(args, cfg, world)
        ok = True
        return rc
    finally:
        ddp.shutdown(ok=ok)


def _run(args: argparse.Namespace, cfg: RunConfig, world) -> int:
    from crforge.training.train import main

    kinds = ["mask", "inpaint"] if args.kind == "both" else [args.kind]
    if args.init is not None and len(kinds) > 1:
        raise InputError("--init needs --kind mask or --kind inpaint (a checkpoint holds one model)")
    if not Path(args.data).is_file():
        raise FileNotFoundError(2, "No such file or directory", str(args.data))
    name = args.name or Path(args.data).stem
    check_writable_dir(args.runs, what="--runs directory")
    if world.main and kinds == ["inpaint"]:
        _warn_mask_epochs(cfg.train)
    results = []
    for kind in kinds:
        kcfg = cfg.train.for_kind(kind)  # the inpaint network's epochs are train.inpaint_epochs
        res = main(kcfg, args.data, Path(args.runs) / name / kind, resume=args.resume, init=args.init,
                   wait=args.wait)
        results.append(res)
        if world.main:
            sys.stdout.write(_summary_line(res, kcfg.val_fpr))
    for res in results if world.main else ():
        sys.stdout.write(f"{res['kind']}: {res['run_dir']} ({res['seconds']:.0f} s)\n")
    return 0


def _warn_mask_epochs(train) -> None:
    """Say so when ``train.epochs`` was changed for an inpaint run, which it does not steer."""
    from crforge.training.config import TrainConfig

    default = TrainConfig()
    if train.epochs != default.epochs and train.inpaint_epochs == default.inpaint_epochs:
        sys.stderr.write(f"crforge train: warning: train.epochs={train.epochs} sets the mask network's "
                         f"epochs; the inpaint network trains train.inpaint_epochs={train.inpaint_epochs} "
                         "(set that instead)\n")


def _summary_line(res: dict, fpr: float) -> str:
    val = res["val"]
    parts = [f"{res['kind']} model: {res['best']} (epoch {res['best_epoch']} of {res['epochs_done']})"]
    if "val_loss" in val:
        parts.append(f"val loss {val['val_loss']:.5g}")
    if "tpr_at_fpr" in val:
        by = ", ".join(f"{ft} {d['tpr_at_fpr']:.2%}" for ft, d in val.get("by_field_type", {}).items())
        parts.append(f"TPR at {fpr:.1%} FPR {val['tpr_at_fpr']:.2%} ({by})")
    elif res["kind"] == "inpaint" and val.get("by_field_type"):
        by = ", ".join(f"{ft} {d['mse']:.4g}" for ft, d in val["by_field_type"].items())
        parts.append(f"MSE by field type ({by})")
    return "; ".join(parts) + "\n"
