"""The HDF5 writer's throughput against what one dask worker produces: does the writer limit the workers?

``crforge dataset`` has one writing process: the workers label visits, cut stamps and
compress them (:func:`crforge.pipeline.datafile.writer.compress_stamps`), and the writer
only copies the compressed chunks into the file (``append_compressed``). This measures,
in one run, on real stamps of a data set:

1. compression, the workers' share: stamps/s of one process;
2. the writer alone: stamps/s and MB/s appending those chunks (``--copies`` times over,
   in batches of one visit's stamps) to a new file on ``--work``'s disk, fsync included;
3. from these and a worker's stamp rate (``--worker-rate``, stamps/s of one worker
   labelling and cutting visits; default: the measured 11.7 of ``dataset_scaling.py``,
   3456 stamps in 295 s on one worker), how many workers one writer keeps up with.

    python benchmarks/writer_throughput.py --data work/synthetic-acs-wfc.h5 --work /tmp/wt
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _stamps(data: Path, n: int) -> dict:
    import h5py

    with h5py.File(data) as h5:
        g = h5["train"]
        return {"meta": g["meta"][:n], **{k: g[k][:n] for k in ("image", "cr", "ignore")}}


def main(argv=None) -> int:
    from crforge.pipeline.datafile.writer import DataFileWriter, FileAttributes, compress_stamps

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a crforge data set to take stamps from")
    p.add_argument("--work", type=Path, required=True, help="directory for the written file (removed after)")
    p.add_argument("--stamps", type=int, default=64, help="distinct stamps (one visit's worth; default 64)")
    p.add_argument("--copies", type=int, default=40, help="times they are appended (default 40)")
    p.add_argument("--worker-rate", type=float, default=11.7, help="stamps/s one dask worker produces")
    args = p.parse_args(argv)
    src = _stamps(args.data, args.stamps)
    n = len(src["meta"])
    t0 = time.perf_counter()
    chunks = {k: compress_stamps(src[k]) for k in ("image", "cr", "ignore")}
    t_compress = time.perf_counter() - t0
    nbytes = sum(int(c[1].sum()) for c in chunks.values())
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.work / "writer-throughput.h5"
    attrs = FileAttributes(manifest_name="writer-throughput", manifest_sha256="0" * 64)
    t0 = time.perf_counter()
    with DataFileWriter(out, attrs, fields=[], truth=False, overwrite=True) as w:
        for _ in range(args.copies):
            w.append_compressed("train", src["meta"], chunks)
        w._h5.flush()
        os.fsync(w._h5.id.get_vfd_handle())
    t_write = time.perf_counter() - t0
    size = out.stat().st_size
    out.unlink()
    written = n * args.copies
    compress_rate, write_rate = n / t_compress, written / t_write
    print(f"{n} stamps of {args.data} ({nbytes / n / 1024:.0f} KiB compressed each, image+cr+ignore)")
    print("| step | stamps/s | MB/s |\n|---|---|---|")
    print(f"| compression, one process (workers' share) | {compress_rate:.0f} | "
          f"{compress_rate * nbytes / n / 1e6:.1f} |")
    print(f"| writer alone, {written} stamps, {size / 1e6:.0f} MB file | {write_rate:.0f} | "
          f"{size / t_write / 1e6:.1f} |")
    print(f"one writer keeps up with {write_rate / args.worker_rate:.0f} workers at "
          f"{args.worker_rate} stamps/s each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
