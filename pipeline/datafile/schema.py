"""The layout of the HDF5 training set, version 2: one place for every name and dtype.

::

    /                      attrs: schema_version=2, created_utc, crforge_version,
                                  manifest_name, manifest_sha256, config (JSON),
                                  software (JSON), stamp_size, instruments (JSON list),
                                  failed_visits (JSON list of {"visit", "reason"})
    /fields                compound [F]: field_id, target, ra, dec, field_type, split, visits
    /train /val /test      one group per split, each with
       image   float32 [N,S,S]  science pixels in the input's unit (attribute BUNIT),
                                chunks (1,S,S), gzip
       cr      uint8   [N,S,S]  1 = cosmic ray (the AstroDrizzle label)
       ignore  uint8   [N,S,S]  bit 1 bad pixel (DQ), bit 2 saturated (grown),
                                bit 4 no data / no other exposure covers the pixel
       truth   uint8   [N,S,S]  simulated visits only: 0 no injected CR, else 1 + the
                                pixel's signal-to-noise bin (<3, 3-5, 5-10, >10 sigma)
       noiseless float32 [N,S,S] simulated visits only (version 2): the pixel's value
                                without noise and cosmic rays (sky + source model), image unit
       meta    compound [N]     one row per stamp (:data:`META_DTYPE`)

Version 2 added ``noiseless``; version-1 files (no ``noiseless``) are still read
(:data:`READABLE_VERSIONS`).

Every stamp of a field (visits grouped by sky overlap) is in one split.  The writer
(:mod:`crforge.pipeline.datafile.writer`), the reader
(:mod:`crforge.pipeline.datafile.reader`) and the validator
(:mod:`crforge.pipeline.datafile.validate`) take the layout from here; ``docs/hdf5-schema.md``
describes it for readers of the files.
"""

from __future__ import annotations

import numpy as np

from crforge.pipeline.names import SPLITS

__all__ = ["SCHEMA_VERSION", "READABLE_VERSIONS", "OPTIONAL_PIXELS", "SPLITS", "STAMP_SIZE", "ROOT_ATTRS", "META_DTYPE", "FIELDS_DTYPE",
           "PIXEL_DTYPES", "TRUTH_SNR_BINS", "IGNORE_BITS"]

SCHEMA_VERSION = 2
#: Versions the reader and the validator accept (1: no ``noiseless``).
READABLE_VERSIONS = (1, 2)
STAMP_SIZE = 256

#: Attributes of the root group that every file has.
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

#: ``/<split>/<name>``: [N, S, S] pixel datasets (``truth`` and ``noiseless`` only for
#: simulated data).
PIXEL_DTYPES = {"image": np.dtype("f4"), "cr": np.dtype("u1"), "ignore": np.dtype("u1"),
                "truth": np.dtype("u1"), "noiseless": np.dtype("f4")}

#: Pixel datasets a split may lack (each in all splits or in none).
OPTIONAL_PIXELS = ("truth", "noiseless")

#: ``truth`` values: 0 no injected CR, else 1 + the pixel's signal-to-noise bin.
TRUTH_SNR_BINS = {1: "<3", 2: "3-5", 3: "5-10", 4: ">10"}

#: ``ignore`` bits.
IGNORE_BITS = {1: "bad pixel (DQ)", 2: "saturated (grown)", 4: "no data or not covered"}
