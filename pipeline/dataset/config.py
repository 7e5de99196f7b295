"""The ``[dataset]`` and ``[stamps]`` tables: settings of the dataset stage (standard library only)."""

from __future__ import annotations

from dataclasses import dataclass, field

from crforge.errors import InputError
from crforge.pipeline.names import DEFAULT_FRACTIONS

__all__ = ["DatasetConfig", "StampConfig"]


@dataclass
class DatasetConfig:
    """Settings of the dataset stage.

    Parameters
    ----------
    seed : int
        Seed of the split assignment (simulated visits have their own seeds).
    fractions : dict
        Share of fields per split when the manifest does not fix one.
    scheduler : str
        ``local`` (a dask LocalCluster on this machine), ``serial`` (no dask, same
        results) or the address of a running dask scheduler (``tcp://host:8786``).
    workers : int
        LocalCluster worker processes; 0 = one per CPU core.
    compression : str
        HDF5 filter for the stamp datasets (``gzip`` or ``lzf``).
    max_failed_fraction : float
        Refuse to write the data set when more visits than this fraction failed.
    keep_intermediate : bool
        Keep each visit's label files, simulated exposures and stamp file (for
        inspection, and so that a rerun or a changed stamp setting does not relabel).
        False removes the first two once the visit's stamps are cut (they take four
        to six times the disk of the stamps) and the stamp file once it is copied into
        the HDF5, which a large data set needs. Archive downloads are kept either way.
    """

    seed: int = 0
    fractions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    scheduler: str = "local"
    workers: int = 0
    compression: str = "gzip"
    max_failed_fraction: float = 0.2
    keep_intermediate: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming a bad parameter."""
        if self.workers < 0:
            raise InputError(f"workers={self.workers!r}: expected >= 0 (0 = one per core)")
        if self.compression not in ("gzip", "lzf"):
            raise InputError(f"compression={self.compression!r}: expected 'gzip' or 'lzf'")
        if not 0 <= self.max_failed_fraction <= 1:
            raise InputError(f"max_failed_fraction={self.max_failed_fraction!r}: expected [0, 1]")
        if not (self.scheduler in ("local", "serial") or "://" in self.scheduler):
            raise InputError(f"scheduler={self.scheduler!r}: expected 'local', 'serial' or "
                             "a scheduler address like tcp://127.0.0.1:8786")


@dataclass
class StampConfig:
    """How stamps are cut.

    Parameters
    ----------
    size : int
        Stamp side in pixels (the HDF5 schema fixes 256).
    max_ignored : float
        Drop a stamp whose ignored fraction exceeds this.
    """

    size: int = 256
    max_ignored: float = 0.5

    def validate(self) -> None:
        """Raise ``ValueError`` naming a bad parameter."""
        if not isinstance(self.size, int) or self.size < 8:
            raise InputError(f"size={self.size!r}: expected an int >= 8")
        if not 0.0 <= self.max_ignored <= 1.0:
            raise InputError(f"max_ignored={self.max_ignored!r}: expected a fraction in [0, 1]")
