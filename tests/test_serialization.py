"""Space-filling-curve codes against Pointcept's own (tests/fixtures/make_pointcept_ptv3.py)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppt_jax import sparse
from ppt_jax.sparse import serialization as S

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "pointcept_serialization.npz")
CASES = ("grid_d3", "grid_d4", "random_d11", "random_d16")


def code_value(words):
    w = np.asarray(words).astype(np.int64)
    return (w[:, 0] << 24) | w[:, 1]


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


@jax.jit
def all_codes(coords, d):
    return [S.encode(coords, d, order) for order in S.ORDERS]


@pytest.mark.parametrize("case", CASES)
def test_codes_match_reference(ref, case):
    """Every order, with the depth traced (one compile per shape serves every depth)."""
    coords, d = ref[f"{case}_coords"], ref[f"{case}_depth"]
    for order, words in zip(S.ORDERS, all_codes(coords, d)):
        np.testing.assert_array_equal(code_value(words), ref[f"{case}_{order}"], err_msg=order)


def test_depth_rule():
    """depth = bit_length(max + 1) over real sites only (the reference's rule)."""
    coords = np.array([[7, 0, 0], [1, 2, 3], [900, 0, 0]], np.int32)
    assert int(S.depth(coords, np.array([True, True, False]))) == 4      # bit_length(8)
    assert int(S.depth(coords[1:2], np.array([True]))) == 3              # bit_length(4)


def test_sort_puts_padding_last_and_inverse_inverts(ref):
    coords = ref["random_d11_coords"][:50]
    mask = np.ones(50, bool)
    mask[[3, 17, 40]] = False

    @jax.jit
    def sort_and_invert(coords, mask):
        perm = S.sort(S.encode(coords, 11, "hilbert"), mask)
        return perm, S.inverse(perm)

    perm, inv = map(np.asarray, sort_and_invert(coords, mask))
    codes = ref["random_d11_hilbert"][:50]
    real = np.flatnonzero(mask)
    np.testing.assert_array_equal(perm[:47], real[np.argsort(codes[real], kind="stable")])
    np.testing.assert_array_equal(perm[47:], [3, 17, 40])
    np.testing.assert_array_equal(perm[inv], np.arange(50))


@pytest.fixture(scope="module")
def two_levels():
    """Codes of every order at levels 0 (depth d) and 1 (depth d - 1) of a hierarchy, one program."""
    rng = np.random.default_rng(1)
    coords = np.unique(rng.integers(0, 200, (300, 3)).astype(np.int32), axis=0)
    n = coords.shape[0]
    spec = sparse.HierarchySpec(capacities=(n, n, n))

    @jax.jit
    def codes(coords):
        mask = jnp.ones(n, bool)
        h = sparse.build_hierarchy(coords, mask, spec)
        d = S.depth(coords, mask)
        return S.encode_orders(h.coords[0], d), S.encode_orders(h.coords[1], d - 1), h.parent_slot[0] // 8

    fine, coarse, parent = codes(jnp.asarray(coords))
    return {o: (code_value(f), code_value(c)) for o, f, c in zip(S.ORDERS, fine, coarse)}, np.asarray(parent)


@pytest.mark.parametrize("order", S.ORDERS)
def test_coarse_codes_are_children_codes_shifted(two_levels, order):
    """The reference pools by code >> 3 at depth d - 1: the engine's parents floor(p / 2) give the
    same codes at depth d - 1, so each level of a hierarchy is serialized from its own coordinates."""
    codes, parent = two_levels
    fine, coarse = codes[order]
    np.testing.assert_array_equal(fine >> 3, coarse[parent])


def test_unknown_order_is_a_clear_error():
    with pytest.raises(ValueError, match="serialization orders"):
        S.encode(np.zeros((2, 3), np.int32), 2, "peano")
