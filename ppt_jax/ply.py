"""PLY files through `plyfile`: ASCII and binary (either byte order), any property order.

The one PLY reader/writer of the project: `data_prep.scannet` reads ScanNet's `*_vh_clean_2.ply` meshes
with it, the inference tool reads point clouds and writes its labelled output with it. Every problem is
a ValueError that names the file.

Faces come back as triangles, because the one consumer of faces (area-weighted vertex normals,
`ppt_jax.normals`) takes triangles: a polygon of n vertices becomes the fan (v0, vi, vi+1), i = 1..n-2.
For a planar polygon the fan's cross products sum to the polygon's own area vector, so each polygon
adds its true normal and area; how that area is shared among its corners follows the fan.
"""

import os

import numpy as np
import plyfile

FACE_PROPERTIES = ("vertex_indices", "vertex_index")   # the names PLY writers use for a face's list


class NotPlyError(ValueError):
    """The file does not start with the PLY magic line."""


def read_ply(path):
    """{element name: numpy structured array}. A `face` element comes back with one field,
    `vertex_indices` (F, 3) int, whatever its list property is called: triangles as stored,
    quads and other polygons fan-triangulated (in face order), other face properties dropped."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        if f.read(3) != b"ply":
            raise NotPlyError(f"{path}: not a PLY file (it does not start with 'ply')")
    try:
        data = _read(path)
    except (plyfile.PlyParseError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}: {_problem(err)}") from None
    out = {}
    for element in data.elements:
        out[element.name] = (_faces(element, path) if element.name == "face"
                             else np.asarray(element.data))
    return out


def _read(path):
    """Binary triangles are memory-mapped in one go (plyfile's `known_list_len`). When that fails on the
    faces (a face of another size, or too few bytes for all-triangles), the file is read again by
    plyfile's general reader, list by list (far slower): it takes any sizes and names the row that is
    really short."""
    try:
        return plyfile.PlyData.read(path, known_list_len={"face": dict.fromkeys(FACE_PROPERTIES, 3)})
    except plyfile.PlyElementParseError as err:
        if err.element is None or err.element.name != "face":
            raise
    return plyfile.PlyData.read(path)


def _problem(err):
    text = str(err).strip() or type(err).__name__
    if "early end-of-file" in text or "truncated" in text.lower():
        return f"truncated PLY ({text})"
    return text


def _faces(element, path):
    names = [p.name for p in element.properties]
    name = next((n for n in FACE_PROPERTIES if n in names), None)
    if name is None:
        raise ValueError(f"{path}: face element must hold a list property "
                         f"({' or '.join(FACE_PROPERTIES)}), has {names}")
    lists = element.data[name]
    if lists.dtype == object:                          # ASCII or any-size binary lists: one array per face
        lists = _fan(lists, path)
    faces = np.empty(len(lists), [("vertex_indices", lists.dtype, (3,))])
    faces["vertex_indices"] = lists
    return faces


def _fan(polygons, path):
    """(F,) vertex-index arrays of any sizes >= 3 -> (T, 3) triangles (v0, vi, vi+1), face by face."""
    sizes = np.fromiter(map(len, polygons), np.int64, len(polygons))
    if (sizes < 3).any():
        row = int(np.argmax(sizes < 3))
        raise ValueError(f"{path}: face {row} has {sizes[row]} vertices (a face needs at least 3)")
    if not len(sizes):
        return np.zeros((0, 3), np.int64)
    flat = np.concatenate(polygons)
    count = sizes - 2                                     # triangles per face
    first = np.repeat(np.cumsum(sizes) - sizes, count)    # each triangle's v0 in `flat`
    i = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    return np.stack([flat[first], flat[first + 1 + i], flat[first + 2 + i]], 1)


def write_ply(path, vertex, faces=None, text=False):
    """Write `vertex` ({property: (N,) array}, in file order) and optional triangles `faces` (F, 3),
    binary little-endian (or ASCII with `text`)."""
    columns = {k: np.asarray(v) for k, v in vertex.items()}
    num = len(next(iter(columns.values())))
    table = np.empty(num, [(k, v.dtype.newbyteorder("<")) for k, v in columns.items()])
    for k, v in columns.items():
        table[k] = v
    elements = [plyfile.PlyElement.describe(table, "vertex")]
    if faces is not None:
        faces = np.asarray(faces, np.int32)
        face = np.empty(len(faces), [("vertex_indices", "<i4", (3,))])
        face["vertex_indices"] = faces
        elements.append(plyfile.PlyElement.describe(face, "face", len_types={"vertex_indices": "u1"},
                                                    val_types={"vertex_indices": "i4"}))
    plyfile.PlyData(elements, text=text, byte_order="<").write(os.fspath(path))
