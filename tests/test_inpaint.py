"""The residual inpaint network: its base fill, its loss, its targets, and the bars of issue 13.

A small seeded simulated set (schema v2, with the noiseless pixels) of three field
types that differ as the real ones do: flat sky, crowded stars, smooth galaxies.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crforge.pipeline.datafile.schema import META_DTYPE
from crforge.pipeline.datafile.writer import write_arrays
from crforge.training import checkpoint
from crforge.training.baselines import median_fill
from crforge.training.config import AugmentConfig, ModelConfig, TrainConfig
from crforge.training.data import StampDataset
from crforge.training.evaluate.config import EvaluateConfig
from crforge.training.evaluate.stage import evaluate_run
from crforge.training.models import build_model
from crforge.training.torchfill import masked_median_fill
from crforge.training.train import flux_inpaint_loss, main, relative_inpaint_loss

S = 64
SKY = 40.0
FIELD_TYPES = ("extragalactic", "globular_cluster", "resolved_galaxy")

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _scene(ftype: str, rng: np.random.Generator) -> np.ndarray:
    """The noiseless stamp (e-): sky, plus stars (crowded field) or a smooth galaxy."""
    yy, xx = np.mgrid[:S, :S]
    clean = np.full((S, S), SKY)
    if ftype == "globular_cluster":
        for _ in range(10):
            y, x, f = rng.uniform(3, S - 3), rng.uniform(3, S - 3), rng.uniform(1000, 8000)
            clean += f / (2 * np.pi * 0.9 ** 2) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 0.9 ** 2))
    elif ftype == "resolved_galaxy":
        y, x, r = rng.uniform(20, S - 20), rng.uniform(20, S - 20), rng.uniform(5, 9)
        clean += rng.uniform(150, 400) * np.exp(-np.hypot(yy - y, xx - x) / r)
    return clean


def _split(n: int, rng: np.random.Generator) -> dict:
    """``n`` stamps cycling through the field types, with Poisson-like noise and CR hits."""
    image, clean = np.empty((n, S, S), np.float32), np.empty((n, S, S), np.float32)
    cr = np.zeros((n, S, S), np.uint8)
    for i in range(n):
        clean[i] = _scene(FIELD_TYPES[i % 3], rng)
        img = clean[i] + rng.normal(0.0, np.sqrt(clean[i] + 16.0))
        for _ in range(int(rng.integers(4, 8))):  # CR hits: a pixel, a short track, a 2x2 blob
            y, x = rng.integers(2, S - 4, 2)
            k = int(rng.integers(3))
            sl = (slice(y, y + 1), slice(x, x + 3)) if k == 1 else (slice(y, y + 1 + (k == 2)),
                                                                    slice(x, x + 1 + (k == 2)))
            img[sl] += rng.uniform(300, 2000)
            cr[i][sl] = 1
        image[i] = img
    meta = np.zeros(n, META_DTYPE)
    meta["sky"], meta["exptime"], meta["readnoise"], meta["gain"] = SKY, 500.0, 4.0, 1.0
    meta["field_type"] = [FIELD_TYPES[i % 3] for i in range(n)]
    meta["filter"] = "F606W"
    meta["cr_fraction"] = cr.reshape(n, -1).mean(1)
    return {"image": image, "cr": cr, "ignore": np.zeros((n, S, S), np.uint8), "truth": 4 * cr,
            "noiseless": clean, "meta": meta}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The seeded set: 60 train, 12 val, 30 test stamps (a third of each field type)."""
    root = tmp_path_factory.mktemp("inpaint")
    rng = np.random.default_rng(13)
    splits = {split: _split(n, rng) for split, n in (("train", 60), ("val", 12), ("test", 30))}
    return write_arrays(root / "sim.h5", splits, manifest_name="inpaint-bars")


@pytest.fixture(scope="module")
def trained(simulated, tmp_path_factory):
    """A residual 2-8 inpaint network trained on the seeded set (CPU, about 30 s)."""
    run = tmp_path_factory.mktemp("runs") / "bars"
    torch.set_num_threads(1)
    # the default design (head 'both', step floor, core guard) and masks, without the
    # masks aimed at stars: on 60 stamps a 2-8 network overfits with them (resolved
    # galaxies 0.0024 against 0.00089 without, with the asinh head); on the default data
    # set they help (docs/training.md). The default learning rate: at the first residual
    # design's (inpaint_lr_factor 0.2) the 'both' head lost 2.3% to the median on flat sky
    cfg = TrainConfig(kind="inpaint", model=ModelConfig(depth=2, width=8), epochs=8, batch_size=6,
                      stamps_per_epoch=0, val_stamps=0, seed=0, device="cpu", cpu_bf16="off",
                      channels_last=False, augment=AugmentConfig(star_masks=0.0))
    main(cfg, simulated, run / "inpaint")
    return run


# --------------------------------------------------------------------------- parts


def test_untrained_network_is_exactly_the_masked_median():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (3, 1, 64, 64)).astype(np.float32)
    m = rng.random((3, 1, 64, 64)) < 0.05
    m[0, 0, 20:34, 10:40] = True  # beyond the 5x5 window: the larger windows
    ref = np.stack([median_fill(a[0], b[0]) for a, b in zip(x, m)])[:, None]
    for head, context in (("asinh", 0), ("linear", 0), ("both", 0), ("asinh", 16)):
        torch.manual_seed(0)
        net = build_model("inpaint", 2, 4, head=head, context=context).eval()
        with torch.no_grad():
            out = net.inpaint(torch.from_numpy(x), torch.from_numpy(m).float()).numpy()
            base = masked_median_fill(torch.from_numpy(x), torch.from_numpy(m)).numpy()
        assert np.array_equal(base, ref)
        assert np.array_equal(out, ref), head
    # the first design (no base fill) does not start anywhere near it
    legacy = build_model("inpaint", 2, 4, fill="none").eval()
    with torch.no_grad():
        far = legacy.inpaint(torch.from_numpy(x), torch.from_numpy(m).float()).numpy()
    assert np.abs(far - ref)[m[:, :1]].mean() > 0.01


def test_context_channel_is_checked_and_is_the_local_mean():
    from crforge.errors import InputError
    from crforge.training.models import _box_mean

    for bad in (-1, 129):
        with pytest.raises(InputError, match="model.context"):
            ModelConfig(context=bad).validate()
    with pytest.raises(InputError, match="context"):
        build_model("inpaint", 2, 4, fill="none", context=8)
    # a crowded half and an empty half: the box mean tells them apart, and at a pixel it
    # is the mean of the image pixels within the box, whatever lies beyond it
    x = torch.zeros(1, 1, 40, 60)
    x[..., 30:] = 2.0
    got = _box_mean(x, 5)[0, 0]
    assert torch.allclose(got[:, :25], torch.zeros(40, 25))
    assert torch.allclose(got[:, 35:], torch.full((40, 25), 2.0))
    # on the top edge the box holds 6 rows, all alike: 6 of its 11 columns bright, not
    # diluted by the rows beyond the edge
    assert torch.isclose(got[0, 30], torch.tensor(2.0 * 6 / 11))
    assert torch.isclose(got[20, 27], torch.tensor(2.0 * 3 / 11))


def test_star_fit_tells_a_star_from_a_galaxy_core_from_the_visible_pixels():
    """The point source plus pedestal fitted around each masked pixel: exact on its own model
    whatever the mask hides, no pedestal under a star, a broad one under a galaxy's core;
    the network's extra channels are those amplitudes, or the pedestal's fraction."""
    from crforge.errors import InputError
    from crforge.training.models import star_fit

    yy, xx = np.mgrid[:40, :40]
    r2 = (yy - 20) ** 2 + (xx - 20) ** 2
    mask = np.zeros((40, 40), np.float32)
    mask[19:22, 18:21] = 1  # the core hidden, as by a CR
    as_t = lambda a: torch.from_numpy(np.asarray(a, np.float32))[None, None]  # noqa: E731
    model = 7.0 * np.exp(-r2 / (2 * 0.85 ** 2)) + 1.5
    a, b = star_fit(as_t(model), as_t(mask), 0.85)
    assert abs(a[0, 0, 20, 20] - 7.0) < 1e-3 and abs(b[0, 0, 20, 20] - 1.5) < 1e-3
    assert torch.equal(a != 0, as_t(mask) > 0)  # fitted at the masked pixels only
    star = 10.0 * np.exp(-r2 / (2 * 0.95 ** 2))  # a little broader than the fitted PSF
    galaxy = 10.0 * np.exp(-np.sqrt(r2) / 2.0)  # an exponential core: as peaked, broader wings
    (sa, sb), (ga, gb) = (star_fit(as_t(im), as_t(mask), 0.85) for im in (star, galaxy))
    assert sa[0, 0, 20, 20] > 9 and abs(sb[0, 0, 20, 20]) < 0.05 * sa[0, 0, 20, 20]
    assert gb[0, 0, 20, 20] > 0.15 * ga[0, 0, 20, 20] > 0  # 0.22 (a star: 0.007)
    # a window almost all masked fits nothing
    hidden = np.ones((40, 40), np.float32)
    hidden[0, 0] = 0
    a, b = star_fit(as_t(star), as_t(hidden), 0.85)
    assert not a.any() and not b.any()
    net = build_model("inpaint", 2, 4, star_fit=0.85).eval()
    inputs = net.planes(as_t(galaxy), as_t(mask))[0]
    assert inputs.shape[1] == 5 and net.unet.inc[0].in_channels == 5
    assert torch.allclose(inputs[0, 3:], torch.asinh(torch.cat(star_fit(as_t(galaxy), as_t(mask), 0.85))[:, 0]
                                                     / net.INPUT_SOFTENING))
    # the pedestal's fraction alone: one channel, near 0 for the star, a fifth for the galaxy
    net = build_model("inpaint", 2, 4, star_fit=0.85, star_fit_input="fraction").eval()
    fractions = [net.planes(as_t(im), as_t(mask))[0][0, 3, 20, 20].item() for im in (star, galaxy)]
    assert net.unet.inc[0].in_channels == 4 and abs(fractions[0]) < 0.01 and 0.15 < fractions[1] < 0.3
    for bad in (-0.5, 4.0, "1"):
        with pytest.raises(InputError, match="model.star_fit"):
            ModelConfig(star_fit=bad).validate()
    with pytest.raises(InputError, match="model.star_fit_input"):
        ModelConfig(star_fit=0.85, star_fit_input="ratio").validate()
    with pytest.raises(InputError, match="star_fit"):
        build_model("inpaint", 2, 4, fill="none", star_fit=0.85)
    design = checkpoint.inpaint_design({"fill": "median5", "head": "asinh"})
    assert design["star_fit"] == 0.0 and design["star_fit_input"] == "amplitudes"


def _star_with_a_hidden_core() -> tuple[torch.Tensor, torch.Tensor, float]:
    """A sharp star (peak 40, i.e. 4000 e-) whose 3x3 core is masked: image, mask, peak."""
    yy, xx = np.mgrid[:32, :32]
    star = 40.0 * np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / (2 * 0.9 ** 2))
    mask = np.zeros((32, 32), np.float32)
    mask[15:18, 15:18] = 1
    return torch.from_numpy(star.astype(np.float32))[None, None], torch.from_numpy(mask)[None, None], 40.0


@pytest.mark.parametrize("head, reaches", [("asinh", True), ("linear", False), ("both", True)])
def test_the_correction_can_reach_a_hidden_star_core(head, reaches):
    """The largest fill each head can give at a masked star's peak, its correction saturated.

    Both base fills stay near the wings (about a third of the peak), so the first residual
    design, bounded by where they disagree, could never put the core back (on the default
    data set 90% of its remaining error was in such pixels); the asinh head can, and so
    can the head with both corrections.
    """
    img, mask, peak = _star_with_a_hidden_core()
    net = build_model("inpaint", 2, 4, head=head).eval()
    with torch.no_grad():
        base = net.base(img, mask)[0, 0, 16, 16].item()
        net.unet.outc.bias.fill_(20.0)  # every output saturated upwards
        top = net(img, mask)[0, 0, 16, 16].item()
    assert base < peak / 2
    assert (top > peak) == reaches, (base, top)


def test_step_floor_drops_small_asinh_steps_when_evaluated_only():
    """Steps under ``step_floor`` leave the blend as it is in eval mode; larger ones, and
    every step while training, are applied; a file without the key applies every step."""
    from crforge.training import checkpoint

    img, mask, _ = _star_with_a_hidden_core()
    torch.manual_seed(0)
    floored = build_model("inpaint", 2, 4, head="both", step_floor=0.15)
    plain = build_model("inpaint", 2, 4, head="both", step_floor=0.0)
    plain.load_state_dict(floored.state_dict())
    with torch.no_grad():
        for net in (floored, plain):
            net.unet.outc.bias[0] = math.atanh(0.1 / 4)  # a step of 0.1 everywhere
    floored.eval(), plain.eval()
    with torch.no_grad():
        no_step = plain.base(img, mask)  # the untrained blend is the median, the linear term 0
        small = floored(img, mask)[0, 0, 15:18, 15:18]
        assert torch.allclose(small, no_step[0, 0, 15:18, 15:18])
        lifted = plain(img, mask)[0, 0, 15:18, 15:18]
        # a step of 0.1 in asinh units lifts a bright pixel by about 10%
        assert torch.all(lifted / small > 1.09)
        floored.train(), plain.train()
        assert torch.equal(floored(img, mask), plain(img, mask))
        floored.eval(), plain.eval()
        for net in (floored, plain):
            net.unet.outc.bias[0] = math.atanh(0.5 / 4)  # 0.5: above the floor, applied
        assert torch.equal(floored(img, mask), plain(img, mask))
    assert checkpoint.inpaint_design({"fill": "median5", "head": "both"})["step_floor"] == 0.0
    assert checkpoint.inpaint_design({"fill": "median5", "step_floor": 0.15})["step_floor"] == 0.15
    with pytest.raises(ValueError, match="model.step_floor"):
        ModelConfig(step_floor=-0.1).validate()


def test_core_guard_holds_back_a_galaxy_core_not_a_star_core_when_evaluated_only():
    """With ``core_guard``, a positive asinh step is not applied where the visible pixels
    fit a core on a broad pedestal (a galaxy's), and is where they fit a star, on empty
    sky or on a galaxy's diffuse light; negative steps, training, and files without the
    key are untouched."""
    from crforge.errors import InputError

    yy, xx = np.mgrid[:40, :40]
    r = np.sqrt((yy - 20) ** 2 + (xx - 20) ** 2)
    as_t = lambda a: torch.from_numpy(np.asarray(a, np.float32))[None, None]  # noqa: E731
    star, galaxy = as_t(40.0 * np.exp(-r ** 2 / (2 * 0.9 ** 2))), as_t(10.0 * np.exp(-r / 2.0))
    on_light = star + as_t(3.0 + 0.05 * xx)  # the star on a galaxy's diffuse light, a gradient
    mask = torch.zeros_like(star)
    mask[..., 19:22, 19:22] = 1
    torch.manual_seed(0)
    guarded = build_model("inpaint", 2, 4, head="asinh", step_floor=0.0, core_guard=0.03)
    plain = build_model("inpaint", 2, 4, head="asinh", step_floor=0.0, core_guard=0.0)
    plain.load_state_dict(guarded.state_dict())
    # the smallest fraction of the fits centred on a masked pixel and its neighbours: the
    # galaxy's is 0.046 at every pixel of its hidden core (fitted centred on each pixel
    # alone, 0.05 at its peak), the star's 0.001 (0.08 to 0.13 a pixel off its peak)
    held = mask[0, 0] > 0
    assert torch.allclose(guarded.pedestal(galaxy, mask)[0, 0][held], torch.tensor(0.046), atol=0.002)
    with torch.no_grad():
        for net in (guarded, plain):
            net.unet.outc.bias[0] = math.atanh(1.0 / 4)  # a step of 1 (a factor of e) everywhere
            net.eval()
        assert guarded.guarded and not plain.guarded
        assert torch.equal(guarded.guard_at(galaxy, mask, mask)[0, 0] > 0, held)
        for image in (star, on_light):
            assert not guarded.guard_at(image, mask, mask).any()
        # fitted only where asked: the galaxy's core held at the pixels given, nowhere else
        some = torch.zeros_like(mask)
        some[..., 20, 19:21] = 1
        assert torch.equal(guarded.guard_at(galaxy, mask, some), some)
        assert torch.equal(guarded.pedestal(galaxy, mask, at=some)[some > 0],
                           guarded.pedestal(galaxy, mask)[some > 0])
        blend = guarded.base(galaxy, mask)[0, 0]
        assert torch.allclose(guarded(galaxy, mask)[0, 0][held], blend[held])  # held back
        assert torch.all(plain(galaxy, mask)[0, 0][held] > 2.5 * blend[held])
        for image in (star, on_light):  # a star's core is restored
            assert torch.equal(guarded(image, mask), plain(image, mask))
        for net in (guarded, plain):
            net.unet.outc.bias[0] = math.atanh(-0.5 / 4)  # a negative step: applied
        assert torch.equal(guarded(galaxy, mask), plain(galaxy, mask))
        guarded.train(), plain.train()
        assert not guarded.guarded
        assert torch.equal(guarded(galaxy, mask), plain(galaxy, mask))
    assert checkpoint.inpaint_design({"fill": "median5"})["core_guard"] == 0.0
    for key, bad in (("core_guard", 1.0), ("core_guard", -0.1), ("core_guard_sigma", 0.0)):
        with pytest.raises(InputError, match=f"model.{key}"):
            ModelConfig(**{key: bad}).validate()


def test_relative_loss_is_two_for_the_base_and_ignores_unmasked_pixels():
    """Per stamp plus per batch, each relative to the base fill: 1 + 1 for the base itself."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(4, 1, 16, 16, generator=g)
    base = target + 0.1 * torch.randn(4, 1, 16, 16, generator=g)
    lm = (torch.rand(4, 1, 16, 16, generator=g) < 0.2).float()
    lm[3] = 0  # a stamp without masked pixels does not count
    assert relative_inpaint_loss(base, base, target, lm).item() == pytest.approx(2.0, rel=2e-2)
    better = target + 0.5 * (base - target)
    assert relative_inpaint_loss(better, base, target, lm).item() == pytest.approx(0.5, rel=2e-2)
    wild = torch.where(lm > 0, better, torch.full_like(better, 1e6))
    assert relative_inpaint_loss(wild, base, target, lm).item() == pytest.approx(0.5, rel=2e-2)
    # a flat stamp made worse counts as much as a crowded one: the per-stamp term sees it
    bright = target.clone()
    bright[0] *= 100.0
    b2 = bright + (base - target)
    worse_flat = b2.clone()
    worse_flat[1] = bright[1] + 3.0 * (base[1] - target[1])
    assert relative_inpaint_loss(worse_flat, b2, bright, lm).item() > 2.0 + 8.0 / 3 - 0.1


def test_flux_loss_weighs_each_object_by_its_fractional_flux_error():
    """1 for the base, 0 for the truth, linear in between; a faint object counts as a bright one."""
    t = torch.zeros(2, 1, 48, 48)
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    t[0, 0] = 50.0 * torch.exp(-((yy - 12) ** 2 + (xx - 12) ** 2) / 2.0)  # a bright star
    t[0, 0] += 2.0 * torch.exp(-((yy - 36) ** 2 + (xx - 30) ** 2) / 8.0)  # a faint, broad galaxy
    t[1, 0, 20, 20] = 0.5  # below min_peak: not an object, and no mask near it anyway
    m = torch.zeros_like(t)
    m[0, 0, 12, 12:14] = 1  # the star's core
    m[0, 0, 36, 30] = 1  # the galaxy's core
    m[0, 0, 5, 40] = 1  # flat sky: no object's aperture
    base = t * (1 - m)
    assert flux_inpaint_loss(base, base, t, m).item() == pytest.approx(1.0)
    assert flux_inpaint_loss(t, base, t, m).item() == 0.0
    half = t - 0.5 * (t - base)
    assert flux_inpaint_loss(half, base, t, m).item() == pytest.approx(0.5, rel=1e-5)
    # the star's core filled exactly, the galaxy's left empty: what is left is the galaxy's
    # fractional flux error (0.18 of the base's total here), where in squared pixel errors
    # the galaxy is under 1% of the base's
    star_only = torch.where((yy < 24)[None, None], t, base)
    share = flux_inpaint_loss(star_only, base, t, m).item()
    assert 0.1 < share < 0.5
    sq = ((star_only - t) ** 2 * m).sum() / ((base - t) ** 2 * m).sum()
    assert sq.item() < 0.01
    # only the masked pixels carry a gradient; the sky pixel's mask is no object's
    p = base.clone().requires_grad_()
    flux_inpaint_loss(p, base, t, m).backward()
    assert set(map(tuple, torch.nonzero(p.grad[0, 0]).tolist())) == {(12, 12), (12, 13), (36, 30)}
    assert flux_inpaint_loss(base, base, t, torch.zeros_like(m)).item() == 0.0
    with pytest.raises(ValueError, match="train.inpaint_flux_weight"):
        TrainConfig(inpaint_flux_weight=-1.0).validate()
    # the trainer's loss is the relative one plus the weighted term
    from crforge.training.train import batch_loss

    torch.manual_seed(0)
    net = build_model("inpaint", 2, 4, fill="median5", head="both")
    net.unet.outc.weight.data.normal_(0.0, 0.3)
    batch = {"image": half, "target": t, "mask": m, "cr": torch.zeros_like(m), "loss_mask": m}
    out = net(half, m)
    rel = relative_inpaint_loss(out, net.base(half, m), t, m)
    flux = flux_inpaint_loss(out, net.base(half, m), t, m)
    assert flux.item() > 0.01
    assert batch_loss(net, batch, "inpaint", relative=True, flux_weight=2.0).item() == pytest.approx(
        (rel + 2.0 * flux).item(), rel=1e-5)


def test_inpaint_items_target_the_noiseless_pixels(simulated, tmp_path):
    ds = StampDataset(simulated, "train", "inpaint", None, seed=0, **TrainConfig(kind="inpaint").data_options())
    item = ds[1]
    own, lm = item["cr"][0] > 0, item["loss_mask"][0] > 0
    # the target is the noiseless stamp normalised like the input, known under the own CRs too
    ref = (ds._reader.read("noiseless", 1) - SKY) / 100.0
    assert torch.allclose(item["target"][0], torch.from_numpy(ref), atol=1e-6)
    assert (lm & own).sum() == (own & (item["mask"][0] > 0)).sum()


def test_training_masks_are_denser_and_can_be_aimed_at_stars(simulated):
    """Training unions 4-20 CR masks (validation deepCR's 1-9); ``star_masks`` puts them on peaks."""
    from crforge.training.data import bright_peaks

    plain = AugmentConfig(sky_range=(0.0, 0.0), flip=False, rot90=False, star_masks=0.0)
    sets = {"eval": None, "train": plain,
            "stars": AugmentConfig(sky_range=(0.0, 0.0), flip=False, rot90=False, star_masks=1.0)}
    frac, on_peak = {}, {}
    for name, aug in sets.items():
        ds = StampDataset(simulated, "train", "inpaint", aug, seed=0, **TrainConfig(kind="inpaint").data_options())
        fr, hits = [], []
        for i in range(1, 60, 3):  # the crowded-star stamps
            item = ds[i]
            m = item["mask"][0].numpy() > 0
            peaks = bright_peaks(item["target"][0].numpy(), item["weight"][0].numpy() > 0, n=10)
            fr.append(m.mean())
            hits.append(m.ravel()[peaks].sum())
        frac[name], on_peak[name] = float(np.mean(fr)), float(np.mean(hits))
    assert 1.8 < frac["train"] / frac["eval"] < 3.5, frac  # (4+20)/2 against (1+9)/2 masks
    # aimed: about one peak of ten covered per borrowed mask (12 on average), against chance
    assert on_peak["stars"] > 3 * max(on_peak["train"], 0.5), on_peak


def test_aimed_masks_land_on_or_beside_the_peak():
    """``star_mask_offset``: the aimed CR pixel lands within that many pixels of the peak."""
    from crforge.training.data import _onto_peak

    donor = np.zeros((32, 32), bool)
    donor[3, 5] = True
    peaks = np.array([16 * 32 + 20])
    rng = np.random.default_rng(0)
    for offset in (0, 2):
        shifted = [_onto_peak(donor, peaks, rng, offset) for _ in range(500)]
        where = [divmod(int(np.flatnonzero(m)[0]), 32) for m in shifted]
        dy, dx = (np.array(where) - (16, 20)).T
        assert max(np.abs(dy).max(), np.abs(dx).max()) == offset
        on = float(np.mean((dy == 0) & (dx == 0)))
        # all 25 positions of the 5x5 box, each about 1/25 of the time
        assert on == 1.0 if offset == 0 else (len(set(where)) == 25 and 0.01 < on < 0.1), (offset, on)
    with pytest.raises(ValueError, match="augment.star_mask_offset"):
        AugmentConfig(star_mask_offset=-1).validate()


# --------------------------------------------------------------------------- behaviour


def test_trained_network_matches_a_constant_sky_inside_a_mask(trained):
    """Flat sky of 40 e- with noise: under a mask the fill is the sky to well within the noise."""
    from crforge import deepcr_models

    rng = np.random.default_rng(7)
    sigma = np.sqrt(SKY + 16.0)
    img = (SKY + rng.normal(0.0, sigma, (128, 128))).astype(np.float32)
    mask = np.zeros(img.shape, bool)
    for _ in range(60):  # CR-like hits and tracks, and one large blob
        y, x = rng.integers(2, 124, 2)
        mask[y, x:x + int(rng.integers(1, 4))] = True
    mask[50:58, 60:72] = True
    net = deepcr_models.load(trained / "inpaint" / "best.pt")
    filled = deepcr_models.inpaint(img, mask, net, sky=SKY)
    err = filled[mask] - SKY
    assert abs(err.mean()) < 0.15 * sigma  # no offset
    assert np.sqrt(np.mean(err ** 2)) < 0.5 * sigma  # well within the noise of one pixel
    assert np.array_equal(filled[~mask], img[~mask])


def test_bars_of_issue_13_on_a_small_seeded_set(simulated, trained, tmp_path):
    """What 8 epochs of a 2-8 network on 60 stamps hold, with margins (figures in the comments).

    Held: against the noiseless pixels never worse than the best classical fill on flat
    sky (0.000365 against the median's 0.000371) and on galaxies (0.00071 against
    0.00085), against the observed ones within 0.4% of it (the noise floor), far better
    than its start on stars (0.041 against the median's 0.41), and better photometry
    than the median (median and 90th-percentile flux error 0.53% and 6.5% against
    1.3% and 19.6%). Not held at this scale: biharmonic inpainting fills these smooth,
    isolated stars better (0.029). The bars of issue 13 on the default data set are
    measured with `crforge evaluate` (docs/evaluation.md).
    """
    cfg = EvaluateConfig(split="test", stamps_per_field_type=0, baselines=("median5", "biharmonic"),
                         threads=1, batch_size=6, star_min_snr=20.0, real_frames=False)
    doc = evaluate_run(trained, simulated, cfg, tmp_path / "eval")
    inp = doc["inpaint"]
    best = {key: {f: min(inp[m][key][f] for m in ("median5", "biharmonic")) for f in FIELD_TYPES}
            for key in ("mse", "mse_truth")}
    net = {key: inp["crforge"][key] for key in ("mse", "mse_truth")}
    for f in ("extragalactic", "resolved_galaxy"):
        assert net["mse_truth"][f] <= 1.02 * best["mse_truth"][f], (f, net["mse_truth"][f], best)
        assert net["mse"][f] <= 1.02 * best["mse"][f], (f, net["mse"][f], best)
    gc = "globular_cluster"
    assert net["mse_truth"][gc] <= inp["median5"]["mse_truth"][gc] / 6
    ph = doc["photometry"]["methods"]
    for stat in ("median_abs", "p90_abs"):
        assert ph["crforge"]["all"][stat] < 0.7 * ph["median5"]["all"][stat]


def test_shipped_model_holds_the_bars_on_stamps_of_the_simulator(tmp_path):
    """The shipped ``synthetic-acs-wfc`` inpaint model on 72 seeded stamps of crforge's own
    simulator (scenes it was not trained on, :mod:`simstamps`), with margins.

    Measured (seed 2026; the shipped model runs with its ``step_floor`` of 0.2): against
    the noiseless pixels the best classical fill's MSE over the network's is 2.91 / 11.5 /
    3.60 (extragalactic / globular cluster / resolved galaxy; bars 1, 2, 2), against the
    observed ones 1.26 / 11.4 / 2.24 (bar 1); the flux error of the hit stars (median /
    90th percentile) 0.27 / 2.74% over all 600, 0.58 / 3.31% on the 24 extragalactic
    ones, 0.67 / 6.60% in globular clusters and 0.12 / 0.53% in resolved galaxies,
    against biharmonic's 0.42 / 7.84, 0.61 / 5.36, 1.53 / 12.89 and 0.17 / 0.81%. The
    extragalactic median is held without the 0.8 margin (0.95 of biharmonic's on 24
    stars; without the floor it was 0.93%, above it).
    """
    import shutil

    from simstamps import simulated_stamps

    from crforge.deepcr_models import registry

    rec = next(r for r in registry.read_registry(registry.shipped_zoo())
               if r.name == "synthetic-acs-wfc" and r.kind == "inpaint")
    run = tmp_path / "run"
    (run / "inpaint").mkdir(parents=True)
    # a zoo weights file is a checkpoint: the run holds it as its inpaint network
    shutil.copyfile(registry.shipped_zoo() / rec.weights, run / "inpaint" / "best.pt")
    data = simulated_stamps(tmp_path / "sim.h5", 24, 2026)
    cfg = EvaluateConfig(split="test", stamps_per_field_type=0, baselines=("median5", "biharmonic"),
                         threads=1, stars_per_stamp=12, real_frames=False)
    doc = evaluate_run(run, data, cfg, tmp_path / "eval")
    inp = doc["inpaint"]
    for key, bars in (("mse_truth", (1.5, 2.5, 2.5)), ("mse", (1.1, 1.1, 1.1))):
        for f, bar in zip(FIELD_TYPES, bars):
            best = min(inp[m][key][f] for m in ("median5", "biharmonic"))
            assert best / inp["crforge"][key][f] >= bar, (key, f, best, inp["crforge"][key][f])
    ph = doc["photometry"]["methods"]
    for f in ("all", "globular_cluster", "resolved_galaxy"):
        for stat in ("median_abs", "p90_abs"):
            assert ph["crforge"][f][stat] <= 0.8 * ph["biharmonic"][f][stat], (f, stat, ph)
    eg, eg_bh = ph["crforge"]["extragalactic"], ph["biharmonic"]["extragalactic"]
    assert eg["median_abs"] < eg_bh["median_abs"] and eg["p90_abs"] <= 0.8 * eg_bh["p90_abs"], (eg, eg_bh)
    assert ph["crforge"]["all"]["n"] >= 500


def test_model_card_gives_both_yardsticks_and_the_noise_floor():
    from crforge.deepcr_models.publish import _card_inpaint

    figs = {"all": 0.5, "extragalactic": 0.004, "globular_cluster": 1.5, "resolved_galaxy": 0.03}
    ev = {"data": {"split": "test"}, "inpaint_units": "(100 electrons)^2",
          "inpaint": {m: {"mse": figs, "mse_truth": {k: v / 2 for k, v in figs.items()}, "seconds_per_100": 1.0}
                      for m in ("crforge", "median5")},
          "inpaint_noise_floor": {"all": 0.0123, "extragalactic": 0.0065}}
    text = "\n".join(_card_inpaint(ev))
    assert "Against the noiseless pixels" in text and "| noise floor | 0.0123 | 0.0065 |" in text
    assert "| **crforge (this model)** | 0.25 | 0.002 | 0.75 | 0.015 |" in text
    del ev["inpaint_noise_floor"]
    for figs_ in ev["inpaint"].values():
        del figs_["mse_truth"]
    assert "noiseless" not in "\n".join(_card_inpaint(ev))  # a version-1 data set: observed only
