"""The simulator: deterministic, HST-like files, consistent WCS, CRs at HST's rate."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

from crforge.errors import InputError
from crforge.pipeline.instruments import ACS_WFC
from crforge.pipeline.simulate.config import SimulateConfig
from crforge.pipeline.simulate.cosmics import render_cosmic_rays, sample_cosmic_rays
from crforge.pipeline.simulate.detector import bleed_saturation
from crforge.pipeline.simulate.sources import render_point_sources
from crforge.pipeline.simulate.truth import read_truth
from crforge.pipeline.simulate.visit import simulate_visit

SMALL = (128, 256)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def gc_visit(tmp_path_factory):
    cfg = SimulateConfig(field_type="globular_cluster", n_exposures=3, chip_shape=SMALL, seed=4)
    return simulate_visit(cfg, tmp_path_factory.mktemp("sim"))


def test_same_seed_same_files_other_seed_differs(tmp_path):
    cfg = SimulateConfig(n_exposures=2, chip_shape=(64, 96), seed=7)
    a = simulate_visit(cfg, tmp_path / "a")
    b = simulate_visit(cfg, tmp_path / "b")
    for f in sorted(a.glob("*_flc.fits")):
        da, db = fits.getdata(f, ("SCI", 1)), fits.getdata(b / f.name, ("SCI", 1))
        assert np.array_equal(da, db)
        assert np.array_equal(fits.getdata(f, ("DQ", 2)), fits.getdata(b / f.name, ("DQ", 2)))
    c = simulate_visit(SimulateConfig(n_exposures=2, chip_shape=(64, 96), seed=8), tmp_path / "c")
    f = sorted(a.glob("*_flc.fits"))[0]
    assert not np.array_equal(fits.getdata(f, ("SCI", 1)), fits.getdata(c / f.name, ("SCI", 1)))


def test_simulator_is_deterministic_to_the_byte(tmp_path):
    """Same config and seed: byte-identical exposures, identical truth and visit.json."""
    cfg = SimulateConfig(field_type="resolved_galaxy", n_exposures=2, chip_shape=(48, 80), seed=5,
                         dither="line")
    a = simulate_visit(cfg, tmp_path / "a")
    b = simulate_visit(cfg, tmp_path / "b")
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert (a / "visit.json").read_bytes() == (b / "visit.json").read_bytes()
    flcs = sorted(a.glob("*_flc.fits"))
    assert len(flcs) == 2
    for f in flcs:  # the whole file: headers and data
        assert f.read_bytes() == (b / f.name).read_bytes()
    # truth: the gzip-compressed tiles of SOURCE carry their write time, so compare the
    # headers and the decompressed data
    for f in sorted(a.glob("*_truth.fits")):
        with fits.open(f) as ha, fits.open(b / f.name) as hb:
            assert len(ha) == len(hb) == 7
            for x, y in zip(ha, hb):
                assert x.header.tostring() == y.header.tostring()
                if x.data is not None:
                    assert np.asarray(x.data).tobytes() == np.asarray(y.data).tobytes()


def test_files_carry_what_astrodrizzle_needs(gc_visit):
    meta = json.loads((gc_visit / "visit.json").read_text())
    assert len(meta["exposures"]) == 3
    for exp in meta["exposures"]:
        with fits.open(gc_visit / exp["flc"]) as h:
            ph = h[0].header
            for key in ("TELESCOP", "INSTRUME", "DETECTOR", "EXPTIME", "EXPSTART", "EXPEND",
                        "ATODGNA", "ATODGND", "READNSEA", "READNSED", "FILTER1", "ROOTNAME"):
                assert key in ph, key
            assert (ph["INSTRUME"], ph["DETECTOR"]) == ("ACS", "WFC")
            assert [(x.name, x.ver) for x in h[1:]] == [
                ("SCI", 1), ("ERR", 1), ("DQ", 1), ("SCI", 2), ("ERR", 2), ("DQ", 2)]
            for ev in (1, 2):
                sh = h["SCI", ev].header
                assert sh["BUNIT"] == "ELECTRONS"
                assert sh["NGOODPIX"] > 0 and "MEANDARK" in sh and "EXPNAME" in sh
                assert h["SCI", ev].data.shape == SMALL
                # HST DQ arrays are 16-bit signed; drizzlepac fails on uint16
                assert h["DQ", ev].data.dtype == np.dtype(">i2")
                assert WCS(sh).wcs.ctype[0] == "RA---TAN"


def test_wcs_follows_the_dithers(gc_visit):
    """A star's catalogue position maps to the same sky in every exposure."""
    exps = sorted(gc_visit.glob("*_truth.fits"))
    sky = []
    for t in exps:
        stars = fits.getdata(t, ("STARS", 1))
        bright = stars[np.argsort(stars["FLUX"])[-20:]]
        w = WCS(fits.getheader(str(t).replace("_truth", "_flc"), ("SCI", 1)))
        ra, dec = w.all_pix2world(bright["X"], bright["Y"], 0)
        sky.append(np.c_[ra, dec])
    ref = WCS(fits.getheader(str(exps[0]).replace("_truth", "_flc"), ("SCI", 1)))
    pix0 = np.c_[tuple(ref.all_world2pix(sky[0][:, 0], sky[0][:, 1], 0))]
    for s in sky[1:]:
        pix = np.c_[tuple(ref.all_world2pix(s[:, 0], s[:, 1], 0))]
        # match each bright star of exposure k to its nearest star of exposure 0
        d = np.hypot(pix[:, None, 0] - pix0[None, :, 0], pix[:, None, 1] - pix0[None, :, 1]).min(1)
        assert np.median(d) < 1e-3


def test_dithers_move_the_scene_on_the_detector(gc_visit):
    meta = json.loads((gc_visit / "visit.json").read_text())
    offs = np.array([[e["dither_dy"], e["dither_dx"]] for e in meta["exposures"]])
    steps = np.abs(offs[1:] - offs[0])
    assert (steps.max(axis=1) > 1.0).all()  # integer part: hot pixels land elsewhere on the sky
    frac = np.abs(steps - np.round(steps))
    assert (frac.max(axis=1) > 0.3).all()  # sub-pixel part: half-pixel sampling


def test_cosmic_rays_at_hst_rate_and_morphology():
    rng = np.random.default_rng(1)
    shape = (1024, 1024)
    area_cm2 = shape[0] * shape[1] * (ACS_WFC.pixel_size_um * 1e-4) ** 2
    n_expected = ACS_WFC.cr_rate * area_cm2 * 500.0
    assert 1300 < n_expected < 1600  # ~1.2 /s/cm^2 on 2.36 cm^2 of 15 um pixels
    y, x, q = sample_cosmic_rays(rng, int(n_expected), shape, ACS_WFC.depletion_um,
                                 ACS_WFC.pixel_size_um)
    img = render_cosmic_rays(shape, y, x, q)
    # diffusion conserves charge, but for what spills over the edges
    assert img.sum() == pytest.approx(q.sum(), rel=5e-3)
    lab, n = ndimage.label(img > 0, np.ones((3, 3)))
    totals = ndimage.sum(img, lab, range(1, n + 1))
    # Riess (2002): cut-off near 500 e-, median near 1000 e-, a long tail
    assert 800 < np.median(totals) < 1400
    assert np.percentile(totals, 5) > 400
    assert totals.max() > 20 * np.median(totals)
    # diffusion lights several pixels per hit; grazing incidence gives tracks
    sizes = ndimage.sum(img > 20, lab, range(1, n + 1))
    assert 4 <= np.median(sizes) <= 9
    extent = np.array([s[1].stop - s[1].start for s in ndimage.find_objects(lab)])
    assert (extent > 5).mean() > 0.01 and (extent > 15).any()
    # a 500 s exposure has of order 1% of pixels hit above a few sigma (1.5-3% in 1000 s)
    assert 0.004 < (img > 30).mean() < 0.02


def test_point_sources_conserve_flux_and_centroid():
    img = render_point_sources((101, 121), np.array([50.3]), np.array([60.7]),
                               np.array([1e5]), fwhm=2.0)
    assert img.sum() == pytest.approx(1e5, rel=2e-3)
    yy, xx = np.mgrid[:101, :121]
    assert (img * xx).sum() / img.sum() == pytest.approx(60.7, abs=0.01)
    assert (img * yy).sum() / img.sum() == pytest.approx(50.3, abs=0.01)
    # undersampled: the brightest pixel holds a large share of the light, like a CR
    assert img.max() / img.sum() > 0.1


def test_bleed_conserves_charge_along_columns():
    img = np.full((50, 5), 100.0)
    img[25, 2] = 10 * 1000.0
    before = img.sum()
    sat = bleed_saturation(img, full_well=1000.0)
    assert img.sum() == pytest.approx(before)
    assert img.max() <= 1000.0
    assert sat[:, 2].sum() >= 9 and not sat[:, [0, 1, 3, 4]].any()


def test_field_types_differ_in_crowding(tmp_path):
    counts = {}
    for i, ft in enumerate(("extragalactic", "globular_cluster", "resolved_galaxy")):
        v = simulate_visit(SimulateConfig(field_type=ft, n_exposures=1, chip_shape=(256, 512),
                                          seed=2, obset_id=f"0{i}"), tmp_path)
        t = read_truth(next(v.glob("*_truth.fits")), source=True)
        src = np.concatenate([c.source.ravel() for c in t.values()])
        counts[ft] = (src > 5 * 8.0).mean()  # pixels above ~5 sigma of a 500 s F606W sky
    assert counts["extragalactic"] < 0.05
    assert counts["globular_cluster"] > 2 * counts["extragalactic"]
    assert counts["resolved_galaxy"] > 2 * counts["extragalactic"]


def test_defects_and_saturation_are_flagged(gc_visit):
    f = sorted(gc_visit.glob("*_flc.fits"))[0]
    dq = np.concatenate([fits.getdata(f, ("DQ", ev)).ravel() for ev in (1, 2)])
    sci = np.concatenate([fits.getdata(f, ("SCI", ev)).ravel() for ev in (1, 2)])
    assert 0.0005 < ((dq & 16) > 0).mean() < 0.005  # hot
    assert ((dq & 64) > 0).mean() > 0.003  # warm
    sat = (dq & 256) > 0
    assert sat.any(), "a globular cluster has saturated stars"
    assert np.all(sci[sat] > 0.9 * ACS_WFC.full_well)
    wide = simulate_visit(SimulateConfig(n_exposures=1, chip_shape=(64, 2048), seed=3,
                                         n_bad_columns=8), gc_visit.parent / "wide")
    dqw = fits.getdata(next(wide.glob("*_flc.fits")), ("DQ", 1))
    assert ((dqw & 128) > 0).all(axis=0).sum() >= 1


def test_truth_matches_the_data(gc_visit):
    f = sorted(gc_visit.glob("*_flc.fits"))[1]
    t = read_truth(str(f).replace("_flc", "_truth"), source=True)[2]
    sci = fits.getdata(f, ("SCI", 2))
    dq = fits.getdata(f, ("DQ", 2))
    snr = t.cr_charge / t.cr_sigma
    strong = (snr > 20) & (dq[t.cr_y, t.cr_x] == 0)
    # a strong CR pixel stands far above what the source and sky predict
    sky = fits.getheader(str(f).replace("_flc", "_truth"))["SKY_E"]
    resid = sci[t.cr_y[strong], t.cr_x[strong]] - t.source[t.cr_y[strong], t.cr_x[strong]] - sky
    assert np.median(resid / t.cr_charge[strong]) == pytest.approx(1.0, abs=0.1)
    assert t.cr_mask().sum() == len(t.cr_y)


@pytest.mark.parametrize("field,value,match", [
    ("field_type", "galaxy", "field_type='galaxy'"),
    ("n_exposures", 0, "n_exposures=0"),
    ("exptime", -1.0, "exptime=-1.0"),
    ("chip_shape", (10, 10), "chip_shape"),
    ("filter", "F999W", "filter='F999W'"),
    ("instrument", "NICMOS/NIC1", "instrument='NICMOS/NIC1'"),
])
def test_bad_config_names_the_parameter(tmp_path, field, value, match):
    cfg = SimulateConfig(**{field: value})
    with pytest.raises(ValueError, match=match):
        simulate_visit(cfg, tmp_path)
    assert not any(tmp_path.iterdir())


def test_existing_visit_is_kept_and_half_written_never_looks_done(tmp_path):
    cfg = SimulateConfig(n_exposures=2, chip_shape=(64, 64), seed=1)
    v = simulate_visit(cfg, tmp_path)
    sums = {p.name: _sha(p) for p in v.iterdir()}
    again = simulate_visit(cfg, tmp_path)
    assert again == v and {p.name: _sha(p) for p in v.iterdir()} == sums
    # nothing but the finished visit directory is left behind
    assert [p.name for p in tmp_path.iterdir()] == [v.name]


@pytest.mark.parametrize("name", ["", ".hidden", "a/b"])
def test_bad_visit_name_is_refused(tmp_path, name):
    with pytest.raises(InputError, match="name="):
        simulate_visit(SimulateConfig(n_exposures=1, chip_shape=(32, 32)), tmp_path, name=name)
    assert not any(tmp_path.iterdir())


def test_simulated_stars_are_as_sharp_as_tinytim_and_vary_between_visits(tmp_path):
    """The ACS/WFC F606W core matches the TinyTim PSF shipped with drizzlepac; visits differ."""
    from pathlib import Path

    import drizzlepac
    from astropy.io import fits
    from scipy import ndimage

    from crforge.pipeline.simulate.sources import psf_kernel

    def n4_over_peak(k):
        y, x = np.unravel_index(np.argmax(k), k.shape)
        return (k[y - 1, x] + k[y + 1, x] + k[y, x - 1] + k[y, x + 1]) / 4 / k[y, x]

    tiny = fits.getdata(Path(drizzlepac.__file__).parent / "pars/psfs/acs/wfc/acs_wfc_f606w.fits")
    diffusion = np.array([[0.023504, 0.078029, 0.023504], [0.078029, 0.593869, 0.078029],
                          [0.023504, 0.078029, 0.023504]])  # the kernel its header gives
    real = n4_over_peak(ndimage.convolve(tiny.astype(float), diffusion))
    ours = n4_over_peak(psf_kernel(ACS_WFC.fwhm("F606W")))
    assert abs(ours - real) < 0.01 and 0.42 < real < 0.50
    cores = set()
    for seed in range(4):
        v = simulate_visit(SimulateConfig(seed=seed, n_exposures=2, chip_shape=(64, 64)), tmp_path / str(seed))
        meta = json.loads((v / "visit.json").read_text())
        cores.add(round(max(meta["psf_fwhm_yx"][0]), 3))
        assert 0.25 <= meta["cr_diffusion"] <= 0.45
    assert len(cores) == 4 and min(cores) >= 0.9 * 1.69 * 0.9 and max(cores) <= 1.15 * 1.69 * 1.1
