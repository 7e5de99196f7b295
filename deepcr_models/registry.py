"""The zoo's registry: one typed record per published model, and its weights files.

Layout of a zoo directory (the package's own ``deepcr_models/`` by default)::

    registry.json                          {"format": "crforge-zoo/1", "models": [record, ...]}
    <name>-<kind>-<sha256[:12]>.pt         weights: state dict + architecture + normalisation
    <name>.md                              the model card (one per published name)

A record (:class:`ModelRecord`) says what a model is (kind, instrument, filters,
architecture, input normalisation), how to use it (recommended threshold and the
false-positive rate it was chosen at), what it was trained on (data set and manifest
with their sha256), how good it is (the evaluation figures of ``crforge evaluate``),
what made it (software versions, creation date) and which file holds it (name and
sha256). The weights file's sha256 is checked on every load: a missing or altered
file is refused with :class:`WeightsError` naming the file and both hashes.

Weights files contain only tensors and plain Python values (they load with
``torch.load(weights_only=True)``)::

    {"format": "crforge-zoo-weights/1", "kind": "mask", "model_config": {...},
     "normalisation": {...}, "state_dict": {...}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from crforge.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["ModelRecord", "WeightsError", "REGISTRY_FORMAT", "WEIGHTS_FORMAT", "REGISTRY_FILE",
           "default_zoo", "read_registry", "write_registry", "find_record", "sha256_of",
           "weights_file_name", "verify_weights", "NAME_PATTERN"]

REGISTRY_FORMAT = "crforge-zoo/1"
WEIGHTS_FORMAT = "crforge-zoo-weights/1"
REGISTRY_FILE = "registry.json"
#: What a published name may look like (it becomes part of file names).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_WEIGHTS_NAME = re.compile(r"-(?P<hash>[0-9a-f]{12})\.pt$")


class WeightsError(InputError):
    """A weights file is missing or does not match its recorded sha256."""


@dataclass(frozen=True)
class ModelRecord:
    """One published model (like torchvision's ``Weights`` entries).

    Parameters
    ----------
    name : str
        Published name (shared by the mask and inpaint models of one run).
    kind : {'mask', 'inpaint'}
        Which network.
    instrument : str
        Imager and detector, e.g. ``"ACS/WFC"``.
    filters : tuple of str
        Filters of the training data.
    depth, width : int
        UNet architecture (``deepCR-<depth>-<width>``).
    batch_norm : bool
        Whether the network has batch norm.
    normalisation : dict
        Input normalisation of the checkpoint (``scheme``, ``scale``, ``bunit``,
        ``fill_ignored``; see :func:`crforge.training.data.normalisation_info`).
    threshold : float or None
        Recommended probability threshold (mask models).
    threshold_fpr : float or None
        The false-positive rate the threshold was chosen at.
    threshold_split : str or None
        The data split it was chosen on (``"val"``).
    data : dict
        The training set: ``path``, ``sha256``, ``manifest_name``,
        ``manifest_sha256``, ``simulated``, and the evaluation ``split`` and
        ``n_stamps``.
    evaluation : dict
        The model's own figures from ``evaluation.json`` (mask: ``tpr``,
        ``tpr_dilated`` by field type and FPR; inpaint: ``mse`` by field type; both
        ``seconds_per_100``), with ``fprs``.
    software : dict
        Versions (crforge, torch, numpy, python) at publication and training.
    created_utc : str
        Publication time, ISO 8601 with ``Z``.
    weights : str
        File name of the weights in the zoo directory.
    sha256 : str
        sha256 of the weights file.
    card : str
        File name of the model card.
    description : str
        One line on what the model is.
    source : dict
        Where it came from: run directory, checkpoint, epoch.
    """

    name: str
    kind: Literal["mask", "inpaint"]
    instrument: str
    filters: tuple[str, ...]
    depth: int
    width: int
    batch_norm: bool
    normalisation: Mapping[str, Any]
    threshold: float | None
    threshold_fpr: float | None
    threshold_split: str | None
    data: Mapping[str, Any]
    evaluation: Mapping[str, Any]
    software: Mapping[str, Any]
    created_utc: str
    weights: str
    sha256: str
    card: str
    description: str = ""
    source: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise InputError(f"name={self.name!r}: expected letters, digits, '.', '_' or '-' "
                             "(starting with a letter or digit)")
        if self.kind not in ("mask", "inpaint"):
            raise InputError(f"kind={self.kind!r}: expected 'mask' or 'inpaint'")
        if not re.fullmatch(r"[0-9a-f]{64}", str(self.sha256)):
            raise InputError(f"sha256={self.sha256!r}: expected 64 hex digits")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise InputError(f"threshold={self.threshold!r}: expected a probability in (0, 1)")
        object.__setattr__(self, "filters", tuple(self.filters))

    @property
    def key(self) -> str:
        """``"<name>:<kind>"``, unique in a registry."""
        return f"{self.name}:{self.kind}"

    @property
    def simulated(self) -> bool:
        """Whether the model was trained on simulated data."""
        return bool(self.data.get("simulated", False))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["filters"] = list(self.filters)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelRecord":
        """The record of :meth:`to_dict`'s data; unknown or missing keys are errors."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"model record: unknown key(s) {unknown}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise InputError(f"model record {data.get('name')!r}: {exc}") from None


def default_zoo() -> Path:
    """The zoo directory: ``$CRFORGE_ZOO`` if set, else this package's directory."""
    env = os.environ.get("CRFORGE_ZOO")
    return Path(env) if env else Path(__file__).resolve().parent


def _zoo_dir(zoo: str | os.PathLike | None) -> Path:
    return default_zoo() if zoo is None else Path(zoo)


def read_registry(zoo: str | os.PathLike | None = None) -> list[ModelRecord]:
    """All records of a zoo directory (an absent ``registry.json``: none).

    Raises
    ------
    ValueError
        If the file is not a crforge zoo registry or holds a bad record.
    """
    path = _zoo_dir(zoo) / REGISTRY_FILE
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != REGISTRY_FORMAT:
        raise InputError(f"{path}: not a crforge zoo registry (format {REGISTRY_FORMAT} expected)")
    return [ModelRecord.from_dict(r) for r in doc.get("models", [])]


def write_registry(records: list[ModelRecord], zoo: str | os.PathLike | None = None) -> Path:
    """Write ``registry.json`` atomically (sorted by name and kind)."""
    zdir = _zoo_dir(zoo)
    zdir.mkdir(parents=True, exist_ok=True)
    keys = [r.key for r in records]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise InputError(f"registry: duplicate model(s) {dup}")
    doc = {"format": REGISTRY_FORMAT,
           "models": [r.to_dict() for r in sorted(records, key=lambda r: (r.name, r.kind))]}
    path = zdir / REGISTRY_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def find_record(name: str, kind: str = "mask", zoo: str | os.PathLike | None = None) -> ModelRecord:
    """The record ``name`` of ``kind``.

    Raises
    ------
    ValueError
        If there is none (the message lists the models the zoo has).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if kind not in ("mask", "inpaint"):
        raise InputError(f"kind={kind!r}: expected 'mask' or 'inpaint'")
    records = read_registry(zoo)
    for r in records:
        if r.name == name and r.kind == kind:
            return r
    known = ", ".join(r.key for r in records) or "none"
    raise InputError(f"no {kind} model {name!r} in the zoo {_zoo_dir(zoo)} (it has: {known})")


def sha256_of(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_file_name(name: str, kind: str, sha256: str) -> str:
    """``<name>-<kind>-<sha256[:12]>.pt``."""
    return f"{name}-{kind}-{sha256[:12]}.pt"


def verify_weights(path: str | os.PathLike, sha256: str | None = None) -> str:
    """Check a weights file against its expected sha256; return the actual digest.

    Parameters
    ----------
    path : path-like
        The file.
    sha256 : str, optional
        Expected full digest (a record's); without it, the 12-digit prefix in the
        file name (``...-<sha256[:12]>.pt``) is checked, if the name has one.

    Raises
    ------
    WeightsError
        If the file is missing or its digest differs (the message names the file and
        the expected and actual digests).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing"
                           + (f" (expected sha256 {sha256})" if sha256 else ""))
    actual = sha256_of(path)
    if sha256 is not None:
        if actual != sha256:
            raise WeightsError(f"weights file {path} is altered or corrupt: sha256 {actual}, "
                               f"the registry expects {sha256}")
    else:
        m = _WEIGHTS_NAME.search(path.name)
        if m and not actual.startswith(m.group("hash")):
            raise WeightsError(f"weights file {path} is altered or corrupt: sha256 {actual} does "
                               f"not start with the {m.group('hash')} in its name")
    return actual
