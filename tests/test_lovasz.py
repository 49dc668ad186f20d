"""Lovasz-softmax: a hand-computed case, Pointcept's own LovaszLoss (recorded value and gradient), and
the per-dataset grouping of mixed batches."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppt_jax import models
from ppt_jax.models import heads, lovasz

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "pointcept_lovasz.npz")
loss_fn = jax.jit(lovasz.lovasz_softmax, static_argnums=3)


def test_hand_computed():
    """3 sites, 2 classes, labels (0, 1, 1), p(class 0) = (0.8, 0.4, 0.1).
    Class 0: errors (0.2, 0.4, 0.1) -> sorted fg (0, 1, 0), Jaccard (1/2, 1, 1), increments (1/2, 1/2, 0):
    0.4/2 + 0.2/2 = 0.3. Class 1: errors (0.2, 0.4, 0.1) -> sorted fg (1, 0, 1), Jaccard (1/2, 2/3, 1),
    increments (1/2, 1/6, 1/3): 0.2 + 0.2/6 + 0.1/3 = 4/15. Mean: 17/60."""
    p0 = np.array([0.8, 0.4, 0.1])
    logits = np.log(np.stack([p0, 1 - p0], -1))[None].astype(np.float32)
    loss = loss_fn(jnp.asarray(logits), jnp.array([[0, 1, 1]]), jnp.array([0]), 1)
    np.testing.assert_allclose(float(loss), 17 / 60, rtol=1e-6)


def test_matches_pointcept_value_and_gradient():
    with np.load(FIXTURE) as f:
        logits, labels, loss, grad = f["logits"], f["labels"], f["loss"], f["grad"]
    # Our layout: a padded batch row of a 3-dataset model, the dataset's 6 columns of K = 8.
    padded = np.full((1, 320, 8), heads.MASKED, np.float32)
    padded[0, :300, :6] = logits
    segment = np.full((1, 320), -1, np.int32)
    segment[0, :300] = labels
    value, g = jax.jit(jax.value_and_grad(lovasz.lovasz_softmax), static_argnums=3)(
        jnp.asarray(padded), jnp.asarray(segment), jnp.array([2]), 3)
    np.testing.assert_allclose(float(value), float(loss), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g)[0, :300, :6], grad, rtol=1e-4, atol=1e-7)
    assert np.all(np.asarray(g)[0, 300:] == 0)


def test_mixed_batch_is_the_mean_over_dataset_class_pairs():
    """Two rows of different datasets: each dataset's classes are scored on its own sites only."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 40, 4)).astype(np.float32)
    segment = rng.integers(-1, 4, (2, 40)).astype(np.int32)
    mixed = float(loss_fn(jnp.asarray(logits), jnp.asarray(segment), jnp.array([0, 1]), 2))

    def pair_losses(row):
        value = float(loss_fn(jnp.asarray(logits[row:row + 1]), jnp.asarray(segment[row:row + 1]),
                              jnp.array([0]), 1))
        return value, len(set(segment[row][segment[row] >= 0].tolist()))

    (l0, n0), (l1, n1) = pair_losses(0), pair_losses(1)
    np.testing.assert_allclose(mixed, (l0 * n0 + l1 * n1) / (n0 + n1), rtol=1e-6)
    same = float(loss_fn(jnp.asarray(logits), jnp.asarray(segment), jnp.array([0, 0]), 2))
    assert abs(same - mixed) > 1e-4                  # pooled over rows when both are one dataset


def test_criteria_sum_and_errors():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(1, 16, 3)).astype(np.float32))
    segment = jnp.asarray(rng.integers(0, 3, (1, 16)).astype(np.int32))
    cond = jnp.array([0])

    @jax.jit
    def both_ways(logits, segment, cond):          # one program (eager ops compile one by one)
        return (models.segmentation_loss(logits, segment, cond, ("cross_entropy", "lovasz"), 1),
                heads.cross_entropy(logits, segment) + lovasz.lovasz_softmax(logits, segment, cond, 1))

    both, summed = both_ways(logits, segment, cond)
    np.testing.assert_allclose(both, summed, rtol=1e-6)
    with pytest.raises(ValueError, match="model.criteria"):
        models.segmentation_loss(logits, segment, cond, ("focal",))
    assert float(loss_fn(logits, jnp.full((1, 16), -1), cond, 1)) == 0.0


def test_packed_sort_key_gives_the_two_key_sorts_value_and_gradient():
    """Up to 3 datasets the (dataset, error) order is sorted as one packed uint32 key; more datasets use a
    two-key sort. Same rows, conditions 0-2, with tied errors (logits on a coarse grid): 3 vs 4 datasets."""
    rng = np.random.default_rng(3)
    logits = jnp.asarray(np.round(rng.normal(size=(3, 64, 5)), 1).astype(np.float32))
    segment = jnp.asarray(rng.integers(-1, 5, (3, 64)).astype(np.int32))
    cond = jnp.array([0, 2, 1])
    grad_fn = jax.jit(jax.value_and_grad(lovasz.lovasz_softmax), static_argnums=3)
    (packed, g_packed), (general, g_general) = grad_fn(logits, segment, cond, 3), grad_fn(logits, segment, cond, 4)
    np.testing.assert_allclose(float(packed), float(general), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_packed), np.asarray(g_general), rtol=1e-5, atol=1e-8)
