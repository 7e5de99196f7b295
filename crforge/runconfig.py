"""The run configuration: one table per stage, so one TOML file can describe a run.

::

    [simulate]   pipeline.simulate.SimulateConfig   (crforge simulate)
    [label]      pipeline.drizzle.LabelConfig       (crforge label, crforge dataset)
    [stamps]     pipeline.stamps.StampConfig        (crforge dataset)
    [dataset]    pipeline.dataset.DatasetConfig     (crforge dataset)
    [archive]    pipeline.archive.ArchiveConfig     (crforge query, crforge fetch, crforge dataset)
    [train]      training.train.TrainConfig         (crforge train)
    [evaluate]   training.evaluate.EvaluateConfig   (crforge evaluate)

Each command reads the tables it uses; every table is checked, so a misspelt key
anywhere in the file is an error naming it. Defaults < file < ``--set`` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.archive import ArchiveConfig
from pipeline.dataset import DatasetConfig
from pipeline.drizzle import LabelConfig
from pipeline.simulate import SimulateConfig
from pipeline.stamps import StampConfig
from training.evaluate import EvaluateConfig
from training.train import TrainConfig

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
