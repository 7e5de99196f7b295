"""Write a manifest of simulated visits that gives at least ``--stamps`` stamps (a large data set).

Rows cycle over the three field types, the default set's three filters and 2, 3 and 4
exposures (the mix of ``data_manifests/synthetic-acs-wfc.toml``), each its own field.
The number of visits is computed from the stamps one exposure gives: every 256x256
stamp of each chip (stamps with too many ignored pixels are dropped by the dataset
stage, so the count is an upper bound: ask for a few per cent more).

    python benchmarks/large_manifest.py --stamps 100000 --out /tmp/large.toml
    python benchmarks/large_manifest.py --stamps 100000 --chip-shape 2048 4096 --out /tmp/large-full.toml
    crforge dataset --manifest /tmp/large.toml --work /tmp/large        # then build it
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

FIELDS = ("extragalactic", "globular_cluster", "resolved_galaxy")
FILTERS = (("F435W", 600.0), ("F606W", 500.0), ("F814W", 450.0))
EXPOSURES = (2, 3, 4)


def rows(stamps: int, chip_shape: tuple[int, int], stamp: int = 256, chips: int = 2) -> list[dict]:
    """Visit rows whose exposures hold at least ``stamps`` stamps."""
    per_exposure = (chip_shape[0] // stamp) * (chip_shape[1] // stamp) * chips
    if per_exposure == 0:
        raise SystemExit(f"--chip-shape {chip_shape}: smaller than one {stamp}x{stamp} stamp")
    out, total = [], 0
    mix = itertools.product(EXPOSURES, FILTERS, FIELDS)  # every field type in every 3 rows
    for n_exp, (filt, exptime), field in itertools.cycle(list(mix)):
        if total >= stamps:
            break
        out.append({"field_type": field, "filter": filt, "n_exposures": n_exp, "exptime": exptime,
                    "dither": "box" if n_exp > 2 else "line"})
        total += n_exp * per_exposure
    return out


def main(argv=None) -> int:
    import tomli_w

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stamps", type=int, required=True, help="stamps wanted (at least)")
    p.add_argument("--chip-shape", type=int, nargs=2, default=(1024, 2048), metavar=("NY", "NX"),
                   help="chip shape (default 1024 2048, the default set's quarter chips)")
    p.add_argument("--seed", type=int, default=5000)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.out.exists():
        sys.stderr.write(f"{args.out} exists; not overwritten\n")
        return 2
    visits = rows(args.stamps, tuple(args.chip_shape))
    name = args.out.stem
    doc = {"name": name, "description": f"{len(visits)} simulated ACS/WFC visits for at least "
           f"{args.stamps} stamps (benchmarks/large_manifest.py)", "seed": args.seed,
           "defaults": {"source": "simulate", "instrument": "ACS/WFC", "chip_shape": list(args.chip_shape)},
           "visit": visits}
    args.out.write_text(tomli_w.dumps(doc))
    n_exp = sum(v["n_exposures"] for v in visits)
    print(f"{args.out}: {len(visits)} visits, {n_exp} exposures, up to "
          f"{n_exp * math.prod(s // 256 for s in args.chip_shape) * 2} stamps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
