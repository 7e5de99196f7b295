"""The labelling stage, with real AstroDrizzle on small simulated visits."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from astropy.io import fits

from crforge.errors import InputError
from crforge.pipeline import masks
from crforge.pipeline.label.astrodrizzle import DrizzleError
from crforge.pipeline.label.config import LabelConfig
from crforge.pipeline.label.result import VisitLabels, read_labels
from crforge.pipeline.label.stage import label_visit
from crforge.pipeline.label.validate import ExposureError, VisitError, validate_exposure
from crforge.pipeline.quality import score_visit, summarise
from crforge.pipeline.simulate.config import SimulateConfig
from crforge.pipeline.simulate.visit import simulate_visit

SHAPE = (256, 512)


def _digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    out = {}
    for key, field, n in (("gc2", "globular_cluster", 2), ("eg4", "extragalactic", 4),
                          ("rg3", "resolved_galaxy", 3)):
        cfg = SimulateConfig(field_type=field, n_exposures=n, chip_shape=SHAPE, seed=21,
                             obset_id=key[:2], dither="line" if n == 2 else "box")
        out[key] = simulate_visit(cfg, root)
    return out


@pytest.fixture(scope="module")
def labelled(sims, tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    before = {k: _digest(v) for k, v in sims.items()}
    reports = {k: label_visit(v, root / v.name) for k, v in sims.items()}
    return root, reports, before


@pytest.mark.parametrize("key", ["gc2", "eg4", "rg3"])
def test_label_quality_meets_the_bars(sims, labelled, key):
    """>= 95% of CR pixels above 5 sigma found, <= 100 false labels per million."""
    root, reports, _ = labelled
    s = summarise(score_visit(root / sims[key].name, sims[key]))
    assert s["recall_above_5sigma"] >= 0.95, s
    assert s["false_per_million"] <= 100, s
    # and the faint end is where it should be: hard, not free
    assert s["recall_by_snr"]["0-3"] < 0.2


def test_two_exposure_refinement_beats_astrodrizzle_defaults(sims, labelled, tmp_path):
    root, reports, _ = labelled
    assert reports["gc2"].refined and not reports["eg4"].refined
    plain = label_visit(sims["gc2"], tmp_path / "plain", LabelConfig(refine_max_exposures=0, grow_snr=0))
    assert plain.astrodrizzle["combine_type"] == "minmed"
    assert reports["gc2"].astrodrizzle["combine_type"] == "minimum"
    ours = summarise(score_visit(root / sims["gc2"].name, sims["gc2"]))
    theirs = summarise(score_visit(tmp_path / "plain", sims["gc2"]))
    assert ours["recall_by_snr"]["5-10"] > theirs["recall_by_snr"]["5-10"] + 0.1
    assert ours["recall_above_5sigma"] > theirs["recall_above_5sigma"]


def test_label_files_follow_the_product_layout(sims, labelled):
    root, reports, _ = labelled
    rep = reports["eg4"]
    assert rep.n_exposures == 4 and len(rep.exposures) == 4
    assert rep.astrodrizzle["updatewcs"] is False
    with fits.open(root / sims["eg4"].name / rep.exposures[0].label) as h:
        assert [(x.name, x.ver) for x in h[1:]] == [
            ("SCI", 1), ("CR", 1), ("IGNORE", 1), ("SCI", 2), ("CR", 2), ("IGNORE", 2)]
        assert h["CR", 1].data.dtype == np.uint8 and set(np.unique(h["CR", 1].data)) <= {0, 1}
        ign = h["IGNORE", 1].data
        assert ign.dtype == np.uint8 and ign.max() <= 7
        assert h["SCI", 1].header["BUNIT"] == "ELECTRONS"
        raw = fits.getdata(sims["eg4"] / f"{rep.exposures[0].rootname}_flc.fits", ("SCI", 1))
        assert np.array_equal(h["SCI", 1].data, raw)
        dq = fits.getdata(sims["eg4"] / f"{rep.exposures[0].rootname}_flc.fits", ("DQ", 1))
        assert np.all(ign[(dq & 16) > 0] & masks.IGNORE_BAD)
        # the dithers leave an edge strip that no other exposure covers: no label possible
        assert (ign & masks.IGNORE_NODATA).any()
        assert 0.001 < h["CR", 1].header["CRFRAC"] < 0.05


def test_inputs_untouched_scratch_removed_and_rerun_resumes(sims, labelled):
    root, reports, before = labelled
    for key, visit in sims.items():
        assert _digest(visit) == before[key], f"{key}: inputs modified"
    out = root / sims["rg3"].name
    assert not list(out.glob(".scratch-*"))
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = label_visit(sims["rg3"], out)
    assert again == reports["rg3"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp


def test_labels_json_is_the_typed_result(sims, labelled):
    """labels.json holds exactly to_json() of the result, and reads back equal."""
    root, reports, _ = labelled
    for key, rep in reports.items():
        assert isinstance(rep, VisitLabels)
        doc = json.loads((root / sims[key].name / "labels.json").read_text())
        assert doc == rep.to_json()
        assert list(doc) == ["visit", "instrument", "filter", "target", "n_exposures", "refined",
                             "refused", "config", "astrodrizzle", "drizzlepac_version",
                             "seconds_astrodrizzle", "seconds_total", "exposures"]
        assert list(doc["exposures"][0]) == ["rootname", "input", "label", "chips"]
        assert list(doc["exposures"][0]["chips"][0]) == ["extver", "cr_fraction", "sky", "ignore_fraction"]
        assert VisitLabels.from_json(doc) == rep == read_labels(root / sims[key].name)
        assert [c.extver for c in rep.exposures[0].chips] == [1, 2]
        assert rep.exposures[0].input == sims[key] / f"{rep.exposures[0].rootname}_flc.fits"


# ---- refusals: each names the culprit ----------------------------------------------


@pytest.fixture()
def pair(tmp_path):
    v = simulate_visit(SimulateConfig(n_exposures=2, chip_shape=(64, 128), seed=3), tmp_path / "raw")
    return v, sorted(v.glob("*_flc.fits"))


def _edit(path, fn):
    with fits.open(path, mode="update") as h:
        fn(h)


@pytest.mark.parametrize("what,edit,expect", [
    ("BUNIT", lambda h: h["SCI", 2].header.remove("BUNIT"), r"\[SCI,2\]: keyword BUNIT missing"),
    ("EXPTIME", lambda h: h[0].header.remove("EXPTIME"), r"\[PRIMARY\]: keyword EXPTIME missing"),
    ("EXPEND", lambda h: h[0].header.remove("EXPEND"), r"\[PRIMARY\]: keyword EXPEND missing"),
    ("gain", lambda h: h[0].header.remove("ATODGNC"), r"\[PRIMARY\]: keyword ATODGNC missing"),
    ("unit", lambda h: h["SCI", 1].header.set("BUNIT", "COUNTS"), r"\[SCI,1\]: BUNIT='COUNTS'"),
    ("ngood", lambda h: h["SCI", 1].header.set("NGOODPIX", 0), r"\[SCI,1\]: NGOODPIX=0"),
    ("wcs", lambda h: (h["SCI", 1].header.set("CTYPE1", "RA---SIN"),
                       h["SCI", 1].header.set("CTYPE2", "DEC--SIN")), r"\[SCI,1\]: CTYPE1/CTYPE2"),
    ("nowcs", lambda h: h["SCI", 2].header.remove("CTYPE1"), r"\[SCI,2\]: (unusable WCS|CTYPE1/CTYPE2)"),
])
def test_bad_keyword_is_refused_by_name(pair, what, edit, expect):
    visit, files = pair
    _edit(files[1], edit)
    with pytest.raises(ExposureError, match=files[1].name.replace(".", r"\.") + expect):
        validate_exposure(files[1])
    # one bad file of two leaves one: the visit is refused, naming the file and reason
    with pytest.raises(VisitError, match=rf"1 usable exposure.*{files[1].name}"):
        label_visit(visit, visit.parent / "labels")
    assert validate_exposure(files[0]).exptime == 500.0


def test_missing_dq_extension_is_refused(pair):
    visit, files = pair
    with fits.open(files[0]) as h:
        keep = fits.HDUList([x for x in h if not (x.name == "DQ" and x.ver == 2)])
        keep.writeto(files[0], overwrite=True)
    with pytest.raises(ExposureError, match=rf"{files[0].name}\[DQ,2\]: extension missing"):
        validate_exposure(files[0])


def test_corrupt_and_truncated_files_are_refused(pair):
    visit, files = pair
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 3])  # an interrupted download
    with pytest.raises(ExposureError, match=rf"{files[0].name}: truncated FITS file"):
        validate_exposure(files[0])
    files[1].write_bytes(b"SIMPLE  = this is not FITS" + bytes(100))
    with pytest.raises(ExposureError, match=rf"{files[1].name}: not a readable FITS file"):
        validate_exposure(files[1])


def test_malformed_labels_json_is_refused_by_name_and_relabelled(pair):
    visit, _ = pair
    out = visit.parent / "labels"
    out.mkdir()
    (out / "labels.json").write_text('{"visit": "x"}')
    with pytest.raises(InputError, match=r"labels\.json: not a labels report"):
        read_labels(out)
    rep = label_visit(visit, out)  # not taken for complete labels: the visit is labelled
    assert rep.n_exposures == 2 and read_labels(out) == rep


def test_single_exposure_visit_is_refused(pair):
    visit, files = pair
    files[1].unlink()
    with pytest.raises(VisitError, match=r"1 usable exposure\(s\), at least 2 needed"):
        label_visit(visit, visit.parent / "labels")
    assert not (visit.parent / "labels" / "labels.json").exists()


def test_astrodrizzle_failure_is_reported_with_its_log(pair):
    """DQ stored as uint16 (BZERO=32768) passes our checks but crashes drizzlepac 3.11."""
    visit, files = pair
    for f in files:
        _edit(f, lambda h: [h["DQ", ev].__setattr__("data", h["DQ", ev].data.astype(np.uint16))
                            for ev in (1, 2)])
    before = _digest(visit)
    out = visit.parent / "labels"
    with pytest.raises(DrizzleError, match="AstroDrizzle failed.*log tail"):
        label_visit(visit, out)
    assert _digest(visit) == before
    assert not list(out.glob(".scratch-*")) and not (out / "labels.json").exists()


def test_bad_label_config_is_refused(pair):
    visit, _ = pair
    for kw, match in (({"combine_type": "best"}, "combine_type='best'"),
                      ({"driz_cr_snr": "3.5"}, "driz_cr_snr='3.5'"),
                      ({"refine_snr": (2.0, 3.0)}, "refine_snr"),
                      ({"min_exposures": 1}, "min_exposures=1")):
        with pytest.raises(ValueError, match=match):
            label_visit(visit, visit.parent / "labels", LabelConfig(**kw))


def test_wfc3_uvis_visit_is_labelled_from_its_table(tmp_path):
    """A second imager is a table entry: same code path, its own chips and DQ bits."""
    v = simulate_visit(SimulateConfig(instrument="WFC3/UVIS", n_exposures=3, chip_shape=(128, 256),
                                      seed=2, filter="F814W"), tmp_path / "raw")
    assert v.name.startswith("i")
    rep = label_visit(v, tmp_path / "labels")
    assert rep.instrument == "WFC3/UVIS" and rep.filter == "F814W"
    s = summarise(score_visit(tmp_path / "labels", v))
    assert s["recall_above_5sigma"] >= 0.9 and s["false_per_million"] <= 200


def test_cli_simulate_then_label(tmp_path, capsys):
    from crforge.cli import main

    assert main(["simulate", "--out", str(tmp_path / "raw"), "--size", "64x128",
                 "--n-exposures", "2", "--set", "seed=9"]) == 0
    visit = next((tmp_path / "raw").iterdir())
    assert main(["label", str(visit), "--out", str(tmp_path / "labels")]) == 0
    rep = json.loads((tmp_path / "labels" / visit.name / "labels.json").read_text())
    assert rep["n_exposures"] == 2
    assert main(["label", str(tmp_path / "nowhere"), "--out", str(tmp_path / "labels")]) == 2
    assert "visit directory not found" in capsys.readouterr().err
