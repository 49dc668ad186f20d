"""The jitted train and eval steps, sharded over a device mesh.

Batches (design.md §1) are sharded over the mesh's `data` axis (`sharding`); the train state is
replicated and donated. The kernel-map hierarchy is built inside the step from grid_coord/mask (one
compile per config: every shape is static). A step whose loss or gradients are not finite does not apply its
update: it returns the old state and `finite = False`, and the loop reports the step and dataset.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from ppt_jax import models, sparse
from ppt_jax.train import metrics as metrics_lib
from ppt_jax.train.sharding import batch_sharding, replicated


@flax.struct.dataclass
class TrainState:
    step: jax.Array           # int32: optimizer updates applied
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array            # uint32 key data (checkpointable)


def build_hierarchies(grid_coord, mask, spec):
    """Batched `sparse.build_hierarchy` (one hierarchy per sample), under the profile scope 'hierarchy'."""
    with jax.named_scope("hierarchy"):
        return jax.vmap(lambda g, m: sparse.build_hierarchy(g, m, spec))(grid_coord, mask)


def make_train_step(model, tx, lr_fn, spec, num_datasets, mesh):
    """jit(state, batch) -> (state, metrics) with NamedShardings and the state donated."""

    def train_step(state, batch):
        h = build_hierarchies(batch["grid_coord"], batch["mask"], spec)
        cond = batch["condition"]
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, batch["feat"], h, cond,
                train=True, mutable=["batch_stats"], rngs={"dropout": rng})
            segment = jnp.where(batch["mask"], batch["segment"], -1)
            with jax.named_scope("loss"):
                loss = models.segmentation_loss(logits, segment, cond, model.criteria,
                                                len(model.conditions))
                return loss, updates["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        with jax.named_scope("optimizer"):  # profile scopes: benchmarks/step_profile.py
            grad_norm = optax.global_norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            fits = (h.dropped_sites.sum() + h.dropped_pairs.sum()) == 0   # else the loop raises

            # A skipped step keeps the old state through lax.cond, not a select between new and old: the
            # select made XLA:CPU keep a copy of every parameter and momentum buffer through the whole step.
            def apply(state):
                updates, opt_state = tx.update(grads, state.opt_state, state.params)
                return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  batch_stats=stats, opt_state=opt_state, rng=state.rng)

            out = jax.lax.cond(finite & fits, apply, lambda state: state, state)
        metrics = {
            "loss": loss, "grad_norm": grad_norm, "lr": lr_fn(state.step), "finite": finite,
            "dataset_rows": jax.nn.one_hot(cond, num_datasets, dtype=jnp.int32).sum(0),
            "dropped_sites": h.dropped_sites.sum(0), "dropped_pairs": h.dropped_pairs.sum(0),
        }
        return out, metrics

    return jax.jit(train_step, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def make_eval_step(model, spec, num_datasets, num_classes, mesh):
    """jit(variables, confusion, batch) -> confusion + this batch at full resolution.

    Single pass (the reference's training-time val): each original point takes the prediction of
    its site through `inverse` (-1 = padding point, ignored), compared with `origin_segment`.
    """

    def eval_step(variables, conf, batch):
        h = build_hierarchies(batch["grid_coord"], batch["mask"], spec)
        logits = model.apply(variables, batch["feat"], h, batch["condition"], train=False)
        pred = jnp.argmax(logits, -1)
        inv = batch["inverse"]
        full = jnp.where(inv >= 0, jnp.take_along_axis(pred, jnp.maximum(inv, 0), 1), -1)
        return conf + metrics_lib.confusion(full, batch["origin_segment"], batch["condition"],
                                            num_datasets, num_classes)

    shardings = (replicated(mesh), replicated(mesh), batch_sharding(mesh))
    return jax.jit(eval_step, in_shardings=shardings, out_shardings=replicated(mesh),
                   donate_argnums=1)


def make_vote_step(model, spec, mesh):
    """(variables, votes, batch) -> (votes + this batch's softmax at each row site's stored site, the sites
    and pairs the batch had beyond `spec`'s capacities).

    Test-time voting (docs/reference.md) batched on device: `batch["index"]` (B, N) is the stored site of each
    row site (-1 at padding); votes (S, K) is one scene's running sum. Rotated views can need more sites than the
    rows the capacities were measured on: a non-zero count means some votes came from a cut hierarchy.
    Two programs: the model's forward, compiled once per spec, and the scatter into the vote table, a small
    one compiled per table length (scenes differ in size: one forward per length was a full model compile).
    """

    def forward(variables, batch):
        h = build_hierarchies(batch["grid_coord"], batch["mask"], spec)
        logits = model.apply(variables, batch["feat"], h, batch["condition"], train=False)
        return jax.nn.softmax(logits, -1), h.dropped_sites.sum() + h.dropped_pairs.sum()

    def accumulate(votes, index, probs):
        index = jnp.where(index >= 0, index, votes.shape[0])          # padding: out of bounds, dropped
        return votes.at[index.reshape(-1)].add(probs.reshape(-1, probs.shape[-1]), mode="drop")

    forward = jax.jit(forward, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                      out_shardings=(batch_sharding(mesh), replicated(mesh)))
    accumulate = jax.jit(accumulate, in_shardings=(replicated(mesh), batch_sharding(mesh), batch_sharding(mesh)),
                         out_shardings=replicated(mesh), donate_argnums=0)

    def vote_step(variables, votes, batch):
        probs, dropped = forward(variables, batch)
        return accumulate(votes, batch["index"], probs), dropped

    return vote_step
