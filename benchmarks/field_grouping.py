"""Grouping visits into sky fields: the k-d tree search against comparing every pair, side by side.

``crforge dataset`` groups the visits of a manifest into fields by footprint overlap
(:func:`crforge.pipeline.splits.group_fields`) before it splits them. Comparing every
pair of visits grows as N^2 (on the 534-visit, 100,000-stamp manifest it took 6.5
minutes of the build); the k-d tree on the visits' bounding caps compares only the
pairs that can touch. This script times both on N visits with the footprints of
simulated full-size ACS/WFC visits (two chips per exposure, 2-4 exposures, dithered)
scattered over the sky, a tenth of them revisiting another visit's field, checks that
they find the same fields, and prints a table.

    python benchmarks/field_grouping.py
    python benchmarks/field_grouping.py --n 100 300 1000 --all-pairs-max 300
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def footprints(n: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """N visits of 2-4 exposures x 2 chips (about 202" x 101" each), positions random on the sky."""
    rng = np.random.default_rng(seed)
    out = {}
    chip = np.array([[0, 0], [202, 0], [202, 101], [0, 101]], float) / 3600  # degrees
    for k in range(n):
        if k and rng.random() < 0.1:  # a revisit of an earlier field
            ra, dec = out[f"v{rng.integers(0, k):06d}"][0][0] + rng.normal(0, 0.01, 2)
        else:
            ra, dec = rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1)))
        quads = []
        for e in range(rng.integers(2, 5)):
            for c in range(2):
                q = chip + [e * 0.4 / 3600, c * 103 / 3600]
                quads.append(np.c_[(ra + q[:, 0] / np.cos(np.radians(dec + q[:, 1]))) % 360,
                                   np.clip(dec + q[:, 1], -90, 90)])
        out[f"v{k:06d}"] = quads
    return out


def main(argv=None) -> int:
    from crforge.pipeline.splits import group_fields

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100, 300, 534, 5000, 50000])
    ap.add_argument("--all-pairs-max", type=int, default=534, help="largest N the all-pairs peer runs on")
    args = ap.parse_args(argv)
    print("| visits | fields | k-d tree, s | all pairs, s | same fields |\n|---|---|---|---|---|")
    for n in args.n:
        fp = footprints(n)
        t0 = time.perf_counter()
        got = group_fields(fp)
        t_tree = time.perf_counter() - t0
        if n <= args.all_pairs_max:
            t0 = time.perf_counter()
            ref = group_fields(fp, search="all-pairs")
            t_all, same = f"{time.perf_counter() - t0:.2f}", str(got == ref)
        else:
            t_all, same = "not run", "-"
        print(f"| {n} | {len(set(got.values()))} | {t_tree:.2f} | {t_all} | {same} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
