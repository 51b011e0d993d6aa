"""ShapeNet generation metrics with PointFlow's definitions: Chamfer and Earth mover's distances, MMD, COV, 1-NNA.

Reference: Yang et al., "PointFlow: 3D Point Cloud Generation with Continuous Normalizing Flows" (ICCV 2019),
``metrics/evaluation_metrics.py``. PointFlow evaluates in the data's original frame, so denormalise
``ShapeSet`` points (``ShapeSet.denormalize``) before comparing numbers with published ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import ot
import torch

#: Network-simplex iteration cap: POT's default (100000) can stop early on clouds of several thousand points.
_EMD_MAX_ITERATIONS = 100_000_000


def _as_clouds(clouds: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A (b, n, 3) floating tensor from a tensor or array (gradients are not needed by any metric)."""
    tensor = torch.as_tensor(clouds).detach()
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if tensor.dim() != 3 or tensor.shape[-1] != 3:
        raise ValueError(f"expected point clouds of shape (batch, points, 3), got {tuple(tensor.shape)}")
    return tensor


def chamfer_distance(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> torch.Tensor:
    """PointFlow's Chamfer distance of each pair: mean squared nearest-neighbour distance x->y plus y->x, (b,)."""
    x, y = _as_clouds(x), _as_clouds(y)
    squared = torch.cdist(x, y).square()
    return squared.min(dim=2).values.mean(dim=1) + squared.min(dim=1).values.mean(dim=1)


def earth_movers_distance(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Exact Earth mover's distance of each pair with POT, (b,), in the dtype of ``x``.

    Uniform weights and a Euclidean (not squared) cost: for clouds of equal size the optimal plan is a
    one-to-one matching and the value is the mean matched point distance, PointFlow's EMD. Unequal
    sizes give the 1-Wasserstein distance between the two uniform point distributions.
    """
    x, y = _as_clouds(x), _as_clouds(y)
    if len(x) != len(y):
        raise ValueError(f"x and y must hold as many clouds: {len(x)} vs {len(y)}")
    values = []
    for first, second in zip(x.double().numpy(), y.double().numpy(), strict=True):
        cost = ot.dist(first, second, metric="euclidean")
        values.append(ot.emd2(ot.unif(len(first)), ot.unif(len(second)), cost, numItermax=_EMD_MAX_ITERATIONS))
    return torch.tensor(values, dtype=x.dtype)


_DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cd": chamfer_distance,
    "emd": earth_movers_distance,
}


def pairwise_distances(
    samples: torch.Tensor | np.ndarray, refs: torch.Tensor | np.ndarray, metric: str = "cd", batch: int = 16
) -> torch.Tensor:
    """Distance ("cd" or "emd") of every sample to every reference, (len(samples), len(refs)).

    Each sample meets ``batch`` references at a time, which bounds memory (CD holds batch * n * m floats).
    """
    if metric not in _DISTANCES:
        raise ValueError(f"unknown metric {metric!r}; use one of {sorted(_DISTANCES)}")
    distance = _DISTANCES[metric]
    samples, refs = _as_clouds(samples), _as_clouds(refs)
    rows = []
    for sample in samples:
        chunks = [distance(sample.expand(len(chunk), -1, -1), chunk) for chunk in refs.split(batch)]
        rows.append(torch.cat(chunks))
    return torch.stack(rows)


def _distances_within(clouds: torch.Tensor, metric: str, batch: int) -> torch.Tensor:
    """The symmetric table of distances among ``clouds``, computing each pair once (EMD pairs are costly)."""
    table = torch.zeros(len(clouds), len(clouds), dtype=clouds.dtype)
    for index in range(len(clouds) - 1):
        row = pairwise_distances(clouds[index : index + 1], clouds[index + 1 :], metric, batch)[0]
        table[index, index + 1 :] = row
        table[index + 1 :, index] = row
    return table


def _one_nn_accuracy(sample_sample: torch.Tensor, sample_ref: torch.Tensor, ref_ref: torch.Tensor) -> float:
    """Leave-one-out accuracy of the 1-nearest-neighbour classifier telling samples from references."""
    distances = torch.cat([torch.cat([sample_sample, sample_ref], 1), torch.cat([sample_ref.T, ref_ref], 1)], 0)
    distances.fill_diagonal_(float("inf"))
    is_sample = torch.arange(len(distances)) < len(sample_sample)
    predicted = is_sample[distances.argmin(dim=1)]
    return (predicted == is_sample).double().mean().item()


def mmd_cov_1nna(
    samples: torch.Tensor | np.ndarray, refs: torch.Tensor | np.ndarray, metric: str = "cd", batch: int = 16
) -> dict[str, float]:
    """PointFlow's ``compute_all_metrics`` for one distance: ``mmd_<metric>``, ``cov_<metric>``, ``1nna_<metric>``.

    MMD (lower is better): mean over references of the distance to the closest sample, fidelity.
    COV (higher is better): fraction of references that are the nearest reference of some sample, coverage.
    1-NNA: leave-one-out 1-NN accuracy over samples plus references; 0.5 when generated shapes cannot be
    told from real ones, 1.0 when the two sets are disjoint.
    Spread: ``spread_<metric>`` is the mean distance between two samples and ``reference_spread_<metric>``
    that between two references; a ratio well below 1 means the samples are less varied than the data.
    """
    samples, refs = _as_clouds(samples), _as_clouds(refs)
    sample_ref = pairwise_distances(samples, refs, metric, batch)
    sample_sample = _distances_within(samples, metric, batch)
    ref_ref = _distances_within(refs, metric, batch)
    return {
        f"mmd_{metric}": sample_ref.min(dim=0).values.mean().item(),
        f"cov_{metric}": sample_ref.argmin(dim=1).unique().numel() / sample_ref.shape[1],
        f"1nna_{metric}": _one_nn_accuracy(sample_sample, sample_ref, ref_ref),
        f"spread_{metric}": _mean_off_diagonal(sample_sample),
        f"reference_spread_{metric}": _mean_off_diagonal(ref_ref),
    }


def _mean_off_diagonal(table: torch.Tensor) -> float:
    """The mean distance between two different members of a set (0 for a single member)."""
    n = len(table)
    return table.sum().item() / (n * (n - 1)) if n > 1 else 0.0
