"""The dataset stage: manifests, stamps, splits by sky overlap, dask vs serial, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from crforge.pipeline.datafile.validate import validate
from crforge.pipeline.datafile.writer import decompress_stamps
from crforge.pipeline.dataset.config import DatasetConfig, StampConfig
from crforge.pipeline.dataset.stage import build_dataset
from crforge.pipeline.manifest import load_manifest
from crforge.pipeline.splits import assign_splits, group_fields, quads_overlap
from crforge.pipeline.stamps import cut_stamps, snr_class, stamp_origins
from crforge.pipeline.summary import summarise

SMALL = """
name = "small"
seed = 7
[defaults]
chip_shape = [256, 512]
exptime = 400.0
"""


def _manifest(tmp_path, rows: str, head: str = SMALL, name="m.toml"):
    p = tmp_path / name
    p.write_text(head + textwrap.dedent(rows))
    return p


SIX = """
[[visit]]
field_type = "extragalactic"
n_exposures = 2
[[visit]]
field_type = "globular_cluster"
n_exposures = 3
[[visit]]
field_type = "resolved_galaxy"
n_exposures = 2
[[visit]]
field_type = "extragalactic"
n_exposures = 2
split = "test"
[[visit]]
field_type = "globular_cluster"
n_exposures = 2
[[visit]]
field_type = "resolved_galaxy"
n_exposures = 2
ra = 150.5
dec = 2.2
"""


def _content(path):
    """Everything in the file but the creation time."""
    out = {}
    with h5py.File(path) as h:
        out["attrs"] = {k: (v if k != "created_utc" else None) for k, v in h.attrs.items()}
        out["fields"] = h["fields"][:].tolist()
        for split in ("train", "val", "test"):
            for k, ds in h[split].items():
                out[f"{split}/{k}"] = ds[:]
    return out


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert np.array_equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def _cfg(**kw):
    return {"dataset": DatasetConfig(**kw)}


@pytest.fixture(scope="module")
def serial_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serial")
    man = _manifest(tmp, SIX)
    report = build_dataset(man, tmp / "work", **_cfg(scheduler="serial"))
    return man, tmp / "work" / "small.h5", report


def test_file_is_valid_schema_v2_and_split_by_field(serial_build):
    man, h5, report = serial_build
    assert validate(h5, progress=False) == []
    with h5py.File(h5) as h:
        assert h.attrs["schema_version"] == 2 and h.attrs["stamp_size"] == 256
        assert h.attrs["manifest_sha256"] == load_manifest(man).sha256
        assert json.loads(h.attrs["instruments"]) == ["ACS/WFC"]
        software = json.loads(h.attrs["software"])
        assert software["drizzlepac"].startswith("3.11")
        fields = h["fields"][:]
        # visits 0 and 5 (resolved galaxy at ra=150.5... row 2 sits at 150.5 too) are one field
        multi = [f for f in fields if b"," in f["visits"]]
        assert len(multi) == 1 and multi[0]["field_type"] == b"resolved_galaxy"
        seen = {}
        for split in ("train", "val", "test"):
            for fid in set(h[split]["meta"]["field_id"].tolist()):
                assert fid not in seen, f"field {fid} in {seen.get(fid)} and {split}"
                seen[fid] = split
        # the explicit split of the fourth visit won
        test_visits = set(h["test"]["meta"]["visit"].tolist())
        assert b"j4e003" in test_visits
        assert h["train"]["image"].chunks == (1, 256, 256)
        assert h["train"]["image"].compression == "gzip"
        # the chunks the workers compressed read back as the stamps they cut
        m = h["train"]["meta"][0]
        visit = m["visit"].decode()
        with np.load(h5.parent / "stamps" / f"{visit}.npz") as z:
            j = int(np.nonzero((z["meta"]["exposure"] == m["exposure"]) & (z["meta"]["chip"] == m["chip"])
                               & (z["meta"]["x0"] == m["x0"]) & (z["meta"]["y0"] == m["y0"]))[0][0])
            assert "image" not in z.files  # only the chunks are kept (a third of the bytes)
            for name in ("image", "cr", "ignore", "truth"):
                got = decompress_stamps(z[f"{name}_z"], z[f"{name}_zlen"], dtype=h["train"][name].dtype, size=256)
                assert np.array_equal(h["train"][name][0], got[j]), name
    s = summarise(h5, progress=False)
    assert s["total"]["stamps"] == sum(report.stamps.values()) > 0
    assert s["truth"]["recall_above_5sigma"] >= 0.95


def test_dask_and_serial_give_identical_files(serial_build, tmp_path):
    man, h5, _ = serial_build
    # and without the intermediate files (large data sets): the same file, their disk freed
    build_dataset(man, tmp_path / "work", **_cfg(scheduler="local", workers=2, keep_intermediate=False))
    _same(_content(h5), _content(tmp_path / "work" / "small.h5"))
    assert not [p for d in ("raw", "labels", "stamps") for p in (tmp_path / "work" / d).rglob("*") if p.is_file()]
    assert (h5.parent / "labels").is_dir() and (h5.parent / "raw").is_dir()  # kept by default


def test_an_existing_scheduler_by_address(serial_build, tmp_path):
    from dask.distributed import LocalCluster

    man, h5, _ = serial_build
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        build_dataset(man, tmp_path / "work", **_cfg(scheduler=cluster.scheduler_address))
    _same(_content(h5), _content(tmp_path / "work" / "small.h5"))


def test_killed_run_resumes_to_the_same_file(serial_build, tmp_path):
    man, h5, _ = serial_build
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "crforge.cli", "dataset", "--manifest", str(man), "--work",
           str(work), "--scheduler", "serial"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 120:
        if len(list((work / "stamps").glob("*.npz"))) >= 2:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "small.h5").exists()
    n_done = len(list((work / "stamps").glob("*.npz")))
    assert 2 <= n_done < 6
    report = build_dataset(man, work, **_cfg(scheduler="serial"))
    assert report.status == "ok"
    _same(_content(h5), _content(work / "small.h5"))
    # nothing half-written survives
    assert not list(work.rglob("*.tmp*"))


def test_overlapping_visits_with_conflicting_splits_are_refused(tmp_path):
    rows = """
    [[visit]]
    field_type = "extragalactic"
    n_exposures = 2
    split = "train"
    ra = 10.0
    dec = -30.0
    [[visit]]
    field_type = "extragalactic"
    n_exposures = 2
    split = "test"
    ra = 10.001
    dec = -30.0
    """
    with pytest.raises(ValueError, match=r"visits 'j4e000' \(split train\) and 'j4e001' \(split test\) overlap"):
        build_dataset(_manifest(tmp_path, rows), tmp_path / "w", **_cfg(scheduler="serial"))


def test_failing_visit_is_reported_and_skipped(tmp_path):
    rows = """
    [[visit]]
    field_type = "extragalactic"
    n_exposures = 2
    [[visit]]
    field_type = "globular_cluster"
    n_exposures = 1
    [[visit]]
    field_type = "resolved_galaxy"
    n_exposures = 2
    [[visit]]
    field_type = "globular_cluster"
    n_exposures = 2
    [[visit]]
    field_type = "extragalactic"
    n_exposures = 2
    """
    man = _manifest(tmp_path, rows)
    report = build_dataset(man, tmp_path / "w", **_cfg(scheduler="serial"))
    assert [f["visit"] for f in report.visits_failed] == ["j4e001"]
    assert "1 usable exposure(s), at least 2 needed" in report.visits_failed[0]["reason"]
    with h5py.File(tmp_path / "w" / "small.h5") as h:
        failed = json.loads(h.attrs["failed_visits"])
        assert failed[0]["visit"] == "j4e001"
        visits = {v for s in ("train", "val", "test") for v in h[s]["meta"]["visit"].tolist()}
        assert visits == {b"j4e000", b"j4e002", b"j4e003", b"j4e004"}
    disk = json.loads((tmp_path / "w" / "small.report.json").read_text())
    assert disk["visits_failed"][0]["visit"] == "j4e001"
    # too many failures: no data set, a clear error, finished visits kept for the rerun
    from crforge.pipeline.dataset.stage import DatasetError

    with pytest.raises(DatasetError, match="1 of 5 visits failed"):
        build_dataset(man, tmp_path / "w", **_cfg(scheduler="serial", max_failed_fraction=0.1),
                      output=tmp_path / "w" / "strict.h5")
    assert not (tmp_path / "w" / "strict.h5").exists()


# ---- pure pieces -------------------------------------------------------------------


def test_stamp_tiling_covers_the_chip_without_leaving_it():
    o = stamp_origins((2051, 4096), 256)
    ys = sorted({y for y, _ in o})
    assert ys[-1] == 2051 - 256 and len(ys) == 9  # last row flush with the edge
    assert len({x for _, x in o}) == 16
    cover = np.zeros((2051, 4096), bool)
    for y, x in o:
        cover[y:y + 256, x:x + 256] = True
    assert cover.all()
    assert stamp_origins((100, 300), 256) == []


def test_mostly_ignored_stamps_are_dropped():
    sci = np.zeros((256, 512), np.float32)
    cr = np.zeros((256, 512), np.uint8)
    ign = np.zeros((256, 512), np.uint8)
    ign[:, :200] = 1  # 200/256 of the left stamp ignored
    cr[0, 300:310] = 1
    st = cut_stamps(sci, cr, ign, cfg=StampConfig(size=256))
    assert st["x0"].tolist() == [256] and st["image"].shape == (1, 256, 256)
    assert st["cr_fraction"][0] == pytest.approx(10 / 256**2)
    st = cut_stamps(sci, cr, ign, cfg=StampConfig(size=256, max_ignored=0.9))
    assert st["x0"].tolist() == [0, 256]


def test_truth_codes_carry_the_snr_bin():
    assert snr_class(np.array([0.0, 1.0, 4.0, 7.0, 50.0])).tolist() == [0, 1, 2, 3, 4]


def test_quads_overlap_on_the_sky():
    sq = np.array([[0, 0], [0.01, 0], [0.01, 0.01], [0, 0.01]], float) + [10.0, -30.0]
    assert quads_overlap(sq, sq + [0.005, 0.005])
    assert not quads_overlap(sq, sq + [0.02, 0.0])
    # across RA = 0/360
    a = np.array([[359.995, 0], [360.005, 0], [360.005, 0.01], [359.995, 0.01]]) % 360
    assert quads_overlap(a, a + [0.0, 0.005])
    groups = group_fields({"a": [sq], "b": [sq + [0.005, 0]], "c": [sq + [1.0, 0]], "d": [sq + [0.0099, 0]]})
    assert groups["a"] == groups["b"] == groups["d"] != groups["c"]


def test_grouping_by_sky_index_equals_comparing_every_pair():
    """Fields found through the k-d tree are those of the all-pairs comparison: chips of
    several sizes, in clusters and chains, across RA = 0/360 and near the pole."""
    rng = np.random.default_rng(4)
    centres = [(0.0, 0.0), (359.99, 10.0), (120.0, 89.9), (200.0, -45.0)]
    footprints = {}
    for k in range(160):
        ra0, dec0 = centres[k % 4]
        side = rng.choice([0.003, 0.01, 0.05])
        ra, dec = ra0 + rng.normal(0, 0.05), dec0 + rng.normal(0, 0.05) * (0.1 if dec0 > 89 else 1)
        quads = []
        for chip in range(rng.integers(1, 4)):
            sq = np.array([[0, 0], [side, 0], [side, side], [0, side]], float) + [chip * side * 1.05, 0]
            quads.append(np.c_[(ra + sq[:, 0] / np.cos(np.radians(dec))) % 360, dec + sq[:, 1]])
        footprints[f"v{k:03d}"] = quads
    got = group_fields(footprints)
    assert got == group_fields(footprints, search="all-pairs")
    assert 10 < len(set(got.values())) < 150  # both merged fields and lone visits are exercised
    assert group_fields({}) == {}


def test_split_assignment_by_seed_keeps_every_type_in_every_split():
    types = ("extragalactic", "globular_cluster", "resolved_galaxy")
    visits = {f"v{i}": i for i in range(18)}
    ftype = {f"v{i}": types[i % 3] for i in range(18)}
    out = assign_splits(visits, ftype, {}, seed=1)
    for t in types:
        assert {out[f] for f in range(18) if types[f % 3] == t} == {"train", "val", "test"}
    assert sum(s == "train" for s in out.values()) >= 9
    assert out == assign_splits(visits, ftype, {}, seed=1)
    assert out != assign_splits(visits, ftype, {}, seed=2)
    fixed = assign_splits(visits, ftype, {"v0": "test", "v3": "val"}, seed=1)
    assert fixed[0] == "test" and fixed[3] == "val"
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(visits, ftype, {}, fractions={"train": 0.9, "val": 0.2, "test": 0.0})


@pytest.mark.parametrize("rows,match", [
    ('[[visit]]\nfield_type = "galaxy"\n', "field_type='galaxy'"),
    ('[[visit]]\nfield_type = "extragalactic"\nsplit = "dev"\n', "split='dev'"),
    ('[[visit]]\nfield_type = "extragalactic"\nseeed = 1\n', r"unknown key\(s\) \['seeed'\]"),
    ('[[visit]]\nfield_type = "extragalactic"\n[visit.label]\nsnr = 3\n', "label.snr"),
    ('[[visit]]\nfield_type = "extragalactic"\nname = "a"\n[[visit]]\nfield_type = "extragalactic"\nname = "a"\n',
     "both named 'a'"),
])
def test_bad_manifests_name_the_row_and_key(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        load_manifest(_manifest(tmp_path, rows))


def test_csv_manifest_of_archive_visits(tmp_path):
    p = tmp_path / "real.csv"
    p.write_text("# real visits\ninstrument,filter,proposal_id,obset_id,field_type,split,label\n"
                 "ACS/WFC,F606W,10775,ab,globular_cluster,train,refine_max_exposures=0\n"
                 "ACS/WFC,F814W,9405,4b,extragalactic,,\n")
    m = load_manifest(p)
    assert [v.name for v in m.visits] == ["10775_ab_f606w", "9405_4b_f814w"]
    assert m.visits[0].split == "train" and m.visits[1].split is None
    assert m.visits[0].label == {"refine_max_exposures": 0}
    assert not m.simulated


def test_an_edited_manifest_row_is_rebuilt_not_reused(tmp_path):
    row = """
    [[visit]]
    field_type = "extragalactic"
    n_exposures = {n}
    """
    work = tmp_path / "w"
    first = build_dataset(_manifest(tmp_path, row.format(n=2)), work, **_cfg(scheduler="serial"))
    # the finished file is of the old manifest: replacing it takes overwrite (issue 16)
    again = build_dataset(_manifest(tmp_path, row.format(n=3)), work, overwrite=True, **_cfg(scheduler="serial"))
    assert sum(again.stamps.values()) == sum(first.stamps.values()) * 3 // 2
    assert len(list((work / "raw" / "j4e000").glob("*_flc.fits"))) == 3
    assert json.loads((work / "labels" / "j4e000" / "labels.json").read_text())["n_exposures"] == 3
