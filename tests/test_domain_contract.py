"""The contract every domain keeps with the engine, checked alike for each (diffusers' ``SchedulerCommonTest``
pattern): the toy, molecules (point cloud and bonds), shapes and the guide's minimal domain
(``tests/minimal_domain.py``), each with small options so that the whole file takes seconds.

Then the minimal domain goes through the engine end to end: pre-training, a fine-tune with its reward,
and ``rgdm sample`` and ``rgdm evaluate``, as ``docs/adding-a-domain.md`` promises a newcomer.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from minimal_domain import CircleDomain
from tensordict import TensorDict

from rgdm import registry
from rgdm.batch import Batch
from rgdm.cli import main
from rgdm.domains import build_domain
from rgdm.domains.base import Domain, SupportsTargets
from rgdm.engine import Trainer, load_config
from rgdm.engine.builder import make_diffusion, seeded_generator
from rgdm.engine.config import DiffusionConfig
from rgdm.rewards import Reward

ROWS = 4
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    """A domain's small options and network, and the rewards too slow to build here (with the reason)."""

    options: dict[str, Any]
    network: dict[str, Any]
    slow_rewards: dict[str, str] = field(default_factory=dict)


CASES = {
    "toy": Case({"name": "toy", "train_size": 64}, {"width": 16, "depth": 1}),
    "molecules": Case({"name": "molecules", "subset": 16}, {"hidden": 16, "layers": 1}),
    "molecules-bonds": Case({"name": "molecules", "bonds": True, "hydrogens": False, "subset": 16},
                            {"hidden": 16, "layers": 1, "edge_hidden": 8}),
    "shapes": Case({"name": "shapes", "per_class": 2, "num_points": 64},
                   {"width": 16, "depth": 1, "neighbours": 4, "edge_width": 8},
                   {"class-pointnet": "trains a PointNet for about a minute; test_shapes_domain.py covers it"}),
    "circle": Case({"name": "circle", "train_size": 64}, {"width": 16}),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request) -> tuple[Case, Domain]:
    """A contract case and its domain, built by name through the domain registry as the engine builds it."""
    case = CASES[request.param]
    return case, build_domain(case.options)


def parts(x: torch.Tensor | TensorDict) -> dict[str, torch.Tensor]:
    """The tensors of a sample: its parts, or the sample itself."""
    return dict(x.items()) if isinstance(x, TensorDict) else {"x": x}


def shapes(x: torch.Tensor | TensorDict) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value.shape) for name, value in parts(x).items()}


def targets(domain: Domain) -> torch.Tensor | None:
    """Every target in turn, for a domain that takes targets."""
    if isinstance(domain, SupportsTargets) and domain.num_targets > 0:
        return torch.arange(ROWS) % domain.num_targets
    return None


def test_every_builtin_domain_has_a_contract_case():
    covered = {case.options["name"] for case in CASES.values()}
    assert set(registry.BUILTIN_DOMAINS) <= covered, "give every domain a case with small options here"


def test_prior_batch_is_zero_with_the_data_shape_masks_and_targets(case):
    _, domain = case
    data, cond = domain.dataset(), targets(domain)
    prior = domain.prior_batch(ROWS, seeded_generator(0), cond)
    assert len(prior) == ROWS
    assert {name: shape[1:] for name, shape in shapes(prior.x).items()} == {
        name: shape[1:] for name, shape in shapes(data.x).items()}, "a prior row has the shape of a data row"
    assert all(not value.any() for value in parts(prior.x).values()), "sampling starts from zeros"
    assert (prior.cond is None) == (cond is None) and (cond is None or torch.equal(prior.cond, cond))
    assert (prior.mask is None) == (data.mask is None), "masks where the data has them"
    if prior.mask is not None:
        assert prior.mask.shape == (ROWS, data.mask.shape[1])
        assert set(prior.mask.unique().tolist()) <= {0, 1} and (prior.mask.sum(1) >= 1).all()


def test_decode_gives_one_object_per_row(case):
    _, domain = case
    data = domain.dataset().select(torch.arange(ROWS))
    prior = domain.prior_batch(ROWS, seeded_generator(0))
    assert len(domain.decode(data.x, data.mask)) == ROWS
    assert len(domain.decode(prior.x, prior.mask)) == ROWS


def test_projection_is_linear_idempotent_and_keeps_padding_zero(case):
    _, domain = case
    diffusion = make_diffusion(DiffusionConfig(timesteps=10), domain)
    prior, generator = domain.prior_batch(ROWS, seeded_generator(0)), seeded_generator(1)
    a, b = (diffusion.standard_normal((ROWS,), prior.x, generator).double() for _ in range(2))
    onto = diffusion.onto_sample_space
    projected = onto(a, prior.mask)
    for name, value in parts(onto(projected, prior.mask) - projected).items():
        torch.testing.assert_close(value, torch.zeros_like(value), msg=f"{name}: not idempotent")
    for name, value in parts(onto(2 * a - 3 * b, prior.mask) - (2 * projected - 3 * onto(b, prior.mask))).items():
        torch.testing.assert_close(value, torch.zeros_like(value), msg=f"{name}: not linear")
    if prior.mask is not None:
        for name, value in parts(projected).items():
            assert not value[~prior.mask.bool()].any(), f"{name}: padding rows are not zero"
    assert (diffusion.dof(prior.x, prior.mask) > 0).all()


def test_denoiser_predicts_noise_of_the_sample_shape(case):
    config, domain = case
    prior, cond = domain.prior_batch(ROWS, seeded_generator(0), targets(domain)), targets(domain)
    diffusion = make_diffusion(DiffusionConfig(timesteps=10), domain)
    x = diffusion.noise_like(prior.x, prior.mask, seeded_generator(1))
    with torch.no_grad():
        eps = domain.build_network(config.network)(x, torch.rand(ROWS), cond, prior.mask)
    assert shapes(eps) == shapes(x)
    assert all(torch.isfinite(value).all() for value in parts(eps).values())


def test_rewards_give_one_finite_or_nan_value_per_sample(case):
    config, domain = case
    data = domain.dataset().select(torch.arange(ROWS))
    decoded = domain.decode(data.x, data.mask)
    checked = {name: reward for name, reward in domain.rewards().items()
               if reward.fn is not None and name not in config.slow_rewards}
    assert checked, "a domain offers at least one reward"
    for name, reward in checked.items():
        values = np.asarray(reward.fn(decoded), dtype=float)
        assert values.shape == (ROWS,), name
        assert not np.isinf(values).any(), f"{name} answered inf: a reward is finite, or NaN where it cannot score"


def test_config_round_trips_through_the_constructor_and_json(case):
    _, domain = case
    config = domain.config()
    assert config["name"] == domain.name
    again = type(domain)(json.loads(json.dumps(config)))
    assert again.config() == config
    assert type(build_domain(config)) is type(domain)


def test_the_guide_quotes_the_minimal_domain_as_it_is():
    guide = (ROOT / "docs" / "adding-a-domain.md").read_text(encoding="utf-8")
    source = (ROOT / "tests" / "minimal_domain.py").read_text(encoding="utf-8")
    quoted = re.search(r'^```python title="tests/minimal_domain.py"\n(.*?^)```$', guide, re.DOTALL | re.MULTILINE)
    assert quoted is not None and quoted.group(1) == source, "paste tests/minimal_domain.py into the guide again"
    assert len(source.splitlines()) <= 120, "the guide's domain stays short"


def test_the_minimal_domain_trains_fine_tunes_samples_and_evaluates_through_the_engine(tmp_path):
    tiny = ["domain.name=circle", "domain.train_size=256", "network.width=16", "diffusion.timesteps=10",
            "train.batch_size=32", "train.lr=1e-2", "train.log_every=5"]
    Trainer(load_config(None, [*tiny, "train.steps=30"]), tmp_path / "pretrained").fit(progress=False)
    tuned = load_config(None, [*tiny, f"init={tmp_path / 'pretrained'}", "algorithm.name=rgdm-data",
                               "algorithm.scored_size=64", "reward.name=height", "train.steps=5"])
    trainer = Trainer(tuned, tmp_path / "tuned")
    trainer.fit(progress=False)
    assert isinstance(trainer.domain, CircleDomain) and trainer.counter.calls > 0

    out, report = tmp_path / "samples", tmp_path / "metrics.json"
    assert main(["-q", "sample", "--checkpoint", str(tmp_path / "tuned"), "-n", "16", "--steps", "10",
                 "--out", str(out)]) == 0
    assert {"samples.npz", "sample.json", "samples.png"} <= {path.name for path in out.iterdir()}
    assert main(["-q", "evaluate", str(out), "--json", str(report)]) == 0
    metrics = json.loads(report.read_text())
    assert metrics["reward"] == "height" and metrics["n"] == 16 and metrics["finite"] == 1.0
    assert metrics["reward_valid"] == 1.0 and math.isfinite(metrics["mean_reward"])


class FragileCircle(CircleDomain):
    """The circle with a reward that raises on any batch holding a point of the right half."""

    def rewards(self) -> dict[str, Reward]:
        def fragile(points: np.ndarray) -> np.ndarray:
            if (points[:, 0] > 0).any():
                raise RuntimeError("no licence for the right half")
            return points[:, 1]

        return {"fragile": Reward(fragile, "the height, left of the axis only")}


def test_evaluate_scores_through_the_isolated_reward():
    """A reward that raises on a sample loses that sample only, in ``evaluate`` as in training."""
    samples = Batch(torch.tensor([[0.0, 1.0], [-1.0, 0.0], [1.0, 0.0], [-0.6, -0.8]]))
    metrics = FragileCircle().evaluate(samples, "fragile", None, seeded_generator(0))
    assert metrics["reward_valid"] == 0.75
    assert metrics["mean_reward"] == pytest.approx((1.0 + 0.0 - 0.8) / 3)
    assert metrics["n"] == 4 and metrics["finite"] == 1.0
