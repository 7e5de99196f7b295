"""One full ACS/WFC chip (4096x2048) through crforge's clean, deepCR 0.3.1 and astroscrappy.

Each method runs in its own child process, so that its peak memory (the child's
maximum resident set size, ``resource.getrusage``) is its own; every child is limited
to ``--threads`` threads (torch threads and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``).

- ``crforge``: :func:`crforge.deepcr_models.clean` (mask only) with a 2-32 mask model: the
  first 2-32 mask model of the zoo, else deepCR's own ACS-WFC weights converted
  (``deepcr:ACS-WFC``: the very network deepCR runs). float32, default tiling
  (1024-pixel tiles, receptive-radius overlap), with the record's number of symmetric
  views (``views``: 8 for ``synthetic-acs-wfc``, a pass of the network each).
- ``crforge-1view``: the same with ``views=1`` (one pass; the record's threshold for one
  view), the speed of one view.
- ``crforge-2-4``: the same call with a deepCR-2-4 network (the paper's fast model; the
  zoo's if it has one, else deepCR's own 2-4 file converted,
  ``deepcr:ACS-WFC-F606W-2-4``), for the speed a smaller network buys (its masks are
  not comparable).
- ``crforge-bf16``: the 2-32 model with ``precision='bfloat16'`` (CPU autocast), with the
  fraction of pixels whose mask differs from float32.
- ``crforge-inpaint``: ``clean(image, mask_model, inpaint_model)``, the 2-32 mask model
  and the shipped ``synthetic-acs-wfc`` inpaint model (a residual 2-32 network on the
  masked-median base, with its step floor and core guard; its trained weights, since
  the guard fits only where the network takes a positive step); ``inpaint_s`` is the
  inpainting alone (the same call given the mask). ``crforge-inpaint-noguard``: the
  same weights without the guard (``core_guard = 0``), for the guard's cost. Random
  weights of the architecture (the time of these does not depend on them):
  ``crforge-inpaint-linear``, the first residual design's correction
  (``head='linear'``); ``crforge-inpaint-d3``, a depth-3 residual network;
  ``crforge-inpaint-starfit``, with the star-fit channels (``star_fit = 0.85``);
  ``crforge-inpaint-legacy``, crforge's first, non-residual inpaint design
  (``fill='none'``), for the speed before and after; ``crforge-inpaint-legacy-dense``,
  the same run as it was before the network's last block ran only at the masked
  pixels (``UNet.forward_at``): the whole UNet on every tile. The fills are compared at the end.
- ``deepcr``: ``deepCR(mask='ACS-WFC').clean(image, threshold=0.5)`` (its defaults:
  1024-pixel patches without overlap, one job).
- ``astroscrappy``: ``astroscrappy.detect_cosmics(image)`` with its defaults.
- With a GPU (``torch.cuda.is_available()``) also ``crforge-cuda`` and ``deepcr-gpu``.

The image is one chip of a simulated globular-cluster exposure (``crforge.pipeline.simulate``,
500 s, F606W), in electrons, cached in ``--work``. Times are of the call alone
(the model is loaded first; ``load_s`` is reported separately), one call each
(``--repeat`` for more; the minimum is reported).

Usage::

    .venv/bin/python benchmarks/clean_frame.py [--work /tmp/cf] [--threads 2] [--methods ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The inpaint methods: how each one's network differs from ``crforge-inpaint``'s.
#: ``zoo``: the shipped inpaint model's trained weights (the core guard's time depends on
#: them: it fits only where a positive step is taken), with ``core_guard`` if given;
#: otherwise random weights of the design (``head`` ``asinh`` unless given, no floor or guard).
INPAINT_VARIANTS = {"crforge-inpaint": {"zoo": True},
                    "crforge-inpaint-noguard": {"zoo": True, "core_guard": 0.0},
                    "crforge-inpaint-linear": {"head": "linear"}, "crforge-inpaint-d3": {"depth": 3},
                    "crforge-inpaint-starfit": {"star_fit": 0.85}, "crforge-inpaint-legacy": {"fill": "none"},
                    "crforge-inpaint-legacy-dense": {"fill": "none", "dense": True}}
METHODS = ("crforge", "crforge-1view", "crforge-bf16", "crforge-2-4", *INPAINT_VARIANTS, "deepcr",
           "astroscrappy")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_image(work: Path) -> Path:
    """One 4096x2048 chip of a simulated exposure, as .npy (cached)."""
    path = work / "chip.npy"
    if path.exists():
        return path
    from astropy.io import fits

    from crforge.pipeline.simulate.config import SimulateConfig
    from crforge.pipeline.simulate.visit import simulate_visit

    cfg = SimulateConfig(n_exposures=1, field_type="globular_cluster", exptime=500.0, seed=7)
    visit = simulate_visit(cfg, work / "raw")
    flc = next(visit.glob("*_flc.fits"))
    with fits.open(flc) as h:
        img = h["SCI", 1].data.astype(np.float32)
        np.save(work / "dq.npy", h["DQ", 1].data)
    np.save(path, img)
    return path


def _zoo_mask_model(depth: int = 2, width: int = 32) -> str:
    """The zoo's first mask model of this shape, else deepCR's own weights of it."""
    from crforge import deepcr_models
    from crforge.training.deepcr import DEEPCR_MODELS

    for r in deepcr_models.list_models(kind="mask"):
        if (r.depth, r.width) == (depth, width):
            return r.name
    # deepCR's ACS-WFC 2-32, its fast 2-4 file
    for name, m in DEEPCR_MODELS.items():
        if depth == 2 and m.width == width and m.batch_norm:
            return f"deepcr:{name}"
    raise ValueError(f"no mask model of depth {depth}, width {width} in the zoo or deepCR's files")


def _inpaint_weights(work: Path, fill: str = "median5", head: str = "asinh", depth: int = 2,
                     star_fit: float = 0.0) -> str:
    """An inpaint network (width 32) of the given base fill, head, depth and star fit, random
    weights (seeded), as a weights file (no step floor or core guard: the shipped model's
    variants, :func:`_zoo_inpaint`, time those)."""
    import torch

    from crforge.training import checkpoint
    from crforge.training.data import normalisation_info
    from crforge.training.models import build_model

    torch.manual_seed(0)
    net = build_model("inpaint", depth, 32, fill=fill, head=head, star_fit=star_fit)
    with torch.no_grad():  # the residual network starts at its fill: give it a correction
        net.unet.outc.weight.normal_(0.0, 0.01)
    path = work / f"inpaint-{fill}-{head}-{depth}{'-sf' if star_fit else ''}.pt"
    checkpoint.write_weights(path, checkpoint.Checkpoint(
        kind="inpaint", model_config={"depth": depth, "width": 32, "batch_norm": True, "bn_momentum": 0.1,
                                      "fill": fill, "head": head, "star_fit": star_fit,
                                      "step_floor": 0.0, "core_guard": 0.0},
        state_dict=net.state_dict(), normalisation=normalisation_info(100.0, True)))
    return str(path)


def _zoo_inpaint(work: Path, core_guard: float | None = None) -> str:
    """The shipped ``synthetic-acs-wfc`` inpaint model, as a weights file with ``core_guard`` if given."""
    from crforge.deepcr_models import registry as reg
    from crforge.training import checkpoint

    rec, zdir = next((r, z) for r, z in reg.all_records()
                     if r.name == "synthetic-acs-wfc" and r.kind == "inpaint")
    if core_guard is None:
        return str(zdir / rec.weights)
    ck = checkpoint.read(zdir / rec.weights)
    path = work / f"inpaint-zoo-guard{core_guard}.pt"
    checkpoint.write_weights(path, checkpoint.Checkpoint(
        kind="inpaint", model_config={**ck.model_config, "core_guard": core_guard},
        state_dict=ck.state_dict, normalisation=ck.normalisation))
    return str(path)


def _timed(call, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - t)
    return min(times), result


def _inpaint_worker(method: str, img: np.ndarray, threads: int, repeat: int, res: dict, out: Path) -> None:
    """An :data:`INPAINT_VARIANTS` method: clean with inpainting, and the inpainting alone."""
    from crforge import deepcr_models

    mask_model = deepcr_models.load(_zoo_mask_model())
    spec = dict(INPAINT_VARIANTS[method])
    if spec.pop("dense", False):  # the whole UNet on every tile, as before UNet.forward_at
        from crforge.training.models import UNet

        UNet.DENSE_FRACTION = -1.0
    weights = (_zoo_inpaint(out.parent, spec.get("core_guard")) if spec.pop("zoo", False)
               else _inpaint_weights(out.parent, **spec))
    inp = deepcr_models.load(weights)
    res["model"] = f"{mask_model.source} + {inp.source}"
    res["seconds"], (mask, cleaned) = _timed(
        lambda: deepcr_models.clean(img, mask_model, inp, threads=threads), repeat)
    res["inpaint_s"], _ = _timed(lambda: deepcr_models.inpaint(img, mask, inp, threads=threads), repeat)
    res["peak_rss_mb"] = round(_rss_mb(), 1)
    res["cr_pixels"] = int(mask.sum())
    np.save(out.with_suffix(".npy"), mask)
    np.save(out.with_name(out.stem + "-cleaned.npy"), cleaned)
    out.write_text(json.dumps(res))


def worker(method: str, image_path: Path, threads: int, repeat: int, out: Path) -> None:
    """Run one method in this (child) process and write its figures as JSON."""
    import torch

    torch.set_num_threads(threads)
    img = np.load(image_path)
    res = {"method": method, "threads": threads}
    t0 = time.perf_counter()
    if method.startswith("crforge-inpaint"):
        res["load_s"], res["rss_before_mb"] = 0.0, round(_rss_mb(), 1)
        return _inpaint_worker(method, img, threads, repeat, res, out)
    if method.startswith("crforge"):
        from crforge import deepcr_models
        device = "cuda" if method == "crforge-cuda" else "cpu"
        name = _zoo_mask_model(2, 4) if method == "crforge-2-4" else _zoo_mask_model()
        model = deepcr_models.load(name, device=device)
        res["model"] = name
        precision = "bfloat16" if method == "crforge-bf16" else "float32"
        views = 1 if method == "crforge-1view" else None
        res["views"] = model.views if views is None else views

        def call():
            return deepcr_models.clean(img, model, precision=precision, threads=threads, views=views)[0]
    elif method.startswith("deepcr"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from deepCR import deepCR

            model = deepCR(mask="ACS-WFC", device="GPU" if method == "deepcr-gpu" else "CPU")

        def call():
            return model.clean(img, threshold=0.5) > 0
    elif method == "astroscrappy":
        import astroscrappy

        def call():
            return astroscrappy.detect_cosmics(img)[0]
    else:
        raise ValueError(f"method={method!r}: expected one of {METHODS} (+ crforge-cuda, deepcr-gpu)")
    res["load_s"] = round(time.perf_counter() - t0, 3)
    res["rss_before_mb"] = round(_rss_mb(), 1)
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        mask = call()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    res["seconds"] = round(min(times), 3)
    res["peak_rss_mb"] = round(_rss_mb(), 1)
    res["cr_pixels"] = int(np.asarray(mask).sum())
    np.save(out.with_suffix(".npy"), np.asarray(mask, bool))
    out.write_text(json.dumps(res))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/crforge-clean-frame"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "make-image":
        make_image(args.image.parent)
        return 0
    if args.worker:
        worker(args.worker, args.image, args.threads, args.repeat, args.out)
        return 0

    import torch

    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.work / "chip.npy").exists():
        # simulated in a child of its own: Linux carries a process's peak memory across
        # fork and exec, so a parent grown by the simulation would inflate the peak
        # memory reported for every method
        subprocess.run([sys.executable, __file__, "--worker", "make-image", "--image", str(args.work / "chip.npy")],
                       check=True)
    image = make_image(args.work)
    methods = list(args.methods or METHODS)
    if args.methods is None and torch.cuda.is_available():
        methods += ["crforge-cuda", "deepcr-gpu"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    results = {}
    for m in methods:
        out = args.work / f"{m}.json"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--worker", m, "--image", str(image), "--threads",
               str(args.threads), "--repeat", str(args.repeat), "--out", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            print(f"{m}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[m] = json.loads(out.read_text())
    # masks against crforge float32 (bf16: how many pixels move at the threshold)
    if "crforge" in results:
        ref = np.load(args.work / "crforge.npy")
        for m in [m for m in results if m != "crforge-2-4"]:
            other = np.load(args.work / f"{m}.npy")
            results[m]["mask_differs_from_crforge"] = float((other != ref).mean())
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"one {np.load(image, mmap_mode='r').shape[1]}x{np.load(image, mmap_mode='r').shape[0]} chip, "
          f"{args.threads} threads, {os.cpu_count()} CPUs, {dev}")
    print(f"{'method':14s} {'seconds':>8s} {'peak MB':>8s} {'(before)':>9s} {'CR px':>8s} {'diff vs crforge':>16s}")
    for m, r in results.items():
        print(f"{m:14s} {r['seconds']:8.2f} {r['peak_rss_mb']:8.0f} {r['rss_before_mb']:9.0f} "
              f"{r['cr_pixels']:8d} {r.get('mask_differs_from_crforge', float('nan')):16.2e}")
    if "crforge" in results:
        base = results["crforge"]["seconds"]
        for m in ("deepcr", "astroscrappy"):
            if m in results:
                print(f"crforge is {results[m]['seconds'] / base:.2f}x faster than {m}")
        for fast in ("crforge-1view", "crforge-bf16", "crforge-2-4"):
            if fast not in results:
                continue
            for m in ("deepcr", "astroscrappy"):
                if m in results:
                    print(f"{fast} is {results[m]['seconds'] / results[fast]['seconds']:.2f}x faster than {m}")
    _inpaint_summary(results, args.work)
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    return 0


def _inpaint_summary(results: dict, work: Path) -> None:
    """The inpainting times of the shipped model and the other designs side by side."""
    for m in INPAINT_VARIANTS:
        if m in results:
            print(f"{m}: clean with inpainting {results[m]['seconds']:.2f} s, inpainting alone "
                  f"{results[m]['inpaint_s']:.2f} s")
    for ref in list(INPAINT_VARIANTS)[1:]:
        if "crforge-inpaint" in results and ref in results:
            new, old = results["crforge-inpaint"], results[ref]
            print(f"crforge-inpaint / {ref}: clean {new['seconds'] / old['seconds']:.2f}x, "
                  f"inpainting {new['inpaint_s'] / old['inpaint_s']:.2f}x the time")


if __name__ == "__main__":
    sys.exit(main())
