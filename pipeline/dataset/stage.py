"""The dataset stage: a manifest of visits -> one HDF5 training set (schema v1).

First, in this process, archive visits whose exposures are not on disk are resolved
on MAST and fetched with verified sizes (:func:`crforge.pipeline.archive.prepare_visits`); a
visit that cannot be fetched fails there and is never labelled.

For every visit of the manifest, in parallel on dask (one task per visit, each task
writing only its own visit's files)::

    <work>/raw/<visit>/          simulate (or the exposures fetched from the archive)
    <work>/labels/<visit>/       AstroDrizzle labels (crforge.pipeline.drizzle)
    <work>/stamps/<visit>.npz    256x256 stamps + metadata + footprint (crforge.pipeline.stamps)

then, in this process: group visits into fields by sky overlap, split the fields
(crforge.pipeline.splits), and stream the stamps, one visit at a time, into
``<work>/<name>.h5`` (written as ``<name>.h5.tmp`` and renamed when complete).

Resuming: every per-visit output is written under a temporary name and renamed when
complete, and a complete one is reused when its settings match, so a run killed at
any moment and started again redoes only the unfinished visits and rewrites the
HDF5 from the per-visit stamps, giving the same content.

Failures: a visit that fails (bad file, AstroDrizzle error...) is logged, recorded
with its reason in ``<work>/<name>.report.json`` and in the HDF5 attribute
``failed_visits``, and left out; the rest of the data set is still built.
Exit status of ``crforge dataset``: 0 when the HDF5 is written (failed visits, if
any, are listed as warnings); 1 when more than ``max_failed_fraction`` of the visits
failed (the HDF5 is then not written, but every finished visit is kept for the
rerun); 2 for a bad manifest or configuration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from crforge.pipeline.archive.config import ArchiveConfig
from crforge.pipeline.dataset.config import DatasetConfig, StampConfig
from crforge.pipeline.instruments import get_instrument
from crforge.pipeline.label.config import LabelConfig
from crforge.pipeline.label.stage import label_visit
from crforge.pipeline.manifest import Manifest, VisitSpec, load_manifest
from crforge.pipeline.schema import FIELDS_DTYPE, META_DTYPE, SCHEMA_VERSION, SPLITS
from crforge.pipeline.simulate.visit import read_truth, simulate_visit
from crforge.pipeline.splits import assign_splits, group_fields
from crforge.pipeline.stamps import cut_stamps, snr_class

logger = logging.getLogger(__name__)

__all__ = [ "build_dataset", "process_visit", "DatasetError",
           "META_DTYPE", "FIELDS_DTYPE", "SCHEMA_VERSION"]



class DatasetError(RuntimeError):
    """Too many visits failed to build a data set."""




# --------------------------------------------------------------------------------------
# One visit (runs on a dask worker: touches only this visit's files)
# --------------------------------------------------------------------------------------


def _visit_key(spec: VisitSpec, label_cfg: LabelConfig, stamp_cfg: StampConfig) -> str:
    """Hash of everything that decides a visit's stamps (reuse only when equal)."""
    doc = {"name": spec.name, "source": spec.source,
           "simulate": asdict(spec.simulate) if spec.simulate else None,
           "archive": spec.archive, "label": label_cfg.result_dict(), "stamps": asdict(stamp_cfg)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _footprint(flc: Path) -> list[list[list[float]]]:
    quads = []
    with fits.open(flc) as h:
        for hdu in h:
            if hdu.name != "SCI":
                continue
            ny, nx = hdu.header["NAXIS2"], hdu.header["NAXIS1"]
            w = WCS(hdu.header, naxis=2)
            ra, dec = w.all_pix2world([-0.5, nx - 0.5, nx - 0.5, -0.5], [-0.5, -0.5, ny - 0.5, ny - 0.5], 0)
            quads.append(np.c_[ra, dec].tolist())
    return quads


GZIP_LEVEL = 1


def _gzip_chunk(a: np.ndarray) -> bytes:
    """One chunk as HDF5's shuffle + deflate filters store it (``write_direct_chunk``)."""
    b = np.ascontiguousarray(a)
    if b.dtype.itemsize > 1:
        # shuffle: all first bytes of the elements, then all second bytes, ...
        b = b.view(np.uint8).reshape(-1, b.dtype.itemsize).T
    return zlib.compress(np.ascontiguousarray(b).tobytes(), GZIP_LEVEL)


def process_visit(spec: VisitSpec, work: str | os.PathLike, label_cfg: LabelConfig,
                  stamp_cfg: StampConfig) -> dict:
    """Simulate (or find), label and stamp one visit; return its summary.

    Writes ``work/stamps/<visit>.npz`` under a temporary name, renamed when complete.
    A complete file made with the same settings is reused.
    """
    work = Path(work)
    t0 = time.perf_counter()
    key = _visit_key(spec, label_cfg, stamp_cfg)
    stamp_path = work / "stamps" / f"{spec.name}.npz"
    info_path = work / "stamps" / f"{spec.name}.json"
    if stamp_path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("key") == key:
            info["reused"] = True
            return info
    raw = work / "raw" / spec.name
    changed = False
    if spec.source == "simulate":
        # a manifest row edited since the last run: simulate (and label) it anew
        old = raw / "visit.json"
        changed = old.exists() and json.loads(old.read_text())["config"] != json.loads(
            json.dumps(asdict(spec.simulate)))
        simulate_visit(spec.simulate, work / "raw", name=spec.name, overwrite=changed)
    elif not raw.is_dir() or not (any(raw.glob("*_flc.fits")) or any(raw.glob("*_flt.fits"))):
        raise FileNotFoundError(f"{raw}: no exposures; fetch the visit first (crforge fetch)")
    cfg = spec.label_config(label_cfg)
    labels = work / "labels" / spec.name
    prev = labels / "labels.json"
    redo = changed or (prev.exists() and json.loads(prev.read_text()).get("config") != cfg.result_dict())
    report = label_visit(raw, labels, cfg, overwrite=redo)
    parts: dict[str, list] = {k: [] for k in ("image", "cr", "ignore", "truth")}
    meta: list[tuple] = []
    quads: list = []
    bunit = None
    for exp in report["exposures"]:
        flc = Path(exp["input"])
        quads.extend(_footprint(flc))
        truth = read_truth(raw / f"{exp['rootname']}_truth.fits") if spec.source == "simulate" else None
        with fits.open(labels / exp["label"]) as lab:
            ph = lab[0].header
            for chip in exp["chips"]:
                ev = chip["extver"]
                h = lab["SCI", ev].header
                bunit = bunit or h.get("BUNIT", "ELECTRONS")
                tcode = snr_class(truth[ev].cr_snr_image()) if truth is not None else None
                st = cut_stamps(lab["SCI", ev].data, lab["CR", ev].data, lab["IGNORE", ev].data,
                                tcode, stamp_cfg)
                n = len(st["y0"])
                for k in parts:
                    if k in st:
                        parts[k].append(st[k])
                for j in range(n):
                    meta.append((spec.name, exp["rootname"], ev, int(st["x0"][j]), int(st["y0"][j]),
                                 -1, spec.field_type, report["filter"], float(ph["EXPTIME"]),
                                 float(h["SKY"]), float(h["GAIN"]), float(h["RDNOISE"]),
                                 float(st["cr_fraction"][j])))
    arrays = {k: np.concatenate(v) for k, v in parts.items() if v}
    # the HDF5 chunks (one stamp each, shuffle + deflate) are compressed here, on the
    # worker, so the single process that writes the file only copies bytes
    for k in list(arrays):
        blobs = [_gzip_chunk(a) for a in arrays[k]]
        arrays[f"{k}_z"] = np.frombuffer(b"".join(blobs), np.uint8)
        arrays[f"{k}_zlen"] = np.array([len(b) for b in blobs], np.int64)
    arrays["meta"] = np.array(meta, dtype=META_DTYPE)
    centre = np.mean(np.array(quads).reshape(-1, 2), axis=0)
    info = {"visit": spec.name, "key": key, "n_stamps": len(meta), "bunit": bunit,
            "target": report["target"], "field_type": spec.field_type, "split": spec.split,
            "footprint": quads, "ra": float(centre[0]), "dec": float(centre[1]),
            "n_exposures": report["n_exposures"], "seconds": round(time.perf_counter() - t0, 2),
            "reused": False}
    stamp_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp_path.with_name(f".{spec.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, stamp_path)
    tmpj = info_path.with_name(f".{spec.name}.{os.getpid()}.tmp.json")
    tmpj.write_text(json.dumps(info))
    os.replace(tmpj, info_path)
    return info


# --------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------


def _software() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("crforge", "drizzlepac", "astropy", "numpy", "h5py", "dask", "distributed", "scipy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _cost(spec: VisitSpec) -> float:
    """Rough relative cost of a visit: exposures x pixels (archive visits: full size)."""
    if spec.simulate is None:
        return 8.0 * 4096 * 4096
    shape = spec.simulate.chip_shape or (2048, 4096)
    return float(spec.simulate.n_exposures * shape[0] * shape[1])


def _run_visits(visits: list[VisitSpec], work: Path, cfg: _Sections) -> tuple[list[dict], list[dict]]:
    """Run every visit; return (successes, failures) in manifest order."""
    from tqdm.auto import tqdm

    results: dict[str, dict] = {}
    failures: dict[str, dict] = {}

    def record_failure(name: str, exc: BaseException, tb: str) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning("visit %s failed: %s", name, reason)
        failures[name] = {"visit": name, "reason": reason, "traceback": tb[-2000:]}

    bar = tqdm(total=len(visits), desc="visits", unit="visit", disable=None)
    dcfg = cfg.dataset
    if dcfg.scheduler == "serial":
        for spec in visits:
            try:
                results[spec.name] = process_visit(spec, work, cfg.label, cfg.stamps)
            except Exception as exc:  # one failing visit never takes the data set down
                record_failure(spec.name, exc, traceback.format_exc())
            bar.update(1)
    else:
        from dask.distributed import Client, LocalCluster, as_completed

        # the scheduler and nannies log every start and stop at INFO; keep that for -vv
        if not logger.isEnabledFor(logging.DEBUG):
            logging.getLogger("distributed").setLevel(logging.WARNING)
        cluster = None
        if dcfg.scheduler == "local":
            n = dcfg.workers or os.cpu_count() or 1
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster)
        else:
            client = Client(dcfg.scheduler, timeout="30s")
        try:
            # each worker process labels with 1 thread when they already fill the cores
            n_workers = max(1, len(client.scheduler_info().get("workers", {})) or 1)
            label = replace(cfg.label, threads=max(1, min(cfg.label.threads,
                                                          (os.cpu_count() or 1) // n_workers)))
            # longest first, so the last task to finish is a short one (tasks start
            # roughly in submission order)
            futures = {client.submit(process_visit, spec, str(work), label, cfg.stamps,
                                     key=f"crforge-visit-{spec.name}", pure=False,
                                     priority=-i): spec.name
                       for i, spec in enumerate(sorted(visits, key=_cost, reverse=True))}
            for fut in as_completed(futures):
                name = futures[fut]
                try:
                    results[name] = fut.result()
                except Exception as exc:
                    record_failure(name, exc, "".join(traceback.format_exception(exc)))
                bar.update(1)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    bar.close()
    order = [v.name for v in visits]
    return ([results[n] for n in order if n in results],
            [failures[n] for n in order if n in failures])


@dataclass(frozen=True)
class _Sections:
    """The config sections the dataset stage uses (its own, and the stages it runs)."""

    dataset: DatasetConfig
    label: LabelConfig
    stamps: StampConfig
    archive: ArchiveConfig


def build_dataset(manifest: str | os.PathLike | Manifest, work: str | os.PathLike, *,
                  output: str | os.PathLike | None = None, dataset: DatasetConfig | None = None,
                  label: LabelConfig | None = None, stamps: StampConfig | None = None,
                  archive: ArchiveConfig | None = None) -> dict:
    """Build the HDF5 training set of a manifest.

    Parameters
    ----------
    manifest : path-like or Manifest
        The visits (TOML or CSV, see :mod:`crforge.pipeline.manifest`).
    work : path-like
        Work directory for raw, labels, stamps and the output.
    output : path-like, optional
        The HDF5 file; default ``<work>/<manifest name>.h5``.
    dataset, label, stamps, archive : config dataclasses, optional
        The ``[dataset]``, ``[label]``, ``[stamps]`` and ``[archive]`` tables
        (defaults when None).

    Returns
    -------
    dict
        The run report (also written next to the output as ``.report.json``).

    Raises
    ------
    InputError
        A bad manifest or config, or overlapping visits with conflicting splits.
    DatasetError
        More than ``max_failed_fraction`` of the visits failed.
    """
    cfg = _Sections(dataset or DatasetConfig(), label or LabelConfig(), stamps or StampConfig(),
                    archive or ArchiveConfig())
    cfg.dataset.validate()
    cfg.label.validate()
    cfg.stamps.validate()
    if cfg.stamps.size != 256:
        logger.warning("stamps.size=%d: schema v1 fixes 256; fine for tests only", cfg.stamps.size)
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    output = Path(output) if output else work / f"{man.name}.h5"
    report_path = output.with_name(output.stem + ".report.json")
    t0 = time.perf_counter()
    logger.info("dataset %s: %d visits, scheduler %s", man.name, len(man.visits), cfg.dataset.scheduler)
    # archive visits not on disk yet: resolve on MAST and fetch (in this process, so
    # that the downloads share one bound on concurrency); a visit whose exposures
    # could not be fetched fails here and is never labelled
    fetch_failed: dict[str, str] = {}
    archive_specs = [v for v in man.visits if v.source == "archive"]
    if archive_specs:
        from crforge.pipeline.archive.stage import prepare_visits

        cfg.archive.validate()
        fetch_failed = prepare_visits(archive_specs, work, cfg.archive)
        for name, reason in fetch_failed.items():
            logger.warning("visit %s failed: %s", name, reason)
    done, failed = _run_visits([v for v in man.visits if v.name not in fetch_failed], work, cfg)
    if fetch_failed:
        by_name = {f["visit"]: f for f in failed}
        by_name.update({n: {"visit": n, "reason": r, "traceback": ""} for n, r in fetch_failed.items()})
        failed = [by_name[v.name] for v in man.visits if v.name in by_name]
    report = {"manifest": man.name, "manifest_sha256": man.sha256, "output": str(output),
              "visits_total": len(man.visits), "visits_done": len(done),
              "visits_failed": failed, "seconds_visits": round(time.perf_counter() - t0, 1)}
    if len(failed) > cfg.dataset.max_failed_fraction * len(man.visits) or not done:
        report["status"] = "failed"
        _write_json(report_path, report)
        raise DatasetError(f"{len(failed)} of {len(man.visits)} visits failed (more than "
                           f"max_failed_fraction={cfg.dataset.max_failed_fraction}); see {report_path}")
    specs = {v.name: v for v in man.visits}
    field_of = group_fields({d["visit"]: [np.array(q) for q in d["footprint"]] for d in done})
    split_of = assign_splits(field_of, {d["visit"]: d["field_type"] for d in done},
                             {d["visit"]: specs[d["visit"]].split for d in done},
                             seed=cfg.dataset.seed, fractions=cfg.dataset.fractions)
    counts = _write_hdf5(output, man, cfg, done, failed, field_of, split_of, work)
    report.update(status="ok", stamps=counts, seconds_total=round(time.perf_counter() - t0, 1),
                  fields={str(f): s for f, s in sorted(split_of.items())})
    _write_json(report_path, report)
    logger.info("wrote %s: %s stamps in %.0f s", output, counts, report["seconds_total"])
    return report


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    os.replace(tmp, path)


def _write_hdf5(output: Path, man: Manifest, cfg: _Sections, done: list[dict], failed: list[dict],
                field_of: dict[str, int], split_of: dict[int, str], work: Path) -> dict:
    import h5py

    from crforge import config as cfgmod

    s = cfg.stamps.size
    # truth only when every visit in the file is simulated (a failed one does not count)
    specs = {v.name: v for v in man.visits}
    with_truth = all(specs[d["visit"]].source == "simulate" for d in done)
    by_field: dict[int, list[dict]] = {}
    for d in done:
        by_field.setdefault(field_of[d["visit"]], []).append(d)
    tmp = output.with_name(output.name + ".tmp")
    comp = {"compression": cfg.dataset.compression}
    direct = cfg.dataset.compression == "gzip"
    if direct:
        comp.update(compression_opts=GZIP_LEVEL, shuffle=True)
    counts = {}
    with h5py.File(tmp, "w") as h5:
        h5.attrs["schema_version"] = SCHEMA_VERSION
        h5.attrs["created_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        h5.attrs["crforge_version"] = _software()["crforge"] or "unknown"
        h5.attrs["manifest_name"] = man.name
        h5.attrs["manifest_sha256"] = man.sha256
        # how the work was scheduled does not change the data: leave it out, so the
        # serial and dask paths (and any worker count) write identical files
        doc = {k: cfgmod.to_dict(getattr(cfg, k)) for k in ("dataset", "label", "stamps")}
        for k in ("scheduler", "workers"):
            doc["dataset"].pop(k, None)
        h5.attrs["config"] = json.dumps(doc, sort_keys=True)
        h5.attrs["software"] = json.dumps(_software(), sort_keys=True)
        h5.attrs["stamp_size"] = s
        # which instruments the stamps come from (evaluation picks deepCR's peer model by it)
        h5.attrs["instruments"] = json.dumps(sorted({get_instrument(
            specs[d["visit"]].simulate.instrument if specs[d["visit"]].source == "simulate"
            else specs[d["visit"]].archive["instrument"]).name for d in done}))
        h5.attrs["failed_visits"] = json.dumps([{"visit": f["visit"], "reason": f["reason"]} for f in failed])
        rows = []
        for fid in sorted(by_field):
            vs = sorted(by_field[fid], key=lambda d: d["visit"])
            rows.append((fid, vs[0]["target"][:64], float(np.mean([v["ra"] for v in vs])),
                         float(np.mean([v["dec"] for v in vs])), vs[0]["field_type"],
                         split_of[fid], ",".join(v["visit"] for v in vs)[:512]))
        h5.create_dataset("fields", data=np.array(rows, dtype=FIELDS_DTYPE))
        for split in SPLITS:
            g = h5.create_group(split)
            dsets = {
                "image": g.create_dataset("image", (0, s, s), np.float32, maxshape=(None, s, s),
                                          chunks=(1, s, s), **comp),
                "cr": g.create_dataset("cr", (0, s, s), np.uint8, maxshape=(None, s, s),
                                       chunks=(1, s, s), **comp),
                "ignore": g.create_dataset("ignore", (0, s, s), np.uint8, maxshape=(None, s, s),
                                           chunks=(1, s, s), **comp),
            }
            if with_truth:
                dsets["truth"] = g.create_dataset("truth", (0, s, s), np.uint8, maxshape=(None, s, s),
                                                  chunks=(1, s, s), **comp)
            meta = g.create_dataset("meta", (0,), META_DTYPE, maxshape=(None,), chunks=(1024,))
            dsets["image"].attrs["BUNIT"] = next((d["bunit"] for d in done if d["bunit"]), "ELECTRONS")
            n = 0
            for fid in sorted(f for f in by_field if split_of[f] == split):
                for d in sorted(by_field[fid], key=lambda d: d["visit"]):
                    # one visit in memory at a time: peak memory does not grow with visits
                    with np.load(work / "stamps" / f"{d['visit']}.npz") as z:
                        m = z["meta"].copy()
                        k = len(m)
                        if k == 0:
                            continue
                        m["field_id"] = fid
                        for name, ds in dsets.items():
                            ds.resize(n + k, axis=0)
                            if direct:
                                blob, ends = z[f"{name}_z"], np.cumsum(z[f"{name}_zlen"])
                                for i in range(k):
                                    ds.id.write_direct_chunk(
                                        (n + i, 0, 0), blob[ends[i] - z[f"{name}_zlen"][i]:ends[i]].tobytes())
                            else:
                                ds[n:n + k] = z[name]
                        meta.resize(n + k, axis=0)
                        meta[n:n + k] = m
                        n += k
            counts[split] = n
    os.replace(tmp, output)
    return counts


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------




