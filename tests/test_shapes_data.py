"""Shape data: procedural categories, PointFlow normalisation, the PC15k loader and the shipped real airplanes."""

import json

import numpy as np
import pytest

from rgdm.domains.shapes.datasets import ShapeDataError, load_pc15k, load_real_airplanes, pointflow_normalize
from rgdm.domains.shapes.procedural import CATEGORIES, procedural_dataset, sample_shape

PART_ATTRIBUTES = {
    "airplane": {"wing_sweep_deg", "engines", "wing_span", "t_tail"},
    "chair": {"legs", "armrests", "seat_height"},
    "car": {"wheelbase", "wheel_radius"},
    "table": {"round_top", "legs"},
    "lamp": {"bent", "shade_radius"},
}


def test_procedural_dataset_is_deterministic_in_its_seed():
    first, again = procedural_dataset(2, seed=3, num_points=256), procedural_dataset(2, seed=3, num_points=256)
    other = procedural_dataset(2, seed=4, num_points=256)
    np.testing.assert_array_equal(first.points, again.points)
    assert first.attributes == again.attributes
    assert not np.allclose(first.points, other.points)


def test_procedural_dataset_shapes_labels_and_normalisation():
    shapes = procedural_dataset(3, num_points=300)
    assert shapes.points.shape == (15, 300, 3) and shapes.points.dtype == np.float32
    assert shapes.labels.dtype == np.int64 and shapes.labels.tolist() == [i for i in range(5) for _ in range(3)]
    assert shapes.categories == CATEGORIES and len(shapes) == 15
    np.testing.assert_allclose(shapes.points.reshape(-1, 3).mean(axis=0), 0.0, atol=1e-5)
    # PointFlow's std is over all coordinates flattened, around their one overall mean, so the normalised
    # std is 1 up to the spread of the three per-axis means.
    assert shapes.points.std() == pytest.approx(1.0, abs=1e-2)
    assert [a["category"] for a in shapes.attributes] == [CATEGORIES[label] for label in shapes.labels]
    raw = shapes.denormalize(shapes.points)
    assert np.linalg.norm(np.ptp(raw[0], axis=0)) == pytest.approx(1.0, abs=1e-5)  # unit bounding-box diagonal


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_reports_its_parts(category):
    rng = np.random.default_rng(0)
    for _ in range(5):
        points, attributes = sample_shape(category, rng, num_points=400)
        assert points.shape == (400, 3) and points.dtype == np.float32 and np.isfinite(points).all()
        assert attributes["category"] == category
        assert PART_ATTRIBUTES[category] <= attributes.keys()
        height, width = np.ptp(points[:, 1]), max(np.ptp(points[:, 0]), np.ptp(points[:, 2]))
        assert attributes["height_width_ratio"] == pytest.approx(height / width, rel=1e-4)
        json.dumps(attributes)


def test_part_counts_vary_as_documented():
    shapes = procedural_dataset(40, num_points=64)
    values = {}
    for attributes in shapes.attributes:
        for key in ("engines", "legs", "armrests", "bent", "round_top"):
            if key in attributes:
                values.setdefault((attributes["category"], key), set()).add(attributes[key])
    assert values[("airplane", "engines")] == {0, 2, 4}
    assert values[("chair", "armrests")] == {True, False} and 4 in values[("chair", "legs")]
    assert values[("table", "legs")] == {1, 3, 4} and values[("table", "round_top")] == {True, False}
    assert values[("lamp", "bent")] == {True, False}


def test_armrests_put_points_above_the_seat_at_the_front():
    """Without armrests everything above the seat is the back, at -z; armrests reach forward (+z)."""
    rng = np.random.default_rng(1)
    fractions = {True: [], False: []}
    while min(len(found) for found in fractions.values()) < 4:
        points, attributes = sample_shape("chair", rng, num_points=2000)
        floor = points[:, 1].min()
        above_seat_front = (points[:, 1] > floor + attributes["seat_height"] + 0.02) & (points[:, 2] > 0)
        fractions[attributes["armrests"]].append(above_seat_front.mean())
    assert max(fractions[False]) == 0.0
    assert min(fractions[True]) > 0.01


def test_pointflow_normalize_uses_one_global_scale():
    points = np.random.default_rng(0).normal([1.0, -2.0, 3.0], [1.0, 2.0, 3.0], size=(4, 50, 3))
    normalised, mean, std = pointflow_normalize(points)
    np.testing.assert_allclose(mean, points.reshape(-1, 3).mean(axis=0))
    assert std == pytest.approx(points.std())
    np.testing.assert_allclose(normalised * std + mean, points, rtol=1e-5, atol=1e-5)


def make_pc15k_tree(root, shapes_per_class=3, points_per_shape=3000):
    rng = np.random.default_rng(0)
    for synset in ("02691156", "03001627"):
        folder = root / synset / "train"
        folder.mkdir(parents=True)
        for index in range(shapes_per_class):
            np.save(folder / f"model{index}.npy", rng.normal(size=(points_per_shape, 3)).astype(np.float32))


def test_load_pc15k_reads_a_tree(tmp_path):
    make_pc15k_tree(tmp_path)
    shapes = load_pc15k(tmp_path, ["airplane", "03001627"], num_points=512, seed=1)
    assert shapes.points.shape == (6, 512, 3) and shapes.points.dtype == np.float32
    assert shapes.labels.tolist() == [0, 0, 0, 1, 1, 1] and shapes.categories == ("airplane", "chair")
    assert shapes.attributes[0] == {"category": "airplane", "synset": "02691156", "model_id": "model0"}
    # Sub-sampled without replacement: every point of a shape is distinct.
    assert len(np.unique(shapes.points[0], axis=0)) == 512
    by_name = load_pc15k(tmp_path, ["airplane", "chair"], num_points=512, seed=1)
    np.testing.assert_array_equal(shapes.points, by_name.points)
    assert len(load_pc15k(tmp_path, "chair", num_points=512, max_per_class=2)) == 2


def test_load_pc15k_errors_name_the_problem(tmp_path):
    with pytest.raises(ShapeDataError, match="does not exist"):
        load_pc15k(tmp_path / "missing", ["airplane"])
    make_pc15k_tree(tmp_path)
    with pytest.raises(ShapeDataError, match="04379243"):
        load_pc15k(tmp_path, ["table"], num_points=512)
    with pytest.raises(ShapeDataError, match="unknown category"):
        load_pc15k(tmp_path, ["sofa"], num_points=512)
    with pytest.raises(ShapeDataError, match="num_points = 4000"):
        load_pc15k(tmp_path, ["airplane"], num_points=4000)
    bad = tmp_path / "02691156" / "train" / "model1.npy"
    np.save(bad, np.zeros((3000, 2), dtype=np.float32))
    with pytest.raises(ShapeDataError, match=r"model1\.npy has shape \(3000, 2\)"):
        load_pc15k(tmp_path, ["airplane"], num_points=512)
    np.save(bad, np.full((3000, 3), np.nan, dtype=np.float32))
    with pytest.raises(ShapeDataError, match="NaN"):
        load_pc15k(tmp_path, ["airplane"], num_points=512)
    np.save(bad, np.array([{"points": 1}], dtype=object))
    with pytest.raises(ShapeDataError, match="not a readable"):
        load_pc15k(tmp_path, ["airplane"], num_points=512)


def test_real_airplanes_are_the_151_shapenetpart_shapes():
    shapes = load_real_airplanes(num_points=1024, seed=0)
    assert shapes.points.shape == (151, 1024, 3) and np.isfinite(shapes.points).all()
    assert shapes.categories == ("airplane",) and set(shapes.labels.tolist()) == {0}
    assert len({a["shape_id"] for a in shapes.attributes}) == 151
    # y is up: airplanes are flat, so the vertical extent is the smallest one.
    extents = np.ptp(shapes.denormalize(shapes.points), axis=1).mean(axis=0)
    assert extents[1] < 0.5 * min(extents[0], extents[2])
    larger = load_real_airplanes(num_points=3000, seed=0)  # above the smallest shape's 2182 points
    assert larger.points.shape == (151, 3000, 3)
