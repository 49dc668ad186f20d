"""Per-point normals: area-weighted vertex normals of a mesh, or PCA normals of a bare point cloud."""

import numpy as np
from scipy.spatial import cKDTree


def mesh_vertex_normals(vertex, faces):
    """Normalised sum of the area-weighted normals of the faces around each vertex (as the reference).

    A face's cross product has length 2 * area, so summing raw cross products weights by area.
    Vertices in no (non-degenerate) face get the zero vector, as in the reference.
    """
    v = np.asarray(vertex, np.float64)
    f = np.asarray(faces, np.int64)
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    acc = np.zeros_like(v)
    for corner in range(3):
        np.add.at(acc, f[:, corner], cross)
    length = np.linalg.norm(acc, axis=1, keepdims=True)
    return np.divide(acc, length, out=np.zeros_like(acc), where=length > 0).astype(np.float32)


def pca_normals(coord, k=16, toward=None, chunk=100_000):
    """Unit normals from the covariance of each point's k nearest neighbours (itself included).

    The normal is the eigenvector of the smallest eigenvalue. Its sign is ambiguous, so it is flipped
    to point toward `toward` (default: the bounding-box centre): indoors that is into the room, the
    side a scanner saw the surface from, like ScanNet's mesh normals.
    """
    c = np.asarray(coord, np.float64)
    k = min(k, len(c))
    if toward is None:
        toward = (c.min(0) + c.max(0)) / 2
    cell = np.floor((c - c.min(0)) / 0.1).astype(np.int64)
    order = np.lexsort(cell.T[::-1])  # spatially sorted queries: cache locality
    c = c[order]
    tree = cKDTree(c)
    out = np.empty_like(c)
    for start in range(0, len(c), chunk):  # bounds memory at chunk * k * 3 doubles
        part = c[start:start + chunk]
        near = c[tree.query(part, k=k)[1].reshape(len(part), k)]
        local = near - near.mean(axis=1, keepdims=True)
        normal = np.linalg.eigh(local.transpose(0, 2, 1) @ local)[1][:, :, 0]
        flip = np.einsum("ni,ni->n", normal, toward - part) < 0
        normal[flip] *= -1
        out[start:start + chunk] = normal
    result = np.empty_like(out)
    result[order] = out
    return result.astype(np.float32)
