"""crforge: cosmic-ray training data from multi-exposure HST visits, and deepCR models.

The ``crforge`` package holds what the stages share: configuration
(:mod:`crforge.config`) and the command line (:mod:`crforge.cli`).  The stages
themselves live in :mod:`pipeline` (data) and :mod:`training` (networks); the model
zoo in :mod:`deepcr_models`.
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__: str = _metadata.version("crforge")
except _metadata.PackageNotFoundError:  # running from a source tree, not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
