"""The optimizer equals torch's OneCycleLR + SGD(nesterov) / AdamW, written out by hand in float64."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from ppt_jax.train import optim


def torch_one_cycle(step, total, max_lr, pct_start=0.05, div=10.0, final_div=1e4, base_m=0.85,
                    max_m=0.95):
    """torch.optim.lr_scheduler.OneCycleLR.get_lr (three_phase=False, cos), transcribed."""
    initial = max_lr / div
    phases = [
        dict(end_step=float(pct_start * total) - 1, start_lr=initial, end_lr=max_lr,
             start_m=max_m, end_m=base_m),
        dict(end_step=total - 1, start_lr=max_lr, end_lr=initial / final_div,
             start_m=base_m, end_m=max_m),
    ]

    def cos(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    start_step = 0
    for i, phase in enumerate(phases):
        end_step = phase["end_step"]
        if step <= end_step or i == len(phases) - 1:
            pct = (step - start_step) / (end_step - start_step)
            return cos(phase["start_lr"], phase["end_lr"], pct), cos(phase["start_m"], phase["end_m"],
                                                                     pct)
        start_step = phase["end_step"]


def optim_config(**overrides):
    """The reference recipe's optimizer settings (configs/base.py), with `overrides`."""
    cfg = base.recipe("optim").optim
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize("total", [1000, 37, 200])
def test_one_cycle_matches_torch_formula(total):
    lr_fn, m_fn = optim.one_cycle(total, 0.05)
    steps = np.arange(total)
    got_lr = np.asarray(jax.vmap(lr_fn)(steps))
    got_m = np.asarray(jax.vmap(m_fn)(steps))
    want = np.array([torch_one_cycle(int(s), total, 0.05) for s in steps])
    np.testing.assert_allclose(got_lr, want[:, 0], rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(got_m, want[:, 1], rtol=1e-6)
    # Landmarks of the reference recipe: 0.005 -> 0.05 at 5%, -> 5e-7 at the end; momentum 0.95/0.85.
    assert got_lr[0] == pytest.approx(0.005, rel=1e-6)
    assert got_lr[-1] == pytest.approx(5e-7, rel=1e-3)
    assert got_lr.max() <= 0.05 * (1 + 1e-6)
    assert got_m[0] == pytest.approx(0.95) and got_m.min() >= 0.85 - 1e-7


def _params():
    return {"backbone": {"conv": jnp.array([1.0, -2.0, 0.5])},
            "prompt_embedding": jnp.array([[0.3, -0.1]])}


def _grads(step):
    return {"backbone": {"conv": jnp.array([0.2, 0.1, -0.4]) * (step + 1)},
            "prompt_embedding": jnp.array([[-0.5, 0.25]]) * (step + 1)}


def _run(tx, steps):
    params = _params()
    state = tx.init(params)
    for t in range(steps):
        updates, state = tx.update(_grads(t), state, params)
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
    return params


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_sgd_nesterov_l2_matches_hand_computation(scale):
    total, wd = 50, 1e-4
    tx, _ = optim.make_optimizer(optim_config(group_lr_scale=scale), total)
    got = _run(tx, 3)
    for key, path in (("backbone", ("backbone", "conv")), ("prompt", ("prompt_embedding",))):
        p = np.asarray(_params()[path[0]] if len(path) == 1 else _params()[path[0]][path[1]],
                       np.float64)
        buf = np.zeros_like(p)
        for t in range(3):
            g = _grads(t)
            g = np.asarray(g[path[0]] if len(path) == 1 else g[path[0]][path[1]], np.float64)
            lr, m = torch_one_cycle(t, total, 0.05)
            d = g + wd * p                      # torch: d_p = d_p.add(p, alpha=weight_decay)
            buf = m * buf + d if t else d       # buf = d_p on the first step
            d = d + m * buf                     # nesterov
            p = p - lr * (scale if key == "prompt" else 1.0) * d
        out = got[path[0]] if len(path) == 1 else got[path[0]][path[1]]
        np.testing.assert_allclose(np.asarray(out), p, rtol=1e-6, atol=1e-8)


def test_adamw_matches_torch_adamw_with_cycled_beta1():
    total, wd = 40, 0.05
    cfg = optim_config(name="adamw", lr=0.005, weight_decay=wd, final_div_factor=1000.0)
    tx, _ = optim.make_optimizer(cfg, total)
    got = _run(tx, 3)
    p = np.asarray(_params()["backbone"]["conv"], np.float64)
    m1 = np.zeros_like(p)
    v = np.zeros_like(p)
    for t in range(3):
        g = np.asarray(_grads(t)["backbone"]["conv"], np.float64)
        lr, b1 = torch_one_cycle(t, total, 0.005, final_div=1000.0)
        p = p * (1 - lr * wd)                    # torch AdamW decays first, with the group lr
        m1 = b1 * m1 + (1 - b1) * g
        v = 0.999 * v + 0.001 * g * g
        # optax bias-corrects with the current b1 (torch with its param_group beta1: the same value).
        mhat = m1 / (1 - b1 ** (t + 1))
        vhat = v / (1 - 0.999 ** (t + 1))
        p = p - lr * mhat / (np.sqrt(vhat) + 1e-8)
    np.testing.assert_allclose(np.asarray(got["backbone"]["conv"]), p, rtol=2e-5, atol=1e-7)


def test_group_mask_selects_prompt_and_modulation_paths():
    from ppt_jax import models
    params = {"embedding_table_prompt": 1.0, "enc": {"bn": {"modulation": {"kernel": 2.0}},
                                                     "conv": 3.0}}
    mask = models.prompt_param_mask(params, ("prompt", "modulation"))
    assert mask == {"embedding_table_prompt": True, "enc": {"bn": {"modulation": {"kernel": True}},
                                                            "conv": False}}


def test_bad_optimizer_name_is_reported():
    with pytest.raises(ValueError, match="config.optim.name"):
        optim.make_optimizer(optim_config(name="lamb"), 10)
