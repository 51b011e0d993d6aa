"""Shape classifiers and the black-box rewards built on them.

Three classifiers of different kinds, so that the model that measures is never the one that
rewarded: a random forest on ``shape_descriptors`` (the black-box, non-differentiable reward), a
small PointNet (probabilities and a differentiable log-probability for gradient guidance), and
gradient boosting on voxel occupancy grids (an independent judge).

Nothing is pickled. scikit-learn models can only be stored by pickling, and unpickling a file runs
whatever code it names, so the sklearn classifiers save their *recipe* instead (hyper-parameters,
seed, training features and labels as JSON and ``.npz``) and ``load`` refits them deterministically.
PointNet weights go to safetensors with a JSON sidecar of the constructor arguments.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

import numpy as np
import sklearn
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from threadpoolctl import threadpool_limits
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from rgdm.domains.shapes.descriptors import box_aspect, height_width_ratio, shape_descriptors, voxel_occupancy
from rgdm.io import CheckpointError, load_tensors, read_json, save_arrays, save_tensors, write_json
from rgdm.rewards.base import TensorRewardFn

RECIPE_FORMAT = "rgdm-shape-recipe/1"
POINTNET_FORMAT = "rgdm-shape-pointnet/1"

ShapeRewardFn = Callable[..., np.ndarray]


class ProbabilisticClassifier(Protocol):
    """Anything that maps clouds ``(n, N, 3)`` to class probabilities ``(n, C)``."""

    def predict_proba(self, points: np.ndarray) -> np.ndarray: ...


def _labels_array(labels: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer) or (array < 0).any():
        raise ValueError(f"expected {n} non-negative integer labels, got shape {array.shape} of {array.dtype}")
    return array.astype(np.int64)


def _data_hash(features: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in (features, labels):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class RecipeClassifier(ABC):
    """A scikit-learn classifier on fixed features of clouds, saved as its training recipe (see module doc).

    Subclasses name the features (``features``) and the estimator (``build_estimator``).
    """

    kind: ClassVar[str]

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.seed: int | None = None
        self.num_classes = 0
        self._estimator: Any = None
        self._training_features: np.ndarray | None = None
        self._training_labels: np.ndarray | None = None

    @abstractmethod
    def features(self, points: np.ndarray) -> np.ndarray:
        """Fixed-length features ``(n, F)`` of clouds ``(n, N, 3)``."""

    @abstractmethod
    def build_estimator(self, seed: int) -> Any:
        """A fresh, unfitted scikit-learn classifier seeded with ``seed``."""

    def fit(self, points: np.ndarray, labels: Sequence[int] | np.ndarray, seed: int = 0) -> Self:
        """Fit on clouds ``(n, N, 3)`` with integer labels ``0..C-1``."""
        features = self.features(points)
        return self._fit_features(features, _labels_array(labels, len(features)), seed)

    def _fit_features(self, features: np.ndarray, labels: np.ndarray, seed: int) -> Self:
        estimator = self.build_estimator(seed)
        # One OpenMP thread: boosting's parallel sums could otherwise differ in the last bits with the
        # core count, and a refit after ``load`` must reproduce the saved model exactly.
        with threadpool_limits(limits=1, user_api="openmp"):
            estimator.fit(features, labels)
        self._estimator, self.seed, self.num_classes = estimator, seed, int(labels.max()) + 1
        self._training_features, self._training_labels = features, labels
        return self

    def predict_proba(self, points: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, C)``; column ``c`` is label ``c`` (zero for labels absent in training)."""
        if self._estimator is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit or load first")
        known = self._estimator.predict_proba(self.features(points))
        probabilities = np.zeros((len(known), self.num_classes))
        probabilities[:, self._estimator.classes_] = known
        return probabilities

    def save(self, path: str | Path) -> list[Path]:
        """Write the recipe: ``<path>.npz`` (training features, labels), then ``<path>.json``; returns both."""
        if self._training_features is None or self._training_labels is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; nothing to save")
        data_path, recipe_path = Path(path).with_suffix(".npz"), Path(path).with_suffix(".json")
        data_path.parent.mkdir(parents=True, exist_ok=True)
        save_arrays(data_path, {"features": self._training_features, "labels": self._training_labels})
        # The JSON comes last and holds the data's hash, so a torn or swapped .npz is caught on load.
        write_json(recipe_path, {
            "format": RECIPE_FORMAT,
            "kind": self.kind,
            "params": self.params,
            "seed": self.seed,
            "data_file": data_path.name,
            "data_sha256": _data_hash(self._training_features, self._training_labels),
            "sklearn_version": sklearn.__version__,
        })
        return [data_path, recipe_path]

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Refit from a saved recipe; same data, seed and library versions give identical predictions."""
        recipe_path = Path(path).with_suffix(".json")
        recipe = read_json(recipe_path)
        if recipe.get("format") != RECIPE_FORMAT or recipe.get("kind") != cls.kind:
            raise CheckpointError(f"{recipe_path} is not a saved {cls.kind} (format {recipe.get('format')!r}, "
                                  f"kind {recipe.get('kind')!r})")
        try:
            model = cls(**recipe["params"])
            data_path = recipe_path.with_name(recipe["data_file"])
            expected_hash, seed = recipe["data_sha256"], int(recipe["seed"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{recipe_path} has a missing or invalid entry ({error!r}): corrupt") from None
        try:
            with np.load(data_path, allow_pickle=False) as data:
                features, labels = data["features"], data["labels"]
        except (OSError, ValueError, KeyError) as error:
            raise CheckpointError(f"{data_path} is not a readable recipe data file ({error})") from None
        if _data_hash(features, labels) != expected_hash:
            raise CheckpointError(f"{data_path} does not match the hash in {recipe_path}: corrupt or replaced")
        expected_width = model.features(np.zeros((1, 2, 3), dtype=np.float32)).shape[1]
        if features.shape[1] != expected_width:
            raise CheckpointError(f"{data_path} holds {features.shape[1]} features per cloud but {cls.kind} now "
                                  f"computes {expected_width}: retrain and save again")
        return model._fit_features(features, labels, seed)


class DescriptorForest(RecipeClassifier):
    """A random forest on ``shape_descriptors``: the black-box, non-differentiable class reward."""

    kind = "DescriptorForest"

    def __init__(self, n_estimators: int = 200, min_samples_leaf: int = 1, max_features: str = "sqrt") -> None:
        super().__init__(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf, max_features=max_features)

    def features(self, points: np.ndarray) -> np.ndarray:
        return shape_descriptors(points)

    def build_estimator(self, seed: int) -> RandomForestClassifier:
        return RandomForestClassifier(**self.params, random_state=seed, n_jobs=1)


class VoxelBoostingClassifier(RecipeClassifier):
    """Histogram gradient boosting on voxel occupancy grids and the box aspect: an independent measuring classifier.

    It shares neither features nor model family with the forest or the PointNet, so a sampler that
    learned to fool a reward model is unlikely to fool it the same way.
    """

    kind = "VoxelBoostingClassifier"

    def __init__(self, resolution: int = 8, max_iter: int = 100, learning_rate: float = 0.1,
                 max_leaf_nodes: int = 15) -> None:
        super().__init__(resolution=resolution, max_iter=max_iter, learning_rate=learning_rate,
                         max_leaf_nodes=max_leaf_nodes)

    def features(self, points: np.ndarray) -> np.ndarray:
        return np.concatenate([voxel_occupancy(points, self.params["resolution"]), box_aspect(points)], axis=1)

    def build_estimator(self, seed: int) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(
            max_iter=self.params["max_iter"], learning_rate=self.params["learning_rate"],
            max_leaf_nodes=self.params["max_leaf_nodes"], early_stopping=False, random_state=seed)


class PointwiseBatchNorm(nn.BatchNorm1d):
    """Batch norm of per-point features ``(b, N, C)``, with statistics over every point of the batch."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features.reshape(-1, features.shape[-1])).reshape(features.shape)


class PointNetClassifier(nn.Module):
    """A small PointNet: a shared per-point MLP, max-pooling over points, and an MLP head with dropout.

    Clouds are centred and scaled to unit RMS radius first, so the network judges form, not placement
    or size (the forest's descriptors keep sizes). This also makes a few hundred steps enough.
    """

    def __init__(self, num_classes: int, point_widths: Sequence[int] = (64, 128, 256), head_width: int = 128,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.config = {"num_classes": num_classes, "point_widths": list(point_widths), "head_width": head_width,
                       "dropout": dropout}
        layers: list[nn.Module] = []
        previous = 3
        for width in point_widths:
            layers += [nn.Linear(previous, width), PointwiseBatchNorm(width), nn.ReLU()]
            previous = width
        self.point_mlp = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(previous, head_width), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(head_width, num_classes))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Logits ``(b, C)`` of clouds ``(b, N, 3)``."""
        centred = points - points.mean(dim=1, keepdim=True)
        rms_radius = centred.square().sum(dim=2).mean(dim=1).clamp_min(1e-12).sqrt()
        return self.head(self.point_mlp(centred / rms_radius[:, None, None]).amax(dim=1))

    def predict_proba(self, points: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(n, C)`` of clouds ``(n, N, 3)``, numpy in and out, in eval mode."""
        clouds = torch.as_tensor(np.asarray(points, dtype=np.float32))
        device = next(self.parameters()).device
        with _evaluating(self), torch.no_grad():
            chunks = [F.softmax(self(chunk.to(device)), dim=1).cpu() for chunk in clouds.split(batch_size)]
        return torch.cat(chunks).double().numpy()

    def save(self, path: str | Path) -> list[Path]:
        """Write ``<path>.safetensors`` (weights), then ``<path>.json`` (constructor args, hash); returns both."""
        weights_path, config_path = Path(path).with_suffix(".safetensors"), Path(path).with_suffix(".json")
        digest = save_tensors(weights_path, self.state_dict())
        write_json(config_path, {"format": POINTNET_FORMAT, "config": self.config, "weights_file": weights_path.name,
                                 "weights_sha256": digest})
        return [weights_path, config_path]

    @classmethod
    def load(cls, path: str | Path) -> PointNetClassifier:
        """A saved PointNet in eval mode, on the CPU."""
        config_path = Path(path).with_suffix(".json")
        sidecar = read_json(config_path)
        if sidecar.get("format") != POINTNET_FORMAT:
            raise CheckpointError(f"{config_path} is not a saved PointNet (format {sidecar.get('format')!r})")
        net = cls(**sidecar["config"])
        weights = load_tensors(config_path.with_name(sidecar["weights_file"]), sidecar["weights_sha256"])
        net.load_state_dict(weights)
        return net.eval()


@contextmanager
def _evaluating(net: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the block, then back to the mode the network was in."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


def augment_clouds(clouds: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation about y (up), per-axis scale in [0.8, 1.25], jitter of 1% of the RMS radius."""
    b = len(clouds)
    angle = 2 * math.pi * torch.rand(b, generator=generator)
    cos, sin, zero, one = angle.cos(), angle.sin(), torch.zeros(b), torch.ones(b)
    rotation = torch.stack([torch.stack([cos, zero, sin], 1), torch.stack([zero, one, zero], 1),
                            torch.stack([-sin, zero, cos], 1)], 1)
    scale = torch.exp(math.log(1.25) * (2 * torch.rand(b, 1, 3, generator=generator) - 1))
    rotated = clouds @ rotation.transpose(1, 2) * scale
    centred = rotated - rotated.mean(dim=1, keepdim=True)
    rms_radius = centred.square().sum(dim=2).mean(dim=1).sqrt()[:, None, None]
    jitter = 0.01 * rms_radius * torch.randn(rotated.shape, generator=generator).clamp(-3, 3)
    return rotated + jitter


def train_pointnet(points: np.ndarray, labels: Sequence[int] | np.ndarray, num_classes: int, steps: int,
                   batch_size: int = 32, lr: float = 1e-3, seed: int = 0, augment: bool = True,
                   points_per_cloud: int | None = 512, progress: bool | None = None) -> PointNetClassifier:
    """Train a ``PointNetClassifier`` on clouds ``(n, N, 3)`` with AdamW and a cosine learning-rate decay.

    Each step sees ``points_per_cloud`` random points of each cloud (all when None): max-pooling
    makes that a cheap augmentation and it cuts the cost of a step. Deterministic for a seed, and the
    global torch RNG is left as it was. ``progress=None`` shows a bar only on a terminal. Returns the
    network in eval mode.
    """
    clouds = torch.as_tensor(np.asarray(points, dtype=np.float32))
    if clouds.ndim != 3 or clouds.shape[2] != 3 or not torch.isfinite(clouds).all():
        raise ValueError(f"expected finite point clouds of shape (n, N, 3), got {tuple(clouds.shape)}")
    targets = torch.as_tensor(_labels_array(labels, len(clouds)))
    if targets.max() >= num_classes:
        raise ValueError(f"labels reach {int(targets.max())} but num_classes is {num_classes}")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initial weights and dropout
        net = PointNetClassifier(num_classes)
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
        net.train()
        for _ in tqdm(range(steps), desc="PointNet", disable=None if progress is None else not progress):
            index = torch.randint(len(clouds), (batch_size,), generator=generator)
            batch = clouds[index]
            if points_per_cloud is not None and points_per_cloud < batch.shape[1]:
                kept = torch.rand(batch.shape[:2], generator=generator).argsort(dim=1)[:, :points_per_cloud]
                batch = batch.gather(1, kept[:, :, None].expand(-1, -1, 3))
            if augment:
                batch = augment_clouds(batch, generator)
            loss = F.cross_entropy(net(batch), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def _well_formed(sample: Any) -> np.ndarray | None:
    """The sample as a float32 ``(N, 3)`` array of finite points, or None."""
    try:
        cloud = np.asarray(sample, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    if cloud.ndim != 2 or cloud.shape[0] == 0 or cloud.shape[1] != 3 or not np.isfinite(cloud).all():
        return None
    return cloud


def _per_cloud(samples: Sequence[np.ndarray] | np.ndarray,
               score: Callable[[np.ndarray, np.ndarray], np.ndarray],
               targets: Sequence[int] | None) -> np.ndarray:
    """``score(clouds (m, N, 3), targets (m,))`` for every well-formed sample, batched by point count; NaN elsewhere."""
    clouds = [_well_formed(sample) for sample in samples]
    wanted = np.zeros(len(clouds), dtype=np.int64) if targets is None else np.asarray(targets, dtype=np.int64)
    if wanted.shape != (len(clouds),):
        raise ValueError(f"got {len(wanted)} targets for {len(clouds)} samples")
    values = np.full(len(clouds), np.nan)
    for size in {cloud.shape[0] for cloud in clouds if cloud is not None}:
        members = [i for i, cloud in enumerate(clouds) if cloud is not None and cloud.shape[0] == size]
        values[members] = score(np.stack([clouds[i] for i in members]), wanted[members])
    return values


def class_probability_reward(model: ProbabilisticClassifier) -> ShapeRewardFn:
    """Reward = the model's probability of each sample's target class (class 0 without targets); black box."""

    def reward(samples: Sequence[np.ndarray] | np.ndarray, targets: Sequence[int] | None = None) -> np.ndarray:
        def target_probability(clouds: np.ndarray, wanted: np.ndarray) -> np.ndarray:
            probabilities = model.predict_proba(clouds)
            if (wanted < 0).any() or (wanted >= probabilities.shape[1]).any():
                raise ValueError(f"targets must be classes 0..{probabilities.shape[1] - 1}")
            return probabilities[np.arange(len(clouds)), wanted]

        return _per_cloud(samples, target_probability, targets)

    return reward


def pointnet_probability_reward(net: PointNetClassifier) -> ShapeRewardFn:
    """The PointNet's probability of the target class, numpy in and out (see ``class_probability_reward``)."""
    return class_probability_reward(net)


def pointnet_log_probability_tensor(net: PointNetClassifier) -> TensorRewardFn:
    """Differentiable ``log p(target | x)`` of clouds ``x (b, N, 3)`` (class 0 without targets), for guidance."""

    def log_probability(x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        wanted = torch.zeros(len(x), dtype=torch.long) if targets is None else targets.long()
        with _evaluating(net):
            log_probabilities = F.log_softmax(net(x), dim=1)
        return log_probabilities.gather(1, wanted.to(x.device)[:, None]).squeeze(1)

    return log_probability


def height_width_ratio_reward(target_ratio: float) -> ShapeRewardFn:
    """Reward = ``-|height / larger horizontal extent - target_ratio|`` (at most 0); targets are ignored."""

    def reward(samples: Sequence[np.ndarray] | np.ndarray, targets: Sequence[int] | None = None) -> np.ndarray:
        return _per_cloud(samples, lambda clouds, _: -np.abs(height_width_ratio(clouds) - target_ratio), None)

    return reward
