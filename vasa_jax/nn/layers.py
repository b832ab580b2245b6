"""Dense layers with logical axis names, an MLP, and small helpers.

Logical axis names used across the models (mapped to mesh axes by a config's rules table):
``embed`` (model width), ``mlp`` (MLP hidden), ``heads``, ``kv`` (per-head width),
``modulation`` (adaLN outputs), and data-side names that stay replicated (``motion``, ``audio``,
``cond``, ``vocab``).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(name: str | jnp.dtype):
    if isinstance(name, str):
        if name not in DTYPES:
            raise ValueError(f"Unknown dtype {name!r}; use one of {sorted(DTYPES)}.")
        return DTYPES[name]
    return name


def dense(in_features: int, out_features: int, axes: Sequence[str | None], *, rngs: nnx.Rngs,
          dtype=jnp.float32, zero_init: bool = False, use_bias: bool = True) -> nnx.Linear:
    """``nnx.Linear`` whose kernel (in, out) carries logical ``axes`` and whose bias carries
    ``axes[1]``. ``zero_init`` starts it at zero (adaLN-Zero gates, output heads)."""
    init = (nnx.initializers.zeros_init() if zero_init
            else nnx.initializers.xavier_uniform())
    return nnx.Linear(
        in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=nnx.with_partitioning(init, tuple(axes)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
        rngs=rngs)


class Mlp(nnx.Module):
    """x (..., d) -> Linear(d, h) -> GELU -> Linear(h, d)."""

    def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.fc1 = dense(width, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = dense(hidden, width, ("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x)))


def layer_norm(width: int, *, rngs: nnx.Rngs, affine: bool = True, dtype=jnp.float32
               ) -> nnx.LayerNorm:
    """LayerNorm over the last axis (scale/bias on ``embed`` when ``affine``)."""
    return nnx.LayerNorm(
        width, epsilon=1e-6, use_scale=affine, use_bias=affine, dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
        rngs=rngs)


class Stat(nnx.Variable):
    """Dataset statistics used for normalisation (e.g. motion mean/std); stored in checkpoints,
    never trained (not an ``nnx.Param``, so the trainer keeps it in the non-trained state)."""


def stat(values) -> Stat:
    """A replicated float32 ``Stat`` holding ``values``."""
    return Stat(jnp.asarray(values, jnp.float32), out_sharding=(None,))


def set_mean_std(mean_var: Stat, std_var: Stat, mean, std, min_std: float) -> None:
    """Install a dataset's mean and std (std floored at ``min_std``) into two ``Stat``s."""
    mean_var[...] = jnp.asarray(mean, jnp.float32)
    std_var[...] = jnp.maximum(jnp.asarray(std, jnp.float32), min_std)


class MotionStats:
    """For a model holding the dataset's motion statistics in ``Stat`` variables
    ``motion_mean`` and ``motion_std`` (M,): motion in physical units <-> normalised units."""

    def normalize_motion(self, m: jax.Array) -> jax.Array:
        return (m - self.motion_mean[...]) / self.motion_std[...]

    def denormalize_motion(self, m: jax.Array) -> jax.Array:
        return m * self.motion_std[...] + self.motion_mean[...]


def learned(shape: Sequence[int], axes: Sequence[str | None], *, rngs: nnx.Rngs,
            stddev: float = 0.02) -> nnx.Param:
    """A learned tensor (positional table, null embedding) with logical ``axes``."""
    init = nnx.with_partitioning(nnx.initializers.normal(stddev), tuple(axes))
    return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32))
