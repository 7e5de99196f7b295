"""Tests of crforge.pipeline.masks on small hand-built arrays whose right answer is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from crforge.errors import InputError
from crforge.pipeline.instruments import ACS_WFC, WFC3_UVIS
from crforge.pipeline.label.config import LabelConfig
from crforge.pipeline.masks import (
    IGNORE_BAD,
    IGNORE_NODATA,
    IGNORE_SATURATED,
    SNR_BINS,
    cr_from_crmask,
    grow,
    ignore_mask,
    label_scores,
    minimum_excess,
    refine_cr_mask,
)

# --------------------------------------------------------------------------------------
# ignore_mask
# --------------------------------------------------------------------------------------

#: Expected ignore value of a pixel carrying only this ACS DQ bit (saturation_grow=0),
#: written out by hand from the DQ table of docs/instruments.md and the schema's ignore bits.
ACS_EXPECTED_IGNORE = {
    1: 1 | 4,  # lost data: bad (in bad_bits) and no data
    2: 1 | 4,  # fill data: bad (in bad_bits) and no data
    4: 1,  # bad detector pixel
    8: 1,  # masked by aperture feature
    16: 1,  # hot
    32: 1,  # unstable
    64: 0,  # warm: kept
    128: 1,  # bad column
    256: 2,  # full-well saturation
    512: 1,  # bad reference pixel
    1024: 1,  # charge trap
    2048: 2,  # A-to-D saturation
    4096: 0,  # CR (AstroDrizzle): a label, never ignored
    8192: 0,  # CR (calacs): a label, never ignored
    16384: 0,  # user flag
}


def _one_pixel_dq(value: int, shape=(5, 5), at=(2, 2), dtype=np.uint16) -> np.ndarray:
    dq = np.zeros(shape, dtype)
    dq[at] = value
    return dq


def _disc(radius: int, shape=(9, 9), center=(4, 4)) -> np.ndarray:
    """Hand-built disc: pixels whose squared distance to center is <= radius**2."""
    out = np.zeros(shape, bool)
    for y in range(shape[0]):
        for x in range(shape[1]):
            if (y - center[0]) ** 2 + (x - center[1]) ** 2 <= radius * radius:
                out[y, x] = True
    return out


def test_ignore_bit_constants():
    assert (IGNORE_BAD, IGNORE_SATURATED, IGNORE_NODATA) == (1, 2, 4)


@pytest.mark.parametrize("bit", sorted(ACS_EXPECTED_IGNORE))
def test_ignore_mask_each_acs_dq_bit(bit):
    out = ignore_mask(_one_pixel_dq(bit), ACS_WFC, saturation_grow=0)
    assert out.dtype == np.uint8
    assert out.shape == (5, 5)
    assert int(out[2, 2]) == ACS_EXPECTED_IGNORE[bit]
    rest = out.copy()
    rest[2, 2] = 0
    assert np.count_nonzero(rest) == 0


def test_ignore_mask_every_bad_bit_sets_bit_1():
    bits = [b for b in range(16) if ACS_WFC.bad_bits >> b & 1]
    assert [1 << b for b in bits] == [1, 2, 4, 8, 16, 32, 128, 512, 1024]
    dq = np.zeros((1, len(bits)), np.int32)
    dq[0] = [1 << b for b in bits]
    out = ignore_mask(dq, ACS_WFC, saturation_grow=0)
    assert np.all(out & IGNORE_BAD)
    assert not np.any(out & IGNORE_SATURATED)


@pytest.mark.parametrize("inst", [ACS_WFC, WFC3_UVIS], ids=lambda i: i.name)
@pytest.mark.parametrize("bad_bits", [None, 0xFFFF, 4096 | 8192, 4096, 8192])
def test_ignore_mask_cr_bits_never_ignored(inst, bad_bits):
    dq = np.array([[4096, 8192, 4096 | 8192, 0]], np.uint16)
    out = ignore_mask(dq, inst, saturation_grow=0, bad_bits=bad_bits)
    assert out.tolist() == [[0, 0, 0, 0]]


def test_ignore_mask_cr_bit_does_not_hide_other_bits():
    dq = np.array([[4096 | 16, 8192 | 256, 4096 | 1]], np.uint16)
    out = ignore_mask(dq, ACS_WFC, saturation_grow=0)
    assert out.tolist() == [[1, 2, 1 | 4]]
    # An override with every bit set makes 256 bad too, but still not the CR bits.
    out = ignore_mask(dq, ACS_WFC, saturation_grow=0, bad_bits=0xFFFF)
    assert out.tolist() == [[1, 1 | 2, 1 | 4]]


def test_ignore_mask_bad_bits_override():
    dq = np.array([[16, 64, 4]], np.uint16)
    # Only warm pixels (64) are bad in this override; 16 and 4 are not.
    out = ignore_mask(dq, ACS_WFC, saturation_grow=0, bad_bits=64)
    assert out.tolist() == [[0, 1, 0]]
    out = ignore_mask(dq, ACS_WFC, saturation_grow=0, bad_bits=0)
    assert out.tolist() == [[0, 0, 0]]


@pytest.mark.parametrize("sat", [256, 2048, 256 | 2048])
def test_ignore_mask_saturation_grown_disc(sat):
    dq = _one_pixel_dq(sat, shape=(9, 9), at=(4, 4))
    out = ignore_mask(dq, ACS_WFC, saturation_grow=2)
    assert np.count_nonzero(out) == 13
    assert np.array_equal(out != 0, _disc(2))
    # Only the saturation bit, nothing else.
    assert set(np.unique(out).tolist()) == {0, 2}


def test_ignore_mask_saturation_grow_0_and_1():
    dq = _one_pixel_dq(256, shape=(9, 9), at=(4, 4))
    out0 = ignore_mask(dq, ACS_WFC, saturation_grow=0)
    assert np.count_nonzero(out0) == 1 and out0[4, 4] == 2
    out1 = ignore_mask(dq, ACS_WFC, saturation_grow=1)
    assert np.count_nonzero(out1) == 5
    assert np.array_equal(out1 != 0, _disc(1))


def test_ignore_mask_saturation_disc_clipped_at_corner():
    dq = _one_pixel_dq(256, shape=(6, 6), at=(0, 0))
    out = ignore_mask(dq, ACS_WFC, saturation_grow=2)
    expected = {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)}
    assert set(zip(*np.nonzero(out))) == expected


def test_ignore_mask_saturation_grow_does_not_spread_other_bits():
    dq = np.zeros((9, 9), np.uint16)
    dq[4, 4] = 256
    dq[4, 6] = 16  # hot pixel inside the grown disc
    dq[0, 0] = 16  # hot pixel outside it
    out = ignore_mask(dq, ACS_WFC, saturation_grow=2)
    assert out[4, 6] == 1 | 2
    assert out[0, 0] == 1
    assert out[4, 4] == 2
    assert np.count_nonzero(out) == 14


def test_ignore_mask_default_grow_is_2():
    dq = _one_pixel_dq(256, shape=(9, 9), at=(4, 4))
    assert LabelConfig().saturation_grow == 2
    assert np.count_nonzero(ignore_mask(dq, ACS_WFC, saturation_grow=LabelConfig().saturation_grow)) == 13


def test_ignore_mask_no_coverage_sets_bit_4():
    dq = np.zeros((3, 4), np.int16)
    dq[0, 0] = 16
    nocov = np.zeros((3, 4), bool)
    nocov[0, 0] = True
    nocov[2, 3] = True
    out = ignore_mask(dq, ACS_WFC, saturation_grow=2, no_coverage=nocov)
    expected = np.zeros((3, 4), np.uint8)
    expected[0, 0] = 1 | 4
    expected[2, 3] = 4
    assert np.array_equal(out, expected)


def test_ignore_mask_no_coverage_accepts_int_array():
    dq = np.zeros((2, 2), np.uint16)
    out = ignore_mask(dq, ACS_WFC, saturation_grow=2, no_coverage=np.array([[0, 3], [0, 0]]))
    assert out.tolist() == [[0, 4], [0, 0]]


def test_ignore_mask_no_coverage_shape_mismatch():
    dq = np.zeros((3, 4), np.uint16)
    with pytest.raises(ValueError, match="no_coverage"):
        ignore_mask(dq, ACS_WFC, saturation_grow=2, no_coverage=np.zeros((4, 3), bool))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, bool])
def test_ignore_mask_non_integer_dq(dtype):
    with pytest.raises(TypeError, match="dq"):
        ignore_mask(np.zeros((3, 3), dtype), ACS_WFC, saturation_grow=2)


def test_ignore_mask_dq_not_2d():
    with pytest.raises(ValueError, match="dq"):
        ignore_mask(np.zeros(5, np.uint16), ACS_WFC, saturation_grow=2)


def test_ignore_mask_saturation_grow_is_required():
    with pytest.raises(TypeError, match="saturation_grow"):
        ignore_mask(np.zeros((3, 3), np.uint16), ACS_WFC)


def test_ignore_mask_negative_grow():
    with pytest.raises(ValueError):
        ignore_mask(np.zeros((3, 3), np.uint16), ACS_WFC, saturation_grow=-1)


# --------------------------------------------------------------------------------------
# grow
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius,n", [(0, 1), (1, 5), (2, 13), (3, 29)])
def test_grow_disc_size(radius, n):
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    g = grow(m, radius)
    assert g.dtype == bool
    assert np.count_nonzero(g) == n
    assert np.array_equal(g, _disc(radius))


def test_grow_two_separate_points():
    m = np.zeros((5, 12), bool)
    m[2, 2] = m[2, 9] = True
    assert np.count_nonzero(grow(m, 1)) == 10


def test_grow_zero_returns_copy():
    m = np.zeros((3, 3), bool)
    m[1, 1] = True
    g = grow(m, 0)
    g[0, 0] = True
    assert not m[0, 0]


def test_grow_empty_mask():
    assert not grow(np.zeros((4, 4), bool), 3).any()


@pytest.mark.parametrize("radius", [-1, -5, 1.5, "2"])
def test_grow_bad_radius(radius):
    m = np.ones((3, 3), bool)
    with pytest.raises(ValueError, match="radius"):
        grow(m, radius)


def test_grow_not_2d():
    with pytest.raises(ValueError, match="mask"):
        grow(np.ones(4, bool), 1)


# --------------------------------------------------------------------------------------
# cr_from_crmask
# --------------------------------------------------------------------------------------


def test_cr_from_crmask_inverts():
    crmask = np.array([[1, 0, 1], [0, 0, 1]], np.uint8)
    cr = cr_from_crmask(crmask)
    assert cr.dtype == np.uint8
    assert cr.tolist() == [[0, 1, 0], [1, 1, 0]]


def test_cr_from_crmask_only_zero_is_cr():
    crmask = np.array([[2, 255, 0, 1]], np.int32)
    assert cr_from_crmask(crmask).tolist() == [[0, 0, 1, 0]]


def test_cr_from_crmask_not_2d():
    with pytest.raises(ValueError, match="crmask"):
        cr_from_crmask(np.zeros((2, 2, 2)))


# --------------------------------------------------------------------------------------
# refine_cr_mask
# --------------------------------------------------------------------------------------

SKY = 100.0
RN = 4.0
#: Noise of the difference of two exposures of a flat 100 e- sky with 4 e- read noise.
SIGMA_PAIR = float(np.sqrt(2 * (SKY + RN**2)))  # = sqrt(232) = 15.23 e-
#: Thresholds these tests were written for; refine_cr_mask has no defaults of its own
#: (LabelConfig holds the stage's: refine_snr, refine_deriv_scale, refine_other_scale).
SNR = (4.0, 2.0)
DERIV = 0.3
OTHER = 1.0
BOX = (slice(30, 33), slice(30, 33))
CORE = (31, 31)


def _noise_pair(shape=(64, 64), seed=20240531):
    rng = np.random.default_rng(seed)
    reference = np.full(shape, SKY, np.float32)
    sci = (SKY + rng.normal(0.0, SIGMA_PAIR, shape)).astype(np.float32)
    return sci, reference


def _box_mask(shape=(64, 64), box=BOX):
    m = np.zeros(shape, bool)
    m[box] = True
    return m


def _near(shape=(64, 64), pad=2):
    m = np.zeros(shape, bool)
    m[BOX[0].start - pad:BOX[0].stop + pad, BOX[1].start - pad:BOX[1].stop + pad] = True
    return m


def test_sigma_pair_value():
    assert SIGMA_PAIR == pytest.approx(15.2315, abs=1e-3)


def test_refine_cr_core_and_faint_wings_recovered():
    sci, ref = _noise_pair()
    sci[BOX] = SKY + 3.0 * SIGMA_PAIR  # wings: between the grow (2) and seed (4) levels
    sci[CORE] = SKY + 500.0  # core: 33 sigma
    lab = refine_cr_mask(sci, ref, RN, snr=SNR, deriv_scale=DERIV)
    assert lab.dtype == bool and lab.shape == sci.shape
    assert lab[BOX].all()
    # Noise pixels touching the CR may join if above 2 sigma; nothing far away is labelled.
    assert np.count_nonzero(lab & ~_near()) == 0
    assert np.count_nonzero(lab & ~_box_mask()) <= 3


def test_refine_cr_faint_wings_alone_not_labelled():
    sci, ref = _noise_pair()
    sci[BOX] = SKY + 3.0 * SIGMA_PAIR  # no bright core
    lab = refine_cr_mask(sci, ref, RN, snr=SNR, deriv_scale=DERIV)
    assert not lab[BOX].any()
    assert np.count_nonzero(lab) == 0


def test_refine_cr_wings_below_grow_threshold_not_labelled():
    sci, ref = _noise_pair()
    sci[BOX] = SKY + 1.5 * SIGMA_PAIR  # below the grow level of 2 sigma
    sci[CORE] = SKY + 500.0
    lab = refine_cr_mask(sci, ref, RN, snr=SNR, deriv_scale=DERIV)
    assert lab[CORE]
    assert np.count_nonzero(lab[BOX]) == 1


def test_refine_cr_seed_threshold_exact():
    # Single pixel just above / below 4 sigma of the pair noise, noiseless elsewhere.
    ref = np.full((9, 9), SKY, np.float32)
    above = ref.copy()
    above[4, 4] = SKY + 4.05 * SIGMA_PAIR
    below = ref.copy()
    below[4, 4] = SKY + 3.95 * SIGMA_PAIR
    assert np.count_nonzero(refine_cr_mask(above, ref, RN, snr=SNR, deriv_scale=DERIV)) == 1
    assert np.count_nonzero(refine_cr_mask(below, ref, RN, snr=SNR, deriv_scale=DERIV)) == 0


def test_refine_cr_reference_var_lowers_threshold():
    # With a noiseless reference (var 0) sigma is sqrt(116) = 10.77, so 3.5 pair-sigma
    # (53.3 e-) is 4.95 sigma: a seed. With the default pair noise it is not.
    ref = np.full((9, 9), SKY, np.float32)
    sci = ref.copy()
    sci[4, 4] = SKY + 3.5 * SIGMA_PAIR
    assert not refine_cr_mask(sci, ref, RN, snr=SNR, deriv_scale=DERIV).any()
    lab = refine_cr_mask(sci, ref, RN, reference_var=np.zeros_like(ref), snr=SNR, deriv_scale=DERIV)
    assert np.count_nonzero(lab) == 1 and lab[4, 4]


def test_refine_cr_custom_snr():
    ref = np.full((9, 9), SKY, np.float32)
    sci = ref.copy()
    sci[4, 4] = SKY + 3.0 * SIGMA_PAIR
    sci[4, 5] = SKY + 1.2 * SIGMA_PAIR
    lab = refine_cr_mask(sci, ref, RN, snr=(2.5, 1.0), deriv_scale=DERIV)
    assert set(zip(*np.nonzero(lab))) == {(4, 4), (4, 5)}


def test_refine_cr_initial_seeds_grow():
    sci, ref = _noise_pair()
    sci[BOX] = SKY + 3.0 * SIGMA_PAIR
    sci[CORE] = SKY  # no residual at all in the core: only `initial` makes it a seed
    init = np.zeros(sci.shape, bool)
    init[CORE] = True
    assert not refine_cr_mask(sci, ref, RN, snr=SNR, deriv_scale=DERIV)[BOX].any()
    lab = refine_cr_mask(sci, ref, RN, initial=init, snr=SNR, deriv_scale=DERIV)
    assert lab[BOX].all()


def test_refine_cr_diagonal_connection_counts():
    ref = np.full((9, 9), SKY, np.float32)
    sci = ref.copy()
    sci[4, 4] = SKY + 500.0
    sci[5, 5] = SKY + 3.0 * SIGMA_PAIR  # diagonal neighbour: 8-connected
    sci[7, 7] = SKY + 3.0 * SIGMA_PAIR  # not connected
    lab = refine_cr_mask(sci, ref, RN, snr=SNR, deriv_scale=DERIV)
    assert set(zip(*np.nonzero(lab))) == {(4, 4), (5, 5)}


def _star_bump(shape=(64, 64)):
    bump = np.zeros(shape, np.float32)
    bump[BOX] = 200.0  # 13 sigma wings
    bump[CORE] = 500.0
    return bump


def test_refine_cr_star_in_other_residual_not_labelled():
    sci, ref = _noise_pair()
    bump = _star_bump()
    sci[BOX] = SKY + bump[BOX]
    lab = refine_cr_mask(sci, ref, RN, other_residual=bump, snr=SNR, deriv_scale=DERIV, other_scale=OTHER)
    assert not lab[BOX].any()
    assert np.count_nonzero(lab & _near()) == 0


def test_refine_cr_star_labelled_without_other_residual():
    sci, ref = _noise_pair()
    bump = _star_bump()
    sci[BOX] = SKY + bump[BOX]
    lab = refine_cr_mask(sci, ref, RN, other_residual=None, snr=SNR, deriv_scale=DERIV)
    assert lab[BOX].all()


def test_refine_cr_other_residual_nan_and_negative_ignored():
    sci, ref = _noise_pair()
    bump = _star_bump()
    sci[BOX] = SKY + bump[BOX]
    other = np.full(sci.shape, np.nan, np.float32)
    other[CORE] = -1000.0  # negative: the other exposure is lower there; no slack
    lab = refine_cr_mask(sci, ref, RN, other_residual=other, snr=SNR, deriv_scale=DERIV, other_scale=OTHER)
    assert lab[BOX].all()


def test_refine_cr_other_scale_weights_residual():
    ref = np.full((9, 9), SKY, np.float32)
    sci = ref.copy()
    sci[4, 4] = SKY + 500.0
    other = np.zeros_like(ref)
    other[4, 4] = 500.0
    assert not refine_cr_mask(sci, ref, RN, other_residual=other, snr=SNR, deriv_scale=DERIV,
                              other_scale=OTHER).any()
    # Half weight: threshold 4 sigma + 250 = 311 e- < 500 e-.
    lab = refine_cr_mask(sci, ref, RN, other_residual=other, other_scale=0.5, snr=SNR, deriv_scale=DERIV)
    assert lab[4, 4]


def test_refine_cr_deriv_scale_absorbs_sharp_star():
    ref = np.full((15, 15), SKY, np.float32)
    ref[7, 7] = 10000.0  # sharp star; |gradient| = 9900 e-
    sci = ref.copy()
    sci[7, 7] += 1000.0  # 10% interpolation error: 7 sigma without the gradient term
    assert not refine_cr_mask(sci, ref, RN, snr=SNR, deriv_scale=DERIV).any()  # 0.3 * 9900 = 2970 e- of slack
    lab = refine_cr_mask(sci, ref, RN, deriv_scale=0.0, snr=SNR)
    assert np.count_nonzero(lab) == 1 and lab[7, 7]


def test_refine_cr_pure_noise_false_label_fraction():
    sci, ref = _noise_pair(shape=(256, 256), seed=7)
    lab = refine_cr_mask(sci, ref, RN, snr=SNR, deriv_scale=DERIV)
    frac = np.count_nonzero(lab) / lab.size
    assert frac < 1e-3


def test_refine_cr_pure_noise_with_noisy_reference():
    # Both exposures carry their own noise: the pair model must hold up as well.
    rng = np.random.default_rng(11)
    shape = (256, 256)
    one = float(np.sqrt(SKY + RN**2))
    sci = (SKY + rng.normal(0.0, one, shape)).astype(np.float32)
    ref = (SKY + rng.normal(0.0, one, shape)).astype(np.float32)
    lab = refine_cr_mask(sci, ref, RN, deriv_scale=0.0, snr=SNR)
    assert np.count_nonzero(lab) / lab.size < 1e-3


@pytest.mark.parametrize("snr", [(2.0, 4.0), (4.0, 0.0), (4.0, -1.0), (4.0,), (4.0, 2.0, 1.0)])
def test_refine_cr_bad_snr(snr):
    sci, ref = _noise_pair(shape=(8, 8))
    with pytest.raises(ValueError, match="snr"):
        refine_cr_mask(sci, ref, RN, snr=snr, deriv_scale=DERIV)


def test_refine_cr_equal_seed_and_grow_ok():
    ref = np.full((5, 5), SKY, np.float32)
    sci = ref.copy()
    sci[2, 2] = SKY + 5 * SIGMA_PAIR
    assert np.count_nonzero(refine_cr_mask(sci, ref, RN, snr=(3.0, 3.0), deriv_scale=DERIV)) == 1


def test_refine_cr_shape_mismatch():
    with pytest.raises(ValueError, match="reference"):
        refine_cr_mask(np.zeros((8, 8)), np.zeros((8, 9)), RN, snr=SNR, deriv_scale=DERIV)


def test_refine_cr_other_residual_shape_mismatch():
    sci, ref = _noise_pair(shape=(8, 8))
    with pytest.raises(ValueError, match="other_residual"):
        refine_cr_mask(sci, ref, RN, other_residual=np.zeros((9, 8)), snr=SNR, deriv_scale=DERIV,
                       other_scale=OTHER)


def test_refine_cr_other_residual_needs_other_scale():
    sci, ref = _noise_pair(shape=(8, 8))
    with pytest.raises(InputError, match="other_scale"):
        refine_cr_mask(sci, ref, RN, snr=SNR, deriv_scale=DERIV, other_residual=np.zeros((8, 8)))


def test_refine_cr_thresholds_are_required():
    sci, ref = _noise_pair(shape=(8, 8))
    with pytest.raises(TypeError, match="snr"):
        refine_cr_mask(sci, ref, RN, deriv_scale=DERIV)
    with pytest.raises(TypeError, match="deriv_scale"):
        refine_cr_mask(sci, ref, RN, snr=SNR)


@pytest.mark.parametrize("rn", [-1.0, float("nan")])
def test_refine_cr_bad_readnoise(rn):
    sci, ref = _noise_pair(shape=(8, 8))
    with pytest.raises(ValueError, match="readnoise"):
        refine_cr_mask(sci, ref, rn, snr=SNR, deriv_scale=DERIV)


def test_refine_cr_not_2d():
    with pytest.raises(ValueError, match="sci"):
        refine_cr_mask(np.zeros(8), np.zeros(8), RN, snr=SNR, deriv_scale=DERIV)


def test_refine_cr_gradient_slack_does_not_wrap_around_edges():
    ref = np.full((16, 16), SKY, np.float32)
    ref[:, 0] = 10000.0  # bright column (bleed / star) at the left edge
    sci = ref.copy()
    sci[8, 15] += 1000.0  # 66 sigma CR on the right edge, on flat sky
    assert refine_cr_mask(sci, ref, RN, snr=SNR, deriv_scale=DERIV)[8, 15]


# --------------------------------------------------------------------------------------
# label_scores
# --------------------------------------------------------------------------------------


def _scores_case():
    truth = np.zeros((10, 10))
    label = np.zeros((10, 10), bool)
    ignore = np.zeros((10, 10), np.uint8)
    source = np.zeros((10, 10))
    noise = np.full((10, 10), 10.0)

    # bin 0 (SNR < 3): one found, one missed
    truth[0, 0], label[0, 0] = 1.0, True
    truth[0, 1] = 2.9
    # bin 1 (3 <= SNR < 5): 3.0 belongs here (left-closed bins)
    truth[1, 0], label[1, 0] = 3.0, True
    truth[1, 1], label[1, 1] = 4.0, True
    truth[1, 2] = 4.99
    # bin 2 (5 <= SNR < 10)
    truth[2, 0] = 5.0
    truth[2, 1], label[2, 1] = 7.0, True
    # bin 3 (SNR >= 10)
    truth[3, 0], label[3, 0] = 10.0, True
    truth[3, 1], label[3, 1] = 50.0, True
    source[3, 1] = 1000.0  # a CR on a star: a CR pixel, not a source pixel
    truth[3, 2] = 1e6
    # ignored CR pixel (labelled): in no count
    truth[4, 0], label[4, 0], ignore[4, 0] = 20.0, True, 1
    # ignored clean pixel, labelled: not a false label, not clean
    label[4, 1], ignore[4, 1] = True, 4
    # false label on a clean pixel
    label[5, 0] = True
    # source pixels (100 > 5 * 10): one falsely labelled, one not, one ignored
    source[6, 0], label[6, 0] = 100.0, True
    source[6, 1] = 100.0
    source[6, 2], label[6, 2], ignore[6, 2] = 100.0, True, 2
    # at exactly 5 sigma: not a source pixel; labelled, so a plain false label
    source[7, 0], label[7, 0] = 50.0, True
    return label, truth, ignore, source, noise


def test_label_scores_hand_built():
    label, truth, ignore, source, noise = _scores_case()
    s = label_scores(label, truth, ignore=ignore, source=source, noise=noise)
    assert s == {
        "cr_pixels": [2, 3, 2, 3],
        "cr_found": [1, 2, 1, 2],
        "clean_pixels": 100 - 10 - 3,  # 10 counted CRs, 3 ignored pixels
        "false_labels": 3,  # (5,0), (6,0), (7,0)
        "source_pixels": 2,  # (6,0), (6,1)
        "false_source_labels": 1,  # (6,0)
    }
    assert all(type(v) is int for v in s["cr_pixels"] + s["cr_found"])


def test_label_scores_without_ignore_counts_everything():
    label, truth, ignore, source, noise = _scores_case()
    s = label_scores(label, truth)
    assert s["cr_pixels"] == [2, 3, 2, 4]  # the 20-sigma CR at (4,0) is back
    assert s["cr_found"] == [1, 2, 1, 3]
    assert s["clean_pixels"] == 100 - 11
    assert s["false_labels"] == 5  # (4,1), (5,0), (6,0), (6,2), (7,0)
    assert s["source_pixels"] == 0 and s["false_source_labels"] == 0


def test_label_scores_source_needs_noise():
    label, truth, ignore, source, noise = _scores_case()
    s = label_scores(label, truth, ignore=ignore, source=source)
    assert s["source_pixels"] == 0 and s["false_source_labels"] == 0


def test_label_scores_source_sigma():
    label, truth, ignore, source, noise = _scores_case()
    s = label_scores(label, truth, ignore=ignore, source=source, noise=noise, source_sigma=4.0)
    assert s["source_pixels"] == 3  # (7,0) with 50 > 4 * 10 joins
    assert s["false_source_labels"] == 2


def test_label_scores_summable_over_halves():
    label, truth, ignore, source, noise = _scores_case()
    whole = label_scores(label, truth, ignore, source, noise)
    a = label_scores(label[:5], truth[:5], ignore[:5], source[:5], noise[:5])
    b = label_scores(label[5:], truth[5:], ignore[5:], source[5:], noise[5:])
    for k in whole:
        if isinstance(whole[k], list):
            assert [x + y for x, y in zip(a[k], b[k])] == whole[k]
        else:
            assert a[k] + b[k] == whole[k]


def test_label_scores_no_crs():
    s = label_scores(np.zeros((4, 4), bool), np.zeros((4, 4)))
    assert s["cr_pixels"] == [0, 0, 0, 0] and s["cr_found"] == [0, 0, 0, 0]
    assert s["clean_pixels"] == 16 and s["false_labels"] == 0


def test_label_scores_default_bins():
    assert SNR_BINS == (0.0, 3.0, 5.0, 10.0, np.inf)


def test_label_scores_shape_mismatch():
    with pytest.raises(ValueError, match="label"):
        label_scores(np.zeros((4, 4), bool), np.zeros((4, 5)))


def test_label_scores_infinite_snr_in_top_bin():
    truth = np.zeros((2, 2))
    truth[0, 0] = np.inf
    s = label_scores(np.ones((2, 2), bool), truth)
    assert sum(s["cr_pixels"]) + s["clean_pixels"] == 4


def test_minimum_excess_matches_the_minimum_of_normals():
    """The minimum of n exposures sits E[min of 2] - E[min of n] sigma further below them."""
    assert minimum_excess(1) == minimum_excess(2) == 0.0
    # E[max] of 2, 3, 4 unit normals: 1/sqrt(pi), 3/(2 sqrt(pi)), 1.02938
    assert minimum_excess(3) == pytest.approx(0.5 / np.sqrt(np.pi), abs=1e-4)
    assert minimum_excess(4) == pytest.approx(1.02938 - 1 / np.sqrt(np.pi), abs=1e-4)
    draws = np.random.default_rng(3).normal(size=(200_000, 4))
    mc = draws[:, :2].min(axis=1).mean() - draws.min(axis=1).mean()
    assert minimum_excess(4) == pytest.approx(mc, abs=0.01)
    for bad in (0, 2.5, True, "4"):
        with pytest.raises(InputError, match="n_exposures"):
            minimum_excess(bad)
