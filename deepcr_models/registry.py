"""The zoo's registry: one typed record per published model, and where the zoos are.

Layout of a zoo directory::

    registry.json                          {"format": "crforge-zoo/1", "models": [record, ...]}
    <name>-<kind>-<sha256[:12]>.pt         weights: state dict + architecture + normalisation
    <name>.md                              the model card (one per published name)

Two zoos are searched, in this order (:func:`search_path`):

1. the shipped zoo (:func:`shipped_zoo`): this package's directory, read-only: crforge
   never writes into it;
2. the user zoo (:func:`default_zoo`): ``$CRFORGE_ZOO`` if set, else
   ``platformdirs.user_data_dir("crforge")/zoo`` (``~/.local/share/crforge/zoo`` on
   Linux); ``crforge publish`` writes here.

A model (name and kind) in both is the user's: it was published there with
``--overwrite`` over the shipped name, and every lookup logs a warning saying so. An
explicit ``zoo=`` directory (``--zoo DIR``) is searched alone.

A record (:class:`ModelRecord`) says what a model is (kind, instrument, filters,
architecture, input normalisation), how to use it (recommended threshold and the
false-positive rate it was chosen at), what it was trained on (data set and manifest
with their sha256), how good it is (the evaluation figures of ``crforge evaluate``),
what made it (software versions, creation date) and which file holds it (name and
sha256). The weights file's sha256 is checked on every load: a missing or altered
file is refused with :class:`WeightsError` naming the file and both hashes. The
weights files' format is :mod:`crforge.training.checkpoint`'s.
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

from crforge import atomic
from crforge.errors import InputError
from crforge.training.config import MASK_STRETCHES, VIEWS, check_views

logger = logging.getLogger(__name__)

__all__ = ["ModelRecord", "WeightsError", "REGISTRY_FORMAT", "REGISTRY_FILE", "NAME_PATTERN",
           "shipped_zoo", "default_zoo", "search_path", "writable_zoo", "source_checkout_zoo", "read_registry",
           "write_registry", "find_record", "all_records", "record_for_weights", "sha256_of", "weights_file_name",
           "verify_weights"]

REGISTRY_FORMAT = "crforge-zoo/1"
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
    views : int
        Mask models: how many symmetric views of an image the probabilities are
        averaged over by default (1, 2, 4 or 8; :meth:`crforge.training.models.MaskNet.predict`),
        the number ``threshold`` was chosen for. 1 for records written before it existed.
    view_thresholds : dict
        Mask models: the recommended threshold for each number of views it was chosen
        for (``{"1": ..., "8": ...}``, chosen the same way), so that ``clean(views=1)``
        has its own; empty for records written before it existed.
    stretch : {'linear', 'asinh'}
        Mask models: what the network's first convolution sees of the normalised image
        (:class:`crforge.training.config.ModelConfig`); ``linear`` for records written
        before it existed.
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
    views: int = 1
    view_thresholds: Mapping[str, float] = field(default_factory=dict)
    stretch: str = "linear"

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
        check_views(self.views)
        if self.stretch not in MASK_STRETCHES:
            raise InputError(f"stretch={self.stretch!r}: expected one of {MASK_STRETCHES}")
        for k, v in dict(self.view_thresholds).items():
            if k not in {str(n) for n in VIEWS} or not 0 < v < 1:
                raise InputError(f"view_thresholds[{k!r}]={v!r}: expected a number of views in {VIEWS} "
                                 "and a probability in (0, 1)")
        object.__setattr__(self, "filters", tuple(self.filters))

    def threshold_for(self, views: int) -> float | None:
        """The recommended threshold for ``views`` symmetric views (None: not chosen for it)."""
        if str(views) in self.view_thresholds:
            return float(self.view_thresholds[str(views)])
        return self.threshold if views == self.views else None

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


def shipped_zoo() -> Path:
    """The zoo shipped inside this package (read-only)."""
    return Path(__file__).resolve().parent


def default_zoo() -> Path:
    """The user zoo, where ``crforge publish`` writes by default.

    ``$CRFORGE_ZOO`` if set, else ``platformdirs.user_data_dir("crforge") / "zoo"``.
    """
    env = os.environ.get("CRFORGE_ZOO")
    return Path(env) if env else _per_user_zoo()


def _per_user_zoo() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("crforge")) / "zoo"


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def search_path(zoo: str | os.PathLike | None = None) -> list[Path]:
    """The zoo directories searched for names, first to last (a later one wins a tie).

    ``zoo`` alone when given; else the shipped zoo, then the user zoo.
    """
    if zoo is not None:
        return [Path(zoo)]
    user = default_zoo()
    return [shipped_zoo()] if _same(user, shipped_zoo()) else [shipped_zoo(), user]


def source_checkout_zoo() -> Path:
    """The shipped zoo's folder when crforge runs from a source checkout (maintainers).

    Raises
    ------
    InputError
        crforge is installed (its zoo lies under site-packages): the shipped models of
        an installed package are never rewritten.
    """
    zdir = shipped_zoo()
    root = zdir.parent
    installed = any(part in ("site-packages", "dist-packages") for part in zdir.resolve().parts)
    if installed or not (root / "pyproject.toml").is_file() or not (root / ".git").exists():
        raise InputError(f"{zdir}: not a source checkout of crforge (an installed package's shipped "
                         "models are never rewritten); --ship publishes into a git checkout's "
                         "deepcr_models/ only")
    return zdir


def writable_zoo(zoo: str | os.PathLike | None = None, *, ship: bool = False) -> Path:
    """The zoo to publish into: ``zoo``, else the user zoo; the shipped one only with ``ship``.

    Parameters
    ----------
    zoo : path-like, optional
        A zoo directory; default the user zoo (:func:`default_zoo`).
    ship : bool
        Publish into the models shipped with the package (a maintainer's release step
        in a source checkout: :func:`source_checkout_zoo`); ``zoo`` must then be None.

    Raises
    ------
    InputError
        ``zoo`` (or ``$CRFORGE_ZOO``) is the package's own zoo directory; or ``ship``
        outside a source checkout, or together with ``zoo``.
    """
    if ship:
        if zoo is not None:
            raise InputError("--ship and --zoo: choose one (--ship publishes into the package's own zoo)")
        return source_checkout_zoo()
    zdir = default_zoo() if zoo is None else Path(zoo)
    if _same(zdir, shipped_zoo()):
        raise InputError(f"{zdir} is the zoo shipped inside the crforge package, which crforge never "
                         f"writes into: publish into a user zoo (--zoo DIR, $CRFORGE_ZOO, or by default "
                         f"{_per_user_zoo()})")
    return zdir


def read_registry(zoo: str | os.PathLike) -> list[ModelRecord]:
    """All records of one zoo directory (an absent ``registry.json``: none).

    Raises
    ------
    InputError
        If the file is not a crforge zoo registry or holds a bad record.
    """
    path = Path(zoo) / REGISTRY_FILE
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != REGISTRY_FORMAT:
        raise InputError(f"{path}: not a crforge zoo registry (format {REGISTRY_FORMAT} expected)")
    return [ModelRecord.from_dict(r) for r in doc.get("models", [])]


def write_registry(records: list[ModelRecord], zoo: str | os.PathLike | None, *, ship: bool = False) -> Path:
    """Write ``registry.json`` of a writable zoo (:func:`writable_zoo`) atomically, sorted by name and kind."""
    zdir = writable_zoo(zoo, ship=ship)
    zdir.mkdir(parents=True, exist_ok=True)
    keys = [r.key for r in records]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise InputError(f"registry: duplicate model(s) {dup}")
    doc = {"format": REGISTRY_FORMAT,
           "models": [r.to_dict() for r in sorted(records, key=lambda r: (r.name, r.kind))]}
    return atomic.write_text(zdir / REGISTRY_FILE, json.dumps(doc, indent=2) + "\n")


def all_records(zoo: str | os.PathLike | None = None) -> list[tuple[ModelRecord, Path]]:
    """Every model of the zoos searched (:func:`search_path`), with its zoo directory.

    A model in more than one zoo appears once, from the last (the user zoo), with a
    warning in the log. Sorted by name and kind.
    """
    found: dict[str, tuple[ModelRecord, Path]] = {}
    for zdir in search_path(zoo):
        for rec in read_registry(zdir):
            if rec.key in found:
                logger.warning("%s: the model in %s takes precedence over the one in %s", rec.key, zdir,
                               found[rec.key][1])
            found[rec.key] = (rec, zdir)
    return [found[k] for k in sorted(found, key=lambda k: (found[k][0].name, found[k][0].kind))]


def find_record(name: str, kind: str = "mask", zoo: str | os.PathLike | None = None
                ) -> tuple[ModelRecord, Path]:
    """The record ``name`` of ``kind`` and the zoo directory holding it.

    Raises
    ------
    InputError
        If there is none (the message lists the zoos searched and their models).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if kind not in ("mask", "inpaint"):
        raise InputError(f"kind={kind!r}: expected 'mask' or 'inpaint'")
    records = all_records(zoo)
    for rec, zdir in records:
        if rec.name == name and rec.kind == kind:
            return rec, zdir
    known = ", ".join(r.key for r, _ in records) or "none"
    where = " and ".join(str(z) for z in search_path(zoo))
    raise InputError(f"no {kind} model {name!r} in the zoo {where} (it has: {known})")


def record_for_weights(path: str | os.PathLike, sha256: str) -> tuple[ModelRecord, Path] | None:
    """The record of a weights file given by its path: the zoo beside it, then the zoos searched.

    Parameters
    ----------
    path : path-like
        The weights file (``<zoo>/<name>-<kind>-<sha256[:12]>.pt``, or a copy elsewhere).
    sha256 : str
        Its digest (:func:`verify_weights`); a record matches on it.

    Returns
    -------
    (ModelRecord, Path) or None
        The record and its zoo directory, or None when no zoo publishes these weights.
    """
    zoos = [Path(path).parent] + [z for z in search_path() if not _same(z, Path(path).parent)]
    for zdir in zoos:
        try:
            records = read_registry(zdir)
        except InputError:  # a directory that merely holds a registry.json of something else
            continue
        for rec in records:
            if rec.sha256 == sha256:
                return rec, zdir
    return None


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
