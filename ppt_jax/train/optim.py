"""Optimizers as the reference builds them (docs/reference.md §6, §10), in optax.

- `one_cycle(...)`: torch's `OneCycleLR` (two-phase, cosine annealing) as a pure function of the
  iteration index, for both the learning rate and the cycled momentum. torch evaluates it at
  `last_epoch = t` for the t-th optimizer step (t from 0), which is optax's update count.
- SGD: torch's SGD with `nesterov=True` and L2 weight decay *added to the gradient before momentum*
  (not decoupled), on every parameter as the reference. optax's `trace(nesterov=True)` is exactly
  torch's buffer update `b = m*b + g; d = g + m*b`; its momentum is a schedule via `inject_hyperparams`.
- AdamW: torch's AdamW (decoupled decay scaled by the scheduled lr); with `cycle_momentum` torch
  cycles Adam's beta1 through the same momentum curve, and so do we.
- Parameter groups: params whose path contains one of `group_keywords` (the prompts and the prompt
  modulation layers) get `group_lr_scale` x the lr. With torch's OneCycle each group's curve is its own
  max_lr times the same shape, so a constant factor on the update is exact.
"""

import math

import jax
import jax.numpy as jnp
import optax

from ppt_jax import models

OPTIMIZERS = ("sgd", "adamw")


def one_cycle(total_steps, max_value, pct_start=0.05, div_factor=10.0, final_div_factor=1e4,
              base_momentum=0.85, max_momentum=0.95):
    """(lr_fn, momentum_fn) of torch.optim.lr_scheduler.OneCycleLR(anneal_strategy='cos')."""
    if total_steps < 2:
        raise ValueError(f"one_cycle: total_steps must be >= 2, got {total_steps}")
    initial = max_value / div_factor
    minimum = initial / final_div_factor
    # torch: phase 1 ends at float(pct_start * total_steps) - 1, phase 2 at total_steps - 1.
    end1 = float(pct_start * total_steps) - 1.0
    end2 = float(total_steps - 1)

    def anneal(start, end, pct):
        return end + (start - end) / 2.0 * (jnp.cos(math.pi * pct) + 1.0)

    def curve(step, first, peak, last):
        t = jnp.asarray(step, jnp.float32)
        in_phase1 = t <= end1
        pct1 = t / end1 if end1 != 0 else jnp.zeros_like(t)
        pct2 = (t - end1) / (end2 - end1)
        return jnp.where(in_phase1, anneal(first, peak, pct1), anneal(peak, last, pct2))

    def lr_fn(step):
        return curve(step, initial, max_value, minimum)

    def momentum_fn(step):
        return curve(step, max_momentum, base_momentum, max_momentum)

    return lr_fn, momentum_fn


def make_optimizer(cfg, total_steps):
    """optax transformation and lr schedule from `config.optim`.

    Fields: name ('sgd'|'adamw'), lr (max lr), weight_decay, nesterov, pct_start, div_factor,
    final_div_factor, cycle_momentum, base_momentum, max_momentum, momentum (used when not cycled),
    betas (adamw), clip_grad (0 = off), group_keywords, group_lr_scale.
    Returns (tx, lr_fn) where lr_fn(step) is the base group's lr at that step.
    """
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"config.optim.name must be one of {OPTIMIZERS}, got {cfg.name!r}")
    lr_fn, cycled = one_cycle(total_steps, cfg.lr, cfg.pct_start, cfg.div_factor,
                              cfg.final_div_factor, cfg.base_momentum, cfg.max_momentum)
    momentum = cycled if cfg.cycle_momentum else cfg.momentum
    parts = []
    if cfg.clip_grad:
        parts.append(optax.clip_by_global_norm(cfg.clip_grad))
    if cfg.name == "sgd":
        parts += [
            optax.add_decayed_weights(cfg.weight_decay),
            optax.inject_hyperparams(optax.trace)(decay=momentum, nesterov=cfg.nesterov),
        ]
    else:
        b1, b2 = cfg.betas
        parts.append(optax.inject_hyperparams(optax.scale_by_adam)(b1=momentum if cfg.cycle_momentum
                                                                   else b1, b2=b2))
    if cfg.group_lr_scale != 1.0:
        parts.append(optax.masked(optax.scale(cfg.group_lr_scale),
                                  lambda p: models.prompt_param_mask(p, cfg.group_keywords)))
    if cfg.name == "adamw":
        # torch AdamW: p -= lr * wd * p with the group's own lr, after the Adam direction is scaled.
        parts.append(_scaled_decay(cfg))
    parts.append(optax.scale_by_learning_rate(lr_fn))
    return optax.chain(*parts), lr_fn


def _scaled_decay(cfg):
    """Decoupled weight decay whose per-parameter factor follows its group's lr scale (torch AdamW)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params):
        mask = models.prompt_param_mask(params, cfg.group_keywords)
        updates = jax.tree_util.tree_map(
            lambda u, p, m: u + cfg.weight_decay * (cfg.group_lr_scale if m else 1.0) * p,
            updates, params, mask)
        return updates, state

    return optax.GradientTransformation(init, update)
