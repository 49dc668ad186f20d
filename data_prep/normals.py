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


def pca_normals(coord, k=16, toward=None):
    """Unit normals from the covariance of each point's k nearest neighbours (itself included).

    The normal is the eigenvector of the smallest eigenvalue. Its sign is ambiguous, so it is flipped
    to point toward `toward` (default: the bounding-box centre): indoors that is into the room, the
    side a scanner saw the surface from, like ScanNet's mesh normals.
    """
    c = np.asarray(coord, np.float64)
    k = min(k, len(c))
    _, nbr = cKDTree(c).query(c, k=k)
    nbr = nbr.reshape(len(c), k)
    local = c[nbr] - c[nbr].mean(axis=1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", local, local)
    normal = np.linalg.eigh(cov)[1][:, :, 0]
    if toward is None:
        toward = (c.min(0) + c.max(0)) / 2
    flip = np.einsum("ni,ni->n", normal, toward - c) < 0
    normal[flip] *= -1
    return normal.astype(np.float32)
