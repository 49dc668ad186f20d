"""S3DIS normals from the 2D-3D-S meshes (`Stanford2d3dDataset_noXYZ/Area_N/3d/rgb.obj` or `area_N/...`).

The reference (preprocess_s3dis.py --parse_normal) crops the area mesh to the room's bounding box
+-0.1 m, maps it into the point-cloud frame (x, y, z) = (x_m, -z_m, y_m), and gives every point the face
normal (winding order) of the closest point on the mesh surface. Area 5 is the union of area_5a and
area_5b, the latter moved by a fixed transform. Here the closest face is searched among the faces
whose centroids are the `candidates` nearest to the point (exact point-triangle distances among those),
which finds the true closest face unless a far larger triangle is nearer than all of them.
"""

import functools
import os

import numpy as np
from scipy.spatial import cKDTree

from data_prep import writer

_TO_ROOM = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], np.float64)  # mesh frame -> point-cloud frame
_AREA_5B = np.array([[0, 0, -1, -4.09703582], [0, 1, 0, 0], [1, 0, 0, -6.22617759]], np.float64)


class CropError(ValueError):
    """The room's bounding box holds no usable mesh face."""


def read_obj(path):
    """-> vertices (V, 3) float64, triangles (F, 3) int64; polygons are split into fans."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as err:
        raise writer.SceneError(path, f"unreadable mesh: {err}") from None
    verts, faces = [], []
    for line_no, line in enumerate(lines, start=1):
        if line.startswith(b"v "):
            verts.append(line.split()[1:4])
        elif line.startswith(b"f "):
            idx = [int(tok.split(b"/")[0]) for tok in line.split()[1:]]
            if len(idx) < 3 or min(idx) < 1:
                raise writer.SceneError(path, f"line {line_no}: unsupported face {line[:60]!r}")
            faces += [(idx[0] - 1, idx[i] - 1, idx[i + 1] - 1) for i in range(1, len(idx) - 1)]
    try:
        v = np.array(verts, np.float64).reshape(-1, 3)
    except ValueError as err:
        raise writer.SceneError(path, f"bad vertex line: {err}") from None
    f = np.array(faces, np.int64).reshape(-1, 3)
    if f.size and f.max() >= len(v):
        raise writer.SceneError(path, f"face index {f.max() + 1} > {len(v)} vertices")
    return v, f


# Folder names of one area's mesh: 2D-3D-S ships area_N; the reference's README and code use Area_N.
_AREA_FOLDERS = ("Area_{}", "area_{}")


def mesh_files(mesh_root, area):
    """[(part, path or None)] of the area's meshes (Area 5 = parts 5a and 5b), in either folder naming."""
    number = area.split("_")[-1]
    found = []
    for part in (["5a", "5b"] if number == "5" else [number]):
        paths = [os.path.join(mesh_root, folder.format(part), "3d", "rgb.obj") for folder in _AREA_FOLDERS]
        found.append((part, next((p for p in paths if os.path.isfile(p)), None)))
    return found


def describe_missing(mesh_root, part):
    first, *others = (os.path.join(folder.format(part), "3d", "rgb.obj") for folder in _AREA_FOLDERS)
    return f"{os.path.join(mesh_root, first)} (or {' or '.join(others)})"


@functools.lru_cache(maxsize=1)
def area_mesh(mesh_root, area):
    """The area's mesh in the point-cloud frame: (vertices, triangles). One area cached per process."""
    verts, faces = [], []
    for part, path in mesh_files(mesh_root, area):
        if path is None:
            raise writer.SceneError(describe_missing(mesh_root, part), "mesh not found")
        v, f = read_obj(path)
        if part == "5b":
            v = v @ _AREA_5B[:, :3].T + _AREA_5B[:, 3]
        faces.append(f + sum(len(x) for x in verts))
        verts.append(v)
    return np.concatenate(verts) @ _TO_ROOM.T, np.concatenate(faces)


def _point_triangle_distance(p, a, b, c):
    """Squared distance from points p (..., 3) to triangles (a, b, c) (..., 3): interior or an edge."""
    n = np.cross(b - a, c - a)
    nn = np.maximum(np.sum(n * n, -1), 1e-300)
    t = np.sum((p - a) * n, -1) / nn
    q = p - t[..., None] * n  # projection onto the plane
    inside = np.ones(t.shape, bool)
    for u, w in ((a, b), (b, c), (c, a)):
        inside &= np.sum(np.cross(w - u, q - u) * n, -1) >= 0
    best = np.where(inside, t * t * nn, np.inf)
    for u, w in ((a, b), (b, c), (c, a)):
        e = w - u
        s = np.clip(np.sum((p - u) * e, -1) / np.maximum(np.sum(e * e, -1), 1e-300), 0, 1)
        best = np.minimum(best, np.sum((p - u - s[..., None] * e) ** 2, -1))
    return best


def mesh_normals(coord, mesh, candidates=16, chunk=50_000):
    """Face normal of the closest mesh face for every point (coord in the unrotated room frame)."""
    verts, faces = mesh
    low, high = coord.min(0) - 0.1, coord.max(0) + 0.1
    inside = np.all((verts >= low) & (verts <= high), axis=1)
    faces = faces[inside[faces].all(axis=1)]  # the reference's crop: faces with every vertex inside
    if not len(faces):
        raise CropError("no mesh faces inside the room's bounding box")
    a, b, c = (verts[faces[:, i]] for i in range(3))
    normal = np.cross(b - a, c - a)
    length = np.linalg.norm(normal, axis=1)
    keep = length > 0  # degenerate faces have no normal (trimesh drops them too)
    a, b, c, normal = a[keep], b[keep], c[keep], normal[keep] / length[keep, None]
    if not len(a):
        raise CropError("only degenerate mesh faces inside the room's bounding box")
    k = min(candidates, len(a))
    tree = cKDTree((a + b + c) / 3)
    out = np.empty((len(coord), 3))
    for start in range(0, len(coord), chunk):
        p = coord[start:start + chunk]
        cand = tree.query(p, k=k)[1].reshape(len(p), k)
        dist = _point_triangle_distance(p[:, None], a[cand], b[cand], c[cand])
        out[start:start + chunk] = normal[cand[np.arange(len(p)), dist.argmin(1)]]
    return out
