"""Room layouts for the synthetic data: what stands where, independent of any dataset.

A room is an axis-aligned box (floor, ceiling, one wall object per side, doors and windows cut out of
the walls) furnished by room type. Every object is of one *kind* (KINDS) and is built by one builder
from boxes, tubes and discs with one size distribution, whatever dataset the room is later rendered
as: a bookshelf looks the same whether ScanNet calls it "bookshelf", S3DIS "bookcase" or Structured3D
"shelves". Which rooms occur differs by dataset (`ROOM_TYPES` weights live with the domains).

Objects are placed by rejection sampling: wall furniture backs onto a wall, free furniture stands
clear of others and of door swings, chairs face their table or desk, small things rest on support
surfaces (beds, desks, shelves), and hung things avoid openings and each other on their wall.
"""

import colorsys
import dataclasses

import numpy as np

from data_prep import synthetic_geometry as geo
from ppt_jax.data import augment

KINDS = (
    "wall", "floor", "ceiling", "beam", "column", "door", "window", "picture", "board", "mirror",
    "curtain", "shower_curtain", "cabinet", "bed", "chair", "sofa", "table", "desk", "bookshelf",
    "book", "counter", "sink", "refrigerator", "toilet", "bathtub", "dresser", "nightstand", "pillow",
    "lamp", "television", "garbagebin", "radiator", "monitor", "prop",
)

# Room type -> (width range, depth range) in metres and its contents: (kind, min count, max count).
ROOMS = {
    "bedroom": ((3.0, 5.0), (3.0, 5.5), [
        ("door", 1, 1), ("window", 1, 2), ("bed", 1, 1), ("nightstand", 0, 2), ("dresser", 0, 1),
        ("cabinet", 0, 1), ("desk", 0, 1), ("bookshelf", 0, 1), ("television", 0, 1),
        ("picture", 0, 2), ("mirror", 0, 1), ("garbagebin", 0, 1), ("lamp", 0, 2), ("pillow", 1, 3),
        ("curtain", 0, 2), ("prop", 0, 3)]),
    "living": ((4.0, 7.0), (3.5, 6.0), [
        ("door", 1, 2), ("window", 1, 3), ("sofa", 1, 2), ("table", 1, 1), ("cabinet", 0, 2),
        ("bookshelf", 0, 2), ("television", 0, 1), ("chair", 0, 3), ("radiator", 0, 1),
        ("picture", 0, 3), ("lamp", 0, 2), ("pillow", 0, 3), ("curtain", 0, 2), ("prop", 1, 4)]),
    "kitchen": ((2.5, 5.0), (2.5, 4.5), [
        ("door", 1, 1), ("window", 0, 1), ("counter", 1, 2), ("refrigerator", 1, 1),
        ("cabinet", 1, 3), ("table", 0, 1), ("chair", 0, 4), ("garbagebin", 0, 1), ("sink", 1, 1),
        ("prop", 1, 4)]),
    "bathroom": ((1.8, 3.0), (1.8, 3.2), [
        ("door", 1, 1), ("window", 0, 1), ("bathtub", 0, 1), ("toilet", 1, 1), ("sink", 1, 1),
        ("cabinet", 0, 1), ("mirror", 0, 1), ("garbagebin", 0, 1), ("shower_curtain", 0, 1),
        ("prop", 0, 2)]),
    "office": ((3.0, 6.0), (3.0, 6.0), [
        ("door", 1, 1), ("window", 0, 2), ("desk", 1, 4), ("cabinet", 1, 3), ("bookshelf", 0, 2),
        ("table", 0, 1), ("board", 0, 1), ("radiator", 0, 1), ("picture", 0, 1),
        ("garbagebin", 0, 2), ("chair", 0, 2), ("monitor", 0, 4), ("prop", 3, 8)]),
    "conference": ((5.0, 8.0), (4.0, 7.0), [
        ("door", 1, 2), ("window", 0, 2), ("table", 1, 1), ("board", 1, 2), ("television", 0, 1),
        ("cabinet", 0, 1), ("chair", 4, 10), ("prop", 0, 3)]),
    "hallway": ((1.6, 2.4), (6.0, 11.0), [
        ("door", 2, 5), ("picture", 0, 2), ("board", 0, 1), ("cabinet", 0, 1),
        ("garbagebin", 0, 1), ("prop", 0, 2)]),
    "storage": ((2.5, 5.0), (2.5, 5.0), [
        ("door", 1, 1), ("cabinet", 1, 4), ("bookshelf", 1, 3), ("table", 0, 1), ("prop", 4, 10)]),
    "lounge": ((4.0, 7.0), (4.0, 7.0), [
        ("door", 1, 1), ("window", 1, 2), ("sofa", 1, 2), ("table", 1, 2), ("chair", 2, 4),
        ("lamp", 0, 1), ("picture", 0, 2), ("prop", 1, 3)]),
}

_WOOD = [(0.55, 0.38, 0.24), (0.68, 0.52, 0.36), (0.42, 0.30, 0.20), (0.78, 0.66, 0.50)]
_WHITE = [(0.93, 0.93, 0.91), (0.88, 0.87, 0.84)]
_GREY = [(0.55, 0.55, 0.57), (0.35, 0.35, 0.37), (0.20, 0.20, 0.22)]
_WALL = [(0.92, 0.91, 0.88), (0.85, 0.84, 0.80), (0.80, 0.82, 0.84), (0.90, 0.86, 0.78),
         (0.76, 0.80, 0.73)]
_FLOOR = _WOOD[:2] + [(0.45, 0.45, 0.48), (0.35, 0.38, 0.45), (0.82, 0.80, 0.76)]
_FURNITURE = _WOOD + _WHITE + _GREY[:2]
# kind -> list of albedos, or (saturation, value) for a random hue (fabrics, covers, props).
_PALETTE = {
    "wall": _WALL, "beam": _WALL, "column": _WALL, "floor": _FLOOR, "ceiling": _WHITE,
    "door": _WOOD + _WHITE[:1], "window": [(0.70, 0.80, 0.88), (0.60, 0.66, 0.70)],
    "picture": (0.6, 0.7), "board": [(0.96, 0.96, 0.96)], "mirror": [(0.75, 0.78, 0.80)],
    "curtain": (0.35, 0.75), "shower_curtain": (0.25, 0.9), "cabinet": _FURNITURE,
    "bed": (0.2, 0.9), "chair": _GREY + _WOOD[:2] + [(0.3, 0.35, 0.6)], "sofa": (0.4, 0.55),
    "table": _FURNITURE, "desk": _FURNITURE, "bookshelf": _FURNITURE, "book": (0.7, 0.6),
    "counter": [(0.85, 0.85, 0.82), (0.30, 0.30, 0.30), (0.70, 0.62, 0.52)],
    "sink": [(0.92, 0.92, 0.92), (0.70, 0.70, 0.72)], "refrigerator": [(0.92, 0.92, 0.92),
                                                                      (0.75, 0.76, 0.78)],
    "toilet": [(0.96, 0.96, 0.95)], "bathtub": [(0.96, 0.96, 0.95)], "dresser": _FURNITURE,
    "nightstand": _FURNITURE, "pillow": (0.3, 0.85), "lamp": [(0.90, 0.85, 0.70), (0.30, 0.30, 0.30)],
    "television": [(0.08, 0.08, 0.09)], "monitor": [(0.08, 0.08, 0.09), (0.20, 0.20, 0.22)],
    "garbagebin": [(0.30, 0.30, 0.32), (0.20, 0.40, 0.70)], "radiator": [(0.93, 0.93, 0.93)],
    "prop": (0.6, 0.6),
}


@dataclasses.dataclass
class Room:
    """Geometry and semantics of one room, before any sensor: one entry per object in the lists."""

    size: np.ndarray                                     # (3,) width, depth, height in metres
    room_type: str
    prims: geo.Primitives = dataclasses.field(default_factory=geo.Primitives)
    kinds: list = dataclasses.field(default_factory=list)
    parents: list = dataclasses.field(default_factory=list)   # object a part belongs to, or -1
    albedo: list = dataclasses.field(default_factory=list)    # (3,) float in [0, 1]
    solids: list = dataclasses.field(default_factory=list)    # (centre, size, yaw, owner)

    def new_object(self, kind, rng, parent=-1):
        if kind not in KINDS:
            raise ValueError(f"unknown object kind {kind!r}")
        self.kinds.append(kind)
        self.parents.append(parent)
        self.albedo.append(_albedo(kind, rng))
        return len(self.kinds) - 1

    def family(self):
        """Per object: the root object it belongs to (books -> their bookshelf)."""
        return np.array([p if p >= 0 else i for i, p in enumerate(self.parents)], np.int64)


def _albedo(kind, rng):
    palette = _PALETTE[kind]
    if isinstance(palette, tuple):
        sat, val = palette
        rgb = colorsys.hsv_to_rgb(rng.random(), sat * rng.uniform(0.6, 1.0), val * rng.uniform(0.8, 1.1))
    else:
        rgb = palette[rng.integers(len(palette))]
    return np.clip(np.asarray(rgb) * rng.uniform(0.92, 1.08, 3), 0.0, 1.0)


@dataclasses.dataclass
class Pose:
    """Object frame -> room frame: rotate by `yaw` about z, then move the origin to (x, y, 0)."""

    x: float
    y: float
    yaw: float

    def apply(self, local):
        return np.array([self.x, self.y, 0.0]) + augment.rotation_matrix(self.yaw, "z") @ np.asarray(local, float)

    def footprint(self, w, d):
        """Axis-aligned (xmin, ymin, xmax, ymax) of a w x d rectangle centred on the origin."""
        c, s = abs(np.cos(self.yaw)), abs(np.sin(self.yaw))
        hx, hy = (w * c + d * s) / 2, (w * s + d * c) / 2
        return np.array([self.x - hx, self.y - hy, self.x + hx, self.y + hy])


@dataclasses.dataclass
class Support:
    """A horizontal surface things can be put on, in its owner's frame."""

    pose: Pose
    centre: tuple       # (x, y) of the surface in the owner's frame
    width: float
    depth: float
    z: float
    clearance: float    # free height above it
    owner: int
    taken: list = dataclasses.field(default_factory=list)  # (x0, y0, x1, y1) already occupied


_FACES = ("+x", "-x", "+y", "-y", "+z", "-z")


class _Builder:
    """Adds one object's parts in its own frame; records solids and support surfaces."""

    def __init__(self, layout, owner, pose):
        self.layout, self.owner, self.pose = layout, owner, pose

    def box(self, centre, size, omit=(), solid=False):
        world = self.pose.apply(centre)
        self.layout.room.prims.box(world, size, self.owner, omit=omit, yaw=self.pose.yaw)
        if solid:
            self.layout.room.solids.append((world, np.asarray(size, float), self.pose.yaw, self.owner))

    def face(self, centre, size, keep):
        """One quad: a box flat along one axis, keeping only the face named `keep` ("+x", ...)."""
        self.box(centre, size, omit=tuple(f for f in _FACES if f != keep))

    def tube(self, base, radius, height, top=False, bottom=False):
        self.layout.room.prims.tube(self.pose.apply(base), radius, height, self.owner, top, bottom)

    def support(self, centre, width, depth, z, clearance=1.0):
        self.layout.supports.append(Support(self.pose, centre, width, depth, z, clearance, self.owner))


# --- object builders: (w, d, h) in the object frame, origin at the floor centre, +y = front --------

def _legs(b, w, d, h, r=0.02):
    for sx in (-1, 1):
        for sy in (-1, 1):
            b.tube((sx * (w / 2 - 2 * r), sy * (d / 2 - 2 * r), 0.0), r, h)


def _table(b, w, d, h, rng):
    top = 0.04
    b.box((0, 0, h - top / 2), (w, d, top))
    _legs(b, w, d, h - top)
    b.support((0, 0), w, d, h)


def _desk(b, w, d, h, rng):
    top, panel = 0.03, 0.03
    b.box((0, 0, h - top / 2), (w, d, top))
    for sx in (-1, 1):
        b.box((sx * (w / 2 - panel / 2), 0, (h - top) / 2), (panel, d, h - top), omit=("-z",))
    b.box((0, -d / 2 + 0.05, (h - top) / 2 + 0.15), (w - 2 * panel, 0.02, h - top - 0.3))
    b.support((0, 0), w, d, h)


def _chair(b, w, d, h, rng):
    seat = 0.45
    b.box((0, 0, seat - 0.03), (w, d, 0.06))
    b.box((0, -d / 2 + 0.03, (seat + h) / 2), (w, 0.05, h - seat), omit=("-z",))
    _legs(b, w, d, seat - 0.06, r=0.015)


def _sofa(b, w, d, h, rng):
    seat, arm, back = 0.42, 0.16, 0.22
    b.box((0, 0, seat / 2), (w, d, seat), omit=("-z", "-y"), solid=True)
    b.box((0, -d / 2 + back / 2, (seat + h) / 2), (w, back, h - seat), omit=("-z", "-y"), solid=True)
    for sx in (-1, 1):
        b.box((sx * (w / 2 - arm / 2), back / 2, seat + 0.1), (arm, d - back, 0.2), omit=("-z",),
              solid=True)
    b.support((0, back / 2), w - 2 * arm, d - back, seat, clearance=0.5)


def _bed(b, w, d, h, rng):
    base, mattress = 0.3, 0.22
    board = 0.06  # the headboard stands against the wall, the frame in front of it
    b.box((0, board / 2, base / 2), (w, d - board, base), omit=("-z",), solid=True)
    b.box((0, board / 2, base + mattress / 2), (w - 0.04, d - board - 0.04, mattress), omit=("-z",),
          solid=True)
    b.box((0, -d / 2 + board / 2, h / 2), (w, board, h), omit=("-y", "-z"), solid=True)
    b.support((0, -d / 2 + 0.4), w - 0.1, 0.6, base + mattress, clearance=0.4)


def _box_furniture(b, w, d, h, rng):  # cabinet, dresser, nightstand, counter, refrigerator, radiator
    b.box((0, 0, h / 2), (w, d, h), omit=("-z", "-y"), solid=True)
    b.support((0, 0), w, d, h)


def _bookshelf(b, w, d, h, rng):
    t = 0.025
    for sx in (-1, 1):
        b.box((sx * (w / 2 - t / 2), 0, h / 2), (t, d, h), omit=("-z", "-y"))
    b.box((0, -d / 2 + t / 2, h / 2), (w - 2 * t, t, h), omit=("-y",), solid=True)
    levels = rng.integers(4, 6)
    gap = (h - t) / levels
    for i in range(levels + 1):
        z = min(i * gap + t / 2, h - t / 2)
        b.box((0, t / 2, z), (w - 2 * t, d - t, t))
        if i < levels:
            b.support((0, t / 2), w - 2 * t - 0.02, d - t, z + t / 2, clearance=gap - t - 0.02)


def _toilet(b, w, d, h, rng):
    b.tube((0, 0.08, 0), 0.19, 0.4, top=True)
    b.box((0, -d / 2 + 0.1, 0.6), (w, 0.2, 0.4), omit=("-y",), solid=True)
    b.layout.room.solids.append((b.pose.apply((0, 0.08, 0.2)), np.array([0.36, 0.36, 0.4]),
                                 b.pose.yaw, b.owner))


def _bathtub(b, w, d, h, rng):
    t, bottom = 0.06, 0.1
    b.box((0, 0, h / 2), (w, d, h), omit=("-z", "+z", "-y"), solid=True)
    b.face((0, 0, bottom), (w - 2 * t, d - 2 * t, 0.0), "+z")
    inner = (h + bottom) / 2, h - bottom
    b.face((-w / 2 + t, 0, inner[0]), (0.0, d - 2 * t, inner[1]), "+x")
    b.face((w / 2 - t, 0, inner[0]), (0.0, d - 2 * t, inner[1]), "-x")
    b.face((0, -d / 2 + t, inner[0]), (w - 2 * t, 0.0, inner[1]), "+y")
    b.face((0, d / 2 - t, inner[0]), (w - 2 * t, 0.0, inner[1]), "-y")
    b.face((0, -d / 2 + t / 2, h), (w, t, 0.0), "+z")
    b.face((0, d / 2 - t / 2, h), (w, t, 0.0), "+z")
    for sx in (-1, 1):
        b.face((sx * (w / 2 - t / 2), 0, h), (t, d - 2 * t, 0.0), "+z")


def _sink(b, w, d, h, rng):
    b.box((0, 0, h - 0.08), (w, d, 0.16), omit=("-y",))
    if h > 0.5:  # a wall-hung basin on a pedestal
        b.tube((0, 0, 0), 0.08, h - 0.16)


def _lamp(b, w, d, h, rng):
    b.tube((0, 0, 0), w / 2 * 0.6, 0.02, top=True)
    b.tube((0, 0, 0.02), 0.012, h - 0.25)
    b.tube((0, 0, h - 0.3), w / 2, 0.3)


def _garbagebin(b, w, d, h, rng):
    b.tube((0, 0, 0), w / 2, h, top=True)


def _pillow(b, w, d, h, rng):
    b.box((0, 0, h / 2), (w, d, h), omit=("-z",))


def _prop(b, w, d, h, rng):
    if rng.random() < 0.3:
        b.tube((0, 0, 0), min(w, d) / 2, h, top=True)
    else:
        b.box((0, 0, h / 2), (w, d, h), omit=("-z",))


def _monitor(b, w, d, h, rng):
    b.box((0, 0, 0.01), (0.2, 0.15, 0.02), omit=("-z",))
    b.box((0, -0.02, 0.08), (0.04, 0.02, 0.12), omit=("-z",))
    b.box((0, 0, 0.14 + (h - 0.14) / 2), (w, 0.04, h - 0.14))


# kind -> (builder or None for flat hung things, (w, d, h) size ranges in metres)
_KIND_SPECS = {
    "cabinet": (_box_furniture, ((0.5, 1.2), (0.4, 0.6), (0.7, 2.0))),
    "dresser": (_box_furniture, ((0.8, 1.6), (0.45, 0.55), (0.8, 1.2))),
    "nightstand": (_box_furniture, ((0.4, 0.55), (0.35, 0.45), (0.45, 0.6))),
    "counter": (_box_furniture, ((1.2, 2.8), (0.58, 0.65), (0.86, 0.92))),
    "refrigerator": (_box_furniture, ((0.6, 0.9), (0.6, 0.7), (1.7, 1.95))),
    "radiator": (_box_furniture, ((0.6, 1.4), (0.08, 0.12), (0.45, 0.6))),
    "bed": (_bed, ((1.0, 1.9), (1.9, 2.1), (0.8, 1.1))),
    "sofa": (_sofa, ((1.5, 2.4), (0.8, 0.95), (0.75, 0.9))),
    "desk": (_desk, ((1.1, 1.6), (0.6, 0.8), (0.72, 0.76))),
    "bookshelf": (_bookshelf, ((0.7, 1.1), (0.28, 0.4), (1.6, 2.2))),
    "toilet": (_toilet, ((0.4, 0.48), (0.65, 0.72), (0.8, 0.8))),
    "bathtub": (_bathtub, ((1.4, 1.7), (0.7, 0.8), (0.5, 0.6))),
    "table": (_table, ((0.8, 1.8), (0.7, 1.0), (0.72, 0.76))),
    "garbagebin": (_garbagebin, ((0.25, 0.4), (0.25, 0.4), (0.3, 0.65))),
    "lamp": (_lamp, ((0.3, 0.45), (0.3, 0.45), (1.3, 1.7))),
    "chair": (_chair, ((0.42, 0.52), (0.42, 0.52), (0.8, 1.0))),
    "prop": (_prop, ((0.15, 0.5), (0.15, 0.5), (0.1, 0.6))),
    "sink": (_sink, ((0.45, 0.6), (0.38, 0.48), (0.85, 0.88))),
    "picture": (None, ((0.3, 1.0), (0.02, 0.03), (0.3, 0.8))),
    "board": (None, ((1.2, 3.0), (0.02, 0.03), (0.9, 1.2))),
    "mirror": (None, ((0.4, 1.0), (0.01, 0.02), (0.6, 1.1))),
    "television": (None, ((0.8, 1.4), (0.05, 0.08), (0.5, 0.8))),
    "monitor": (_monitor, ((0.45, 0.6), (0.2, 0.2), (0.35, 0.45))),
    "pillow": (_pillow, ((0.45, 0.7), (0.3, 0.45), (0.1, 0.18))),
}
_ON = {"pillow": ("bed", "sofa"), "monitor": ("desk", "table"), "lamp": ("nightstand", "desk"),
       "prop": ("table", "desk", "counter", "cabinet", "dresser", "bookshelf", "nightstand"),
       "sink": ("counter",)}
_HUNG_HEIGHT = {"picture": (1.3, 1.8), "board": (1.4, 1.6), "mirror": (1.3, 1.6),
                "television": (1.1, 1.5)}


class _Layout:
    """Rejection-sampling placement state of one room."""

    def __init__(self, room, rng):
        self.room, self.rng = room, rng
        w, d, _ = room.size
        a = np.array([[w, 0.0], [0.0, 0.0], [0.0, d], [w, d]])
        self.walls = [(a[i], a[(i + 1) % 4]) for i in range(4)]
        self.footprints = []          # (xmin, ymin, xmax, ymax, owner)
        self.wall_spans = [[] for _ in range(4)]   # per wall: (s0, s1, z0, z1)
        self.openings = [[] for _ in range(4)]     # per wall: (s0, s1, z0, z1) cut from the wall
        self.supports = []
        self.windows = []             # (wall, s0, s1, z0, z1)

    def wall_frame(self, i):
        a, b = self.walls[i]
        length = np.linalg.norm(b - a)
        along = (b - a) / length
        normal = np.array([along[1], -along[0]])
        return a, along, normal, length

    def wall_pose(self, i, s, offset):
        a, along, normal, _ = self.wall_frame(i)
        x, y = a + along * s + normal * offset
        return Pose(x, y, float(np.arctan2(-normal[0], normal[1])))

    def span_free(self, i, s0, s1, z0, z1, margin=0.08):
        return all(s1 + margin <= t0 or s0 >= t1 + margin or z1 <= u0 or z0 >= u1
                   for t0, t1, u0, u1 in self.wall_spans[i])

    def floor_free(self, box, margin=0.05):
        w, d, _ = self.room.size
        if box[0] < -1e-6 or box[1] < -1e-6 or box[2] > w + 1e-6 or box[3] > d + 1e-6:
            return False
        return all(box[2] + margin <= f[0] or box[0] >= f[2] + margin or box[3] + margin <= f[1]
                   or box[1] >= f[3] + margin for f in self.footprints)

    def build(self, kind, pose, size, parent=-1):
        owner = self.room.new_object(kind, self.rng, parent)
        builder = _KIND_SPECS[kind][0]
        builder(_Builder(self, owner, pose), *size, self.rng)
        return owner

    def sample_size(self, kind):
        return tuple(self.rng.uniform(lo, hi) for lo, hi in _KIND_SPECS[kind][1])

    # -- placements -----------------------------------------------------------------------------
    def place_opening(self, kind):
        h_room = self.room.size[2]
        if kind == "door":
            w, h, z0 = self.rng.uniform(0.8, 0.95), self.rng.uniform(2.0, 2.1), 0.0
        else:
            w, h = self.rng.uniform(0.8, 2.0), self.rng.uniform(1.0, 1.5)
            z0 = self.rng.uniform(0.8, 1.0)
        h = min(h, h_room - z0 - 0.2)
        for _ in range(30):
            i = int(self.rng.integers(4))
            length = self.wall_frame(i)[3]
            if length < w + 0.4:
                continue
            s0 = self.rng.uniform(0.2, length - w - 0.2)
            if not self.span_free(i, s0, s0 + w, 0.0, h_room):
                continue
            self.wall_spans[i].append((s0, s0 + w, 0.0, h_room))
            self.openings[i].append((s0, s0 + w, z0, z0 + h))
            pose = self.wall_pose(i, s0 + w / 2, 0.0)
            owner = self.room.new_object(kind, self.rng)
            b = _Builder(self, owner, pose)
            if kind == "door":  # a closed leaf standing 2 cm proud of the wall, door swing kept clear
                b.box((0, 0.02, h / 2), (w - 0.04, 0.04, h), omit=("-y",))
                self.footprints.append((*pose.footprint(w, 1.8), owner))
            else:  # glass 15 cm outside the wall plane (a wall's depth), framed by the reveals
                t = 0.15
                b.face((0, -t, z0 + h / 2), (w, 0.0, h), "+y")
                b.face((0, -t / 2, z0), (w, t, 0.0), "+z")
                b.face((0, -t / 2, z0 + h), (w, t, 0.0), "-z")
                b.face((-w / 2, -t / 2, z0 + h / 2), (0.0, t, h), "+x")
                b.face((w / 2, -t / 2, z0 + h / 2), (0.0, t, h), "-x")
                self.windows.append((i, s0, s0 + w, z0, z0 + h))
            return owner
        return None

    def place_on_wall(self, kind, size=None):
        w, d, h = size or self.sample_size(kind)
        for _ in range(30):
            i = int(self.rng.integers(4))
            length = self.wall_frame(i)[3]
            if length < w + 0.1:
                continue
            s = self.rng.uniform(w / 2 + 0.05, length - w / 2 - 0.05)
            pose = self.wall_pose(i, s, d / 2 + 0.01)
            box = pose.footprint(w, d)
            if self.span_free(i, s - w / 2, s + w / 2, 0.0, h) and self.floor_free(box):
                owner = self.build(kind, pose, (w, d, h))
                self.footprints.append((*box, owner))
                self.wall_spans[i].append((s - w / 2, s + w / 2, 0.0, h))
                return owner, pose, (w, d, h)
        return None

    def place_hung(self, kind):
        w, d, h = self.sample_size(kind)
        lo, hi = _HUNG_HEIGHT[kind]
        for _ in range(30):
            i = int(self.rng.integers(4))
            length = self.wall_frame(i)[3]
            zc = self.rng.uniform(lo, hi)
            if length < w + 0.2 or zc + h / 2 > self.room.size[2] - 0.1:
                continue
            s = self.rng.uniform(w / 2 + 0.1, length - w / 2 - 0.1)
            if self.span_free(i, s - w / 2, s + w / 2, zc - h / 2, zc + h / 2):
                self.wall_spans[i].append((s - w / 2, s + w / 2, zc - h / 2, zc + h / 2))
                owner = self.room.new_object(kind, self.rng)
                pose = self.wall_pose(i, s, d / 2 + 0.005)
                _Builder(self, owner, pose).box((0, 0, zc), (w, d, h), omit=("-y",))
                return owner
        return None

    def place_free(self, kind, size=None, pose=None):
        w, d, h = size or self.sample_size(kind)
        room_w, room_d, _ = self.room.size
        for _ in range(1 if pose else 30):
            if pose is None:
                yaw = self.rng.choice([0.0, np.pi / 2]) + self.rng.normal(0, 0.1)
                cand = Pose(self.rng.uniform(0, room_w), self.rng.uniform(0, room_d), float(yaw))
            else:
                cand = pose
            box = cand.footprint(w, d)
            if self.floor_free(box):
                owner = self.build(kind, cand, (w, d, h))
                self.footprints.append((*box, owner))
                return owner, cand
        return None

    def place_on(self, kind, hosts):
        """Put a small thing on a free spot of a support surface of one of the `hosts` kinds."""
        w, d, h = self.sample_size(kind)
        if kind == "lamp":    # a table lamp
            w, d, h = w * 0.8, d * 0.8, h * 0.35
        if kind == "sink":    # a basin on the counter top
            h = 0.16
        options = [s for s in self.supports if self.room.kinds[s.owner] in hosts and s.clearance > h
                   and s.width > w and s.depth > d]
        if not options:
            return None
        sup = options[int(self.rng.integers(len(options)))]
        for _ in range(10):
            x = sup.centre[0] + self.rng.uniform(-(sup.width - w) / 2, (sup.width - w) / 2)
            y = sup.centre[1] + self.rng.uniform(-(sup.depth - d) / 2, (sup.depth - d) / 2)
            rect = (x - w / 2, y - d / 2, x + w / 2, y + d / 2)
            if all(rect[2] <= t[0] or rect[0] >= t[2] or rect[3] <= t[1] or rect[1] >= t[3]
                   for t in sup.taken):
                break
        else:
            return None
        sup.taken.append(rect)
        base = sup.pose.apply((x, y, 0.0))
        pose = Pose(base[0], base[1], sup.pose.yaw + (self.rng.normal(0, 0.2) if kind == "prop" else 0.0))
        owner = self.room.new_object(kind, self.rng)
        _KIND_SPECS[kind][0](_Lifted(self, owner, pose, sup.z), w, d, h, self.rng)
        return owner

    def place_chairs_at(self, host_pose, host_w, host_d, count, facing_only=False):
        placed = 0
        sides = [(0, 1)] if facing_only else [(0, 1), (0, -1), (1, 0), (-1, 0)]
        for k in range(count):
            sx, sy = sides[k % len(sides)]
            along = self.rng.uniform(-0.3, 0.3) * (host_w if sy else host_d)
            dist = (host_d if sy else host_w) / 2 + 0.3
            local = np.array([sx * dist + (along if not sx else 0), sy * dist + (along if sx else 0), 0])
            x, y, _ = host_pose.apply(local)
            yaw = host_pose.yaw + np.arctan2(sx, -sy) + self.rng.normal(0, 0.15)
            if self.place_free("chair", pose=Pose(x, y, float(yaw))) is not None:
                placed += 1
        return placed


class _Lifted(_Builder):
    """A builder whose object frame sits on a support surface at height `z`."""

    def __init__(self, layout, owner, pose, z):
        super().__init__(layout, owner, pose)
        self.z = z

    def box(self, centre, size, omit=(), solid=False):
        super().box((centre[0], centre[1], centre[2] + self.z), size, omit, solid)

    def tube(self, base, radius, height, top=False, bottom=False):
        super().tube((base[0], base[1], base[2] + self.z), radius, height, top, bottom)

    def support(self, *args, **kwargs):
        pass


_WALL_ORDER = ("bed", "sofa", "counter", "bathtub", "refrigerator", "bookshelf", "desk", "cabinet",
               "dresser", "toilet", "radiator", "nightstand")


def _shell(layout):
    """Floor, ceiling and the four walls, with the doors' and windows' openings cut out."""
    room, rng = layout.room, layout.rng
    w, d, h = room.size
    room.prims.quad((0, 0, 0), (w, 0, 0), (0, d, 0), room.new_object("floor", rng))
    room.prims.quad((0, 0, h), (0, d, 0), (w, 0, 0), room.new_object("ceiling", rng))
    for i in range(4):
        a, along, _, length = layout.wall_frame(i)
        owner = room.new_object("wall", rng)
        cuts = sorted(layout.openings[i])
        edges = sorted({0.0, length, *(c for cut in cuts for c in cut[:2])})
        for s0, s1 in zip(edges[:-1], edges[1:]):
            hole = [c for c in cuts if c[0] <= s0 and s1 <= c[1]]
            spans = [(0.0, hole[0][2]), (hole[0][3], h)] if hole else [(0.0, h)]
            for z0, z1 in spans:
                if z1 - z0 > 1e-6:
                    room.prims.quad((*(a + along * s0), z0), (*(along * (s1 - s0)), 0), (0, 0, z1 - z0),
                                    owner)


def _structure(layout, beams, columns):
    """Ceiling beams across the room and columns half sunk into the walls."""
    room, rng = layout.room, layout.rng
    w, d, h = room.size
    for _ in range(beams):
        bw, bd = rng.uniform(0.25, 0.5), rng.uniform(0.3, 0.55)
        owner = room.new_object("beam", rng)
        if rng.random() < 0.5:
            centre, size, omit = (w / 2, rng.uniform(bw, d - bw), h - bd / 2), (w, bw, bd), ("+z", "+x", "-x")
        else:
            centre, size, omit = (rng.uniform(bw, w - bw), d / 2, h - bd / 2), (bw, d, bd), ("+z", "+y", "-y")
        room.prims.box(centre, size, owner, omit=omit)
        room.solids.append((np.asarray(centre, float), np.asarray(size, float), 0.0, owner))
    for _ in range(columns):
        c = rng.uniform(0.35, 0.6)
        i = int(rng.integers(4))
        length = layout.wall_frame(i)[3]
        s = rng.uniform(c, length - c)
        pose = layout.wall_pose(i, s, c / 4)
        inside = np.clip(pose.footprint(c, c), 0, [w, d, w, d])
        if layout.span_free(i, s - c / 2, s + c / 2, 0.0, h) and layout.floor_free(inside):
            owner = room.new_object("column", rng)
            _Builder(layout, owner, pose).box((0, 0, h / 2), (c, c, h), omit=("+z", "-z"), solid=True)
            layout.footprints.append((*inside, owner))
            layout.wall_spans[i].append((s - c / 2, s + c / 2, 0.0, h))


def _books(layout):
    room, rng = layout.room, layout.rng
    for sup in [s for s in layout.supports if room.kinds[s.owner] == "bookshelf"]:
        if rng.random() < 0.3:
            continue
        x, end = -sup.width / 2, -sup.width / 2 + sup.width * rng.uniform(0.3, 1.0)
        while x < end:
            bw = rng.uniform(0.02, 0.06)
            bd, bh = sup.depth * rng.uniform(0.6, 0.95), sup.clearance * rng.uniform(0.5, 0.9)
            if rng.random() > 0.1:
                local = (sup.centre[0] + x + bw / 2, sup.centre[1] - (sup.depth - bd) / 2, 0.0)
                base = sup.pose.apply(local)
                owner = room.new_object("book", rng, parent=sup.owner)
                _Lifted(layout, owner, Pose(base[0], base[1], sup.pose.yaw), sup.z).box(
                    (0, 0, bh / 2), (bw, bd, bh), omit=("-z",))
            x += bw


def _curtains(layout, count):
    room, rng = layout.room, layout.rng
    for i, s0, s1, _, z1 in layout.windows[:count]:
        a, along, normal, _ = layout.wall_frame(i)
        top = min(room.size[2] - 0.05, z1 + 0.25)
        panel = rng.uniform(0.3, 0.6) * (s1 - s0) + 0.2
        for start in (s0 - 0.15, s1 + 0.15 - panel):
            origin = (*(a + along * start + normal * 0.1), 0.08)
            owner = room.new_object("curtain", rng)
            room.prims.quad(origin, (*(along * panel), 0), (0, 0, top - 0.08), owner,
                            ripple=(rng.uniform(0.02, 0.05), rng.uniform(0.12, 0.25)))


def _shower_curtain(layout, tub):
    owner, pose, (w, d, h) = tub
    origin = pose.apply((w / 2, d / 2 - 0.03, h + 0.05))
    u = augment.rotation_matrix(pose.yaw, "z") @ np.array([-w, 0.0, 0.0])
    rng = layout.rng
    owner = layout.room.new_object("shower_curtain", rng)
    layout.room.prims.quad(origin, u, (0, 0, 2.0 - h - 0.05), owner,
                           ripple=(rng.uniform(0.02, 0.04), rng.uniform(0.1, 0.2)))


def make_room(rng, room_type, height, beams=0, columns=0, require=()):
    """Lay out and build one room of `room_type` (a key of ROOMS); `height` is the ceiling height.
    Kinds in `require` that the room type may hold are drawn at least once (placement can still fail:
    rejection sampling gives up when nothing fits)."""
    if room_type not in ROOMS:
        raise ValueError(f"unknown room type {room_type!r}; known: {sorted(ROOMS)}")
    (w_lo, w_hi), (d_lo, d_hi), contents = ROOMS[room_type]
    size = np.array([rng.uniform(w_lo, w_hi), rng.uniform(d_lo, d_hi), height])
    if rng.random() < 0.5:
        size[[0, 1]] = size[[1, 0]]
    layout = _Layout(Room(size, room_type), rng)
    count = {kind: int(rng.integers(lo, hi + 1)) for kind, lo, hi in contents}
    require = set(require) | ({"bathtub"} if "shower_curtain" in require else set())
    for kind in require & set(count):
        count[kind] = max(count[kind], 1)
    for kind in ("door", "window"):
        for _ in range(count.get(kind, 0)):
            layout.place_opening(kind)
    _structure(layout, beams, columns)
    placed = {}
    for kind in _WALL_ORDER:
        for _ in range(count.get(kind, 0)):
            result = layout.place_on_wall(kind)
            if result:
                placed.setdefault(kind, []).append(result)
    if "sink" in count:
        for _ in range(count["sink"]):
            if not (placed.get("counter") and layout.place_on("sink", _ON["sink"]) is not None):
                layout.place_on_wall("sink")
    chairs = count.get("chair", 0)
    for _ in range(count.get("table", 0)):
        size = layout.sample_size("table")
        if room_type == "conference":
            size = (rng.uniform(2.4, 4.0), rng.uniform(1.1, 1.5), size[2])
        elif room_type in ("living", "lounge") and rng.random() < 0.6:
            size = (size[0], size[1], rng.uniform(0.38, 0.5))  # a coffee table
        table = layout.place_free("table", size)
        if table is not None and size[2] > 0.6 and chairs:
            chairs -= layout.place_chairs_at(table[1], size[0], size[1], chairs)
    for _, pose, (w, d, _) in placed.get("desk", []):
        if rng.random() < 0.85:
            layout.place_chairs_at(pose, w, d, 1, facing_only=True)
    for _ in range(chairs):
        layout.place_free("chair")
    for _ in range(count.get("garbagebin", 0)):
        layout.place_free("garbagebin")
    for kind in ("pillow", "monitor", "lamp", "prop"):
        for _ in range(count.get(kind, 0)):
            on_surface = kind in ("pillow", "monitor") or rng.random() < 0.6
            if not (on_surface and layout.place_on(kind, _ON[kind]) is not None) and kind in ("lamp", "prop"):
                layout.place_free(kind)
    _books(layout)
    for kind in ("picture", "board", "mirror", "television"):
        for _ in range(count.get(kind, 0)):
            layout.place_hung(kind)
    _curtains(layout, count.get("curtain", 0))
    if count.get("shower_curtain") and placed.get("bathtub"):
        _shower_curtain(layout, placed["bathtub"][0])
    _shell(layout)
    return layout.room
