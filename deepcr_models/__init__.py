"""The crforge model zoo: trained cosmic-ray mask and inpaint networks.

A registry of published models with their weights and model cards, and ``load()`` and
``clean()`` for users who want to mask and inpaint cosmic rays in their own images::

    from crforge import deepcr_models
    deepcr_models.list_models()                       # the records (name, kind, figures, ...)
    mask, cleaned = deepcr_models.clean(image, mask_model="NAME", inpaint_model="NAME")

``image`` is one chip in electrons (``bunit="ELECTRONS/S", exptime=...`` for rates).
Names are searched in the zoo shipped inside this package (read-only), then in the
user zoo (``$CRFORGE_ZOO``, else the per-user data directory), where ``crforge
publish`` writes; a name in both is the user's. See ``deepcr_models/README.md`` for
the registry format and the search order, :mod:`crforge.deepcr_models.inference` for
the tiling, :mod:`crforge.deepcr_models.interop` for the export to deepCR and
:mod:`crforge.deepcr_models.hstfile` for whole FLC/FLT files (``crforge clean``).
"""

from __future__ import annotations

from crforge.deepcr_models.inference import (
                        DEFAULT_TILE,
                        ZooModel,
                        clean,
                        count_tiles,
                        estimate_sky,
                        inpaint,
                        list_models,
                        load,
                        mask_probability,
                        receptive_radius,
)
from crforge.deepcr_models.registry import ModelRecord, WeightsError, default_zoo

__all__ = ["list_models", "load", "clean", "mask_probability", "inpaint", "estimate_sky", "count_tiles",
           "receptive_radius", "ZooModel", "ModelRecord", "WeightsError", "default_zoo", "DEFAULT_TILE"]
