"""The dataset stage: a manifest of visits -> one HDF5 training set (schema v2).

First, in this process, archive visits whose exposures are not on disk are resolved
on MAST and fetched with verified sizes (:func:`crforge.pipeline.archive.prepare.prepare_visits`); a
visit that cannot be fetched fails there and is never labelled.

For every visit of the manifest, in parallel on dask (one task per visit, each task
writing only its own visit's files)::

    <work>/raw/<visit>/          simulate (or the exposures fetched from the archive)
    <work>/labels/<visit>/       AstroDrizzle labels (crforge.pipeline.label)
    <work>/stamps/<visit>.npz    256x256 stamps, compressed as the HDF5 stores them, + metadata
                                 (crforge.pipeline.stamps); simulated visits also their truth
                                 and noiseless pixels

(with ``dataset.keep_intermediate = false`` a visit's ``labels/`` and, when simulated,
its ``raw/`` are removed once its stamps are saved, and its stamps once they are
copied into the HDF5: large data sets need the disk)

then, in this process: group visits into fields by sky overlap, split the fields
(crforge.pipeline.splits), and stream the stamps, one visit at a time, into
``<work>/<name>.h5`` (:class:`~crforge.pipeline.datafile.writer.DataFileWriter`: written under a
temporary name and renamed when complete).

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
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from crforge import atomic, interrupts
from crforge.errors import InputError
from crforge.lock import hold
from crforge.pipeline.archive.config import ArchiveConfig
from crforge.pipeline.datafile.schema import META_DTYPE, PIXEL_DTYPES, SPLITS
from crforge.pipeline.datafile.writer import (
    DataFileWriter,
    FileAttributes,
    compress_stamps,
    decompress_stamps,
)
from crforge.pipeline.dataset.config import DatasetConfig, StampConfig
from crforge.pipeline.instruments import get_instrument
from crforge.pipeline.label.config import LabelConfig
from crforge.pipeline.label.result import VisitLabels, read_labels
from crforge.pipeline.label.stage import label_visit
from crforge.pipeline.manifest import Manifest, VisitSpec, load_manifest
from crforge.pipeline.simulate.truth import read_truth
from crforge.pipeline.simulate.visit import simulate_visit
from crforge.pipeline.splits import assign_splits, group_fields
from crforge.pipeline.stamps import cut_stamps, snr_class

logger = logging.getLogger(__name__)

__all__ = ["build_dataset", "process_visit", "DatasetError", "DatasetReport", "VisitStamps"]



class DatasetError(RuntimeError):
    """Too many visits failed to build a data set."""




# --------------------------------------------------------------------------------------
# One visit (runs on a dask worker: touches only this visit's files)
# --------------------------------------------------------------------------------------


#: What a visit's stamp file holds; a file of another format is made again (2: ``noiseless``;
#: 3: only the compressed chunks, a third of format 2's bytes).
_STAMPS_FORMAT = 3


def _visit_key(spec: VisitSpec, label_cfg: LabelConfig, stamp_cfg: StampConfig) -> str:
    """Hash of everything that decides a visit's stamps (reuse only when equal)."""
    doc = {"format": _STAMPS_FORMAT, "name": spec.name, "source": spec.source,
           "simulate": asdict(spec.simulate) if spec.simulate else None,
           "archive": spec.archive, "label": spec.label_config(label_cfg).result_dict(),  # with the row's own
           "stamps": asdict(stamp_cfg)}
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


@dataclass(frozen=True)
class VisitStamps:
    """One visit's stamps on disk (``work/stamps/<visit>.npz``) and what the file needs of it.

    Written beside the stamps as ``<visit>.json``; ``key`` hashes everything that
    decides the stamps, so a stored result is reused only when it is equal.
    """

    visit: str
    key: str
    n_stamps: int
    bunit: str | None
    target: str
    field_type: str
    split: str | None
    footprint: list
    ra: float
    dec: float
    n_exposures: int
    seconds: float
    reused: bool = False
    exposures: tuple[str, ...] = ()  # rootnames (no exposure may be in two visits)

    def to_json(self) -> dict:
        """The ``<visit>.json`` document."""
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> VisitStamps:
        """Read a ``<visit>.json`` document back (unknown keys ignored)."""
        doc = {**doc, "exposures": tuple(doc.get("exposures", ()))}
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


def _stored(stamp_path: Path, info_path: Path, key: str) -> VisitStamps | None:
    """The visit's stored stamps, if complete and made with the same settings."""
    if not (stamp_path.exists() and info_path.exists()):
        return None
    try:
        done = VisitStamps.from_json(json.loads(info_path.read_text()))
    except (ValueError, TypeError):  # unreadable or from another version: redo
        return None
    return replace(done, reused=True) if done.key == key else None


def _exposures_on_disk(spec: VisitSpec, raw: Path) -> bool:
    """Simulate the visit (again, if its manifest row changed); whether it changed."""
    if spec.source != "simulate":
        if not raw.is_dir() or not (any(raw.glob("*_flc.fits")) or any(raw.glob("*_flt.fits"))):
            raise FileNotFoundError(2, "no exposures; fetch the visit first (crforge fetch)", str(raw))
        return False
    # a manifest row edited since the last run: simulate (and label) it anew
    old = raw / "visit.json"
    changed = old.exists() and json.loads(old.read_text())["config"] != json.loads(
        json.dumps(asdict(spec.simulate)))
    if changed:
        logger.info("%s: the manifest row changed since it was simulated; simulating it anew", raw)
    simulate_visit(spec.simulate, raw.parent, name=spec.name, overwrite=changed)
    return changed


def _labels(spec: VisitSpec, raw: Path, labels: Path, label_cfg: LabelConfig, changed: bool) -> VisitLabels:
    cfg = spec.label_config(label_cfg)
    try:
        redo = changed or read_labels(labels).config != cfg.result_dict()
    except (FileNotFoundError, InputError):  # none yet, or unreadable: label_visit decides
        redo = changed
    if redo and (labels / "labels.json").exists():
        logger.info("%s: made from another simulation or with other settings; labelling anew", labels)
    return label_visit(raw, labels, cfg, overwrite=redo)


def _cut_exposure(spec: VisitSpec, report: VisitLabels, exp, labels: Path, truth, stamp_cfg: StampConfig,
                  parts: dict[str, list], meta: list[tuple]) -> str | None:
    """Cut one exposure's chips into stamps (appended to ``parts`` and ``meta``); its BUNIT."""
    bunit = None
    with fits.open(labels / exp.label) as lab:
        exptime = float(lab[0].header["EXPTIME"])
        for chip in exp.chips:
            ev = chip.extver
            h = lab["SCI", ev].header
            bunit = bunit or h.get("BUNIT", "ELECTRONS")
            tcode = snr_class(truth[ev].cr_snr_image()) if truth is not None else None
            st = cut_stamps(lab["SCI", ev].data, lab["CR", ev].data, lab["IGNORE", ev].data, tcode, stamp_cfg,
                            noiseless=_noiseless(truth, ev, bunit, exptime))
            for k in parts:
                if k in st:
                    parts[k].append(st[k])
            meta.extend((spec.name, exp.rootname, ev, int(x0), int(y0), -1, spec.field_type, report.filter,
                         exptime, float(h["SKY"]), float(h["GAIN"]), float(h["RDNOISE"]), float(frac))
                        for x0, y0, frac in zip(st["x0"], st["y0"], st["cr_fraction"]))
    return bunit


def _noiseless(truth, ev: int, bunit: str, exptime: float) -> np.ndarray | None:
    """The chip without noise and cosmic rays, in the image's unit (simulated visits).

    The simulator's calibrated pixel is source + sky + dark - dark (the mean dark is
    subtracted as in calibrated data), so its expectation is source + sky.
    """
    if truth is None:
        return None
    chip = truth[ev]
    img = chip.source + np.float32(chip.sky_e)
    if "/S" in str(bunit).upper().replace(" ", ""):
        img = img / np.float32(exptime)
    return img.astype(np.float32)


def _save_stamps(path: Path, parts: dict[str, list], meta: list[tuple]) -> None:
    # the HDF5 chunks (one stamp each, shuffle + deflate) are compressed here, on the
    # worker, so the single process that writes the file only copies bytes; only the
    # chunks are kept (the raw pixels would double the work directory's size)
    arrays = {}
    for k, v in parts.items():
        if v:
            arrays[f"{k}_z"], arrays[f"{k}_zlen"] = compress_stamps(np.concatenate(v))
    arrays["meta"] = np.array(meta, dtype=META_DTYPE)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale(path.parent)  # what killed runs left
    with atomic.atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def process_visit(spec: VisitSpec, work: str | os.PathLike, label_cfg: LabelConfig,
                  stamp_cfg: StampConfig, *, keep_intermediate: bool = True) -> VisitStamps:
    """Simulate (or find), label and stamp one visit (a dask task: it touches only its files).

    Writes ``work/stamps/<visit>.npz`` and then ``<visit>.json`` (which marks the
    stamps complete); a complete result made with the same settings is reused.
    Without ``keep_intermediate`` the visit's labels and simulated exposures are then
    removed (archive downloads are kept: they cost a download to make again).
    """
    work, t0 = Path(work), time.perf_counter()
    key = _visit_key(spec, label_cfg, stamp_cfg)
    stamp_path, info_path = work / "stamps" / f"{spec.name}.npz", work / "stamps" / f"{spec.name}.json"
    stored = _stored(stamp_path, info_path, key)
    if stored is not None:
        return stored
    raw, labels = work / "raw" / spec.name, work / "labels" / spec.name
    changed = _exposures_on_disk(spec, raw)
    report = _labels(spec, raw, labels, label_cfg, changed)
    parts: dict[str, list] = {k: [] for k in ("image", "cr", "ignore", "truth", "noiseless")}
    meta: list[tuple] = []
    quads: list = []
    bunit = None
    for exp in report.exposures:
        quads.extend(_footprint(Path(exp.input)))
        truth = (read_truth(raw / f"{exp.rootname}_truth.fits", source=True)
                 if spec.source == "simulate" else None)
        bunit = _cut_exposure(spec, report, exp, labels, truth, stamp_cfg, parts, meta) or bunit
    _save_stamps(stamp_path, parts, meta)
    centre = np.mean(np.array(quads).reshape(-1, 2), axis=0)
    done = VisitStamps(visit=spec.name, key=key, n_stamps=len(meta), bunit=bunit, target=report.target,
                       field_type=spec.field_type, split=spec.split, footprint=quads, ra=float(centre[0]),
                       dec=float(centre[1]), n_exposures=report.n_exposures,
                       seconds=round(time.perf_counter() - t0, 2),
                       exposures=tuple(e.rootname for e in report.exposures))
    atomic.write_json(info_path, done.to_json(), indent=None)  # after the stamps: it marks them complete
    if not keep_intermediate:
        _remove_intermediate(spec, raw, labels)
    return done


def _remove_intermediate(spec: VisitSpec, raw: Path, labels: Path) -> None:
    """Free a stamped visit's disk: its labels, and its exposures when they were simulated."""
    shutil.rmtree(labels, ignore_errors=True)
    if spec.source == "simulate":
        shutil.rmtree(raw, ignore_errors=True)


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


class _Progress:
    """Results and failures of the visit tasks, in one place, with a progress bar."""

    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm

        self.results: dict[str, VisitStamps] = {}
        self.failures: dict[str, dict] = {}
        self.bar = tqdm(total=total, desc="visits", unit="visit", disable=None)

    def done(self, name: str, result: VisitStamps) -> None:
        self.results[name] = result
        self.bar.update(1)

    def failed(self, name: str, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning("visit %s failed: %s", name, reason)
        tb = "".join(traceback.format_exception(exc))
        self.failures[name] = {"visit": name, "reason": reason, "traceback": tb[-2000:]}
        self.bar.update(1)


def _run_serial(visits: list[VisitSpec], work: Path, cfg: _Sections, progress: _Progress) -> None:
    for spec in visits:
        interrupts.check()  # a Ctrl-C whose exception Python dropped still stops the build
        try:
            progress.done(spec.name, process_visit(spec, work, cfg.label, cfg.stamps,
                                                   keep_intermediate=cfg.dataset.keep_intermediate))
        except Exception as exc:  # one failing visit never takes the data set down
            progress.failed(spec.name, exc)


def _client(dcfg: DatasetConfig):
    """A dask client of a new LocalCluster (closed with the client) or of a running scheduler."""
    from dask.distributed import Client, LocalCluster

    # the scheduler and nannies log every start and stop at INFO; keep that for -vv
    if not logger.isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if dcfg.scheduler != "local":
        try:
            return Client(dcfg.scheduler, timeout="30s"), None
        except (OSError, TimeoutError) as exc:  # gone since _check_scheduler, or not a scheduler
            raise InputError(f"dataset.scheduler={dcfg.scheduler!r}: cannot connect to a dask scheduler "
                             f"there ({exc})") from None
    cluster = LocalCluster(n_workers=dcfg.workers or os.cpu_count() or 1, threads_per_worker=1,
                           processes=True, dashboard_address=None, silence_logs=logging.ERROR)
    return Client(cluster), cluster


def _check_scheduler(dcfg: DatasetConfig, timeout: float = 5.0) -> None:
    """Refuse a scheduler address nothing answers at, before any work (dask would wait 30 s, then fail)."""
    import socket
    from urllib.parse import urlsplit

    if "://" not in dcfg.scheduler:
        return
    url = urlsplit(dcfg.scheduler)
    if url.scheme not in ("tcp", "tls"):
        return  # inproc://, ucx://...: dask's own client says what is wrong
    try:
        host, port = url.hostname, url.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise InputError(f"dataset.scheduler={dcfg.scheduler!r}: expected tcp://host:port")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise InputError(f"dataset.scheduler={dcfg.scheduler!r}: no dask scheduler answers there "
                         f"({exc.strerror or exc}); start one (`dask scheduler`) or use "
                         "--scheduler local or serial") from None


def _run_dask(visits: list[VisitSpec], work: Path, cfg: _Sections, progress: _Progress) -> None:
    from dask.distributed import as_completed

    client, cluster = _client(cfg.dataset)
    try:
        # each worker process labels with 1 thread when they already fill the cores
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or 1)
        label = replace(cfg.label, threads=max(1, min(cfg.label.threads, (os.cpu_count() or 1) // n_workers)))
        # longest first, so the last task to finish is a short one (tasks start
        # roughly in submission order)
        futures = {client.submit(process_visit, spec, str(work), label, cfg.stamps,
                                 keep_intermediate=cfg.dataset.keep_intermediate, key=f"crforge-visit-{spec.name}", pure=False, priority=-i): spec.name
                   for i, spec in enumerate(sorted(visits, key=_cost, reverse=True))}
        for fut in as_completed(futures):
            interrupts.check()
            try:
                progress.done(futures[fut], fut.result())
            except Exception as exc:
                progress.failed(futures[fut], exc)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _run_visits(visits: list[VisitSpec], work: Path, cfg: _Sections) -> tuple[list[VisitStamps], list[dict]]:
    """Run every visit (serially or on dask); return (successes, failures) in manifest order."""
    progress = _Progress(len(visits))
    (_run_serial if cfg.dataset.scheduler == "serial" else _run_dask)(visits, work, cfg, progress)
    progress.bar.close()
    order = [v.name for v in visits]
    return ([progress.results[n] for n in order if n in progress.results],
            [progress.failures[n] for n in order if n in progress.failures])


@dataclass(frozen=True)
class _Sections:
    """The config sections the dataset stage uses (its own, and the stages it runs)."""

    dataset: DatasetConfig
    label: LabelConfig
    stamps: StampConfig
    archive: ArchiveConfig


@dataclass
class DatasetReport:
    """What ``crforge dataset`` did (also written beside the file as ``<name>.report.json``)."""

    manifest: str
    manifest_sha256: str
    output: str
    visits_total: int
    visits_done: int = 0
    visits_failed: list[dict] = field(default_factory=list)  # {"visit", "reason", "traceback"}
    status: str = "running"
    stamps: dict[str, int] = field(default_factory=dict)     # per split
    fields: dict[str, str] = field(default_factory=dict)     # field id -> split
    seconds_visits: float = 0.0
    seconds_total: float = 0.0

    def to_json(self) -> dict:
        """The ``.report.json`` document."""
        return asdict(self)


def _fetch_archive_visits(man: Manifest, work: Path, archive: ArchiveConfig) -> dict[str, str]:
    """Resolve and fetch the archive visits not on disk yet: visit -> why it failed.

    In this process, so that the downloads share one bound on concurrency; a visit
    whose exposures could not be fetched fails here and is never labelled.
    """
    specs = [v for v in man.visits if v.source == "archive"]
    if not specs:
        return {}
    from crforge.pipeline.archive.prepare import prepare_visits

    archive.validate()
    failed = prepare_visits(specs, work, archive)
    for name, reason in failed.items():
        logger.warning("visit %s failed: %s", name, reason)
    return failed


def _split_fields(man: Manifest, done: list[VisitStamps], seed: int,
                  fractions: dict[str, float]) -> tuple[dict[str, int], dict[int, str]]:
    """Fields by sky overlap (visit -> field id), and their splits (field id -> split)."""
    specs = {v.name: v for v in man.visits}
    field_of = group_fields({d.visit: [np.array(q) for q in d.footprint] for d in done})
    split_of = assign_splits(field_of, {d.visit: d.field_type for d in done},
                             {d.visit: specs[d.visit].split for d in done}, seed=seed, fractions=fractions)
    return field_of, split_of


def build_dataset(manifest: str | os.PathLike | Manifest, work: str | os.PathLike, *,
                  output: str | os.PathLike | None = None, dataset: DatasetConfig | None = None,
                  label: LabelConfig | None = None, stamps: StampConfig | None = None,
                  archive: ArchiveConfig | None = None, overwrite: bool = False,
                  wait: bool = False) -> DatasetReport:
    """Build the HDF5 training set of a manifest.

    Parameters
    ----------
    manifest : path-like or Manifest
        The visits (TOML or CSV, see :mod:`crforge.pipeline.manifest`).
    work : path-like
        Work directory for raw, labels, stamps and the output. The run holds its lock
        (:mod:`crforge.lock`) from start to end.
    output : path-like, optional
        The HDF5 file; default ``<work>/<manifest name>.h5``. An existing file is
        replaced only when it records the same manifest and settings (a rebuild), or
        with ``overwrite``.
    dataset, label, stamps, archive : config dataclasses, optional
        The ``[dataset]``, ``[label]``, ``[stamps]`` and ``[archive]`` tables (defaults when None).
    overwrite : bool
        Replace an existing ``output`` whatever it holds.
    wait : bool
        Wait for another run using ``work`` instead of refusing.

    Returns
    -------
    DatasetReport
        What was done (also written next to the output as ``.report.json``).

    Raises
    ------
    InputError
        A bad manifest or config, overlapping visits with conflicting splits, an
        exposure in two visits, or an existing ``output`` of another data set.
    crforge.lock.LockedError
        Another run is using ``work`` (and not ``wait``).
    DatasetError
        More than ``max_failed_fraction`` of the visits failed.
    """
    cfg = _Sections(dataset or DatasetConfig(), label or LabelConfig(), stamps or StampConfig(),
                    archive or ArchiveConfig())
    for section in (cfg.dataset, cfg.label, cfg.stamps):
        section.validate()
    _check_scheduler(cfg.dataset)
    if cfg.stamps.size != 256:
        logger.warning("stamps.size=%d: the schema fixes 256; fine for tests only", cfg.stamps.size)
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    _refuse_shared_exposures(man.visits, {v.name: _listed_exposures(v) for v in man.visits})
    work = Path(work)
    output = Path(output) if output else work / f"{man.name}.h5"
    with hold(work, what="crforge dataset", wait=wait):
        replace_output = overwrite or _same_data_set(output, man, cfg)
        return _build(man, work, output, cfg, replace_output)


def _build(man: Manifest, work: Path, output: Path, cfg: _Sections, replace_output: bool) -> DatasetReport:
    """:func:`build_dataset` once the work directory is locked and the output checked."""
    report_path = output.with_name(output.stem + ".report.json")
    t0 = time.perf_counter()
    logger.info("dataset %s: %d visits, scheduler %s", man.name, len(man.visits), cfg.dataset.scheduler)
    fetch_failed = _fetch_archive_visits(man, work, cfg.archive)
    done, failed = _run_visits([v for v in man.visits if v.name not in fetch_failed], work, cfg)
    _refuse_shared_exposures(man.visits, {d.visit: list(d.exposures) for d in done})
    failed += [{"visit": n, "reason": r, "traceback": ""} for n, r in fetch_failed.items()]
    order = [v.name for v in man.visits]
    report = DatasetReport(man.name, man.sha256, str(output), len(man.visits), len(done),
                           sorted(failed, key=lambda f: order.index(f["visit"])),
                           seconds_visits=round(time.perf_counter() - t0, 1))
    if len(failed) > cfg.dataset.max_failed_fraction * len(man.visits) or not done:
        report.status = "failed"
        atomic.write_json(report_path, report.to_json(), default=str)
        raise DatasetError(f"{len(failed)} of {len(man.visits)} visits failed (more than "
                           f"max_failed_fraction={cfg.dataset.max_failed_fraction}); see {report_path}")
    field_of, split_of = _split_fields(man, done, cfg.dataset.seed, cfg.dataset.fractions)
    report.stamps = _write_hdf5(output, man, cfg, done, report.visits_failed, field_of, split_of, work,
                                overwrite=replace_output)
    report.status, report.seconds_total = "ok", round(time.perf_counter() - t0, 1)
    report.fields = {str(f): s for f, s in sorted(split_of.items())}
    atomic.write_json(report_path, report.to_json(), default=str)
    logger.info("wrote %s: %s stamps in %.0f s", output, report.stamps, report.seconds_total)
    return report


def _listed_exposures(spec: VisitSpec) -> list[str]:
    """The rootnames a manifest row names (simulated: by its ids; archive: its ``exposures``)."""
    if spec.source == "simulate":
        return list(spec.simulate.rootnames)
    return [str(r).lower() for r in (spec.archive or {}).get("exposures") or []]


def _refuse_shared_exposures(visits: list[VisitSpec], exposures: dict[str, list[str]]) -> None:
    """Raise :class:`InputError` when one exposure belongs to two visits (duplicate stamps)."""
    owner: dict[str, str] = {}
    for spec in visits:
        for root in exposures.get(spec.name, ()):
            if root in owner and owner[root] != spec.name:
                raise InputError(f"visits {owner[root]!r} and {spec.name!r} share the exposure {root!r}: "
                                 "its stamps would be in the data set twice (and perhaps in two splits); "
                                 "list every exposure under one visit only")
            owner[root] = spec.name


def _config_doc(cfg: _Sections) -> dict:
    """The settings a data set records (``config`` attribute): what decides the stamps."""
    from crforge import config as cfgmod

    # how the work was scheduled does not change the data: leave it out, so the serial
    # and dask paths (and any worker count) write identical files
    doc = {k: cfgmod.to_dict(getattr(cfg, k)) for k in ("dataset", "label", "stamps")}
    for k in ("scheduler", "workers", "keep_intermediate"):
        doc["dataset"].pop(k, None)
    return json.loads(json.dumps(doc, sort_keys=True))


def _same_data_set(output: Path, man: Manifest, cfg: _Sections) -> bool:
    """Whether ``output`` may be replaced without ``overwrite``: False when it is not there.

    Raises :class:`InputError` when it is there and is not a data set of this manifest
    and these settings (another file is never replaced silently).
    """
    if not output.exists():
        return False
    import h5py

    hint = "pass --overwrite to replace it, or choose another --output"
    try:
        with h5py.File(output, "r") as h:
            recorded = (h.attrs.get("manifest_sha256"), json.loads(h.attrs.get("config", "null")))
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{output} exists and is not a readable crforge data set ({exc}); {hint}") from None
    if recorded[0] != man.sha256:
        raise InputError(f"{output} exists and was built from another manifest (sha256 {recorded[0]!s:.12}..., "
                         f"this one {man.sha256[:12]}...); {hint}")
    if recorded[1] != _config_doc(cfg):
        raise InputError(f"{output} exists and was built with other settings; {hint}")
    logger.info("%s exists, built from the same manifest with the same settings: rebuilding it", output)
    return True


def _file_attributes(man: Manifest, cfg: _Sections, done: list[VisitStamps],
                     failed: list[dict]) -> FileAttributes:
    specs = {v.name: v for v in man.visits}
    doc = _config_doc(cfg)
    instruments = {get_instrument(specs[d.visit].simulate.instrument if specs[d.visit].source == "simulate"
                                  else specs[d.visit].archive["instrument"]).name for d in done}
    software = _software()
    return FileAttributes(manifest_name=man.name, manifest_sha256=man.sha256, config=doc, software=software,
                          instruments=sorted(instruments), failed_visits=failed, stamp_size=cfg.stamps.size,
                          crforge_version=software["crforge"] or "unknown")


def _field_rows(by_field: dict[int, list[VisitStamps]], split_of: dict[int, str]) -> list[tuple]:
    rows = []
    for fid in sorted(by_field):
        vs = sorted(by_field[fid], key=lambda d: d.visit)
        rows.append((fid, vs[0].target[:64], float(np.mean([v.ra for v in vs])),
                     float(np.mean([v.dec for v in vs])), vs[0].field_type,
                     split_of[fid], ",".join(v.visit for v in vs)[:512]))
    return rows


def _append_visit(w: DataFileWriter, split: str, npz: Path, field_id: int) -> None:
    """Copy one visit's stamps (pre-compressed on its worker) into the file."""
    with np.load(npz) as z:
        meta = z["meta"].copy()
        if len(meta) == 0:
            return
        meta["field_id"] = field_id
        names = w.names()
        if w.compression == "gzip":
            w.append_compressed(split, meta, {k: (z[f"{k}_z"], z[f"{k}_zlen"]) for k in names})
        else:
            w.append(split, meta, **{k: decompress_stamps(z[f"{k}_z"], z[f"{k}_zlen"], dtype=PIXEL_DTYPES[k],
                                                          size=int(w.attrs.stamp_size)) for k in names})


def _drop_stamps(stamps: Path, visit: str) -> None:
    """Remove a visit's stamps once copied (the file and its copy would need twice the disk).

    The record goes first: a visit without it is made again by a rerun, so a write
    that fails after this costs the rerun that visit's labelling, never a wrong file.
    """
    (stamps / f"{visit}.json").unlink(missing_ok=True)
    (stamps / f"{visit}.npz").unlink(missing_ok=True)


def _write_hdf5(output: Path, man: Manifest, cfg: _Sections, done: list[VisitStamps], failed: list[dict],
                field_of: dict[str, int], split_of: dict[int, str], work: Path, *,
                overwrite: bool) -> dict[str, int]:
    """Stream every finished visit's stamps into the file, one visit in memory at a time."""
    # truth only when every visit in the file is simulated (a failed one does not count)
    specs = {v.name: v for v in man.visits}
    with_truth = all(specs[d.visit].source == "simulate" for d in done)
    by_field: dict[int, list[VisitStamps]] = {}
    for d in done:
        by_field.setdefault(field_of[d.visit], []).append(d)
    bunit = next((d.bunit for d in done if d.bunit), "ELECTRONS")
    with DataFileWriter(output, _file_attributes(man, cfg, done, failed),
                        fields=_field_rows(by_field, split_of), truth=with_truth, noiseless=with_truth, bunit=bunit,
                        compression=cfg.dataset.compression, overwrite=overwrite) as w:
        for split in SPLITS:
            for fid in sorted(f for f in by_field if split_of[f] == split):
                for d in sorted(by_field[fid], key=lambda d: d.visit):
                    _append_visit(w, split, work / "stamps" / f"{d.visit}.npz", fid)
                    if not cfg.dataset.keep_intermediate:
                        _drop_stamps(work / "stamps", d.visit)
    return {split: w.counts.get(split, 0) for split in SPLITS}
