"""Binary PLY meshes (ScanNet's `*_vh_clean_2.ply`) read and written with numpy alone.

Supports `binary_little_endian` / `binary_big_endian` files whose elements have scalar properties,
plus one `face` element with a single list property of triangles (count 3 each), which is what the
ScanNet meshes hold. Anything else raises ValueError naming the file and the unsupported part.
"""

import numpy as np

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def _parse_header(f, path):
    if f.readline().strip() != b"ply":
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic line)")
    endian, elements = None, []
    while True:
        line = f.readline()
        if not line:
            raise ValueError(f"{path}: PLY header has no end_header line")
        words = line.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            if words[1] not in ("binary_little_endian", "binary_big_endian"):
                raise ValueError(f"{path}: PLY format {words[1]!r} not supported (binary only)")
            endian = "<" if words[1] == "binary_little_endian" else ">"
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise ValueError(f"{path}: PLY property before any element")
            elements[-1][2].append(words[1:])
    if endian is None:
        raise ValueError(f"{path}: PLY header has no format line")
    return endian, elements


def _dtype(name, props, endian, path):
    fields = []
    for prop in props:
        if prop[0] == "list":
            count_t, item_t, pname = prop[1:4]
            if name != "face" or len(props) != 1:
                raise ValueError(f"{path}: list property in element {name!r} not supported")
            fields += [("count", endian + _TYPES[count_t]), (pname, endian + _TYPES[item_t], (3,))]
        else:
            if prop[0] not in _TYPES:
                raise ValueError(f"{path}: unknown PLY property type {prop[0]!r}")
            fields.append((prop[1], endian + _TYPES[prop[0]]))
    return np.dtype(fields)


def read_ply(path):
    """-> {element name: structured array}; faces come back as field `vertex_indices` of shape (F, 3)."""
    with open(path, "rb") as f:
        endian, elements = _parse_header(f, path)
        body = f.read()
    out, offset = {}, 0
    for name, count, props in elements:
        dtype = _dtype(name, props, endian, path)
        size = dtype.itemsize * count
        if offset + size > len(body):
            raise ValueError(f"{path}: truncated PLY: element {name!r} needs {size} bytes, "
                             f"{len(body) - offset} left")
        arr = np.frombuffer(body, dtype, count, offset)
        offset += size
        if "count" in dtype.names and np.any(arr["count"] != 3):
            raise ValueError(f"{path}: only triangle faces are supported")
        out[name] = arr
    return out


def write_ply(path, vertex, faces=None):
    """Write a binary little-endian PLY: `vertex` is {property: (N,) array} in file order, faces (F, 3)."""
    names = {np.dtype(v).str[1:]: k for k, v in _TYPES.items()}
    num = len(next(iter(vertex.values())))
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {num}"]
    header += [f"property {names[np.asarray(v).dtype.str[1:]]} {k}" for k, v in vertex.items()]
    vdtype = np.dtype([(k, "<" + np.asarray(v).dtype.str[1:]) for k, v in vertex.items()])
    varr = np.empty(num, vdtype)
    for k, v in vertex.items():
        varr[k] = v
    blobs = [varr.tobytes()]
    if faces is not None:
        faces = np.asarray(faces)
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
        farr = np.empty(len(faces), [("count", "u1"), ("vertex_indices", "<i4", (3,))])
        farr["count"], farr["vertex_indices"] = 3, faces
        blobs.append(farr.tobytes())
    with open(path, "wb") as f:
        f.write(("\n".join(header + ["end_header"]) + "\n").encode("ascii"))
        for blob in blobs:
            f.write(blob)
