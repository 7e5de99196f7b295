"""Names the stages share (one source for each): splits, field types, archive products.

Standard library only, so the config modules can import it.
"""

from __future__ import annotations

__all__ = ["SPLITS", "FIELD_TYPES", "ARCHIVE_PRODUCTS", "DEFAULT_FRACTIONS"]

#: The splits of a data set, in file order.
SPLITS = ("train", "val", "test")

#: The field types crforge simulates and labels (deepCR's three).
FIELD_TYPES = ("extragalactic", "globular_cluster", "resolved_galaxy")

#: Calibrated products an archive visit may use, in the archive stage's default order.
ARCHIVE_PRODUCTS = ("flc", "flt")

#: Default shares of fields per split.
DEFAULT_FRACTIONS = {"train": 0.6, "val": 0.15, "test": 0.25}
