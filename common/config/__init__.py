"""One typed config schema for every role, loaded from YAML with ``a.b=value`` overrides.

Method hyper-parameters default to the paper's values (Gehring et al. 2025, see docs/method.md); where the
paper is silent the default is named and explained in the field's description. Infrastructure defaults are
those of a local CPU run; ``configs/*.yaml`` set the rest. Unknown keys and wrong types are errors that name
the dotted key and the file they came from.

The schema is split by what a section configures: :mod:`.sections` (shared by several roles), :mod:`.roles`
(one role each), :mod:`.loader` (the whole tree, :class:`RlefConfig`, and :func:`load_config`). Import the
names from here: ``from rlef.common.config import RlefConfig, load_config``.
"""

from __future__ import annotations

from rlef.common.config.loader import (
    RlefConfig,
    dump_config,
    load_config,
    parse_override,
)
from rlef.common.config.roles import (
    ActorConfig,
    CheckpointConfig,
    DeployConfig,
    EvaluatorConfig,
    ExecutorConfig,
    FinalEvaluationConfig,
    LearnerConfig,
    VllmConfig,
)
from rlef.common.config.sections import (
    CollectiveWeights,
    DataConfig,
    EndpointsConfig,
    EpisodeSamplesConfig,
    FilesystemWeights,
    ModelConfig,
    MonitoringConfig,
    PromptConfig,
    RewardConfig,
    RunConfig,
    SamplingConfig,
    Section,
    StalenessConfig,
    TensorBoardConfig,
    TransportConfig,
    WandbConfig,
    WeightsConfig,
    ZmqWeights,
)

__all__ = [
    "ActorConfig",
    "CheckpointConfig",
    "CollectiveWeights",
    "DataConfig",
    "DeployConfig",
    "EndpointsConfig",
    "EpisodeSamplesConfig",
    "EvaluatorConfig",
    "ExecutorConfig",
    "FilesystemWeights",
    "FinalEvaluationConfig",
    "LearnerConfig",
    "ModelConfig",
    "MonitoringConfig",
    "PromptConfig",
    "RewardConfig",
    "RlefConfig",
    "RunConfig",
    "SamplingConfig",
    "Section",
    "StalenessConfig",
    "TensorBoardConfig",
    "TransportConfig",
    "VllmConfig",
    "WandbConfig",
    "WeightsConfig",
    "ZmqWeights",
    "dump_config",
    "load_config",
    "parse_override",
]
