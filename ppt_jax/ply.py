"""PLY files through `plyfile`: ASCII and binary (either byte order), any property order.

The one PLY reader/writer of the project: `data_prep.scannet` reads ScanNet's `*_vh_clean_2.ply` meshes
with it, the inference tool reads point clouds and writes its labelled output with it. Every problem is
a ValueError that names the file.
"""

import os

import numpy as np
import plyfile

FACE_PROPERTIES = ("vertex_indices", "vertex_index")   # the names PLY writers use for a face's list


class NotPlyError(ValueError):
    """The file does not start with the PLY magic line."""


def read_ply(path):
    """{element name: numpy structured array}. A `face` element comes back with one field,
    `vertex_indices` (F, 3) int, whatever its list property is called (triangles only)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        if f.read(3) != b"ply":
            raise NotPlyError(f"{path}: not a PLY file (it does not start with 'ply')")
    try:
        data = plyfile.PlyData.read(path, known_list_len={"face": dict.fromkeys(FACE_PROPERTIES, 3)})
    except (plyfile.PlyParseError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}: {_problem(err)}") from None
    out = {}
    for element in data.elements:
        out[element.name] = (_faces(element, path) if element.name == "face"
                             else np.asarray(element.data))
    return out


def _problem(err):
    text = str(err).strip() or type(err).__name__
    if "early end-of-file" in text or "truncated" in text.lower():
        return f"truncated PLY ({text})"
    return text


def _faces(element, path):
    names = [p.name for p in element.properties]
    name = next((n for n in FACE_PROPERTIES if n in names), None)
    if name is None or len(names) != 1:
        raise ValueError(f"{path}: face element must hold one list property "
                         f"({' or '.join(FACE_PROPERTIES)}), has {names}")
    lists = element.data[name]
    if lists.dtype == object:                          # ASCII files: one array per face
        if any(len(f) != 3 for f in lists):
            raise ValueError(f"{path}: only triangle faces are supported")
        lists = np.stack(lists) if len(lists) else np.zeros((0, 3), np.int64)
    faces = np.empty(len(lists), [("vertex_indices", lists.dtype, (3,))])
    faces["vertex_indices"] = lists
    return faces


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
