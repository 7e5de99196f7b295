"""Names the evaluation's modules share: the methods compared, their labels, figure keys.

One source for each; :mod:`~crforge.training.evaluate.detection`,
:mod:`~crforge.training.evaluate.inpainting`, :mod:`~crforge.training.evaluate.photometry`
and :mod:`~crforge.training.evaluate.report` take them from here.
"""

from __future__ import annotations

from crforge.pipeline.datafile.schema import TRUTH_SNR_BINS

__all__ = ["MASK_METHODS", "INPAINT_METHODS", "METHOD_LABELS", "TRUTH_BIN_NAMES", "fpr_key"]

#: Detectors compared, in the order of the report's tables.
MASK_METHODS = ("crforge", "deepcr", "astroscrappy")

#: Fills compared, in the order of the report's tables.
INPAINT_METHODS = ("crforge", "median5", "biharmonic")

#: How the report, the plot and the log name each method.
METHOD_LABELS = {"crforge": "crforge", "deepcr": "deepCR 0.3.1", "astroscrappy": "LACosmic (astroscrappy)",
                 "median5": "5x5 masked median", "biharmonic": "biharmonic", "labels": "AstroDrizzle labels",
                 "none": "no fill (sky)"}

#: SNR bins of the ``truth`` pixels, by ``value - 1`` (0: "<3", 1: "3-5", 2: "5-10", 3: ">10").
TRUTH_BIN_NAMES = tuple(TRUTH_SNR_BINS[k + 1] for k in range(len(TRUTH_SNR_BINS)))


def fpr_key(fpr: float) -> str:
    """The key of a false-positive rate in the figures (``0.005`` -> ``"0.005"``)."""
    return f"{fpr:g}"
