"""A running average of a network's weights during training (``train.inpaint_ema``).

The inpaint network trains for a few hundred steps on a CPU (``make train``: 12
epochs of 16 steps). Its validation error then jumps by tens of percent from one
epoch to the next even at the end of the cosine schedule (a batch of bright stars
moves the weights more than many batches of sky), so which epoch happens to end on a
good step decides the model. An exponential moving average of the weights over the
last steps (Polyak averaging) is what such a run serves instead: validated, saved as
the checkpoint's model and published; the weights the optimizer trains are kept
beside it in training checkpoints so that a resumed run continues both.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """An exponential moving average of a network's parameters and buffers.

    Parameters
    ----------
    net : nn.Module
        The network being trained (not a DDP wrapper); copied at construction.
    decay : float
        Weight of the average at each update, in (0, 1). Early updates use
        ``min(decay, (1 + n) / (10 + n))`` (``n`` updates so far), so the average
        is not held back by the starting weights for ``1 / (1 - decay)`` steps.
    updates : int
        Updates already made (a resumed run: its step count).

    Notes
    -----
    Batch-norm running statistics are averaged like the weights; integer buffers
    (``num_batches_tracked``) are copied.
    """

    def __init__(self, net: nn.Module, decay: float, *, updates: int = 0) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay={decay!r}: expected (0, 1)")
        self.decay, self.updates = float(decay), int(updates)
        self.model = copy.deepcopy(net).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _pairs(self, net: nn.Module):
        mine = list(self.model.parameters()) + list(self.model.buffers())
        theirs = list(net.parameters()) + list(net.buffers())
        if len(mine) != len(theirs):
            raise ValueError("the network's tensors differ from the averaged model's")
        return zip(mine, theirs)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """Move the average towards ``net``'s current weights (after an optimizer step)."""
        n = self.updates
        d = min(self.decay, (1 + n) / (10 + n))
        floats, targets = [], []
        for a, b in self._pairs(net):
            if a.is_floating_point():
                floats.append(a)
                targets.append(b.detach().to(a.dtype))
            else:
                a.copy_(b)
        if floats:
            torch._foreach_lerp_(floats, targets, 1.0 - d)
        self.updates = n + 1

    def state_dict(self) -> dict:
        """The averaged network's state dict (what a checkpoint serves as its model)."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict, *, updates: int) -> None:
        """Restore the average of a resumed run (``updates``: its step count)."""
        self.model.load_state_dict(state)
        self.updates = int(updates)
