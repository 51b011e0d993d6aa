"""Run configuration: defaults, validation messages, ``section.key=value`` overrides, YAML files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rgdm.algorithms.pretrain import PretrainConfig
from rgdm.algorithms.rgdm_stepwise import StepwiseConfig
from rgdm.engine.config import (
    ConfigError,
    RunConfig,
    apply_override,
    dump_config,
    load_config,
    parse_config,
)

#: Selects the algorithm whose keys the algorithm tests set.
STEPWISE = "algorithm.name=rgdm-stepwise"


def config_error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return str(info.value)


# --------------------------------------------------------------------------------------------------
# defaults and validation


def test_defaults_validate() -> None:
    config = load_config()
    assert isinstance(config, RunConfig)
    assert config == parse_config({}) == RunConfig()
    assert config.domain == {"name": "toy"}
    assert config.diffusion.schedule == "cosine"
    assert config.diffusion.timesteps == 1000
    assert config.train.steps == 5000
    assert config.algorithm.name == "pretrain" and isinstance(config.algorithm, PretrainConfig)
    assert StepwiseConfig().candidates % 2 == 0
    assert config.reward.name is None
    assert config.init is None


def test_a_domain_without_a_name_is_rejected():
    with pytest.raises(ConfigError, match=r"domain\.name is required"):
        load_config(None, ["domain.mixture=ring8"])


def test_dump_and_reload_round_trips(tmp_path: Path) -> None:
    config = load_config(
        None, ["train.steps=12", "algorithm.targets=[1, 2]", "domain.name=toy", "domain.mixture=ring8"]
    )
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("override", "where", "suggestion"),
    [("train.step=5", "train.step", "'steps'"),
     ("trian.steps=5", "trian", "'train'"),
     ("algorithm.temprature=0.1", "algorithm.temprature", "'temperature'"),
     ("diffusion.schedul=linear", "diffusion.schedul", "'schedule'"),
     ("reward.flor=1", "reward.flor", "'floor'")],
)
def test_unknown_key_names_path_and_suggests_close_match(override: str, where: str, suggestion: str) -> None:
    message = config_error([override])
    assert f"{where}: unknown key" in message
    assert f"did you mean {suggestion}?" in message
    assert "valid keys:" in message


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    message = config_error(["train.zzzzzz=1"])
    assert "train.zzzzzz: unknown key" in message
    assert "did you mean" not in message
    for key in ("steps", "batch_size", "lr"):
        assert key in message


@pytest.mark.parametrize(
    ("override", "field"),
    [("train.steps=abc", "train.steps"),
     ("train.lr=[1]", "train.lr"),
     ("diffusion.schedule=sigmoid", "diffusion.schedule"),
     ("train=5", "train"),
     ("algorithm.targets=[a, b]", "algorithm.targets"),
     ("train.batch_size=1.5", "train.batch_size")],
)
def test_wrong_type_names_the_field(override: str, field: str) -> None:
    message = config_error([override])
    assert re.search(rf"\n  {re.escape(field)}(\.\d+)?: ", message), message
    assert "(got " in message


@pytest.mark.parametrize(
    ("override", "field"),
    [("train.steps=0", "train.steps"),
     ("train.lr=0", "train.lr"),
     ("train.lr=2", "train.lr"),
     ("train.ema_decay=1", "train.ema_decay"),
     ("train.warmup_steps=-1", "train.warmup_steps"),
     ("diffusion.timesteps=1", "diffusion.timesteps"),
     ("algorithm.temperature=-0.1", "algorithm.temperature"),
     ("train.grad_clip=0", "train.grad_clip")],
)
def test_out_of_range_names_the_field(override: str, field: str) -> None:
    message = config_error([override])
    assert f"{field}:" in message


@pytest.mark.parametrize(
    ("override", "field"),
    [("algorithm.candidates=0", "algorithm.candidates"),
     ("algorithm.radius=0", "algorithm.radius")],
)
def test_out_of_range_algorithm_keys_name_the_field(override: str, field: str) -> None:
    message = config_error([STEPWISE, override])
    assert f"{field}:" in message


def test_several_problems_are_all_reported() -> None:
    message = config_error(["train.steps=0", "train.step=5", "diffusion.timesteps=1"])
    assert "train.steps:" in message
    assert "train.step: unknown key" in message
    assert "diffusion.timesteps:" in message


@pytest.mark.parametrize("candidates", [3, 7, 9])
def test_odd_candidates_rejected(candidates: int) -> None:
    message = config_error([STEPWISE, f"algorithm.candidates={candidates}"])
    assert "candidates must be even" in message
    assert str(candidates) in message
    config = load_config(None, [STEPWISE, f"algorithm.candidates={candidates + 1}"])
    assert config.algorithm.candidates == candidates + 1


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------------------------------
# overrides


def test_apply_override_parses_yaml_values() -> None:
    data: dict[str, Any] = {}
    apply_override(data, "algorithm.targets=[0,1]")
    apply_override(data, "train.steps=500")
    apply_override(data, "train.grad_clip=null")
    apply_override(data, "train.lr=0.5")
    apply_override(data, "domain.name=toy")
    apply_override(data, "init=")
    assert data == {
        "algorithm": {"targets": [0, 1]},
        "train": {"steps": 500, "grad_clip": None, "lr": 0.5},
        "domain": {"name": "toy"},
        "init": None,
    }
    config = load_config(None, ["train.lr=1e-3", "algorithm.targets=[0,1]", "train.grad_clip=null"])
    assert config.train.lr == pytest.approx(1e-3)
    assert isinstance(config.train.lr, float)
    assert config.algorithm.targets == [0, 1]
    assert config.train.grad_clip is None


def test_overrides_apply_in_order_and_merge_into_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train: {steps: 10, lr: 0.01}\ndiffusion: {schedule: linear}\n")
    config = load_config(path, ["train.steps=20", "train.steps=30", "network.width=64"])
    assert config.train.steps == 30
    assert config.train.lr == 0.01
    assert config.diffusion.schedule == "linear"
    assert config.network == {"width": 64}


def test_scientific_notation_is_a_number_in_free_form_sections() -> None:
    data: dict[str, Any] = {}
    apply_override(data, "network.dropout=1e-3")
    assert data["network"]["dropout"] == pytest.approx(1e-3)
    assert load_config(None, ["domain.name=toy", "domain.noise=1e-2"]).domain["noise"] == pytest.approx(1e-2)


@pytest.mark.parametrize(
    ("override", "match"),
    [("train.steps", "section.key=value"),
     ("=5", "section.key=value"),
     ("", "section.key=value"),
     ("train.steps=[1,", "not valid YAML"),
     ("train.steps={a: 1", "not valid YAML"),
     ("train.steps=!!python/object:os.system x", "not valid YAML")],
)
def test_malformed_overrides_rejected(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        apply_override({}, override)
    with pytest.raises(ConfigError):
        load_config(None, [override])


def test_override_into_a_value_is_rejected() -> None:
    data: dict[str, Any] = {"train": {"steps": 5}}
    with pytest.raises(ConfigError, match="'steps' is a value, not a section"):
        apply_override(data, "train.steps.x=1")
    with pytest.raises(ConfigError):
        load_config(None, ["train.steps=5", "train.steps.x=1"])


# --------------------------------------------------------------------------------------------------
# files


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path)  # a folder is not a config file


@pytest.mark.parametrize("text", ["train: {steps: 5\n", "train:\n  steps: 5\n bad: [\n", "a: b: c\n"])
def test_invalid_yaml_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="is not valid YAML") as info:
        load_config(path)
    assert "bad.yaml" in str(info.value)


@pytest.mark.parametrize(("text", "kind"), [("- 1\n- 2\n", "list"), ("42\n", "int"), ("just text\n", "str")])
def test_non_mapping_document(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"must hold a mapping of sections, not a {kind}"):
        load_config(path)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_config(path) == RunConfig()


def test_file_with_bad_values_names_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train: {step: 10}\nalgorithm: {name: rgdm-stepwise, candidates: 5}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "train.step: unknown key; did you mean 'steps'?" in str(info.value)
    assert "candidates must be even" in str(info.value)


@pytest.mark.parametrize("value", ["2001-13-01", "!!int abc", "!!float x"])
def test_yaml_scalar_construction_errors_are_config_errors(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(None, [f"train.lr={value}"])
    path = tmp_path / "c.yaml"
    path.write_text(f"train: {{lr: {value}}}\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_a_file_extends_another_section_by_section_and_overrides_come_last(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("domain: {name: toy, mixture: ring8, train_size: 100}\n"
                                        "train: {steps: 10, lr: 0.01}\nalgorithm: {name: rgdm-data, targets: [0, 1]}\n")
    (tmp_path / "middle.yaml").write_text("extends: base\ntrain: {steps: 20}\n")
    path = tmp_path / "top.yaml"
    path.write_text("extends: middle.yaml\ndomain: {mixture: rare-ring8}\nalgorithm: {targets: [2]}\n")
    config = load_config(path, ["train.lr=0.5"])
    assert config.domain == {"name": "toy", "mixture": "rare-ring8", "train_size": 100}
    assert (config.train.steps, config.train.lr) == (20, 0.5)
    assert config.algorithm.name == "rgdm-data" and config.algorithm.targets == [2], "a list is replaced"


def test_a_file_elsewhere_extends_a_shipped_preset_by_name(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("extends: finetune-toy\ninit: toy-ring-pretrained\ntrain: {steps: 7}\n")
    config = load_config(path)
    assert (config.train.steps, config.train.batch_size, config.algorithm.name) == (7, 256, "rgdm-data")


@pytest.mark.parametrize(("files", "match"), [
    ({"a.yaml": "extends: b\n", "b.yaml": "extends: a\n"}, "which extends it in turn"),
    ({"a.yaml": "extends: nowhere\n"}, r"extends 'nowhere', which is neither a file next to it nor a preset \("),
    ({"a.yaml": "extends: [b]\n"}, "extends takes a preset name or a file"),
])
def test_a_bad_extends_is_a_config_error(tmp_path: Path, files: dict[str, str], match: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path / "a.yaml")


# --------------------------------------------------------------------------------------------------
# properties


@settings(max_examples=100, deadline=None)
@given(
    steps=st.integers(1, 10**9),
    lr=st.floats(0, 1, exclude_min=True, allow_nan=False, allow_subnormal=True),
    batch_size=st.integers(1, 10**6),
    temperature=st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False),
)
def test_valid_overrides_round_trip(steps: int, lr: float, batch_size: int, temperature: float) -> None:
    config = load_config(None, [
        f"train.steps={steps}",
        f"train.lr={lr!r}",
        f"train.batch_size={batch_size}",
        f"algorithm.temperature={temperature!r}",
    ])
    assert config.train.steps == steps
    assert config.train.lr == lr
    assert config.train.batch_size == batch_size
    assert config.algorithm.temperature == temperature


KEYS = ["train.steps", "train.lr", "train.grad_clip", "algorithm.targets", "algorithm.candidates",
        "diffusion.schedule", "domain.name", "network.width", "init", "reward.name", "train"]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(key=st.sampled_from(KEYS), value=st.text(max_size=40))
def test_arbitrary_override_text_gives_config_or_config_error(key: str, value: str) -> None:
    try:
        config = load_config(None, [f"{key}={value}"])
    except ConfigError:
        return
    assert isinstance(config, RunConfig)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(override=st.text(max_size=40))
def test_arbitrary_override_gives_config_or_config_error(override: str) -> None:
    try:
        config = load_config(None, [override])
    except ConfigError:
        return
    assert isinstance(config, RunConfig)
