"""Fixed-length hand-made features of point clouds, for the shape classifiers and attribute rewards.

Clouds are arrays ``(n, N, 3)`` with y up. The features are deliberately *not* rotation invariant:
which way is up tells a chair from a table. Everything is vectorised over the batch, and a cloud's
features never depend on the other clouds in its batch.
"""

from __future__ import annotations

import numpy as np

#: Pairs of points whose distances make the D2 shape distribution; drawn once per cloud size.
D2_PAIRS = 2048
D2_SEED = 0
D2_BINS = 16
#: D2 distances are divided by the cloud's RMS radius; a needle reaches sqrt(12) ≈ 3.46.
D2_RANGE = 3.5
HEIGHT_BINS = 16
RING_BINS = 6
RING_BANDS = 4
#: Guards the ratios of degenerate (flat or single-point) clouds.
EPS = 1e-8


def _as_batch(points: np.ndarray) -> np.ndarray:
    """``points`` as finite float64 ``(n, N, 3)``; computing in float64 keeps squares of large floats finite."""
    batch = np.asarray(points, dtype=np.float64)
    if batch.ndim != 3 or batch.shape[2] != 3 or batch.shape[1] == 0:
        raise ValueError(f"expected point clouds of shape (n, N, 3) with N > 0, got {batch.shape}")
    if not np.isfinite(batch).all():
        raise ValueError("point clouds must be finite")
    return batch


def _row_counts(index: np.ndarray, bins: int) -> np.ndarray:
    """Per-row fractions of the integer bin indices ``index (n, m)`` falling in each of ``bins`` bins."""
    n, m = index.shape
    offsets = bins * np.arange(n)[:, None]
    counts = np.bincount((index + offsets).ravel(), minlength=n * bins)
    return counts.reshape(n, bins) / m


def _bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    """Bins of ``values`` scaled to [0, 1]; the top edge and anything beyond join the last bin."""
    return np.clip((values * bins).astype(np.int64), 0, bins - 1)


def height_width_ratio(points: np.ndarray) -> np.ndarray:
    """Height (y extent) over the larger horizontal (x or z) extent, per cloud: ``(n, N, 3) -> (n,)``."""
    batch = _as_batch(points)
    extents = batch.max(axis=1) - batch.min(axis=1)
    return extents[:, 1] / np.maximum(np.maximum(extents[:, 0], extents[:, 2]), EPS)


def shape_descriptors(points: np.ndarray) -> np.ndarray:
    """Features ``(n, F)`` of clouds ``(n, N, 3)``; F is the same for every N.

    In order: bounding-box extents (3); height / larger horizontal extent and smaller / larger
    horizontal extent (2); PCA eigenvalues, largest first, and their shares (3 + 3); the D2 histogram
    of distances between fixed random point pairs over the RMS radius (16); the histogram of heights
    within the box (16); and the histogram of horizontal radius over the farthest, in 6 rings for each
    of 4 height bands (24).
    """
    batch = _as_batch(points)
    num_points = batch.shape[1]
    extents = batch.max(axis=1) - batch.min(axis=1)
    horizontal_max = np.maximum(np.maximum(extents[:, 0], extents[:, 2]), EPS)
    horizontal_min = np.minimum(extents[:, 0], extents[:, 2])
    ratios = np.stack([extents[:, 1] / horizontal_max, horizontal_min / horizontal_max], axis=1)

    centred = batch - batch.mean(axis=1, keepdims=True)
    covariance = np.einsum("nij,nik->njk", centred, centred) / num_points
    eigenvalues = np.clip(np.linalg.eigvalsh(covariance)[:, ::-1], 0.0, None)
    total_variance = eigenvalues.sum(axis=1, keepdims=True)
    shares = eigenvalues / np.maximum(total_variance, EPS)
    rms_radius = np.sqrt(np.maximum(total_variance, EPS))

    first, second = np.random.default_rng(D2_SEED).integers(0, num_points, size=(2, D2_PAIRS))
    distances = np.linalg.norm(batch[:, first] - batch[:, second], axis=2) / rms_radius
    d2 = _row_counts(_bin_index(distances / D2_RANGE, D2_BINS), D2_BINS)

    heights = (batch[:, :, 1] - batch[:, :, 1].min(axis=1, keepdims=True)) / np.maximum(extents[:, 1:2], EPS)
    height_histogram = _row_counts(_bin_index(heights, HEIGHT_BINS), HEIGHT_BINS)

    radius = np.hypot(centred[:, :, 0], centred[:, :, 2])
    radius = radius / np.maximum(radius.max(axis=1, keepdims=True), EPS)
    ring_cell = _bin_index(heights, RING_BANDS) * RING_BINS + _bin_index(radius, RING_BINS)
    rings = _row_counts(ring_cell, RING_BANDS * RING_BINS)

    features = [extents, ratios, eigenvalues, shares, d2, height_histogram, rings]
    return np.concatenate(features, axis=1)


def box_aspect(points: np.ndarray) -> np.ndarray:
    """Bounding-box extents over the largest one, per cloud: ``(n, N, 3) -> (n, 3)``."""
    batch = _as_batch(points)
    extents = batch.max(axis=1) - batch.min(axis=1)
    return extents / np.maximum(extents.max(axis=1, keepdims=True), EPS)


def voxel_occupancy(points: np.ndarray, resolution: int = 8) -> np.ndarray:
    """Share of each cloud's points in each cell of a ``resolution³`` grid over its bounding box: ``(n, R³)``.

    Each axis of the box is stretched to the grid on its own, so the grid sees the form whatever the
    size and aspect (``box_aspect`` keeps those); trees then find the same cells filled across a class.
    A feature set unrelated to ``shape_descriptors``, for an independent measuring classifier.
    """
    batch = _as_batch(points)
    low, high = batch.min(axis=1, keepdims=True), batch.max(axis=1, keepdims=True)
    unit = (batch - low) / np.maximum(high - low, EPS)  # in [0, 1]
    cell = _bin_index(unit, resolution)
    flat = (cell[:, :, 0] * resolution + cell[:, :, 1]) * resolution + cell[:, :, 2]
    return _row_counts(flat, resolution**3)
