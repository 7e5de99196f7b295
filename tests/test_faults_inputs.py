"""Bad input, as a user gives it: every command refuses it with exit status 2, names the culprit,
changes nothing and writes nothing.

Each test builds its inputs in its own temporary directory (the working directory of
the test), records every file there with its sha256, runs the real command
(``crforge.cli.main`` in-process, or the ``crforge`` executable where the process
itself matters) and then checks the exit status, that the message names the file,
extension, keyword, key or address at fault, and that the directory holds exactly the
same files, byte for byte: nothing lost, nothing half-written, no output.

The faults: a file that is not FITS, a truncated FITS file, an all-NaN SCI extension,
a unit in counts, a filter and an imager the model never saw (the real ACS/HRC and
WFPC2 frames of :mod:`crforge.pipeline.realframes` against the shipped ACS/WFC
model), a truncated and a bit-flipped HDF5 file, an unwritable output directory, an
output directory below a file, an unreachable dask scheduler, a misspelt config
table. Beside them: what ``--force`` does on the real ACS/HRC frame (the DQ ignore
mask applied, the record's threshold), a zoo weights file given by its path, the
``NDData``/``CCDData`` interface of ``deepcr_models.clean`` and ``crforge models``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from crforge import cli, deepcr_models
from crforge.deepcr_models import registry as reg
from crforge.deepcr_models.fitness import FitnessError
from crforge.errors import InputError

S = 64
FIELD_TYPES = ("extragalactic", "globular_cluster", "resolved_galaxy")
#: the shipped ACS/WFC mask model that is quickest to run (depth 2, width 4)
QUICK = "synthetic-acs-wfc-2-4"
CRFORGE = Path(sys.executable).with_name("crforge")


# ------------------------------------------------------------------------------ helpers


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) -> sha256; every directory -> 'dir'."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else _sha(p)
    return out


def _refused(args: list[str], root: Path, capsys, *culprits: str) -> str:
    """Run ``crforge ARGS`` in-process: exit 2, every culprit in the message, ``root`` unchanged."""
    before = _snapshot(root)
    capsys.readouterr()
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc == 2, f"crforge {' '.join(args)}: exit {rc}\n{err}"
    for c in culprits:
        assert c in err, f"{c!r} not in the message: {err}"
    assert "Traceback" not in err
    assert _snapshot(root) == before, "files changed or appeared"
    return err


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A valid tiny HDF5 training set, a tiny trained run, a simulated 2-exposure visit."""
    from crforge.pipeline.datafile.schema import META_DTYPE
    from crforge.pipeline.datafile.writer import write_arrays
    from crforge.pipeline.simulate.config import SimulateConfig
    from crforge.pipeline.simulate.visit import simulate_visit
    from crforge.training.config import ModelConfig, TrainConfig
    from crforge.training.train import main

    root = tmp_path_factory.mktemp("fault-inputs")
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        img = (40 + rng.normal(0, 6, (n, S, S))).astype(np.float32)
        cr = np.zeros((n, S, S), np.uint8)
        cr[:, 10, 10:12] = 1
        img[:, 10, 10:12] += 1000
        meta = np.zeros(n, META_DTYPE)
        meta["sky"], meta["exptime"] = 40.0, 500.0
        meta["field_type"] = [FIELD_TYPES[i % 3] for i in range(n)]
        splits[split] = {"image": img, "cr": cr, "ignore": np.zeros((n, S, S), np.uint8), "meta": meta}
    h5 = write_arrays(root / "tiny.h5", splits, manifest_name="tiny")
    cfg = TrainConfig(kind="mask", model=ModelConfig(depth=2, width=4), epochs=1, batch_size=2,
                      stamps_per_epoch=6, device="cpu", seed=1, val_stamps=3, init_mask="", threads=1)
    main(cfg, h5, root / "runs" / "tiny" / "mask")
    sim = SimulateConfig(n_exposures=2, chip_shape=(64, 96), exptime=500.0, seed=3)
    visit = simulate_visit(sim, root / "raw")
    return {"h5": h5, "run": root / "runs" / "tiny", "visit": visit,
            "flc": sorted(visit.glob("*_flc.fits"))[0]}


def _truncated_h5(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) * 2 // 3])  # an interrupted copy
    return dst


def _bitflipped_h5(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    for off in range(len(data) // 2, len(data) - 2000, 997):  # the stamps' compressed chunks
        data[off] ^= 0x5A
    dst.write_bytes(bytes(data))
    return dst


# ------------------------------------------------------------------------------ FITS to clean


def test_clean_refuses_a_file_that_is_not_fits(tmp_path, capsys):
    bad = tmp_path / "j8xi01abq_flc.fits"
    bad.write_text("SIMPLE? no: a saved web page\n" * 40)
    _refused(["clean", str(bad), "--model", QUICK], tmp_path, capsys, "j8xi01abq_flc.fits",
             "not a readable FITS file")


def test_clean_refuses_a_truncated_fits_file(frames, tmp_path, capsys):
    data = Path(frames["acs-hrc-flt"]).read_bytes()
    cut = tmp_path / "cut_flt.fits"
    cut.write_bytes(data[:3_000_000])  # inside the ERR extension: SCI reads, DQ is gone
    _refused(["clean", str(cut), "--model", QUICK, "--dq-bit", "16384", "--force"], tmp_path, capsys,
             "cut_flt.fits", "truncated")


@pytest.mark.parametrize("frame, words", [
    ("acs-hrc", ("INSTRUME/DETECTOR='ACS/HRC'", "trained on ACS/WFC", "--force")),
    ("wfpc2", ("INSTRUME/DETECTOR='WFPC2/1'", "FILTNAM1='F555W'", "trained on ACS/WFC")),
])
def test_clean_refuses_a_real_frame_of_another_imager(frames, tmp_path, capsys, frame, words):
    path = _copy(frames[frame], tmp_path / f"{frame}.fits")
    _refused(["clean", str(path), "--model", "synthetic-acs-wfc", "--inpaint", "--dq-bit", "4096"],
             tmp_path, capsys, f"{frame}.fits", *words)


def test_clean_refuses_a_number_of_views_it_cannot_take(inputs, tmp_path, capsys):
    out = tmp_path / "o.fits"
    rc = cli.main(["clean", str(inputs["flc"]), "--model", QUICK, "--views", "3", "--output", str(out)])
    assert rc == 2
    assert "--views: invalid choice: 3" in capsys.readouterr().err and not out.exists()


def _edited(src: Path, dst: Path, **changes) -> Path:
    """A copy of a simulated FLC file with primary keywords and SCI,1 data or keywords changed."""
    with fits.open(src) as h:
        out = fits.HDUList([x.copy() for x in h])
    for key, value in changes.items():
        if key == "sci1_data":
            out["SCI", 1].data = value(out["SCI", 1].data)
        elif key.startswith("sci_"):
            for ver in (1, 2):
                out["SCI", ver].header[key[4:].upper()] = value
        else:
            out[0].header[key.upper()] = value
    out.writeto(dst)
    return dst


@pytest.mark.parametrize("name, changes, words", [
    ("counts", {"sci_bunit": "COUNTS"}, ("BUNIT='COUNTS' [SCI,1]", "counts need the gain")),
    ("f475w", {"filter1": "F475W"}, ("FILTER1='F475W' [PRIMARY]", "F435W, F606W, F814W")),
    ("uvis", {"instrume": "WFC3", "detector": "UVIS"}, ("INSTRUME/DETECTOR='WFC3/UVIS'",)),
    ("allnan", {"sci1_data": lambda d: np.full_like(d, np.nan)}, ("SCI,1 has no finite pixel",)),
])
def test_clean_refuses_units_filters_imagers_and_nan_the_model_never_saw(inputs, tmp_path, capsys, name,
                                                                        changes, words):
    path = _edited(inputs["flc"], tmp_path / f"{name}_flc.fits", **changes)
    _refused(["clean", str(path), "--model", QUICK], tmp_path, capsys, f"{name}_flc.fits", *words)


def test_force_on_the_real_acs_hrc_frame_keeps_the_dq_ignore_mask_and_the_records_threshold(
        frames, tmp_path, capsys, caplog):
    """The issue's run: ACS/HRC, the ACS/WFC model, --dq-bit. Forced, it warns; saturated and bad
    pixels are never flagged; the record's threshold is used; the input is untouched."""
    from crforge.pipeline.instruments import HST_DQ
    from crforge.pipeline.masks import ignore_mask

    path = _copy(frames["acs-hrc"], tmp_path / "j8bt06nyq_flt.fits")
    before = _sha(path)
    out = tmp_path / "cleaned.fits"
    rc = cli.main(["clean", str(path), "--model", QUICK, "--dq-bit", "16384", "--force", "--output", str(out),
                   "--threads", "2"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "ACS/HRC" in cap.err and "--force" in cap.err  # the warning
    assert _sha(path) == before
    rec, _ = reg.find_record(QUICK, "mask")
    with fits.open(path) as a, fits.open(out) as b:
        dq = a["DQ", 1].data
        flagged = (b["DQ", 1].data & 16384) != 0
        assert b[0].header["CRTHRESH"] == pytest.approx(rec.threshold)
        assert b[0].header["CRVIEWS"] == rec.views
    ignored = ignore_mask(dq, HST_DQ, saturation_grow=2) != 0
    saturated = (dq & (256 | 2048)) != 0
    assert saturated.sum() > 1000 and ignored.sum() > saturated.sum()  # the test can see the bug
    assert flagged.any() and not (flagged & ignored).any()


def test_a_zoo_weights_file_given_by_its_path_uses_its_record(tmp_path):
    rec, zdir = reg.find_record(QUICK, "mask")
    copy = _copy(zdir / rec.weights, tmp_path / rec.weights)  # beside no registry: found by sha256
    for source in (zdir / rec.weights, copy):
        m = deepcr_models.load(source)
        assert m.record == rec and m.threshold == pytest.approx(rec.threshold) != 0.5
    img = np.random.default_rng(1).normal(300, 18, (96, 96)).astype(np.float32)
    img[40, 40:43] += 3000
    by_name = deepcr_models.clean(img, QUICK, threads=1)[0]
    assert np.array_equal(deepcr_models.clean(img, str(copy), threads=1)[0], by_name)
    with pytest.raises(FitnessError, match="WFC3/UVIS"):
        deepcr_models.clean(img, str(copy), header={"INSTRUME": "WFC3", "DETECTOR": "UVIS"})


# ------------------------------------------------------------------------------ the Python API


def _wfpc2_chip(path: Path):
    from stsci.tools import convertwaiveredfits

    hdul = convertwaiveredfits.convertwaiveredfits(str(path))
    header = fits.Header(hdul[0].header)
    header.update({k: v for k, v in hdul["SCI", 1].header.items() if k not in ("", "COMMENT", "HISTORY")})
    return hdul["SCI", 1].data.astype(np.float32), header


def test_clean_api_refuses_a_wfpc2_chip_in_dn(frames):
    """The WFPC2 chip in DN, as a CCDData with its header and as an array with ``header=``."""
    from astropy.nddata import CCDData

    data, header = _wfpc2_chip(frames["wfpc2"])
    ccd = CCDData(data[:200, :200], unit="adu", meta=header)
    with pytest.raises(FitnessError) as exc:
        deepcr_models.clean(ccd, QUICK)
    for word in ("CCDData", "WFPC2", "unit='adu'", "F555W", "ACS/WFC"):
        assert word in str(exc.value)
    with pytest.raises(FitnessError, match="WFPC2"):
        deepcr_models.clean(data[:200, :200], QUICK, header=header)
    with pytest.raises(InputError, match="bunit nor header"):
        deepcr_models.clean(ccd, QUICK, bunit="ELECTRONS")


def test_clean_api_takes_ccddata_and_returns_it_with_the_cr_mask(caplog):
    """Unit, mask and uncertainty respected; the result a CCDData with mask = old | CRs (as ccdproc)."""
    from astropy import units as u
    from astropy.nddata import CCDData, StdDevUncertainty

    MODEL = "synthetic-acs-wfc"  # 2-32: the 2-4 network's mask of a hard-edged 1x3 hit is offset by a pixel
    rng = np.random.default_rng(4)
    img = rng.normal(300.0, 18.0, (128, 128)).astype(np.float32)
    hits = [(20, 30), (60, 90), (100, 15)]
    for y, x in hits:
        img[y, x:x + 3] += 2500.0
    old = np.zeros(img.shape, bool)
    old[100, 15:18] = True  # a hit the user already masked: never reported as a CR
    unc = np.full(img.shape, 18.0)
    unc[60, 90] = np.nan  # no usable value there either
    meta = {"INSTRUME": "ACS", "DETECTOR": "WFC", "FILTER1": "F606W", "FILTER2": "CLEAR2L", "EXPTIME": 500.0}
    ccd = CCDData(img, unit=u.electron, mask=old, uncertainty=StdDevUncertainty(unc), meta=meta)
    out = deepcr_models.clean(ccd, MODEL, threads=1)
    assert isinstance(out, CCDData) and out.unit == u.electron
    assert np.array_equal(out.data, img) and out.data is not ccd.data
    np.testing.assert_array_equal(out.uncertainty.array, unc)
    assert out.mask[20, 30:33].all() and out.mask[100, 15:18].all()  # new CRs and the old mask
    new = out.mask & ~old
    assert not new[100, 15:18].any() and not new[60, 90]
    assert out.meta["CRMODEL"] == MODEL and out.meta["CRNPIX"] == int(new.sum()) and new.sum() < 40
    assert not ccd.mask[20, 30]  # the input is not modified
    # the same frame in electrons/s gives the same mask; inpainting replaces only masked pixels
    rate = CCDData(img / 500.0, unit=u.electron / u.s, mask=old, meta=meta)
    both = deepcr_models.clean(rate, MODEL, MODEL, threads=1)
    assert (both.mask == out.mask).mean() > 0.999
    assert np.array_equal(both.data[~both.mask], (img / 500.0)[~both.mask])
    assert np.abs(both.data[20, 30:33] * 500.0 - 300.0).max() < 150.0


def test_clean_api_allow_mismatch_warns_and_goes_on(caplog):
    img = np.random.default_rng(2).normal(300, 18, (96, 96)).astype(np.float32)
    header = {"INSTRUME": "ACS", "DETECTOR": "HRC", "FILTER1": "F606W", "BUNIT": "ELECTRONS"}
    with pytest.raises(FitnessError, match="ACS/HRC"):
        deepcr_models.clean(img, QUICK, header=header)
    with caplog.at_level("WARNING"):
        mask, _ = deepcr_models.clean(img, QUICK, header=header, allow_mismatch=True, threads=1)
    assert mask.shape == img.shape and "ACS/HRC" in caplog.text
    with pytest.raises(InputError, match="no finite pixel"):
        deepcr_models.clean(np.full((64, 64), np.nan, np.float32), QUICK)


# ------------------------------------------------------------------------------ label


def test_label_refuses_an_all_nan_sci_extension(inputs, tmp_path, capsys):
    visit = tmp_path / inputs["visit"].name
    shutil.copytree(inputs["visit"], visit)
    flc = sorted(visit.glob("*_flc.fits"))[0]
    with fits.open(flc, mode="update") as h:
        h["SCI", 2].data[:] = np.nan
    _refused(["label", str(visit), "--out", str(tmp_path / "labels")], tmp_path, capsys,
             f"{flc.name}[SCI,2]", "no finite pixel")


def test_label_refuses_an_exposure_that_is_not_fits(inputs, tmp_path, capsys):
    visit = tmp_path / inputs["visit"].name
    shutil.copytree(inputs["visit"], visit)
    flc = sorted(visit.glob("*_flc.fits"))[1]
    flc.write_bytes(flc.read_bytes()[:2880])  # the primary header only: a download cut short
    _refused(["label", str(visit), "--out", str(tmp_path / "labels")], tmp_path, capsys, flc.name)


# ------------------------------------------------------------------------------ HDF5


@pytest.mark.parametrize("damage", ["truncated", "bitflipped"])
@pytest.mark.parametrize("command", ["inspect", "train", "evaluate"])
def test_damaged_hdf5_is_refused_before_any_work(inputs, tmp_path, capsys, damage, command):
    h5 = (_truncated_h5 if damage == "truncated" else _bitflipped_h5)(inputs["h5"], tmp_path / f"{damage}.h5")
    words = [f"{damage}.h5", "truncated" if damage == "truncated" else "cannot read stamps"]
    if command == "inspect":
        args = ["inspect", str(h5)]
        if damage == "bitflipped":
            words = [f"{damage}.h5", "INVALID"]
    elif command == "train":
        args = ["train", "--data", str(h5), "--runs", str(tmp_path / "runs"), "--kind", "mask",
                "--set", "train.epochs=1", "--set", "train.model.width=4", "--set", "train.init_mask="]
    else:
        run = tmp_path / "run"
        shutil.copytree(inputs["run"], run)
        args = ["evaluate", "--run", str(run), "--data", str(h5), "--no-baselines"]
    _refused(args, tmp_path, capsys, *words)


def test_train_refuses_a_file_that_is_not_hdf5(tmp_path, capsys):
    bad = tmp_path / "set.h5"
    bad.write_bytes(b"\x89HDF but not really" * 100)
    _refused(["train", "--data", str(bad), "--runs", str(tmp_path / "runs")], tmp_path, capsys,
             "set.h5", "not an HDF5 file")


# ------------------------------------------------------------------------------ outputs


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions hold (root: without CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    # root ignores file permissions; without util-linux's setpriv to drop that right the
    # refusals below could not be shown, and a skipped test would hide it
    assert setpriv is not None, "running as root: these tests need setpriv (util-linux)"
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


_MANIFEST = ('name = "tiny"\nseed = 1\n[defaults]\nsource = "simulate"\ninstrument = "ACS/WFC"\n'
             'chip_shape = [64, 96]\n[[visit]]\nfield_type = "extragalactic"\nfilter = "F606W"\n'
             'n_exposures = 2\nexptime = 500.0\n')


@pytest.mark.parametrize("what", ["clean", "simulate", "label", "dataset", "train"])
def test_an_unwritable_output_directory_is_refused_first(inputs, tmp_path, what):
    """The real ``crforge`` executable; the directory named, not a temporary file in it."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    flc = _copy(inputs["flc"], tmp_path / "in_flc.fits")
    h5 = _copy(inputs["h5"], tmp_path / "in.h5")
    visit = tmp_path / inputs["visit"].name
    shutil.copytree(inputs["visit"], visit)
    (tmp_path / "tiny.toml").write_text(_MANIFEST)
    args = {"clean": ["clean", str(flc), "--model", QUICK, "--output", str(ro / "out.fits")],
            "simulate": ["simulate", "--out", str(ro), "--n-exposures", "2", "--size", "64x64"],
            "label": ["label", str(visit), "--out", str(ro)],
            "dataset": ["dataset", "--manifest", str(tmp_path / "tiny.toml"), "--work", str(ro / "work"),
                        "--scheduler", "serial"],
            "train": ["train", "--data", str(h5), "--runs", str(ro / "runs"), "--kind", "mask"]}[what]
    before = _snapshot(tmp_path)
    ro.chmod(0o555)
    try:
        proc = subprocess.run(_unprivileged() + [str(CRFORGE)] + args, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert str(ro) in proc.stderr and "cannot write" in proc.stderr and ".tmp" not in proc.stderr
    assert _snapshot(tmp_path) == before


def test_an_output_below_a_file_is_refused(inputs, tmp_path, capsys):
    flc = _copy(inputs["flc"], tmp_path / "in_flc.fits")
    (tmp_path / "notes.txt").write_text("a file, not a directory\n")
    _refused(["clean", str(flc), "--model", QUICK, "--output", str(tmp_path / "notes.txt" / "out.fits")],
             tmp_path, capsys, "notes.txt", "not a directory")
    _refused(["simulate", "--out", str(tmp_path / "notes.txt" / "sim"), "--size", "64x64"], tmp_path, capsys,
             "notes.txt", "not a directory")


# ------------------------------------------------------------------------------ scheduler, config


def test_dataset_refuses_an_unreachable_scheduler_at_once(tmp_path, capsys):
    manifest = tmp_path / "tiny.toml"
    manifest.write_text(_MANIFEST)
    address = f"tcp://127.0.0.1:{_free_port()}"
    _refused(["dataset", "--manifest", str(manifest), "--work", str(tmp_path / "work"), "--scheduler", address],
             tmp_path, capsys, address, "no dask scheduler answers")


def _config_commands() -> dict[str, bool]:
    """Every command -> whether it takes --config."""
    import importlib

    return {name: importlib.import_module(mod).CONFIG is not None for name, (mod, _) in cli.COMMANDS.items()}


#: required arguments of each command (nothing exists: the config is refused before any of it is read)
_ARGS = {"simulate": ["--out", "o"], "label": ["v", "--out", "o"], "query": ["--out", "q.csv"],
         "fetch": ["--manifest", "m.toml"], "dataset": ["--manifest", "m.toml"], "train": ["--data", "d.h5"],
         "evaluate": ["--run", "r", "--data", "d.h5"], "inspect": ["d.h5"], "publish": ["r", "--name", "n"],
         "clean": ["f.fits", "--model", "m"], "export": ["m", "--to", "deepcr", "--output", "o.pth"],
         "models": [], "realdata": []}


@pytest.mark.parametrize("command", sorted(_ARGS))
def test_a_misspelt_config_table_is_refused_by_every_command(tmp_path, capsys, command):
    assert set(_ARGS) == set(cli.COMMANDS)  # a new command gets a row here
    bad = tmp_path / "run.toml"
    bad.write_text("[simulate]\nseed = 3\n\n[trian]\nepochs = 2\n")
    args = [command, *_ARGS[command], "--config", str(bad)]
    if _config_commands()[command]:
        _refused(args, tmp_path, capsys, "run.toml", "unknown config key 'trian'", "did you mean 'train'")
    else:  # no settings to configure: the option itself is the usage error
        _refused(args, tmp_path, capsys, "unrecognized arguments: --config")


# ------------------------------------------------------------------------------ the zoo


def test_models_lists_the_shipped_and_the_user_zoo(tmp_path, capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["name", "kind", "instrument", "filters", "threshold", "data", "where"]
    line = next(x for x in out.splitlines() if x.startswith("synthetic-acs-wfc ") and " mask " in x)
    rec, _ = reg.find_record("synthetic-acs-wfc", "mask")
    assert line.split() == ["synthetic-acs-wfc", "mask", "ACS/WFC", "F435W,F606W,F814W",
                            f"{rec.threshold:.4g}", "simulated", "shipped"]
    # a model in the user zoo appears with its directory
    user = Path(os.environ["CRFORGE_ZOO"])
    user.mkdir(parents=True)
    shutil.copyfile(reg.shipped_zoo() / rec.weights, user / rec.weights)
    mine = reg.ModelRecord.from_dict({**rec.to_dict(), "name": "mine"})
    reg.write_registry([mine], user)
    assert cli.main(["models", "--kind", "mask", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mine"]["where"] == str(user) and rows[QUICK]["where"] == "shipped"
    assert all(r["kind"] == "mask" for r in rows.values())
    _refused(["models", "--zoo", str(tmp_path / "nowhere")], tmp_path, capsys, "nowhere")
