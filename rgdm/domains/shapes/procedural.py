"""ShapeNet-like point clouds built from parametric parts: labelled 3-D data with known attributes, no download.

Each category is a union of primitive surfaces (parallelograms, discs, frustum sides, ellipsoids) whose
proportions and part counts are random; points are drawn uniformly by area over all parts. Shapes follow
ShapeNet's conventions: y up, front towards +x (airplanes, cars) or +z (chairs), each shape's bounding box
centred at the origin with a unit diagonal. Length attributes are given in that normalised frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rgdm.domains.shapes.datasets import ShapeSet, pointflow_normalize

CATEGORIES = ("airplane", "chair", "car", "table", "lamp")

_UP = np.array([0.0, 1.0, 0.0])
_DOWN = -_UP
_FORWARD = np.array([1.0, 0.0, 0.0])
_SIDEWAYS = np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class _Part:
    """One primitive surface: its area and a sampler of ``n`` points uniform on it."""

    area: float
    sample: Callable[[np.random.Generator, int], np.ndarray]


@dataclass
class _Design:
    """A shape before sampling: its parts, the lengths to report (rescaled with the shape) and other traits."""

    parts: list[_Part] = field(default_factory=list)
    lengths: dict[str, float] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)


def _perpendicular_frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to ``axis`` and to each other."""
    helper = _FORWARD if abs(axis[0]) < 0.9 else _UP
    first = np.cross(axis, helper)
    first /= np.linalg.norm(first)
    return first, np.cross(axis, first)


def _parallelogram(corner: np.ndarray, edge_a: np.ndarray, edge_b: np.ndarray) -> _Part:
    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        weights = rng.random((n, 2))
        return corner + weights[:, :1] * edge_a + weights[:, 1:] * edge_b

    return _Part(float(np.linalg.norm(np.cross(edge_a, edge_b))), sample)


def _block(center: Sequence[float], edges: Sequence[Sequence[float]]) -> list[_Part]:
    """The six faces of the parallelepiped centred at ``center`` spanned by the rows of ``edges``."""
    edge_rows = np.asarray(edges, dtype=np.float64)
    corner = np.asarray(center, dtype=np.float64) - edge_rows.sum(axis=0) / 2
    faces = []
    for k in range(3):
        edge_a, edge_b = edge_rows[(k + 1) % 3], edge_rows[(k + 2) % 3]
        faces += [_parallelogram(corner, edge_a, edge_b), _parallelogram(corner + edge_rows[k], edge_a, edge_b)]
    return faces


def _box(center: Sequence[float], size: Sequence[float]) -> list[_Part]:
    """An axis-aligned box."""
    return _block(center, np.diag(size))


def _beam(start: Sequence[float], end: Sequence[float], thickness: float) -> list[_Part]:
    """A bar of square section from ``start`` to ``end`` (legs, struts)."""
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    axis = end - start
    side_a, side_b = _perpendicular_frame(axis / np.linalg.norm(axis))
    return _block((start + end) / 2, [axis, thickness * side_a, thickness * side_b])


def _disc(center: np.ndarray, normal: np.ndarray, radius: float) -> _Part:
    side_a, side_b = _perpendicular_frame(normal)

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        radii = radius * np.sqrt(rng.random(n))
        angles = 2 * np.pi * rng.random(n)
        return center + (radii * np.cos(angles))[:, None] * side_a + (radii * np.sin(angles))[:, None] * side_b

    return _Part(math.pi * radius**2, sample)


def _frustum_side(base: np.ndarray, axis: np.ndarray, height: float, base_radius: float, top_radius: float) -> _Part:
    """The lateral surface of a truncated cone (a cylinder when the radii match, a cone when one is 0)."""
    side_a, side_b = _perpendicular_frame(axis)

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        # Inverse CDF of a height density proportional to the local radius, in a form stable when radii match.
        uniform = rng.random(n)
        fraction = uniform * (base_radius + top_radius) / (
            base_radius + np.sqrt(base_radius**2 + uniform * (top_radius**2 - base_radius**2))
        )
        radii = base_radius + (top_radius - base_radius) * fraction
        angles = 2 * np.pi * rng.random(n)
        return (
            base
            + (fraction * height)[:, None] * axis
            + (radii * np.cos(angles))[:, None] * side_a
            + (radii * np.sin(angles))[:, None] * side_b
        )

    slant = math.hypot(height, base_radius - top_radius)
    return _Part(math.pi * (base_radius + top_radius) * slant, sample)


def _cylinder(base: Sequence[float], axis: np.ndarray, height: float, radius: float) -> list[_Part]:
    """A closed cylinder standing on ``base`` along the unit vector ``axis``."""
    base = np.asarray(base, dtype=np.float64)
    return [
        _frustum_side(base, axis, height, radius, radius),
        _disc(base, axis, radius),
        _disc(base + height * axis, axis, radius),
    ]


def _ellipsoid(center: Sequence[float], radii: Sequence[float]) -> _Part:
    """An axis-aligned ellipsoid; area by Thomsen's formula (within about 1 %)."""
    center, radii = np.asarray(center, dtype=np.float64), np.asarray(radii, dtype=np.float64)

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        # Map uniform sphere points onto the ellipsoid, keeping each with probability proportional to the
        # local area stretch abc * |u / radii|, which is at most abc / min(radii).
        accepted = [np.empty((0, 3))]
        missing = n
        while missing > 0:
            directions = rng.standard_normal((2 * missing + 16, 3))
            directions /= np.linalg.norm(directions, axis=1, keepdims=True)
            keep_probability = np.linalg.norm(directions / radii, axis=1) * radii.min()
            kept = directions[rng.random(len(directions)) < keep_probability][:missing]
            accepted.append(center + kept * radii)
            missing -= len(kept)
        return np.concatenate(accepted)

    power = 1.6075
    a, b, c = radii**power
    area = 4 * math.pi * ((a * b + a * c + b * c) / 3) ** (1 / power)
    return _Part(float(area), sample)


def _airplane(rng: np.random.Generator) -> _Design:
    """Fuselage along x (nose at +x), two swept wings along z, tail fin and stabilisers, 0/2/4 engines."""
    length = rng.uniform(0.8, 1.1)
    radius = rng.uniform(0.045, 0.075)
    design = _Design([_ellipsoid((0, 0, 0), (length / 2, radius, radius))])
    sweep = rng.uniform(0.0, 40.0)
    span = rng.uniform(0.3, 0.55)
    chord = rng.uniform(0.12, 0.24)
    thickness = rng.uniform(0.012, 0.02)
    wing_x = rng.uniform(-0.05, 0.1) * length
    wing_y = -rng.uniform(0.0, 0.5) * radius
    root_z = 0.7 * radius
    tip_setback = span * math.tan(math.radians(sweep))
    for side in (1, -1):
        center = (wing_x - tip_setback / 2, wing_y, side * (root_z + span / 2))
        design.parts += _block(center, [(chord, 0, 0), (0, thickness, 0), (-tip_setback, 0, side * span)])

    fin_height = rng.uniform(0.1, 0.2)
    fin_chord = rng.uniform(0.1, 0.18)
    fin_setback = fin_height * math.tan(math.radians(rng.uniform(20.0, 45.0)))
    tail_x = -length / 2 + fin_chord / 2 + 0.02
    fin_base = 0.5 * radius
    design.parts += _block(
        (tail_x - fin_setback / 2, fin_base + fin_height / 2, 0),
        [(fin_chord, 0, 0), (-fin_setback, fin_height, 0), (0, 0, thickness)],
    )
    t_tail = bool(rng.random() < 0.25)
    stabiliser_y = fin_base + fin_height if t_tail else 0.0
    stabiliser_x = tail_x - fin_setback if t_tail else tail_x
    stabiliser_span = rng.uniform(0.1, 0.18)
    stabiliser_chord = rng.uniform(0.06, 0.1)
    stabiliser_setback = stabiliser_span * math.tan(math.radians(sweep))
    for side in (1, -1):
        center = (stabiliser_x - stabiliser_setback / 2, stabiliser_y, side * stabiliser_span / 2)
        edges = [(stabiliser_chord, 0, 0), (0, thickness, 0), (-stabiliser_setback, 0, side * stabiliser_span)]
        design.parts += _block(center, edges)

    engines = int(rng.choice([0, 2, 4], p=[0.25, 0.5, 0.25]))
    engine_radius = rng.uniform(0.025, 0.04)
    engine_length = rng.uniform(0.12, 0.18)
    span_fractions = {0: [], 2: [0.35], 4: [0.3, 0.65]}[engines]
    for fraction in span_fractions:
        for side in (1, -1):
            front_x = wing_x + chord / 2 - fraction * tip_setback + 0.4 * engine_length
            center_y = wing_y - thickness / 2 - 1.1 * engine_radius
            base = (front_x - engine_length, center_y, side * (root_z + fraction * span))
            design.parts += _cylinder(base, _FORWARD, engine_length, engine_radius)

    design.lengths = {"fuselage_length": length, "wing_span": 2 * (root_z + span)}
    design.traits = {"wing_sweep_deg": sweep, "engines": engines, "t_tail": t_tail}
    return design


def _chair(rng: np.random.Generator) -> _Design:
    """Seat, tilted back at -z (front towards +z), 3-5 legs (usually 4), armrests or not."""
    width, depth = rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.55)
    seat_height = rng.uniform(0.38, 0.5)
    seat_thickness = rng.uniform(0.03, 0.07)
    design = _Design(_box((0, seat_height - seat_thickness / 2, 0), (width, seat_thickness, depth)))

    back_height = rng.uniform(0.35, 0.6)
    back_thickness = rng.uniform(0.03, 0.05)
    tilt = rng.uniform(0.0, 15.0)
    rise, lean = back_height * math.cos(math.radians(tilt)), back_height * math.sin(math.radians(tilt))
    back_center = (0, seat_height + rise / 2, -depth / 2 + back_thickness / 2 - lean / 2)
    design.parts += _block(back_center, [(width, 0, 0), (0, rise, -lean), (0, 0, back_thickness)])

    legs = int(rng.choice([3, 4, 5], p=[0.1, 0.8, 0.1]))
    leg_thickness = rng.uniform(0.025, 0.05)
    seat_bottom = seat_height - seat_thickness
    if legs == 4:
        inset = leg_thickness / 2 + rng.uniform(0.0, 0.03)
        for x in (width / 2 - inset, inset - width / 2):
            for z in (depth / 2 - inset, inset - depth / 2):
                design.parts += _beam((x, seat_bottom, z), (x, 0, z), leg_thickness)
    else:
        # Splayed legs from under the seat's centre, as on swivel and stool-like chairs.
        reach = 0.45 * min(width, depth)
        for angle in 2 * np.pi * np.arange(legs) / legs + rng.uniform(0, 2 * np.pi):
            direction = np.array([math.cos(angle), 0.0, math.sin(angle)])
            design.parts += _beam(0.3 * reach * direction + seat_bottom * _UP, reach * direction, leg_thickness)

    armrests = bool(rng.random() < 0.4)
    if armrests:
        arm_height = seat_height + rng.uniform(0.18, 0.25)
        arm_front = rng.uniform(0.25, 0.45) * depth
        for side in (1, -1):
            x = side * (width / 2 - 0.02)
            design.parts += _beam((x, arm_height, -depth / 2), (x, arm_height, arm_front), 0.04)
            design.parts += _beam((x, seat_height, arm_front - 0.02), (x, arm_height, arm_front - 0.02), 0.03)

    design.lengths = {"seat_height": seat_height}
    design.traits = {"legs": legs, "armrests": armrests, "back_tilt_deg": tilt}
    return design


def _car(rng: np.random.Generator) -> _Design:
    """Body, slanted cabin and four wheels; length along x (front at +x), wheel axles along z."""
    length, width = rng.uniform(0.9, 1.2), rng.uniform(0.4, 0.5)
    wheel_radius = rng.uniform(0.08, 0.12)
    body_bottom = rng.uniform(0.6, 0.9) * wheel_radius
    body_height = rng.uniform(0.15, 0.25)
    design = _Design(_box((0, body_bottom + body_height / 2, 0), (length, body_height, width)))

    cabin_length = rng.uniform(0.4, 0.6) * length
    cabin_height = rng.uniform(0.12, 0.2)
    cabin_slant = rng.uniform(0.05, 0.15)
    cabin_center = (rng.uniform(-0.1, 0.05) * length, body_bottom + body_height + cabin_height / 2, 0)
    design.parts += _block(cabin_center, [(cabin_length, 0, 0), (-cabin_slant, cabin_height, 0), (0, 0, 0.85 * width)])

    wheelbase = rng.uniform(0.55, 0.7) * length
    wheel_width = rng.uniform(0.06, 0.09)
    for x in (wheelbase / 2, -wheelbase / 2):
        for side in (1, -1):
            outer_z = side * (width / 2 + 0.01)
            design.parts += _cylinder((x, wheel_radius, outer_z), -side * _SIDEWAYS, wheel_width, wheel_radius)

    design.lengths = {"wheelbase": wheelbase, "wheel_radius": wheel_radius, "cabin_length": cabin_length}
    return design


def _table(rng: np.random.Generator) -> _Design:
    """Round or rectangular top on 3 or 4 legs, or on one central pedestal (``legs == 1``)."""
    height = rng.uniform(0.6, 0.8)
    top_thickness = rng.uniform(0.03, 0.06)
    top_bottom = height - top_thickness
    leg_thickness = rng.uniform(0.04, 0.07)
    round_top = bool(rng.random() < 0.4)
    if round_top:
        radius = rng.uniform(0.35, 0.55)
        design = _Design(_cylinder((0, top_bottom, 0), _UP, top_thickness, radius))
        legs = int(rng.choice([1, 3, 4], p=[0.4, 0.3, 0.3]))
        if legs > 1:
            for angle in 2 * np.pi * np.arange(legs) / legs + math.pi / 4:
                foot = 0.75 * radius * np.array([math.cos(angle), 0.0, math.sin(angle)])
                design.parts += _beam(foot + top_bottom * _UP, foot, leg_thickness)
    else:
        width, depth = rng.uniform(0.8, 1.4), rng.uniform(0.5, 0.9)
        design = _Design(_box((0, height - top_thickness / 2, 0), (width, top_thickness, depth)))
        legs = int(rng.choice([1, 4], p=[0.15, 0.85]))
        if legs == 4:
            inset = leg_thickness / 2 + rng.uniform(0.0, 0.08)
            for x in (width / 2 - inset, inset - width / 2):
                for z in (depth / 2 - inset, inset - depth / 2):
                    design.parts += _beam((x, top_bottom, z), (x, 0, z), leg_thickness)
    if legs == 1:
        foot_height = rng.uniform(0.02, 0.05)
        design.parts += _cylinder((0, 0, 0), _UP, foot_height, rng.uniform(0.2, 0.3))
        design.parts += _cylinder((0, foot_height, 0), _UP, top_bottom - foot_height, rng.uniform(0.04, 0.08))
    design.lengths = {"table_height": height}
    design.traits = {"round_top": round_top, "legs": legs}
    return design


def _lamp(rng: np.random.Generator) -> _Design:
    """Disc base, a pole straight or with one bend (towards +x), and an open shade cone facing down."""
    base_height = rng.uniform(0.02, 0.05)
    design = _Design(_cylinder((0, 0, 0), _UP, base_height, rng.uniform(0.1, 0.18)))
    pole_radius = rng.uniform(0.012, 0.02)
    pole_height = rng.uniform(0.5, 0.9)
    bent = bool(rng.random() < 0.4)
    lower_height = pole_height * rng.uniform(0.5, 0.8) if bent else pole_height
    design.parts += _cylinder((0, base_height, 0), _UP, lower_height, pole_radius)
    pole_top = np.array([0.0, base_height + lower_height, 0.0])
    if bent:
        bend = math.radians(rng.uniform(25.0, 60.0))
        arm_direction = np.array([math.sin(bend), math.cos(bend), 0.0])
        arm_length = rng.uniform(0.2, 0.4)
        design.parts += _cylinder(pole_top, arm_direction, arm_length, pole_radius)
        pole_top = pole_top + arm_length * arm_direction

    shade_height = rng.uniform(0.12, 0.22)
    shade_radius = rng.uniform(0.12, 0.22)
    shade_top = pole_top + rng.uniform(0.0, 0.4) * shade_height * _UP
    design.parts.append(_frustum_side(shade_top, _DOWN, shade_height, rng.uniform(0.03, 0.07), shade_radius))
    design.lengths = {"shade_radius": shade_radius}
    design.traits = {"bent": bent}
    return design


_BUILDERS: dict[str, Callable[[np.random.Generator], _Design]] = {
    "airplane": _airplane,
    "chair": _chair,
    "car": _car,
    "table": _table,
    "lamp": _lamp,
}


def _sample_parts(parts: list[_Part], rng: np.random.Generator, num_points: int) -> np.ndarray:
    """Points uniform by area over the union of ``parts``, in random order."""
    areas = np.array([part.area for part in parts])
    counts = rng.multinomial(num_points, areas / areas.sum())
    points = np.concatenate([part.sample(rng, count) for part, count in zip(parts, counts, strict=True)])
    return points[rng.permutation(num_points)]


def sample_shape(category: str, rng: np.random.Generator, num_points: int = 2048) -> tuple[np.ndarray, dict]:
    """One random shape of ``category``: (num_points, 3) float32 points and a JSON-serialisable attribute dict.

    The shape's bounding box is centred at the origin and scaled to a unit diagonal, as ShapeNet models
    are. Every attribute dict has ``category`` and ``height_width_ratio`` (bounding-box height over the
    larger horizontal extent) plus the category's part attributes.
    """
    if category not in _BUILDERS:
        raise ValueError(f"unknown category {category!r}; available: {', '.join(CATEGORIES)}")
    design = _BUILDERS[category](rng)
    points = _sample_parts(design.parts, rng, num_points)
    low, high = points.min(axis=0), points.max(axis=0)
    scale = 1.0 / float(np.linalg.norm(high - low))
    extent = high - low
    attributes: dict[str, Any] = {"category": category, **design.traits}
    attributes |= {name: float(value * scale) for name, value in design.lengths.items()}
    attributes["height_width_ratio"] = float(extent[1] / max(extent[0], extent[2]))
    return ((points - (low + high) / 2) * scale).astype(np.float32), attributes


def procedural_dataset(
    per_class: int, seed: int = 0, num_points: int = 2048, categories: Sequence[str] = CATEGORIES
) -> ShapeSet:
    """``per_class`` shapes of each category, deterministic in ``seed``, normalised like PointFlow's ShapeNet-15k."""
    rng = np.random.default_rng(seed)
    clouds, labels, attributes = [], [], []
    for label, category in enumerate(categories):
        for _ in range(per_class):
            points, shape_attributes = sample_shape(category, rng, num_points)
            clouds.append(points)
            labels.append(label)
            attributes.append(shape_attributes)
    normalised, mean, std = pointflow_normalize(np.stack(clouds))
    return ShapeSet(normalised, np.array(labels, dtype=np.int64), tuple(categories), attributes, mean, std)
