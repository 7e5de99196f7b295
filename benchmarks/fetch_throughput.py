"""Fetch throughput from the loopback fake MAST, with 1 and 4 concurrent downloads.

Starts ``tests/fakemast.FakeMast`` on 127.0.0.1 serving the FLC files of a simulated
ACS/WFC visit (8 exposures of 2x512x1024: about 84 MB), then fetches them with
``crforge.pipeline.archive.download.fetch_visits`` (the code ``crforge fetch`` runs: HEAD, GET,
size check, rename) into a fresh directory with ``concurrency`` 1 and 4, twice:

- ``loopback``: as fast as the loopback server sends (CPU-bound on both ends);
- ``per-connection cap``: the server sleeps between 256 KiB chunks, so that one
  connection carries at most about 25 MB/s, like a remote server whose per-connection
  rate is the limit (where concurrent downloads pay off).

Then a resume: the first half of one file is left as ``<file>.part`` and the fetch
is run again; it prints the bytes transferred against the file size.

    python benchmarks/fetch_throughput.py --work /tmp/ft [--repeat 3] [--exposures 8]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _rate(v, dest: Path, concurrency: int) -> float:
    """MB/s of one fetch of visit ``v`` into ``dest`` (removed afterwards)."""
    from crforge.pipeline.archive.config import ArchiveConfig
    from crforge.pipeline.archive.download import fetch_visits

    t0 = time.perf_counter()
    res = fetch_visits([v], dest, ArchiveConfig(concurrency=concurrency, timeout=30), progress=False)
    dt = time.perf_counter() - t0
    assert all(f.status == "verified" for f in res[0].files), res
    shutil.rmtree(dest)
    return v.size / dt / 1e6


def _throughput(fake, v, work: Path, repeat: int) -> None:
    """Print the median rates with concurrency 1 and 4, on loopback and per-connection capped."""
    print(f"{'setting':<22} {'concurrency 1':>14} {'concurrency 4':>14}")
    for label, chunk, delay in (("loopback", 1 << 20, 0.0),
                                ("per-connection cap", 1 << 18, 0.01)):
        row = []
        for conc in (1, 4):
            rates = []
            for r in range(repeat):
                fake.reset()
                fake.chunk_bytes, fake.chunk_delay = chunk, delay
                rates.append(_rate(v, work / f"raw-{conc}-{r}", conc))
            row.append(statistics.median(rates))
        print(f"{label:<22} {row[0]:>9.0f} MB/s {row[1]:>9.0f} MB/s   (x{row[1] / row[0]:.2f})")


def _resume(fake, v, work: Path) -> None:
    """Fetch a file whose first half is left as ``<file>.part``; print what was sent."""
    from crforge.pipeline.archive.config import ArchiveConfig
    from crforge.pipeline.archive.download import fetch_file, part_path
    from crforge.pipeline.archive.visits import download_url

    fake.reset()
    e = v.exposures[0]
    data = fake.content(e.filename)
    dest = work / "resume" / e.filename
    dest.parent.mkdir(parents=True)
    part_path(dest).write_bytes(data[:e.size // 2])
    res = fetch_file(download_url(fake.url, e.filename), dest, e.size, ArchiveConfig(timeout=30))
    assert res.status == "verified" and dest.read_bytes() == data
    print(f"resume of a 50%-done file: {res.transferred} bytes transferred of {e.size} "
          f"({res.transferred / e.size:.1%}); server sent {fake.bytes_sent[e.filename]} bytes; "
          f"Range: {[r.range for r in fake.requests_for(e.filename) if r.method == 'GET']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch directory (emptied)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per setting (median reported)")
    ap.add_argument("--exposures", type=int, default=8, help="files served")
    ap.add_argument("--size", default="512x1024", help="chip shape NYxNX of the simulated files")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from astroquery.mast import conf
    from fakemast import FakeMast

    from crforge.pipeline.archive.config import ArchiveConfig
    from crforge.pipeline.archive.query import Criteria, find_visits
    from crforge.pipeline.simulate.config import SimulateConfig
    from crforge.pipeline.simulate.visit import simulate_visit

    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ny, nx = (int(t) for t in args.size.split("x"))
    visit = simulate_visit(SimulateConfig(chip_shape=(ny, nx), n_exposures=args.exposures, proposal_id=10775,
                                          obset_id="ab", filter="F606W", seed=1, density=0.2), work / "sim")
    fake = FakeMast(executing_polls=0).start()
    fake.add_visit(visit, proposal_id=10775, filter="F606W")
    try:
        with conf.set_temp("server", fake.url):
            (v,) = find_visits(Criteria(proposal_ids=(10775,)), ArchiveConfig(timeout=30))
            print(f"{len(v.exposures)} files, {v.size / 1e6:.1f} MB from {fake.url} (2-core machine, "
                  f"median of {args.repeat})")
            _throughput(fake, v, work, args.repeat)
            _resume(fake, v, work)
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
