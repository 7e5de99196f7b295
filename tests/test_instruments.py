"""Tests of crforge.pipeline.instruments: name look-up, header look-up and table sanity."""

from __future__ import annotations

import pytest

from crforge.pipeline.instruments import (
    ACS_WFC,
    INSTRUMENTS,
    WFC3_UVIS,
    Chip,
    Instrument,
    get_instrument,
    instrument_for_header,
)

ALL = [INSTRUMENTS[k] for k in sorted(INSTRUMENTS)]
ids = [i.name for i in ALL]
TWO_CHIP = [ACS_WFC, WFC3_UVIS]
two_ids = [i.name for i in TWO_CHIP]
#: the imagers whose DQ bits follow calacs/calwf3 (WFPC2's c1f and STIS's differ)
CALACS_LIKE = [INSTRUMENTS["ACS/WFC"], INSTRUMENTS["WFC3/UVIS"], INSTRUMENTS["ACS/HRC"]]
calacs_ids = [i.name for i in CALACS_LIKE]


def test_known_instruments():
    assert sorted(INSTRUMENTS) == ["ACS/HRC", "ACS/WFC", "STIS/CCD", "WFC3/UVIS", "WFPC2"]
    assert INSTRUMENTS["ACS/WFC"] is ACS_WFC
    assert INSTRUMENTS["WFC3/UVIS"] is WFC3_UVIS
    for name, inst in INSTRUMENTS.items():
        assert isinstance(inst, Instrument)
        assert inst.name == name == (f"{inst.instrume}/{inst.detector}" if inst.detector else inst.instrume)


# --------------------------------------------------------------------------------------
# get_instrument / instrument_for_header
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ACS/WFC", "acs_wfc", "ACS-WFC", "  acs/wfc ", "Acs-Wfc"])
def test_get_instrument_acs_spellings(name):
    assert get_instrument(name) is ACS_WFC


@pytest.mark.parametrize("name", ["WFC3/UVIS", "wfc3_uvis", "WFC3-UVIS"])
def test_get_instrument_uvis_spellings(name):
    assert get_instrument(name) is WFC3_UVIS


@pytest.mark.parametrize("name", ["WFPC2/PC", "ACS/SBC", "ACSWFC", "", "WFC3/IR"])
def test_get_instrument_unknown_lists_known(name):
    with pytest.raises(ValueError) as exc:
        get_instrument(name)
    msg = str(exc.value)
    assert "ACS/WFC" in msg and "WFC3/UVIS" in msg
    assert repr(name) in msg


@pytest.mark.parametrize("name", [None, 1, ("ACS", "WFC"), b"ACS/WFC"])
def test_get_instrument_non_str(name):
    with pytest.raises(TypeError, match="str"):
        get_instrument(name)


@pytest.mark.parametrize(
    "header,expected",
    [
        ({"INSTRUME": "ACS", "DETECTOR": "WFC"}, ACS_WFC),
        ({"INSTRUME": "ACS   ", "DETECTOR": "wfc"}, ACS_WFC),
        ({"INSTRUME": "WFC3", "DETECTOR": "UVIS", "FILTER": "F606W"}, WFC3_UVIS),
    ],
)
def test_instrument_for_header(header, expected):
    assert instrument_for_header(header) is expected


def test_instrument_for_header_astropy_header():
    fits = pytest.importorskip("astropy.io.fits")
    h = fits.Header()
    h["INSTRUME"] = "WFC3"
    h["DETECTOR"] = "UVIS"
    assert instrument_for_header(h) is WFC3_UVIS


@pytest.mark.parametrize(
    "header",
    [{}, {"INSTRUME": "ACS"}, {"DETECTOR": "WFC"}, {"INSTRUME": "", "DETECTOR": "WFC"},
     {"INSTRUME": "ACS", "DETECTOR": "  "}],
)
def test_instrument_for_header_missing_keys(header):
    with pytest.raises(ValueError, match="INSTRUME and DETECTOR"):
        instrument_for_header(header)


def test_instrument_for_header_unknown_imager():
    with pytest.raises(ValueError, match="known imagers"):
        instrument_for_header({"INSTRUME": "WFC3", "DETECTOR": "IR"})


# --------------------------------------------------------------------------------------
# chips, gain and read noise
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("inst", TWO_CHIP, ids=two_ids)
def test_two_chips(inst):
    assert len(inst.chips) == 2
    assert all(isinstance(c, Chip) for c in inst.chips)
    assert [c.extver for c in inst.chips] == [1, 2]
    assert sorted(c.ccdchip for c in inst.chips) == [1, 2]
    for c in inst.chips:
        assert inst.chip(c.extver) is c
        assert len(c.amps) == 2
        assert set(c.amps) <= set(inst.gain) and set(c.amps) <= set(inst.readnoise)
    # The two chips are read by four distinct amplifiers.
    assert "".join(sorted("".join(c.amps for c in inst.chips))) == inst.amps == "ABCD"


def test_chip_shapes_and_gaps():
    assert [c.shape for c in ACS_WFC.chips] == [(2048, 4096), (2048, 4096)]
    assert [c.shape for c in WFC3_UVIS.chips] == [(2051, 4096), (2051, 4096)]
    for inst, gap in ((ACS_WFC, 50.0), (WFC3_UVIS, 35.0)):
        lo, hi = sorted(inst.chips, key=lambda c: c.origin[0])
        assert hi.origin[0] - (lo.origin[0] + lo.shape[0]) == gap
        assert lo.origin[1] == hi.origin[1] == 0.0


@pytest.mark.parametrize("inst", ALL, ids=ids)
@pytest.mark.parametrize("extver", [0, 5, -1])
def test_chip_unknown_extver(inst, extver):
    with pytest.raises(ValueError, match="extver"):
        inst.chip(extver)


@pytest.mark.parametrize(
    "inst,extver,gain,rn",
    [
        (ACS_WFC, 1, (2.02 + 1.99) / 2, (4.05 + 5.05) / 2),  # WFC2, amps C and D
        (ACS_WFC, 2, (2.02 + 1.89) / 2, (4.35 + 3.75) / 2),  # WFC1, amps A and B
        (WFC3_UVIS, 1, 1.56, (3.05 + 3.15) / 2),  # UVIS2, amps C and D
        (WFC3_UVIS, 2, 1.56, 3.10),  # UVIS1, amps A and B
    ],
)
def test_chip_gain_readnoise_hand_values(inst, extver, gain, rn):
    g, r = inst.chip_gain_readnoise(extver)
    assert g == pytest.approx(gain, abs=1e-12)
    assert r == pytest.approx(rn, abs=1e-12)


def test_chip_gain_readnoise_acs_numbers():
    assert ACS_WFC.chip_gain_readnoise(1) == pytest.approx((2.005, 4.55))
    assert ACS_WFC.chip_gain_readnoise(2) == pytest.approx((1.955, 4.05))


@pytest.mark.parametrize("inst", TWO_CHIP, ids=two_ids)
def test_chip_gain_readnoise_is_amp_mean(inst):
    for c in inst.chips:
        g, r = inst.chip_gain_readnoise(c.extver)
        a, b = c.amps
        assert g == pytest.approx((inst.gain[a] + inst.gain[b]) / 2)
        assert r == pytest.approx((inst.readnoise[a] + inst.readnoise[b]) / 2)
        assert min(inst.gain[a], inst.gain[b]) <= g <= max(inst.gain[a], inst.gain[b])


def test_chip_gain_readnoise_unknown_extver():
    with pytest.raises(ValueError, match="extver"):
        ACS_WFC.chip_gain_readnoise(5)


@pytest.mark.parametrize("inst", ALL, ids=ids)
def test_detector_numbers_plausible(inst):
    assert all(0.9 < g < 8.0 for g in inst.gain.values())
    assert all(2.0 < r < 6.0 for r in inst.readnoise.values())
    # whichever comes first, full well or the converter, a pixel holds > 20,000 e-
    assert min(inst.full_well, inst.adc_max_dn * min(inst.gain.values())) > 20000


@pytest.mark.parametrize("inst", TWO_CHIP, ids=two_ids)
def test_full_well_below_the_adc(inst):
    # ACS/WFC, WFC3/UVIS: a full-well pixel is representable (HRC, STIS, WFPC2 saturate
    # the converter first at their usual gains)
    assert inst.full_well / max(inst.gain.values()) < inst.adc_max_dn


# --------------------------------------------------------------------------------------
# filter tables
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("inst", ALL, ids=ids)
@pytest.mark.parametrize("method", ["fwhm", "zp", "sky"])
def test_unknown_filter_named(inst, method):
    with pytest.raises(ValueError) as exc:
        getattr(inst, method)("F999W")
    assert "F999W" in str(exc.value)
    assert inst.name in str(exc.value)


@pytest.mark.parametrize("inst", ALL, ids=ids)
def test_filter_tables_consistent(inst):
    assert set(inst.fwhm_pix) == set(inst.sky_rate) == set(inst.zeropoint)
    assert inst.default_filter in inst.fwhm_pix
    if inst.name != "STIS/CCD":  # STIS images through CLEAR or the long-pass filter
        assert "F606W" in inst.fwhm_pix and "F814W" in inst.fwhm_pix


@pytest.mark.parametrize("inst", ALL, ids=ids)
def test_filter_lookup_case_insensitive(inst):
    f = inst.default_filter
    assert inst.fwhm(f.lower()) == inst.fwhm(f) == inst.fwhm_pix[f]
    assert inst.zp(f.lower()) == inst.zeropoint[f]
    assert inst.sky(f.lower()) == inst.sky_rate[f]


def test_filter_hand_values():
    # ACS/WFC PSF cores are fitted to the TinyTim PSFs shipped with drizzlepac (instruments.py)
    assert ACS_WFC.fwhm("F814W") == 1.70
    assert ACS_WFC.zp("F606W") == 26.50
    assert ACS_WFC.sky("F606W") == 0.10
    assert WFC3_UVIS.fwhm("F275W") == 2.1


@pytest.mark.parametrize("inst", ALL, ids=ids)
def test_fwhm_undersampled(inst):
    for filt in inst.fwhm_pix:
        fw = inst.fwhm(filt)
        assert 1.2 <= fw <= 3.0, (inst.name, filt, fw)
        # In arcsec: HST's diffraction-limited PSF is 0.05-0.13" (WFPC2's WF pixels: 0.14")
        assert 0.045 <= fw * inst.pixel_scale <= 0.14, (inst.name, filt, fw)


@pytest.mark.parametrize("inst", ALL, ids=ids)
def test_sky_and_zeropoints_plausible(inst):
    assert all(0.0 < s < 1.0 for s in inst.sky_rate.values())
    assert all(21.0 < z < 27.5 for z in inst.zeropoint.values())


# --------------------------------------------------------------------------------------
# DQ bits
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("inst", CALACS_LIKE, ids=calacs_ids)
def test_dq_bit_groups_calacs(inst):
    assert inst.saturation_bits & 256
    assert inst.saturation_bits & 2048
    assert inst.cr_bits == 4096 | 8192
    assert inst.nodata_bits == 1 | 2


@pytest.mark.parametrize("inst", ALL, ids=ids)
def test_dq_bit_groups(inst):
    assert inst.bad_bits & inst.cr_bits == 0
    assert inst.saturation_bits & inst.cr_bits == 0
    assert inst.nodata_bits & inst.cr_bits == 0
    assert inst.bad_bits & inst.saturation_bits == 0
    assert inst.cr_bits & 4096  # AstroDrizzle's, whatever the imager
    # the simulator's defects are documented bits of the right groups
    assert inst.sim_dq["saturated"] & inst.saturation_bits
    assert inst.sim_dq["adc_saturated"] & inst.saturation_bits
    assert inst.sim_dq["hot"] & inst.bad_bits and inst.sim_dq["bad_column"] & inst.bad_bits
    # the clean bit is never a CR bit of the pipeline or AstroDrizzle, nor a saturation
    assert not inst.clean_dq_bit & (inst.saturation_bits | inst.cr_bits)
    # Every bit used in a group is a documented DQ bit.
    documented = 0
    for bit in inst.dq_bits:
        documented |= bit
    for group in (inst.bad_bits, inst.saturation_bits, inst.nodata_bits, inst.cr_bits):
        assert group & ~documented == 0


@pytest.mark.parametrize("inst", ALL, ids=ids)
def test_dq_bits_are_single_powers_of_two(inst):
    assert all(b > 0 and b & (b - 1) == 0 and b <= 16384 for b in inst.dq_bits)
    if inst in CALACS_LIKE:
        assert sorted(inst.dq_bits) == [1 << b for b in range(15)]


@pytest.mark.parametrize("inst", CALACS_LIKE, ids=calacs_ids)
def test_bits_of_matches_groups(inst):
    assert inst.bits_of("cosmic ray") == inst.cr_bits
    assert inst.bits_of("saturation") == inst.saturation_bits
    assert inst.bits_of("lost data", "fill data") == inst.nodata_bits
    assert inst.bits_of("no such meaning") == 0


def test_dq_meanings_differ_where_documented():
    assert "bad column" in ACS_WFC.dq_bits[128]
    assert "bad bias" in WFC3_UVIS.dq_bits[128]
    assert "ghost" in WFC3_UVIS.dq_bits[16384]
    assert "warm" in ACS_WFC.dq_bits[64] and not ACS_WFC.bad_bits & 64


# --------------------------------------------------------------------------------------
# cosmic-ray rate
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("inst", TWO_CHIP, ids=two_ids)
def test_cr_events_per_chip_second(inst):
    cm = inst.pixel_size_um * 1e-4
    for c in inst.chips:
        area = c.shape[0] * c.shape[1] * cm * cm
        events = inst.cr_rate * area
        assert 15.0 <= events <= 35.0, (inst.name, c.extver, events)


def test_cr_events_acs_full_chip_value():
    # 2048 x 4096 pixels of 15 um: 18.87 cm^2; at 1.2 s^-1 cm^-2: 22.6 events/s.
    c = ACS_WFC.chip(1)
    area = c.shape[0] * c.shape[1] * (ACS_WFC.pixel_size_um * 1e-4) ** 2
    assert area == pytest.approx(18.874, abs=1e-3)
    assert ACS_WFC.cr_rate * area == pytest.approx(22.65, abs=0.01)


def test_instrument_is_frozen():
    with pytest.raises(Exception):
        ACS_WFC.cr_rate = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        INSTRUMENTS["X/Y"] = ACS_WFC  # type: ignore[index]


def test_counts_become_electrons_with_the_gain():
    from crforge.pipeline.instruments import to_electrons

    assert to_electrons("COUNTS", exptime=100.0, gain=7.12) == 7.12
    assert to_electrons("electrons/s", exptime=100.0, gain=7.12) == 100.0
    assert to_electrons("ELECTRONS", exptime=100.0, gain=7.12) == 1.0
    with pytest.raises(ValueError, match="BUNIT='JY'"):
        to_electrons("JY", exptime=100.0, gain=1.0)


def test_wfpc2_gain_mode_gives_the_calibrated_gains():
    wfpc2 = INSTRUMENTS["WFPC2"]
    gains, rns = wfpc2.header_gains({"ATODGAIN": 15.0})
    assert gains == {"1": 13.99, "2": 14.50, "3": 13.95, "4": 13.95} and rns["4"] == 8.32
    with pytest.raises(ValueError, match="ATODGAIN=8.0: a gain mode of WFPC2 is one of"):
        wfpc2.header_gains({"ATODGAIN": 8.0})
    with pytest.raises(ValueError, match="keyword ATODGAIN missing"):
        wfpc2.header_gains({})
