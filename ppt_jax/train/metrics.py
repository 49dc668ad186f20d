"""Segmentation metrics as the reference reports them (docs/reference.md §8, `intersection_and_union`).

Confusion matrices are accumulated on device, one per dataset, padded to K = max classes; the summary
(host side, float64) is computed from a matrix:
  IoU_c = I_c / (U_c + 1e-10), mIoU = mean over ALL C classes of the dataset (absent classes count 0),
  mAcc = mean_c I_c / (T_c + 1e-10), allAcc = sum I / (sum T + 1e-10).
Points labelled -1 (and padding) are dropped.
"""

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-10


def confusion(pred, target, condition, num_datasets, num_classes):
    """(num_datasets, K, K) int32 counts [dataset, target, pred] of one batch.

    pred, target: (B, M) int; condition: (B,) dataset index; target -1 is ignored.
    """
    pred = jnp.asarray(pred, jnp.int32)
    target = jnp.asarray(target, jnp.int32)
    cond = jnp.broadcast_to(jnp.asarray(condition, jnp.int32)[:, None], target.shape)
    valid = (target >= 0) & (target < num_classes) & (pred >= 0) & (pred < num_classes)
    flat = (cond * num_classes + jnp.clip(target, 0)) * num_classes + jnp.clip(pred, 0)
    size = num_datasets * num_classes * num_classes
    counts = jnp.zeros((size,), jnp.int32).at[flat.reshape(-1)].add(
        valid.reshape(-1).astype(jnp.int32))
    return counts.reshape(num_datasets, num_classes, num_classes)


def summarize(matrix, class_names):
    """Reference metrics of one dataset's (K, K) [target, pred] matrix; first C=len(names) classes."""
    c = len(class_names)
    m = np.asarray(jax.device_get(matrix), np.float64)
    if m.shape[0] < c or m.shape[1] < c:
        raise ValueError(f"confusion matrix {m.shape} is smaller than the {c} class names")
    if m[c:].sum() or m[:, c:].sum():
        raise ValueError(f"confusion matrix has counts outside the dataset's {c} classes")
    m = m[:c, :c]
    inter = np.diag(m)
    target = m.sum(1)
    union = m.sum(0) + target - inter
    iou = inter / (union + EPS)
    return {
        "mIoU": float(iou.mean()),
        "mAcc": float((inter / (target + EPS)).mean()),
        "allAcc": float(inter.sum() / (target.sum() + EPS)),
        "iou": {name: float(v) for name, v in zip(class_names, iou)},
        "points": int(target.sum()),
    }


def format_table(results):
    """Plain-text table of {dataset: summary} with per-class IoU lines."""
    lines = [f"{'dataset':<14}{'mIoU':>8}{'mAcc':>8}{'allAcc':>8}{'points':>10}"]
    for name, r in results.items():
        lines.append(f"{name:<14}{r['mIoU']:>8.4f}{r['mAcc']:>8.4f}{r['allAcc']:>8.4f}"
                     f"{r['points']:>10d}")
    for name, r in results.items():
        lines.append(f"{name} per-class IoU: " +
                     ", ".join(f"{k} {v:.3f}" for k, v in r["iou"].items()))
    return "\n".join(lines)
