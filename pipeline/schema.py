"""The HDF5 training-set schema, version 1 (../shared/DESIGN.md), in one place.

The writer (:mod:`crforge.pipeline.dataset`), the validator (:mod:`crforge.pipeline.inspect`), the
loader (:mod:`crforge.training.data`) and the tests take the layout from here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SCHEMA_VERSION", "SPLITS", "STAMP_SIZE", "ROOT_ATTRS", "META_DTYPE", "FIELDS_DTYPE",
           "PIXEL_DTYPES", "TRUTH_SNR_BINS"]

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
STAMP_SIZE = 256

#: Attributes of the root group.
ROOT_ATTRS = ("schema_version", "created_utc", "crforge_version", "manifest_name",
              "manifest_sha256", "config", "software", "stamp_size", "failed_visits")

#: ``/<split>/meta``: one row per stamp.
META_DTYPE = np.dtype([
    ("visit", "S16"), ("exposure", "S16"), ("chip", "i1"), ("x0", "i4"), ("y0", "i4"),
    ("field_id", "i4"), ("field_type", "S32"), ("filter", "S16"), ("exptime", "f4"),
    ("sky", "f4"), ("gain", "f4"), ("readnoise", "f4"), ("cr_fraction", "f4"),
])

#: ``/fields``: one row per field (visits grouped by sky overlap).
FIELDS_DTYPE = np.dtype([
    ("field_id", "i4"), ("target", "S64"), ("ra", "f8"), ("dec", "f8"),
    ("field_type", "S32"), ("split", "S8"), ("visits", "S512"),
])

#: ``/<split>/<name>``: [N, S, S] pixel datasets (``truth`` only for simulated data).
PIXEL_DTYPES = {"image": np.dtype("f4"), "cr": np.dtype("u1"), "ignore": np.dtype("u1"),
                "truth": np.dtype("u1")}

#: ``truth`` values: 0 no injected CR, else 1 + the pixel's signal-to-noise bin.
TRUTH_SNR_BINS = {1: "<3", 2: "3-5", 3: "5-10", 4: ">10"}
