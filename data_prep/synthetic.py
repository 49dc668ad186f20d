"""Synthetic multi-domain indoor data with no download: rooms rendered as ScanNet, S3DIS and Structured3D.

    python -m data_prep.synthetic --out DIR [--scenes 160,80,40] [--val_scenes 20,10,5] [--seed 0]
                                  [--workers N] [--density 0.05] [--gap 1.0]

writes `DIR/<Dataset>/{train,val}/` shards + manifest (`"synthetic": true`) for Dataset in
(Structured3D, ScanNet, S3DIS); counts are given in that order. `generate()` does the same from Python.

Why it reproduces PPT's problem. Rooms come from one generator (`synthetic_rooms`): every object kind
has one geometry whatever domain renders it, so what one domain learns about a chair transfers. The
domains then differ exactly where the real datasets do:

Label spaces (`LABELS`, the real lists of `ppt_jax.labels`, each in its own order). The same object
gets each dataset's real name or no label: a bookshelf is ScanNet "bookshelf", S3DIS "bookcase",
Structured3D "shelves" (NYU40 id 10 is not among its 25 ids, 15 "shelves" is); a desk is an S3DIS
"table" (S3DIS has no desk); S3DIS's "clutter" absorbs every object it has no class for (cabinets,
beds, pillows, lamps, TVs, toilets, ...) and books count as part of their bookcase (S3DIS annotates
whole bookcases); beams and columns are S3DIS classes, Structured3D "otherstructure" (NYU40 38) and
unlabelled in ScanNet's 20 classes; ceilings are unlabelled in ScanNet; pillow, lamp, television,
dresser, nightstand and mirror exist only in Structured3D (ScanNet's NYU40 ids 18/35/25/17/32/19 are
outside its 20); toilet, bathtub, shower curtain and counter only in ScanNet (outside Structured3D's
25); whiteboards are S3DIS "board" only; trash cans and radiators are NYU40 39 "otherfurniture" in
both NYU-labelled datasets; small props are Structured3D "otherprop" and unlabelled in ScanNet.

Sensor character (`DOMAINS`), at strengths estimated from the real data (densities and sizes follow the
datasets' published sizes; noise, colour gains and hole fractions are judgement calls, not fitted: no
real data is available offline):
- ScanNet v2: vertices of BundleFusion RGB-D reconstructions (vh_clean_2 meshes, ~1.5e5 vertices for
  ~90 m^2 of visible surface: ~1700 points/m^2, i.e. ~0.7 per 2 cm cell); surface noise ~1 cm
  (sigma 8 mm along the normal, Structure-sensor depth after TSDF fusion); mesh normals ~9 deg off;
  holes (~6 % of the surface in 0.15-0.45 m blobs; glass mostly missing; ceilings absent in ~85 % of
  scans, partial otherwise; few undersides and tops of tall furniture); auto-white-balanced, warm colours
  (R/B gain 1.12/0.80, 25 % desaturated, per-vertex noise 8/255, slow brightness drift across the
  scan); arbitrary yaw (the reference does not axis-align scans); ~5 % of objects unannotated (-1).
- S3DIS: Matterport scans, dense (~695 M points in 272 rooms: ~2.6e6 per room, ~2e4 points/m^2),
  noise ~5 mm, mesh normals ~5 deg off, few holes (~2 %), glass half captured, ceilings present, beams
  and columns common (office buildings), slightly cool and flat colour (gains 0.96/1.05, 15 %
  desaturated, noise 4/255) with brightness seams (+-8 %) between 4 scan stations; axis-aligned
  rooms at large area offsets; annotation complete.
- Structured3D: photo-realistic renderings back-projected and deduplicated at 1 cm (~8000 points/m^2),
  noiseless but for 1 mm depth quantisation (depth PNGs in mm), exact normals, no holes beyond what
  the cameras cannot see, exact rendered colours, residential rooms only; the largest dataset (~21.8 k
  rooms vs 1.5 k ScanNet scans and 272 S3DIS rooms): default scene counts 4:2:1 (the reference's
  batch ratio Structured3D:ScanNet:S3DIS).

`density` (0, 1] scales what the network sees, not raw points: it is the fraction of the real
dataset's occupied 2 cm cells (the sites left by the reference's GridSample(0.02)). With Poisson
sampling at rho points/m^2 a fraction 1 - exp(-rho a) of cells of area a = 4 cm^2 is occupied, so a
domain with real density R is sampled at rho = -ln(1 - density (1 - exp(-R a))) / a: density 1 is the
real raw density, and small densities keep the real ratios of 2 cm sites between domains (0.49 :
1.0 : 0.96 for ScanNet : S3DIS : Structured3D) instead of exaggerating S3DIS's raw-point surplus,
which grid sampling removes anyway. The default 0.05 gives rooms of ~2-23 k points (means: Structured3D
14 k, ScanNet 5 k, S3DIS 15 k); density 1 gives ~0.2 M (ScanNet), ~0.8 M, ~2 M (S3DIS) points.

Val splits hold every label of their domain, as the real val sets do (`val_plan`, generator version 2):
val scene i < len(val_plan(domain)) is a room of a planned type that draws at least one object of each
label it is picked for (a greedy cover of the domain's labels over its own room mix: 2-4 rooms), redrawn
(up to 8 times) until all of them are in the scan; later val scenes and all train scenes follow the
domain's room mix. Without it a few dozen random val rooms miss rare classes (Structured3D "dresser",
ScanNet "shower curtain"), which the mIoU counts as 0 whatever the model does.

`gap` >= 0 scales every difference between the domains except their label spaces (`domain_spec`): each
field of `Domain` is moved away from the three domains' centre (their mean; the geometric mean for the
raw density) by `gap` times its own distance to it, then clipped to its valid range. gap 1 is the
domains above, unchanged; gap 0 renders every domain with one sensor and one room distribution (the
centre: same density, noise, holes, colour pipeline, room mix), so that only the label spaces differ;
gap 2 doubles every difference (e.g. ScanNet's red/blue gains 1.21/0.65, its raw density 446 points/m^2
against S3DIS's 62 k, hole fractions 9.3 % and 1.3 %). Ranges (exposure, ceiling height) are scaled as
their midpoint and their width.
"""

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import sys

import numpy as np

from data_prep import synthetic_geometry as geo
from data_prep import synthetic_rooms as rooms
from data_prep import writer
from ppt_jax import files, labels
from ppt_jax.data import augment

CELL_AREA = 0.02 ** 2
DEFAULT_DENSITY = 0.05
DEFAULT_SCENES = (160, 80, 40)          # Structured3D, ScanNet, S3DIS (the reference's 4:2:1)
ORDER = (labels.STRUCTURED3D, labels.SCANNET, labels.S3DIS)
GENERATOR_VERSION = 2   # 2: val rooms hold every label (`val_plan`), windows sit 15 cm deep
DEFAULT_GAP = 1.0
_SETTINGS_NAME = "synthetic_settings.json"
_PARENT = "^"   # label of the object this one belongs to

# kind -> label name per dataset (ScanNet, S3DIS, Structured3D); None = unlabelled (-1).
_KIND_LABELS = {
    "wall": ("wall", "wall", "wall"),
    "floor": ("floor", "floor", "floor"),
    "ceiling": (None, "ceiling", "ceiling"),
    "beam": (None, "beam", "otherstructure"),
    "column": (None, "column", "otherstructure"),
    "door": ("door", "door", "door"),
    "window": ("window", "window", "window"),
    "picture": ("picture", "clutter", "picture"),
    "board": (None, "board", None),
    "mirror": (None, "clutter", "mirror"),
    "curtain": ("curtain", "clutter", "curtain"),
    "shower_curtain": ("shower curtain", "clutter", None),
    "cabinet": ("cabinet", "clutter", "cabinet"),
    "bed": ("bed", "clutter", "bed"),
    "chair": ("chair", "chair", "chair"),
    "sofa": ("sofa", "sofa", "sofa"),
    "table": ("table", "table", "table"),
    "desk": ("desk", "table", "desk"),
    "bookshelf": ("bookshelf", "bookcase", "shelves"),
    "book": (None, _PARENT, None),
    "counter": ("counter", "clutter", None),
    "sink": ("sink", "clutter", "sink"),
    "refrigerator": ("refrigerator", "clutter", "refrigerator"),
    "toilet": ("toilet", "clutter", None),
    "bathtub": ("bathtub", "clutter", None),
    "dresser": (None, "clutter", "dresser"),
    "nightstand": (None, "clutter", "nightstand"),
    "pillow": (None, "clutter", "pillow"),
    "lamp": (None, "clutter", "lamp"),
    "television": (None, "clutter", "television"),
    "garbagebin": ("otherfurniture", "clutter", "otherfurniture"),
    "radiator": ("otherfurniture", "clutter", "otherfurniture"),
    "monitor": (None, "clutter", "otherprop"),
    "prop": (None, "clutter", "otherprop"),
}
LABELS = {ds: {kind: names[i] for kind, names in _KIND_LABELS.items()}
          for i, ds in enumerate((labels.SCANNET, labels.S3DIS, labels.STRUCTURED3D))}


@dataclasses.dataclass(frozen=True)
class Domain:
    """One dataset's rooms and sensor (numbers justified in the module docstring)."""

    raw_density: float          # real points per m^2 of surface
    noise: float                # Gaussian displacement along the normal, m
    quantisation: float         # uniform +-q/2 along the normal (depth PNG steps), m
    normal_noise: float         # std of the Gaussian added to unit normals before renormalising
    hole_fraction: float        # surface removed in random blobs
    glass_keep: float           # fraction of window points captured
    ceiling_keep: float         # probability that a scan has (part of) its ceiling
    underside_keep: float       # downward faces below eye level (other than ceilings)
    top_keep: float             # upward faces above 1.9 m
    gains: tuple                # white balance, RGB
    desaturate: float
    colour_noise: float         # per-point std, in [0, 1] colour units
    exposure: tuple             # per-scene range
    drift: float                # amplitude of slow brightness variation across the scan
    stations: int               # scan stations with their own exposure (0 = none)
    unannotated: float          # fraction of objects left without a label
    random_yaw: bool
    offset: float               # horizontal translation range, m
    height: tuple               # ceiling height range, m
    beams: float                # probability of 1-2 ceiling beams
    columns: float              # probability of 1-2 columns
    room_types: dict            # room type -> weight


DOMAINS = {
    labels.SCANNET: Domain(
        raw_density=1700, noise=0.008, quantisation=0.0, normal_noise=0.16, hole_fraction=0.06,
        glass_keep=0.35, ceiling_keep=0.15, underside_keep=0.15, top_keep=0.3,
        gains=(1.12, 1.0, 0.80), desaturate=0.25, colour_noise=8 / 255, exposure=(0.85, 1.15),
        drift=0.08, stations=0, unannotated=0.05, random_yaw=True, offset=2.0, height=(2.4, 2.8),
        beams=0.03, columns=0.1,
        room_types={"bedroom": 0.25, "living": 0.2, "office": 0.15, "bathroom": 0.2,
                    "kitchen": 0.15, "conference": 0.05}),
    labels.S3DIS: Domain(
        raw_density=20000, noise=0.005, quantisation=0.0, normal_noise=0.09, hole_fraction=0.02,
        glass_keep=0.5, ceiling_keep=1.0, underside_keep=0.1, top_keep=0.2,
        gains=(0.96, 1.0, 1.05), desaturate=0.15, colour_noise=4 / 255, exposure=(0.85, 1.05),
        drift=0.0, stations=4, unannotated=0.0, random_yaw=False, offset=20.0, height=(2.8, 3.4),
        beams=0.4, columns=0.45,
        room_types={"office": 0.45, "conference": 0.1, "hallway": 0.2, "storage": 0.1,
                    "lounge": 0.05, "bathroom": 0.05, "kitchen": 0.05}),
    labels.STRUCTURED3D: Domain(
        raw_density=8000, noise=0.0, quantisation=0.001, normal_noise=0.0, hole_fraction=0.0,
        glass_keep=1.0, ceiling_keep=1.0, underside_keep=0.0, top_keep=0.0,
        gains=(1.0, 1.0, 1.0), desaturate=0.0, colour_noise=0.0, exposure=(1.0, 1.0),
        drift=0.0, stations=0, unannotated=0.0, random_yaw=False, offset=10.0, height=(2.6, 3.0),
        beams=0.05, columns=0.1,
        room_types={"bedroom": 0.3, "living": 0.35, "kitchen": 0.15, "bathroom": 0.1,
                    "office": 0.1}),
}
_LIGHT = np.array([0.3, 0.2, 0.93]) / np.linalg.norm([0.3, 0.2, 0.93])
# Domain fields that are fractions or probabilities (clipped to [0, 1] when the gap is scaled); every
# other numeric field is clipped at 0. `random_yaw` is scaled as 0/1 and thresholded at 1/2.
_UNIT_FIELDS = ("hole_fraction", "glass_keep", "ceiling_keep", "underside_keep", "top_keep", "desaturate",
                "unannotated", "beams", "columns")
_RANGE_FIELDS = ("exposure", "height")   # (low, high): scaled as midpoint and width


def _scaled(own, centre, gap, lo=0.0, hi=np.inf):
    return float(np.clip(centre + gap * (own - centre), lo, hi))


def domain_spec(domain, gap=DEFAULT_GAP):
    """`domain`'s Domain with every difference to the other domains scaled by `gap` (module docstring)."""
    spec = _check_domain(domain)
    if not (np.isfinite(gap) and gap >= 0):
        raise ValueError(f"gap must be a finite number >= 0 (1 = the domains as documented), got {gap}")
    if gap == 1.0:
        return spec
    specs = list(DOMAINS.values())
    fields = {}
    for f in dataclasses.fields(Domain):
        own, values = getattr(spec, f.name), [getattr(d, f.name) for d in specs]
        if f.name == "raw_density":   # multiplicative: scaled around the geometric mean
            centre = float(np.exp(np.mean(np.log(values))))
            fields[f.name] = centre * (own / centre) ** gap
        elif f.name == "room_types":
            types = sorted({t for d in values for t in d})
            weights = {t: _scaled(own.get(t, 0.0), np.mean([d.get(t, 0.0) for d in values]), gap)
                       for t in types}
            fields[f.name] = {t: w for t, w in weights.items() if w > 0}
        elif f.name == "random_yaw":
            fields[f.name] = _scaled(float(own), np.mean(values), gap, hi=1.0) >= 0.5
        elif f.name == "stations":
            fields[f.name] = int(round(_scaled(own, np.mean(values), gap)))
        elif f.name in _RANGE_FIELDS:
            mid = _scaled(np.mean(own), np.mean(values), gap)
            width = _scaled(np.ptp(own), np.mean(np.ptp(values, axis=1)), gap)
            fields[f.name] = (max(mid - width / 2, 0.0), mid + width / 2)
        elif isinstance(own, tuple):   # RGB gains: per channel
            fields[f.name] = tuple(_scaled(o, np.mean(c), gap) for o, c in zip(own, zip(*values)))
        else:
            fields[f.name] = _scaled(own, np.mean(values), gap, hi=1.0 if f.name in _UNIT_FIELDS else np.inf)
    return Domain(**fields)


def sampling_density(domain, density, gap=DEFAULT_GAP):
    """Points per m^2 that give `density` x the real fraction of occupied 2 cm cells."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1] (fraction of the real 2 cm sites), got {density}")
    occupied = 1.0 - np.exp(-domain_spec(domain, gap).raw_density * CELL_AREA)
    return float(-np.log1p(-density * occupied) / CELL_AREA)


def scene_rng(domain, scene_id, seed):
    """Independent generator per (seed, domain, scene): same scene whatever the worker count."""
    digest = hashlib.sha256(f"{domain}/{scene_id}".encode()).digest()
    words = np.frombuffer(digest[:16], "<u4")  # fixed byte order: same seeds on every host
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, words)]))


def _check_domain(domain):
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; known: {sorted(DOMAINS)}")
    return DOMAINS[domain]


_STRUCTURE = ("wall", "floor", "ceiling", "beam", "column")
_COVER_ATTEMPTS = 8


def val_plan(domain, gap=DEFAULT_GAP):
    """[(room type, kinds)] of the first val scenes of `domain`: a greedy cover of its object labels.

    Real val sets hold every class of their dataset; a few dozen random rooms miss the rare ones (a
    dresser, a shower curtain), which the mIoU then counts as 0 whatever the model does. So val scene i
    < len(plan) is a room of type plan[i][0] that draws each kind of plan[i][1] at least once (one kind
    per label it adds; the first scene also gets a beam and a column where the domain labels them);
    later val scenes, and all train scenes, follow the domain's room mix. Types come from the domain's
    own mix, the one adding most labels first (ties: the more frequent type)."""
    spec = domain_spec(domain, gap)
    table = LABELS[domain]
    labelled = lambda k: table[k] not in (None, _PARENT) and k not in _STRUCTURE  # noqa: E731
    wanted = {table[k] for k in table if labelled(k)}
    contents = {t: [k for k, _, _ in rooms.ROOMS[t][2] if labelled(k)] for t in spec.room_types}
    plan = []
    while wanted:
        best = max(sorted(contents), key=lambda t: (len({table[k] for k in contents[t]} & wanted),
                                                    spec.room_types[t]))
        kinds = []
        for k in contents[best]:
            if table[k] in wanted:
                kinds.append(k)
                wanted.discard(table[k])
        if not kinds:
            break
        plan.append((best, tuple(kinds)))
    return plan


def layout(domain, rng, gap=DEFAULT_GAP, cover=None):
    """Draw one room of the domain's room-type mix (geometry and semantics only); `cover` = i: val
    scene i, the room of `val_plan` when i is within it."""
    spec = domain_spec(domain, gap)
    types = sorted(spec.room_types)
    weights = np.array([spec.room_types[t] for t in types])
    room_type = types[rng.choice(len(types), p=weights / weights.sum())]
    extra = lambda p: int(rng.integers(1, 3)) if rng.random() < p else 0  # noqa: E731
    beams, columns = extra(spec.beams), extra(spec.columns)
    require = ()
    plan = val_plan(domain, gap) if cover is not None else []
    if cover is not None and cover < len(plan):
        room_type, require = plan[cover]
        if cover == 0:
            beams = max(beams, int(LABELS[domain]["beam"] is not None))
            columns = max(columns, int(LABELS[domain]["column"] is not None))
    return rooms.make_room(rng, room_type, rng.uniform(*spec.height), beams=beams, columns=columns,
                           require=require)


def _occluded(coord, owner, room):
    """Points inside another object's solid part (floor under a bed, wall behind a cabinet)."""
    family = room.family()
    hidden = np.zeros(len(coord), bool)
    for centre, size, yaw, solid_owner in room.solids:
        local = (coord - centre) @ augment.rotation_matrix(yaw, "z")
        inside = np.all(np.abs(local) < size / 2 + 0.01, axis=1)
        hidden |= inside & (family[owner] != family[solid_owner])
    return hidden


def _holes(coord, rng, fraction, density):
    """Random blobs of missing surface covering about `fraction` of it."""
    keep = np.ones(len(coord), bool)
    if fraction <= 0 or not len(coord):
        return keep
    mean_area = np.pi * (0.45 ** 3 - 0.15 ** 3) / (3 * 0.3)  # E[pi r^2], r ~ U(0.15, 0.45): ~0.31 m^2
    count = max(1, int(round(fraction * len(coord) / density / mean_area)))
    radius = rng.uniform(0.15, 0.45, count)
    for r, centre in zip(radius, coord[rng.integers(len(coord), size=len(radius))]):
        keep &= np.sum((coord - centre) ** 2, axis=1) > r * r
    return keep


def _visible(coord, normal, owner, room, spec, rng):
    """What the sensor captures: visibility rules per domain (see the module docstring)."""
    n = len(coord)
    is_kind = lambda name: np.asarray([k == name for k in room.kinds])[owner]  # noqa: E731
    keep = rng.random(n) < np.where(is_kind("window"), spec.glass_keep, 1.0)
    ceiling = is_kind("ceiling")
    if rng.random() >= spec.ceiling_keep:
        keep &= ~ceiling
    elif spec.ceiling_keep < 1.0:  # a partly scanned ceiling: one side of the room
        axis = rng.integers(2)
        keep &= ~ceiling | (coord[:, axis] < rng.uniform(0.3, 0.7) * room.size[axis])
    under = (normal[:, 2] < -0.7) & (coord[:, 2] < 1.5) & ~ceiling
    keep &= ~under | (rng.random(n) < spec.underside_keep)
    top = (normal[:, 2] > 0.7) & (coord[:, 2] > 1.9)
    keep &= ~top | (rng.random(n) < spec.top_keep)
    return keep


def _colour(coord, normal, owner, room, spec, rng):
    """Albedo x texture x lighting (all domains), then the domain's camera and colour pipeline."""
    albedo = np.asarray(room.albedo)[owner]
    texture = 1.0 + 0.04 * rng.standard_normal((len(coord), 1))
    shade = 0.6 + 0.4 * np.clip(normal @ _LIGHT, 0.0, 1.0)[:, None]
    rgb = albedo * texture * shade * rng.uniform(*spec.exposure)
    if spec.drift:
        k = rng.normal(0, 2 * np.pi / 3, 3)
        rgb *= 1.0 + spec.drift * np.sin(coord @ k + rng.uniform(0, 2 * np.pi))[:, None]
    if spec.stations:
        stations = rng.uniform(0, 1, (spec.stations, 3)) * room.size
        nearest = np.argmin(((coord[:, None, :] - stations[None]) ** 2).sum(-1), axis=1)
        rgb *= rng.uniform(0.92, 1.08, spec.stations)[nearest, None]
    rgb = rgb * np.asarray(spec.gains)
    grey = rgb.mean(axis=1, keepdims=True)
    rgb = (1 - spec.desaturate) * rgb + spec.desaturate * grey
    rgb += spec.colour_noise * rng.standard_normal(rgb.shape)
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def _labels(domain, owner, room, spec, rng):
    """Per-point segment (the domain's own label order) and instance ids."""
    names = labels.CLASS_NAMES[domain]
    table = LABELS[domain]
    family = room.family()
    obj_label = np.full(len(room.kinds), -1, np.int64)
    obj_instance = np.arange(len(room.kinds))
    for i, kind in enumerate(room.kinds):
        name = table[kind]
        if name == _PARENT:
            name, obj_instance[i] = table[room.kinds[family[i]]], family[i]
        if name is not None:
            obj_label[i] = names.index(name)
    structural = np.isin(room.kinds, ("wall", "floor", "ceiling"))
    missed = (rng.random(len(room.kinds)) < spec.unannotated) & ~structural
    obj_label[missed] = -1
    obj_instance[missed] = -1
    return obj_label[owner].astype(np.int32), obj_instance[owner].astype(np.int32)


def render(room, domain, rng, density=DEFAULT_DENSITY, gap=DEFAULT_GAP):
    """Scan `room` with `domain`'s sensor -> raw point dict (writer.RAW_FIELDS)."""
    spec = domain_spec(domain, gap)
    rho = sampling_density(domain, density, gap)
    coord, normal, owner = geo.sample(room.prims, rho, rng)
    keep = ~_occluded(coord, owner, room) & _visible(coord, normal, owner, room, spec, rng)
    coord, normal, owner = coord[keep], normal[keep], owner[keep]
    keep = _holes(coord, rng, spec.hole_fraction, rho)
    coord, normal, owner = coord[keep], normal[keep], owner[keep]
    order = rng.permutation(len(coord))  # scanners do not list points by object
    coord, normal, owner = coord[order], normal[order], owner[order]

    color = _colour(coord, normal, owner, room, spec, rng)
    segment, instance = _labels(domain, owner, room, spec, rng)
    offset = rng.normal(0, spec.noise, len(coord)) + rng.uniform(-0.5, 0.5, len(coord)) * spec.quantisation
    coord = coord + offset[:, None] * normal
    if spec.normal_noise:
        normal = normal + spec.normal_noise * rng.standard_normal(normal.shape)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    yaw = rng.uniform(0, 2 * np.pi) if spec.random_yaw else 0.0
    shift = np.array([*rng.uniform(-spec.offset, spec.offset, 2), 0.0])
    rot = augment.rotation_matrix(yaw, "z")
    return {"coord": (coord @ rot.T + shift).astype(np.float32), "color": color,
            "normal": (normal @ rot.T).astype(np.float32), "segment": segment, "instance": instance}


def make_scene(domain, scene_id, seed=0, density=DEFAULT_DENSITY, gap=DEFAULT_GAP):
    """The raw point dict of synthetic scene `scene_id` of `domain`: a pure function of its inputs.
    Val scenes ("val_<i>") open with the rooms of `val_plan`."""
    split, _, index = scene_id.rpartition("_")
    cover = int(index) if split == "val" and index.isdigit() else None
    plan = val_plan(domain, gap) if cover is not None else []
    if cover is None or cover >= len(plan):
        rng = scene_rng(domain, scene_id, seed)
        return render(layout(domain, rng, gap), domain, rng, density, gap)
    names = labels.CLASS_NAMES[domain]
    wanted = {names.index(LABELS[domain][k]) for k in plan[cover][1]}
    for attempt in range(_COVER_ATTEMPTS):   # a required object that did not fit: the next draw
        rng = scene_rng(domain, scene_id if attempt == 0 else f"{scene_id}/{attempt}", seed)
        raw = render(layout(domain, rng, gap, cover), domain, rng, density, gap)
        if wanted <= set(np.unique(raw["segment"]).tolist()):
            break
    return raw


def _scene_ids(split, count):
    return [f"{split}_{i:05d}" for i in range(count)]


def _check_counts(name, counts):
    counts = tuple(int(c) for c in counts)
    if len(counts) != 3 or min(counts) < 0:
        raise ValueError(f"{name} must be 3 non-negative counts (Structured3D, ScanNet, S3DIS), "
                         f"got {counts}")
    return counts


def _must_overwrite(split_dir, settings):
    """Resume only over shards made with the same generator settings (the writer cannot tell)."""
    path = os.path.join(split_dir, _SETTINGS_NAME)
    same = False
    if os.path.exists(path):
        with open(path) as f:
            same = json.load(f) == settings
    os.makedirs(split_dir, exist_ok=True)
    files.write_text(path, json.dumps(settings))
    return not same


def split_jobs(out_dir, scenes=DEFAULT_SCENES, val_scenes=None, seed=0, density=DEFAULT_DENSITY,
               gap=DEFAULT_GAP):
    """The `writer.write_split` arguments of every synthetic split (all checked first); see `generate`."""
    scenes = _check_counts("scenes", scenes)
    val_scenes = _check_counts("val_scenes", val_scenes if val_scenes is not None
                               else [max(2, n // 8) for n in scenes])
    sampling_density(ORDER[0], density, gap)  # validates density and gap before any work
    jobs = []
    for domain, n_train, n_val in zip(ORDER, scenes, val_scenes):
        settings = {"generator_version": GENERATOR_VERSION, "seed": int(seed),
                    "density": float(density), "gap": float(gap), "domain": domain}
        for split, count in (("train", n_train), ("val", n_val)):
            jobs.append({"out_dir": os.path.join(out_dir, domain), "dataset": domain, "split": split,
                         "scene_ids": _scene_ids(split, count),
                         "load_fn": functools.partial(make_scene, domain, seed=int(seed), density=float(density),
                                                      gap=float(gap)),
                         "keep_full_res": split != "train",
                         "manifest_extra": {"synthetic": True, "generator": settings}})
    return jobs


def generate(out_dir, scenes=DEFAULT_SCENES, val_scenes=None, seed=0, density=DEFAULT_DENSITY,
             workers=1, scenes_per_shard=16, progress=True, gap=DEFAULT_GAP):
    """Write synthetic train/val shards for Structured3D, ScanNet, S3DIS under `out_dir/<Dataset>/`.

    `scenes` / `val_scenes` are counts in that order (val default: max(2, train // 8)). Returns
    {dataset: {split: writer.Summary}}; re-running with the same settings resumes and reuses shards.
    At small densities `workers=1` is fastest: the writer spawns fresh processes (each importing
    TensorFlow) for every split, which costs more than the scenes themselves.
    """
    out = {}
    for job in split_jobs(out_dir, scenes, val_scenes, seed, density, gap):
        split_dir = os.path.join(job["out_dir"], job["split"])
        overwrite = _must_overwrite(split_dir, job["manifest_extra"]["generator"])
        out.setdefault(job["dataset"], {})[job["split"]] = writer.write_split(
            **job, workers=workers, scenes_per_shard=scenes_per_shard, overwrite=overwrite, progress=progress)
    return out


def _counts(text):
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated counts, got {text!r}") from None


def add_arguments(p):
    p.add_argument("--scenes", type=_counts, default=list(DEFAULT_SCENES),
                   help="train scenes for Structured3D,ScanNet,S3DIS (default 160,80,40)")
    p.add_argument("--val_scenes", type=_counts, default=None,
                   help="val scenes, same order (default max(2, train // 8))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--density", type=float, default=DEFAULT_DENSITY,
                   help="fraction (0, 1] of the real datasets' 2 cm sites (1 = real density)")
    p.add_argument("--gap", type=float, default=DEFAULT_GAP,
                   help="scale of the domains' differences other than labels (0 = one sensor, 1 = real)")


def splits(args):
    """`split_jobs` from the flags of `add_arguments` and --out (the interface of data_prep.beam)."""
    return split_jobs(args.out, args.scenes, args.val_scenes, args.seed, args.density, args.gap)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data_prep.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output root; gets <Dataset>/{train,val}/")
    add_arguments(parser)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--scenes_per_shard", type=int, default=16)
    args = parser.parse_args(argv)
    try:
        result = generate(args.out, args.scenes, args.val_scenes, args.seed, args.density, args.workers,
                          args.scenes_per_shard, gap=args.gap)
    except ValueError as err:
        parser.error(str(err))
    summaries = [s for by_split in result.values() for s in by_split.values()]
    for summary in summaries:
        print(summary.line())
    return 0 if all(s.ok for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
