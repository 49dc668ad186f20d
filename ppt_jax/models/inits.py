"""Initializers matching the reference's PyTorch/spconv/timm initialisation (docs/reference.md §14).

Kernels are stored as (..., fan_in, fan_out) in Flax; the fan-in is passed explicitly where the
kernel has a leading tap axis, so the bounds match the PyTorch layers they replace.
"""

import jax
import jax.numpy as jnp


def trunc_normal(std=0.02, bound=2.0):
    """timm `trunc_normal_(std)`: N(0, std) truncated at the ABSOLUTE values +-bound (not +-2 std)."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.truncated_normal(key, -bound / std, bound / std, shape, dtype) * std
    return init


def uniform(bound):
    """U(-bound, bound): PyTorch's kaiming_uniform(a=sqrt(5)) on a layer with fan_in = 1/bound**2."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def torch_linear(fan_in):
    """PyTorch nn.Linear default for both weight and bias: U(+-1/sqrt(fan_in))."""
    return uniform(1.0 / fan_in ** 0.5)


def spconv_default(fan_in):
    """spconv 2.x default for a conv's kernel and bias, fan_in = taps * C_in: U(+-1/sqrt(fan_in)) (as
    PyTorch's Linear)."""
    return torch_linear(fan_in)
