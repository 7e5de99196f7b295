"""Distributed training: the real ``crforge train`` under the real ``torchrun``, two CPU ranks on gloo.

One process with a global batch of 8 and two processes with 4 stamps each must train the
same network: the same loss curve (within 1e-4 relative; floating-point sums are added
in another order), the same validation figures and nearly the same weights. A two-rank
run stopped after one epoch and resumed must end where the uninterrupted one ended.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import write_h5

from crforge.training import checkpoint
from crforge.training.data import EpochSampler
from crforge.training.distributed import World, local_batch_size, world_from_env

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "crforge.cli"]
ONE = [sys.executable, "-m", "crforge.cli"]
# bn_freeze_epoch=0: batch norm trains with batch statistics all along (the synchronised path)
SETTINGS = ["train.epochs=3", "train.batch_size=8", "train.stamps_per_epoch=0", "train.lr=0.01",
            "train.device='cpu'", "train.seed=5", "train.init_mask=''", "train.cpu_bf16='off'",
            "train.threads=1", "train.num_workers=0", "train.channels_last=false",
            "train.bn_freeze_epoch=0", "train.model.depth=2", "train.model.width=4", "train.val_stamps=0"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _train(cmd: list[str], data: Path, runs: Path, *extra: str, kind: str = "mask") -> subprocess.CompletedProcess:
    args = cmd + ["train", "--data", str(data), "--runs", str(runs), "--kind", kind, "--name", "r"]
    for s in SETTINGS:
        args += ["--set", s]
    proc = subprocess.run(args + list(extra), capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _curve(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 24 train stamps: 3 global batches of 8 per epoch, 12 stamps per rank
    return write_h5(tmp_path_factory.mktemp("ddp") / "tiny.h5", n_train=24, n_val=6, seed=4)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, cmd in (("one", ONE), ("two", TORCHRUN)):
        _train(cmd, data, root / name)
        out[name] = root / name / "r" / "mask"
    # two ranks, stopped after epoch 1 and resumed
    _train(TORCHRUN, data, root / "resumed", "--set", "train.epochs=1")
    _train(TORCHRUN, data, root / "resumed", "--resume")
    out["resumed"] = root / "resumed" / "r" / "mask"
    return out


def test_two_ranks_follow_the_loss_curve_of_one_process_with_the_same_global_batch(runs):
    one, two = _curve(runs["one"]), _curve(runs["two"])
    assert [r["epoch"] for r in one] == [r["epoch"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert a["stamps"] == b["stamps"] == 24 and a["steps"] == b["steps"] == 3
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    # the curve moved: equal curves are not equal because nothing happened
    assert one[-1]["train_loss"] < 0.9 * one[0]["train_loss"]


def test_two_ranks_end_with_the_weights_of_one_process(runs):
    a = checkpoint.read(runs["one"] / "last.pt").state_dict
    b = checkpoint.read(runs["two"] / "last.pt").state_dict
    assert a.keys() == b.keys()  # a plain network's keys: no "module." prefix, no SyncBatchNorm state
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-5), k


def test_rank_0_alone_writes_the_run_directory(runs):
    log = (runs["two"] / "train.log").read_text()
    assert log.count("new mask run") == 1 and log.count("epoch 3/3") == 1
    assert sorted(p.name for p in runs["two"].iterdir() if not p.name.startswith(".")) == \
        ["best.pt", "config.toml", "last.pt", "metrics.jsonl", "train.log"]


def test_a_resumed_two_rank_run_continues_exactly(runs):
    straight, resumed = _curve(runs["two"]), _curve(runs["resumed"])
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for a, b in zip(straight, resumed):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-6)


def test_two_ranks_train_the_inpaint_networks_weight_average_as_one_process(data, tmp_path):
    # the plain MSE: the default relative loss is a per-rank ratio (docs/training.md)
    extra = ["--set", "train.inpaint_loss='mse'", "--set", "train.inpaint_epochs=2"]
    for name, cmd in (("one", ONE), ("two", TORCHRUN)):
        _train(cmd, data, tmp_path / name, *extra, kind="inpaint")
    one, two = (checkpoint.read(tmp_path / n / "r" / "inpaint" / "last.pt") for n in ("one", "two"))
    for a, b in ((one.state_dict, two.state_dict), (one.training.trained, two.training.trained)):
        for k in a:
            assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-5), k
    # the served model is the average, not the trained weights
    assert not torch.allclose(two.state_dict["unet.outc.weight"], two.training.trained["unet.outc.weight"])


def test_the_sampler_deals_every_global_batch_out_among_the_ranks():
    whole = list(EpochSampler(23, seed=1, limit=0))
    shards = [list(EpochSampler(23, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(s) for s in shards] == [11, 11]  # the 23rd stamp is dropped: equal steps
    b = local_batch_size(8, World(rank=0, size=2))
    for k in range(3):
        local = shards[0][k * b:(k + 1) * b] + shards[1][k * b:(k + 1) * b]
        assert sorted(local) == sorted(whole[k * 8:(k + 1) * 8][:len(local)])


def test_a_global_batch_that_does_not_divide_among_the_ranks_is_refused():
    with pytest.raises(ValueError, match=r"train.batch_size=9: not a multiple of the 2 processes"):
        local_batch_size(9, World(rank=1, size=2))


def test_the_world_comes_from_torchruns_environment():
    assert world_from_env({}) == World(0, 1, 0)
    assert world_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == World(1, 2, 1)
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        world_from_env({"WORLD_SIZE": "two"})


def test_global_batch_norm_matches_batch_norm_over_the_whole_batch(tmp_path):
    """Two gloo ranks, half a batch each: outputs and input gradients of the whole batch."""
    script = tmp_path / "bn.py"
    script.write_text(_BN_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           "2", str(script), str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {r: np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)}
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
    w = torch.arange(4 * 3 * 25, dtype=torch.float32).reshape(4, 3, 5, 5) / 300
    (bn(x) * w).sum().backward()
    y = bn(x).detach()  # (a second training forward: running stats move, outputs do not)
    for r in (0, 1):
        np.testing.assert_allclose(got[r]["y"], y[2 * r:2 * r + 2].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[r]["gx"], x.grad[2 * r:2 * r + 2].numpy(), rtol=1e-4, atol=1e-5)
    # DDP averages parameter gradients over ranks: the two halves' mean x 2 is the whole's
    np.testing.assert_allclose(got[0]["gw"] + got[1]["gw"], bn.weight.grad.numpy(), rtol=1e-4, atol=1e-5)


_BN_SCRIPT = """
import sys, numpy as np, torch, torch.distributed as dist
from crforge.training.distributed import GlobalBatchNorm2d
dist.init_process_group("gloo")
r = dist.get_rank()
torch.manual_seed(0)
x = torch.randn(4, 3, 5, 5)[2 * r:2 * r + 2].clone().requires_grad_(True)
bn = GlobalBatchNorm2d(3)
with torch.no_grad():
    bn.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
w = (torch.arange(4 * 3 * 25, dtype=torch.float32).reshape(4, 3, 5, 5) / 300)[2 * r:2 * r + 2]
y = bn(x)
(y * w).sum().backward()
np.savez(sys.argv[1] + f"/rank{r}.npz", y=y.detach().numpy(), gx=x.grad.numpy(), gw=bn.weight.grad.numpy())
dist.destroy_process_group()
"""


def test_automatic_dataloader_workers(monkeypatch):
    """num_workers=-1: none on the CPU; on a GPU up to 8, the node's cores shared among its processes."""
    from crforge.training.config import TrainConfig

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert TrainConfig().workers(cpu) == 0
    assert TrainConfig(num_workers=3).workers(gpu) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert TrainConfig().workers(gpu) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 4 cores each: 3 workers and the training process
    assert TrainConfig().workers(gpu) == 3
    with pytest.raises(ValueError, match=r"train.num_workers=-2: expected >= 0, or -1 \(auto\)"):
        TrainConfig(num_workers=-2).validate()
