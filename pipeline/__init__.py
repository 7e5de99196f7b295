"""Data stages of crforge: from a manifest to an HDF5 cosmic-ray training set.

Query and fetch calibrated HST exposures from MAST (the only networked stage) or
simulate synthetic visits with known cosmic rays; label cosmic rays with AstroDrizzle
(median, blot, driz_cr) on copies of the exposures; build CR and ignore masks from the
results and the DQ arrays; cut 256x256 stamps; split them by sky field and write the
HDF5 training set.  Each stage maps input paths plus one config dataclass to output
paths, skips work that is already complete, and writes under temporary names.
"""
