"""What the labelling stage gives: :class:`VisitLabels`, also written as ``labels.json``.

Standard library only, so that readers of a labelled visit (the data-set stage, the
label-quality scores) need neither AstroDrizzle nor astropy to learn what is there.
``VisitLabels.to_json`` gives exactly the keys and values of the ``labels.json`` files
written before these classes existed, so existing work directories are reused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crforge.errors import InputError

__all__ = ["ChipLabels", "ExposureLabels", "VisitLabels", "read_labels", "LABEL_SUFFIX", "REPORT_NAME"]

#: Name of an exposure's label file: ``<rootname>_label.fits``.
LABEL_SUFFIX = "_label.fits"
#: The visit's report in its label directory.
REPORT_NAME = "labels.json"


@dataclass(frozen=True)
class ChipLabels:
    """One chip of a label file.

    Parameters
    ----------
    extver : int
        EXTVER of the chip's SCI, CR and IGNORE extensions.
    cr_fraction : float
        Fraction of the usable (not ignored) pixels labelled CR.
    sky : float
        AstroDrizzle's ``MDRIZSKY`` (input units).
    ignore_fraction : float
        Fraction of the pixels with a non-zero ignore mask.
    """

    extver: int
    cr_fraction: float
    sky: float
    ignore_fraction: float

    def to_json(self) -> dict[str, Any]:
        """The chip's entry of ``labels.json``."""
        return {"extver": self.extver, "cr_fraction": self.cr_fraction, "sky": self.sky,
                "ignore_fraction": self.ignore_fraction}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ChipLabels:
        """Inverse of :meth:`to_json` (``KeyError`` on a missing key)."""
        return cls(extver=int(doc["extver"]), cr_fraction=float(doc["cr_fraction"]),
                   sky=float(doc["sky"]), ignore_fraction=float(doc["ignore_fraction"]))


@dataclass(frozen=True)
class ExposureLabels:
    """One exposure's label file.

    Parameters
    ----------
    rootname : str
        The exposure's rootname (lower case).
    input : pathlib.Path
        The calibrated exposure that was labelled (as given, not resolved).
    label : str
        File name of the label file, relative to the visit's label directory.
    chips : tuple of ChipLabels
        Its chips, in file order.
    """

    rootname: str
    input: Path
    label: str
    chips: tuple[ChipLabels, ...]

    def to_json(self) -> dict[str, Any]:
        """The exposure's entry of ``labels.json``."""
        return {"rootname": self.rootname, "input": str(self.input), "label": self.label,
                "chips": [c.to_json() for c in self.chips]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ExposureLabels:
        """Inverse of :meth:`to_json` (``KeyError`` on a missing key)."""
        return cls(rootname=str(doc["rootname"]), input=Path(doc["input"]), label=str(doc["label"]),
                   chips=tuple(ChipLabels.from_json(c) for c in doc["chips"]))


@dataclass(frozen=True)
class VisitLabels:
    """The labels of one visit: what was run, on what, with which settings.

    Parameters
    ----------
    visit, instrument, filter, target : str
        The visit's name (its directory), instrument, filter and target name.
    n_exposures : int
        Exposures drizzled together (the usable ones).
    refined : bool
        Whether the labels were refined on the minimum stack (few exposures).
    refused : tuple of str
        Why each unusable exposure of the directory was left out.
    config : dict
        :meth:`LabelConfig.result_dict` of the settings used (JSON types).
    astrodrizzle : dict
        The AstroDrizzle keyword arguments (without the output names).
    drizzlepac_version : str
        The drizzlepac that ran.
    seconds_astrodrizzle, seconds_total : float
        Wall time of AstroDrizzle and of the whole visit.
    exposures : tuple of ExposureLabels
        One per labelled exposure, in file-name order.
    alignment : tuple of dict
        When the exposures were aligned (``config["align"]``), each one's fit to the
        first (:meth:`crforge.pipeline.label.align.ExposureAlignment.to_json`:
        rootname, status, n_sources, n_matches, shift, rotation_deg, scale, rms);
        empty otherwise.
    """

    visit: str
    instrument: str
    filter: str
    target: str
    n_exposures: int
    refined: bool
    refused: tuple[str, ...]
    config: dict[str, Any] = field(repr=False)
    astrodrizzle: dict[str, Any] = field(repr=False)
    drizzlepac_version: str
    seconds_astrodrizzle: float
    seconds_total: float
    exposures: tuple[ExposureLabels, ...]
    alignment: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The content of ``labels.json`` (keys in the order they have always had)."""
        return {
            "visit": self.visit, "instrument": self.instrument, "filter": self.filter,
            "target": self.target, "n_exposures": self.n_exposures, "refined": self.refined,
            "refused": list(self.refused), "config": self.config, "astrodrizzle": self.astrodrizzle,
            "drizzlepac_version": self.drizzlepac_version,
            "seconds_astrodrizzle": self.seconds_astrodrizzle, "seconds_total": self.seconds_total,
            "exposures": [e.to_json() for e in self.exposures],
            # only when aligned: unaligned labels.json keep the keys they always had
            **({"alignment": [dict(a) for a in self.alignment]} if self.alignment else {}),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> VisitLabels:
        """Inverse of :meth:`to_json` (``KeyError`` or ``TypeError`` on a malformed document)."""
        return cls(
            visit=str(doc["visit"]), instrument=str(doc["instrument"]), filter=str(doc["filter"]),
            target=str(doc["target"]), n_exposures=int(doc["n_exposures"]), refined=bool(doc["refined"]),
            refused=tuple(str(r) for r in doc["refused"]),
            config=dict(doc["config"]), astrodrizzle=dict(doc["astrodrizzle"]),
            drizzlepac_version=str(doc["drizzlepac_version"]),
            seconds_astrodrizzle=float(doc["seconds_astrodrizzle"]),
            seconds_total=float(doc["seconds_total"]),
            exposures=tuple(ExposureLabels.from_json(e) for e in doc["exposures"]),
            # labels.json written before alignment existed has no such key
            alignment=tuple(dict(a) for a in doc.get("alignment", ())),
        )


def read_labels(label_dir: str | os.PathLike) -> VisitLabels:
    """Read a visit's ``labels.json``.

    Raises
    ------
    FileNotFoundError
        No ``labels.json`` in ``label_dir`` (the label stage has not run).
    InputError
        ``labels.json`` is not JSON or lacks a key; the message names the file.
    """
    path = Path(label_dir) / REPORT_NAME
    if not path.exists():
        raise FileNotFoundError(2, "no labels report; run the label stage first", str(path))
    try:
        return VisitLabels.from_json(json.loads(path.read_text()))
    except ValueError as exc:
        raise InputError(f"{path}: not a JSON labels report ({exc})") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a labels report ({type(exc).__name__}: {exc}); "
                         f"expected the keys of {VisitLabels.__name__}") from None
