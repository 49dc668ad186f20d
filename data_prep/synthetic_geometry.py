"""Surface primitives of the synthetic rooms and their area-uniform point sampling (numpy only).

Rooms are made of three primitive types, stored as flat arrays so that one vectorised pass samples a
whole room: quads (parallelograms `origin + s*u + t*v`, s, t in [0, 1], optionally rippled along their
normal like a curtain), tubes (open vertical cylinder sides) and discs (horizontal caps). Every point
comes back with its exact surface normal and the index of the primitive it lies on, which carries the
object identity (and hence the label) through every later step.
"""

import dataclasses

import numpy as np

from ppt_jax.data import augment

_UP = np.array([0.0, 0.0, 1.0])


@dataclasses.dataclass
class Primitives:
    """A growing list of primitives; `owner` is the object index of each primitive."""

    quads: list = dataclasses.field(default_factory=list)   # (origin, u, v, ripple_amp, ripple_len, owner)
    tubes: list = dataclasses.field(default_factory=list)   # (base_centre, radius, height, owner)
    discs: list = dataclasses.field(default_factory=list)   # (centre, radius, facing_up, owner)

    def quad(self, origin, u, v, owner, ripple=(0.0, 1.0)):
        self.quads.append((np.asarray(origin, float), np.asarray(u, float), np.asarray(v, float),
                           float(ripple[0]), float(ripple[1]), owner))

    def tube(self, base, radius, height, owner, top=False, bottom=False):
        self.tubes.append((np.asarray(base, float), float(radius), float(height), owner))
        if top:
            self.discs.append((np.asarray(base, float) + height * _UP, float(radius), True, owner))
        if bottom:
            self.discs.append((np.asarray(base, float), float(radius), False, owner))

    def box(self, centre, size, owner, omit=(), yaw=0.0):
        """Six outward-facing quads of a box turned by `yaw` about its vertical axis; `omit` names
        faces ("+x", "-z", ...) in the box's own axes that nobody can see (resting on or against
        something), so they are not sampled."""
        centre, half = np.asarray(centre, float), np.asarray(size, float) / 2
        rot = augment.rotation_matrix(yaw, "z")
        for axis in range(3):
            for sign, name in ((1, "+"), (-1, "-")):
                if name + "xyz"[axis] in omit:
                    continue
                a, b = ((axis + 1) % 3, (axis + 2) % 3) if sign > 0 else ((axis + 2) % 3, (axis + 1) % 3)
                u, v = np.zeros(3), np.zeros(3)
                u[a], v[b] = 2 * half[a], 2 * half[b]
                corner = centre.copy()
                corner[axis] += sign * half[axis]
                corner -= u / 2 + v / 2
                self.quad(centre + rot @ (corner - centre), rot @ u, rot @ v, owner)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sample_quads(quads, density, rng):
    origin, u, v = (np.array([q[i] for q in quads]).reshape(-1, 3) for i in range(3))
    amp = np.array([q[3] for q in quads])
    wavelength = np.array([q[4] for q in quads])
    cross = np.cross(u, v)
    area = np.linalg.norm(cross, axis=1)
    prim = np.repeat(np.arange(len(quads)), rng.poisson(area * density))
    s, t = rng.random(len(prim)), rng.random(len(prim))
    normal = cross[prim] / area[prim, None]
    length = np.linalg.norm(u, axis=1)[prim]
    phase = 2 * np.pi * s * length / wavelength[prim]
    coord = origin[prim] + s[:, None] * u[prim] + t[:, None] * v[prim]
    coord += (amp[prim] * np.sin(phase))[:, None] * normal
    # Normal of the rippled sheet: n - dh/ds_metric * u_hat (h = amp sin(phase)).
    slope = amp[prim] * 2 * np.pi / wavelength[prim] * np.cos(phase)
    normal = _unit(normal - slope[:, None] * u[prim] / length[:, None])
    return coord, normal, prim


def _sample_tubes(tubes, density, rng):
    base = np.array([t[0] for t in tubes]).reshape(-1, 3)
    radius = np.array([t[1] for t in tubes])
    height = np.array([t[2] for t in tubes])
    prim = np.repeat(np.arange(len(tubes)), rng.poisson(2 * np.pi * radius * height * density))
    theta = rng.random(len(prim)) * 2 * np.pi
    normal = np.stack([np.cos(theta), np.sin(theta), np.zeros_like(theta)], 1)
    coord = base[prim] + radius[prim, None] * normal
    coord[:, 2] += rng.random(len(prim)) * height[prim]
    return coord, normal, prim


def _sample_discs(discs, density, rng):
    centre = np.array([d[0] for d in discs]).reshape(-1, 3)
    radius = np.array([d[1] for d in discs])
    up = np.array([1.0 if d[2] else -1.0 for d in discs])
    prim = np.repeat(np.arange(len(discs)), rng.poisson(np.pi * radius ** 2 * density))
    r = radius[prim] * np.sqrt(rng.random(len(prim)))
    theta = rng.random(len(prim)) * 2 * np.pi
    coord = centre[prim] + np.stack([r * np.cos(theta), r * np.sin(theta), np.zeros_like(r)], 1)
    normal = np.zeros((len(prim), 3))
    normal[:, 2] = up[prim]
    return coord, normal, prim


def sample(prims, density, rng):
    """Area-uniform Poisson sampling at `density` points/m^2 -> coord, normal (unit), owner (object)."""
    parts = []
    for items, sampler in ((prims.quads, _sample_quads), (prims.tubes, _sample_tubes),
                           (prims.discs, _sample_discs)):
        if items:
            coord, normal, prim = sampler(items, density, rng)
            owners = np.array([item[-1] for item in items], np.int64)
            parts.append((coord, normal, owners[prim]))
    coord = np.concatenate([p[0] for p in parts])
    normal = np.concatenate([p[1] for p in parts])
    owner = np.concatenate([p[2] for p in parts])
    return coord, normal, owner
