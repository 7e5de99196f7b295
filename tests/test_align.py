"""Alignment before AstroDrizzle, and the simulator's pointing error that exercises it.

Small seeded visits (two 256x512 chips per exposure) with a 0.2-pixel rms pointing
error: labelled with and without alignment, against the injected truth; a sparse
field that cannot be aligned refused by ``crforge label`` (exit 2, nothing labelled)
and reported and left out by ``crforge dataset``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from crforge import cli
from crforge.pipeline.label.align import AlignmentError
from crforge.pipeline.label.config import LabelConfig
from crforge.pipeline.label.result import read_labels
from crforge.pipeline.label.stage import label_visit
from crforge.pipeline.quality import score_visit, summarise
from crforge.pipeline.simulate.config import SimulateConfig
from crforge.pipeline.simulate.visit import simulate_visit

SHAPE = (256, 512)
CRFORGE = Path(sys.executable).with_name("crforge")
ALIGN = LabelConfig(align=True)


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _true_errors(visit: Path) -> list[tuple[float, float]]:
    """(dy, dx) of each exposure's header WCS off its true pointing, from the truth files."""
    out = []
    for t in sorted(visit.glob("*_truth.fits")):
        h = fits.getheader(t)
        out.append((h["PNTERRY"], h["PNTERRX"]))
    return out


@pytest.fixture(scope="module")
def misaligned(tmp_path_factory):
    """A 2-exposure globular-cluster visit whose headers are off by 0.2 px rms."""
    cfg = SimulateConfig(field_type="globular_cluster", n_exposures=2, chip_shape=SHAPE, seed=21,
                         obset_id="p2", dither="line", pointing_error=0.2)
    return simulate_visit(cfg, tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def both(misaligned, tmp_path_factory):
    """The visit labelled as it is and aligned first; the raw files' digests before."""
    root = tmp_path_factory.mktemp("labels")
    before = _digest(misaligned)
    plain = label_visit(misaligned, root / "plain")
    aligned = label_visit(misaligned, root / "aligned", ALIGN)
    return root, plain, aligned, before


def test_pointing_error_moves_the_header_not_the_pixels(tmp_path):
    """Same seed: identical pixels; the header CRPIX off by the error the truth records."""
    kw = dict(n_exposures=2, chip_shape=(64, 96), seed=7, dither="line")
    exact = simulate_visit(SimulateConfig(**kw), tmp_path / "a")
    off = simulate_visit(SimulateConfig(**kw, pointing_error=0.2), tmp_path / "b")
    errors = _true_errors(off)
    assert _true_errors(exact) == [(0.0, 0.0), (0.0, 0.0)]
    assert all(0 < abs(e) < 1.0 for pair in errors for e in pair)
    meta = json.loads((off / "visit.json").read_text())
    assert np.allclose([(e["pointing_error_dy"], e["pointing_error_dx"]) for e in meta["exposures"]], errors,
                       rtol=0, atol=1e-12)
    for f, (dy, dx) in zip(sorted(exact.glob("*_flc.fits")), errors):
        with fits.open(f) as a, fits.open(off / f.name) as b:
            assert np.array_equal(a["SCI", 1].data, b["SCI", 1].data)
            # the header believes the exposure points (dy, dx) further: CRPIX smaller by that much
            assert b["SCI", 1].header["CRPIX1"] == pytest.approx(a["SCI", 1].header["CRPIX1"] - dx, abs=1e-9)
            assert b["SCI", 1].header["CRPIX2"] == pytest.approx(a["SCI", 1].header["CRPIX2"] - dy, abs=1e-9)
    with pytest.raises(ValueError, match="pointing_error=-0.1"):
        SimulateConfig(pointing_error=-0.1).validate()


def test_alignment_removes_the_false_labels_on_stars(misaligned, both):
    root, plain, aligned, _ = both
    p = summarise(score_visit(root / "plain", misaligned))
    a = summarise(score_visit(root / "aligned", misaligned))
    # misregistered stars leave dipoles the CR test takes for cosmic rays
    assert p["false_source_per_million"] > 2000, p
    assert a["false_source_per_million"] < p["false_source_per_million"] / 10, (a, p)
    assert a["false_per_million"] <= 100 and a["recall_above_5sigma"] >= 0.95, a


def test_fit_residuals_land_in_labels_json(misaligned, both):
    root, plain, aligned, before = both
    (ey0, ex0), (ey1, ex1) = _true_errors(misaligned)
    doc = json.loads((root / "aligned" / "labels.json").read_text())
    ref, fit = doc["alignment"]
    assert ref["status"] == "REFERENCE" and ref["rootname"] == doc["exposures"][0]["rootname"]
    assert fit["status"] == "SUCCESS" and fit["n_matches"] >= 100 and 0 < fit["rms"] < 0.5
    # the correction undoes the second exposure's error relative to the first
    assert fit["shift"][0] == pytest.approx(-(ex1 - ex0), abs=0.03)
    assert fit["shift"][1] == pytest.approx(-(ey1 - ey0), abs=0.03)
    assert read_labels(root / "aligned").alignment[1]["n_matches"] == fit["n_matches"]
    assert doc["config"]["align"] is True
    # unaligned labels.json is what it always was: no alignment, no align_* settings
    plain_doc = json.loads((root / "plain" / "labels.json").read_text())
    assert "alignment" not in plain_doc and not any(k.startswith("align") for k in plain_doc["config"])
    # the label files carry the WCS the labels were made on; the raw files are untouched
    name = doc["exposures"][1]["label"]
    with fits.open(root / "aligned" / name) as lab, fits.open(root / "plain" / name) as old:
        assert lab["CR", 1].header["CRFALIGN"] is True
        assert lab["SCI", 1].header["CRVAL1"] != old["SCI", 1].header["CRVAL1"]
    assert _digest(misaligned) == before


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    """An extragalactic visit on small chips: too few sources to pin a shift down."""
    cfg = SimulateConfig(field_type="extragalactic", n_exposures=2, chip_shape=(128, 256), seed=5,
                         obset_id="s2", dither="line", pointing_error=0.1)
    return simulate_visit(cfg, tmp_path_factory.mktemp("sparse"))


def test_a_visit_that_cannot_be_aligned_is_refused(sparse, tmp_path):
    before = _digest(sparse)
    with pytest.raises(AlignmentError, match=f"visit {sparse.name}: ") as exc:
        label_visit(sparse, tmp_path / "lab", ALIGN)
    assert "not labelled" in str(exc.value)
    assert not (tmp_path / "lab" / "labels.json").exists()
    assert not list((tmp_path / "lab").glob("*_label.fits"))
    # the command line: exit 2, the visit named, nothing labelled, the inputs as they were
    proc = subprocess.run([str(CRFORGE), "label", str(sparse), "--out", str(tmp_path / "cli"),
                           "--set", "label.align=true"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"visit {sparse.name}" in proc.stderr and "not labelled" in proc.stderr
    assert not list((tmp_path / "cli").rglob("labels.json"))
    assert _digest(sparse) == before


@pytest.mark.parametrize("bad, match", [("label.align_fitgeom=affine", "align_fitgeom='affine'"),
                                        ("label.align_max_rms=0", "align_max_rms=0"),
                                        ("label.align_min_matches=1", "align_min_matches=1")])
def test_bad_alignment_settings_are_refused(sparse, tmp_path, bad, match, capsys):
    assert cli.main(["label", str(sparse), "--out", str(tmp_path), "--set", bad]) == 2
    assert match in capsys.readouterr().err
    assert not list(tmp_path.rglob("labels.json"))


def test_dataset_reports_and_leaves_out_the_visit_that_cannot_be_aligned(tmp_path):
    """Per-visit alignment settings from the manifest; the failed visit is reported, not labelled."""
    man = tmp_path / "m.toml"
    man.write_text("""name = "aligned"
seed = 40
[defaults]
chip_shape = [256, 512]
n_exposures = 2
dither = "line"
pointing_error = 0.2
[defaults.label]
align = true
[[visit]]
field_type = "globular_cluster"
obset_id = "g1"
split = "train"
[visit.label]
align_threshold = 12.0
[[visit]]
field_type = "extragalactic"
obset_id = "e1"
chip_shape = [128, 256]
split = "test"
""")
    out = tmp_path / "w"
    rc = cli.main(["dataset", "--manifest", str(man), "--work", str(out), "--scheduler", "serial",
                   "--set", "dataset.max_failed_fraction=0.5", "--set", "stamps.max_ignored=1.0"])
    assert rc == 0
    report = json.loads((out / "aligned.report.json").read_text())
    (failed,) = report["visits_failed"]
    name = failed["visit"]
    assert name.endswith("e1") and "AlignmentError" in failed["reason"]
    assert f"visit {name}" in failed["reason"]
    assert not (out / "labels" / name / "labels.json").exists()
    good = next(p for p in (out / "labels").iterdir() if p.name.endswith("g1"))
    doc = json.loads((good / "labels.json").read_text())
    assert [a["status"] for a in doc["alignment"]] == ["REFERENCE", "SUCCESS"]
    assert doc["config"]["align_threshold"] == 12.0  # the manifest row's own setting
    assert report["visits_done"] == 1


def test_a_rows_own_label_settings_decide_whether_its_stamps_are_reused():
    """Changing a manifest row's alignment settings redoes that visit (not stale stamps)."""
    from crforge.pipeline.dataset.config import StampConfig
    from crforge.pipeline.dataset.stage import _visit_key
    from crforge.pipeline.manifest import VisitSpec

    spec = VisitSpec(name="v", source="archive", field_type="globular_cluster",
                     archive={"instrument": "ACS/WFC"}, label={"align": True, "align_threshold": 800})
    key = _visit_key(spec, LabelConfig(), StampConfig())
    other = VisitSpec(**{**spec.__dict__, "label": {"align": True, "align_threshold": 400}})
    assert _visit_key(other, LabelConfig(), StampConfig()) != key
    same = VisitSpec(**{**spec.__dict__, "label": dict(spec.label)})
    assert _visit_key(same, LabelConfig(), StampConfig()) == key
