"""Shape descriptors, the three shape classifiers, their pickle-free persistence and the rewards on them.

The data are synthetic: noisy surfaces of spheres, boxes and upright cylinders of random size and
aspect, 256 points each, so the tests depend on nothing but numpy.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from safetensors import safe_open

from rgdm.domains.shapes.classifiers import (
    DescriptorForest,
    PointNetClassifier,
    VoxelBoostingClassifier,
    class_probability_reward,
    height_width_ratio_reward,
    pointnet_log_probability_tensor,
    pointnet_probability_reward,
    train_pointnet,
)
from rgdm.domains.shapes.descriptors import height_width_ratio, shape_descriptors, voxel_occupancy
from rgdm.io import CheckpointError

NUM_POINTS = 256


def _unit_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    directions = rng.normal(size=(n, 3))
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def _sphere(rng: np.random.Generator) -> np.ndarray:
    """A slightly squashed sphere surface."""
    return _unit_directions(rng, NUM_POINTS) * rng.uniform(0.5, 1.5) * rng.uniform(0.8, 1.25, size=3)


def _box(rng: np.random.Generator) -> np.ndarray:
    """A box surface: uniform in the cube, then one coordinate of each point pushed onto a face."""
    cloud = rng.uniform(-1, 1, size=(NUM_POINTS, 3))
    face_axis = rng.integers(0, 3, NUM_POINTS)
    cloud[np.arange(NUM_POINTS), face_axis] = rng.choice([-1.0, 1.0], NUM_POINTS)
    return cloud * rng.uniform(0.3, 1.0, size=3)


def _cylinder(rng: np.random.Generator) -> np.ndarray:
    """An upright cylinder surface with caps."""
    radius, half_height = rng.uniform(0.3, 0.8), rng.uniform(0.3, 1.0)
    angle = rng.uniform(0, 2 * np.pi, NUM_POINTS)
    on_cap = rng.random(NUM_POINTS) < 0.25
    r = np.where(on_cap, radius * np.sqrt(rng.random(NUM_POINTS)), radius)
    y = np.where(on_cap, rng.choice([-1.0, 1.0], NUM_POINTS), rng.uniform(-1, 1, NUM_POINTS)) * half_height
    return np.stack([r * np.cos(angle), y, r * np.sin(angle)], axis=1)


def synthetic_shapes(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clouds ``(3 * per_class, 256, 3)`` float32 of classes sphere (0), box (1), cylinder (2), shifted at random."""
    rng = np.random.default_rng(seed)
    clouds, labels = [], []
    for label, make in enumerate((_sphere, _box, _cylinder)):
        for _ in range(per_class):
            cloud = make(rng)
            clouds.append(cloud + rng.normal(scale=0.01, size=cloud.shape) + rng.normal(scale=0.5, size=3))
            labels.append(label)
    return np.stack(clouds).astype(np.float32), np.array(labels)


@pytest.fixture(scope="module")
def train_set() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_shapes(60, seed=0)


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_shapes(30, seed=1)


@pytest.fixture(scope="module")
def recipe_models(train_set) -> dict[str, DescriptorForest | VoxelBoostingClassifier]:
    points, labels = train_set
    return {"forest": DescriptorForest().fit(points, labels, seed=0),
            "boosting": VoxelBoostingClassifier().fit(points, labels, seed=0)}


@pytest.fixture(scope="module")
def pointnet(train_set) -> PointNetClassifier:
    points, labels = train_set
    return train_pointnet(points, labels, num_classes=3, steps=200, batch_size=16, lr=3e-3, seed=0,
                          points_per_cloud=128, progress=False)


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean())


def test_descriptors_are_deterministic_fixed_length_and_independent_of_the_batch(train_set):
    points = train_set[0][:10]
    features = shape_descriptors(points)
    assert features.shape == (10, 67) and np.isfinite(features).all()
    assert np.array_equal(features, shape_descriptors(points.copy()))
    assert np.array_equal(shape_descriptors(points[3:4])[0], features[3])
    dense = np.repeat(points, 4, axis=1)  # 1024 points of the same shapes
    assert shape_descriptors(dense).shape == (10, 67)
    assert np.allclose(voxel_occupancy(points).sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="finite"):
        shape_descriptors(np.full((1, 5, 3), np.nan))


def test_height_width_ratio_of_a_box():
    corners = np.array([[x, y, z] for x in (0, 2) for y in (0, 3) for z in (0, 1)], dtype=np.float32)
    assert height_width_ratio(corners[None]) == pytest.approx([1.5])


@pytest.mark.parametrize("name", ["forest", "boosting"])
def test_recipe_classifiers_are_accurate_on_held_out_shapes(recipe_models, test_set, name):
    points, labels = test_set
    probabilities = recipe_models[name].predict_proba(points)
    assert probabilities.shape == (len(points), 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert _accuracy(probabilities, labels) >= 0.9


@pytest.mark.parametrize("name", ["forest", "boosting"])
def test_recipe_save_and_load_refits_to_identical_probabilities_without_pickle(recipe_models, test_set, tmp_path,
                                                                                 name):
    model = recipe_models[name]
    data_path, recipe_path = model.save(tmp_path / name)
    assert zipfile.is_zipfile(data_path)  # an .npz of plain arrays, no pickle inside
    with np.load(data_path, allow_pickle=False) as data:
        assert data["features"].shape[0] == data["labels"].shape[0] == 180
    recipe = json.loads(recipe_path.read_text())
    assert recipe["seed"] == 0 and recipe["kind"] == type(model).kind

    loaded = type(model).load(tmp_path / name)
    assert np.array_equal(loaded.predict_proba(test_set[0]), model.predict_proba(test_set[0]))


def test_recipe_load_rejects_tampered_data_and_the_wrong_kind(recipe_models, tmp_path):
    data_path, _ = recipe_models["forest"].save(tmp_path / "forest")
    with pytest.raises(CheckpointError, match="kind"):
        VoxelBoostingClassifier.load(tmp_path / "forest")
    with np.load(data_path, allow_pickle=False) as data:
        features, labels = data["features"], data["labels"]
    np.savez(data_path, features=features, labels=(labels + 1) % 3)
    with pytest.raises(CheckpointError, match="hash"):
        DescriptorForest.load(tmp_path / "forest")


def test_pointnet_is_accurate_on_held_out_shapes(pointnet, test_set):
    points, labels = test_set
    assert _accuracy(pointnet.predict_proba(points), labels) >= 0.8


def test_pointnet_training_is_deterministic_for_a_seed(train_set):
    points, labels = train_set
    first, second = (train_pointnet(points, labels, 3, steps=3, seed=5, progress=False) for _ in range(2))
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name


def test_pointnet_save_and_load_give_identical_probabilities(pointnet, test_set, tmp_path):
    weights_path, config_path = pointnet.save(tmp_path / "pointnet")
    with safe_open(str(weights_path), framework="pt") as weights:
        assert set(weights.keys()) == set(pointnet.state_dict())
    assert json.loads(config_path.read_text())["config"]["num_classes"] == 3
    loaded = PointNetClassifier.load(tmp_path / "pointnet")
    assert np.array_equal(loaded.predict_proba(test_set[0]), pointnet.predict_proba(test_set[0]))


@pytest.mark.parametrize("source", ["forest", "boosting", "pointnet"])
def test_probability_rewards_follow_targets_and_mark_malformed_samples(recipe_models, pointnet, test_set, source):
    if source == "pointnet":
        model, reward = pointnet, pointnet_probability_reward(pointnet)
    else:
        model = recipe_models[source]
        reward = class_probability_reward(model)
    points, labels = test_set
    clouds = list(points[::10])  # 9 clouds, 3 of each class
    targets = list(labels[::10])
    probabilities = model.predict_proba(points[::10])

    default = reward(points[::10])
    assert default.shape == (9,) and np.allclose(default, probabilities[:, 0])
    aimed = reward(clouds, targets)
    assert np.allclose(aimed, probabilities[np.arange(9), targets])
    assert ((aimed >= 0) & (aimed <= 1)).all()

    with_nan = points[0].copy()
    with_nan[5, 1] = np.nan
    fewer_points = points[1][:100]  # a different point count still scores
    malformed = [np.zeros((10, 2)), with_nan, fewer_points, "not a cloud", np.zeros((0, 3)), points[2]]
    values = reward(malformed, [0, 0, 1, 0, 0, 2])
    assert np.isnan(values[[0, 1, 3, 4]]).all()
    assert np.isfinite(values[[2, 5]]).all()


def test_log_probability_tensor_is_differentiable_and_matches_the_probabilities(pointnet, test_set):
    log_probability = pointnet_log_probability_tensor(pointnet)
    x = torch.tensor(test_set[0][:4], requires_grad=True)
    targets = torch.tensor([0, 1, 2, 1])
    values = log_probability(x, targets)
    assert values.shape == (4,) and (values <= 0).all()
    values.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    expected = pointnet.predict_proba(test_set[0][:4])[np.arange(4), targets.numpy()]
    assert np.allclose(values.detach().exp().numpy(), expected, atol=1e-6)
    assert torch.equal(log_probability(x), log_probability(x, torch.zeros(4, dtype=torch.long)))


def test_height_width_ratio_reward():
    tall = np.array([[0, 0, 0], [1, 2, 0], [0, 0, 1]], dtype=np.float32)
    wide = np.array([[0, 0, 0], [4, 1, 0], [0, 0, 1]], dtype=np.float32)
    values = height_width_ratio_reward(2.0)([tall, wide, np.zeros((3, 2))])
    assert values[:2] == pytest.approx([0.0, -1.75])
    assert np.isnan(values[2])
