"""The run configuration: one table per stage, so one TOML file can describe a run.

::

    [simulate]   crforge.pipeline.simulate.SimulateConfig   (crforge simulate)
    [label]      crforge.pipeline.drizzle.LabelConfig       (crforge label, crforge dataset)
    [stamps]     crforge.pipeline.stamps.StampConfig        (crforge dataset)
    [dataset]    crforge.pipeline.dataset.DatasetConfig     (crforge dataset)
    [archive]    crforge.pipeline.archive.ArchiveConfig     (crforge query, crforge fetch, crforge dataset)
    [train]      crforge.training.train.TrainConfig         (crforge train)
    [evaluate]   crforge.training.evaluate.EvaluateConfig   (crforge evaluate)

Each command reads the tables it uses; every table is checked, so a misspelt key
anywhere in the file is an error naming it. Defaults < file < ``--set`` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crforge.pipeline.archive import ArchiveConfig
from crforge.pipeline.dataset import DatasetConfig
from crforge.pipeline.drizzle import LabelConfig
from crforge.pipeline.simulate import SimulateConfig
from crforge.pipeline.stamps import StampConfig
from crforge.training.evaluate import EvaluateConfig
from crforge.training.train import TrainConfig

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
