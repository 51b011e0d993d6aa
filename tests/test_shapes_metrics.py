"""Shape metrics on cases with known answers: CD, EMD, pairwise tables, MMD, COV and 1-NNA."""

import numpy as np
import pytest
import torch

from rgdm.domains.shapes.metrics import (
    chamfer_distance,
    earth_movers_distance,
    mmd_cov_1nna,
    pairwise_distances,
)


def noisy_spheres(count, points, radius=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(count, points, 3, generator=generator)
    spheres = radius * directions / directions.norm(dim=-1, keepdim=True)
    return spheres + 0.02 * torch.randn(count, points, 3, generator=generator)


def cube_surfaces(count, points, seed=0):
    generator = torch.Generator().manual_seed(seed)
    cubes = torch.rand(count, points, 3, generator=generator) * 2 - 1
    face_axis = torch.randint(0, 3, (count, points), generator=generator)
    face_side = torch.randint(0, 2, (count, points), generator=generator).float() * 2 - 1
    return cubes.scatter(2, face_axis.unsqueeze(-1), face_side.unsqueeze(-1))


def test_identical_clouds_are_at_distance_zero():
    clouds = noisy_spheres(3, 64)
    np.testing.assert_allclose(chamfer_distance(clouds, clouds), 0.0, atol=1e-6)
    np.testing.assert_allclose(earth_movers_distance(clouds, clouds), 0.0, atol=1e-9)


def test_chamfer_matches_a_hand_computed_case():
    x = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    y = torch.tensor([[[0.0, 0, 0], [0, 2, 0], [3, 0, 0]]])
    # x->y squared nearest distances: 0, 1; y->x: 0, 4, 4.
    assert chamfer_distance(x, y).item() == pytest.approx(0.5 + 8 / 3)


def test_emd_of_a_translated_copy_is_the_translation_length():
    clouds = noisy_spheres(2, 100).double()
    shift = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64)
    np.testing.assert_allclose(earth_movers_distance(clouds, clouds + shift), shift.norm().item(), rtol=1e-9)
    # Numpy in, the same answer.
    assert earth_movers_distance(clouds.numpy(), (clouds + shift).numpy())[0].item() == pytest.approx(1.3)


def test_pairwise_distances_match_the_direct_computation():
    samples, refs = noisy_spheres(5, 32, seed=1), noisy_spheres(7, 32, radius=1.5, seed=2)
    for metric, distance in (("cd", chamfer_distance), ("emd", earth_movers_distance)):
        table = pairwise_distances(samples, refs, metric, batch=3)
        assert table.shape == (5, 7)
        direct = distance(samples.repeat_interleave(7, 0), refs.repeat(5, 1, 1)).view(5, 7)
        np.testing.assert_allclose(table, direct, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="unknown metric"):
        pairwise_distances(samples, refs, "hausdorff")


def test_metrics_of_a_set_against_itself():
    clouds = noisy_spheres(10, 32)
    for metric in ("cd", "emd"):
        result = mmd_cov_1nna(clouds, clouds, metric)
        assert result[f"mmd_{metric}"] == pytest.approx(0.0, abs=1e-6)
        assert result[f"cov_{metric}"] == 1.0
        assert result[f"spread_{metric}"] == result[f"reference_spread_{metric}"] > 0


def test_one_nna_is_near_half_for_one_distribution():
    samples, refs = noisy_spheres(40, 128, seed=1), noisy_spheres(40, 128, seed=2)
    result = mmd_cov_1nna(samples, refs, "cd")
    assert set(result) == {"mmd_cd", "cov_cd", "1nna_cd", "spread_cd", "reference_spread_cd"}
    assert result["spread_cd"] == pytest.approx(result["reference_spread_cd"], rel=0.2)
    assert abs(result["1nna_cd"] - 0.5) <= 0.15
    assert result["cov_cd"] > 0.3


@pytest.mark.parametrize(
    "other",
    [lambda: cube_surfaces(20, 64, seed=3), lambda: noisy_spheres(20, 64, radius=1.2, seed=3)],
    ids=["cubes", "bigger-spheres"],
)
def test_one_nna_is_near_one_for_disjoint_distributions(other):
    spheres = noisy_spheres(20, 64, seed=4)
    assert mmd_cov_1nna(spheres, other(), "cd")["1nna_cd"] >= 0.95
    assert mmd_cov_1nna(spheres[:10], other()[:10], "emd")["1nna_emd"] >= 0.95


def test_mmd_grows_with_the_gap_between_distributions():
    refs = noisy_spheres(10, 64, seed=5)
    close = mmd_cov_1nna(noisy_spheres(10, 64, radius=1.05, seed=6), refs)["mmd_cd"]
    far = mmd_cov_1nna(noisy_spheres(10, 64, radius=1.5, seed=6), refs)["mmd_cd"]
    assert 0 < close < far


def test_spread_shows_samples_that_collapsed_onto_one_shape():
    refs = noisy_spheres(20, 64, seed=4)
    collapsed = refs[:1].repeat(20, 1, 1)
    result = mmd_cov_1nna(collapsed, refs, "cd")
    assert result["spread_cd"] == pytest.approx(0.0, abs=1e-6) and result["reference_spread_cd"] > 1e-3
