"""Tests of the training-set validator, its summary and ``crforge inspect``."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from crforge import cli
from crforge.pipeline.datafile.schema import FIELDS_DTYPE, META_DTYPE
from crforge.pipeline.datafile.validate import validate
from crforge.pipeline.datafile.writer import DataFileWriter, FileAttributes
from crforge.pipeline.summary import format_summary, summarise

S = 16
PIX = S * S

META_DT = META_DTYPE
FIELDS_DT = FIELDS_DTYPE
# field_id -> (split, field_type, visit)
FIELDS = {
    1: ("train", "extragalactic", "v1"),
    2: ("train", "globular_cluster", "v2"),
    3: ("val", "resolved_galaxy", "v3"),
    4: ("test", "extragalactic", "v4"),
}
# split -> field id of each stamp
STAMPS = {"train": [1, 1, 2], "val": [3], "test": [4, 4]}


def _arrays():
    """cr, ignore, truth per split with hand-counted contents (see the expected values)."""
    out = {}
    for split, ids in STAMPS.items():
        n = len(ids)
        out[split] = {k: np.zeros((n, S, S), np.uint8) for k in ("cr", "ignore", "truth")}
    cr, ign, tr = (out["train"][k] for k in ("cr", "ignore", "truth"))
    # train stamp 0, row 0: four pixels of each truth bin; labelled 1, 2, 3, 4 of them
    for b in range(4):
        tr[0, 0, 4 * b:4 * b + 4] = b + 1
        cr[0, 0, 4 * b:4 * b + b + 1] = 1
    tr[0, 1, 0], ign[0, 1, 0] = 4, 2           # injected but saturated: not counted
    cr[0, 1, 1], ign[0, 1, 1] = 1, 1           # false label on a bad pixel: not counted
    cr[0, 2, 0:2] = 1                          # two false labels
    ign[0, 3, 0:8] = 4                         # no data
    tr[2, 5, 5], cr[2, 5, 5] = 4, 1            # one more >10 sigma CR, labelled
    out["val"]["truth"][0, 0, 0] = 1           # val: one <3 sigma CR, labelled
    out["val"]["cr"][0, 0, 0] = 1
    return out


def write_file(path, *, truth=True, stamps=STAMPS, fields=FIELDS, arrays=None):
    """A small valid training set (S=16), written by the real writer."""
    arrays = arrays or _arrays()
    attrs = FileAttributes(manifest_name="test", manifest_sha256="ab" * 32, config={"a": 1},
                           software={"numpy": np.__version__}, instruments=["ACS/WFC"],
                           failed_visits=[{"visit": "v9", "reason": "no EXPTIME"}], stamp_size=S,
                           crforge_version="0.1.0", created_utc="2025-01-02T03:04:05Z")
    rows = [(fid, f"T{fid}", 10.0 + fid, -5.0, ft, split, visit)
            for fid, (split, ft, visit) in fields.items()]
    with DataFileWriter(path, attrs, fields=rows, truth=truth) as w:
        for split, ids in stamps.items():
            n = len(ids)
            meta = np.zeros(n, META_DT)
            for i, fid in enumerate(ids):
                meta[i]["visit"] = fields[fid][2]
                meta[i]["exposure"] = f"e{i}"
                meta[i]["field_id"] = fid
                meta[i]["field_type"] = fields[fid][1]
                meta[i]["filter"] = "F606W"
                meta[i]["exptime"] = 500.0
            a = arrays[split]
            # a different constant per stamp: identical images are duplicates, which are invalid
            image = np.ones((n, S, S), np.float32) * (1 + np.arange(n, dtype=np.float32)[:, None, None]
                                                      + 10 * list(stamps).index(split))
            w.append(split, meta, image=image, cr=a["cr"], ignore=a["ignore"],
                     truth=a["truth"] if truth else None)
    return path


@pytest.fixture
def h5file(tmp_path):
    return write_file(tmp_path / "set.h5")


def _replace(path, name, data, **kw):
    with h5py.File(path, "a") as f:
        attrs = dict(f[name].attrs)
        del f[name]
        ds = f.create_dataset(name, data=data, **kw)
        for k, v in attrs.items():
            ds.attrs[k] = v


# ------------------------------------------------------------------------ valid file


def test_valid_file_has_no_problems(h5file):
    assert validate(h5file) == []
    assert validate(h5file, block=1) == []


def test_summary_figures(h5file):
    s = summarise(h5file, block=2)
    json.dumps(s)  # serialisable
    assert s["schema_version"] == 2 and s["stamp_size"] == S
    assert s["failed_visits"] == [{"visit": "v9", "reason": "no EXPTIME"}]
    sp = s["splits"]
    assert {k: sp[k]["stamps"] for k in sp} == {"train": 3, "val": 1, "test": 2}
    assert sp["train"]["stamps_by_field_type"] == {"extragalactic": 2, "globular_cluster": 1}
    assert sp["val"]["stamps_by_field_type"] == {"resolved_galaxy": 1}
    assert sp["train"]["fields"] == 2 and sp["val"]["fields"] == 1 and sp["test"]["fields"] == 1
    assert sp["train"]["fields_by_field_type"] == {"extragalactic": 1, "globular_cluster": 1}
    assert s["total"]["stamps"] == 6 and s["total"]["fields"] == 4
    assert s["total"]["stamps_by_field_type"] == {
        "extragalactic": 4, "globular_cluster": 1, "resolved_galaxy": 1}

    tr = sp["train"]
    # CR pixels in train: 1+2+3+4 (row 0) + 1 (bad pixel) + 2 (false) + 1 (stamp 2) = 14
    assert tr["pixels"] == 3 * PIX
    assert tr["cr_pixels"] == 14 and tr["ignored_pixels"] == 10
    assert tr["cr_fraction"] == pytest.approx(14 / 768)
    assert tr["ignore_fraction"] == pytest.approx(10 / 768)
    assert tr["cr_fraction_unignored"] == pytest.approx(13 / 758)
    assert sp["val"]["cr_fraction"] == pytest.approx(1 / 256)
    assert sp["test"]["cr_fraction"] == 0.0

    t = tr["truth"]
    assert [b["injected"] for b in t["bins"]] == [4, 4, 4, 5]
    assert [b["labelled"] for b in t["bins"]] == [1, 2, 3, 5]
    assert [b["recall"] for b in t["bins"]] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert t["recall"] == pytest.approx(11 / 17)
    assert t["recall_above_5sigma"] == pytest.approx(8 / 9)
    assert t["negatives"] == 758 - 17 and t["false_labels"] == 2
    assert t["false_labels_per_million"] == pytest.approx(2e6 / 741)
    assert sp["test"]["truth"]["recall"] is None  # nothing injected

    assert s["has_truth"] is True
    a = s["truth"]
    assert a["injected"] == 18 and a["labelled"] == 12
    assert a["bins"][0]["recall"] == pytest.approx(2 / 5)
    negatives = (6 * PIX - 10) - 18
    assert a["negatives"] == negatives
    assert a["false_labels_per_million"] == pytest.approx(2e6 / negatives)

    # the block size does not change anything
    assert summarise(h5file, block=64) == s


def test_summary_without_truth(tmp_path):
    p = write_file(tmp_path / "real.h5", truth=False)
    assert validate(p) == []
    s = summarise(p)
    assert s["has_truth"] is False and s["truth"] is None
    assert s["splits"]["train"]["truth"] is None
    assert "No truth" in format_summary(s)


def test_empty_split_is_valid(tmp_path):
    stamps = {"train": [1, 1, 2], "val": [3], "test": []}
    arrays = _arrays()
    arrays["test"] = {k: np.zeros((0, S, S), np.uint8) for k in ("cr", "ignore", "truth")}
    p = write_file(tmp_path / "e.h5", stamps=stamps, arrays=arrays)
    assert validate(p) == []
    s = summarise(p)
    assert s["splits"]["test"]["stamps"] == 0
    assert s["splits"]["test"]["cr_fraction"] is None
    format_summary(s)


def test_format_summary(h5file):
    s = summarise(h5file)
    text = format_summary(json.loads(json.dumps(s)))
    assert "train" in text and "globular_cluster" in text and "v9" in text
    assert "0.250" in text and "0.889" in text  # bin <3 and >5 sigma recall of train
    assert "1.823%" in text                       # train CR fraction 14/768
    # first table: header, rule and rows all the same width (aligned columns)
    lines = text.splitlines()
    i = lines.index("Stamps and pixels per split")
    block = lines[i + 1:i + 7]
    assert len({len(x) for x in block}) == 1
    with pytest.raises(TypeError, match="summary"):
        format_summary([1])
    with pytest.raises(ValueError, match="summary"):
        format_summary({})


# ------------------------------------------------------------------------ corruptions


def _one(problems, *needles):
    hits = [p for p in problems if all(n in p for n in needles)]
    assert hits, f"no problem mentions {needles}: {problems}"
    return hits[0]


def test_wrong_schema_version(h5file):
    with h5py.File(h5file, "a") as f:
        f.attrs["schema_version"] = 3
    _one(validate(h5file), "schema_version", "expected one of (1, 2)")


def _with_noiseless(path, edit=None):
    """Add ``noiseless`` to every split of a file (``edit(split, array)`` may spoil it)."""
    with h5py.File(path, "a") as f:
        for split in STAMPS:
            n = f[split]["image"].shape[0]
            a = np.full((n, S, S), 40.0, np.float32)
            if edit is not None:
                a = edit(split, a)
            if a is not None:
                f[split].create_dataset("noiseless", data=a, chunks=(1, S, S))
    return path


def test_schema_v2_noiseless_is_valid_and_read(h5file):
    from crforge.pipeline.datafile.reader import split_info

    assert not split_info(h5file, "train").has_noiseless
    assert summarise(h5file)["has_noiseless"] is False
    assert ["noiseless:", "no"] in [ln.split()[:2] for ln in format_summary(summarise(h5file)).splitlines()]
    _with_noiseless(h5file)
    assert validate(h5file) == []
    assert split_info(h5file, "train").has_noiseless
    assert summarise(h5file)["has_noiseless"] is True
    assert ["noiseless:", "yes"] in [ln.split()[:2] for ln in format_summary(summarise(h5file)).splitlines()]


def test_schema_v1_file_is_still_valid_and_read(h5file):
    """A version-1 file (no ``noiseless``) opens and validates; noiseless in v1 is refused."""
    from crforge.pipeline.datafile.reader import split_info

    with h5py.File(h5file, "a") as f:
        f.attrs["schema_version"] = 1
    assert validate(h5file) == []
    info = split_info(h5file, "train")
    assert info.n == 3 and info.has_truth and not info.has_noiseless
    _with_noiseless(h5file)
    _one(validate(h5file), "/train/noiseless", "schema_version 1")


def test_noiseless_problems_are_named(h5file):
    def spoil(split, a):
        if split == "val":
            return None  # missing in one split
        if split == "train":
            a[1, 2, 3] = np.nan  # not finite where ignore == 0
        return a

    _with_noiseless(h5file, spoil)
    probs = validate(h5file)
    _one(probs, "/val/noiseless missing", "expected noiseless in all splits")
    _one(probs, "/train/noiseless", "finite values wherever ignore == 0")


def test_noiseless_without_truth_is_refused(tmp_path):
    path = _with_noiseless(write_file(tmp_path / "nt.h5", truth=False))
    _one(validate(path), "/train/noiseless present without /train/truth")


def test_missing_attribute_and_bad_json(h5file):
    with h5py.File(h5file, "a") as f:
        del f.attrs["manifest_name"]
        f.attrs["software"] = "[1, 2]"
        f.attrs["manifest_sha256"] = "xyz"
    probs = validate(h5file)
    _one(probs, "/:", "manifest_name", "missing")
    _one(probs, "software", "object")
    _one(probs, "manifest_sha256", "64 hex")


def test_field_in_two_splits(h5file):
    with h5py.File(h5file, "a") as f:
        meta = f["test/meta"][()]
        meta[1]["field_id"] = 1
        meta[1]["field_type"] = "extragalactic"
        del f["test/meta"]
        f["test"].create_dataset("meta", data=meta)
    probs = validate(h5file)
    _one(probs, "field_id 1", "two splits", "train", "test")
    _one(probs, "/test/meta", "field_id 1", "'train'")


def test_cr_value_two_found_in_last_block(h5file):
    with h5py.File(h5file, "a") as f:
        f["train/cr"][2, 3, 3] = 2
    msg = _one(validate(h5file, block=2), "/train/cr", "0 or 1")
    assert "stamp 2" in msg and "1 pixel" in msg


def test_ignore_value_nine(h5file):
    with h5py.File(h5file, "a") as f:
        f["val/ignore"][0, 0, 1] = 9
    _one(validate(h5file), "/val/ignore", "9", "0..7")


def test_truth_value_five(h5file):
    with h5py.File(h5file, "a") as f:
        f["test/truth"][1, 0, 0] = 5
    _one(validate(h5file), "/test/truth", "0..4")


def test_unknown_field_id(h5file):
    with h5py.File(h5file, "a") as f:
        meta = f["val/meta"][()]
        meta[0]["field_id"] = 99
        f["val/meta"][...] = meta
    _one(validate(h5file), "/val/meta", "not in /fields", "99")


def test_mismatched_shapes(h5file):
    _replace(h5file, "train/ignore", np.zeros((2, S, S), np.uint8))
    _one(validate(h5file), "/train", "number of stamps", "/train/ignore has 2")


def test_wrong_stamp_size(h5file):
    _replace(h5file, "val/cr", np.zeros((1, S, S + 1), np.uint8))
    _one(validate(h5file), "/val/cr", f"expected {S}x{S}")


def test_image_chunks_wrong(h5file):
    _replace(h5file, "train/image", np.ones((3, S, S), np.float32), chunks=(3, S, S))
    _one(validate(h5file), "/train/image", "chunks", f"(1, {S}, {S})")


def test_wrong_dtype_and_missing_dataset(h5file):
    _replace(h5file, "train/cr", np.zeros((3, S, S), np.int16))
    with h5py.File(h5file, "a") as f:
        del f["val/ignore"]
    probs = validate(h5file)
    _one(probs, "/train/cr", "dtype", "u1")
    _one(probs, "/val/ignore", "missing")


def test_missing_group_and_fields(h5file):
    with h5py.File(h5file, "a") as f:
        del f["val"]
        del f["fields"]
    probs = validate(h5file)
    _one(probs, "/val", "missing group")
    _one(probs, "/fields", "missing")


def test_truth_in_some_splits_only(h5file):
    with h5py.File(h5file, "a") as f:
        del f["val/truth"]
    _one(validate(h5file), "/val/truth missing", "all splits or in none")


def test_meta_field_missing_and_nan_image(h5file):
    with h5py.File(h5file, "a") as f:
        meta = f["test/meta"][()]
        del f["test/meta"]
        names = [n for n in META_DT.names if n != "gain"]
        f["test"].create_dataset("meta", data=meta[names].copy())
        f["val/image"][0, 4, 4] = np.nan
    probs = validate(h5file)
    _one(probs, "/test/meta", "'gain'")
    _one(probs, "/val/image", "finite")


# ------------------------------------------------------------------------------- CLI


def test_run_valid_text_and_json(h5file, capsys):
    assert cli.main(["inspect", str(h5file)]) == 0
    out = capsys.readouterr().out
    assert "Stamps and pixels per split" in out
    assert cli.main(["inspect", str(h5file), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["splits"]["train"]["stamps"] == 3
    assert data["truth"]["injected"] == 18


def test_run_invalid(h5file, capsys):
    with h5py.File(h5file, "a") as f:
        f["train/cr"][0, 0, 0] = 2
    assert cli.main(["inspect", str(h5file)]) == 2  # bad input (issue 16: was 1)
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "/train/cr" in cap.err


def test_run_missing_and_non_hdf5(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "nope.h5")]) == 2
    assert "nope.h5" in capsys.readouterr().err
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    assert cli.main(["inspect", str(bad)]) == 2
    assert "bad.h5" in capsys.readouterr().err


def test_input_checks(h5file):
    with pytest.raises(TypeError, match="path"):
        validate(3)
    with pytest.raises(ValueError, match="block"):
        summarise(h5file, block=0)
    with pytest.raises(TypeError, match="block"):
        validate(h5file, block=1.5)


def test_write_arrays_gives_valid_files(tmp_path):
    """The in-memory writer (tests, benchmarks) makes files the validator accepts, truth or not."""
    from crforge.pipeline.datafile.writer import write_arrays

    rng = np.random.default_rng(1)
    for with_truth in (True, False):
        splits = {}
        for split, n in (("train", 5), ("val", 3)):
            meta = np.zeros(n, META_DT)
            meta["field_type"] = [("extragalactic", "globular_cluster")[i % 2] for i in range(n)]
            arrays = {"image": rng.normal(0, 1, (n, S, S)).astype(np.float32),
                      "cr": (rng.random((n, S, S)) < 0.01).astype(np.uint8),
                      "ignore": np.zeros((n, S, S), np.uint8), "meta": meta}
            if with_truth:
                arrays["truth"] = arrays["cr"] * 4
            splits[split] = arrays
        path = write_arrays(tmp_path / f"a{with_truth}.h5", splits)
        assert validate(path) == []
        s = summarise(path)
        assert s["splits"]["test"]["stamps"] == 0 and s["total"]["stamps"] == 8
        assert s["has_truth"] is with_truth and s["total"]["fields"] == 4


def test_compressed_chunks_round_trip_and_read_back_through_hdf5(tmp_path):
    """The chunks the dataset workers keep decompress to the stamps, and HDF5 reads them as such."""
    from crforge.pipeline.datafile.writer import compress_stamps, decompress_stamps

    rng = np.random.default_rng(3)
    stamps = {"image": rng.normal(100, 5, (3, S, S)).astype(np.float32),
              "cr": (rng.random((3, S, S)) < 0.05).astype(np.uint8)}
    for name, a in stamps.items():
        blob, lengths = compress_stamps(a)
        assert lengths.sum() == blob.size and (lengths > 0).all()
        assert np.array_equal(decompress_stamps(blob, lengths, dtype=a.dtype, size=S), a), name
    with h5py.File(tmp_path / "c.h5", "w") as h:
        ds = h.create_dataset("image", shape=(3, S, S), dtype="f4", chunks=(1, S, S), shuffle=True,
                              compression="gzip")
        blob, lengths = compress_stamps(stamps["image"])
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for i in range(3):
            ds.id.write_direct_chunk((i, 0, 0), blob[offsets[i]:offsets[i + 1]].tobytes())
        assert np.array_equal(ds[:], stamps["image"])
