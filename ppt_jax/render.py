"""Pictures of labelled point clouds: class colours and a two-view PNG a person can check at a glance.

Colours belong to the 36 union names (`labels.UNION_NAMES`), so "chair" has the same colour whichever
dataset's label space a prediction is in.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ppt_jax import labels  # noqa: E402

_PALETTE = np.concatenate([plt.get_cmap("tab20").colors, plt.get_cmap("tab20b").colors])
UNION_COLORS = {name: tuple(int(round(255 * c)) for c in _PALETTE[i % len(_PALETTE)])
                for i, name in enumerate(labels.UNION_NAMES)}
UNLABELLED_COLOR = (0, 0, 0)


def class_colors(dataset):
    """(C, 3) uint8 colour of each of `dataset`'s classes, in its own label order."""
    return np.array([UNION_COLORS[name] for name in labels.CLASS_NAMES[dataset]], np.uint8)


def colorize(label, dataset):
    """Per-point uint8 RGB of labels in `dataset`'s space; -1 (unlabelled) is black."""
    table = np.concatenate([class_colors(dataset), np.array([UNLABELLED_COLOR], np.uint8)])
    label = np.asarray(label)
    return table[np.where(label < 0, len(table) - 1, label)]


def _subsample(n, max_points, seed=0):
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def render_views(path, coord, label, dataset, title="", max_points=100_000, dpi=110):
    """Write a PNG: top view and an oblique 3D view, legend of the classes present.

    Both views drop points above 85% of the height range, so the room is not hidden under its
    ceiling, and draw at most `max_points` points (a fixed-seed subsample).
    """
    coord = np.asarray(coord, np.float64)
    label = np.asarray(label)
    rgb = colorize(label, dataset) / 255.0
    idx = _subsample(len(coord), max_points)
    c, col = coord[idx], rgb[idx]
    z0, z1 = c[:, 2].min(), c[:, 2].max()
    keep = c[:, 2] <= z0 + 0.85 * (z1 - z0) if z1 > z0 else np.ones(len(c), bool)
    c, col = c[keep], col[keep]
    size = float(np.clip(2.5e5 / max(len(c), 1), 0.3, 6.0))

    fig = plt.figure(figsize=(15, 6.5))
    top = fig.add_subplot(1, 2, 1)
    order = np.argsort(c[:, 2])                         # higher points drawn last
    top.scatter(c[order, 0], c[order, 1], c=col[order], s=size, marker="o", linewidths=0)
    top.set_aspect("equal")
    top.set_title("top view")
    top.set_xlabel("x (m)")
    top.set_ylabel("y (m)")

    oblique = fig.add_subplot(1, 2, 2, projection="3d")
    oblique.scatter(c[:, 0], c[:, 1], c[:, 2], c=col, s=size * 0.7, marker="o", linewidths=0,
                    depthshade=False)
    oblique.view_init(elev=50, azim=-60)
    span = (c.max(0) - c.min(0)).max() / 2 or 1.0
    mid = (c.max(0) + c.min(0)) / 2
    for axis, m in zip("xyz", mid):
        getattr(oblique, f"set_{axis}lim")(m - span, m + span)
    oblique.set_box_aspect((1, 1, 1))
    oblique.set_title("oblique view")
    fig.text(0.42, 0.02, "points above 85% of the height (ceiling) not drawn", ha="center", fontsize=8)
    oblique.set_axis_off()

    names = labels.CLASS_NAMES[dataset]
    present, counts = np.unique(label[label >= 0], return_counts=True)
    handles = [Patch(color=np.array(UNION_COLORS[names[k]]) / 255.0,
                     label=f"{names[k]} ({100.0 * n / len(label):.1f}%)")
               for k, n in sorted(zip(present, counts), key=lambda t: -t[1])]
    if (label < 0).any():
        handles.append(Patch(color=np.array(UNLABELLED_COLOR) / 255.0,
                             label=f"unlabelled ({100.0 * (label < 0).mean():.1f}%)"))
    fig.legend(handles=handles, loc="center right", fontsize=9, title=f"{dataset} classes")
    fig.suptitle(title or f"{dataset}: {len(coord)} points")
    fig.subplots_adjust(left=0.04, right=0.8, top=0.9, bottom=0.08, wspace=0.08)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
