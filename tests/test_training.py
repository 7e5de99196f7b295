"""Tests of the trainer (training/): tiny schema-v1 HDF5 files written here, CPU only."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from crforge import cli
from crforge import config as cfgmod
from crforge.cli.runconfig import RunConfig
from crforge.pipeline.datafile.schema import META_DTYPE
from crforge.pipeline.datafile.writer import write_arrays
from crforge.training import checkpoint
from crforge.training.averaging import WeightAverage
from crforge.training.checkpoint import load_checkpoint
from crforge.training.config import AugmentConfig, ModelConfig, TrainConfig
from crforge.training.data import (
    EpochSampler,
    StampDataset,
    bright_peaks,
    brightened,
    cr_fringe,
    normalise,
    star_cores,
    wing_crs,
)
from crforge.training.metrics import rates_at_threshold, threshold_at_fpr, tpr_at_fpr
from crforge.training.models import InpaintNet, MaskNet, UNet, build_model
from crforge.training.train import (
    batch_loss,
    evaluate,
    inpaint_loss,
    lr_factor,
    main,
    mask_loss,
    train_one_epoch,
)

S = 64
FIELD_TYPES = ("extragalactic", "globular_cluster", "resolved_galaxy")


# other jobs share this machine: every test on one core (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _stamps(n: int, rng: np.random.Generator, sky: float = 40.0) -> dict:
    """Sky + noise + a few stars + CR hits and tracks; a bad column and a hot pixel ignored."""
    yy, xx = np.mgrid[:S, :S]
    image = np.empty((n, S, S), np.float32)
    cr = np.zeros((n, S, S), np.uint8)
    ignore = np.zeros((n, S, S), np.uint8)
    noiseless = np.empty((n, S, S), np.float32)
    for i in range(n):
        img = sky + rng.normal(0, np.sqrt(sky), (S, S))
        clean = np.full((S, S), sky)
        for _ in range(3):  # stars: smooth, unlike CRs
            y, x, f = rng.uniform(5, S - 5), rng.uniform(5, S - 5), rng.uniform(500, 5000)
            star = f / (2 * np.pi * 1.5 ** 2) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5 ** 2))
            img += star
            clean += star
        noiseless[i] = clean
        for _ in range(int(rng.integers(4, 9))):  # CRs: sharp, a pixel or a short track
            y, x = rng.integers(2, S - 2, 2)
            length = int(rng.integers(1, 4))
            dy, dx = rng.integers(-1, 2, 2)
            for t in range(length):
                py, px = y + t * dy, x + t * dx
                img[py, px] += rng.uniform(300, 2000)
                cr[i, py, px] = 1
        col = int(rng.integers(0, S))
        ignore[i, :, col] = 1  # bad column
        hy, hx = rng.integers(0, S, 2)
        ignore[i, hy, hx] = 1
        img[hy, hx] += 5000.0  # a hot pixel: looks like a CR, carries no label
        image[i] = img
    return {"image": image, "cr": cr, "ignore": ignore, "noiseless": noiseless}


def write_h5(path: Path, n_train: int = 12, n_val: int = 4, seed: int = 0, edit=None,
             noiseless: bool = False) -> Path:
    """A valid training set of ``S x S`` stamps (the real writer); ``edit(split, arrays)`` may change arrays.

    With ``noiseless``, a simulated set of schema v2 (``truth`` and ``noiseless``).
    """
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", 0)):
        arrays = _stamps(n, rng)
        if noiseless:
            arrays["truth"] = arrays["cr"].copy()
        else:
            del arrays["noiseless"]
        if edit is not None:
            edit(split, arrays)
        meta = np.zeros(n, META_DTYPE)
        meta["sky"] = 40.0
        meta["exptime"] = 500.0
        meta["field_type"] = [FIELD_TYPES[i % 3] for i in range(n)]
        meta["cr_fraction"] = arrays["cr"].reshape(n, -1).mean(1) if n else []
        splits[split] = {**arrays, "meta": meta}
    return write_arrays(path, splits, manifest_name="tiny")


@pytest.fixture
def h5file(tmp_path) -> Path:
    return write_h5(tmp_path / "tiny.h5")


#: The stamps as stored: no default of the data set's own (TrainConfig.data_options gives a run's)
AS_STORED = {"norm_scale": 100.0, "fill_ignored": True, "keep_sky": False}


def _dataset(path, split, kind="mask", augment=None, seed=0, **kw) -> StampDataset:
    return StampDataset(path, split, kind, augment, seed, **{**AS_STORED, **kw})


def tiny_cfg(kind: str = "mask", **kw) -> TrainConfig:
    cfg = TrainConfig(kind=kind, model=ModelConfig(depth=2, width=4), epochs=2, batch_size=4,
                      lr=0.01, device="cpu", seed=3, bn_freeze_epoch=1, init_mask="")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _collate(ds, idx):
    return next(iter(DataLoader(ds, batch_size=len(idx), sampler=idx)))


# --------------------------------------------------------------------------- data


def test_the_test_file_is_a_valid_training_set(h5file):
    from crforge.pipeline.datafile.validate import validate

    assert validate(h5file) == []


def test_dataset_items_shapes_and_lazy_open(h5file):
    ds = _dataset(h5file, "train", "inpaint", AugmentConfig(), seed=1)
    assert ds._reader._h5 is None  # nothing open after construction (safe to fork)
    assert len(ds) == 12 and ds.stamp_size == S
    item = ds[0]
    for name in ("image", "cr", "weight", "mask", "loss_mask"):
        assert item[name].shape == (1, S, S) and item[name].dtype == torch.float32
    assert set(np.unique(item["weight"])) <= {0.0, 1.0}
    assert item["weight"].min() == 0  # the bad column
    assert item["mask"].sum() > 0


def test_items_depend_only_on_seed_epoch_index(h5file):
    a = _dataset(h5file, "train", "inpaint", AugmentConfig(), seed=5)
    b = _dataset(h5file, "train", "inpaint", AugmentConfig(), seed=5)
    _ = b[3], b[7]  # other reads first must not matter
    for k in ("image", "mask", "loss_mask"):
        assert torch.equal(a[5][k], b[5][k])
    a.set_epoch(1)
    assert not torch.equal(a[5]["image"], b[5]["image"])
    s1, s2 = EpochSampler(12, seed=5), EpochSampler(12, seed=5)
    assert list(s1) == list(s2) and sorted(s1) == list(range(12))
    s2.set_epoch(1)
    assert list(s1) != list(s2)


def test_workers_give_the_same_batches(h5file):
    ds = _dataset(h5file, "train", "mask", AugmentConfig(), seed=2)
    kw = {"batch_size": 4, "sampler": EpochSampler(len(ds), 2)}
    b0 = list(DataLoader(ds, num_workers=0, **kw))
    b2 = list(DataLoader(ds, num_workers=2, **kw))
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(b0, b2))


def test_sky_augmentation_and_normalisation(h5file):
    plain = _dataset(h5file, "val", "mask", None, seed=0, norm_scale=100.0)
    aug = AugmentConfig(sky_range=(2.0, 2.0), flip=False, rot90=False)
    bright = _dataset(h5file, "val", "mask", aug, seed=0, norm_scale=100.0)
    x0, x1 = plain[0]["image"][0].numpy(), bright[0]["image"][0].numpy()
    with h5py.File(h5file) as h5:
        raw = h5["val/image"][0]
    ok = plain[0]["weight"][0].numpy() > 0
    np.testing.assert_allclose(x0[ok], normalise(raw, 40.0, 100.0)[ok], rtol=1e-6)
    d = (x1 - x0)[ok]
    assert abs(d.mean() - 2 * 40.0 / 100.0) < 0.01  # + f * sky
    assert abs(d.std() - np.sqrt(2 * 40.0) / 100.0) < 0.01  # noise of variance f * sky
    with pytest.raises(ValueError, match="sky_range"):
        AugmentConfig(sky_range=(3.0, 1.0)).validate()


# --------------------------------------------------------------------------- losses


def test_mask_loss_falls_over_a_few_steps(h5file):
    torch.manual_seed(0)
    ds = _dataset(h5file, "train", "mask", None, seed=0)
    batch = _collate(ds, list(range(8)))
    model = build_model("mask", 2, 8)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = batch_loss(model, batch, "mask")
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def _grads(model, batch, kind):
    model.zero_grad()
    batch_loss(model, batch, kind).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("kind", ["mask", "inpaint"])
def test_ignored_pixels_do_not_change_the_gradient(tmp_path, kind):
    def scramble(split, arrays):
        r = np.random.default_rng(99)
        ign = arrays["ignore"] != 0
        arrays["image"][ign] = r.uniform(-1e4, 1e5, ign.sum())
        arrays["image"][ign & (r.random(arrays["image"].shape) < 0.1)] = np.nan
        arrays["cr"][ign] = r.integers(0, 2, ign.sum())

    a = write_h5(tmp_path / "a.h5")
    b = write_h5(tmp_path / "b.h5", edit=scramble)
    with h5py.File(a) as fa, h5py.File(b) as fb:  # the files do differ under the ignore mask
        assert not np.array_equal(fa["train/cr"][()], fb["train/cr"][()])
    grads = []
    for path in (a, b):
        ds = _dataset(path, "train", kind, AugmentConfig(), seed=4)
        torch.manual_seed(0)
        model = build_model(kind, 2, 4)
        grads.append(_grads(model, _collate(ds, [0, 1, 2, 3]), kind))
    assert all(torch.equal(x, y) for x, y in zip(*grads))


def test_the_mask_network_sees_ignored_pixels_as_they_are_by_default(h5file):
    from crforge.training.train import _loaders

    with h5py.File(h5file) as f:
        image, ignore = f["train/image"][0], f["train/ignore"][0] != 0
    hot = ignore & (image > 2000)  # the ignored hot pixel of every stamp (5000 e- above the sky)
    assert hot.sum() == 1
    for kind, filled in (("mask", False), ("inpaint", True)):
        cfg = replace(tiny_cfg(kind), augment=AugmentConfig(sky_range=(0.0, 0.0), flip=False, rot90=False))
        assert cfg.for_kind(kind).fills_ignored() is filled
        ds = _loaders(cfg.for_kind(kind), h5file, torch.device("cpu"))[0].dataset
        x = ds[0]["image"][0].numpy()
        assert ds.normalisation["fill_ignored"] is filled
        if filled:  # the sky: 0 once it is subtracted (the inpaint network's input)
            assert x[hot][0] == 0.0
        else:  # the pixel as recorded, over the scale (the mask network keeps the sky)
            assert x[hot][0] == pytest.approx(image[hot][0] / 100.0)


def test_mask_loss_ignores_labels_and_logits_under_weight_zero():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    target = (torch.rand(2, 1, 8, 8, generator=g) < 0.2).float()
    weight = (torch.rand(2, 1, 8, 8, generator=g) < 0.7).float()
    l2, t2 = logits.clone(), target.clone()
    off = weight == 0
    l2[off] = 50.0 * torch.randn(int(off.sum()), generator=g)
    t2[off] = float("nan")
    a = logits.clone().requires_grad_()
    b = l2.clone().requires_grad_()
    la, lb = mask_loss(a, target, weight), mask_loss(b, t2, weight)
    la.backward()
    lb.backward()
    assert torch.equal(la, lb)
    assert torch.equal(a.grad[~off], b.grad[~off]) and not b.grad[off].any()


def test_inpaint_loss_excludes_the_stamps_own_crs(h5file):
    ds = _dataset(h5file, "train", "inpaint", AugmentConfig(), seed=1)
    batch = _collate(ds, [0, 1, 2, 3])
    own, lm, mask = batch["cr"] > 0, batch["loss_mask"] > 0, batch["mask"] > 0
    assert own.any() and lm.any()
    assert not (lm & own).any() and not (lm & (batch["weight"] == 0)).any()
    assert torch.equal(lm, mask & ~own & (batch["weight"] > 0))  # deepCR eq. 2
    # changing prediction and target at the stamp's own CR pixels changes nothing
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(batch["image"].shape, generator=g)
    p2, t2 = pred.clone(), batch["image"].clone()
    p2[own] = 1e6
    t2[own] = -1e6
    a, b = pred.clone().requires_grad_(), p2.clone().requires_grad_()
    la, lb = inpaint_loss(a, batch["image"], batch["loss_mask"]), inpaint_loss(b, t2, batch["loss_mask"])
    la.backward()
    lb.backward()
    assert torch.equal(la, lb) and torch.equal(a.grad, b.grad)
    # ... and through the network: its input hides own CRs, the loss leaves them out
    torch.manual_seed(0)
    model = build_model("inpaint", 2, 4)
    batch2 = dict(batch, image=torch.where(own, torch.full_like(batch["image"], 123.0), batch["image"]))
    assert all(torch.equal(x, y) for x, y in zip(_grads(model, batch, "inpaint"),
                                                  _grads(model, batch2, "inpaint")))


# --------------------------------------------------------------------------- models


def test_models_shapes_and_paper_sizes():
    x = torch.zeros(2, 1, 32, 32)
    for depth, width in ((2, 4), (2, 32), (3, 32)):
        m = build_model("mask", depth, width).eval()
        assert m(x).shape == (2, 1, 32, 32)
        p = m.predict(x)
        assert p.min() >= 0 and p.max() <= 1
    inp = InpaintNet(2, 4).eval()
    assert inp(x, x).shape == (2, 1, 32, 32)
    assert isinstance(build_model("inpaint", 2, 4), InpaintNet) and isinstance(MaskNet(), MaskNet)
    with pytest.raises(ValueError, match="kind"):
        build_model("clean", 2, 4)
    with pytest.raises(ValueError, match="multiples of 4"):
        UNet(1, 1, depth=3, width=4)(torch.zeros(1, 1, 30, 30))
    with pytest.raises(TypeError, match="width"):
        UNet(1, 1, depth=2, width=4.0)


# --------------------------------------------------------------------------- metrics


def test_tpr_at_fpr_hand_built_cases():
    # 10 negatives, 4 positives; fpr 0.1 allows one negative above the threshold
    neg = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    pos = np.array([0.95, 0.85, 0.75, 0.05])
    scores, labels = np.r_[neg, pos], np.r_[np.zeros(10), np.ones(4)]
    assert threshold_at_fpr(scores, labels, 0.1) == 0.8
    assert tpr_at_fpr(scores, labels, 0.1) == 0.5  # 0.95 and 0.85 are above 0.8
    assert tpr_at_fpr(scores, labels, 0.0) == 0.25  # above every negative: 0.95 only
    assert tpr_at_fpr(scores, labels, 0.35) == 0.75  # threshold 0.6
    assert tpr_at_fpr(scores, labels, 1.0) == 1.0
    # perfect separation; ties at the threshold are negative calls
    assert tpr_at_fpr([0.9, 0.8, 0.1, 0.1], [1, 1, 0, 0], 0.005) == 1.0
    assert tpr_at_fpr([0.5, 0.5, 0.5, 0.5], [1, 1, 0, 0], 0.5) == 0.0
    # the achieved rate never exceeds the requested one; 0.5% of 1000 is 5 negatives
    r = np.random.default_rng(0)
    s, lab = r.random(2000), np.r_[np.zeros(1000), np.ones(1000)]
    t = threshold_at_fpr(s, lab, 0.005)
    assert rates_at_threshold(s, lab, t)[1] == 0.005
    assert np.isnan(tpr_at_fpr([0.1, 0.2], [0, 0], 0.1))
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr([0.1], [1], 1.5)
    with pytest.raises(ValueError, match="scores and labels"):
        tpr_at_fpr([0.1, 0.2], [1], 0.1)


# --------------------------------------------------------------------------- the loop


def test_train_one_epoch_and_evaluate(h5file):
    torch.manual_seed(0)
    cfg = tiny_cfg(epochs=1)
    ds = _dataset(h5file, "train", "mask", cfg.augment, seed=0)
    loader = DataLoader(ds, batch_size=4, sampler=EpochSampler(len(ds), 0))
    model = build_model("mask", 2, 4)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    tr = train_one_epoch(model, loader, opt, scaler, "cpu", 0, cfg)
    assert tr["steps"] == 3 and tr["stamps"] == 12 and np.isfinite(tr["train_loss"])
    val = _dataset(h5file, "val", "mask", None, seed=0)
    ev = evaluate(model, DataLoader(val, batch_size=4), "cpu", "mask", fpr=0.005)
    assert set(ev["by_field_type"]) == set(FIELD_TYPES) and 0 <= ev["tpr_at_fpr"] <= 1
    assert ev["val_stamps"] == 4 and np.isfinite(ev["val_loss"])


def _constant_teacher(path: Path, p: float, keep_sky: bool = True, fill_ignored: bool = False) -> Path:
    """A mask model that gives every pixel the probability ``p``."""
    net = build_model("mask", 2, 4)
    with torch.no_grad():
        net.unet.outc.weight.zero_()
        net.unet.outc.bias.fill_(float(np.log(p / (1 - p))))
    return checkpoint.write_weights(path, checkpoint.Checkpoint(
        kind="mask", model_config={"depth": 2, "width": 4, "batch_norm": True, "bn_momentum": 0.1},
        state_dict=net.state_dict(),
        normalisation={"scale": 100.0, "bunit": "ELECTRONS", "fill_ignored": fill_ignored,
                       "keep_sky": keep_sky}))


def test_a_teacher_pulls_the_mask_network_towards_its_probabilities(h5file, tmp_path):
    """train.teacher_mask: the targets blend the labels (CRs: about 1% of the pixels)
    with the teacher's probabilities (here 0.7 everywhere), by train.teacher_weight."""
    from crforge.training.train import _distilled, _teacher

    teacher = _constant_teacher(tmp_path / "teacher.pt", 0.7)
    val = _collate(_dataset(h5file, "val", "mask", None, seed=0), range(4))
    net = _teacher(tiny_cfg(teacher_mask=str(teacher)), torch.device("cpu"))
    blended = _distilled(val, net, 0.25, 1)["cr"]
    assert torch.allclose(blended, 0.75 * val["cr"].float() + 0.25 * 0.7)
    mean_p, losses = {}, {}
    for w in (0.0, 1.0):
        # 9 steps: lr 0.1 so that the output can move far from the CR prior of 1%
        cfg = tiny_cfg(epochs=3, lr=0.1, teacher_mask=str(teacher), teacher_weight=w, bn_freeze_epoch=0)
        main(cfg, h5file, tmp_path / f"w{w}")
        losses[w] = [json.loads(line)["train_loss"] for line in open(tmp_path / f"w{w}" / "metrics.jsonl")]
        with torch.no_grad():
            mean_p[w] = float(load_checkpoint(tmp_path / f"w{w}" / "last.pt")[0].predict(val["image"]).mean())
    # measured: 0.038 against 0.0089; the loss against the teacher falls every epoch (3.09, 2.56, 2.16)
    assert mean_p[1.0] > 3 * mean_p[0.0], mean_p
    assert losses[1.0][0] > 2.5 and np.all(np.diff(losses[1.0]) < -0.2), losses
    # a teacher fed another normalisation is refused, naming the setting
    other = _constant_teacher(tmp_path / "sky.pt", 0.7, keep_sky=False)
    with pytest.raises(ValueError, match="train.teacher_mask"):
        main(tiny_cfg(teacher_mask=str(other)), h5file, tmp_path / "bad")
    # and one that saw ignored pixels as the sky, where this run sees them as they are
    filled = _constant_teacher(tmp_path / "filled.pt", 0.7, fill_ignored=True)
    with pytest.raises(ValueError, match="train.fill_ignored"):
        main(tiny_cfg(teacher_mask=str(filled)), h5file, tmp_path / "bad2")
    assert _teacher(tiny_cfg(teacher_mask=str(filled), fill_ignored=True), torch.device("cpu")) is not None
    # deepCR's published model is held to the same rule: it takes the image with its sky,
    # flagged pixels as they are (the default run's input), and nothing else
    assert _teacher(tiny_cfg(teacher_mask="deepcr:ACS-WFC"), torch.device("cpu")) is not None
    with pytest.raises(ValueError, match="keep_sky"):
        _teacher(tiny_cfg(teacher_mask="deepcr:ACS-WFC", keep_sky=False), torch.device("cpu"))
    with pytest.raises(ValueError, match="teacher_weight"):
        tiny_cfg(teacher_weight=1.5).validate()


def test_a_teacher_of_several_views_teaches_their_mean(h5file, tmp_path):
    """train.teacher_views: the teacher's probability is the mean over its symmetric
    views, so the targets of a turned stamp are the turned targets, which one view of a
    trained (not exactly symmetric) network does not give."""
    from crforge.training.train import _distilled, _teacher

    torch.manual_seed(3)
    net = MaskNet(depth=2, width=4, batch_norm=True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))  # a network far from any symmetry
    teacher = checkpoint.write_weights(tmp_path / "teacher.pt", checkpoint.Checkpoint(
        kind="mask", model_config={"depth": 2, "width": 4, "batch_norm": True, "bn_momentum": 0.1},
        state_dict=net.state_dict(),
        normalisation={"scale": 100.0, "bunit": "ELECTRONS", "fill_ignored": False, "keep_sky": True}))
    val = _collate(_dataset(h5file, "val", "mask", None, seed=0), range(2))
    turned = {**val, "image": torch.rot90(val["image"], 1, (-2, -1)), "cr": torch.rot90(val["cr"], 1, (-2, -1))}
    t = _teacher(tiny_cfg(teacher_mask=str(teacher)), torch.device("cpu"))
    gap = {}
    for views in (1, 8):
        a = torch.rot90(_distilled(val, t, 1.0, views)["cr"], 1, (-2, -1))
        b = _distilled(turned, t, 1.0, views)["cr"]
        gap[views] = float((a - b).abs().max())
    assert gap[8] < 1e-5 and gap[1] > 1e-3, gap
    # the blend is the same with the mean of the views as p
    with torch.no_grad():
        p8 = t.predict(val["image"], views=8)
    assert torch.allclose(_distilled(val, t, 0.25, 8)["cr"], 0.75 * val["cr"].float() + 0.25 * p8, atol=1e-6)
    with pytest.raises(ValueError, match="train.teacher_views"):
        tiny_cfg(teacher_views=3).validate()


def test_lr_schedule():
    cfg = tiny_cfg(epochs=5, schedule="step", step_epochs=2, gamma=0.5, bn_freeze_epoch=4,
                   bn_freeze_lr_factor=0.4)
    assert [lr_factor(e, cfg) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25 * 0.4]
    cfg = tiny_cfg(epochs=3, schedule="cosine", min_lr_factor=0.1, bn_freeze_epoch=0)
    assert lr_factor(0, cfg) == 1 and lr_factor(2, cfg) == pytest.approx(0.1)


@pytest.mark.parametrize("kind", ["mask", "inpaint"])
def test_resumed_run_ends_with_the_same_weights(h5file, tmp_path, kind):
    cfg = tiny_cfg(kind)
    full = main(cfg, h5file, tmp_path / "full")
    part = main(cfg, h5file, tmp_path / "part", stop_after=1)
    assert part["epochs_done"] == 1
    with pytest.raises(ValueError, match="already holds a run"):
        main(cfg, h5file, tmp_path / "part")
    with pytest.raises(ValueError, match="lr"):
        main(tiny_cfg(kind, lr=0.02), h5file, tmp_path / "part", resume=True)
    resumed = main(cfg, h5file, tmp_path / "part", resume=True)
    assert resumed["epochs_done"] == 2 and resumed["step"] == full["step"] == 6
    ca = checkpoint.read(tmp_path / "full" / "last.pt", expect="train")
    cb = checkpoint.read(tmp_path / "part" / "last.pt", expect="train")
    a, b = ca.state_dict, cb.state_dict
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if kind == "inpaint":  # the model is the weights' running average; the trained ones resume too
        ta, tb = ca.training.trained, cb.training.trained
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
        assert not all(torch.equal(ta[k], a[k]) for k in a if a[k].is_floating_point())
    else:
        assert ca.training.trained is None
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert lines[-1]["val_loss"] == full["history"][-1]["val_loss"]
    run = tmp_path / "full"
    assert (run / "best.pt").exists() and "epoch 2/2" in (run / "train.log").read_text()
    assert cfgmod.load(RunConfig, run / "config.toml").train == cfg


def test_weight_average_follows_the_trained_weights():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    avg = WeightAverage(net, 0.9)
    w0 = net[0].weight.detach().clone()
    decays = []
    for _ in range(200):
        with torch.no_grad():
            net[0].weight.add_(1.0)
            net[1].num_batches_tracked.add_(1)
        n = avg.updates
        decays.append(min(0.9, (1 + n) / (10 + n)))
        avg.update(net)
    # the average, computed by hand: a_k = d_k a_{k-1} + (1 - d_k) w_k, with w_k = w0 + k
    expect = w0.clone()
    for k, d in enumerate(decays, start=1):
        expect = d * expect + (1 - d) * (w0 + k)
    assert torch.allclose(avg.model[0].weight, expect, atol=1e-5)
    # once warmed up (80 updates) it lags weights that move 1 per step by decay / (1 - decay) = 9
    lag = float((net[0].weight - avg.model[0].weight).detach().mean())
    assert 8.9 < lag < 9.1 and decays[0] == pytest.approx(0.1) and decays[-1] == 0.9
    assert int(avg.model[1].num_batches_tracked) == 200  # integer buffers are copied
    assert not avg.model[0].weight.requires_grad
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(net, 1.0)


def test_inpaint_best_epoch_is_chosen_on_the_error_relative_to_the_base_fill(h5file, tmp_path):
    run = main(tiny_cfg("inpaint", epochs=3), h5file, tmp_path / "r")
    for h in run["history"]:
        by = h["by_field_type"]
        ratios = [by[ft]["mse"] / by[ft]["base_mse"] for ft in FIELD_TYPES]
        assert h["val_score"] == pytest.approx(float(np.exp(np.mean(np.log(ratios)))), rel=1e-9)
    scores = [h["val_score"] for h in run["history"]]
    assert run["best_epoch"] == 1 + int(np.argmin(scores))
    # the untrained network is its base fill: the ratios start near 1
    net = build_model("inpaint", 2, 4)
    val = _dataset(h5file, "val", "inpaint", None, seed=0)
    ev = evaluate(net.eval(), DataLoader(val, batch_size=4), "cpu", "inpaint", fpr=0.005)
    assert ev["val_score"] == pytest.approx(1.0, abs=1e-6)


def test_load_checkpoint_rebuilds_the_model_alone(h5file, tmp_path):
    cfg = tiny_cfg("mask", epochs=1, model=ModelConfig(depth=3, width=4), norm_scale=50.0)
    main(cfg, h5file, tmp_path / "run")
    (tmp_path / "run" / "config.toml").unlink()  # the checkpoint must be enough
    model, ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert isinstance(model, MaskNet) and not model.training
    assert ckpt.normalisation["scale"] == 50.0 and ckpt.model_config["depth"] == 3
    ref = build_model("mask", 3, 4)
    ref.load_state_dict(ckpt.state_dict)
    ref.eval()
    x = torch.randn(2, 1, S, S, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model(x), ref(x))
    # a second load gives the same outputs (nothing random in the rebuild)
    assert torch.equal(load_checkpoint(tmp_path / "run" / "best.pt")[0](x), model(x))
    with pytest.raises(ValueError, match="not a"):
        (tmp_path / "junk.pt").write_bytes(b"nope")
        load_checkpoint(tmp_path / "junk.pt")


def test_an_asinh_stretched_mask_network_is_rebuilt_with_its_stretch(h5file, tmp_path, capsys):
    cfg = tiny_cfg("mask", epochs=1, model=ModelConfig(depth=2, width=4, stretch="asinh"))
    main(cfg, h5file, tmp_path / "run")
    model, ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert model.stretch == "asinh" and ckpt.model_config["stretch"] == "asinh"
    # the stretched network is the linear one with the same weights, given asinh of the image
    linear = build_model("mask", 2, 4)
    linear.load_state_dict(ckpt.state_dict)
    linear.eval()
    x = 30 * torch.randn(2, 1, S, S, generator=torch.Generator().manual_seed(2))
    assert torch.equal(model(x), linear(torch.asinh(x)))
    assert (model(x) - linear(x)).abs().max() > 1e-3
    # a checkpoint written before the stretch existed is linear
    obj = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    del obj["model_config"]["stretch"]
    torch.save(obj, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")[0].stretch == "linear"
    rc = cli.main(["train", "--data", str(h5file), "--runs", str(tmp_path / "r"),
                   "--set", "train.model.stretch='log'"])
    assert rc == 2 and "model.stretch='log'" in capsys.readouterr().err


def test_unknown_config_key_is_refused(tmp_path, h5file, capsys):
    with pytest.raises(ValueError, match="train.lrr"):
        cfgmod.load(RunConfig, overrides=["train.lrr=0.1"])
    (tmp_path / "bad.toml").write_text("[train.model]\nwidht = 8\n")
    with pytest.raises(ValueError, match="train.model.widht"):
        cfgmod.load(RunConfig, tmp_path / "bad.toml")
    rc = cli.main(["train", "--data", str(h5file), "--runs", str(tmp_path / "r"),
                   "--set", "train.augment.skyrange=[0, 1]"])
    assert rc == 2 and "train.augment.skyrange" in capsys.readouterr().err
    with pytest.raises(ValueError, match="batch_size"):
        main(tiny_cfg(batch_size=0), h5file, tmp_path / "x")


def test_cli_trains_both_models(h5file, tmp_path, capsys):
    rc = cli.main(["train", "--data", str(h5file), "--runs", str(tmp_path / "runs"), "--name", "t",
                   "--set", "train.epochs=1", "--set", "train.inpaint_epochs=2", "--set", "train.model.width=4",
                   "--set", "train.batch_size=4", "--set", "train.device='cpu'", "--set", "train.init_mask=''"])
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "mask model:" in out and "TPR at 0.5% FPR" in out and "extragalactic" in out
    assert "inpaint model:" in out and "MSE by field type" in out
    for kind, epochs in (("mask", 1), ("inpaint", 2)):  # train.epochs, train.inpaint_epochs
        run = tmp_path / "runs" / "t" / kind
        assert {"best.pt", "last.pt", "metrics.jsonl", "train.log", "config.toml"} <= {
            p.name for p in run.iterdir()}
        assert load_checkpoint(run / "best.pt")[1].kind == kind
        assert len((run / "metrics.jsonl").read_text().splitlines()) == epochs
    assert cli.main(["train", "--data", str(tmp_path / "missing.h5")]) == 2


def test_init_starts_from_a_checkpoint(h5file, tmp_path):
    main(tiny_cfg("mask", epochs=1), h5file, tmp_path / "a")
    src = checkpoint.read(tmp_path / "a" / "best.pt").state_dict
    cfg = tiny_cfg("mask", epochs=1, lr=1e-12, bn_freeze_epoch=0)
    main(cfg, h5file, tmp_path / "b", init=tmp_path / "a" / "best.pt")
    got = checkpoint.read(tmp_path / "b" / "last.pt").state_dict
    # a negligible rate: the conv weights stay (to float precision) those of the source
    assert torch.allclose(got["unet.outc.weight"], src["unet.outc.weight"], atol=1e-6)
    assert "initialised from" in (tmp_path / "b" / "train.log").read_text()
    with pytest.raises(ValueError, match="cannot start"):
        main(tiny_cfg("inpaint"), h5file, tmp_path / "c", init=tmp_path / "a" / "best.pt")
    # a zoo weights file starts a run too; as last.pt it cannot be resumed from
    checkpoint.write_weights(tmp_path / "a.pt", checkpoint.read(tmp_path / "a" / "best.pt"))
    main(cfg, h5file, tmp_path / "w", init=tmp_path / "a.pt")
    got = checkpoint.read(tmp_path / "w" / "last.pt").state_dict
    assert torch.allclose(got["unet.outc.weight"], src["unet.outc.weight"], atol=1e-6)
    (tmp_path / "d").mkdir()
    checkpoint.write_weights(tmp_path / "d" / "last.pt", checkpoint.read(tmp_path / "a" / "best.pt"))
    with pytest.raises(checkpoint.CheckpointError, match="zoo weights file"):
        main(cfg, h5file, tmp_path / "d", resume=True)


def test_training_does_not_import_the_zoo():
    """The packages depend one way: deepcr_models -> training, never back."""
    code = ("import sys, crforge.training.train, crforge.training.baselines, crforge.training.deepcr, "
            "crforge.training.checkpoint; "
            "sys.exit(any(m.startswith('crforge.deepcr_models') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_batch_norm_freeze_default_is_half_way_for_inpaint_only():
    assert TrainConfig(kind="inpaint", epochs=6).freeze_epoch() == 3
    assert TrainConfig(kind="mask", epochs=6).freeze_epoch() == 0
    assert TrainConfig(kind="inpaint", epochs=6, bn_freeze_epoch=0).freeze_epoch() == 0
    assert TrainConfig(kind="mask", epochs=6, bn_freeze_epoch=2).freeze_epoch() == 2
    no_bn = TrainConfig(kind="inpaint", epochs=6, model=ModelConfig(batch_norm=False))
    assert no_bn.freeze_epoch() == 0
    with pytest.raises(ValueError, match="bn_freeze_epoch=-2"):
        TrainConfig(bn_freeze_epoch=-2).validate()


def test_network_input_subtracts_or_keeps_the_sky():
    from crforge.training.data import network_input, normalisation_info

    img = np.full((4, 4), 150.0, np.float32)
    img[1, 1] = 1150.0
    ign = np.zeros((4, 4), bool)
    ign[0, 0] = True
    sub = network_input(img, 100.0, normalisation_info(100.0, True), ign)
    keep = network_input(img, 100.0, normalisation_info(100.0, True, keep_sky=True), ign)
    assert sub[1, 1] == pytest.approx(10.5) and sub[2, 2] == pytest.approx(0.5) and sub[0, 0] == 0.0
    # with the sky kept the network sees the absolute level; an ignored pixel reads as the sky
    assert keep[1, 1] == pytest.approx(11.5) and keep[2, 2] == pytest.approx(1.5) and keep[0, 0] == 1.0
    assert normalisation_info(100.0, True, keep_sky=True)["scheme"] == "image / scale"


def test_keep_sky_items_and_runs(h5file, tmp_path):
    """``train.keep_sky``: the mask network's items carry the sky, and the checkpoint says so."""
    plain = _dataset(h5file, "val", "mask", None, seed=0)
    kept = _dataset(h5file, "val", "mask", None, seed=0, keep_sky=True)
    a, b = plain[0]["image"], kept[0]["image"]
    assert torch.allclose(b - a, torch.full_like(a, 40.0 / 100.0), atol=1e-5)  # meta sky 40 e-
    res = main(tiny_cfg(keep_sky=True, epochs=1), h5file, tmp_path / "k")
    assert checkpoint.read(res["best"]).normalisation["keep_sky"] is True
    inp = main(tiny_cfg(kind="inpaint", keep_sky=True, epochs=1), h5file, tmp_path / "i")
    assert checkpoint.read(inp["best"]).normalisation["keep_sky"] is False  # mask networks only


def test_mask_target_truth_uses_the_injected_crs(tmp_path, h5file):
    """``train.target='truth'`` (simulated sets): positives are injected CRs >= the bin, fainter ones weigh 0."""
    rng = np.random.default_rng(5)
    splits = {}
    for split, n in (("train", 3), ("val", 2)):
        arrays = _stamps(n, rng)
        truth = np.zeros_like(arrays["cr"])
        truth[:, 5, 5], truth[:, 6, 6], truth[:, 7, 7] = 1, 2, 4
        meta = np.zeros(n, META_DTYPE)
        meta["field_type"] = FIELD_TYPES[0]
        splits[split] = {**arrays, "truth": truth, "meta": meta}
    path = write_arrays(tmp_path / "t.h5", splits)
    item = _dataset(path, "train", "mask", None, target="truth", truth_min_bin=2)[0]
    cr, weight = item["cr"][0], item["weight"][0]
    assert cr[6, 6] == 1 and cr[7, 7] == 1 and cr[5, 5] == 0 and cr.sum() == 2
    assert weight[5, 5] == 0 and weight[6, 6] == 1  # < 3 sigma charge: no label either way
    # labels-known: the labels are the CRs, the injected charge they leave out counts neither way
    labels = torch.from_numpy(splits["train"]["cr"][0].astype(np.float32))
    item = _dataset(path, "train", "mask", None, target="labels-known")[0]
    assert torch.equal(item["cr"][0], labels * (1 - torch.from_numpy(splits["train"]["ignore"][0].astype(np.float32))))
    missed = (torch.from_numpy(truth[0]) > 0) & (labels == 0)
    assert missed.sum() >= 2 and (item["weight"][0][missed] == 0).all()
    assert (item["weight"][0][(labels > 0) & (torch.from_numpy(splits["train"]["ignore"][0]) == 0)] == 1).all()
    with pytest.raises(ValueError, match="no truth"):
        _dataset(h5file, "train", "mask", None, target="truth")


def test_cr_fringe_teaches_the_charge_next_to_a_labelled_cr_at_its_own_probability(tmp_path, h5file):
    """``train.cr_fringe``: the injected charge touching a labelled CR becomes a soft target of weight 1."""
    cr = np.zeros((8, 8), bool)
    cr[3, 3] = cr[3, 4] = True
    charge = cr.copy()
    charge[2, 5] = charge[4, 2] = True    # touching the labelled hit (diagonally too)
    charge[3, 6] = True                   # two pixels out: not its fringe
    charge[7, 7] = True                   # a hit the labels missed: no fringe of any label
    fringe = cr_fringe(cr, charge)
    assert np.argwhere(fringe).tolist() == [[2, 5], [4, 2]]
    assert not cr_fringe(np.zeros_like(cr), charge).any()

    rng = np.random.default_rng(7)
    splits = {}
    for split, n in (("train", 2), ("val", 2)):
        arrays = _stamps(n, rng)
        arrays["cr"][:] = 0
        arrays["ignore"][:] = 0
        arrays["cr"][:, 10, 10] = 1
        truth = np.zeros_like(arrays["cr"])
        truth[:, 9:12, 9:12] = 1            # the hit's faint wings, left out by the labels
        truth[:, 10, 10] = 4
        truth[:, 30, 30] = 1                # faint charge away from any label
        arrays["ignore"][:, 11, 11] = 1     # an ignored wing pixel: no target, weight 0
        meta = np.zeros(n, META_DTYPE)
        meta["field_type"] = FIELD_TYPES[0]
        splits[split] = {**arrays, "truth": truth, "meta": meta}
    path = write_arrays(tmp_path / "f.h5", splits)
    plain = _dataset(path, "train", "mask", None)[0]
    item = _dataset(path, "train", "mask", None, cr_fringe=0.3)[0]
    t, w = item["cr"][0], item["weight"][0]
    assert t[10, 10] == 1 and t[9, 9] == pytest.approx(0.3) and t[9, 11] == pytest.approx(0.3)
    assert t[11, 11] == 0 and w[11, 11] == 0 and t[30, 30] == 0
    assert float(t.sum()) == pytest.approx(1 + 7 * 0.3)
    assert torch.equal(plain["image"], item["image"]) and plain["cr"].sum() == 1
    # with labels-known the wings weigh 1 (they are taught), charge elsewhere still 0
    known = _dataset(path, "train", "mask", None, target="labels-known", cr_fringe=0.3)[0]
    assert torch.equal(known["cr"], item["cr"]) and known["weight"][0][9, 9] == 1 and known["weight"][0][30, 30] == 0
    # the inpaint network's items never carry it
    assert _dataset(path, "train", "inpaint", None, cr_fringe=0.3)[0]["cr"].sum() == 1
    # a file without truth (real data) has no fringe: its labels as they are
    real = _dataset(h5file, "train", "mask", None, cr_fringe=0.3)
    assert real.cr_fringe == 0 and torch.equal(real[0]["cr"], _dataset(h5file, "train", "mask", None)[0]["cr"])
    with pytest.raises(ValueError, match="cr_fringe"):
        _dataset(path, "train", "mask", None, cr_fringe=1.5)
    # the run validates against the labels: the fringe is not counted as a positive
    res = main(tiny_cfg(epochs=1, cr_fringe=0.3), path, tmp_path / "run")
    ck = checkpoint.read(res["best"])
    assert ck.training.config["cr_fringe"] == 0.3
    assert ck.training.metrics["by_field_type"][FIELD_TYPES[0]]["cr_pixels"] == 2  # one labelled pixel per val stamp
    with pytest.raises(ValueError, match="train.cr_fringe"):
        TrainConfig(cr_fringe=2.0).validate()


def test_wing_crs_moves_whole_crs_next_to_the_peaks():
    charge = np.zeros((40, 40), np.float32)
    charge[5, 5], charge[5, 6] = 900.0, 300.0  # a two-pixel CR, labelled
    charge[30, 30] = 50.0  # faint injected charge alone: never moved
    strong = charge >= 300
    peaks = np.array([20 * 40 + 20])
    for seed in range(20):
        added, landed = wing_crs(charge, strong, peaks, np.random.default_rng(seed))
        assert added.sum() == pytest.approx(1200.0) and landed.sum() == 2
        (y, x), = np.argwhere(added == 900.0)
        assert 1 <= max(abs(y - 20), abs(x - 20)) <= 3  # on the wing, never the core
        assert added[y, x + 1] == 300.0 and landed[y, x] and landed[y, x + 1]
    added, landed = wing_crs(charge, np.zeros_like(strong), peaks, np.random.default_rng(0))
    assert added.sum() == 0 and not landed.any()


def test_star_crs_adds_labelled_crs_beside_the_brightest_stars(tmp_path, h5file):
    def edit(split, arrays):
        arrays["truth"] = arrays["cr"] * 4  # every injected CR > 10 sigma

    path = write_h5(tmp_path / "sim.h5", noiseless=True, edit=edit)
    aug = AugmentConfig(sky_range=(0.0, 0.0), flip=False, rot90=False, star_crs=1.0)
    on = _dataset(path, "train", "mask", aug, seed=2)
    off = _dataset(path, "train", "mask", AugmentConfig(sky_range=(0.0, 0.0), flip=False, rot90=False),
                       seed=2)
    with h5py.File(path) as f:
        clean, ignore = f["train/noiseless"][:], f["train/ignore"][:]
    near = []
    for i in range(len(on)):
        a, b = on[i], off[i]
        new = ((a["cr"][0] > 0) & (b["cr"][0] == 0)).numpy()
        assert new.sum() >= 2 and not (new & (ignore[i] > 0)).any()
        assert (a["image"][0] - b["image"][0]).numpy()[new].min() > 1.0  # charge added where labelled
        py, px = np.unravel_index(bright_peaks(clean[i], ignore[i] == 0), clean[i].shape)
        ys, xs = np.nonzero(new)
        dist = np.max(np.abs(np.stack([ys[:, None] - py, xs[:, None] - px])), axis=0).min(axis=1)
        near.append(np.mean(dist <= 5))  # brightest pixel 1-3 from a peak, tracks up to 3 long
        # the stamp's own labels are kept
        assert torch.all(a["cr"] >= b["cr"])
    assert min(near) == 1.0
    with pytest.raises(ValueError, match="star_crs"):
        _dataset(h5file, "train", "mask", aug)


def test_brightened_scales_each_cr_by_one_factor_within_the_range():
    charge = np.zeros((30, 30), np.float32)
    charge[3, 3], charge[3, 4], charge[4, 5] = 500.0, 200.0, 100.0  # one 8-connected CR
    charge[20, 20] = 800.0  # another
    factors = []
    for seed in range(200):
        added = brightened(charge, np.random.default_rng(seed), 30.0)
        assert (added[charge == 0] == 0).all()
        f = 1 + added[charge > 0] / charge[charge > 0]
        assert np.allclose(f[:3], f[0], rtol=1e-5)  # the three pixels of the first CR together
        factors += [f[0], f[-1]]
    factors = np.log(factors) / np.log(30.0)
    assert factors.min() >= 0 and factors.max() <= 1 + 1e-6
    # log-uniform: as many factors below sqrt(30) as above
    assert 0.4 < np.mean(factors < 0.5) < 0.6


def test_cr_boost_brightens_the_stamps_own_crs_and_labels_what_stands_out(tmp_path, h5file):
    def edit(split, arrays):
        arrays["truth"] = arrays["cr"] * 4

    path = write_h5(tmp_path / "sim.h5", noiseless=True, edit=edit)
    plain = AugmentConfig(sky_range=(0.0, 0.0), flip=False, rot90=False)
    on = _dataset(path, "train", "mask", AugmentConfig(**{**vars(plain), "cr_boost": 1.0}), seed=1)
    off = _dataset(path, "train", "mask", plain, seed=1)
    with h5py.File(path) as f:
        truth, ignore = f["train/truth"][:], f["train/ignore"][:]
    gains = []
    for i in range(len(on)):
        a, b = on[i], off[i]
        diff = (a["image"][0] - b["image"][0]).numpy() * 100.0  # electrons (norm_scale 100)
        assert np.abs(diff[(truth[i] == 0) | (ignore[i] > 0)]).max() == 0  # only the stamp's own CRs
        crs = (truth[i] > 0) & (ignore[i] == 0)
        assert (diff[crs] >= -1e-3).all()
        gains.append(diff[crs].sum() / max(float(b["image"][0].numpy()[crs].sum()) * 100.0, 1.0))
        assert torch.all(a["cr"] >= b["cr"]) and (a["weight"][0] <= b["weight"][0] + 0).all()
    assert np.median(gains) > 1.0  # log-uniform 1-30: the median CR at least doubles
    with pytest.raises(ValueError, match="cr_boost"):
        _dataset(h5file, "train", "mask", AugmentConfig(cr_boost=0.5))
    with pytest.raises(ValueError, match="cr_boost_max"):
        AugmentConfig(cr_boost_max=1.0).validate()


def test_star_cores_are_the_3x3_around_each_significant_peak():
    signal = np.zeros((20, 20), np.float32)
    signal[5, 5], signal[5, 6] = 100.0, 40.0    # a star: its peak 10 sigma up and more
    signal[14, 14] = 9.0                         # a peak under 10 sigma: no core
    valid = np.ones_like(signal, bool)
    valid[4, 4] = False                          # an ignored pixel is no core pixel
    cores = star_cores(signal, np.ones_like(signal), valid)
    assert np.argwhere(cores).tolist() == [[y, x] for y in (4, 5, 6) for x in (4, 5, 6) if (y, x) != (4, 4)]
    assert star_cores(signal, np.ones_like(signal), valid, snr=5.0)[14, 14]


def test_star_weight_raises_the_loss_weight_of_star_cores_but_not_of_crs(tmp_path, h5file):
    """``train.star_weight``: a simulated star's 3x3 core weighs 1 + star_weight, its CR pixels 1."""
    def edit(split, arrays):
        arrays["truth"] = arrays["cr"].copy()
        arrays["noiseless"][:] = 40.0
        arrays["noiseless"][:, 10, 10] = 40.0 + 500.0   # one star of the noiseless pixels, 75 sigma
        arrays["noiseless"][:, 10, 11] = 40.0 + 200.0
        arrays["cr"][:] = 0
        arrays["cr"][:, 11, 11] = 1                      # a CR on its core
        arrays["ignore"][:] = 0
        arrays["ignore"][:, 9, 9] = 1

    path = write_h5(tmp_path / "sim.h5", noiseless=True, edit=edit)
    plain = _dataset(path, "train", "mask", None)[0]["weight"][0].numpy()
    w = _dataset(path, "train", "mask", None, star_weight=4.0)[0]["weight"][0].numpy()
    core = np.zeros_like(w, bool)
    core[9:12, 9:12] = True
    assert (w[core & (plain > 0)] != 1).sum() == 7                 # 9 less the ignored and the CR
    assert w[10, 10] == 5.0 and w[11, 11] == 1.0 and w[9, 9] == 0.0
    assert np.array_equal(w[~core], plain[~core]) and plain[core].max() == 1.0
    # the inpaint network's items do not carry it; a file without noiseless pixels is refused
    assert _dataset(path, "train", "inpaint", None, star_weight=4.0)[0]["weight"].max() == 1
    with pytest.raises(ValueError, match="train.star_weight"):
        _dataset(h5file, "train", "mask", None, star_weight=4.0)
    with pytest.raises(ValueError, match="train.star_weight"):
        TrainConfig(star_weight=-1.0).validate()
    assert TrainConfig(kind="inpaint", star_weight=4.0).data_options()["star_weight"] == 0.0


def test_an_inpaint_run_warns_that_train_epochs_is_the_mask_networks(capsys):
    from crforge.cli.train import _warn_mask_epochs

    _warn_mask_epochs(TrainConfig(epochs=30))
    err = capsys.readouterr().err
    assert "train.epochs=30 sets the mask network's epochs" in err and f"train.inpaint_epochs={TrainConfig().inpaint_epochs}" in err
    for quiet in (TrainConfig(), TrainConfig(epochs=30, inpaint_epochs=30)):
        _warn_mask_epochs(quiet)
        assert capsys.readouterr().err == ""
