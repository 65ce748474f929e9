"""Config loading (rlef.common.config): shipped configs, override parsing, and errors naming key and file."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlef.common.config import (
    CollectiveWeights,
    FilesystemWeights,
    RlefConfig,
    ZmqWeights,
    dump_config,
    load_config,
    parse_override,
)
from rlef.common.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
RLEF = Path(sys.executable).with_name("rlef")


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("name", ["tiny-cpu.yaml", "llama3.1-8b-h100.yaml", "llama3.1-70b-h100.yaml"])
def test_shipped_configs_load_and_round_trip(name: str, tmp_path: Path) -> None:
    config = load_config(CONFIGS / name)
    assert isinstance(config, RlefConfig)
    assert config.learner.batch_rollouts % config.learner.updates_per_batch == 0
    # The dump is itself a loadable config that resolves to the same values.
    again = load_config(write(tmp_path, dump_config(config)))
    assert again == config


def test_paper_hyper_parameters_and_gpu_split() -> None:
    small, large = load_config(CONFIGS / "llama3.1-8b-h100.yaml"), load_config(CONFIGS / "llama3.1-70b-h100.yaml")
    for config in (small, large):
        assert config.learner.batch_rollouts == 1024 and config.learner.updates_per_batch == 4
        assert config.learner.lr == 2e-7 and config.learner.weight_decay == 0.1 and config.learner.warmup_steps == 50
        assert config.reward.kl_beta == 0.05 and config.learner.clip_eps == 0.2 and config.learner.value_clip == 0.2
        assert config.actor.max_turns == 3 and config.actor.sampling.temperature == 1.0
    assert (small.deploy.training_gpus, small.deploy.inference_gpus, small.learner.total_updates) == (128, 160, 12000)
    assert (large.deploy.training_gpus, large.deploy.inference_gpus, large.learner.total_updates) == (1024, 1280, 8000)


def test_no_file_gives_defaults() -> None:
    assert load_config(None) == RlefConfig()


# ---------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "text,key,value",
    [
        ("learner.lr=1e-6", "learner.lr", 1e-6),  # YAML 1.1 alone would give the string "1e-6"
        ("learner.lr=2.5E+3", "learner.lr", 2500.0),
        ("learner.lr=1.0e-6", "learner.lr", 1e-6),
        ("run.name=1e", "run.name", "1e"),
        ("learner.batch_rollouts=32", "learner.batch_rollouts", 32),
        ("monitoring.enabled=false", "monitoring.enabled", False),
        ("data.limit=null", "data.limit", None),
        ("learner.adam_betas=[0.8, 0.9]", "learner.adam_betas", [0.8, 0.9]),
        ("run.name=my run", "run.name", "my run"),
        ("run.name=", "run.name", ""),
        ("run.name=a=b", "run.name", "a=b"),
        ("model.path='0123'", "model.path", "0123"),
    ],
)
def test_parse_override_types(text: str, key: str, value: object) -> None:
    assert parse_override(text) == (key, value)


@pytest.mark.parametrize("text", ["learner.lr", "=1", "learner..lr=1", ".lr=1", "learner.=1", "learner.lr=[1,"])
def test_malformed_override_names_itself(text: str) -> None:
    with pytest.raises(ConfigError, match="override"):
        parse_override(text)


def test_overrides_apply_on_top_of_the_file() -> None:
    config = load_config(
        CONFIGS / "tiny-cpu.yaml",
        ["learner.lr=3e-6", "actor.sampling.top_p=0.95", "transport.curve_keys_dir=/k", "deploy.max_batches=null"],
    )
    assert config.learner.lr == 3e-6 and config.actor.sampling.top_p == 0.95
    assert config.transport.curve_keys_dir == Path("/k") and config.deploy.max_batches is None
    # Untouched values still come from the file (the file's value, not the schema's default of 1024).
    assert config.learner.batch_rollouts == yaml.safe_load((CONFIGS / "tiny-cpu.yaml").read_text())["learner"]["batch_rollouts"] != 1024


def test_weights_union_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(load_config(None).weights, ZmqWeights)
    assert isinstance(load_config(None, ["weights.type=collective"]).weights, CollectiveWeights)
    assert isinstance(load_config(write(tmp_path, "weights:\n  type: filesystem\n  keep: 3\n")).weights, FilesystemWeights)
    # Switching the backend by override keeps the file's keys, which the other backend does not know.
    with pytest.raises(ConfigError, match=r"weights\.chunk_bytes: unknown key \(from .*tiny-cpu\.yaml\)"):
        load_config(CONFIGS / "tiny-cpu.yaml", ["weights.type=filesystem"])


# ---------------------------------------------------------------- errors name the key and the file


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "learner:\n  lrr: 1.0e-6\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"learner.lrr: unknown key (from {path})" in str(info.value)


def test_unknown_section_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "lerner:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=rf"lerner: unknown key \(from {path}\)"):
        load_config(path)


def test_unknown_override_key_names_the_override() -> None:
    with pytest.raises(ConfigError, match=r"actor\.nope: unknown key \(from override 'actor\.nope=1'\)"):
        load_config(CONFIGS / "tiny-cpu.yaml", ["actor.nope=1"])


def test_wrong_types_name_every_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "learner:\n  lr: fast\nactor:\n  sampling:\n    max_new_tokens: [1]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "learner.lr: " in text and "actor.sampling.max_new_tokens: " in text
    assert text.count(f"(from {path})") == 2


def test_wrong_type_in_override_names_the_override(tmp_path: Path) -> None:
    path = write(tmp_path, "learner:\n  lr: 1.0e-6\n")
    with pytest.raises(ConfigError, match=r"learner\.lr: .* \(from override 'learner\.lr=abc'\)"):
        load_config(path, ["learner.lr=abc"])


def test_error_inside_a_list_names_the_closest_source(tmp_path: Path) -> None:
    path = write(tmp_path, "learner:\n  lr: 1.0e-6\n")
    with pytest.raises(ConfigError, match=r"learner\.adam_betas\.1: .* \(from override 'learner\.adam_betas=\[0\.9\]'\)"):
        load_config(path, ["learner.adam_betas=[0.9]"])


def test_bound_violation_and_bad_union_tag(tmp_path: Path) -> None:
    path = write(tmp_path, "learner:\n  clip_eps: -1\nweights:\n  type: carrier-pigeon\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"learner.clip_eps: Input should be greater than 0 (from {path})" in str(info.value)
    assert "weights: " in str(info.value) and "carrier-pigeon" in str(info.value)


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "learner: 5\n")
    with pytest.raises(ConfigError, match=rf"learner: .* \(from {path}\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="'learner.lr' is not a section"):
        load_config(None, ["learner.lr=1", "learner.lr.x=2"])


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "learner: [\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"{path}: the top level must be a mapping"):
        load_config(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"{path}: cannot read config"):
        load_config(path)


def test_batch_divisibility_names_both_keys_and_their_sources(tmp_path: Path) -> None:
    path = write(tmp_path, "learner:\n  updates_per_batch: 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["learner.batch_rollouts=10"])
    text = str(info.value)
    assert "learner.batch_rollouts (10) must be divisible by learner.updates_per_batch (4)" in text
    assert "learner.batch_rollouts from override 'learner.batch_rollouts=10'" in text
    assert f"learner.updates_per_batch from {path}" in text
    with pytest.raises(ConfigError, match="learner.updates_per_batch from defaults"):
        load_config(None, ["learner.batch_rollouts=10"])


# ---------------------------------------------------------------- CLI


def test_rlef_config_show_prints_the_resolved_config() -> None:
    result = subprocess.run(
        [str(RLEF), "config", "show", str(CONFIGS / "llama3.1-8b-h100.yaml"), "learner.lr=3e-7"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    expected = load_config(CONFIGS / "llama3.1-8b-h100.yaml", ["learner.lr=3e-7"]).model_dump(mode="json")
    assert shown == expected
    assert set(shown) == set(RlefConfig.model_fields)  # defaults filled in: every section is printed
    assert shown["deploy"]["training_gpus"] == 128 and shown["learner"]["lr"] == 3e-7


def test_rlef_config_show_reports_errors_with_exit_code_2(tmp_path: Path) -> None:
    path = write(tmp_path, "learner:\n  lrr: 1\n")
    result = subprocess.run([str(RLEF), "config", "show", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "learner.lrr: unknown key" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("argv", "expected"), [
    (["launch", "run.log_level=WARNING"], logging.WARNING),            # the config's key sets the level
    (["--log-level", "DEBUG", "launch", "run.log_level=WARNING"], logging.DEBUG),  # the command line wins
    (["launch"], logging.INFO),                                        # the default
])
def test_run_log_level_is_the_level_of_every_role_command(argv: list[str], expected: int) -> None:
    """Every role command loads its config through config_from_args (the real parser, as `rlef` runs it)."""
    from rlef.common.cli import build_parser, config_from_args

    root = logging.getLogger()
    before = root.level
    try:
        args = build_parser().parse_args(argv)
        # What main()'s setup_logging sets (its basicConfig is a no-op under pytest, which holds the handlers).
        root.setLevel(getattr(logging, args.log_level or "INFO"))
        config_from_args(args)
        assert root.level == expected
    finally:
        root.setLevel(before)
