"""One sparse conv layer of the backbones: float32 kernel (taps, C_in, C_out) as design.md §2, cast to
the compute dtype, run on the whole batch through `ppt_jax.sparse` (its per-sample forms vmap inside)."""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from ppt_jax import sparse
from ppt_jax.models import inits


class SparseConv(nn.Module):
    """subm (kernel_size^3 taps at `level`), down (k2 s2, `level` -> `level` + 1) or up (its inverse
    into `level`); optional bias. kernel_init None is spconv 2.x's default, which is also its bias's."""
    features: int
    kind: str            # "subm" | "down" | "up"
    level: int           # the input level for subm/down, the output level for up
    kernel_size: int = 3  # subm only: down/up always have 8 taps
    use_bias: bool = False
    kernel_init: Callable | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, hierarchy):
        cin = x.shape[-1]
        taps = self.kernel_size ** 3 if self.kind == "subm" else 8
        default = inits.spconv_default(taps * cin)
        w = self.param("kernel", self.kernel_init or default, (taps, cin, self.features), jnp.float32)
        fn = getattr(sparse, f"{self.kind}_conv")          # subm_conv | down_conv | up_conv
        y = fn(jnp.asarray(x, self.dtype), hierarchy, self.level, w.astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", default, (self.features,), jnp.float32).astype(y.dtype)
        return y
