"""The run configuration: one table per stage, so that one TOML file describes a run.

::

    [simulate]   crforge.pipeline.simulate.config.SimulateConfig   (crforge simulate, dataset)
    [label]      crforge.pipeline.label.config.LabelConfig         (crforge label, dataset)
    [stamps]     crforge.pipeline.dataset.config.StampConfig       (crforge dataset)
    [dataset]    crforge.pipeline.dataset.config.DatasetConfig     (crforge dataset)
    [archive]    crforge.pipeline.archive.config.ArchiveConfig     (crforge query, fetch, dataset)
    [train]      crforge.training.config.TrainConfig               (crforge train)
    [evaluate]   crforge.training.evaluate.config.EvaluateConfig   (crforge evaluate)

Every command that takes ``--config``/``--set`` resolves this whole class, so a misspelt
table or key anywhere in the file is an error naming it, whichever command reads it.
Defaults (the stage config dataclasses, their one source) < file < ``--set`` < flags.
The stage config modules import only the standard library, so resolving a run config
never imports numpy, astropy or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crforge.pipeline.archive.config import ArchiveConfig
from crforge.pipeline.dataset.config import DatasetConfig, StampConfig
from crforge.pipeline.label.config import LabelConfig
from crforge.pipeline.simulate.config import SimulateConfig
from crforge.training.config import TrainConfig
from crforge.training.evaluate.config import EvaluateConfig

__all__ = ["RunConfig"]


@dataclass
class RunConfig:
    """All stage configurations of a run."""

    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    stamps: StampConfig = field(default_factory=StampConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
