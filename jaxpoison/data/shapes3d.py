"""``shapes3d``: an embedded point-cloud classification set of geometric primitives and compositions.

ModelNet40 cannot be downloaded everywhere; this set stands in for it in tests and quick runs. Each
of its twelve classes is a solid whose *surface* is sampled (area-weighted, so the points are
uniform on the surface):

===  ==============  ===========================================================
 0   sphere          the unit sphere
 1   cube            a cube
 2   cylinder        a closed cylinder (height 2, radius 0.6)
 3   cone            a closed cone (height 2, base radius 0.8)
 4   torus           a torus (radii 0.8 and 0.3)
 5   pyramid         a square pyramid (base 1.6 × 1.6, height 1.6)
 6   two_spheres     two separate spheres side by side
 7   cube_sphere     a cube with a sphere resting on top
 8   rocket          a cylinder with a cone on top
 9   cross           three orthogonal bars through one centre (a "jack")
10   disk            a flat closed cylinder (radius 1, height 0.2)
11   bowl            an open hemisphere
===  ==============  ===========================================================

Every example gets a random anisotropic scale (each axis × U(0.75, 1.25)), a uniformly random
rotation and Gaussian noise (σ = ``noise``, default 0.01), and is then centred and scaled into the
unit sphere like ModelNet40's clouds. Everything is drawn from ``numpy.random.default_rng`` seeded
with ``(seed, split, class, example)``: the same arguments give the same clouds, and the train and
test splits never share a draw.
"""

from __future__ import annotations

import numpy as np

from jaxpoison.data.dataset import Dataset, DatasetError
from jaxpoison.data.pointcloud import check_points_option, normalize_points, point_cloud_dataset

SHAPES3D_CLASSES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "two_spheres", "cube_sphere", "rocket",
                    "cross", "disk", "bowl")  # fmt: skip
SHAPES3D_POINTS = 256
SHAPES3D_TRAIN, SHAPES3D_TEST = 128, 32  # examples per class: 1,536 train, 384 test


# --------------------------------------------------------------------------- surface samplers


def _triangles(n: int, tris: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniform on the union of triangles ``[T, 3, 3]`` (area-weighted)."""
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    pick = rng.choice(len(tris), n, p=area / area.sum())
    u, v = rng.random((2, n, 1))
    flip = (u + v) > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    return a[pick] + u * (b[pick] - a[pick]) + v * (c[pick] - a[pick])


def _box(n: int, rng: np.random.Generator, half=(1.0, 1.0, 1.0), center=(0.0, 0.0, 0.0)) -> np.ndarray:
    """``n`` points on the surface of an axis-aligned box."""
    hx, hy, hz = half
    corners = np.array([[x, y, z] for x in (-hx, hx) for y in (-hy, hy) for z in (-hz, hz)])
    faces = [(0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5)]
    tris = np.array([[corners[f[0]], corners[f[1]], corners[f[2]]] for f in faces]
                    + [[corners[f[0]], corners[f[2]], corners[f[3]]] for f in faces])  # fmt: skip
    return _triangles(n, tris, rng) + np.asarray(center)


def _sphere(n: int, rng: np.random.Generator, radius: float = 1.0, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    x = rng.normal(size=(n, 3))
    return radius * x / np.linalg.norm(x, axis=1, keepdims=True) + np.asarray(center)


def _cylinder(n: int, rng: np.random.Generator, radius: float, height: float, z0: float = 0.0,
              caps: bool = True) -> np.ndarray:  # fmt: skip
    """A cylinder along z from ``z0`` to ``z0 + height``, with (or without) its two caps."""
    side, cap = 2 * np.pi * radius * height, np.pi * radius**2
    parts = rng.choice(3, n, p=np.array([side, cap, cap]) / (side + 2 * cap)) if caps else np.zeros(n, int)
    theta = rng.uniform(0, 2 * np.pi, n)
    r = np.where(parts == 0, radius, radius * np.sqrt(rng.random(n)))
    z = np.where(parts == 0, z0 + height * rng.random(n), np.where(parts == 1, z0, z0 + height))
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)


def _cone(n: int, rng: np.random.Generator, radius: float, height: float, z0: float = 0.0,
          base: bool = True) -> np.ndarray:  # fmt: skip
    """A cone with its base disk at ``z0`` and apex at ``z0 + height``."""
    slant = np.pi * radius * np.hypot(radius, height)
    disk = np.pi * radius**2 if base else 0.0
    on_base = rng.random(n) < disk / (slant + disk)
    theta = rng.uniform(0, 2 * np.pi, n)
    s = np.sqrt(rng.random(n))  # density ∝ distance from the apex on the lateral surface
    r = np.where(on_base, radius * np.sqrt(rng.random(n)), radius * s)
    z = np.where(on_base, z0, z0 + height * (1 - s))
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)


def _torus(n: int, rng: np.random.Generator, major: float = 0.8, minor: float = 0.3) -> np.ndarray:
    out = np.zeros((0, 3))
    while len(out) < n:  # rejection: the surface element is ∝ (R + r cos φ)
        theta, phi = rng.uniform(0, 2 * np.pi, (2, 2 * n))
        keep = rng.random(2 * n) < (major + minor * np.cos(phi)) / (major + minor)
        ring = major + minor * np.cos(phi[keep])
        out = np.concatenate([out, np.stack([ring * np.cos(theta[keep]), ring * np.sin(theta[keep]),
                                             minor * np.sin(phi[keep])], axis=1)])  # fmt: skip
    return out[:n]


def _pyramid(n: int, rng: np.random.Generator, half: float = 0.8, height: float = 1.6) -> np.ndarray:
    base = np.array([[-half, -half, 0], [half, -half, 0], [half, half, 0], [-half, half, 0]], float)
    apex = np.array([0.0, 0.0, height])
    tris = [[base[0], base[1], base[2]], [base[0], base[2], base[3]]]
    tris += [[base[i], base[(i + 1) % 4], apex] for i in range(4)]
    return _triangles(n, np.array(tris), rng)


def _split(n: int, weights) -> list[int]:
    """``n`` points split in proportion to ``weights`` (at least one each, summing to ``n``)."""
    w = np.asarray(weights, float)
    counts = np.maximum(1, np.floor(n * w / w.sum()).astype(int))
    counts[0] += n - counts.sum()
    return counts.tolist()


def _bowl(n: int, rng: np.random.Generator) -> np.ndarray:
    x = _sphere(n, rng)
    x[:, 2] = -np.abs(x[:, 2])
    return x


def _composite(n: int, rng: np.random.Generator, parts) -> np.ndarray:
    """Parts ``[(weight, sampler(k, rng)), ...]``, with points shared in proportion to the weights."""
    counts = _split(n, [w for w, _ in parts])
    return np.concatenate([sample(k, rng) for k, (_, sample) in zip(counts, parts, strict=True)])


def _shape(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if name == "sphere":
        return _sphere(n, rng)
    if name == "cube":
        return _box(n, rng)
    if name == "cylinder":
        return _cylinder(n, rng, 0.6, 2.0)
    if name == "cone":
        return _cone(n, rng, 0.8, 2.0)
    if name == "torus":
        return _torus(n, rng)
    if name == "pyramid":
        return _pyramid(n, rng)
    if name == "two_spheres":
        return _composite(n, rng, [(1, lambda k, r: _sphere(k, r, 0.6, (-0.9, 0, 0))),
                                   (1, lambda k, r: _sphere(k, r, 0.6, (0.9, 0, 0)))])  # fmt: skip
    if name == "cube_sphere":
        return _composite(n, rng, [(24 * 0.36, lambda k, r: _box(k, r, (0.6, 0.6, 0.6))),
                                   (4 * np.pi * 0.25, lambda k, r: _sphere(k, r, 0.5, (0, 0, 1.1)))])  # fmt: skip
    if name == "rocket":
        body = (2 * np.pi * 0.5 * 1.6, lambda k, r: _cylinder(k, r, 0.5, 1.6, -1.0))
        nose = (np.pi * 0.5 * 1.1, lambda k, r: _cone(k, r, 0.5, 1.0, 0.6, base=False))
        return _composite(n, rng, [body, nose])
    if name == "cross":
        bars = [(1.0, 0.2, 0.2), (0.2, 1.0, 0.2), (0.2, 0.2, 1.0)]
        return _composite(n, rng, [(1, lambda k, r, h=h: _box(k, r, h)) for h in bars])
    if name == "disk":
        return _cylinder(n, rng, 1.0, 0.2, -0.1)
    if name == "bowl":
        return _bowl(n, rng)
    raise DatasetError(f"unknown shape {name!r}; choose one of {', '.join(SHAPES3D_CLASSES)}.")


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))  # uniform over O(3)
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]  # a proper rotation
    return q


def shape_cloud(name: str, points: int, rng: np.random.Generator, noise: float = 0.01) -> np.ndarray:
    """One example of class ``name``: surface points, random scale, rotation and noise, unit-sphere normalised.

    Args:
      name: a class of :data:`SHAPES3D_CLASSES`.
      points: points per cloud.
      rng: the generator every random choice is drawn from.
      noise: standard deviation of the Gaussian jitter added to every coordinate.

    Returns:
      float32 ``[points, 3]``.
    """
    x = _shape(name, points, rng) * rng.uniform(0.75, 1.25, 3)
    x = x @ _random_rotation(rng).T + noise * rng.normal(size=x.shape)
    return normalize_points(x)


def shapes3d(split: str = "train", points: int = SHAPES3D_POINTS, per_class: int | None = None, seed: int = 0,
             noise: float = 0.01) -> Dataset:  # fmt: skip
    """The ``shapes3d`` point-cloud dataset (see the module docstring).

    Args:
      split: ``"train"`` or ``"test"`` (independent draws).
      points: points per cloud (default 256).
      per_class: examples per class (default 128 for train, 32 for test).
      seed: the dataset's seed; the same seed gives the same clouds.
      noise: Gaussian jitter on every coordinate (before normalisation).

    Returns:
      A point-cloud :class:`Dataset` (``kind="features"``, examples ``[points, 3]``), classes in order.
    """
    points = check_points_option(points)
    per_class = (SHAPES3D_TRAIN if split == "train" else SHAPES3D_TEST) if per_class is None else per_class
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise DatasetError(f"per_class must be a positive integer; got {per_class!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed must be an integer ≥ 0; got {seed!r}.")
    if not 0 <= float(noise) < 1:
        raise DatasetError(f"noise must lie in [0, 1); got {noise}.")
    split_id = {"train": 0, "test": 1}[split]
    clouds, labels = [], []
    for label, name in enumerate(SHAPES3D_CLASSES):
        for i in range(int(per_class)):
            rng = np.random.default_rng([int(seed), split_id, label, i])
            clouds.append(shape_cloud(name, points, rng, noise))
            labels.append(label)
    order = np.random.default_rng([int(seed), split_id, 0x5EED]).permutation(len(labels))  # classes interleaved
    return point_cloud_dataset(np.stack(clouds)[order], np.asarray(labels)[order], SHAPES3D_CLASSES, "shapes3d",
                               split, "shapes3d", f"generated (seed {seed})")  # fmt: skip
