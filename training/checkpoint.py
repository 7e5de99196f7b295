"""The two model file formats: training checkpoints and zoo weights, read and written here only.

Training checkpoint (``crforge-train-checkpoint/1``, ``runs/<run>/<kind>/last.pt`` and
``best.pt``, written by :mod:`crforge.training.train` after every epoch)::

    {"format", "kind", "model_config", "model" (the state dict), "optimizer",
     "scheduler", "scaler", "rng", "epoch", "step", "best", "config",
     "normalisation", "metrics", "stamp_size", "data", "versions"[, "trained"]}

(``trained``: the weights being trained, when ``model`` is their running average.)

Zoo weights (``crforge-zoo-weights/1``, ``<name>-<kind>-<sha256[:12]>.pt``, written by
``crforge publish``)::

    {"format", "kind", "model_config", "normalisation", "state_dict"}

Both hold only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``; both hold the architecture (``model_config``:
``depth``, ``width``, ``batch_norm``, ``bn_momentum``) and the input normalisation
(:func:`crforge.training.data.normalisation_info`), so :func:`build_model` rebuilds
the network from the file alone. :func:`read` reads either into one typed record,
:class:`Checkpoint`; :func:`write_training` and :func:`write_weights` write them
(atomically, through :mod:`crforge.atomic`). Weights are serialised in memory
(:func:`weights_bytes`): the same weights always give the same bytes, so a
republished model keeps its sha256 (the zoo's registry checks it).
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from crforge import atomic
from crforge.errors import InputError
from crforge.training import models
from crforge.training.config import KINDS

__all__ = ["Checkpoint", "TrainingState", "CheckpointError", "TRAIN_FORMAT", "WEIGHTS_FORMAT",
           "read", "write_training", "write_weights", "weights_bytes", "build_model",
           "load_checkpoint", "rng_state", "set_rng_state"]

TRAIN_FORMAT = "crforge-train-checkpoint/1"
WEIGHTS_FORMAT = "crforge-zoo-weights/1"
#: What ``expect`` of :func:`read` may ask for, and the format each stands for.
FILE_KINDS = {"train": TRAIN_FORMAT, "weights": WEIGHTS_FORMAT}
_ARCHITECTURE = ("depth", "width", "batch_norm", "bn_momentum")


class CheckpointError(InputError):
    """A file that is not a crforge checkpoint or weights file, or not of the kind expected."""


@dataclass
class TrainingState:
    """What a training checkpoint holds beyond the model: everything a resumed run needs.

    Attributes
    ----------
    optimizer, scheduler, scaler : dict
        The ``state_dict()`` of the Adam optimizer, the learning-rate scheduler and
        the gradient scaler.
    rng : dict
        Python, NumPy and torch RNG states (:func:`rng_state`).
    epoch, step : int
        Epochs and optimizer steps done.
    best : dict
        ``epoch``, ``val_loss`` and ``score`` (what the best epoch is chosen on:
        ``val_score`` for inpaint, else ``val_loss``) of the best epoch so far.
    config : dict
        The run's resolved configuration (``[train]`` table).
    metrics : dict
        This epoch's record of ``metrics.jsonl``.
    data : dict
        The training set: ``path``, ``train_stamps``.
    versions : dict
        crforge and torch versions that wrote the file.
    trained : dict or None
        The weights the optimizer trains, when the checkpoint's model is their running
        average (``train.inpaint_ema``, :mod:`crforge.training.averaging`); None when
        the model is those weights themselves.
    """

    optimizer: dict
    scheduler: dict
    scaler: dict
    rng: dict
    epoch: int
    step: int
    best: dict
    config: dict
    metrics: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    trained: dict | None = None


@dataclass
class Checkpoint:
    """One model file's contents: a training checkpoint or zoo weights.

    Attributes
    ----------
    kind : {'mask', 'inpaint'}
        Which network.
    model_config : dict
        ``depth``, ``width``, ``batch_norm``, ``bn_momentum``.
    state_dict : dict
        The network's weights.
    normalisation : dict
        The input normalisation (``scheme``, ``scale``, ``bunit``, ``fill_ignored``).
    stamp_size : int or None
        Side of the training stamps (training checkpoints).
    training : TrainingState or None
        The training state: present in (and only in) a training checkpoint.
    path : pathlib.Path or None
        The file it was read from.
    """

    kind: Literal["mask", "inpaint"]
    model_config: dict
    state_dict: dict
    normalisation: dict
    stamp_size: int | None = None
    training: TrainingState | None = None
    path: Path | None = None

    @property
    def format(self) -> str:
        """:data:`TRAIN_FORMAT` with a training state, else :data:`WEIGHTS_FORMAT`."""
        return TRAIN_FORMAT if self.training is not None else WEIGHTS_FORMAT

    @property
    def epoch(self) -> int | None:
        """Epochs trained (None for zoo weights)."""
        return self.training.epoch if self.training is not None else None

    @property
    def step(self) -> int | None:
        """Optimizer steps done (None for zoo weights)."""
        return self.training.step if self.training is not None else None


# --------------------------------------------------------------------------- reading


def read(path: str | os.PathLike, *, expect: Literal["train", "weights"] | None = None,
         kind: str | None = None, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a training checkpoint or a zoo weights file.

    Parameters
    ----------
    path : path-like
        The file.
    expect : {'train', 'weights'}, optional
        Refuse the other kind of file.
    kind : {'mask', 'inpaint'}, optional
        Refuse a file holding the other network.
    map_location : str or torch.device
        Where to load the tensors.

    Raises
    ------
    CheckpointError
        (an :class:`~crforge.errors.InputError`) No such file, not a crforge model
        file, missing entries, or not the ``expect``/``kind`` asked for; the message
        names the file.
    """
    path = Path(path)
    if expect is not None and expect not in FILE_KINDS:
        raise ValueError(f"expect={expect!r}: expected one of {sorted(FILE_KINDS)}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint or weights file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable crforge checkpoint "
                              f"({type(exc).__name__}: {exc})") from exc
    fmt = obj.get("format") if isinstance(obj, dict) else None
    wanted = [FILE_KINDS[expect]] if expect else list(FILE_KINDS.values())
    if fmt not in wanted:
        what = {TRAIN_FORMAT: "a training checkpoint", WEIGHTS_FORMAT: "a zoo weights file"}
        got = f"; it is {what[fmt]} ({fmt})" if fmt in what else ""
        raise CheckpointError(f"{path}: not a crforge checkpoint (format {' or '.join(wanted)} "
                              f"expected{got})")
    ckpt = _from_dict(obj, path)
    if kind is not None and ckpt.kind != kind:
        raise CheckpointError(f"{path}: holds a {ckpt.kind} model, not {kind}")
    return ckpt


def _from_dict(obj: dict, path: Path) -> Checkpoint:
    training = obj["format"] == TRAIN_FORMAT
    state_key = "model" if training else "state_dict"
    required = ["kind", "model_config", "normalisation", state_key]
    if training:
        required += ["optimizer", "scheduler", "scaler", "rng", "epoch", "step", "best", "config"]
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: {obj['format']} file without {', '.join(missing)}")
    if obj["kind"] not in KINDS:
        raise CheckpointError(f"{path}: kind={obj['kind']!r}: expected one of {KINDS}")
    mc = dict(obj["model_config"])
    absent = [k for k in _ARCHITECTURE if k not in mc]
    if absent:
        raise CheckpointError(f"{path}: model_config without {', '.join(absent)}")
    state = None
    if training:
        state = TrainingState(
            optimizer=obj["optimizer"], scheduler=obj["scheduler"], scaler=obj["scaler"],
            rng=obj["rng"], epoch=int(obj["epoch"]), step=int(obj["step"]), best=dict(obj["best"]),
            config=obj["config"], metrics=dict(obj.get("metrics", {})), data=dict(obj.get("data", {})),
            versions=dict(obj.get("versions", {})), trained=obj.get("trained"))
    stamp = obj.get("stamp_size")
    return Checkpoint(kind=obj["kind"], model_config=mc, state_dict=obj[state_key],
                      normalisation=dict(obj["normalisation"]),
                      stamp_size=int(stamp) if stamp is not None else None, training=state, path=path)


def inpaint_design(model_config: dict) -> dict:
    """``fill``, ``head``, ``context``, ``step_floor``, ``star_fit``, ``star_fit_input``,
    ``core_guard`` and ``core_guard_sigma`` of an inpaint model's recorded architecture.

    Files written before a key existed lack it: a model_config without ``fill`` is of
    the first inpaint design (no base fill), one without ``head`` of the first residual
    design (the linear head), one without ``context`` has no context channel, one
    without ``step_floor`` applies every step, one without ``star_fit`` has no star-fit
    channels, one without ``star_fit_input`` is given the fit's amplitudes, one without
    ``core_guard`` has no guard.
    """
    return {"fill": str(model_config.get("fill", "none")), "head": str(model_config.get("head", "linear")),
            "context": int(model_config.get("context", 0)),
            "step_floor": float(model_config.get("step_floor", 0.0)),
            "star_fit": float(model_config.get("star_fit", 0.0)),
            "star_fit_input": str(model_config.get("star_fit_input", "amplitudes")),
            "core_guard": float(model_config.get("core_guard", 0.0)),
            "core_guard_sigma": float(model_config.get("core_guard_sigma", 0.85))}


def mask_stretch(model_config: dict) -> str:
    """The mask network's input ``stretch`` of a recorded architecture (``linear`` for
    files written before it existed, and for inpaint models, which have none)."""
    return str(model_config.get("stretch", "linear"))


def build_model(checkpoint: Checkpoint, *, device: str | torch.device = "cpu") -> nn.Module:
    """The network of ``checkpoint`` with its weights, on ``device``, in eval mode.

    Raises
    ------
    CheckpointError
        The state dict does not fit the architecture the file records.
    """
    mc = checkpoint.model_config
    net = models.build_model(checkpoint.kind, int(mc["depth"]), int(mc["width"]), bool(mc["batch_norm"]),
                             float(mc["bn_momentum"]), **inpaint_design(mc), stretch=mask_stretch(mc))
    try:
        net.load_state_dict(checkpoint.state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint.path or 'checkpoint'}: its weights do not fit a "
                              f"{checkpoint.kind} model {mc} ({exc})") from exc
    return net.to(device).eval()


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    expect: Literal["train", "weights"] | None = None,
                    kind: str | None = None) -> tuple[nn.Module, Checkpoint]:
    """Rebuild a trained model from its file alone (no config file needed).

    Parameters
    ----------
    path : path-like
        ``best.pt`` or ``last.pt`` of a run, or a zoo weights file.
    map_location : str or torch.device
        Where to load the tensors (and put the model).
    expect, kind
        As :func:`read`.

    Returns
    -------
    (nn.Module, Checkpoint)
        The model in eval mode, and the file's record (apply
        :func:`crforge.training.data.normalise` with ``normalisation["scale"]`` to new
        images).
    """
    ckpt = read(path, expect=expect, kind=kind, map_location=map_location)
    return build_model(ckpt, device=map_location), ckpt


# --------------------------------------------------------------------------- writing


def _serialise(obj: dict) -> bytes:
    # through a buffer: torch.save names the archive's root after the file it writes,
    # so writing a temporary file directly would make the bytes depend on its name
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_training(path: str | os.PathLike, checkpoint: Checkpoint) -> Path:
    """Write a training checkpoint (atomically: a run killed while saving leaves the old file).

    ``checkpoint`` must carry its :class:`TrainingState`.
    """
    t = checkpoint.training
    if t is None:
        raise ValueError("write_training: the checkpoint has no training state (write_weights?)")
    obj = {"format": TRAIN_FORMAT, "kind": checkpoint.kind, "model_config": dict(checkpoint.model_config),
           "model": checkpoint.state_dict, "optimizer": t.optimizer, "scheduler": t.scheduler,
           "scaler": t.scaler, "rng": t.rng, "epoch": t.epoch, "step": t.step, "best": t.best,
           "config": t.config, "normalisation": checkpoint.normalisation, "metrics": t.metrics,
           "stamp_size": checkpoint.stamp_size, "data": t.data, "versions": t.versions}
    if t.trained is not None:
        obj["trained"] = t.trained
    return atomic.write_bytes(path, _serialise(obj))


def weights_bytes(checkpoint: Checkpoint) -> bytes:
    """The zoo weights file of ``checkpoint`` (its model only), as bytes.

    Deterministic: the same weights, architecture and normalisation always give the
    same bytes (and so the same sha256).
    """
    state = {k: v.detach().cpu().contiguous().clone() for k, v in checkpoint.state_dict.items()}
    obj = {"format": WEIGHTS_FORMAT, "kind": checkpoint.kind, "model_config": dict(checkpoint.model_config),
           "normalisation": dict(checkpoint.normalisation), "state_dict": state}
    return _serialise(obj)


def write_weights(path: str | os.PathLike, checkpoint: Checkpoint, *, overwrite: bool = True) -> Path:
    """Write the zoo weights file of ``checkpoint`` (atomically); return the path."""
    return atomic.write_bytes(path, weights_bytes(checkpoint), overwrite=overwrite)


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch (and CUDA) RNG states, as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        # as a tensor and plain numbers, so the checkpoint loads with weights_only=True
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
