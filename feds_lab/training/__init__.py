"""Training: teachers on L_RD, FEDS students in three stages, and the scratch baseline.

- :mod:`.config`: :class:`TrainConfig`, one dataclass per run (YAML, ``--set key=value``);
- :mod:`.stages`: :class:`Stage`, the stage plan, and the loss of each stage;
- :mod:`.trainer`: :func:`train`, the loop (resumable, data-parallel under torchrun);
- :mod:`.state`: the run folder (config, state, metrics, final model), written atomically;
- :mod:`.cli`: ``feds-lab train teacher|student``.

>>> from feds_lab.training import TrainConfig, train
>>> path = train(TrainConfig(role="teacher", preset="tiny", lmbda=0.0067, out="runs/t"))
"""

from .config import RUNTIME_FIELDS, ConfigError, TrainConfig
from .stages import Stage, StagePlan, TrainingObjective
from .state import CONFIG_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE, read_metrics
from .trainer import NonFiniteLossError, TrainingInterrupted, train, validate

__all__ = [
    "CONFIG_FILE", "METRICS_FILE", "MODEL_FILE", "RUNTIME_FIELDS", "STATE_FILE",
    "ConfigError", "NonFiniteLossError", "Stage", "StagePlan", "TrainConfig", "TrainingInterrupted",
    "TrainingObjective", "read_metrics", "train", "validate",
]
