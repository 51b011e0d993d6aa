"""The shapes domain: the point denoiser, options and targets, normalisation, the independent judge, files, sampling.

Small settings throughout (12 shapes per class, 256 points, width 32) so each test takes a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgdm.batch import Batch
from rgdm.diffusion import EpsModel, GaussianDiffusion, NoiseSchedule, sample
from rgdm.domains import build_domain
from rgdm.domains.shapes import domain as shape_domain
from rgdm.domains.shapes.classifiers import VoxelBoostingClassifier
from rgdm.domains.shapes.domain import ShapeDomain
from rgdm.domains.shapes.io import ShapeFileError, write_ply, write_ply_files
from rgdm.domains.shapes.network import PointDenoiser, PointRegressor, nearest_neighbours
from rgdm.domains.shapes.procedural import CATEGORIES, procedural_dataset

NUM_POINTS = 256
SMALL_NETWORK = {"width": 32, "depth": 2, "neighbours": 8, "edge_width": 16}


@pytest.fixture(scope="module")
def domain() -> ShapeDomain:
    return build_domain({"name": "shapes", "per_class": 12, "num_points": NUM_POINTS})


@pytest.fixture(scope="module")
def held_out(domain: ShapeDomain) -> Batch:
    """Six fresh procedural shapes per class (a seed no classifier saw), normalised like the data, labelled."""
    shapes = procedural_dataset(6, seed=123, num_points=NUM_POINTS)
    return Batch(domain.normalize(shapes.denormalize(shapes.points)), cond=torch.as_tensor(shapes.labels))


def randomised(net: torch.nn.Module) -> torch.nn.Module:
    """Every weight random: the zero-initialised output layer would make any test of the output trivial."""
    torch.manual_seed(0)
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    return net.double().eval()


def test_nearest_neighbours_match_a_full_distance_matrix():
    x = torch.randn(2, 300, 3, generator=torch.Generator().manual_seed(0))
    expected = torch.cdist(x, x).topk(5, dim=-1, largest=False).indices.sort(dim=-1).values
    assert torch.equal(nearest_neighbours(x, 5, chunk_elements=2 * 300 * 64).sort(dim=-1).values, expected)


def test_denoiser_is_permutation_equivariant_and_regressor_invariant():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 128, 3, generator=generator, dtype=torch.float64)
    t, cond = torch.rand(3, generator=generator, dtype=torch.float64), torch.tensor([0, 2, 5])
    order = torch.randperm(128, generator=generator)
    denoiser = randomised(PointDenoiser(5, width=32, depth=2, neighbours=8, edge_width=16))
    torch.testing.assert_close(denoiser(x[:, order], t, cond), denoiser(x, t, cond)[:, order])
    regressor = randomised(PointRegressor(5, width=32, depth=2, neighbours=8, edge_width=16))
    torch.testing.assert_close(regressor(x[:, order], t, cond), regressor(x, t, cond))


def test_network_output_shapes_conditioning_and_ignored_mask(domain: ShapeDomain):
    x, t = torch.randn(4, 100, 3), torch.rand(4)
    denoiser = domain.build_network(SMALL_NETWORK)
    assert not denoiser(x, t).detach().any()  # zero-initialised output layer
    denoiser = randomised(denoiser).float()
    eps = denoiser(x, t, torch.tensor([0, 1, 2, 3]))
    assert eps.shape == (4, 100, 3)
    torch.testing.assert_close(denoiser(x, t, torch.tensor([0, 1, 2, 3]), torch.ones(4, 100)), eps)
    assert not torch.allclose(denoiser(x, t, None), eps)
    regressor = domain.build_regressor(SMALL_NETWORK)
    assert regressor(x, t, None).shape == (4,)
    with pytest.raises(ValueError, match="widht"):
        domain.build_network({"widht": 32})


def test_parse_target_takes_names_and_indices_with_errors_listing_the_categories(domain: ShapeDomain):
    assert domain.num_targets == 5
    assert domain.parse_target("chair") == 1
    assert domain.parse_target("3") == 3
    assert domain.parse_target("03636649") == CATEGORIES.index("lamp")  # a synset id
    for bad in ("boat", "5", "-1"):
        with pytest.raises(ValueError, match="0 = airplane, 1 = chair, 2 = car, 3 = table, 4 = lamp"):
            domain.parse_target(bad)
    airplanes = ShapeDomain({"name": "shapes", "source": "airplanes"})
    assert airplanes.categories == ("airplane",) and airplanes.num_targets == 1


@pytest.mark.parametrize("options, message", [
    ({"categories": ["chair", "boat"]}, "procedural categories"),
    ({"categories": []}, "non-empty"),
    ({"source": "airplanes", "categories": ["chair"]}, "only airplanes"),
    ({"source": "pc15k"}, "pc15k_root"),
    ({"pc15k_root": "/data"}, "pc15k_root"),
    ({"num_pionts": 256}, "num_pionts"),
])
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        ShapeDomain({"name": "shapes", **options})


def test_dataset_is_normalised_and_decode_returns_the_object_frame(domain: ShapeDomain):
    data = domain.dataset()
    assert data.x.shape == (60, NUM_POINTS, 3) and data.cond is None
    assert abs(float(data.x.mean())) < 1e-4 and abs(float(data.x.std()) - 1) < 1e-2
    shapes = procedural_dataset(12, seed=0, num_points=NUM_POINTS)
    decoded = domain.decode(data.x, None)
    np.testing.assert_allclose(decoded, shapes.denormalize(shapes.points), atol=1e-5)
    torch.testing.assert_close(domain.normalize(decoded), data.x, atol=1e-5, rtol=0)
    prior = domain.prior_batch(3, torch.Generator(), torch.tensor([0, 1, 2]))
    assert prior.x.shape == (3, NUM_POINTS, 3) and not prior.x.any() and prior.cond.tolist() == [0, 1, 2]


def test_evaluation_judges_classes_with_the_independent_classifier(domain: ShapeDomain, held_out: Batch):
    generator = torch.Generator().manual_seed(0)
    right = domain.evaluate(held_out, None, None, generator)
    assert right["success_rate"] == 1.0
    assert set(right["success_rate_per_class"]) == set(CATEGORIES)
    assert right["class_shares"] == dict.fromkeys(CATEGORIES, 0.2)
    assert {"mmd_cd", "cov_cd", "1nna_cd"} <= set(right) and right["metric_points"] == NUM_POINTS
    wrong = domain.evaluate(Batch(held_out.x, cond=(held_out.cond + 1) % 5), None, None, generator)
    assert wrong["success_rate"] <= 0.4
    # The judge is the voxel model; the reward models were never built to measure.
    assert isinstance(domain.judge, VoxelBoostingClassifier)
    assert "forest" not in vars(domain) and "pointnet" not in vars(domain)


def test_evaluation_reports_the_mean_reward_and_catches_bad_input(domain: ShapeDomain, held_out: Batch):
    generator = torch.Generator().manual_seed(0)
    metrics = domain.evaluate(held_out, "class-forest", None, generator)
    assert metrics["mean_reward"] > 0.8 and metrics["reward_valid"] == 1.0
    broken = held_out.x.clone()
    broken[0, 0, 0] = float("nan")
    metrics = domain.evaluate(Batch(broken, cond=held_out.cond), "height-width", None, generator)
    assert metrics["finite"] == pytest.approx(29 / 30) and metrics["success_rate"] == pytest.approx(29 / 30)
    with pytest.raises(ValueError, match="class-forest, class-pointnet, height-width"):
        domain.evaluate(held_out, "volume", None, generator)
    with pytest.raises(ValueError, match=r"categories 0\.\.4"):
        domain.evaluate(Batch(held_out.x, cond=held_out.cond + 5), None, None, generator)


def test_rewards_score_target_categories_and_only_procedural_ones(domain: ShapeDomain, held_out: Batch):
    clouds = domain.decode(held_out.x, None)
    forest = domain.rewards()["class-forest"]
    right = forest.fn(clouds, held_out.cond.tolist())
    wrong = forest.fn(clouds, ((held_out.cond + 2) % 5).tolist())
    assert right.mean() > 0.8 > 0.2 > wrong.mean() and forest.max_value == 1.0
    height_width = domain.rewards()["height-width"]
    assert (height_width.fn(clouds) <= 0).all() and height_width.max_value == 0.0
    bench = ShapeDomain({"name": "shapes", "source": "pc15k", "pc15k_root": "/none", "categories": ["02828884"]})
    assert set(bench.rewards()) == {"height-width"}


def test_pointnet_reward_trains_once_then_loads_from_the_cache(domain: ShapeDomain, held_out: Batch, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("RGDM_CACHE", str(tmp_path))
    monkeypatch.setattr(shape_domain, "POINTNET_STEPS", 2)
    fresh = ShapeDomain(domain.config())
    reward = fresh.rewards()["class-pointnet"]
    x = held_out.x[:4].clone().requires_grad_(True)
    value = reward.gradient_fn(x, held_out.cond[:4])
    (gradient,) = torch.autograd.grad(value.sum(), x)
    assert value.shape == (4,) and (value <= 0).all() and torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    np.testing.assert_allclose(reward.fn(domain.decode(held_out.x[:4], None), held_out.cond[:4].tolist()),
                               value.detach().exp().numpy(), rtol=1e-4)
    assert len(list((tmp_path / "shapes").glob("pointnet-*.safetensors"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached PointNet should have been loaded")

    monkeypatch.setattr(shape_domain, "train_pointnet", no_training)
    again = ShapeDomain(domain.config()).rewards()["class-pointnet"].gradient_fn(held_out.x[:4], held_out.cond[:4])
    torch.testing.assert_close(again, value.detach())


def test_samples_written_as_ply_read_back(domain: ShapeDomain, held_out: Batch, tmp_path):
    files = domain.save_samples(held_out, tmp_path)
    assert len(files) == 30 and all(file.parent == tmp_path / "ply" for file in files)
    back = domain.read_samples(tmp_path / "ply")
    torch.testing.assert_close(back.x, held_out.x, atol=1e-5, rtol=0)
    write_ply(np.zeros((10, 3)), tmp_path / "ply" / "zz_small.ply")
    with pytest.raises(ShapeFileError, match="different numbers of points"):
        domain.read_samples(tmp_path / "ply")
    with pytest.raises(ShapeFileError, match=r"no \.ply files"):
        domain.read_samples(tmp_path)


def test_plot_draws_a_png_even_with_stray_and_broken_points(domain: ShapeDomain, held_out: Batch, tmp_path):
    strays = held_out.x[:2].clone()
    strays[0, :5] = 1e4
    strays[1, 0] = float("nan")
    path = domain.plot({"held out": held_out, "strays": Batch(strays)}, tmp_path / "shapes.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_untrained_network_samples_finite_clouds(domain: ShapeDomain, tmp_path):
    torch.manual_seed(0)
    model = EpsModel(domain.build_network(SMALL_NETWORK), GaussianDiffusion(NoiseSchedule.create("linear", 20)))
    generator = torch.Generator().manual_seed(0)
    prior = domain.prior_batch(3, generator, torch.tensor([0, 1, 4]))
    x = sample(model, prior.x.shape, steps=5, cond=prior.cond, generator=generator).x0
    clouds = domain.decode(x, None)
    assert clouds.shape == (3, NUM_POINTS, 3) and np.isfinite(clouds).all()
    assert write_ply_files(clouds, tmp_path)[0].is_file()


def test_shape_demo_writes_a_grid_ply_files_and_a_table_per_class(tmp_path):
    from rgdm.benchmarks.demo import run_shape_demo
    from rgdm.engine import Trainer, load_config

    config = load_config(None, ["domain.name=shapes", "domain.categories=[chair, table]", "domain.per_class=4",
                                "domain.num_points=128", "network.width=16", "network.depth=1",
                                "diffusion.timesteps=10", "train.steps=2", "train.batch_size=4"])
    run_dir = Trainer(config, tmp_path / "run").fit(progress=False)
    report = run_shape_demo(tmp_path / "demo", progress=False, checkpoint=str(run_dir), per_class=2, sample_steps=3)
    for category in ("chair", "table"):
        assert (tmp_path / "demo" / f"{category}.png").is_file()
        assert len(list((tmp_path / "demo" / category / "ply").glob("*.ply"))) == 2
        assert 0 <= report[category]["success_rate"] <= 1
    assert (tmp_path / "demo" / "table.md").read_text().count("\n") == 4


def test_the_shipped_class_targeted_model_samples_each_class_as_its_own_condition():
    from rgdm.engine import generate, load_trained
    from rgdm.engine.builder import seeded_generator

    model = load_trained("shapes-rgdm")
    assert model.meta["targets"] == [0, 1, 2, 3, 4] and model.meta["parent"] == "shapes-pretrained"
    x = torch.randn(1, model.domain.options.num_points, 3, generator=torch.Generator().manual_seed(0))
    t = torch.full((1,), 0.5)
    with torch.no_grad():
        per_class = [model.net(x, t, torch.tensor([c])) for c in range(5)]
    assert all(not torch.equal(per_class[0], other) for other in per_class[1:]), "each class is its own condition"
    batch = generate(model, 2, seeded_generator(0), target=model.domain.parse_target("lamp"), steps=2)
    assert batch.x.shape == (2, 2048, 3) and batch.cond.tolist() == [4, 4]
