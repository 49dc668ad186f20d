"""The paper's alternative prompt adapters (ablation), applied after each backbone stage.

- "add" (direct injection): features += Dense(C)(prompt), the same vector at every site of a sample.
- "cross_attention": every site queries a small set of prompt tokens. A single 256-d prompt as one
  key/value would make the softmax trivially 1 (= "add"), so the prompt is expanded into `tokens`
  key/value tokens by Dense layers; sites attend over them with one head of width C, and the result is
  added through an output projection: x += Wo softmax(Wq x (Wk p)^T / sqrt(C)) (Wv p).
Both use zero-initialised output layers when zero_init (identity at init), else trunc_normal(0.02).
Padded rows may receive values; they never leak (design.md §2) and are masked at the output.
"""

import jax.numpy as jnp
import flax.linen as nn

from ppt_jax.models import inits


def _out_init(zero_init):
    return nn.initializers.zeros if zero_init else inits.trunc_normal(0.02)


class PromptAdd(nn.Module):
    zero_init: bool

    @nn.compact
    def __call__(self, x, context):
        c = x.shape[-1]
        add = nn.Dense(c, kernel_init=_out_init(self.zero_init), name="proj")(context)
        return (x.astype(jnp.float32) + add[:, None]).astype(x.dtype)


class PromptCrossAttention(nn.Module):
    zero_init: bool
    tokens: int

    @nn.compact
    def __call__(self, x, context):
        b, _, c = x.shape
        dense = lambda n, name: nn.Dense(n, kernel_init=inits.trunc_normal(0.02), name=name)
        keys = dense(self.tokens * c, "key")(context).reshape(b, self.tokens, c)
        values = dense(self.tokens * c, "value")(context).reshape(b, self.tokens, c)
        q = nn.Dense(c, use_bias=False, kernel_init=inits.trunc_normal(0.02), dtype=x.dtype,
                     name="query")(x)
        att = nn.softmax(jnp.einsum("bnc,btc->bnt", q.astype(jnp.float32), keys) / c ** 0.5)
        out = jnp.einsum("bnt,btc->bnc", att, values)
        out = nn.Dense(c, kernel_init=_out_init(self.zero_init), name="out")(out)
        return (x.astype(jnp.float32) + out).astype(x.dtype)
