"""Point cloud data sets: the shared ``ShapeSet`` container, PointFlow's normalisation and the real-data loaders.

Two real sources: PointFlow's ``ShapeNetCore.v2.PC15k`` folder tree (downloaded by the user) and the 151
ShapeNetPart airplanes shipped in ``rgdm/data`` (see ``rgdm/data/README.md`` for their terms).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

#: ShapeNet synset id of each category name (the folder names of PC15k).
SYNSET_IDS = {"airplane": "02691156", "chair": "03001627", "car": "02958343", "table": "04379243", "lamp": "03636649"}

REAL_AIRPLANES_FILE = "shapenetpart_airplane.npz"
_PC15K_LAYOUT = "<root>/<synset id>/<split>/<model id>.npy, each a (15000, 3) float array (PointFlow's PC15k)"


class ShapeDataError(ValueError):
    """Point cloud data that cannot be loaded; the message names the file or folder and what it should be."""


@dataclass(frozen=True)
class ShapeSet:
    """Point clouds with their class labels and per-shape attributes.

    ``points`` are normalised: ``raw = points * std + mean`` (see ``pointflow_normalize``); ``labels`` index
    ``categories``; ``attributes[i]`` is a JSON-serialisable dict describing shape ``i``.
    """

    points: np.ndarray
    labels: np.ndarray
    categories: tuple[str, ...]
    attributes: list[dict[str, Any]]
    mean: np.ndarray = field(default_factory=lambda: np.zeros(3))
    std: float = 1.0

    def __len__(self) -> int:
        return len(self.labels)

    def denormalize(self, points: np.ndarray) -> np.ndarray:
        """Back to the original frame, where PointFlow computes its metrics."""
        return np.asarray(points) * self.std + self.mean


def pointflow_normalize(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Normalise a whole set as PointFlow does for ShapeNet-15k (``normalize_per_shape=False``).

    Subtracts the per-axis mean over every point of the set and divides by one std taken over all
    coordinates flattened (PointFlow's ``all_points.reshape(-1).std()``). Returns the normalised
    (n, N, 3) float32 points, the mean (3,) and the std.
    """
    values = np.asarray(points, dtype=np.float64)
    if values.ndim != 3 or values.shape[-1] != 3:
        raise ValueError(f"expected points of shape (n, N, 3), got {values.shape}")
    mean = values.reshape(-1, 3).mean(axis=0)
    std = float(values.std())
    return ((values - mean) / std).astype(np.float32), mean, std


def _resample_indices(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """``size`` row indices out of ``count``: without replacement, then with it only for the rows missing."""
    if size <= count:
        return rng.choice(count, size, replace=False)
    return np.concatenate([rng.permutation(count), rng.choice(count, size - count)])


def _synset_id(category: str) -> str:
    if category in SYNSET_IDS:
        return SYNSET_IDS[category]
    if re.fullmatch(r"\d{8}", category):
        return category
    raise ShapeDataError(f"unknown category {category!r}: use one of {sorted(SYNSET_IDS)} or an 8-digit synset id")


def _load_pc15k_cloud(file: Path, num_points: int) -> np.ndarray:
    try:
        cloud = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ShapeDataError(f"{file} is not a readable .npy array ({error}); PC15k expects {_PC15K_LAYOUT}") from error
    if not isinstance(cloud, np.ndarray) or not np.issubdtype(cloud.dtype, np.number):
        raise ShapeDataError(f"{file} does not hold a numeric array; PC15k expects {_PC15K_LAYOUT}")
    if cloud.ndim != 2 or cloud.shape[1] != 3 or cloud.shape[0] < num_points:
        raise ShapeDataError(
            f"{file} has shape {cloud.shape}; expected (m, 3) with m >= num_points = {num_points} (PC15k: (15000, 3))"
        )
    if not np.isfinite(cloud).all():
        raise ShapeDataError(f"{file} contains NaN or infinite coordinates; re-export the shape")
    return cloud


def load_pc15k(
    root: str | Path,
    categories: str | Sequence[str],
    split: str = "train",
    num_points: int = 2048,
    seed: int = 0,
    max_per_class: int | None = None,
) -> ShapeSet:
    """ShapeNet shapes from PointFlow's ``ShapeNetCore.v2.PC15k`` tree, ``num_points`` drawn per shape.

    ``categories`` are names of ``SYNSET_IDS`` or raw synset ids; files load in sorted order, the first
    ``max_per_class`` of each class when given. Points are sub-sampled without replacement with a
    generator seeded by ``seed``, then the set is normalised with ``pointflow_normalize``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ShapeDataError(f"PC15k root folder {root} does not exist; expected the layout {_PC15K_LAYOUT}")
    names = (categories,) if isinstance(categories, str) else tuple(categories)
    synset_names = {synset: name for name, synset in SYNSET_IDS.items()}
    rng = np.random.default_rng(seed)
    clouds, labels, attributes, labelled_names = [], [], [], []
    for label, category in enumerate(names):
        synset = _synset_id(category)
        name = synset_names.get(synset, synset)
        labelled_names.append(name)
        folder = root / synset / split
        files = sorted(folder.glob("*.npy")) if folder.is_dir() else []
        if not files:
            raise ShapeDataError(f"no .npy files in {folder} (category {name!r}); expected the layout {_PC15K_LAYOUT}")
        for file in files[:max_per_class]:
            cloud = _load_pc15k_cloud(file, num_points)
            clouds.append(cloud[rng.choice(len(cloud), num_points, replace=False)])
            labels.append(label)
            attributes.append({"category": name, "synset": synset, "model_id": file.stem})
    points, mean, std = pointflow_normalize(np.stack(clouds))
    return ShapeSet(points, np.array(labels, dtype=np.int64), tuple(labelled_names), attributes, mean, std)


def load_real_airplanes(num_points: int = 2048, seed: int = 0) -> ShapeSet:
    """The 151 ShapeNetPart airplanes shipped with rgdm, each resampled to ``num_points``, PointFlow-normalised.

    The file is already in ShapeNet's frame (y up, nose towards +x, wings along z, each shape's bounding
    box centred with a diagonal of about 1), so no rotation is applied. Shapes with fewer points than
    ``num_points`` (2182 is the smallest) keep all their points and repeat some.
    """
    with resources.as_file(resources.files("rgdm") / "data" / REAL_AIRPLANES_FILE) as path, np.load(path) as archive:
        points, offsets, shape_ids = archive["points"], archive["offsets"], archive["shape_ids"]
    rng = np.random.default_rng(seed)
    clouds = []
    for start, stop in itertools.pairwise(offsets):
        shape = points[start:stop]
        clouds.append(shape[_resample_indices(rng, len(shape), num_points)])
    normalised, mean, std = pointflow_normalize(np.stack(clouds))
    attributes: list[dict[str, Any]] = [{"category": "airplane", "shape_id": str(shape_id)} for shape_id in shape_ids]
    return ShapeSet(normalised, np.zeros(len(clouds), dtype=np.int64), ("airplane",), attributes, mean, std)
