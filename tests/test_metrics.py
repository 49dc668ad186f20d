"""Metrics equal a hand-computed small case (the reference's intersection_and_union definitions)."""

import numpy as np
import pytest

from ppt_jax.train import metrics


def test_confusion_and_summary_match_hand_computation():
    # Dataset 0 has 3 classes, dataset 1 has 2; K = 3. -1 labels are ignored.
    pred = np.array([[0, 0, 1, 2, 2, 1], [1, 0, 1, 1, 0, 0]])
    target = np.array([[0, 1, 1, 2, -1, 0], [1, 0, 0, 1, -1, -1]])
    cond = np.array([0, 1])
    conf = np.asarray(metrics.confusion(pred, target, cond, num_datasets=2, num_classes=3))
    want0 = np.zeros((3, 3), int)
    for t, p in [(0, 0), (1, 0), (1, 1), (2, 2), (0, 1)]:
        want0[t, p] += 1
    want1 = np.zeros((3, 3), int)
    for t, p in [(1, 1), (0, 0), (0, 1), (1, 1)]:
        want1[t, p] += 1
    np.testing.assert_array_equal(conf[0], want0)
    np.testing.assert_array_equal(conf[1], want1)

    s = metrics.summarize(conf[0], ("a", "b", "c"))
    # class a: I=1, T=2, P=2 -> U=3; b: I=1, T=2, P=2 -> U=3; c: I=1, T=1, P=1 -> U=1.
    assert s["iou"] == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1.0})
    assert s["mIoU"] == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    assert s["mAcc"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert s["allAcc"] == pytest.approx(3 / 5)
    assert s["points"] == 5

    s1 = metrics.summarize(conf[1], ("x", "y"))
    # x: I=1, T=2, P=1 -> U=2; y: I=2, T=2, P=3 -> U=3.
    assert s1["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_absent_class_counts_as_zero_in_the_mean():
    conf = np.array([[4, 0], [0, 0]])
    s = metrics.summarize(conf, ("seen", "absent"))
    assert s["iou"]["absent"] == 0.0
    assert s["mIoU"] == pytest.approx(0.5)


def test_accumulation_is_additive():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 4, (3, 50))
    target = rng.integers(-1, 4, (3, 50))
    cond = np.array([0, 1, 0])
    whole = np.asarray(metrics.confusion(pred, target, cond, 2, 4))
    parts = sum(np.asarray(metrics.confusion(pred[i:i + 1], target[i:i + 1], cond[i:i + 1], 2, 4))
                for i in range(3))
    np.testing.assert_array_equal(whole, parts)
    assert whole.sum() == (target >= 0).sum()


def test_counts_outside_the_class_list_are_an_error():
    with pytest.raises(ValueError, match="outside"):
        metrics.summarize(np.ones((3, 3)), ("a", "b"))
