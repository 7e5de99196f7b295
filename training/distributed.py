"""Training on several processes with torch's DistributedDataParallel (launched by ``torchrun``).

``torchrun --nproc-per-node N --no-python crforge train ...`` starts N copies of
``crforge train``; each reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from its
environment (:func:`world_from_env`), joins one process group (NCCL on GPUs, gloo on
CPUs; :func:`init_process_group`) and trains its shard of every global batch. The rules
that make N processes train the same network as one process with the same global batch:

- **Batches.** ``train.batch_size`` is the *global* batch. The epoch's order
  (:class:`crforge.training.data.EpochSampler`, a function of seed and epoch only) is
  dealt out rank by rank (``order[rank::N]``, its ``rank`` and ``world_size``), so the local batches of a
  step are exactly the stamps of that step's global batch. Augmentation is drawn from
  (seed, epoch, stamp index), never from a process's random state, so a stamp looks the
  same whatever the number of processes.
- **Loss.** Each rank's loss is its sum over its pixels divided by the pixel count of the
  whole global batch (:func:`global_mean`); DDP's gradient averaging then gives the
  gradient of the global batch's mean loss, not a mean of per-rank means.
- **Batch norm.** Batch statistics are those of the global batch: ``nn.SyncBatchNorm`` on
  GPUs; on CPUs, where torch's SyncBatchNorm refuses to run, :class:`GlobalBatchNorm2d`,
  which all-reduces the sums it needs in the forward and backward passes.
- **Files.** Rank 0 alone holds the run directory's lock, validates, writes the log,
  the metrics and the checkpoints; the others wait at a barrier and resume from what rank
  0 decided.

What differs from one process: floating-point sums are added in another order (losses
agree to about 1e-5 relative; ``tests/test_distributed.py`` holds them within 1e-4), and
each epoch drops up to N-1 stamps so that every rank takes the same number of steps.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist
from torch import nn

from crforge.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["World", "world_from_env", "current", "init_process_group", "shutdown",
           "local_batch_size", "global_mean", "all_sum", "barrier", "sync_batchnorm",
           "GlobalBatchNorm2d", "unwrap", "wrap"]


@dataclass(frozen=True)
class World:
    """Where this process stands among the training processes.

    Parameters
    ----------
    rank : int
        This process (0 writes every file).
    size : int
        Number of processes.
    local_rank : int
        This process on its node (its GPU).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes files and logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.size > 1


def _env_int(env: Mapping[str, str], key: str, default: int) -> int:
    value = env.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {key}={value!r}: expected an integer") from None


def world_from_env(env: Mapping[str, str] | None = None) -> World:
    """The :class:`World` ``torchrun`` describes in the environment (one process without it).

    Raises
    ------
    InputError
        ``WORLD_SIZE``, ``RANK`` or ``LOCAL_RANK`` not integers, or inconsistent.
    """
    env = os.environ if env is None else env
    size = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local = _env_int(env, "LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size or local < 0:
        raise InputError(f"environment: RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local}: "
                         "expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return World(rank=rank, size=size, local_rank=local)


def current() -> World:
    """The world of the initialised process group (one process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(rank=dist.get_rank(), size=dist.get_world_size(),
                     local_rank=_env_int(os.environ, "LOCAL_RANK", dist.get_rank()))
    return World()


def init_process_group(world: World, *, device: str = "auto") -> str | None:
    """Join the process group of ``world`` (nothing for one process); the backend used.

    NCCL when the processes train on GPUs (``device`` ``cuda``, or ``auto`` with CUDA
    available), gloo otherwise. On GPUs each process takes the GPU ``LOCAL_RANK``.
    """
    if not world.active or dist.is_initialized():
        return None
    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if on_gpu else "gloo"
    if on_gpu:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend=backend)
    logger.info("rank %d of %d joined the %s process group", world.rank, world.size, backend)
    return backend


def shutdown(*, ok: bool = True) -> None:
    """Leave the process group, if any.

    The DDP wrappers of the run are freed first (they sit in reference cycles, and a
    gloo reducer destroyed later, while the interpreter shuts down, aborts the process:
    "terminate called without an active exception"). After a successful run (``ok``) the
    processes first meet at a barrier, so that none tears its connections down while
    another still uses them; after a failure they do not wait for each other (the
    others may be inside a collective that will never complete; torchrun stops them).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    import gc

    gc.collect()
    if ok:
        dist.barrier()
    dist.destroy_process_group()


def local_batch_size(global_batch: int, world: World) -> int:
    """Stamps per process and step for a global batch of ``global_batch``.

    Raises
    ------
    InputError
        The global batch does not divide evenly among the processes.
    """
    if global_batch % world.size:
        raise InputError(f"train.batch_size={global_batch}: not a multiple of the {world.size} "
                         "processes (the batch size is the global batch, split evenly among them)")
    return global_batch // world.size


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over the processes (``value`` itself for one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out


def global_mean(total: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of the global batch's mean loss, and that mean (detached).

    ``total`` and ``count`` are this rank's sum of loss terms and their weights. The
    returned loss, averaged over ranks by DDP's gradient all-reduce, has the gradient of
    ``sum(total) / sum(count)``.
    """
    world = current()
    if not world.active:
        mean = total / count.clamp_min(1.0)
        return mean, mean.detach()
    sums = all_sum(torch.stack([total.detach().float(), count.detach().float()]))
    denom = sums[1].clamp_min(1.0)
    return total * world.size / denom, sums[0] / denom


def barrier() -> None:
    """Wait for every process (nothing for one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _GlobalBatchNormFn(torch.autograd.Function):
    """Batch normalisation with statistics summed over every process (the autograd part)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = (0, 2, 3)
        n = torch.tensor([float(x.numel() // x.shape[1])], dtype=x.dtype)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), n])
        dist.all_reduce(stats)
        c = x.shape[1]
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c:2 * c] / count - mean * mean).clamp_min(0.0)
        invstd = torch.rsqrt(var + eps)
        xhat = (x - mean[None, :, None, None]) * invstd[None, :, None, None]
        ctx.save_for_backward(xhat, weight, invstd, count)
        return xhat * weight[None, :, None, None] + bias[None, :, None, None], mean, var, count

    @staticmethod
    def backward(ctx, grad_out, _gm, _gv, _gc):
        xhat, weight, invstd, count = ctx.saved_tensors
        dims = (0, 2, 3)
        c = xhat.shape[1]
        sums = torch.cat([grad_out.sum(dims), (grad_out * xhat).sum(dims)])
        g_bias, g_weight = sums[:c].clone(), sums[c:].clone()
        dist.all_reduce(sums)
        mean_dy, mean_dy_xhat = sums[:c] / count, sums[c:] / count
        grad_x = (grad_out - mean_dy[None, :, None, None] - xhat * mean_dy_xhat[None, :, None, None]) \
            * (weight * invstd)[None, :, None, None]
        # grad_x is the gradient of every rank's loss (the statistics couple them), and
        # weight and bias get this rank's share: DDP's average over ranks of the parameter
        # gradients then gives the gradient of the global batch's loss
        return grad_x, g_weight, g_bias, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are those of the global batch.

    For CPU process groups (gloo), where ``nn.SyncBatchNorm`` does not run. Same
    parameters, buffers and state-dict keys as ``nn.BatchNorm2d``, so checkpoints load
    into the plain network. Outside training, or without a process group, it is
    ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and self.affine):
            return super().forward(x)
        dtype = x.dtype
        y, mean, var, count = _GlobalBatchNormFn.apply(x.float(), self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y.to(dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm2d computing global-batch statistics (in place)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is nn.BatchNorm2d:
                child.__class__ = GlobalBatchNorm2d  # same state, global statistics
    return model


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel with global batch norm (``model`` for one process)."""
    if not current().active:
        return model
    model = sync_batchnorm(model, device)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (``model`` itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
