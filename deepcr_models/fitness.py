"""Whether a model fits the data it is about to clean: instrument, detector, filter, unit.

A network learnt the pixels of one imager (PSF sharpness, pixel scale, noise, CR
morphology) in a few filters, in electrons. Applied to another imager, or to counts
read as electrons, it still returns a mask, and a wrong one: on a real ACS/HRC frame
the ACS/WFC model takes the cores of stars for cosmic rays. So before any work,
:func:`check_fitness` compares what the data say about themselves (a FITS header, or
an ``NDData``'s ``meta`` and ``unit``: :func:`describe_header`) with the model's
registry record, and refuses with :class:`FitnessError` (an
:class:`~crforge.errors.InputError`, exit status 2) naming the file, the extension,
the keyword and what the model was trained on. ``allow_mismatch=True``
(``crforge clean --force``) applies the model anyway, with a warning per mismatch.

What is compared:

- instrument and detector: ``INSTRUME``/``DETECTOR`` against the record's
  ``instrument`` (``"ACS/WFC"``);
- filter: ``FILTER``, ``FILTER1``, ``FILTER2``, ``FILTNAM1``, ``FILTNAM2`` (clear
  positions left out) against the record's ``filters``;
- unit: ``BUNIT`` (or the ``NDData``'s unit) must be electrons or electrons/s; counts
  (``COUNTS``, ``DN``, ``ADU``) cannot be converted without the gain.

A key the data do not carry is not a mismatch (a bare array says nothing about
itself), but the log says what could not be checked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crforge.errors import InputError
from crforge.training.deepcr import DEEPCR_MODELS

logger = logging.getLogger(__name__)

__all__ = ["DataDescription", "FitnessError", "describe_header", "check_fitness", "model_training",
           "normalise_bunit", "FILTER_KEYWORDS", "DEEPCR_INSTRUMENTS"]

#: Header keywords that name a filter, in the order they are read.
FILTER_KEYWORDS = ("FILTER", "FILTER1", "FILTER2", "FILTNAM1", "FILTNAM2")
#: deepCR 0.3.1's published mask models (``deepcr:<name>``) and the imager each learnt.
DEEPCR_INSTRUMENTS = {name.upper(): m.instrument for name, m in DEEPCR_MODELS.items()}
#: Spellings of the units a model can take, normalised.
_ELECTRONS = {"ELECTRONS": "ELECTRONS", "ELECTRON": "ELECTRONS", "E-": "ELECTRONS",
              "ELECTRONS/S": "ELECTRONS/S", "ELECTRONS/SEC": "ELECTRONS/S", "ELECTRON/S": "ELECTRONS/S",
              "E-/S": "ELECTRONS/S"}
_CLEAR = ("CLEAR", "N/A", "NONE", "")


class FitnessError(InputError):
    """The data are not what the model was trained on (instrument, filter or unit)."""


@dataclass(frozen=True)
class DataDescription:
    """What a frame says about itself; None where it says nothing.

    Parameters
    ----------
    where : str
        The frame in messages, e.g. ``"j8bt06nyq_flt.fits"`` or ``"CCDData"``.
    instrument : str or None
        ``"<INSTRUME>/<DETECTOR>"`` as the header spells them (``"ACS/HRC"``), or
        ``INSTRUME`` alone without a ``DETECTOR``.
    filters : tuple of str
        The non-clear filters, upper case.
    bunit : str or None
        The unit as given.
    keys : dict
        How the messages name each of ``instrument``, ``filters`` and ``bunit``:
        keyword, value and extension (``"BUNIT='COUNTS' [SCI,1]"``).
    """

    where: str
    instrument: str | None = None
    filters: tuple[str, ...] = ()
    bunit: str | None = None
    keys: Mapping[str, str] = field(default_factory=dict)


def normalise_bunit(bunit: Any) -> str | None:
    """``'ELECTRONS'`` or ``'ELECTRONS/S'`` for the spellings of electrons (astropy units too), else None."""
    if bunit is None:
        return None
    return _ELECTRONS.get(str(bunit).strip().upper().replace(" ", ""))


def describe_header(primary: Mapping | None, ext: Mapping | None = None, *, where: str,
                    ext_name: str = "SCI", unit: Any = None) -> DataDescription:
    """What a primary header (and an image extension's header, or a unit) say about the data.

    Parameters
    ----------
    primary, ext : mapping, optional
        The primary header and the image extension's header (a keyword in ``ext``
        wins); ``NDData.meta`` is a fine ``primary``.
    where : str
        The file (or object) named in messages.
    ext_name : str
        How the extension is named in messages (``"SCI,1"``).
    unit : optional
        A unit that overrides ``BUNIT`` (an ``NDData``'s ``unit``).
    """
    primary, ext = primary or {}, ext or {}

    def get(key: str) -> tuple[Any, str | None]:
        for hdr, name in ((ext, ext_name), (primary, "PRIMARY")):
            if key in hdr and hdr[key] is not None and str(hdr[key]).strip():
                return hdr[key], name
        return None, None

    keys: dict[str, str] = {}
    inst, in_ext = get("INSTRUME")
    det, _ = get("DETECTOR")
    instrument = None
    if inst is not None:
        instrument = str(inst).strip().upper() + (f"/{str(det).strip().upper()}" if det is not None else "")
        keys["instrument"] = f"INSTRUME/DETECTOR={instrument!r} [{in_ext}]"
    filters = []
    for key in FILTER_KEYWORDS:
        value, in_ext = get(key)
        text = str(value).strip().upper() if value is not None else ""
        # WFPC2's FILTER1/FILTER2 are wheel positions (numbers); its names are FILTNAM1/2
        if text and not text.isdigit() and not any(text.startswith(c) for c in _CLEAR if c):
            filters.append(text)
            keys.setdefault("filters", f"{key}={text!r} [{in_ext}]")
    if unit is not None:
        bunit = _unit_text(unit)
        keys["bunit"] = f"unit={bunit!r}"
    else:
        value, in_ext = get("BUNIT")
        bunit = None if value is None else str(value).strip()
        if bunit is not None:
            keys["bunit"] = f"BUNIT={bunit!r} [{in_ext}]"
    return DataDescription(where, instrument, tuple(dict.fromkeys(filters)), bunit, keys)


def _unit_text(unit: Any) -> str:
    """An astropy unit as a BUNIT-like string (``electron / s`` -> ``ELECTRONS/S``)."""
    try:
        from astropy import units as u

        un = u.Unit(unit)
        if un == u.electron:
            return "ELECTRONS"
        if un == u.electron / u.s:
            return "ELECTRONS/S"
        return un.to_string()
    except (ValueError, TypeError):
        return str(unit)


def model_training(model: Any) -> dict[str, Any] | None:
    """What a loaded model was trained on: ``name``, ``instrument``, ``filters``, ``bunit``; None if unknown.

    A model with a registry record answers from it; deepCR's published models
    (``deepcr:ACS-WFC``) from :data:`DEEPCR_INSTRUMENTS`; a bare checkpoint cannot say.
    """
    bunit = str(getattr(model, "bunit", "ELECTRONS"))
    rec = getattr(model, "record", None)
    if rec is not None:
        return {"name": rec.key, "instrument": rec.instrument, "filters": tuple(rec.filters), "bunit": bunit}
    source = str(getattr(model, "source", ""))
    if source.lower().startswith("deepcr:"):
        inst = DEEPCR_INSTRUMENTS.get(source.split(":", 1)[1].upper())
        if inst:
            return {"name": source, "instrument": inst, "filters": (), "bunit": bunit}
    return None


def _mismatches(data: DataDescription, trained: Mapping[str, Any]) -> list[str]:
    out = []
    keys = data.keys
    if data.instrument is not None and data.instrument != str(trained["instrument"]).upper():
        out.append(f"{keys['instrument']}, the model was trained on {trained['instrument']}")
    filters = {f.upper() for f in trained.get("filters", ())}
    if data.filters and filters and not filters.intersection(data.filters):
        out.append(f"{keys['filters']}, the model was trained on {', '.join(sorted(filters))}")
    if data.bunit is not None and normalise_bunit(data.bunit) is None:
        out.append(f"{keys['bunit']}, the model takes electrons ({trained.get('bunit', 'ELECTRONS')}, or "
                   "ELECTRONS/S with EXPTIME): counts need the gain first")
    return out


def check_fitness(model: Any, data: DataDescription, *, allow_mismatch: bool = False) -> list[str]:
    """Refuse (or, with ``allow_mismatch``, warn about) data the model was not trained for.

    Parameters
    ----------
    model : ZooModel
        The loaded model (its record, or its deepCR source).
    data : DataDescription
        What the data say about themselves (:func:`describe_header`).
    allow_mismatch : bool
        Log a warning per mismatch and go on instead of raising.

    Returns
    -------
    list of str
        The mismatches found (empty when the data fit, or when nothing could be checked).

    Raises
    ------
    FitnessError
        A mismatch, without ``allow_mismatch``; the message names the data, the
        keyword and what the model was trained on.
    """
    trained = model_training(model)
    if trained is None:
        logger.info("%s: %s has no registry record: instrument, filter and unit not checked", data.where,
                    getattr(model, "source", model))
        return []
    missing = [k for k, v in (("instrument", data.instrument), ("filter", data.filters), ("unit", data.bunit))
               if not v]
    if missing:
        logger.info("%s: no %s to check against %s", data.where, ", ".join(missing), trained["name"])
    found = _mismatches(data, trained)
    if not found:
        return []
    text = "; ".join(found)
    if not allow_mismatch:
        raise FitnessError(f"{data.where}: model {trained['name']} was not trained for these data: {text} "
                           "(pass --force, or allow_mismatch=True, to apply it anyway)")
    for msg in found:
        logger.warning("%s: %s; applying %s anyway (--force)", data.where, msg, trained["name"])
    return found
