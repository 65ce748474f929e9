"""The whole config tree (:class:`RlefConfig`) and its loading: YAML files, ``a.b=value`` overrides, and
errors that name the dotted key and the file (or override) it came from."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from rlef.common.config.roles import (
    ActorConfig,
    DeployConfig,
    EvaluatorConfig,
    ExecutorConfig,
    LearnerConfig,
)
from rlef.common.config.sections import (
    DataConfig,
    EndpointsConfig,
    ModelConfig,
    MonitoringConfig,
    PromptConfig,
    RewardConfig,
    RunConfig,
    Section,
    StalenessConfig,
    TransportConfig,
    WeightsConfig,
    ZmqWeights,
)
from rlef.common.errors import ConfigError


class RlefConfig(Section):
    """The whole system's configuration: every role reads the same file."""

    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    prompt: PromptConfig = PromptConfig()
    reward: RewardConfig = RewardConfig()
    staleness: StalenessConfig = StalenessConfig()
    actor: ActorConfig = ActorConfig()
    executor: ExecutorConfig = ExecutorConfig()
    learner: LearnerConfig = LearnerConfig()
    weights: WeightsConfig = ZmqWeights()
    endpoints: EndpointsConfig = EndpointsConfig()
    transport: TransportConfig = TransportConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    deploy: DeployConfig = DeployConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()

    @model_validator(mode="after")
    def _batch_divides(self) -> "RlefConfig":
        if self.learner.batch_rollouts % self.learner.updates_per_batch:
            raise ValueError(
                f"learner.batch_rollouts ({self.learner.batch_rollouts}) must be divisible by "
                f"learner.updates_per_batch ({self.learner.updates_per_batch})"
            )
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set '{dotted}': '{'.'.join(keys[: depth + 1])}' is not a section")
        node = child
    node[keys[-1]] = value


_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value); the value is parsed as YAML so numbers, booleans and lists keep their type."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML: {exc}") from exc
    if isinstance(value, str) and _EXPONENT_FLOAT.match(raw.strip()):
        value = float(value)  # YAML 1.1 reads 1e-6 (no dot) as a string; on a command line it means a number
    return key, value


_UNION_TAGS = ("zmq", "collective", "filesystem")  # pydantic puts the discriminated union's tag in error locations
_DOTTED_KEY = re.compile(r"\b[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+\b")


def _source_of(dotted: str, origin: dict[str, str]) -> str | None:
    """Where ``dotted`` was set: the key itself, else its closest enclosing key, else a key inside it."""
    if dotted in origin:
        return origin[dotted]
    enclosing = [key for key in origin if dotted.startswith(key + ".")]
    if enclosing:
        return origin[max(enclosing, key=len)]
    return next((src for key, src in origin.items() if key.startswith(dotted + ".")), None)


def _format_validation(exc: ValidationError, origin: dict[str, str]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)]
        dotted = ".".join(loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        if not dotted:
            # A cross-section check: name each key its message mentions, with where that key was set.
            keys = list(dict.fromkeys(_DOTTED_KEY.findall(msg)))
            where = "; ".join(f"{key} from {origin.get(key, 'defaults')}" for key in keys) or "defaults"
            lines.append(f"  {keys[0] if keys else '(root)'}: {msg} ({where})")
            continue
        lines.append(f"  {dotted}: {msg} (from {_source_of(dotted, origin) or 'defaults'})")
    return "\n".join(lines)


def _origins(tree: Any, prefix: str, source: str, out: dict[str, str]) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            out[dotted] = source
            _origins(value, dotted, source, out)


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RlefConfig:
    """Load ``path`` (YAML) with ``key=value`` overrides applied on top; raise ConfigError naming key and file."""
    tree: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
        _origins(tree, "", source, origin)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value, f"override '{text}'")
        origin[key] = f"override '{text}'"
        _origins(value, key, f"override '{text}'", origin)
    try:
        return RlefConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"invalid config ({path or 'no file'}):\n{_format_validation(exc, origin)}") from exc


def dump_config(config: RlefConfig) -> str:
    """The resolved config as YAML (what `rlef config show` prints and every run directory keeps)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
