"""Label spaces of the three indoor datasets and PPT's 36-name union list (docs/reference.md §5).

Shared by preprocessing (label order inside the shards) and the trainer (class names for the
text embeddings, the union head). Everything here is plain data.
"""

SCANNET = "ScanNet"
S3DIS = "S3DIS"
STRUCTURED3D = "Structured3D"
DATASETS = (SCANNET, S3DIS, STRUCTURED3D)

# Label order inside the shards = each dataset's own published order.
CLASS_NAMES = {
    SCANNET: (
        "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
        "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
        "bathtub", "otherfurniture",
    ),
    S3DIS: (
        "ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa",
        "bookcase", "board", "clutter",
    ),
    STRUCTURED3D: (
        "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "picture",
        "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "ceiling", "refrigerator",
        "television", "nightstand", "sink", "lamp", "otherstructure", "otherfurniture", "otherprop",
    ),
}

# PPT's union list, in the reference order (its CLIP class_embedding rows).
UNION_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "bookcase", "picture", "counter", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "ceiling", "refrigerator", "television", "shower curtain", "nightstand", "toilet", "sink", "lamp",
    "bathtub", "garbagebin", "board", "beam", "column", "clutter", "otherstructure", "otherfurniture",
    "otherprop",
)

# valid_index: union row of each dataset label. ScanNet and Structured3D are the same in both modes.
# S3DIS: the released code sorts the rows by union index, so "ceiling" trains against "wall"
# (Pointcept#425); "intended" maps each S3DIS label to its own name (the maintainer's tuple, #163).
_S3DIS_CODE_FAITHFUL = (0, 1, 4, 5, 6, 7, 8, 10, 19, 29, 30, 31, 32)
S3DIS_ORDERS = ("intended", "code_faithful")


def valid_index(dataset, s3dis_order="intended"):
    """Union-list rows for `dataset`'s labels 0..C-1."""
    if s3dis_order not in S3DIS_ORDERS:
        raise ValueError(f"s3dis_order must be one of {S3DIS_ORDERS}, got {s3dis_order!r}")
    if dataset == S3DIS and s3dis_order == "code_faithful":
        return _S3DIS_CODE_FAITHFUL
    if dataset not in CLASS_NAMES:
        raise ValueError(f"unknown dataset {dataset!r}; known: {DATASETS}")
    return tuple(UNION_NAMES.index(name) for name in CLASS_NAMES[dataset])


def num_classes(dataset):
    return len(CLASS_NAMES[dataset])
