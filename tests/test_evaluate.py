"""Tests of the evaluation (training/metrics.py, training/baselines.py, training/evaluate/).

The metrics are checked on hand-built cases whose TPR, FPR and dilated TPR are known
exactly; the baselines on synthetic images; the evaluation end to end on a tiny
schema-v1 file with a tiny trained run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crforge import cli
from crforge.errors import InputError
from crforge.pipeline.datafile.schema import META_DTYPE
from crforge.pipeline.datafile.writer import write_arrays
from crforge.training import metrics as M
from crforge.training.baselines import biharmonic_fill, lacosmic_mask, median_fill
from crforge.training.config import ModelConfig, TrainConfig
from crforge.training.evaluate.config import EvaluateConfig
from crforge.training.evaluate.data import load_stamps
from crforge.training.evaluate.photometry import aperture_flux, find_stars, hit_stars
from crforge.training.evaluate.stage import evaluate_run
from crforge.training.train import main

S = 64
FIELD_TYPES = ("extragalactic", "globular_cluster", "resolved_galaxy")


# other jobs share this machine: every test on one core (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("torch_one_thread")


# --------------------------------------------------------------------------- metrics


def test_roc_curve_on_a_hand_built_case():
    # 4 positives, 6 negatives; distinct scores, so every threshold is one step
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    labels = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0])
    c = M.roc_curve(scores, labels)
    assert c["n_pos"] == 4 and c["n_neg"] == 6
    # at each threshold: (tp, fp) = (1,0) (2,0) (2,1) (3,1) (3,2) (3,3) (4,3) (4,4) (4,5) (4,6)
    np.testing.assert_allclose(c["tpr"], [0, .25, .5, .5, .75, .75, .75, 1, 1, 1, 1])
    np.testing.assert_allclose(c["fpr"], np.array([0, 0, 0, 1, 1, 2, 3, 3, 4, 5, 6]) / 6)
    assert c["threshold"][0] == np.inf and c["threshold"][1] == 0.9
    # interpolated: at FPR 1/12 (half-way between 0 and 1/6) the best TPR reachable is
    # half-way along the segment from (0, 0.5) to (1/6, 0.75)
    assert M.interp_tpr(c["fpr"], c["tpr"], 1 / 12) == pytest.approx(0.625)
    assert M.interp_tpr(c["fpr"], c["tpr"], 0.0) == pytest.approx(0.5)
    assert M.interp_tpr(c["fpr"], c["tpr"], 0.5) == pytest.approx(1.0)


def test_roc_curve_ties_and_ignored_pixels():
    scores = np.array([0.9, 0.9, 0.9, 0.1, 0.99])
    labels = np.array([1, 0, 0, 0, 0])
    valid = np.array([True, True, True, True, False])  # the 0.99 negative is ignored
    c = M.roc_curve(scores, labels, valid)
    # one threshold for the tie: 1 TP and 2 FP together, then the last negative
    np.testing.assert_allclose(c["tpr"], [0, 1, 1])
    np.testing.assert_allclose(c["fpr"], [0, 2 / 3, 1])
    assert c["n_neg"] == 3


def test_dilated_tpr_counts_a_neighbour_and_fpr_stays_undilated():
    # a 5x5 image: one CR at the centre scored 0.2; its neighbour scored 0.9 (a
    # prediction one pixel off); everything else 0
    s = np.zeros((5, 5), np.float32)
    lab = np.zeros((5, 5), bool)
    lab[2, 2] = True
    s[2, 2], s[2, 3] = 0.2, 0.9
    d = M.dilate_scores(s, 3)
    assert d[2, 2] == pytest.approx(0.9) and d[0, 0] == 0
    c = M.roc_curve(s, lab, dilated_scores=d)
    # at the first threshold (call: score >= 0.9) one negative is called: FPR 1/24,
    # TPR 0 undilated, 1 dilated
    assert c["fpr"][1] == pytest.approx(1 / 24)
    assert c["tpr"][1] == 0 and c["tpr_dilated"][1] == 1
    # the same through binary_rates on the call at 0.5
    r = M.binary_rates(s > 0.5, lab, dilate=3)
    assert r == {"tpr": 0.0, "fpr": pytest.approx(1 / 24), "tpr_dilated": 1.0}


def test_dilation_ignores_unlabelled_pixels_and_image_borders():
    s = np.zeros((2, 4, 4), np.float32)
    lab = np.zeros((2, 4, 4), bool)
    lab[1, 0, 0] = True
    s[0, 0, 1] = 1.0  # in the other image of the stack: must not reach image 1
    valid = np.ones_like(lab)
    s[1, 1, 1] = 1.0
    valid[1, 1, 1] = False  # an ignored pixel next to the CR: no label, no help
    d = M.dilate_scores(s, 3, valid)
    assert d[1, 0, 0] == 0.0
    assert M.binary_rates(s > 0.5, lab, valid, dilate=3)["tpr_dilated"] == 0.0
    assert M.dilate_scores(s, 3)[1, 0, 0] == 1.0  # without the ignore mask it would


def test_interp_tpr_takes_the_best_tpr_at_a_shared_fpr_and_checks_inputs():
    assert M.interp_tpr([0, 0.1, 0.1, 1], [0, 0.2, 0.6, 1], 0.1) == pytest.approx(0.6)
    assert np.isnan(M.interp_tpr([], [], 0.1))
    with pytest.raises(ValueError, match="fpr=2"):
        M.interp_tpr([0, 1], [0, 1], 2)
    with pytest.raises(ValueError, match="shapes"):
        M.roc_curve(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="size=2"):
        M.dilate_scores(np.zeros((3, 3)), 2)


def test_roc_matches_threshold_at_fpr_on_random_scores():
    rng = np.random.default_rng(0)
    labels = rng.random(20000) < 0.05
    scores = rng.normal(labels * 2.0, 1.0)
    c = M.roc_curve(scores, labels)
    t = M.threshold_at_fpr(scores, labels, 0.01)
    tpr, fpr = M.rates_at_threshold(scores, labels, t)
    # the interpolated TPR at the achieved FPR is the exact TPR there
    assert M.interp_tpr(c["fpr"], c["tpr"], fpr) == pytest.approx(tpr, abs=1e-3)
    assert 0.3 < tpr < 0.5  # a unit-variance 2-sigma separation: about 37% at 1% FPR


def test_masked_mse():
    a = np.arange(9.0).reshape(3, 3)
    m = np.zeros((3, 3), bool)
    m[0, :2] = True
    assert M.masked_mse(a + 2, a, m) == (4.0, 2)
    assert np.isnan(M.masked_mse(a, a, np.zeros_like(m))[0])


# --------------------------------------------------------------------------- baselines


def _sky_image(rng, sky=100.0, n_cr=40, size=96):
    img = rng.normal(sky, np.sqrt(sky + 25), (size, size)).astype(np.float32)
    cr = np.zeros((size, size), bool)
    for _ in range(n_cr):
        y, x = rng.integers(3, size - 3, 2)
        cr[y, x:x + 2] = True
    img[cr] += 800
    return img, cr


def test_lacosmic_finds_sharp_crs_and_respects_inmask():
    img, cr = _sky_image(np.random.default_rng(1))
    found = lacosmic_mask(img, readnoise=5.0)
    assert (found & cr).sum() / cr.sum() > 0.95
    assert (found & ~cr).sum() < 20
    ignore = np.zeros_like(cr)
    ignore[:, :48] = True
    found2 = lacosmic_mask(img, readnoise=5.0, ignore=ignore)
    assert not (found2 & ignore).any()
    with pytest.raises(ValueError, match="readnoise"):
        lacosmic_mask(img, readnoise=-1)


def test_median_and_biharmonic_fill_a_smooth_image():
    yy, xx = np.mgrid[:40, :40]
    img = (100 + 2 * yy + xx).astype(np.float32)
    m = np.zeros_like(img, bool)
    m[10:12, 10:14] = True
    m[30, 5:30] = True
    med, bih = median_fill(img, m), biharmonic_fill(img, m)
    assert np.array_equal(med[~m], img[~m]) and np.array_equal(bih[~m], img[~m])
    # a plane is biharmonic: filled exactly; the median of a plane's window is close
    assert np.abs(bih[m] - img[m]).max() < 1e-3
    assert np.abs(med[m] - img[m]).max() <= 3.0
    big = np.zeros_like(m)
    big[5:25, 5:25] = True  # windows entirely masked: filled from a larger one
    assert np.isfinite(median_fill(img, big)).all()
    with pytest.raises(ValueError, match="every pixel"):
        median_fill(img, np.ones_like(m))


# --------------------------------------------------------------------------- photometry


def test_aperture_photometry_helpers_find_and_hit_stars():
    rng = np.random.default_rng(3)
    img = rng.normal(0, 1, (64, 64)).astype(np.float32)
    yy, xx = np.mgrid[:64, :64]
    for y, x in ((20, 20), (40, 45)):
        img += 500 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 2.0)
    exclude = np.zeros((64, 64), bool)
    exclude[40, 47] = True  # a CR inside the second star's aperture: that star is not clean
    stars = find_stars(img, 1.0, exclude, 3.0, 30.0, 5, rng)
    assert stars == [(20, 20)]
    assert aperture_flux(img, 20, 20, 3.0) == pytest.approx(500 * 2 * np.pi, rel=0.02)
    hit = hit_stars((64, 64), stars, [np.array([[0, 0], [0, 1]])], 3.0, rng)
    assert 1 <= hit.sum() <= 2 and ((yy - 20) ** 2 + (xx - 20) ** 2 <= 9)[hit].any()


# --------------------------------------------------------------------------- end to end


def _write_eval_h5(path: Path, seed: int = 0, noiseless: bool = False) -> Path:
    """A valid file with truth (the real writer): bright CRs (>10 sigma bin) labelled, faint ones (3-5) not.

    With ``noiseless``, schema v2's noiseless pixels (sky + stars) too.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S]
    splits = {}
    for split, n in (("train", 12), ("val", 6), ("test", 9)):
        image = np.empty((n, S, S), np.float32)
        clean = np.full((n, S, S), 60.0, np.float32)
        cr, truth, ignore = (np.zeros((n, S, S), np.uint8) for _ in range(3))
        for i in range(n):
            img = 60 + rng.normal(0, np.sqrt(60 + 25), (S, S))
            for _ in range(2):
                y, x = rng.uniform(10, S - 10, 2)
                star = 3000 / (2 * np.pi * 1.2 ** 2) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 2.88)
                img += star
                clean[i] += star.astype(np.float32)
            for _ in range(6):
                y, x = rng.integers(2, S - 3, 2)
                amp = rng.uniform(100, 1500)
                img[y, x:x + 2] += amp
                truth[i, y, x:x + 2] = 4 if amp > 300 else 2
                if amp > 300:
                    cr[i, y, x:x + 2] = 1
            ignore[i, :, int(rng.integers(S))] = 1
            image[i] = img
        meta = np.zeros(n, META_DTYPE)
        meta["sky"], meta["exptime"], meta["readnoise"], meta["gain"] = 60.0, 400.0, 5.0, 1.0
        meta["field_type"] = [FIELD_TYPES[i % 3] for i in range(n)]
        meta["filter"] = "F606W"
        meta["exposure"] = [f"j0000{i:02d}q" for i in range(n)]
        meta["cr_fraction"] = cr.reshape(n, -1).mean(1)
        splits[split] = {"image": image, "cr": cr, "ignore": ignore, "truth": truth, "meta": meta}
        if noiseless:
            splits[split]["noiseless"] = clean
    return write_arrays(path, splits, manifest_name="tiny", instruments=["ACS/WFC"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    data = _write_eval_h5(root / "tiny.h5")
    torch.set_num_threads(1)
    for kind in ("mask", "inpaint"):
        cfg = TrainConfig(kind=kind, model=ModelConfig(depth=2, width=4), epochs=2, batch_size=4,
                          stamps_per_epoch=0, lr=0.01, val_stamps=0, seed=0, device="cpu",
                          cpu_bf16="off", channels_last=False, init_mask="")
        main(cfg, data, root / "runs" / "tiny" / kind)
    return data, root / "runs" / "tiny"


def _cfg(**kw) -> EvaluateConfig:
    base = dict(stamps_per_field_type=0, lacosmic_sigclip=(3.0, 6.0), threads=1, batch_size=4,
                star_min_snr=20.0, real_frames=False)  # the real frames: tests/test_realpixels.py
    base.update(kw)
    return EvaluateConfig(**base)


def test_load_stamps_subsets_per_field_type_reproducibly(tiny_run):
    data, _ = tiny_run
    a = load_stamps(data, "test", per_field_type=2, seed=4)
    b = load_stamps(data, "test", per_field_type=2, seed=4)
    assert np.array_equal(a["index"], b["index"]) and len(a["index"]) == 6
    assert sorted(set(a["field_type"])) == list(FIELD_TYPES)
    assert a["instrument"] == "ACS/WFC"
    assert not (a["cr"] & ~a["valid"]).any()


def test_evaluate_run_writes_json_report_and_plot(tiny_run, tmp_path):
    data, run_dir = tiny_run
    doc = evaluate_run(run_dir, data, _cfg(baselines=("astroscrappy", "median5", "biharmonic")), tmp_path)
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["format"] == "crforge-evaluation/1"
    assert saved["data"]["n_stamps"] == 9 and saved["data"]["simulated"] is True
    for m in ("crforge", "astroscrappy"):
        for f in ("all",) + FIELD_TYPES:
            for k in ("0.0005", "0.005"):
                v = saved["mask"][m]["tpr"][f][k]
                assert 0 <= v <= 1
                assert saved["mask"][m]["tpr_dilated"][f][k] >= v - 1e-12  # dilation only helps
        assert saved["mask"][m]["seconds_per_100"] > 0
    # LACosmic finds the bright labelled CRs of this easy set
    assert saved["mask"]["astroscrappy"]["tpr"]["all"]["0.005"] > 0.5
    # against the truth above 5 sigma the labels are perfect; the 3-5 sigma CRs are
    # left out of that figure and show in the recall by SNR instead
    lab = saved["vs_truth"]["labels"]["all"]
    assert lab["tpr"] == 1.0 and lab["fpr"] == 0
    assert lab["recall_by_snr"]["3-5"] == 0.0 and lab["recall_by_snr"][">10"] == 1.0
    assert lab["recall_by_snr"]["5-10"] is None
    loose = evaluate_run(run_dir, data, _cfg(baselines=(), photometry=False, truth_min_bin=2),
                         tmp_path / "loose")
    assert 0.5 < loose["vs_truth"]["labels"]["all"]["tpr"] < 0.95
    assert 0 < saved["threshold"]["value"] < 1 and saved["threshold"]["split"] == "val"
    assert saved["threshold"]["views"] == EvaluateConfig().views == 8
    for m in ("crforge", "median5", "biharmonic"):
        assert saved["inpaint"][m]["mse"]["all"] > 0
    ph = saved["photometry"]
    assert ph["hit_stars"] >= 3 and set(ph["methods"]) == {"crforge", "median5", "biharmonic", "none"}
    # any fill beats leaving the hit pixels at the sky
    assert ph["methods"]["biharmonic"]["all"]["median_abs"] < ph["methods"]["none"]["all"]["median_abs"]
    report = (tmp_path / "report.md").read_text()
    assert "Table 1" in report and "Table 2" in report and "LACosmic" in report
    assert "the mean of 8 symmetric views of each image, deepCR's of one" in report
    assert (tmp_path / "roc.png").stat().st_size > 10_000
    assert doc["mask"]["crforge"]["tpr"]["all"] == saved["mask"]["crforge"]["tpr"]["all"]


def test_inpaint_scored_against_the_noiseless_pixels_with_the_noise_floor(tiny_run, tmp_path):
    """Schema v2: every fill's MSE against the noiseless pixels beside the observed one and its floor."""
    data_v1, run_dir = tiny_run
    data = _write_eval_h5(tmp_path / "v2.h5", noiseless=True)
    doc = evaluate_run(run_dir, data, _cfg(baselines=("median5", "biharmonic"), photometry=False), tmp_path / "e")
    floor = doc["inpaint_noise_floor"]
    # the floor is the pixels' noise variance: (60 + 25) e- in (100 e-)^2
    assert floor["all"] == pytest.approx(85 / 100 ** 2, rel=0.1)
    for m in ("crforge", "median5", "biharmonic"):
        r = doc["inpaint"][m]
        for f in ("all",) + FIELD_TYPES:
            assert r["mse_truth"][f] > 0 and r["mse"][f] > floor[f] * 0.8
        # observed = noiseless + noise: the errors against the two differ by about the floor
        assert r["mse"]["all"] == pytest.approx(r["mse_truth"]["all"] + floor["all"], rel=0.25)
    report = (tmp_path / "e" / "report.md").read_text()
    assert "Against the noiseless pixels" in report and "| noise floor |" in report
    # a version-1 file (no noiseless pixels): the observed MSE alone, as before
    old = evaluate_run(run_dir, data_v1, _cfg(baselines=("median5",), photometry=False), tmp_path / "o")
    assert "inpaint_noise_floor" not in old and "mse_truth" not in old["inpaint"]["crforge"]
    assert "Against the noiseless pixels" not in (tmp_path / "o" / "report.md").read_text()


def test_evaluate_is_deterministic(tiny_run, tmp_path):
    data, run_dir = tiny_run
    cfg = _cfg(baselines=("median5",), photometry=False)
    a = evaluate_run(run_dir, data, cfg, tmp_path / "a")
    b = evaluate_run(run_dir, data, cfg, tmp_path / "b")
    assert a["mask"]["crforge"]["tpr"] == b["mask"]["crforge"]["tpr"]
    assert a["inpaint"] == b["inpaint"] or all(
        a["inpaint"][m]["mse"] == b["inpaint"][m]["mse"] for m in a["inpaint"])


def test_deepcr_peer_scores_on_the_same_stamps(tiny_run, tmp_path):
    pytest.importorskip("deepCR", reason="deepCR 0.3.1 is part of the test extra")
    data, run_dir = tiny_run
    doc = evaluate_run(run_dir, data, _cfg(baselines=("deepcr",), photometry=False), tmp_path)
    assert doc["mask_peer"]["model"] == "ACS-WFC"
    # deepCR's published model finds these bright isolated CRs
    assert doc["mask"]["deepcr"]["tpr"]["all"]["0.005"] > 0.8


def test_cli_evaluate_and_errors(tiny_run, tmp_path, capsys):
    data, run_dir = tiny_run
    rc = cli.main(["evaluate", "--run", str(run_dir), "--data", str(data), "--out", str(tmp_path),
                   "--no-baselines", "--set", "evaluate.photometry=false", "--set", "evaluate.real_frames=false",
                   "--set", "evaluate.stamps_per_field_type=1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "TPR at 0.5% FPR" in out and "evaluation.json" in out
    assert json.loads((tmp_path / "evaluation.json").read_text())["data"]["n_stamps"] == 3
    # a second evaluation into the same directory is refused before any work, and the
    # first one's files are left as they were; --overwrite replaces them
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {"evaluation.json", "report.md", "roc.png"} <= set(before)
    again = ["evaluate", "--run", str(run_dir), "--data", str(data), "--out", str(tmp_path), "--no-baselines",
             "--set", "evaluate.photometry=false", "--set", "evaluate.real_frames=false",
             "--set", "evaluate.stamps_per_field_type=2"]
    assert cli.main(again) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "evaluation.json") in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    (tmp_path / "real.png").write_bytes(b"an older evaluation's plot")
    assert cli.main([*again, "--overwrite"]) == 0
    assert json.loads((tmp_path / "evaluation.json").read_text())["data"]["n_stamps"] == 6
    assert not (tmp_path / "real.png").exists()
    capsys.readouterr()
    assert cli.main(["evaluate", "--run", str(tmp_path / "nope"), "--data", str(data)]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli.main(["evaluate", "--run", str(run_dir), "--data", str(data),
                     "--set", "evaluate.fprs=[0.5, 2.0]"]) == 2
    assert "evaluate.fprs" in capsys.readouterr().err


def test_roc_dilated_curve_equals_dilating_each_binary_call():
    rng = np.random.default_rng(1)
    s = np.round(rng.random((3, 20, 20)), 2).astype(np.float32)  # rounded: many ties
    lab = rng.random((3, 20, 20)) < 0.1
    valid = rng.random((3, 20, 20)) < 0.9
    c = M.roc_curve(s, lab, valid, M.dilate_scores(s, 3, valid))
    for k in (1, 5, 20, 60, 90):
        r = M.binary_rates(s >= c["threshold"][k], lab, valid, dilate=3)
        assert (c["tpr"][k], c["fpr"][k], c["tpr_dilated"][k]) == pytest.approx(
            (r["tpr"], r["fpr"], r["tpr_dilated"]))


def test_mask_scores_use_the_folded_network_and_match_the_plain_one(tiny_run):
    from crforge.training.checkpoint import load_checkpoint
    from crforge.training.evaluate.detection import mask_scores

    _, run_dir = tiny_run
    model, _ = load_checkpoint(run_dir / "mask" / "best.pt")
    x = np.random.default_rng(0).normal(0, 1, (3, S, S)).astype(np.float32)
    with torch.no_grad():
        plain = model.predict(torch.from_numpy(x)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(mask_scores(model, x, batch_size=2), plain, atol=1e-5)
    with torch.no_grad():
        eight = model.predict(torch.from_numpy(x)[:, None], views=8)[:, 0].numpy()
    np.testing.assert_allclose(mask_scores(model, x, batch_size=2, views=8), eight, atol=1e-5)
    assert np.abs(eight - plain).max() > 1e-4
    for bad in (3, 0, True, 8.0):
        with pytest.raises(InputError, match=f"evaluate.views={bad!r}"):
            EvaluateConfig(views=bad).validate()


def test_the_evaluation_file_is_a_valid_training_set(tmp_path):
    from crforge.pipeline.datafile.validate import validate

    assert validate(_write_eval_h5(tmp_path / "e.h5")) == []


def test_evaluate_scores_the_mask_network_on_real_frames(tiny_run, frames, real_frames_cache, tmp_path,
                                                         monkeypatch):
    """With ``evaluate.real_frames`` the document gains the real-pixel figures and real.png."""
    monkeypatch.setenv("CRFORGE_REAL_FRAMES", str(real_frames_cache))
    data, run_dir = tiny_run
    doc = evaluate_run(run_dir, data, _cfg(real_frames=True, baselines=(), photometry=False,
                                          stamps_per_field_type=2), tmp_path)
    assert set(doc["real"]) == {"acs-hrc", "stis-ccd[1]", "stis-ccd[2]", "wfpc2-pc1"}
    hrc = doc["real"]["acs-hrc"]["methods"]["crforge"]
    assert set(hrc["tpr_at_fpr"]) == {"0.0005", "0.005"} and 0 <= hrc["star_cores_touched"] <= 1
    assert hrc["threshold"] == doc["threshold"]["value"]
    assert (tmp_path / "real.png").stat().st_size > 10_000
    assert "Real pixels" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "evaluation.json").read_text())["real"]["acs-hrc"]["stars"] > 5000
