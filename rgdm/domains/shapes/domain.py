"""The shapes domain: point clouds of ShapeNet-like categories, classifier rewards and PointFlow's metrics.

A sample is a row of ``x`` with shape ``(num_points, 3)``, normalised as PointFlow normalises ShapeNet-15k
(one mean and one std over the whole training set, ``pointflow_normalize``). ``decode`` undoes that: rewards,
classifiers and metrics all see clouds in the object frame (y up, bounding boxes of about unit diagonal).

Three classifiers, each trained on its own procedural shapes, keep the measuring side honest:

* the rewards' models, fitted on shapes drawn with seed ``data_seed + 1000``: a random forest on shape
  descriptors (``class-forest``, the black box) and a PointNet (``class-pointnet``, differentiable);
* the judge of ``evaluate``, gradient boosting on voxel grids fitted on seed ``data_seed + 2000``: a
  different model family on different features and shapes, never a model that rewarded;
* the reference shapes of the distribution metrics come from seed ``data_seed + 3000``.

All three classify the five procedural categories, whatever the domain's own categories are, so a class
reward means the same on every source (on real airplanes: how airplane-like a cloud looks among five).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from rgdm.batch import Batch
from rgdm.domains.base import Domain, SupportsFiles, SupportsTargets, cache_folder, pyplot, save_figure
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
from rgdm.domains.shapes.datasets import SYNSET_IDS, ShapeSet, load_pc15k, load_real_airplanes, pointflow_normalize
from rgdm.domains.shapes.io import ShapeFileError, read_ply, write_ply_files
from rgdm.domains.shapes.metrics import mmd_cov_1nna
from rgdm.domains.shapes.network import PointDenoiser, PointRegressor
from rgdm.domains.shapes.procedural import CATEGORIES, procedural_dataset
from rgdm.rewards.base import Reward, RewardFn

log = logging.getLogger("rgdm.shapes")

#: Procedural shapes per category that each classifier is trained on.
CLASSIFIER_PER_CLASS = 200
#: Seeds of the procedural shapes, offset from ``data_seed``: the rewards' models, the judge, the metrics' references.
REWARD_SEED_OFFSET = 1000
JUDGE_SEED_OFFSET = 2000
REFERENCE_SEED_OFFSET = 3000
#: Reference shapes per category at most, and points per cloud in the Chamfer metrics (speed; see ``evaluate``).
MAX_REFERENCE_PER_CLASS = 200
METRIC_POINTS = 512
#: PointNet reward training: steps of batch 32, each seeing this many random points of each cloud (~1 min, 1 core).
POINTNET_STEPS = 600
POINTNET_POINTS = 512
#: Bumped whenever the PointNet's training recipe changes, so stale cached weights are not reused.
POINTNET_RECIPE_VERSION = 1
#: The ``height-width`` reward's target: height equal to the larger horizontal extent (a cube-like box).
HEIGHT_WIDTH_TARGET = 1.0
#: Shapes drawn per panel in ``plot``.
PLOT_SHAPES = 6


class ShapeOptions(BaseModel):
    """Options of the shapes domain."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["shapes"] = "shapes"
    source: Literal["procedural", "airplanes", "pc15k"] = "procedural"
    categories: list[str] | None = Field(
        None, description="default: the five procedural categories (airplanes: airplane); pc15k also takes synset ids")
    per_class: int = Field(400, ge=1, description="shapes per category (real sources: at most this many)")
    num_points: int = Field(2048, ge=16, le=15_000)
    data_seed: int = 0
    pc15k_root: str | None = Field(None, description="PointFlow's ShapeNetCore.v2.PC15k folder (source pc15k)")

    @model_validator(mode="after")
    def _categories_fit_source(self) -> ShapeOptions:
        if self.categories is None:
            self.categories = ["airplane"] if self.source == "airplanes" else list(CATEGORIES)
        if not self.categories or len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories must be a non-empty list without repeats, got {self.categories}")
        if self.source == "procedural" and not set(self.categories) <= set(CATEGORIES):
            raise ValueError(f"procedural categories are {', '.join(CATEGORIES)}; got {self.categories}")
        if self.source == "airplanes" and self.categories != ["airplane"]:
            raise ValueError(f"the airplanes source holds only airplanes; got categories {self.categories}")
        if (self.source == "pc15k") != (self.pc15k_root is not None):
            raise ValueError("source pc15k needs pc15k_root (the PC15k folder), and only pc15k uses it")
        return self


class NetworkOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(128, ge=8)
    depth: int = Field(4, ge=1)
    neighbours: int = Field(16, ge=1)
    edge_width: int = Field(32, ge=4)


def _category_name(category: str) -> str:
    """A category name for a name or a ShapeNet synset id (unknown ids stay as they are)."""
    names = {synset: name for name, synset in SYNSET_IDS.items()}
    return names.get(category, category)


def _first_per_class(clouds: np.ndarray, labels: np.ndarray, counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The first ``counts[c]`` clouds of each label ``c``, with their labels."""
    keep = np.concatenate([np.flatnonzero(labels == label)[:count] for label, count in enumerate(counts)])
    return clouds[keep], labels[keep]


def _procedural_training_clouds(per_class: int, seed: int, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame clouds of the five procedural categories and their labels (indices of ``CATEGORIES``)."""
    shapes = procedural_dataset(per_class, seed=seed, num_points=num_points)
    return shapes.denormalize(shapes.points).astype(np.float32), shapes.labels


class ShapeDomain(SupportsTargets, SupportsFiles, Domain):
    """Point clouds of procedural shapes, the 151 real airplanes or PointFlow's ShapeNet-15k."""

    name = "shapes"
    Options = ShapeOptions
    options: ShapeOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.categories = tuple(_category_name(c) for c in self.options.categories or ())
        self.num_targets = len(self.categories)
        known = all(name in CATEGORIES for name in self.categories)
        #: Each domain class's column in the classifiers (over ``CATEGORIES``); None if a category is not procedural.
        self.classifier_classes = np.array([CATEGORIES.index(c) for c in self.categories]) if known else None

    @cached_property
    def shapes(self) -> ShapeSet:
        """The training shapes, normalised; their mean and std map samples back to the object frame."""
        options = self.options
        if options.source == "procedural":
            return procedural_dataset(options.per_class, options.data_seed, options.num_points, self.categories)
        if options.source == "airplanes":
            shapes = load_real_airplanes(options.num_points, options.data_seed)
            if options.per_class >= len(shapes):
                return shapes
            points, mean, std = pointflow_normalize(shapes.denormalize(shapes.points[: options.per_class]))
            return ShapeSet(points, shapes.labels[: options.per_class], shapes.categories,
                            shapes.attributes[: options.per_class], mean, std)
        return load_pc15k(options.pc15k_root or "", options.categories or [], "train", options.num_points,
                          options.data_seed, options.per_class)

    def build_network(self, options: dict[str, Any]) -> nn.Module:
        net = NetworkOptions.model_validate(options)
        return PointDenoiser(self.num_targets, net.width, net.depth, net.neighbours, net.edge_width)

    def build_regressor(self, options: dict[str, Any], outputs: int = 1) -> nn.Module:
        net = NetworkOptions.model_validate(options)
        return PointRegressor(self.num_targets, net.width, net.depth, net.neighbours, net.edge_width, outputs)

    def dataset(self, split: str = "train") -> Batch:
        """The training clouds, without class labels: pre-training is unconditional."""
        if split != "train":
            raise ValueError(f"the shapes domain has one data split, 'train'; got {split!r}")
        return Batch(torch.from_numpy(self.shapes.points))

    def prior_batch(self, n: int, generator: torch.Generator, cond: torch.Tensor | None = None) -> Batch:
        return Batch(torch.zeros(n, self.options.num_points, 3), cond=cond)

    def decode(self, x: torch.Tensor, mask: torch.Tensor | None) -> np.ndarray:
        """Normalised tensors ``(b, N, 3)`` to object-frame clouds, a float32 array whose rows are ``(N, 3)``."""
        return self.shapes.denormalize(x.detach().float().cpu().numpy()).astype(np.float32)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """``decode`` on tensors, differentiable (for gradient guidance)."""
        return x * self.shapes.std + torch.as_tensor(self.shapes.mean, dtype=x.dtype, device=x.device)

    def normalize(self, clouds: np.ndarray) -> torch.Tensor:
        """Object-frame clouds ``(n, N, 3)`` to the network's normalised frame (the inverse of ``decode``)."""
        return torch.as_tensor((np.asarray(clouds) - self.shapes.mean) / self.shapes.std, dtype=torch.float32)

    def parse_target(self, text: str) -> int:
        """A category name (or synset id) or its index."""
        name = _category_name(text.strip())
        if name in self.categories:
            return self.categories.index(name)
        if text.strip().isdigit() and int(text) < self.num_targets:
            return int(text)
        choices = ", ".join(f"{index} = {category}" for index, category in enumerate(self.categories))
        raise ValueError(f"unknown shape target {text!r}; use a category name or index: {choices}")

    def classifier_targets(self, targets: Sequence[int] | torch.Tensor | None, n: int) -> np.ndarray:
        """Domain targets (the first category when None) as columns of the classifiers over ``CATEGORIES``."""
        if self.classifier_classes is None:
            raise ValueError(f"classifier rewards need procedural categories ({', '.join(CATEGORIES)}); "
                             f"this domain has {', '.join(self.categories)}")
        wanted = np.zeros(n, dtype=np.int64) if targets is None else np.asarray(
            targets.tolist() if isinstance(targets, torch.Tensor) else targets, dtype=np.int64)
        if wanted.shape != (n,) or (wanted < 0).any() or (wanted >= self.num_targets).any():
            raise ValueError(f"expected {n} targets in 0..{self.num_targets - 1}, got {wanted.tolist()}")
        return self.classifier_classes[wanted]

    @cached_property
    def _reward_training_clouds(self) -> tuple[np.ndarray, np.ndarray]:
        return _procedural_training_clouds(CLASSIFIER_PER_CLASS, self.options.data_seed + REWARD_SEED_OFFSET,
                                           self.options.num_points)

    @cached_property
    def forest(self) -> DescriptorForest:
        """The black-box reward's random forest, fitted on first use (seconds)."""
        clouds, labels = self._reward_training_clouds
        return DescriptorForest().fit(clouds, labels, seed=self.options.data_seed + REWARD_SEED_OFFSET)

    @cached_property
    def pointnet(self) -> PointNetClassifier:
        """The differentiable reward's PointNet: trained once per setting (about a minute), then loaded from cache."""
        seed = self.options.data_seed + REWARD_SEED_OFFSET
        settings = {"version": POINTNET_RECIPE_VERSION, "categories": CATEGORIES, "per_class": CLASSIFIER_PER_CLASS,
                    "seed": seed, "num_points": self.options.num_points, "steps": POINTNET_STEPS,
                    "points_per_cloud": POINTNET_POINTS}
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        path = cache_folder() / "shapes" / f"pointnet-{key}"
        if path.with_suffix(".json").is_file():
            return PointNetClassifier.load(path).requires_grad_(False)
        log.info("training the PointNet reward once (about a minute); it is cached in %s", path.parent)
        clouds, labels = self._reward_training_clouds
        net = train_pointnet(clouds, labels, len(CATEGORIES), POINTNET_STEPS, seed=seed,
                             points_per_cloud=POINTNET_POINTS)
        net.save(path)
        return net.requires_grad_(False)

    @cached_property
    def judge(self) -> VoxelBoostingClassifier:
        """The independent classifier of ``evaluate``: another model family, features and shapes than the rewards'."""
        seed = self.options.data_seed + JUDGE_SEED_OFFSET
        clouds, labels = _procedural_training_clouds(CLASSIFIER_PER_CLASS, seed, self.options.num_points)
        return VoxelBoostingClassifier().fit(clouds, labels, seed=seed)

    def _class_reward(self, model: Literal["forest", "pointnet"]) -> RewardFn:
        """The probability the named model gives each sample's target category; the model is built on first call."""
        make = class_probability_reward if model == "forest" else pointnet_probability_reward

        def reward(samples: Sequence[np.ndarray] | np.ndarray, targets: Sequence[int] | None = None) -> np.ndarray:
            return make(getattr(self, model))(samples, self.classifier_targets(targets, len(samples)).tolist())

        return reward

    def _pointnet_log_probability(self, x: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """``log p(target | x)`` of normalised clouds, differentiable in ``x``."""
        wanted = torch.as_tensor(self.classifier_targets(targets, len(x)), device=x.device)
        return pointnet_log_probability_tensor(self.pointnet.to(x.device))(self.denormalize(x), wanted)

    def rewards(self) -> dict[str, Reward]:
        """``height-width`` always; the class rewards when every category is a procedural one.

        Class rewards score the probability of the sample's target category, or of the first category
        when sampling without a target.
        """
        rewards = {"height-width": Reward(
            height_width_ratio_reward(HEIGHT_WIDTH_TARGET),
            f"-|height / larger horizontal extent - {HEIGHT_WIDTH_TARGET}|: 0 for a box as tall as it is wide",
            max_value=0.0)}
        if self.classifier_classes is None:
            return rewards
        first = self.categories[0]
        rewards["class-forest"] = Reward(
            self._class_reward("forest"),
            f"random-forest probability of the target category ({first} without one); black box", max_value=1.0)
        rewards["class-pointnet"] = Reward(
            self._class_reward("pointnet"),
            f"PointNet probability of the target category ({first} without one); differentiable",
            gradient_fn=self._pointnet_log_probability, max_value=1.0)
        return rewards

    @cached_property
    def _reference_clouds(self) -> tuple[np.ndarray, np.ndarray, str]:
        """Object-frame reference shapes of the domain's categories, their domain labels and where they come from."""
        options, seed = self.options, self.options.data_seed + REFERENCE_SEED_OFFSET
        if options.source == "procedural":
            shapes = procedural_dataset(MAX_REFERENCE_PER_CLASS, seed, options.num_points, self.categories)
            origin = f"procedural shapes of seed {seed}"
        elif options.source == "airplanes":
            shapes = load_real_airplanes(options.num_points, seed)
            origin = f"of the 151 real airplanes, points redrawn with seed {seed} (none is held out)"
        else:
            shapes = load_pc15k(options.pc15k_root or "", options.categories or [], "test", options.num_points, seed,
                                MAX_REFERENCE_PER_CLASS)
            origin = "PC15k test shapes"
        return shapes.denormalize(shapes.points).astype(np.float32), shapes.labels, origin

    def _metric_points(self, clouds: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """``METRIC_POINTS`` random points of each cloud (all if fewer), drawn with ``generator``."""
        tensor = torch.as_tensor(clouds)
        if tensor.shape[1] <= METRIC_POINTS:
            return tensor
        keep = torch.rand(tensor.shape[:2], generator=generator).argsort(dim=1)[:, :METRIC_POINTS]
        return tensor.gather(1, keep[..., None].expand(-1, -1, 3))

    def quality_metrics(self, samples: Batch, reward: str | None, temperature: float | None,
                        generator: torch.Generator) -> dict[str, Any]:
        """Class success under the independent judge and PointFlow's distribution metrics.

        ``success_rate``: the share of samples whose target (``cond``, or the only category) is the judge's
        arg-max over the five procedural categories; non-finite clouds fail. ``class_shares``: the judge's
        arg-max shares. ``mmd_cd``, ``cov_cd``, ``1nna_cd``: Chamfer-distance metrics of the finite samples
        against reference shapes with the samples' category counts (even counts without targets), at most
        ``MAX_REFERENCE_PER_CLASS`` per category, each cloud cut to ``METRIC_POINTS`` random points so that
        100 samples take about 15 s on one core. ``reward`` and ``temperature`` are unused.
        """
        clouds = self.decode(samples.x, samples.mask)
        finite = np.isfinite(clouds).all(axis=(1, 2))
        targets = None if samples.cond is None else samples.cond.long().cpu().numpy()
        if targets is None and self.num_targets == 1:
            targets = np.zeros(len(clouds), dtype=np.int64)
        if targets is not None and ((targets < 0) | (targets >= self.num_targets)).any():
            raise ValueError(f"sample targets must be categories 0..{self.num_targets - 1}")
        metrics: dict[str, Any] = {"n": len(clouds), "finite": float(finite.mean()) if len(clouds) else 0.0}
        if self.classifier_classes is not None and finite.any():
            predicted = np.full(len(clouds), -1)
            predicted[finite] = self.judge.predict_proba(clouds[finite]).argmax(axis=1)
            metrics["class_shares"] = {name: float(np.mean(predicted == column)) for column, name in
                                       enumerate(CATEGORIES)}
            if targets is not None:
                success = predicted == self.classifier_classes[targets]
                metrics["success_rate"] = float(success.mean())
                metrics["success_rate_per_class"] = {self.categories[target]: float(success[targets == target].mean())
                                                     for target in np.unique(targets)}
        if finite.sum() >= 2:
            metrics |= self._distribution_metrics(clouds[finite], None if targets is None else targets[finite],
                                                  generator)
        return metrics

    def _distribution_metrics(self, clouds: np.ndarray, targets: np.ndarray | None,
                              generator: torch.Generator) -> dict[str, Any]:
        """MMD, COV and 1-NNA under Chamfer distance against reference shapes with the same category counts."""
        if targets is None:
            counts = np.full(self.num_targets, len(clouds) // self.num_targets)
            counts[: len(clouds) % self.num_targets] += 1
        else:
            counts = np.bincount(targets, minlength=self.num_targets)
        reference, labels, origin = self._reference_clouds
        reference, _ = _first_per_class(reference, labels, np.minimum(counts, MAX_REFERENCE_PER_CLASS))
        metrics = mmd_cov_1nna(self._metric_points(clouds, generator), self._metric_points(reference, generator),
                               "cd", batch=1)
        return metrics | {"reference": f"{len(reference)} {origin}",
                          "metric_points": min(METRIC_POINTS, clouds.shape[1], reference.shape[1])}

    def save_samples(self, samples: Batch, out_dir: Path) -> list[Path]:
        """One ASCII PLY file per sample, in the object frame, under ``out_dir / "ply"``."""
        return write_ply_files(self.decode(samples.x, samples.mask), out_dir / "ply")

    def read_samples(self, folder: Path) -> Batch:
        """Every ``*.ply`` cloud of ``folder`` (sorted by name), normalised like the data, for ``evaluate``."""
        files = sorted(Path(folder).glob("*.ply"))
        if not files:
            raise ShapeFileError(f"{folder}: no .ply files; write one point cloud per .ply file there")
        clouds = [read_ply(file) for file in files]
        if len({len(cloud) for cloud in clouds}) > 1:
            sizes = ", ".join(f"{file.name}: {len(cloud)}" for file, cloud in zip(files[:5], clouds[:5], strict=True))
            raise ShapeFileError(f"{folder}: the clouds hold different numbers of points ({sizes}, ...); "
                                 f"resample every file to one count, e.g. {self.options.num_points}")
        return Batch(self.normalize(np.stack(clouds)))

    @cached_property
    def _view_limit(self) -> float:
        """Half the side of the cube that plots show: the training shapes' largest coordinate, plus a margin."""
        return 1.1 * float(np.abs(self.shapes.denormalize(self.shapes.points)).max())

    def plot(self, panels: dict[str, Batch], path: Path) -> Path:
        """One row of 3-D scatter plots per panel (y up, a few shapes spread over the batch), at the data's scale.

        Points outside the data's extent are left out and counted in the title, so stray points cannot
        shrink the shapes to a dot.
        """
        plt = pyplot()
        limit = self._view_limit
        fig = plt.figure(figsize=(2.4 * PLOT_SHAPES, 2.6 * max(len(panels), 1)))
        for row, (title, batch) in enumerate(panels.items()):
            clouds = self.decode(batch.x, batch.mask)
            shown = np.unique(np.linspace(0, len(clouds) - 1, min(PLOT_SHAPES, len(clouds))).round().astype(int))
            for column, index in enumerate(shown):
                ax = fig.add_subplot(len(panels), PLOT_SHAPES, row * PLOT_SHAPES + column + 1, projection="3d")
                cloud = clouds[index]
                inside = (np.abs(cloud) <= limit).all(axis=1)  # False for NaN too
                # Matplotlib's vertical axis is its third: draw (x, -z, y), a rotation that puts y up.
                x, y, z = cloud[inside].T
                ax.scatter(x, -z, y, s=1, c=y, cmap="viridis")
                label = title
                if batch.cond is not None and 0 <= int(batch.cond[index]) < self.num_targets:
                    label = f"{title}: {self.categories[int(batch.cond[index])]}"
                if not inside.all():
                    label += f" ({int((~inside).sum())} off view)"
                ax.set_title(label, fontsize=8)
                ax.set(xlim=(-limit, limit), ylim=(-limit, limit), zlim=(-limit, limit))
                ax.set_box_aspect((1, 1, 1), zoom=1.3)
                ax.view_init(elev=20, azim=-60)
                ax.set_axis_off()
        return save_figure(fig, path)
