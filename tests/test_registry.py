"""Registries of domains, algorithms and rewards: rgdm's own, code registrations and entry-point plugins."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rgdm import registry
from rgdm.algorithms import Algorithm, Pretrain
from rgdm.cli import build_parser, main
from rgdm.domains import build_domain
from rgdm.domains.toy import ToyDomain
from rgdm.engine.builder import make_algorithm
from rgdm.engine.config import AlgorithmConfig, ConfigError, load_config
from rgdm.registry import (
    RegistryError,
    RewardEntry,
    register_algorithm,
    register_commands,
    register_domain,
    register_reward,
)
from rgdm.rewards import Reward, resolve_reward

BUILTIN_ALGORITHMS = ["cfg", "ddpo", "pretrain", "rgdm-data", "rgdm-model", "rgdm-stepwise", "rwr"]


class LineDomain:
    """A plugin's domain, as small as ``rgdm list`` needs: points on a line, with a reward of its own."""

    name = "line"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    def decode(self, x: Any, mask: Any) -> Sequence[Any]:
        return np.asarray(x)

    def rewards(self) -> dict[str, Reward]:
        return {"origin": Reward(lambda samples: -np.abs(np.asarray(samples)).sum(1), "minus the distance to 0",
                                 max_value=0.0)}


#: A plugin's reward for its own domain only.
LINE_LENGTH = RewardEntry(Reward(lambda samples: np.abs(np.asarray(samples)).sum(1), "distance from 0"),
                          domain="line")
#: A plugin's reward that every domain offers.
FIRST_COORDINATE = Reward(lambda samples: np.asarray(samples)[:, 0], "the first coordinate", max_value=None)


def build_plugin_algorithm(config: AlgorithmConfig, total_steps: int, domain: Any) -> Algorithm:
    """A plugin's algorithm: pre-training under another name."""
    return Pretrain()


@pytest.fixture
def fresh(monkeypatch) -> None:
    """Registries as a new process finds them: rgdm's own, entry points not yet discovered."""
    for kind in ("domains", "algorithms", "rewards", "commands"):
        monkeypatch.setattr(registry, kind, dataclasses.replace(getattr(registry, kind)))


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch, fresh) -> Path:
    """A distribution installed nowhere: a ``*.dist-info`` folder on ``sys.path`` whose entry points name
    the domain, rewards and algorithm of this module, as a separate package's ``pyproject.toml`` would."""
    info = tmp_path / "rgdm_line_plugin-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rgdm-line-plugin\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(
        f"[rgdm.domains]\nline = {__name__}:LineDomain\n\n"
        f"[rgdm.rewards]\nline-length = {__name__}:LINE_LENGTH\nfirst-coordinate = {__name__}:FIRST_COORDINATE\n\n"
        f"[rgdm.algorithms]\nplugin-pretrain = {__name__}:build_plugin_algorithm\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_rgdm_domains_and_algorithms_are_registered():
    assert {"toy", "molecules", "shapes"} <= set(registry.domains.names())
    assert set(BUILTIN_ALGORITHMS) <= set(registry.algorithms.names())
    assert registry.domains.source("toy") == registry.algorithms.source("rgdm-data") == "rgdm"
    assert isinstance(build_domain({"name": "toy"}), ToyDomain)


@pytest.mark.parametrize("name", BUILTIN_ALGORITHMS)
def test_every_registered_algorithm_builds(name):
    algorithm = make_algorithm(AlgorithmConfig(name=name), total_steps=100, domain=ToyDomain())
    assert isinstance(algorithm, Algorithm) and algorithm.name == name


def test_unknown_names_are_errors_that_list_what_is_registered(fresh):
    with pytest.raises(RegistryError, match=r"unknown domain 'toi' \(did you mean 'toy'\?\); available: "
                                            r"molecules, shapes, toy\. .*'rgdm\.domains'"):
        build_domain({"name": "toi"})
    with pytest.raises(ValueError, match="domain options need a name; available: molecules, shapes, toy"):
        build_domain({})
    with pytest.raises(ConfigError, match=r"algorithm\.name: .*unknown algorithm 'rgdm-dta' \(did you mean "
                                          r"'rgdm-data'\?\); available: cfg, ddpo, pretrain, rgdm-data"):
        load_config(None, ["algorithm.name=rgdm-dta"])


def test_the_cli_offers_the_registered_algorithms(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--algorithm", "rgdm-dta"])
    assert "choose from " + ", ".join(f"'{name}'" for name in registry.algorithms.names()) in capsys.readouterr().err


def test_code_registrations_are_found_by_name(fresh):
    @register_domain("line")
    class Line(LineDomain):
        pass

    register_algorithm("plugin-pretrain", build_plugin_algorithm)
    register_reward("first-coordinate", FIRST_COORDINATE)
    register_reward("line-length", LINE_LENGTH.reward, domain="line")
    register_reward("scaled", lambda domain: Reward(lambda samples: np.ones(len(samples)), f"one on {domain.name}"))

    line = build_domain({"name": "line"})
    assert isinstance(line, Line) and registry.domains.source("line") == "register_domain()"
    config = load_config(None, ["algorithm.name=plugin-pretrain"]).algorithm
    assert isinstance(make_algorithm(config, 10, line), Pretrain)
    assert set(registry.rewards_for(line)) == {"origin", "first-coordinate", "line-length", "scaled"}
    toy = ToyDomain()
    assert set(registry.rewards_for(toy)) == set(toy.rewards()) | {"first-coordinate", "scaled"}
    assert registry.rewards_for(toy)["scaled"].description == "one on toy"
    assert resolve_reward("first-coordinate", registry.rewards_for(toy)) is FIRST_COORDINATE


def test_a_domains_own_reward_wins_over_a_registered_one_of_the_same_name(fresh):
    register_reward("region", FIRST_COORDINATE)
    toy = ToyDomain()
    assert registry.rewards_for(toy)["region"] is toy.rewards()["region"]


def test_bad_registrations_are_clear_errors(fresh):
    with pytest.raises(RegistryError, match=r"domain 'toy' is already registered \(rgdm\); choose another name"):
        register_domain("toy", LineDomain)
    with pytest.raises(RegistryError, match="algorithm 'broken' must be a factory"):
        register_algorithm("broken", 3)
    with pytest.raises(RegistryError, match="may not hold ':'"):
        register_reward("smarts:c", FIRST_COORDINATE)
    with pytest.raises(RegistryError, match=r"must be a rgdm\.rewards\.Reward"):
        register_reward("number", 3)  # type: ignore[arg-type]
    register_reward("not-a-reward", lambda domain: 1.0)
    with pytest.raises(RegistryError, match=r"returned a float, not a rgdm\.rewards\.Reward"):
        registry.rewards_for(ToyDomain())


def test_entry_points_are_imported_only_when_looked_up(tmp_path, monkeypatch, fresh):
    info = tmp_path / "rgdm_missing-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rgdm-missing\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[rgdm.domains]\nghost = rgdm_no_such_module:Ghost\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "ghost" in registry.domains.names()
    assert build_domain({"name": "toy"}).name == "toy"
    with pytest.raises(RegistryError, match=r"domain 'ghost' from rgdm-missing 1\.0 failed to load: "
                                            r"ModuleNotFoundError: No module named 'rgdm_no_such_module'"):
        build_domain({"name": "ghost"})


def test_an_entry_point_plugin_domain_and_reward_are_found_by_rgdm_list(plugin, capsys):
    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    line = listing["domains"]["line"]
    assert line["source"] == "rgdm-line-plugin 0.3"
    assert line["rewards"]["origin"] == {"description": "minus the distance to 0", "max_value": 0.0,
                                         "argument": False, "differentiable": False, "source": "domain"}
    assert line["rewards"]["line-length"]["source"] == "rgdm-line-plugin 0.3"
    assert line["rewards"]["first-coordinate"]["source"] == "rgdm-line-plugin 0.3"
    toy = listing["domains"]["toy"]
    assert toy["source"] == "rgdm" and {"region", "first-coordinate"} <= set(toy["rewards"])
    assert "line-length" not in toy["rewards"]
    assert listing["domains"]["molecules"]["rewards"]["smarts"]["argument"] is True
    assert listing["algorithms"]["plugin-pretrain"] == {"source": "rgdm-line-plugin 0.3"}
    assert listing["algorithms"]["rgdm-data"] == {"source": "rgdm"}
    assert listing["checkpoints"]["toy-ring-pretrained"] == {"domain": "toy", "algorithm": "pretrain",
                                                             "steps": 6000}

    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "  line [rgdm-line-plugin 0.3]\n" in text
    assert "    line-length [rgdm-line-plugin 0.3]: distance from 0\n" in text
    assert "    smarts:ARG: " in text and "  plugin-pretrain [rgdm-line-plugin 0.3]\n" in text


def test_a_plugin_reward_scores_its_domain_and_a_plugin_algorithm_is_configurable(plugin):
    line = build_domain({"name": "line"})
    reward = resolve_reward("line-length", registry.rewards_for(line))
    assert list(reward.fn(line.decode([[3.0, -4.0]], None))) == [7.0]
    config = load_config(None, ["algorithm.name=plugin-pretrain"]).algorithm
    assert isinstance(make_algorithm(config, 10, line), Pretrain)


def test_rgdm_list_names_a_domain_it_cannot_build_and_why(fresh, capsys):
    def needs_a_file(options: dict[str, Any]) -> LineDomain:
        raise ValueError("domain.path is required")

    register_domain("from-file", needs_a_file)
    assert main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["domains"]["from-file"] == {
        "source": "register_domain()", "error": "ValueError: domain.path is required"}


def test_a_domains_commands_join_the_command_line(fresh, capsys):
    def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        hello = commands.add_parser("line-hello", help="greet from the line domain")
        hello.add_argument("--name", default="line")
        hello.set_defaults(func=lambda args: print(f"hello from {args.name}"))

    register_commands("line", add_commands)
    assert registry.commands.source("molecules") == "rgdm", "the molecules add train-predictor"
    assert main(["line-hello", "--name", "x"]) == 0 and capsys.readouterr().out == "hello from x\n"


def test_a_plugins_broken_commands_are_left_out_and_the_rest_still_run(tmp_path, monkeypatch, fresh, caplog):
    info = tmp_path / "rgdm_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rgdm-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[rgdm.commands]\nghost = rgdm_no_such_module:add_commands\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="rgdm.cli"):
        parser = build_parser()
    assert ("the commands of domain 'ghost' are left out: commands 'ghost' from rgdm-broken 1.0 failed to load: "
            "ModuleNotFoundError") in caplog.text
    assert parser.parse_args(["train-predictor", "--property", "mu", "--split", "train_b", "--out", "x"]).steps == 6000
